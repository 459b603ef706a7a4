//! Where `kiln runner` runs: a Kubernetes Job, or a child process of the
//! controller. Both run the same runner and report the same [`RunnerResult`].
//!
//! [`RunnerResult`]: crate::packer::runner::RunnerResult

pub mod job;
pub mod process;

use std::time::Duration;

use crate::packer::runner::BuildRequest;

/// An environment variable whose value comes from a Secret key. The Job
/// executor references it (`secretKeyRef`); the process executor sets the
/// value it read. The value is never printed.
#[derive(Clone)]
pub struct SecretEnv {
    /// Variable name in the runner's environment.
    pub name: String,
    /// Secret in the ImageBuild's namespace.
    pub secret: String,
    /// Key in the Secret.
    pub key: String,
    /// The value, for the process executor.
    pub value: String,
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretEnv({} <- {}/{})",
            self.name, self.secret, self.key
        )
    }
}

/// One build to launch.
#[derive(Debug, Clone)]
pub struct Launch {
    /// What to build.
    pub request: BuildRequest,
    /// Provider credentials and secret variables (`PKR_VAR_*`).
    pub secret_env: Vec<SecretEnv>,
    /// Longest the build may run.
    pub timeout: Duration,
    /// How long Packer may take to clean up once the build is stopped.
    pub grace: Duration,
    /// ServiceAccount for the Job.
    pub service_account: Option<String>,
}

impl Launch {
    /// Names of the secret variables, for the runner's redaction.
    pub fn secret_env_names(&self) -> String {
        self.secret_env
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Executors fail only on infrastructure problems; build failures are results.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The apiserver refused or failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Local process or file trouble.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Serialization of the request failed.
    #[error("encoding the build request: {0}")]
    Encode(#[from] serde_json::Error),
    /// The controller is shutting down and starts no build.
    #[error("the controller is shutting down")]
    ShuttingDown,
}
