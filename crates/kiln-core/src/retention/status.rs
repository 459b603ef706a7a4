//! The ImagePolicy status that follows from one evaluation: pure, so the
//! controller writes it only when it differs from what is stored.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ImageVerdict;
use crate::{
    api::{ImageDecision, ImagePolicyStatus, PolicySummary, RetentionAction},
    conditions::{ConditionStatus, Progress, Report},
    reasons,
};

/// Entries kept per list in the status; the summary counts them all.
pub const STATUS_LIST_LIMIT: usize = 100;
/// How soon an evaluation with failures or unevaluated builds runs again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// What came of one verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The verdict was Keep: nothing to do.
    Kept,
    /// `dryRun`: the deprecation or deletion was only planned.
    Planned,
    /// Deleted at the provider.
    Deleted,
    /// Deleted, but something deleted with it (a snapshot) is left for the
    /// next evaluation's sweep; the note says what.
    DeletedPartly(String),
    /// Deprecated at the provider.
    Deprecated,
    /// The provider cannot do it and left the image as it was; the note says why.
    Unsupported(String),
    /// The call failed; retried at the next evaluation.
    Failed(String),
    /// The provider refused the call (credentials without the right): the
    /// user must act; the image is kept.
    Refused(String),
}

/// One verdict and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The ImageBuild the image belongs to.
    pub build: String,
    /// The planner's verdict.
    pub verdict: ImageVerdict,
    /// What came of it.
    pub applied: Applied,
}

/// Everything one evaluation found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Namespace of the policy.
    pub namespace: String,
    /// Names of the ImageBuilds the policy selects.
    pub selected: Vec<String>,
    /// Names `spec.builds.names` lists that do not exist.
    pub missing: Vec<String>,
    /// A verdict per owned image of the builds that could be evaluated.
    pub outcomes: Vec<Outcome>,
    /// Why other builds could not be evaluated, for now (retried).
    pub problems: Vec<String>,
    /// Why some builds cannot be evaluated until the user acts (the
    /// provider cannot do what the policy asks, or refuses kiln's
    /// credentials).
    pub stalls: Vec<String>,
    /// `spec.dryRun`.
    pub dry_run: bool,
    /// Pending deletions of an earlier, interrupted evaluation that this one
    /// could not settle (their build was not evaluated): kept pending.
    pub still_pending: Vec<ImageDecision>,
}

impl Evaluation {
    /// Deletions and deprecations that failed, as messages.
    pub fn failures(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| match &o.applied {
                Applied::Failed(e) => Some(format!(
                    "{} {} in {}: {e}",
                    if o.verdict.action == RetentionAction::Delete {
                        "deleting"
                    } else {
                        "deprecating"
                    },
                    o.verdict.image.image_id,
                    o.verdict.image.region
                )),
                _ => None,
            })
            .collect()
    }

    /// Deletions and deprecations the provider refused, as messages.
    pub fn refusals(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| match &o.applied {
                Applied::Refused(e) => Some(format!(
                    "{} in {}: {e}",
                    o.verdict.image.image_id, o.verdict.image.region
                )),
                _ => None,
            })
            .collect()
    }

    /// Whether the next evaluation should come sooner than the interval:
    /// something failed or could not be evaluated.
    pub fn retry_soon(&self) -> bool {
        !self.selected.is_empty() && (!self.problems.is_empty() || !self.failures().is_empty())
    }
}

fn record(o: &Outcome, action: RetentionAction, reason: String) -> ImageDecision {
    let image = &o.verdict.image;
    ImageDecision {
        build: o.build.clone(),
        region: image.region.clone(),
        image_id: image.image_id.clone(),
        build_id: image.build_id().map(str::to_owned),
        created_at: Some(Time(image.created_at)),
        action,
        reason,
    }
}

/// Status lists: by build and region, newest first.
fn status_order(a: &ImageDecision, b: &ImageDecision) -> std::cmp::Ordering {
    (&a.build, &a.region, &b.created_at, &a.image_id).cmp(&(
        &b.build,
        &b.region,
        &a.created_at,
        &b.image_id,
    ))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status written before an evaluation deletes anything: the deletions
/// it is about to make, added to those still pending.
pub fn with_intent(old: &ImagePolicyStatus, deletions: &[Outcome]) -> ImagePolicyStatus {
    let mut s = old.clone();
    for o in deletions {
        let d = record(o, RetentionAction::Delete, o.verdict.reason.clone());
        if !s
            .pending_deletions
            .iter()
            .any(|p| p.image_id == d.image_id && p.region == d.region)
        {
            s.pending_deletions.push(d);
        }
    }
    s
}

/// Pending deletions of an interrupted evaluation that are done: their image
/// is gone from a listing of its build. They count as deleted now.
pub fn recovered(pending: &ImageDecision) -> Outcome {
    Outcome {
        build: pending.build.clone(),
        verdict: ImageVerdict {
            image: super::ImageInfo {
                region: pending.region.clone(),
                image_id: pending.image_id.clone(),
                name: None,
                created_at: pending
                    .created_at
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                owner: pending.build_id.as_ref().map(|b| super::ImageOwner {
                    namespace: String::new(),
                    image_build: pending.build.clone(),
                    build_id: b.clone(),
                }),
                keep: false,
                tags: Default::default(),
                deprecated: false,
                obsolete: false,
                end_of_life: None,
                delete_blocked: false,
                dependents: Vec::new(),
            },
            action: RetentionAction::Delete,
            reason: format!("{}; deleted by an interrupted evaluation", pending.reason),
            replacement: None,
            delete_at: None,
        },
        applied: Applied::Deleted,
    }
}

/// The status after a suspended policy was looked at: only the generation.
pub fn suspended(old: &ImagePolicyStatus, generation: Option<i64>) -> ImagePolicyStatus {
    ImagePolicyStatus {
        observed_generation: generation,
        ..old.clone()
    }
}

/// The status after an evaluation.
pub fn evaluated(
    old: &ImagePolicyStatus,
    eval: &Evaluation,
    generation: Option<i64>,
    now: Timestamp,
) -> ImagePolicyStatus {
    let mut new = ImagePolicyStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        last_handled_reconcile_at: old.last_handled_reconcile_at.clone(),
        builds: eval.selected.clone(),
        last_evaluated_at: Some(Time(now)),
        ..Default::default()
    };
    let report = |new: &mut ImagePolicyStatus, report: Report<'_>| {
        report.apply(&mut new.conditions, generation, Time(now));
    };
    if eval.selected.is_empty() {
        let message = format!(
            "spec.builds selects no ImageBuild in namespace {}{}; nothing to prune",
            eval.namespace,
            if eval.missing.is_empty() {
                String::new()
            } else {
                format!(" (not found: {})", eval.missing.join(", "))
            }
        );
        new.summary = Some(PolicySummary::default());
        report(
            &mut new,
            Report {
                ready: ConditionStatus::False,
                reason: reasons::NO_BUILDS_SELECTED,
                message: &message,
                progress: Progress::Stalled,
            },
        );
        return new;
    }

    let mut summary = PolicySummary::default();
    for o in &eval.outcomes {
        let reason = o.verdict.reason.clone();
        match &o.applied {
            Applied::Kept => new.retained.push(record(o, RetentionAction::Keep, reason)),
            Applied::Planned => new.plan.push(record(o, o.verdict.action, reason)),
            Applied::Deleted => new.deleted.push(record(o, RetentionAction::Delete, reason)),
            Applied::DeletedPartly(note) => new.deleted.push(record(
                o,
                RetentionAction::Delete,
                format!("{reason}; {note}"),
            )),
            Applied::Deprecated => {
                // Obsolete images are listed with the deprecated, under their own action.
                new.deprecated.push(record(o, o.verdict.action, reason));
            }
            Applied::Unsupported(note) => new.retained.push(record(
                o,
                RetentionAction::Keep,
                format!("{reason}; {note}"),
            )),
            Applied::Failed(e) => new.retained.push(record(
                o,
                RetentionAction::Keep,
                format!("{reason}; the action failed and is retried: {e}"),
            )),
            Applied::Refused(e) => new.retained.push(record(
                o,
                RetentionAction::Keep,
                format!("{reason}; the provider refused it: {e}"),
            )),
        }
    }
    summary.retained = count(new.retained.len());
    summary.deprecated = count(new.deprecated.len());
    summary.planned = count(new.plan.len());
    // Deletions accumulate, newest first: the status says what this policy
    // has pruned, not only what its last evaluation found left to prune.
    let deleted_now = new.deleted.len();
    summary.deleted = count(deleted_now) + old.summary.as_ref().map_or(0, |s| s.deleted);
    new.deleted.sort_by(status_order);
    new.deleted.extend(old.deleted.iter().cloned());
    new.deleted.truncate(STATUS_LIST_LIMIT);
    for list in [&mut new.retained, &mut new.deprecated, &mut new.plan] {
        list.sort_by(status_order);
        list.truncate(STATUS_LIST_LIMIT);
    }
    new.summary = Some(summary.clone());
    new.pending_deletions = eval.still_pending.clone();

    let failures = eval.failures();
    let mut refused = eval.stalls.clone();
    refused.extend(eval.refusals());
    if !refused.is_empty() {
        // The user must act; whatever else could be done was done.
        report(
            &mut new,
            Report {
                ready: ConditionStatus::False,
                reason: reasons::PRUNE_REFUSED,
                message: &refused.join("; "),
                progress: Progress::Stalled,
            },
        );
    } else if !eval.problems.is_empty() {
        // Some builds could not be evaluated: say which, keep the rest going.
        report(
            &mut new,
            Report {
                ready: ConditionStatus::False,
                reason: reasons::BUILDS_NOT_EVALUATED,
                message: &eval.problems.join("; "),
                progress: Progress::Reconciling(reasons::BUILDS_NOT_EVALUATED),
            },
        );
    } else if !failures.is_empty() {
        let message = format!(
            "{} retention actions failed and are retried: {}",
            failures.len(),
            failures
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        report(
            &mut new,
            Report {
                ready: ConditionStatus::False,
                reason: reasons::PRUNE_FAILED,
                message: &message,
                progress: Progress::Reconciling(reasons::PRUNE_FAILED),
            },
        );
    } else if eval.dry_run {
        let message = format!(
            "dry run: would deprecate or delete {} image(s), keeps {}; see status.plan",
            summary.planned, summary.retained
        );
        report(
            &mut new,
            Report {
                ready: ConditionStatus::True,
                reason: reasons::DRY_RUN,
                message: &message,
                progress: Progress::Settled,
            },
        );
    } else {
        let message = evaluated_message(deleted_now, &summary);
        report(
            &mut new,
            Report {
                ready: ConditionStatus::True,
                reason: reasons::EVALUATED,
                message: &message,
                progress: Progress::Settled,
            },
        );
    }
    new
}

/// What an evaluation did, in plain words.
fn evaluated_message(deleted_now: usize, s: &PolicySummary) -> String {
    let mut did = Vec::new();
    if deleted_now > 0 {
        did.push(format!("deleted {deleted_now} image(s)"));
    }
    if s.deprecated > 0 {
        did.push(format!("{} image(s) deprecated", s.deprecated));
    }
    let did = if did.is_empty() {
        "nothing to prune".to_owned()
    } else {
        did.join(", ")
    };
    format!(
        "{did}; keeping {} image(s); {} deleted by this policy so far",
        s.retained, s.deleted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conditions, retention::ImageInfo};

    fn now() -> Timestamp {
        "2026-11-22T12:00:00Z".parse().expect("timestamp")
    }

    fn outcome(id: &str, action: RetentionAction, applied: Applied) -> Outcome {
        Outcome {
            build: "base".into(),
            verdict: ImageVerdict {
                image: ImageInfo {
                    region: "us-east-1".into(),
                    image_id: id.into(),
                    name: None,
                    created_at: now(),
                    owner: None,
                    keep: false,
                    tags: Default::default(),
                    deprecated: false,
                    obsolete: false,
                    end_of_life: None,
                    delete_blocked: false,
                    dependents: vec![],
                },
                action,
                reason: "because".into(),
                replacement: None,
                delete_at: None,
            },
            applied,
        }
    }

    fn eval(outcomes: Vec<Outcome>) -> Evaluation {
        Evaluation {
            namespace: "images".into(),
            selected: vec!["base".into()],
            outcomes,
            ..Default::default()
        }
    }

    fn ready(s: &ImagePolicyStatus) -> (String, String, String) {
        let c = conditions::get(&s.conditions, conditions::READY).expect("Ready");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn what_the_provider_refuses_stalls_and_the_rest_goes_on() {
        let mut e = eval(vec![
            outcome("img-1", RetentionAction::Delete, Applied::Deleted),
            outcome(
                "img-2",
                RetentionAction::Delete,
                Applied::Refused("the token lacks write scope".into()),
            ),
        ]);
        e.stalls
            .push("ImageBuild web: spec.deprecateAfter: DigitalOcean has no deprecation".into());
        let s = evaluated(&ImagePolicyStatus::default(), &e, Some(1), now());
        let (status, reason, message) = ready(&s);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "PruneRefused")
        );
        assert!(
            message.contains("spec.deprecateAfter")
                && message.contains("img-2 in us-east-1: the token lacks write scope"),
            "{message}"
        );
        assert!(conditions::is_true(&s.conditions, conditions::STALLED));
        assert_eq!(s.deleted.len(), 1, "what could be done was done");
        assert!(s.retained.iter().any(|d| d.image_id == "img-2"));
    }

    #[test]
    fn nothing_selected_stalls_and_names_the_missing() {
        let e = Evaluation {
            namespace: "images".into(),
            missing: vec!["gone".into()],
            ..Default::default()
        };
        let s = evaluated(&ImagePolicyStatus::default(), &e, Some(2), now());
        let (status, reason, message) = ready(&s);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "NoBuildsSelected")
        );
        assert!(message.contains("not found: gone"), "{message}");
        assert!(conditions::is_true(&s.conditions, conditions::STALLED));
        assert_eq!(s.observed_generation, Some(2));
        assert!(!e.retry_soon());
    }

    #[test]
    fn deletions_accumulate_and_the_message_says_what_happened() {
        let first = evaluated(
            &ImagePolicyStatus::default(),
            &eval(vec![
                outcome("ami-1", RetentionAction::Keep, Applied::Kept),
                outcome("ami-2", RetentionAction::Delete, Applied::Deleted),
            ]),
            None,
            now(),
        );
        assert_eq!(first.summary.as_ref().map(|s| s.deleted), Some(1));
        assert_eq!(
            ready(&first).2,
            "deleted 1 image(s); keeping 1 image(s); 1 deleted by this policy so far"
        );
        let second = evaluated(
            &first,
            &eval(vec![outcome("ami-1", RetentionAction::Keep, Applied::Kept)]),
            None,
            now(),
        );
        assert_eq!(second.summary.as_ref().map(|s| s.deleted), Some(1));
        assert_eq!(second.deleted.len(), 1);
        assert_eq!(
            ready(&second).2,
            "nothing to prune; keeping 1 image(s); 1 deleted by this policy so far"
        );
    }

    #[test]
    fn a_failed_deletion_is_retained_and_retried() {
        let e = eval(vec![outcome(
            "ami-2",
            RetentionAction::Delete,
            Applied::Failed("throttled".into()),
        )]);
        let s = evaluated(&ImagePolicyStatus::default(), &e, None, now());
        assert_eq!(ready(&s).1, "PruneFailed");
        assert!(conditions::is_true(&s.conditions, conditions::RECONCILING));
        assert!(s.retained[0].reason.contains("retried: throttled"));
        assert!(e.retry_soon());
    }

    #[test]
    fn a_dry_run_plans_and_counts() {
        let mut e = eval(vec![outcome(
            "ami-2",
            RetentionAction::Delete,
            Applied::Planned,
        )]);
        e.dry_run = true;
        let s = evaluated(&ImagePolicyStatus::default(), &e, None, now());
        assert_eq!(ready(&s).1, "DryRun");
        assert_eq!(s.plan.len(), 1);
        assert_eq!(s.summary.map(|s| s.planned), Some(1));
    }

    #[test]
    fn unevaluated_builds_come_before_failures() {
        let mut e = eval(vec![outcome(
            "ami-2",
            RetentionAction::Delete,
            Applied::Failed("x".into()),
        )]);
        e.problems.push("ImageBuild b: no credentials".into());
        let s = evaluated(&ImagePolicyStatus::default(), &e, None, now());
        assert_eq!(ready(&s).1, "BuildsNotEvaluated");
    }
}
