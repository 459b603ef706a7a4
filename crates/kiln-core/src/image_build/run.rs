//! What a build run reports: the runner's result (written by `kiln runner`,
//! read back by the executors) and the executor's view of a running build.

use serde::{Deserialize, Serialize};

use crate::api::RegionArtifact;

/// What the executor says about the build in `status.currentBuild`.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Still going.
    Running,
    /// Finished with the runner's report.
    Finished(RunnerResult),
    /// Finished without a report (the Job failed before the runner could
    /// write one): a failed attempt.
    Lost(String),
    /// Stopped by a controller shutdown or restart, not by its own fault:
    /// Packer was told to cancel and clean up. Not a failed attempt; the same
    /// build starts again.
    Interrupted(String),
}

/// How a run ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Packer built the images.
    Succeeded,
    /// `packer validate` refused the template or its variables: the user must
    /// change something, retrying is pointless.
    Invalid,
    /// `packer build` (or init) failed; a retry may succeed.
    Failed,
    /// The runner was told to stop (SIGTERM or SIGINT); Packer cancelled the
    /// build and cleaned up what it had made.
    Interrupted,
}

/// The runner's report, small enough for a termination message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunnerResult {
    /// The build it ran.
    pub build_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Images per region.
    #[serde(default)]
    pub artifacts: Vec<RegionArtifact>,
    /// Last error lines, secrets redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Packer's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packer_version: Option<String>,
    /// What Packer said it created in the cloud, for the sweep after a run
    /// that did not end with recorded images.
    #[serde(default, skip_serializing_if = "Created::is_empty")]
    pub created: Created,
}

/// What Packer announced it created in the cloud during one run: its
/// temporary instance, key pair and security group, and the images it began.
/// Packer deletes them when it ends cleanly; after a kill, a cancellation in
/// the middle of an AMI copy, or a failure, some stay. The controller sweeps
/// them by this record (docs/crash-safety.md): what the run of a build ID
/// announced is provably that build's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    /// When `packer build` started: an image is the run's only if it was
    /// created at or after this moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<jiff::Timestamp>,
    /// Names of the images Packer began creating.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Temporary instances, by ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Temporary key pairs, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_pairs: Vec<String>,
    /// Temporary security groups, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

impl Created {
    /// Nothing was announced.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
            && self.instances.is_empty()
            && self.key_pairs.is_empty()
            && self.security_groups.is_empty()
    }
}
