//! kstatus conditions: typed status, one report per reconcile, and stable
//! `lastTransitionTime`s.
//!
//! A reconcile ends in one of three shapes, as Flux's controllers do:
//! - settled: `Ready` True or False, no `Reconciling`, no `Stalled`;
//! - stalled: `Ready` False and `Stalled` True: the user must act;
//! - reconciling: `Ready` Unknown or False and `Reconciling` True: kiln is
//!   working on it (a build runs, a retry or an input is awaited).
//!
//! Every reason is a constant in [`crate::reasons`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use crate::api::condition::{READY, RECONCILING, STALLED};

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// Not known yet (work in progress).
    Unknown,
}

impl ConditionStatus {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// What else the reconcile says besides `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// Done for now: `Reconciling` and `Stalled` are removed.
    Settled,
    /// The user must act: `Stalled` True with Ready's reason and message.
    Stalled,
    /// Work goes on: `Reconciling` True with this reason.
    Reconciling(&'a str),
}

/// The conditions a reconcile reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report<'a> {
    /// `Ready`'s status.
    pub ready: ConditionStatus,
    /// `Ready`'s reason, one of [`crate::reasons`].
    pub reason: &'a str,
    /// What happened and, when the user must act, what to do.
    pub message: &'a str,
    /// `Stalled` or `Reconciling`, or neither.
    pub progress: Progress<'a>,
}

impl Report<'_> {
    /// Writes the report into `conditions`; transition times move only where
    /// a status changed.
    pub fn apply(&self, conditions: &mut Vec<Condition>, generation: Option<i64>, now: Time) {
        let set = |conditions: &mut Vec<Condition>, type_, status, reason| {
            set(
                conditions,
                type_,
                status,
                reason,
                self.message,
                generation,
                now.clone(),
            );
        };
        set(conditions, READY, self.ready, self.reason);
        match self.progress {
            Progress::Settled => {
                remove(conditions, RECONCILING);
                remove(conditions, STALLED);
            }
            Progress::Stalled => {
                remove(conditions, RECONCILING);
                set(conditions, STALLED, ConditionStatus::True, self.reason);
            }
            Progress::Reconciling(reason) => {
                set(conditions, RECONCILING, ConditionStatus::True, reason);
                remove(conditions, STALLED);
            }
        }
    }
}

/// Sets a condition; the transition time changes only when the status does.
fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) {
    let status = status.as_str();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now;
        }
        c.status = status.to_owned();
        c.reason = reason.to_owned();
        c.message = message.to_owned();
        c.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: now,
    });
    // Ready first, the rest by name: a stable order keeps status diffs quiet.
    conditions.sort_by(|a, b| (a.type_ != READY, &a.type_).cmp(&(b.type_ != READY, &b.type_)));
}

/// Removes a condition (kstatus: abnormal-true conditions are absent when false).
fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of this type, if any.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    fn report<'a>(ready: ConditionStatus, progress: Progress<'a>) -> Report<'a> {
        Report {
            ready,
            reason: "Why",
            message: "what",
            progress,
        }
    }

    #[test]
    fn each_shape_writes_the_kstatus_conditions() {
        let mut c = Vec::new();
        report(ConditionStatus::Unknown, Progress::Reconciling("Building")).apply(
            &mut c,
            Some(1),
            at("2026-11-22T10:00:00Z"),
        );
        let types: Vec<(&str, &str, &str)> = c
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Ready", "Unknown", "Why"),
                ("Reconciling", "True", "Building")
            ]
        );
        report(ConditionStatus::False, Progress::Stalled).apply(
            &mut c,
            Some(2),
            at("2026-11-22T10:01:00Z"),
        );
        assert!(is_true(&c, STALLED) && get(&c, RECONCILING).is_none());
        assert_eq!(get(&c, STALLED).map(|s| s.reason.as_str()), Some("Why"));
        report(ConditionStatus::True, Progress::Settled).apply(
            &mut c,
            Some(3),
            at("2026-11-22T10:02:00Z"),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].observed_generation, Some(3));
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let mut c = Vec::new();
        let r = report(ConditionStatus::True, Progress::Settled);
        r.apply(&mut c, None, at("2026-11-22T10:00:00Z"));
        r.apply(&mut c, None, at("2026-11-22T11:00:00Z"));
        assert_eq!(c[0].last_transition_time, at("2026-11-22T10:00:00Z"));
        report(ConditionStatus::False, Progress::Settled).apply(
            &mut c,
            None,
            at("2026-11-22T12:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time, at("2026-11-22T12:00:00Z"));
    }
}
