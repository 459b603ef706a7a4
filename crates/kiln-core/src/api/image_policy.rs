//! `ImagePolicy`: which superseded images to deprecate and delete.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy mistakes that for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, conditions_schema};

/// Retention for the images of one or more ImageBuilds of this namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "ImagePolicy",
    plural = "imagepolicies",
    singular = "imagepolicy",
    shortname = "ipol",
    category = "kiln",
    namespaced,
    status = "ImagePolicyStatus",
    derive = "PartialEq",
    doc = "An ImagePolicy prunes superseded images of the ImageBuilds it selects: keep the newest N, by age, never the one in use.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Dry-Run", type_ = "boolean", json_path = ".spec.dryRun"),
    printcolumn(
        name = "Retained",
        type_ = "integer",
        json_path = ".status.summary.retained"
    ),
    printcolumn(
        name = "Deprecated",
        type_ = "integer",
        json_path = ".status.summary.deprecated"
    ),
    printcolumn(
        name = "Deleted",
        type_ = "integer",
        json_path = ".status.summary.deleted"
    ),
    printcolumn(
        name = "Planned",
        type_ = "integer",
        priority = 1,
        json_path = ".status.summary.planned"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.minAge) || !has(self.maxAge) || duration(self.minAge) <= duration(self.maxAge)",
        "message": "spec.minAge must not be longer than spec.maxAge",
        "fieldPath": ".minAge"
    },
    {
        "rule": "!has(self.deprecateAfter) || !has(self.deleteAfter) || duration(self.deprecateAfter) < duration(self.deleteAfter)",
        "message": "spec.deprecateAfter must be shorter than spec.deleteAfter: images are deprecated first, deleted later",
        "fieldPath": ".deprecateAfter"
    },
    {
        "rule": "!has(self.obsoleteAfter) || (has(self.deleteAfter) && duration(self.obsoleteAfter) < duration(self.deleteAfter))",
        "message": "spec.obsoleteAfter needs a longer spec.deleteAfter: images become obsolete first, are deleted later",
        "fieldPath": ".obsoleteAfter"
    },
    {
        "rule": "!has(self.obsoleteAfter) || !has(self.deprecateAfter) || duration(self.deprecateAfter) < duration(self.obsoleteAfter)",
        "message": "spec.deprecateAfter must be shorter than spec.obsoleteAfter: DEPRECATED comes before OBSOLETE",
        "fieldPath": ".obsoleteAfter"
    }
]))]
pub struct ImagePolicySpec {
    /// The ImageBuilds of this namespace whose images this policy governs.
    pub builds: BuildSelector,

    /// Keep at least this many of the newest images of each build, per region,
    /// whatever their age. At least 1: the newest image is never deleted.
    #[serde(default = "default_keep_last")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self >= 1 && self <= 1000",
        "message": "spec.keepLast must be between 1 and 1000: kiln always keeps at least the newest image"
    }]))]
    pub keep_last: i32,

    /// Beyond the newest keepLast, images older than this are removed.
    /// Unset: only keepLast decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = super::common::DURATION_PATTERN))]
    pub max_age: Option<Duration>,

    /// Never remove an image younger than this, even beyond keepLast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = super::common::DURATION_PATTERN))]
    pub min_age: Option<Duration>,

    /// Images never to touch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protect: Option<ProtectionRules>,

    /// Where the provider has native deprecation (AWS, GCP): deprecate a
    /// superseded image this long after it was superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = super::common::DURATION_PATTERN))]
    pub deprecate_after: Option<Duration>,

    /// Where the provider has an obsolete stage (GCP): mark a superseded
    /// image OBSOLETE (no new instances from it) this long after it was
    /// superseded. Needs deleteAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = super::common::DURATION_PATTERN))]
    pub obsolete_after: Option<Duration>,

    /// Delete a superseded image this long after it was superseded.
    /// Unset: delete at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = super::common::DURATION_PATTERN))]
    pub delete_after: Option<Duration>,

    /// Only compute the plan and write it to status; change nothing.
    #[serde(default)]
    pub dry_run: bool,

    /// How often the policy is evaluated.
    #[serde(default = "default_interval")]
    #[schemars(extend(
        "default" = "1h",
        "pattern" = super::common::DURATION_PATTERN,
        "x-kubernetes-validations" = [{
            "rule": "duration(self) >= duration('1m')",
            "message": "spec.interval must be at least 1m"
        }]
    ))]
    pub interval: Duration,

    /// Evaluate nothing while true.
    #[serde(default)]
    pub suspend: bool,
}

fn default_keep_last() -> i32 {
    3
}

fn default_interval() -> Duration {
    Duration::from(std::time::Duration::from_secs(3600))
}

/// Selects ImageBuilds by name, by label, or both (their union).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.names) && self.names.size() > 0) || has(self.selector)",
        "message": "spec.builds must set names or selector: a policy has to say which ImageBuilds it governs"
    },
    {
        "rule": "!has(self.selector) || !has(self.selector.matchExpressions) || self.selector.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",
        "message": "spec.builds.selector.matchExpressions: operator must be In, NotIn, Exists or DoesNotExist",
        "fieldPath": ".selector.matchExpressions"
    },
    {
        "rule": "!has(self.selector) || !has(self.selector.matchExpressions) || self.selector.matchExpressions.all(e, e.operator in ['Exists', 'DoesNotExist'] ? (!has(e.values) || e.values.size() == 0) : (has(e.values) && e.values.size() > 0))",
        "message": "spec.builds.selector.matchExpressions: In and NotIn need values; Exists and DoesNotExist take none",
        "fieldPath": ".selector.matchExpressions"
    }
]))]
pub struct BuildSelector {
    /// ImageBuild names, in this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "maxItems" = 64,
        "x-kubernetes-list-type" = "set",
        "items" = { "type": "string", "minLength": 1, "maxLength": 253 }
    ))]
    pub names: Vec<String>,
    /// ImageBuilds whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Images a policy never deprecates or deletes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionRules {
    /// Images carrying any of these tags (key and value) are kept. The tag
    /// `kiln.dev/keep` always protects, whatever this says.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub tags: BTreeMap<String, String>,
    /// Build IDs whose images are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "maxItems" = 256,
        "x-kubernetes-list-type" = "set",
        "items" = { "type": "string", "minLength": 1, "maxLength": 128 }
    ))]
    pub build_ids: Vec<String>,
    /// Image IDs that are kept (e.g. an AMI pinned by a consumer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "maxItems" = 256,
        "x-kubernetes-list-type" = "set",
        "items" = { "type": "string", "minLength": 1, "maxLength": 256 }
    ))]
    pub image_ids: Vec<String>,
}

/// What the policy did, or would do.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicyStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// When the policy was last evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated_at: Option<Time>,

    /// Counts for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PolicySummary>,

    /// The ImageBuilds the policy selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<String>,

    /// Images kept, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<ImageDecision>,

    /// Images deprecated by the last evaluation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deprecated: Vec<ImageDecision>,

    /// Images deleted by the last evaluation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<ImageDecision>,

    /// Deletions under way: written before an evaluation deletes anything,
    /// so one that is interrupted (a crash, a restart) is counted, exactly
    /// once, by the next.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_deletions: Vec<ImageDecision>,

    /// With dryRun: what the policy would deprecate or delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<ImageDecision>,

    /// The last `reconcile.fluxcd.io/requestedAt` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// Counts of the last evaluation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    /// Images kept.
    pub retained: i32,
    /// Images deprecated.
    pub deprecated: i32,
    /// Images deleted.
    pub deleted: i32,
    /// Images a dry run would deprecate or delete.
    pub planned: i32,
}

/// One image and what the policy decided for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageDecision {
    /// The ImageBuild that owns it.
    pub build: String,
    /// Region.
    pub region: String,
    /// The provider's image ID.
    pub image_id: String,
    /// The build that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// keep, deprecate or delete.
    pub action: RetentionAction,
    /// Why, in words.
    pub reason: String,
}

/// What retention does with an image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetentionAction {
    /// Leave it.
    Keep,
    /// Mark it deprecated at the provider.
    Deprecate,
    /// Mark it obsolete at the provider (GCE's OBSOLETE: no new instances).
    Obsolete,
    /// Delete it and its snapshots.
    Delete,
}
