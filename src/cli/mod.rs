//! The `kiln` command: its arguments, logging, and one function per
//! subcommand. `main` only calls [`Args::parse_and_run`].

mod args;
pub mod commands;
#[cfg(feature = "demo")]
pub mod demo;
pub mod logging;
pub mod table;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;

pub use args::{Args, Command, ElectionArgs, ImagesCommand, LogFormat};

use crate::controller::{leader, startup};

impl Args {
    /// Parses the process arguments, sets up logging and runs the command.
    pub fn parse_and_run() -> ExitCode {
        let args = Args::parse();
        crate::install_crypto_provider();
        logging::init(args.log_format, args.command.default_log_filter());
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("Error: starting the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(args.run()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("Error: {e:?}");
                ExitCode::FAILURE
            }
        }
    }

    /// Runs the command; logging must already be set up.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Crd { out_dir } => write_crds(out_dir).map(|()| ExitCode::SUCCESS),
            Command::Controller {
                metrics_addr,
                default_executor,
                runner_image,
                runner_path,
                workdir,
                namespace,
                resync_seconds,
                max_concurrent_reconciles,
                build_grace_seconds,
                prune_concurrency,
                election,
            } => {
                let client = connect().await?;
                let runner_path = match runner_path {
                    Some(p) => p,
                    None => std::env::current_exe().context("locating the kiln binary")?,
                };
                let config = crate::controller::Config {
                    default_executor,
                    runner_image,
                    runner_path,
                    workroot: workdir.unwrap_or_else(|| std::env::temp_dir().join("kiln-builds")),
                    namespace,
                    resync: Duration::from_secs(resync_seconds),
                    max_concurrent_reconciles,
                    prune_concurrency: prune_concurrency.map(usize::from),
                    runner_env: Vec::new(),
                    build_grace: Duration::from_secs(build_grace_seconds),
                };
                // Process-wide: controller::Config is built as a literal
                // elsewhere (the demo, tests), so the setting goes straight
                // to retention.
                let election = match election.leader_elect {
                    true => Some(election.resolve(&client).await?),
                    false => None,
                };
                startup::run(client, config, metrics_addr, election).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Validate {
                files,
                skip_packer,
                packer,
            } => {
                let packer = (!skip_packer).then_some(packer);
                Ok(match commands::validate(&files, packer).await? {
                    true => ExitCode::SUCCESS,
                    false => ExitCode::FAILURE,
                })
            }
            Command::Images {
                command: ImagesCommand::List { build, file },
            } => {
                let source = match (build, file) {
                    (_, Some(f)) => commands::BuildSource::File(f),
                    (Some(b), None) => {
                        let (ns, name) =
                            b.split_once('/').context("--build takes NAMESPACE/NAME")?;
                        commands::BuildSource::Cluster(ns.to_owned(), name.to_owned())
                    }
                    (None, None) => {
                        anyhow::bail!("give --build NAMESPACE/NAME or --file MANIFEST")
                    }
                };
                commands::images_list(source).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Prune {
                policy,
                namespace,
                dry_run,
                yes,
            } => {
                commands::prune(&policy, namespace, dry_run, yes).await?;
                Ok(ExitCode::SUCCESS)
            }
            #[cfg(feature = "demo")]
            Command::Demo {
                once,
                builds,
                state_dir,
            } => {
                let state_dir = state_dir.unwrap_or_else(|| std::env::temp_dir().join("kiln-demo"));
                demo::run(demo::DemoOptions {
                    once,
                    state_dir,
                    builds,
                })
                .await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Runner {
                result_file,
                workdir,
                packer,
            } => {
                let options = crate::packer::runner::RunnerOptions::new(packer, workdir)
                    .stopped_by_signals()
                    .context("installing signal handlers")?;
                let result = crate::packer::runner::run_from_env(&options, &result_file).await?;
                Ok(match result.outcome {
                    crate::packer::runner::Outcome::Succeeded => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                })
            }
        }
    }
}

impl Command {
    /// The log filter when `RUST_LOG` is not set: the demo prints tables for
    /// people and keeps the controller's lines to warnings.
    fn default_log_filter(&self) -> &'static str {
        match self {
            #[cfg(feature = "demo")]
            Command::Demo { .. } => "warn,kube_client=off",
            _ => "info,kube=warn,aws=warn,hyper=warn",
        }
    }
}

impl ElectionArgs {
    async fn resolve(self, client: &kube::Client) -> anyhow::Result<leader::Election> {
        let namespace = match self.leader_election_namespace {
            Some(ns) => ns,
            None => std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        };
        anyhow::ensure!(
            self.lease_renew_before_seconds < self.lease_duration_seconds,
            "--lease-renew-before-seconds ({}) must be less than --lease-duration-seconds ({})",
            self.lease_renew_before_seconds,
            self.lease_duration_seconds
        );
        Ok(leader::Election {
            namespace,
            lease_name: self.leader_election_lease_name,
            identity: leader::identity(),
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_before: Duration::from_secs(self.lease_renew_before_seconds),
        })
    }
}

/// A client from the kubeconfig, or in a Pod its ServiceAccount, with
/// errors that say what to fix.
pub async fn connect() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .map_err(|e| explain_connect_error(&anyhow::Error::new(e)))
}

fn explain_connect_error(e: &anyhow::Error) -> anyhow::Error {
    let chain = format!("{e:#}");
    // rustls refuses X.509 v1 certificates, which kubectl (Go) accepts, and
    // reports it as an invalid private key.
    if chain.contains("UnsupportedCertVersion") {
        return anyhow::anyhow!(
            "the client certificate in the kubeconfig is an X.509 version 1 certificate, which kiln's TLS library (rustls) does not accept (kubectl does); reissue it as version 3 (for example `openssl x509 -req ... -extfile <(printf 'extendedKeyUsage=clientAuth')`), or authenticate with a token (rustls: {})",
            e.root_cause()
        );
    }
    anyhow::anyhow!("connecting to Kubernetes (kubeconfig or in-cluster): {chain}")
}

fn write_crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let Some(dir) = out_dir else {
        print!("{}", crate::crdgen::all_yaml()?);
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in crate::crdgen::crds() {
        let path = dir.join(crate::crdgen::file_name(&crd));
        std::fs::write(&path, crate::crdgen::to_yaml(&crd)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn a_version_1_client_certificate_is_named() {
        let e = anyhow::anyhow!(
            "rustls tls error: invalid private key: invalid peer certificate: Other(OtherError(UnsupportedCertVersion))"
        );
        let explained = explain_connect_error(&e).to_string();
        assert!(
            explained.contains("X.509 version 1") && explained.contains("reissue it as version 3"),
            "{explained}"
        );
        let other = explain_connect_error(&anyhow::anyhow!("connection refused")).to_string();
        assert!(other.contains("connection refused") && !other.contains("version 1"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn the_executor_flag_takes_the_api_spelling() {
        let args = Args::try_parse_from(["kiln", "controller", "--default-executor", "process"])
            .expect("parses");
        let Command::Controller {
            default_executor, ..
        } = args.command
        else {
            panic!("expected the controller command")
        };
        assert_eq!(default_executor, crate::api::ExecutorType::Process);
        assert!(Args::try_parse_from(["kiln", "controller", "--default-executor", "vm"]).is_err());
    }
}
