//! Types shared by both kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go-style duration (`90s`, `30m`, `2h45m`): the format Flux and Kubernetes
/// use, and one CEL's `duration()` understands, so rules can compare them.
pub type Duration = kube::core::Duration;

/// Pattern of a Go duration without sign; CEL rules rely on it having been
/// checked before they call `duration()`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// kstatus condition types.
pub mod condition {
    /// The object reached its desired state.
    pub const READY: &str = "Ready";
    /// The controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// The controller cannot make progress until the user acts.
    pub const STALLED: &str = "Stalled";
}

/// A reference to an object of the same namespace, by name.
///
/// There is deliberately no namespace field: an object may only read Secrets
/// and ConfigMaps of its own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the object, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a ConfigMap or Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalKeyReference {
    /// Name of the object, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the object's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Conditions serialize as a list-map keyed by `type`, so several field
/// managers could own different conditions and server-side apply merges them.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    obj.insert("maxItems".into(), 8.into());
    schema
}
