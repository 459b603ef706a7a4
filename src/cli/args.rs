//! The command line: every subcommand and flag, as clap definitions that
//! tests can parse without a process.

use std::{net::SocketAddr, path::PathBuf};

use clap::{
    Parser, Subcommand, ValueEnum,
    builder::{PossibleValuesParser, TypedValueParser as _},
};

use crate::api::ExecutorType;

/// kiln bakes VM images with Packer and retires them by policy.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
pub struct Args {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "KILN_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum ImagesCommand {
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
pub struct ElectionArgs {
    /// Reconcile only while holding the leader Lease.
    #[arg(long, env = "KILN_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the in-cluster namespace).
    #[arg(long, env = "KILN_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "kiln-controller")]
    pub leader_election_lease_name: String,
    /// Seconds a holder keeps the lease without renewing; a standby takes over within it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,
    /// The holder renews this many seconds before the lease would expire.
    #[arg(long, default_value_t = 5)]
    pub lease_renew_before_seconds: u64,
}

/// How logs are written (always to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise (files, pipes, log collectors).
    Auto,
    /// Human-readable lines; colours only on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses an executor name the way the API spells it.
fn executor() -> impl clap::builder::TypedValueParser<Value = ExecutorType> {
    PossibleValuesParser::new(["job", "process"]).map(|s| match s.as_str() {
        "process" => ExecutorType::Process,
        _ => ExecutorType::Job,
    })
}

#[derive(Subcommand)]
pub enum Command {
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
        #[arg(long, value_parser = executor(), default_value = "job", env = "KILN_DEFAULT_EXECUTOR")]
        default_executor: ExecutorType,
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
        /// Reconciles running at once, per kind.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000), env = "KILN_MAX_CONCURRENT_RECONCILES")]
        max_concurrent_reconciles: u16,
        /// Seconds a stopped build may take to clean up: Packer gets SIGTERM,
        /// then this long before it is killed. A Job's Pod and the
        /// controller's Pod get this plus 30 s of termination grace.
        #[arg(long, default_value_t = 300, env = "KILN_BUILD_GRACE_SECONDS")]
        build_grace_seconds: u64,
        /// Deletions an ImagePolicy has in flight per region (default: the
        /// provider's, 8 for AWS). Calls are paced to the cloud's request
        /// limits whatever this is; see docs/retention.md.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000), env = "KILN_PRUNE_CONCURRENCY")]
        prune_concurrency: Option<u16>,
        #[command(flatten)]
        election: ElectionArgs,
    },
    #[cfg(feature = "demo")]
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
