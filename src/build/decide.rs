//! What to do next with an ImageBuild: a pure function of what was observed.

use std::time::Duration;

use jiff::Timestamp;

use super::identity::{build_id, build_key};
use crate::{
    api::{ImageBuildSpec, ImageBuildStatus},
    packer::runner::RunnerResult,
};

/// Default longest build attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// How often a running build is looked at even without a watch event.
pub const POLL_RUNNING: Duration = Duration::from_secs(15);
/// How often a missing Secret or ConfigMap is looked for again.
pub const POLL_DEPENDENCY: Duration = Duration::from_secs(15);

/// What the executor says about the build in `status.currentBuild`.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Still going.
    Running,
    /// Finished with the runner's report.
    Finished(RunnerResult),
    /// Finished without a report (the Job failed before the runner could
    /// write one, or the process was orphaned by a controller restart).
    Lost(String),
}

/// Why the inputs of a build could not be gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputProblem {
    /// A referenced object does not exist (yet): wait for it.
    Missing {
        /// Short reason for the condition.
        reason: &'static str,
        /// What is missing and how to fix it.
        message: String,
    },
    /// The user must change something: stall.
    Invalid {
        /// Short reason for the condition.
        reason: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A feature this version does not implement yet.
    Unsupported {
        /// What is not supported.
        message: String,
    },
}

/// Everything `decide` looks at.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The object's UID.
    pub uid: &'a str,
    /// The spec.
    pub spec: &'a ImageBuildSpec,
    /// The current status.
    pub status: &'a ImageBuildStatus,
    /// `reconcile.fluxcd.io/requestedAt` (or kiln's own annotation).
    pub requested_at: Option<&'a str>,
    /// The spec hash of the resolved inputs, or why there is none.
    pub inputs: Result<String, InputProblem>,
    /// The state of `status.currentBuild`, when there is one.
    pub run: Option<RunState>,
    /// Now.
    pub now: Timestamp,
}

/// A build to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Build key (spec hash + trigger).
    pub build_key: String,
    /// `<key>-<attempt>`.
    pub build_id: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// The spec hash being built.
    pub spec_hash: String,
    /// The rebuild request this build answers, to mark handled.
    pub handles_request: Option<String>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start a build.
    Start(Start),
    /// A build is running; look again after this long.
    Wait(Duration),
    /// The running build exceeded its timeout: stop it and count it as failed.
    TimedOut {
        /// The message to record.
        message: String,
    },
    /// The running build finished: record it (after verifying a success).
    Finished(RunnerResult),
    /// The running build vanished: record a retryable failure.
    Lost(String),
    /// A failed build is retried at this time.
    RetryAt(Timestamp),
    /// Nothing to do until the user acts.
    Stalled {
        /// Condition reason.
        reason: &'static str,
        /// What to fix.
        message: String,
    },
    /// Inputs are missing; look again later.
    Waiting {
        /// Condition reason.
        reason: &'static str,
        /// What is missing.
        message: String,
    },
    /// Suspended: start nothing.
    Suspended,
    /// The latest image matches the spec.
    UpToDate,
}

/// The build timeout of a spec.
pub fn timeout(spec: &ImageBuildSpec) -> Duration {
    spec.timeout.map_or(DEFAULT_TIMEOUT, |d| d.into())
}

/// Decides the next step.
pub fn decide(o: &Observation<'_>) -> Decision {
    // A running build is looked after first, whatever else changed: it will
    // be recorded, and a changed spec builds again afterwards.
    if let Some(current) = &o.status.current_build {
        return match &o.run {
            Some(RunState::Finished(result)) => Decision::Finished(result.clone()),
            Some(RunState::Lost(why)) => Decision::Lost(why.clone()),
            Some(RunState::Running) | None => {
                let limit = timeout(o.spec);
                let elapsed = o.now.duration_since(current.started_at.0).unsigned_abs();
                if elapsed >= limit {
                    Decision::TimedOut {
                        message: format!(
                            "build {} exceeded its timeout of {}s",
                            current.build_id,
                            limit.as_secs()
                        ),
                    }
                } else {
                    Decision::Wait(POLL_RUNNING.min(limit - elapsed))
                }
            }
        };
    }

    let spec_hash = match &o.inputs {
        Ok(hash) => hash.clone(),
        Err(InputProblem::Missing { reason, message }) => {
            return Decision::Waiting {
                reason,
                message: message.clone(),
            };
        }
        Err(InputProblem::Invalid { reason, message }) => {
            return Decision::Stalled {
                reason,
                message: message.clone(),
            };
        }
        Err(InputProblem::Unsupported { message }) => {
            return Decision::Stalled {
                reason: "Unsupported",
                message: message.clone(),
            };
        }
    };

    let pending_request = o
        .requested_at
        .filter(|r| !r.is_empty() && Some(*r) != o.status.last_handled_reconcile_at.as_deref());
    let trigger = pending_request
        .or(o.status.last_handled_reconcile_at.as_deref())
        .unwrap_or_default();
    let key = build_key(o.uid, &spec_hash, trigger);

    if o.status
        .latest_image
        .as_ref()
        .is_some_and(|l| l.build_key == key)
    {
        return Decision::UpToDate;
    }
    if o.spec.suspend {
        return Decision::Suspended;
    }

    let mut attempt = 1;
    if let Some(f) = o
        .status
        .last_failure
        .as_ref()
        .filter(|f| f.build_key == key)
    {
        if !f.retryable {
            return Decision::Stalled {
                reason: "BuildInvalid",
                message: f.message.clone(),
            };
        }
        let limit = o.spec.retry.as_ref().map_or(3, |r| r.limit);
        if f.failed_attempts > limit {
            return Decision::Stalled {
                reason: "RetriesExhausted",
                message: format!(
                    "gave up after {} failed attempts; fix the cause, then change the spec or set the reconcile.fluxcd.io/requestedAt annotation to try again. Last error: {}",
                    f.failed_attempts, f.message
                ),
            };
        }
        if let Some(at) = &f.next_attempt_at
            && at.0 > o.now
        {
            return Decision::RetryAt(at.0);
        }
        attempt = f.failed_attempts + 1;
    }
    Decision::Start(Start {
        build_id: build_id(&key, attempt),
        build_key: key,
        attempt,
        spec_hash,
        handles_request: pending_request.map(str::to_owned),
    })
}

/// Wait before attempt `failed + 1`: backoff doubled per further failure,
/// capped by maxBackoff (default 1h).
pub fn backoff(spec: &ImageBuildSpec, failed: i32) -> Duration {
    let (base, cap) =
        spec.retry
            .as_ref()
            .map_or((Duration::from_secs(60), Duration::from_secs(3600)), |r| {
                (
                    r.backoff.into(),
                    r.max_backoff.map_or(Duration::from_secs(3600), Into::into),
                )
            });
    let factor = 2u32.saturating_pow(u32::try_from(failed.max(1) - 1).unwrap_or(0));
    base.saturating_mul(factor).min(cap.max(base))
}
