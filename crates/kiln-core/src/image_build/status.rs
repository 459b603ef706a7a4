//! The status that follows from each decision; pure, so the controller writes
//! status only when the result differs from what is stored.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::decide::Start;
use crate::api::{
    BuildPhase, BuildRecord, BuildResult, CurrentBuild, ExecutorType, FailureRecord,
    ImageBuildSpec, ImageBuildStatus, ImageRecord, RegionArtifact,
};
use crate::{
    conditions::{ConditionStatus, Progress, Report},
    reasons,
};

/// Builds kept in `status.history`.
pub const HISTORY: usize = 10;

/// `YYYY-MM-DD-HHMM` in UTC, the name suffix users give images today.
pub fn version_stamp(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d-%H%M").to_string()
}

fn base(status: &ImageBuildStatus, generation: Option<i64>) -> ImageBuildStatus {
    let mut s = status.clone();
    s.observed_generation = generation;
    s
}

fn progressing(
    s: &mut ImageBuildStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    Report {
        ready: ConditionStatus::Unknown,
        reason,
        message,
        progress: Progress::Reconciling(reason),
    }
    .apply(&mut s.conditions, generation, Time(now));
}

/// A build was started (or adopted).
pub fn started<I>(
    status: &ImageBuildStatus,
    start: &Start<I>,
    executor: ExecutorType,
    handle: &str,
    parent_image: Option<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    s.current_build = Some(CurrentBuild {
        build_id: start.build_id.clone(),
        build_key: start.build_key.clone(),
        spec_hash: start.spec_hash.clone(),
        executor,
        parent_image,
        handle: handle.to_owned(),
        attempt: start.attempt,
        started_at: Time(now),
    });
    if let Some(request) = &start.handles_request {
        s.last_handled_reconcile_at = Some(request.clone());
    }
    s.phase = Some(BuildPhase::Building);
    let message = format!("building {} (attempt {})", start.build_id, start.attempt);
    progressing(&mut s, reasons::BUILDING, &message, generation, now);
    s
}

/// A build is still running.
pub fn running(status: &ImageBuildStatus, generation: Option<i64>) -> ImageBuildStatus {
    let mut s = base(status, generation);
    s.phase = Some(BuildPhase::Building);
    s
}

fn record(
    s: &mut ImageBuildStatus,
    current: &CurrentBuild,
    result: BuildResult,
    message: Option<String>,
    artifacts: Vec<RegionArtifact>,
    now: Timestamp,
) {
    s.history.insert(
        0,
        BuildRecord {
            build_id: current.build_id.clone(),
            spec_hash: current.spec_hash.clone(),
            attempt: current.attempt,
            result,
            started_at: current.started_at.clone(),
            finished_at: Time(now),
            message,
            artifacts,
        },
    );
    s.history.truncate(HISTORY);
    s.current_build = None;
}

/// A build succeeded and its images were verified.
pub fn succeeded(
    status: &ImageBuildStatus,
    current: &CurrentBuild,
    artifacts: Vec<RegionArtifact>,
    template_revision: Option<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    record(
        &mut s,
        current,
        BuildResult::Succeeded,
        None,
        artifacts.clone(),
        now,
    );
    s.latest_image = Some(ImageRecord {
        version: version_stamp(current.started_at.0),
        build_id: current.build_id.clone(),
        build_key: current.build_key.clone(),
        spec_hash: current.spec_hash.clone(),
        template_revision,
        built_at: Time(now),
        parent_image: current.parent_image.clone(),
        artifacts,
    });
    s.last_failure = None;
    s.phase = Some(BuildPhase::Succeeded);
    up_to_date_conditions(&mut s, generation, now);
    s
}

fn up_to_date_conditions(s: &mut ImageBuildStatus, generation: Option<i64>, now: Timestamp) {
    let message = s.latest_image.as_ref().map_or_else(String::new, |l| {
        let ids: Vec<String> = l
            .artifacts
            .iter()
            .map(|a| format!("{}={}", a.region, a.image_id))
            .collect();
        format!(
            "image {} built by {}: {}",
            l.version,
            l.build_id,
            ids.join(", ")
        )
    });
    Report {
        ready: ConditionStatus::True,
        reason: reasons::SUCCEEDED,
        message: &message,
        progress: Progress::Settled,
    }
    .apply(&mut s.conditions, generation, Time(now));
}

/// A build failed: schedule a retry, or stall when retrying cannot help or the
/// retries are used up.
pub fn failed(
    status: &ImageBuildStatus,
    spec: &ImageBuildSpec,
    current: &CurrentBuild,
    message: &str,
    retryable: bool,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    record(
        &mut s,
        current,
        BuildResult::Failed,
        Some(message.to_owned()),
        Vec::new(),
        now,
    );
    let failed_attempts = s
        .last_failure
        .as_ref()
        .filter(|f| f.build_key == current.build_key)
        .map_or(0, |f| f.failed_attempts)
        .max(current.attempt - 1)
        + 1;
    let limit = spec.retry.as_ref().map_or(3, |r| r.limit);
    let will_retry = retryable && failed_attempts <= limit;
    let next = will_retry.then(|| {
        let wait = super::decide::backoff(spec, failed_attempts);
        now.checked_add(
            jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::from_secs(60)),
        )
        .unwrap_or(now)
    });
    s.last_failure = Some(FailureRecord {
        build_key: current.build_key.clone(),
        failed_attempts,
        retryable,
        message: message.to_owned(),
        next_attempt_at: next.map(Time),
    });
    s.phase = Some(BuildPhase::Failed);
    match next {
        Some(at) => {
            let text = format!(
                "attempt {} of build {} failed; retrying at {at}: {message}",
                current.attempt, current.build_key
            );
            Report {
                ready: ConditionStatus::False,
                reason: reasons::BUILD_FAILED,
                message: &text,
                progress: Progress::Reconciling(reasons::RETRY_SCHEDULED),
            }
            .apply(&mut s.conditions, generation, Time(now));
        }
        None if !retryable => stall(&mut s, reasons::BUILD_INVALID, message, generation, now),
        None => stall(
            &mut s,
            reasons::RETRIES_EXHAUSTED,
            &format!(
                "gave up after {failed_attempts} failed attempts; fix the cause, then change the spec or set the reconcile.fluxcd.io/requestedAt annotation to try again. Last error: {message}"
            ),
            generation,
            now,
        ),
    }
    s
}

fn stall(
    s: &mut ImageBuildStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    Report {
        ready: ConditionStatus::False,
        reason,
        message,
        progress: Progress::Stalled,
    }
    .apply(&mut s.conditions, generation, Time(now));
}

/// The user must act.
pub fn stalled(
    status: &ImageBuildStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    if s.phase != Some(BuildPhase::Succeeded) || s.latest_image.is_none() {
        s.phase = Some(BuildPhase::Failed);
    }
    stall(&mut s, reason, message, generation, now);
    s
}

/// A build finished, but its images cannot be recorded yet: the provider
/// has not made them usable (`stalled` false: checked again later), or it
/// refuses kiln's credentials the claim (`stalled` true: the user must
/// act). The build stays current, so its images are claimed, not lost, once
/// they are ready or the credentials are fixed.
pub fn claim_pending(
    status: &ImageBuildStatus,
    reason: &str,
    message: &str,
    stalled: bool,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    if stalled {
        stall(&mut s, reason, message, generation, now);
    } else {
        progressing(&mut s, reason, message, generation, now);
    }
    s
}

/// Waiting for a referenced object.
pub fn waiting(
    status: &ImageBuildStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    s.phase = Some(BuildPhase::Pending);
    Report {
        ready: ConditionStatus::False,
        reason,
        message,
        progress: Progress::Reconciling(reason),
    }
    .apply(&mut s.conditions, generation, Time(now));
    s
}

/// A retry is scheduled; conditions already say so.
/// A build stopped by a controller shutdown or restart: recorded in the
/// history but counted as no failure, so the next decision starts the same
/// attempt again.
pub fn interrupted(
    status: &ImageBuildStatus,
    current: &CurrentBuild,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    record(
        &mut s,
        current,
        BuildResult::Interrupted,
        Some(message.to_owned()),
        Vec::new(),
        now,
    );
    s.phase = Some(BuildPhase::Pending);
    let text = format!(
        "build {} was interrupted ({message}); starting it again",
        current.build_id
    );
    progressing(&mut s, reasons::INTERRUPTED, &text, generation, now);
    s
}

pub fn retry_scheduled(status: &ImageBuildStatus, generation: Option<i64>) -> ImageBuildStatus {
    base(status, generation)
}

/// Suspended: nothing new starts.
pub fn suspended(status: &ImageBuildStatus, generation: Option<i64>) -> ImageBuildStatus {
    let mut s = base(status, generation);
    s.phase = Some(BuildPhase::Suspended);
    s
}

/// The latest image is current.
pub fn up_to_date(
    status: &ImageBuildStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageBuildStatus {
    let mut s = base(status, generation);
    s.phase = Some(BuildPhase::Succeeded);
    s.last_failure = None;
    up_to_date_conditions(&mut s, generation, now);
    s
}
