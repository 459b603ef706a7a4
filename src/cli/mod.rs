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
                election,
            } => {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to Kubernetes (kubeconfig or in-cluster)")?;
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
                    runner_env: Vec::new(),
                    build_grace: Duration::from_secs(build_grace_seconds),
                };
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
