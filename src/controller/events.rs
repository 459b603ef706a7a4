//! Events, published on transitions only (the callers decide when).

use super::Context;

/// Publishes an Event about `obj`; a failure to publish is logged, not fatal.
pub async fn publish<K: kube::Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: kube::runtime::events::EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<k8s_openapi::api::core::v1::ObjectReference>,
) {
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.to_owned(),
        // The Events API caps notes at 1 KiB.
        note: Some(crate::packer::runner::tail(&note, 1000)),
        action: action.to_owned(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish an Event");
    }
}
