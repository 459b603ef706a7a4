//! What to do next with an ImageBuild: a pure function of what was observed.

use std::time::Duration;

use jiff::Timestamp;

pub use super::run::RunState;
use super::run::{Created, Outcome, RunnerResult};
use super::{
    identity::{build_id, build_key},
    schedule::Schedule,
};
use crate::{
    api::{CurrentBuild, ImageBuildSpec, ImageBuildStatus, RegionArtifact},
    reasons,
};

/// Default longest build attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// How often a running build is looked at even without a watch event.
pub const POLL_RUNNING: Duration = Duration::from_secs(15);
/// How often a missing Secret or ConfigMap is looked for again.
pub const POLL_DEPENDENCY: Duration = Duration::from_secs(15);

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

/// The resolved inputs of a build: their spec hash, and whatever the act step
/// needs of them (`I`: the controller's template, variables, credentials and
/// provider; nothing in tests).
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs<I> {
    /// Hash of the spec and everything it references.
    pub spec_hash: String,
    /// What the act step uses.
    pub resolved: I,
}

/// Everything `decide` looks at.
#[derive(Debug, Clone)]
pub struct Observation<'a, I> {
    /// The object's UID.
    pub uid: &'a str,
    /// The spec.
    pub spec: &'a ImageBuildSpec,
    /// The current status.
    pub status: &'a ImageBuildStatus,
    /// `reconcile.fluxcd.io/requestedAt` (or kiln's own annotation).
    pub requested_at: Option<&'a str>,
    /// The resolved inputs, or why there are none; `None` when they were not
    /// read because the current build is still running.
    pub inputs: Option<Result<Inputs<I>, InputProblem>>,
    /// The state of `status.currentBuild`, when there is one.
    pub run: Option<RunState>,
    /// Now.
    pub now: Timestamp,
}

/// A build to start, with everything starting it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Start<I> {
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
    /// The `spec.schedule` time this build answers, when the schedule
    /// (rather than a change) started it.
    pub scheduled_for: Option<Timestamp>,
    /// The inputs to build from.
    pub inputs: I,
}

/// What a run that ended without images announced it created (Packer's
/// temporary instance, key pair, security group, images it began), with the
/// inputs whose provider removes what is left of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep<I> {
    /// What the run announced.
    pub created: Created,
    /// The inputs as they are now (their provider holds the credentials).
    pub inputs: I,
}

/// What to do next; each variant carries what acting on it takes.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildDecision<I> {
    /// Start a build.
    Start(Start<I>),
    /// A build is running; look again after this long.
    Wait(Duration),
    /// The running build exceeded its timeout: stop it and count it as
    /// failed (once its runner has ended, where the executor reports that).
    TimedOut {
        /// The build to stop.
        current: CurrentBuild,
        /// The message to record.
        message: String,
    },
    /// The running build produced images: verify and record them.
    Succeeded {
        /// The build that finished.
        current: CurrentBuild,
        /// Images per region, as the runner reported them.
        artifacts: Vec<RegionArtifact>,
        /// Its inputs as they are now (the provider verifies the images).
        inputs: I,
    },
    /// The running build failed, or vanished without a report: record a
    /// failed attempt.
    Failed {
        /// The build that failed.
        current: CurrentBuild,
        /// What went wrong.
        message: String,
        /// Whether another attempt may succeed (`packer validate` failures
        /// never do).
        retryable: bool,
        /// What the run left in the cloud, to remove first.
        sweep: Option<Sweep<I>>,
    },
    /// The running build was stopped by a controller shutdown or restart:
    /// record that, count no failure, and build again.
    Interrupted {
        /// The build that was stopped.
        current: CurrentBuild,
        /// What stopped it.
        message: String,
        /// What the run left in the cloud, to remove before it runs again.
        sweep: Option<Sweep<I>>,
    },
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

impl<I> BuildDecision<I> {
    /// The current build this decision records as ended, if any. Its traces
    /// (a process executor's result file) may go once that record is stored,
    /// not before: a failed status write must find the result again.
    pub fn ends(&self) -> Option<&CurrentBuild> {
        match self {
            BuildDecision::TimedOut { current, .. }
            | BuildDecision::Succeeded { current, .. }
            | BuildDecision::Failed { current, .. }
            | BuildDecision::Interrupted { current, .. } => Some(current),
            _ => None,
        }
    }
}

/// The build timeout of a spec.
pub fn timeout(spec: &ImageBuildSpec) -> Duration {
    spec.timeout.map_or(DEFAULT_TIMEOUT, |d| d.into())
}

/// What a finished run means.
fn finished<I: Clone>(
    current: &CurrentBuild,
    result: &RunnerResult,
    inputs: &Option<Result<Inputs<I>, InputProblem>>,
) -> BuildDecision<I> {
    let message = |default: &str| result.message.clone().unwrap_or_else(|| default.into());
    let current = current.clone();
    // A run that ended without images may have left some of what it made;
    // removing that takes the provider, so missing inputs wait.
    let sweep = match (result.outcome, result.created.is_empty(), inputs) {
        (Outcome::Succeeded, _, _) | (_, true, _) => None,
        (_, false, Some(Ok(inputs))) => Some(Sweep {
            created: result.created.clone(),
            inputs: inputs.resolved.clone(),
        }),
        (_, false, Some(Err(problem))) => {
            return BuildDecision::Waiting {
                reason: reasons::DEPENDENCY_NOT_FOUND,
                message: format!(
                    "build {} ended, and removing what it left in the cloud needs its inputs, which can no longer be read: {problem:?}",
                    current.build_id
                ),
            };
        }
        (_, false, None) => return BuildDecision::Wait(POLL_DEPENDENCY),
    };
    match result.outcome {
        Outcome::Invalid => BuildDecision::Failed {
            current,
            message: message("packer validate failed"),
            retryable: false,
            sweep,
        },
        Outcome::Failed => BuildDecision::Failed {
            current,
            message: message("packer build failed"),
            retryable: true,
            sweep,
        },
        Outcome::Interrupted => BuildDecision::Interrupted {
            current,
            message: message("the runner was stopped"),
            sweep,
        },
        Outcome::Succeeded => match inputs {
            Some(Ok(inputs)) => BuildDecision::Succeeded {
                current,
                artifacts: result.artifacts.clone(),
                inputs: inputs.resolved.clone(),
            },
            // The inputs vanished after the build started (a Secret was
            // deleted): the images still have to be claimed, so wait.
            Some(Err(problem)) => BuildDecision::Waiting {
                reason: reasons::DEPENDENCY_NOT_FOUND,
                message: format!(
                    "build {} finished, but its inputs can no longer be read: {problem:?}",
                    current.build_id
                ),
            },
            None => BuildDecision::Wait(POLL_DEPENDENCY),
        },
    }
}

/// Decides the next step.
pub fn decide<I: Clone>(o: &Observation<'_, I>) -> BuildDecision<I> {
    // A running build is looked after first, whatever else changed: it will
    // be recorded, and a changed spec builds again afterwards.
    if let Some(current) = &o.status.current_build {
        return match &o.run {
            Some(RunState::Finished(result)) => finished(current, result, &o.inputs),
            Some(RunState::Interrupted(why)) => BuildDecision::Interrupted {
                current: current.clone(),
                message: why.clone(),
                sweep: None,
            },
            Some(RunState::Lost(why)) => BuildDecision::Failed {
                current: current.clone(),
                message: why.clone(),
                retryable: true,
                sweep: None,
            },
            Some(RunState::Running) | None => {
                let limit = timeout(o.spec);
                let elapsed = o.now.duration_since(current.started_at.0).unsigned_abs();
                if elapsed >= limit {
                    BuildDecision::TimedOut {
                        current: current.clone(),
                        message: format!(
                            "build {} exceeded its timeout of {}s",
                            current.build_id,
                            limit.as_secs()
                        ),
                    }
                } else {
                    BuildDecision::Wait(POLL_RUNNING.min(limit - elapsed))
                }
            }
        };
    }

    let Some(inputs) = &o.inputs else {
        // Not read: nothing to decide until they are.
        return BuildDecision::Wait(POLL_DEPENDENCY);
    };
    let (spec_hash, resolved) = match inputs {
        Ok(i) => (i.spec_hash.clone(), i.resolved.clone()),
        Err(InputProblem::Missing { reason, message }) => {
            return BuildDecision::Waiting {
                reason,
                message: message.clone(),
            };
        }
        Err(InputProblem::Invalid { reason, message }) => {
            return BuildDecision::Stalled {
                reason,
                message: message.clone(),
            };
        }
        Err(InputProblem::Unsupported { message }) => {
            return BuildDecision::Stalled {
                reason: reasons::UNSUPPORTED,
                message: message.clone(),
            };
        }
    };

    let schedule = match o.spec.schedule.as_deref().map(Schedule::parse) {
        Some(Err(e)) => {
            return BuildDecision::Stalled {
                reason: reasons::INVALID_SCHEDULE,
                message: format!(
                    "spec.schedule: {e}; use five cron fields (e.g. '0 3 * * 1') or a macro such as @weekly"
                ),
            };
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };

    let pending_request = o
        .requested_at
        .filter(|r| !r.is_empty() && Some(*r) != o.status.last_handled_reconcile_at.as_deref());
    let trigger = pending_request
        .or(o.status.last_handled_reconcile_at.as_deref())
        .unwrap_or_default();
    // A schedule time that passed since the latest image was built makes a
    // new build (with its own key, so a restart finds the same one).
    let latest = o.status.latest_image.as_ref();
    let scheduled_key =
        |slot: Timestamp| build_key(o.uid, &spec_hash, &format!("{trigger}@{slot}"));
    let due = schedule.as_ref().and_then(|s| {
        let slot = s.prev(o.now)?;
        latest.filter(|l| l.built_at.0 < slot).map(|_| slot)
    });
    let key = due.map_or_else(|| build_key(o.uid, &spec_hash, trigger), scheduled_key);

    let up_to_date = latest.is_some_and(|l| {
        l.build_key == key
            // The latest image is itself the answer to the schedule time
            // before it was built.
            || (due.is_none()
                && schedule
                    .as_ref()
                    .and_then(|s| s.prev(l.built_at.0))
                    .is_some_and(|slot| l.build_key == scheduled_key(slot)))
    });
    if up_to_date {
        return BuildDecision::UpToDate;
    }
    if o.spec.suspend {
        return BuildDecision::Suspended;
    }

    let mut attempt = 1;
    if let Some(f) = o
        .status
        .last_failure
        .as_ref()
        .filter(|f| f.build_key == key)
    {
        if !f.retryable {
            return BuildDecision::Stalled {
                reason: reasons::BUILD_INVALID,
                message: f.message.clone(),
            };
        }
        let limit = o.spec.retry.as_ref().map_or(3, |r| r.limit);
        if f.failed_attempts > limit {
            return BuildDecision::Stalled {
                reason: reasons::RETRIES_EXHAUSTED,
                message: format!(
                    "gave up after {} failed attempts; fix the cause, then change the spec or set the reconcile.fluxcd.io/requestedAt annotation to try again. Last error: {}",
                    f.failed_attempts, f.message
                ),
            };
        }
        if let Some(at) = &f.next_attempt_at
            && at.0 > o.now
        {
            return BuildDecision::RetryAt(at.0);
        }
        attempt = f.failed_attempts + 1;
    }
    BuildDecision::Start(Start {
        build_id: build_id(&key, attempt),
        build_key: key,
        attempt,
        spec_hash,
        handles_request: pending_request.map(str::to_owned),
        scheduled_for: due,
        inputs: resolved,
    })
}

/// When to look at an up-to-date ImageBuild again: at the resync interval, or
/// just after its next schedule time when that comes first.
pub fn recheck_after(spec: &ImageBuildSpec, now: Timestamp, resync: Duration) -> Duration {
    spec.schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s).ok())
        .and_then(|s| s.next(now))
        .map(|next| next.duration_since(now).unsigned_abs() + Duration::from_secs(1))
        .map_or(resync, |d| d.min(resync))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{ImageBuildStatus, RegionArtifact},
        image_build::status,
    };

    const UID: &str = "0b6f7c1e-uid";
    const HASH: &str = "aaaaaaaaaaaaaaaa";

    fn spec(yaml: &str) -> ImageBuildSpec {
        serde_yaml_ng::from_str(yaml).expect("spec fixture")
    }

    fn base_spec() -> ImageBuildSpec {
        spec(
            r#"
provider: {type: aws, regions: [us-east-1]}
template: {inline: "source x"}
retry: {limit: 2, backoff: 10s, maxBackoff: 30s}
"#,
        )
    }

    fn status(yaml: &str) -> ImageBuildStatus {
        serde_yaml_ng::from_str(yaml).expect("status fixture")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn observe<'a>(
        spec: &'a ImageBuildSpec,
        status: &'a ImageBuildStatus,
        now: &str,
    ) -> Observation<'a, ()> {
        Observation {
            uid: UID,
            spec,
            status,
            requested_at: None,
            inputs: Some(Ok(inputs(HASH))),
            run: None,
            now: at(now),
        }
    }

    fn result_of(outcome: Outcome) -> RunnerResult {
        RunnerResult {
            build_id: "x".into(),
            outcome,
            artifacts: vec![],
            message: None,
            packer_version: None,
            created: Created::default(),
        }
    }

    fn inputs(hash: &str) -> Inputs<()> {
        Inputs {
            spec_hash: hash.into(),
            resolved: (),
        }
    }

    fn key(request: &str) -> String {
        build_key(UID, HASH, request)
    }

    fn built(key: &str) -> ImageBuildStatus {
        status(&format!(
            r#"
latestImage:
  version: 2026-11-22-1000
  buildId: {key}-1
  buildKey: {key}
  specHash: {HASH}
  builtAt: 2026-11-22T10:05:00Z
  artifacts: [{{region: us-east-1, imageId: ami-1}}]
"#
        ))
    }

    #[test]
    fn a_new_object_starts_attempt_one() {
        let (s, st) = (base_spec(), ImageBuildStatus::default());
        let BuildDecision::Start(start) = decide(&observe(&s, &st, "2026-11-22T10:00:00Z")) else {
            panic!("expected Start")
        };
        assert_eq!(start.attempt, 1);
        assert_eq!(start.build_id, format!("{}-1", key("")));
        assert_eq!(start.handles_request, None);
    }

    #[test]
    fn a_schedule_time_after_the_latest_image_rebuilds_once() {
        // Daily at 03:00; the latest image was built 2026-11-22 10:05.
        let mut s = base_spec();
        s.schedule = Some("0 3 * * *".into());
        let st = built(&key(""));
        // Before the next 03:00: up to date, and looked at again just after it.
        assert_eq!(
            decide(&observe(&s, &st, "2026-11-22T23:00:00Z")),
            BuildDecision::UpToDate
        );
        assert_eq!(
            recheck_after(&s, at("2026-11-22T23:00:00Z"), Duration::from_secs(36000)),
            Duration::from_secs(4 * 3600 + 1)
        );
        // After it: a build for that time, with a key of its own.
        let BuildDecision::Start(start) = decide(&observe(&s, &st, "2026-11-23T03:00:30Z")) else {
            panic!("expected a scheduled Start")
        };
        let slot = at("2026-11-23T03:00:00Z");
        assert_eq!(start.scheduled_for, Some(slot));
        assert_eq!(start.build_key, build_key(UID, HASH, &format!("@{slot}")));
        // A restart decides the same build.
        let again = decide(&observe(&s, &st, "2026-11-23T03:20:00Z"));
        assert!(matches!(again, BuildDecision::Start(s) if s.build_key == start.build_key));
        // Once it is the latest image, nothing more until the next time.
        let mut done = built(&start.build_key);
        if let Some(l) = done.latest_image.as_mut() {
            l.built_at =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2026-11-23T03:25:00Z"));
        }
        assert_eq!(
            decide(&observe(&s, &done, "2026-11-23T12:00:00Z")),
            BuildDecision::UpToDate
        );
        assert!(matches!(
            decide(&observe(&s, &done, "2026-11-24T03:00:10Z")),
            BuildDecision::Start(s) if s.scheduled_for == Some(at("2026-11-24T03:00:00Z"))
        ));
        // Suspended: due, but nothing starts.
        s.suspend = true;
        assert_eq!(
            decide(&observe(&s, &done, "2026-11-24T03:00:10Z")),
            BuildDecision::Suspended
        );
    }

    #[test]
    fn the_first_build_is_not_a_scheduled_one_and_bad_schedules_stall() {
        let mut s = base_spec();
        s.schedule = Some("@weekly".into());
        let st = ImageBuildStatus::default();
        let BuildDecision::Start(start) = decide(&observe(&s, &st, "2026-11-22T10:00:00Z")) else {
            panic!("expected Start")
        };
        assert_eq!(start.scheduled_for, None);
        assert_eq!(start.build_key, key(""));
        s.schedule = Some("0 25 * * *".into());
        let BuildDecision::Stalled { reason, message } =
            decide(&observe(&s, &st, "2026-11-22T10:00:00Z"))
        else {
            panic!("expected Stalled")
        };
        assert_eq!(reason, "InvalidSchedule");
        assert!(
            message.contains("spec.schedule: hour: 25 is outside 0-23"),
            "{message}"
        );
    }

    #[test]
    fn the_same_inputs_are_up_to_date_and_new_ones_build() {
        let (s, st) = (base_spec(), built(&key("")));
        assert_eq!(
            decide(&observe(&s, &st, "2026-11-22T11:00:00Z")),
            BuildDecision::UpToDate
        );
        let mut o = observe(&s, &st, "2026-11-22T11:00:00Z");
        o.inputs = Some(Ok(inputs("bbbbbbbbbbbbbbbb")));
        assert!(matches!(decide(&o), BuildDecision::Start(s) if s.spec_hash == "bbbbbbbbbbbbbbbb"));
    }

    #[test]
    fn requested_at_forces_one_rebuild_per_value() {
        let s = base_spec();
        let st = built(&key(""));
        let mut o = observe(&s, &st, "2026-11-22T11:00:00Z");
        o.requested_at = Some("r1");
        let BuildDecision::Start(start) = decide(&o) else {
            panic!("expected Start")
        };
        assert_eq!(start.handles_request.as_deref(), Some("r1"));
        assert_eq!(start.build_key, key("r1"));
        // Once built and handled, the same value does nothing.
        let mut st = built(&key("r1"));
        st.last_handled_reconcile_at = Some("r1".into());
        let mut o = observe(&s, &st, "2026-11-22T11:00:00Z");
        o.requested_at = Some("r1");
        assert_eq!(decide(&o), BuildDecision::UpToDate);
        o.requested_at = Some("");
        assert_eq!(
            decide(&o),
            BuildDecision::UpToDate,
            "an empty value is no request"
        );
    }

    #[test]
    fn suspend_starts_nothing_new() {
        let mut s = base_spec();
        s.suspend = true;
        let st = ImageBuildStatus::default();
        assert_eq!(
            decide(&observe(&s, &st, "2026-11-22T10:00:00Z")),
            BuildDecision::Suspended
        );
        let st = built(&key(""));
        assert_eq!(
            decide(&observe(&s, &st, "2026-11-22T10:00:00Z")),
            BuildDecision::UpToDate
        );
    }

    fn running(attempt: i32) -> ImageBuildStatus {
        status(&format!(
            r#"
currentBuild:
  buildId: {k}-{attempt}
  buildKey: {k}
  specHash: {HASH}
  executor: process
  handle: pid:42
  attempt: {attempt}
  startedAt: 2026-11-22T10:00:00Z
"#,
            k = key("")
        ))
    }

    #[test]
    fn a_running_build_is_waited_for_until_its_timeout() {
        let mut s = base_spec();
        s.timeout = Some("10m".parse().expect("duration"));
        let st = running(1);
        assert_eq!(
            decide(&observe(&s, &st, "2026-11-22T10:01:00Z")),
            BuildDecision::Wait(POLL_RUNNING)
        );
        assert_eq!(
            decide(&observe(&s, &st, "2026-11-22T10:09:55Z")),
            BuildDecision::Wait(Duration::from_secs(5))
        );
        assert!(matches!(
            decide(&observe(&s, &st, "2026-11-22T10:10:00Z")),
            BuildDecision::TimedOut { .. }
        ));
    }

    #[test]
    fn a_running_build_is_recorded_before_anything_else() {
        let mut s = base_spec();
        s.suspend = true;
        let st = running(1);
        let result = RunnerResult {
            build_id: "x".into(),
            outcome: Outcome::Succeeded,
            artifacts: vec![],
            message: None,
            packer_version: None,
            created: Created::default(),
        };
        let mut o = observe(&s, &st, "2026-11-22T10:01:00Z");
        o.run = Some(RunState::Finished(result.clone()));
        o.inputs = Some(Ok(inputs("changed")));
        let current = st.current_build.clone().expect("current");
        assert_eq!(
            decide(&o),
            BuildDecision::Succeeded {
                current: current.clone(),
                artifacts: vec![],
                inputs: ()
            }
        );
        o.run = Some(RunState::Lost("gone".into()));
        assert_eq!(
            decide(&o),
            BuildDecision::Failed {
                current: current.clone(),
                message: "gone".into(),
                retryable: true,
                sweep: None
            }
        );
        o.run = Some(RunState::Finished(result_of(Outcome::Invalid)));
        assert_eq!(
            decide(&o),
            BuildDecision::Failed {
                current: current.clone(),
                message: "packer validate failed".into(),
                retryable: false,
                sweep: None
            }
        );
        o.run = Some(RunState::Interrupted("restart".into()));
        assert_eq!(
            decide(&o),
            BuildDecision::Interrupted {
                current: current.clone(),
                message: "restart".into(),
                sweep: None
            }
        );
        // A runner that reports it was stopped is interrupted, not failed.
        o.run = Some(RunState::Finished(RunnerResult {
            message: Some("stopped".into()),
            ..result_of(Outcome::Interrupted)
        }));
        assert_eq!(
            decide(&o),
            BuildDecision::Interrupted {
                current: current.clone(),
                message: "stopped".into(),
                sweep: None
            }
        );
        // What an interrupted run announced is swept with the inputs' provider
        // before it runs again; without readable inputs, it waits.
        let created = Created {
            key_pairs: vec!["packer_1".into()],
            images: vec!["app-1".into()],
            ..Default::default()
        };
        o.run = Some(RunState::Finished(RunnerResult {
            message: Some("stopped".into()),
            created: created.clone(),
            ..result_of(Outcome::Interrupted)
        }));
        assert_eq!(
            decide(&o),
            BuildDecision::Interrupted {
                current: current.clone(),
                message: "stopped".into(),
                sweep: Some(Sweep {
                    created,
                    inputs: ()
                })
            }
        );
        o.inputs = Some(Err(InputProblem::Missing {
            reason: reasons::CREDENTIALS_NOT_FOUND,
            message: "no Secret".into(),
        }));
        assert!(matches!(decide(&o), BuildDecision::Waiting { .. }));
    }

    #[test]
    fn an_interrupted_build_starts_the_same_attempt_again() {
        let s = base_spec();
        let cur = running(1).current_build.expect("current");
        let t0 = at("2026-11-22T10:02:00Z");
        let after = status::interrupted(&running(1), &cur, "controller restart", Some(1), t0);
        assert_eq!(after.last_failure, None);
        assert_eq!(
            after.history[0].result,
            crate::api::BuildResult::Interrupted
        );
        let BuildDecision::Start(again) = decide(&observe(&s, &after, "2026-11-22T10:02:01Z"))
        else {
            panic!("expected Start")
        };
        assert_eq!((again.attempt, again.build_id), (1, cur.build_id));
    }

    #[test]
    fn failures_back_off_then_stall() {
        let s = base_spec();
        let cur = running(1).current_build.expect("current");
        let t0 = at("2026-11-22T10:02:00Z");
        let after_one = status::failed(&running(1), &s, &cur, "boom", true, Some(1), t0);
        assert_eq!(
            after_one.last_failure.as_ref().map(|f| f.failed_attempts),
            Some(1)
        );
        assert_eq!(
            decide(&observe(&s, &after_one, "2026-11-22T10:02:05Z")),
            BuildDecision::RetryAt(at("2026-11-22T10:02:10Z"))
        );
        let BuildDecision::Start(retry) = decide(&observe(&s, &after_one, "2026-11-22T10:02:10Z"))
        else {
            panic!("expected Start")
        };
        assert_eq!(retry.attempt, 2);
        assert_eq!(retry.build_id, format!("{}-2", key("")));

        // limit 2: attempts 2 and 3 may run; after the third failure, stall.
        let mut st = after_one;
        for attempt in 2..=3 {
            let mut r = running(attempt);
            r.last_failure = st.last_failure.clone();
            st = status::failed(
                &r,
                &s,
                r.current_build.as_ref().expect("current"),
                "boom",
                true,
                Some(1),
                t0,
            );
        }
        assert_eq!(st.last_failure.as_ref().map(|f| f.failed_attempts), Some(3));
        assert!(
            st.last_failure
                .as_ref()
                .is_some_and(|f| f.next_attempt_at.is_none())
        );
        assert!(crate::conditions::is_true(&st.conditions, "Stalled"));
        assert!(matches!(
            decide(&observe(&s, &st, "2026-11-22T12:00:00Z")),
            BuildDecision::Stalled {
                reason: reasons::RETRIES_EXHAUSTED,
                ..
            }
        ));
        // A new spec starts over.
        let mut o = observe(&s, &st, "2026-11-22T12:00:00Z");
        o.inputs = Some(Ok(inputs("cccccccccccccccc")));
        assert!(matches!(decide(&o), BuildDecision::Start(s) if s.attempt == 1));
    }

    #[test]
    fn invalid_templates_stall_without_retry() {
        let s = base_spec();
        let cur = running(1).current_build.expect("current");
        let st = status::failed(
            &running(1),
            &s,
            &cur,
            "packer validate failed: bad",
            false,
            Some(1),
            at("2026-11-22T10:02:00Z"),
        );
        assert!(matches!(
            decide(&observe(&s, &st, "2026-11-22T11:00:00Z")),
            BuildDecision::Stalled {
                reason: reasons::BUILD_INVALID,
                ..
            }
        ));
    }

    #[test]
    fn input_problems_wait_or_stall() {
        let (s, st) = (base_spec(), ImageBuildStatus::default());
        let mut o = observe(&s, &st, "2026-11-22T10:00:00Z");
        o.inputs = Some(Err(InputProblem::Missing {
            reason: reasons::CREDENTIALS_NOT_FOUND,
            message: "Secret x".into(),
        }));
        assert!(matches!(
            decide(&o),
            BuildDecision::Waiting {
                reason: reasons::CREDENTIALS_NOT_FOUND,
                ..
            }
        ));
        o.inputs = Some(Err(InputProblem::Invalid {
            reason: reasons::CREDENTIALS_INVALID,
            message: "lacks".into(),
        }));
        assert!(matches!(
            decide(&o),
            BuildDecision::Stalled {
                reason: reasons::CREDENTIALS_INVALID,
                ..
            }
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = base_spec();
        let secs: Vec<u64> = (1..=4).map(|n| backoff(&s, n).as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 30, 30]);
    }

    #[test]
    fn success_records_history_and_clears_the_failure() {
        let s = base_spec();
        let mut r = running(2);
        r.last_failure = status::failed(
            &running(1),
            &s,
            running(1).current_build.as_ref().expect("c"),
            "x",
            true,
            Some(1),
            at("2026-11-22T10:01:00Z"),
        )
        .last_failure;
        let artifacts = vec![RegionArtifact {
            region: "us-east-1".into(),
            image_id: "ami-2".into(),
        }];
        let st = status::succeeded(
            &r,
            r.current_build.as_ref().expect("c"),
            artifacts,
            None,
            Some(1),
            at("2026-11-22T10:05:00Z"),
        );
        assert!(st.last_failure.is_none() && st.current_build.is_none());
        assert_eq!(st.history.len(), 1);
        let latest = st.latest_image.as_ref().expect("latest");
        assert_eq!(latest.version, "2026-11-22-1000");
        assert_eq!(
            decide(&observe(&s, &st, "2026-11-22T10:06:00Z")),
            BuildDecision::UpToDate
        );
        let ready = crate::conditions::get(&st.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Succeeded")
        );
        assert!(ready.message.contains("us-east-1=ami-2"));
        // Writing the same status again changes nothing (no status churn).
        assert_eq!(
            status::up_to_date(&st, Some(1), at("2026-11-22T11:00:00Z")),
            st
        );
    }
}
