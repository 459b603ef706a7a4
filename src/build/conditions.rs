//! kstatus conditions: set, clear, and keep `lastTransitionTime` stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets a condition; the transition time changes only when the status does.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) {
    let message = message.to_owned();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now;
        }
        c.status = status.to_owned();
        c.reason = reason.to_owned();
        c.message = message;
        c.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    });
    // Ready first, the rest by name: a stable order keeps status diffs quiet.
    conditions.sort_by(|a, b| (a.type_ != "Ready", &a.type_).cmp(&(b.type_ != "Ready", &b.type_)));
}

/// Removes a condition (kstatus: abnormal-true conditions are absent when false).
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of this type, if any.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Settles the kstatus conditions after a reconcile that is done for now:
/// Ready as given, Reconciling gone, Stalled set (user must act) or gone.
#[allow(clippy::too_many_arguments)]
pub fn settle(
    conditions: &mut Vec<Condition>,
    ready: &str,
    reason: &str,
    message: &str,
    stalled: bool,
    generation: Option<i64>,
    now: Time,
) {
    set(
        conditions,
        crate::api::condition::READY,
        ready,
        reason,
        message,
        generation,
        now.clone(),
    );
    remove(conditions, crate::api::condition::RECONCILING);
    if stalled {
        set(
            conditions,
            crate::api::condition::STALLED,
            "True",
            reason,
            message,
            generation,
            now,
        );
    } else {
        remove(conditions, crate::api::condition::STALLED);
    }
}

/// Marks work in progress: Ready as given (Unknown or False), Reconciling
/// True with its own reason, Stalled gone.
#[allow(clippy::too_many_arguments)]
pub fn progress(
    conditions: &mut Vec<Condition>,
    ready: &str,
    ready_reason: &str,
    reconciling_reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) {
    set(
        conditions,
        crate::api::condition::READY,
        ready,
        ready_reason,
        message,
        generation,
        now.clone(),
    );
    set(
        conditions,
        crate::api::condition::RECONCILING,
        "True",
        reconciling_reason,
        message,
        generation,
        now,
    );
    remove(conditions, crate::api::condition::STALLED);
}
