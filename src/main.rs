use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

mod cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kiln::{
    api::ExecutorType,
    controller::leader,
    packer::runner::{self, BuildRequest, Outcome, REQUEST_ENV, Redactor, RunnerOptions},
};

/// kiln bakes VM images with Packer and retires them by policy.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KILN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// List the images an ImageBuild owns, newest first.
    List {
        /// NAMESPACE/NAME of an ImageBuild in the cluster (credentials from its Secret).
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        build: Option<String>,
        /// An ImageBuild manifest instead (credentials from AWS_* environment).
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
}

/// Leader election: with several replicas, only the lease holder reconciles.
#[derive(clap::Args)]
struct ElectionArgs {
    /// Reconcile only while holding the leader Lease.
    #[arg(long, env = "KILN_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the in-cluster namespace).
    #[arg(long, env = "KILN_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "kiln-controller")]
    leader_election_lease_name: String,
    /// Seconds a holder keeps the lease without renewing; a standby takes over within it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_duration_seconds: u64,
    /// The holder renews this many seconds before the lease would expire.
    #[arg(long, default_value_t = 5)]
    lease_renew_before_seconds: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Executor {
    Job,
    Process,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD.
    Crd {
        /// Write `<group>_<plural>.yaml` files into this directory instead of
        /// printing to stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Run the controller against the current kubeconfig or the in-cluster config.
    Controller {
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, default_value = "0.0.0.0:8080", env = "KILN_METRICS_ADDR")]
        metrics_addr: SocketAddr,
        /// Executor for ImageBuilds that name none.
        #[arg(long, value_enum, default_value_t = Executor::Job, env = "KILN_DEFAULT_EXECUTOR")]
        default_executor: Executor,
        /// Image of build Jobs; it must carry kiln and packer.
        #[arg(
            long,
            default_value = "ghcr.io/kiln-dev/kiln:0.1.0",
            env = "KILN_RUNNER_IMAGE"
        )]
        runner_image: String,
        /// kiln binary the process executor runs (default: this one).
        #[arg(long, env = "KILN_RUNNER_PATH")]
        runner_path: Option<PathBuf>,
        /// Work directory of process builds.
        #[arg(long, env = "KILN_WORKDIR")]
        workdir: Option<PathBuf>,
        /// Watch only this namespace.
        #[arg(long, env = "KILN_NAMESPACE")]
        namespace: Option<String>,
        /// How often Ready ImageBuilds are looked at again, in seconds.
        #[arg(long, default_value_t = 600)]
        resync_seconds: u64,
        #[command(flatten)]
        election: ElectionArgs,
    },
    /// Run kiln's main job locally: a control plane, moto as EC2, the
    /// controller, and sample builds. Needs packer and moto (`make setup`).
    Demo {
        /// Tear everything down and exit after the run (for CI).
        #[arg(long)]
        once: bool,
        /// How many builds to run (the first, then rebuilds).
        #[arg(long, default_value_t = 4)]
        builds: usize,
        /// Where the demo keeps its cluster state and logs.
        #[arg(long, env = "KILN_DEMO_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Check ImageBuild and ImagePolicy manifests against the cluster's schema
    /// and CEL rules, and inline templates with `packer validate`; no cluster needed.
    Validate {
        /// Manifest files (YAML, several documents allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Skip `packer validate` of inline templates.
        #[arg(long)]
        skip_packer: bool,
        /// The packer binary.
        #[arg(long, default_value = "packer", env = "KILN_PACKER")]
        packer: PathBuf,
    },
    /// Images kiln owns at the provider.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Show (--dry-run) or carry out what an ImagePolicy would prune, using the
    /// current kubeconfig to read the ImageBuilds and their credentials.
    Prune {
        /// The ImagePolicy manifest.
        #[arg(long)]
        policy: PathBuf,
        /// Namespace of the ImageBuilds (default: the policy's, else the kubeconfig's).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Run one Packer build described by $KILN_BUILD_REQUEST (used by the executors).
    Runner {
        /// Where to write the result JSON (a Job uses /dev/termination-log).
        #[arg(long)]
        result_file: PathBuf,
        /// Directory to work in.
        #[arg(long)]
        workdir: PathBuf,
        /// The packer binary.
        #[arg(long, default_value = "packer", env = "KILN_PACKER")]
        packer: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,aws=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kiln::install_crypto_provider();
    match cli.command {
        Command::Crd { out_dir } => write_crds(out_dir),
        Command::Controller {
            metrics_addr,
            default_executor,
            runner_image,
            runner_path,
            workdir,
            namespace,
            resync_seconds,
            election,
        } => {
            init_logging(cli.log_format);
            let client = kube::Client::try_default()
                .await
                .context("connecting to Kubernetes (kubeconfig or in-cluster)")?;
            let runner_path = match runner_path {
                Some(p) => p,
                None => std::env::current_exe().context("locating the kiln binary")?,
            };
            let config = kiln::controller::Config {
                default_executor: match default_executor {
                    Executor::Job => ExecutorType::Job,
                    Executor::Process => ExecutorType::Process,
                },
                runner_image,
                runner_path,
                workroot: workdir.unwrap_or_else(|| std::env::temp_dir().join("kiln-builds")),
                namespace,
                resync: Duration::from_secs(resync_seconds),
                runner_env: Vec::new(),
            };
            let metrics = Arc::new(kiln::metrics::Metrics::default());
            let ready = Arc::new(AtomicBool::new(false));
            let health = kiln::server::Health {
                ready: ready.clone(),
                metrics: metrics.clone(),
            };
            let shutdown = leader::shutdown_on_signal();
            let server = tokio::spawn(kiln::server::serve(
                metrics_addr,
                health,
                shutdown.clone().cancelled_owned(),
            ));
            let ended = if election.leader_elect {
                let election = election.resolve(&client).await?;
                let lead = |term| {
                    kiln::controller::run(
                        client.clone(),
                        config,
                        metrics.clone(),
                        ready.clone(),
                        term,
                    )
                };
                leader::run(
                    client.clone(),
                    &election,
                    metrics.clone(),
                    shutdown.clone(),
                    || ready.store(true, std::sync::atomic::Ordering::Relaxed),
                    lead,
                )
                .await?
            } else {
                metrics.leader.set(1);
                kiln::controller::run(client, config, metrics, ready, shutdown.clone()).await;
                leader::Ended::Stopped
            };
            shutdown.cancel();
            server
                .await
                .context("metrics server")?
                .context("metrics server")?;
            if ended == leader::Ended::LostLease {
                // Exiting ends this replica's process builds with it, so a
                // replica that lost the lease never acts on stale state; it
                // comes back as a standby.
                anyhow::bail!(
                    "lost the leader lease; exiting so the replica restarts as a standby"
                );
            }
            Ok(())
        }
        Command::Validate {
            files,
            skip_packer,
            packer,
        } => {
            let packer = (!skip_packer).then_some(packer);
            if !cli::commands::validate(&files, packer).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Images {
            command: ImagesCommand::List { build, file },
        } => {
            let source = match (build, file) {
                (_, Some(f)) => cli::commands::BuildSource::File(f),
                (Some(b), None) => {
                    let (ns, name) = b.split_once('/').context("--build takes NAMESPACE/NAME")?;
                    cli::commands::BuildSource::Cluster(ns.to_owned(), name.to_owned())
                }
                (None, None) => anyhow::bail!("give --build NAMESPACE/NAME or --file MANIFEST"),
            };
            cli::commands::images_list(source).await
        }
        Command::Prune {
            policy,
            namespace,
            dry_run,
            yes,
        } => cli::commands::prune(&policy, namespace, dry_run, yes).await,
        Command::Demo {
            once,
            builds,
            state_dir,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let state_dir = state_dir.unwrap_or_else(|| std::env::temp_dir().join("kiln-demo"));
            cli::demo::run(cli::demo::DemoOptions {
                once,
                state_dir,
                builds,
            })
            .await
        }
        Command::Runner {
            result_file,
            workdir,
            packer,
        } => {
            init_logging(cli.log_format);
            let raw =
                std::env::var(REQUEST_ENV).with_context(|| format!("{REQUEST_ENV} is not set"))?;
            let request: BuildRequest = serde_json::from_str(&raw)
                .with_context(|| format!("{REQUEST_ENV} is not a build request"))?;
            let redactor = Redactor::from_env();
            let options = RunnerOptions { packer, workdir };
            let result = match runner::run(&request, &options, &redactor).await {
                Ok(result) => result,
                Err(e) => runner::RunnerResult {
                    build_id: request.build_id.clone(),
                    outcome: Outcome::Failed,
                    artifacts: vec![],
                    message: Some(redactor.redact(&e.to_string())),
                    packer_version: None,
                },
            };
            std::fs::write(&result_file, serde_json::to_vec(&result)?)
                .with_context(|| format!("writing {}", result_file.display()))?;
            tracing::info!(build_id = %result.build_id, outcome = ?result.outcome, "runner finished");
            if result.outcome != Outcome::Succeeded {
                std::process::exit(1);
            }
            Ok(())
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
        print!("{}", kiln::crdgen::all_yaml()?);
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in kiln::crdgen::crds() {
        let path = dir.join(kiln::crdgen::file_name(&crd));
        std::fs::write(&path, kiln::crdgen::to_yaml(&crd)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
