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
}
