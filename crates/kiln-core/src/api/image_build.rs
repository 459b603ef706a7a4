//! `ImageBuild`: bake one image with Packer, in one or more regions.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy mistakes that for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, LocalKeyReference, LocalObjectReference, conditions_schema};

/// The desired image: where to build it, from which Packer template, with which
/// variables, and when to build it again.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    plural = "imagebuilds",
    singular = "imagebuild",
    shortname = "ib",
    category = "kiln",
    namespaced,
    status = "ImageBuildStatus",
    derive = "PartialEq",
    doc = "An ImageBuild bakes a VM image with Packer and records the image IDs it produced, per region.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider.type"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Latest-Image",
        type_ = "string",
        json_path = ".status.latestImage.artifacts[*].imageId"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.provider.type"
)]
#[kube(validation = kube::core::Rule::new("!has(self.spec.parent) || self.spec.parent.name != self.metadata.name")
    .message("spec.parent.name must name another ImageBuild, not this one")
    .field_path(".spec.parent.name"))]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildSpec {
    /// The cloud to build in, its regions and credentials.
    pub provider: ProviderSpec,

    /// Where the Packer template comes from: exactly one source.
    pub template: TemplateSource,

    /// Values for the template's variables. kiln adds its own variables
    /// (`kiln_build_id`, `kiln_timestamp`, ...) to templates that declare them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 128,
        "x-kubernetes-validations" = [
            {
                "rule": "self.all(k, k.size() <= 128 && k.matches('^[A-Za-z_][A-Za-z0-9_-]*$'))",
                "message": "spec.variables: each name must be a Packer variable name (letters, digits, '_' and '-', not starting with a digit)"
            },
            {
                "rule": "self.all(k, !k.startsWith('kiln_'))",
                "message": "spec.variables: names starting with 'kiln_' are reserved for the variables kiln sets itself"
            }
        ]
    ))]
    pub variables: BTreeMap<String, String>,

    /// Secrets and ConfigMaps of this namespace whose keys become variables.
    /// Later entries win over earlier ones; `variables` wins over all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub variables_from: Vec<VariablesFromSource>,

    /// Another ImageBuild of this namespace whose newest image is this build's
    /// source image. A new parent image rebuilds this one (layered images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentReference>,

    /// Rebuild periodically (for example for security updates), as a cron
    /// expression in UTC: five fields or a macro such as `@weekly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxLength" = 128,
        "x-kubernetes-validations" = [{
            "rule": "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*?/,-]+( +[0-9A-Za-z*?/,-]+){4})$')",
            "message": "spec.schedule must be a cron expression with five fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * 1') or one of @hourly, @daily, @weekly, @monthly, @yearly"
        }]
    ))]
    pub schedule: Option<String>,

    /// Start no new builds while true. A running build finishes.
    #[serde(default)]
    pub suspend: bool,

    /// Longest a single build attempt may run before it is stopped and counted
    /// as failed. Defaults to 2h; OpenStack builds may need more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "pattern" = super::common::DURATION_PATTERN,
        "x-kubernetes-validations" = [{
            "rule": "!self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') || (duration(self) >= duration('1m') && duration(self) <= duration('48h'))",
            "message": "spec.timeout must be between 1m and 48h"
        }]
    ))]
    pub timeout: Option<Duration>,

    /// How failed builds are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Where Packer runs. Unset means the controller's default: a Job in a
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorSpec>,
}

/// The cloud providers kiln builds images for.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// Amazon EC2 AMIs.
    Aws,
    /// Google Compute Engine images.
    Gcp,
    /// Azure managed images or Compute Gallery image versions.
    Azure,
    /// DigitalOcean snapshots.
    Digitalocean,
    /// OpenStack Glance images.
    Openstack,
}

impl ProviderType {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
            Self::Digitalocean => "digitalocean",
            Self::Openstack => "openstack",
        }
    }
}

/// Where images are built and stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type != 'aws' || self.regions.all(r, r.matches('^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]+$'))",
        "message": "spec.provider.regions: AWS regions look like 'us-east-1' or 'eu-west-2'",
        "fieldPath": ".regions"
    },
    {
        "rule": "self.type != 'gcp' || (self.regions.size() == 1 && self.regions.all(r, r.matches('^[a-z]+-[a-z]+[0-9]+-[a-z]$')))",
        "message": "spec.provider.regions: GCP images are global, so give exactly one zone to build in, e.g. [us-central1-a]; where the image is stored is spec.provider.gcp.storageLocations",
        "fieldPath": ".regions"
    },
    {
        "rule": "self.type != 'azure' || self.regions.all(r, r.matches('^[a-z][a-z0-9]+$'))",
        "message": "spec.provider.regions: Azure locations look like 'westeurope' or 'eastus2'",
        "fieldPath": ".regions"
    },
    {
        "rule": "self.type != 'digitalocean' || self.regions.all(r, r.matches('^[a-z]{3}[0-9]$'))",
        "message": "spec.provider.regions: DigitalOcean regions look like 'nyc3' or 'ams3'",
        "fieldPath": ".regions"
    },
    {
        "rule": "self.type == 'gcp' ? has(self.gcp) : !has(self.gcp)",
        "message": "spec.provider.gcp is required when spec.provider.type is gcp, and allowed only then",
        "fieldPath": ".gcp"
    },
    {
        "rule": "self.type == 'azure' ? has(self.azure) : !has(self.azure)",
        "message": "spec.provider.azure is required when spec.provider.type is azure, and allowed only then",
        "fieldPath": ".azure"
    },
    {
        "rule": "!has(self.openstack) || self.type == 'openstack'",
        "message": "spec.provider.openstack is allowed only when spec.provider.type is openstack",
        "fieldPath": ".openstack"
    }
]))]
pub struct ProviderSpec {
    /// One of aws, gcp, azure, digitalocean, openstack.
    #[serde(rename = "type")]
    pub type_: ProviderType,

    /// Regions to build in (or copy to); the first is where Packer builds.
    /// GCP images are global: give exactly one zone, the one Packer builds
    /// in (e.g. `us-central1-a`); kiln records GCP images in region
    /// `global`. Azure gallery versions are replicated to every region here.
    #[schemars(extend(
        "maxItems" = 32,
        "x-kubernetes-list-type" = "set",
        "items" = {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"
        },
        "x-kubernetes-validations" = [{
            "rule": "self.size() > 0",
            "message": "spec.provider.regions must list at least one region, e.g. [us-east-1]"
        }]
    ))]
    pub regions: Vec<String>,

    /// A Secret of this namespace with the provider's credentials, passed to
    /// Packer as environment (AWS_ACCESS_KEY_ID, DIGITALOCEAN_TOKEN, OS_*, ...).
    /// Unset means ambient credentials (IRSA, Workload Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsReference>,

    /// Override the provider's API endpoint: S3/EC2-compatible clouds, private
    /// OpenStack, or a local stand-in in tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxLength" = 2048,
        "x-kubernetes-validations" = [{
            "rule": "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHost() != ''",
            "message": "spec.provider.endpoint must be an http:// or https:// URL, e.g. https://ec2.example.com"
        }]
    ))]
    pub endpoint: Option<String>,

    /// Google Cloud settings; required for gcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpSettings>,

    /// Azure settings; required for azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,

    /// OpenStack settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack: Option<OpenStackSettings>,
}

/// A Secret holding provider credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsReference {
    /// The Secret, in the same namespace. Every key becomes an environment
    /// variable of the Packer process.
    pub secret_ref: LocalObjectReference,
}

/// The key of a GCP credentials Secret that holds a service-account key's
/// JSON (the content, not a path; Terraform's google provider reads the same
/// name). The provider signs with it; the runner writes it to a file for
/// Packer.
pub const GCP_CREDENTIALS_KEY: &str = "GOOGLE_CREDENTIALS";

/// Google Cloud project the images live in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcpSettings {
    /// The project ID, e.g. `my-project-123`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"))]
    pub project_id: String,
    /// Image family the images join, so consumers can use the family's newest.
    /// Templates that declare `kiln_image_family` receive it; kiln also puts
    /// each image it records into the family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub image_family: Option<String>,
    /// Where the image is stored: one multi-region or region, e.g. `us` or
    /// `europe-west4`. Templates that declare `kiln_storage_locations`
    /// receive it (for googlecompute's `image_storage_locations`). Unset:
    /// the multi-region nearest the build zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "maxItems" = 1,
        "items" = {"type": "string", "pattern": "^[a-z]+(-[a-z]+[0-9]+)?$", "maxLength": 64}
    ))]
    pub storage_locations: Vec<String>,
}

/// Azure subscription, resource group and, optionally, the Compute Gallery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// Subscription ID (a GUID).
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub subscription_id: String,
    /// Resource group that holds the images.
    #[schemars(length(min = 1, max = 90))]
    pub resource_group: String,
    /// Publish as a Compute Gallery image version instead of a managed image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gallery: Option<AzureGallery>,
}

/// An Azure Compute Gallery image definition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureGallery {
    /// Gallery name.
    #[schemars(length(min = 1, max = 80))]
    pub name: String,
    /// Image definition inside the gallery.
    #[schemars(length(min = 1, max = 80))]
    pub image_definition: String,
}

/// OpenStack settings beyond the credentials Secret (which holds OS_*).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenStackSettings {
    /// Glance visibility of the images kiln makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<GlanceVisibility>,
}

/// Glance image visibility.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GlanceVisibility {
    /// Only the owning project.
    Private,
    /// Projects the image is shared with.
    Shared,
    /// Every project of the cloud.
    Community,
    /// Everyone.
    Public,
}

/// Where the Packer template comes from. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.inline), has(self.configMapRef), has(self.git), has(self.sourceRef)].filter(x, x).size() == 1",
    "message": "spec.template must set exactly one of inline, configMapRef, git or sourceRef"
}]))]
pub struct TemplateSource {
    /// The template's HCL, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub inline: Option<String>,
    /// A key of a ConfigMap in this namespace that holds the template's HCL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalKeyReference>,
    /// A Git repository, cloned at a ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// A Flux source artifact (GitRepository, OCIRepository or Bucket) in this
    /// namespace; its revision is recorded with each image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<FluxSourceReference>,
}

/// A template in a Git repository.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.url.matches('^(https?|ssh)://[^/]+/.+') || self.url.matches('^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:.+')",
    "message": "spec.template.git.url must be an https://, http://, ssh:// or user@host:path Git URL",
    "fieldPath": ".url"
}]))]
pub struct GitSource {
    /// Repository URL.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Branch, tag or commit to check out. Default: the remote's HEAD.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<GitReference>,
    /// Path of the template file or directory in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxLength" = 1024,
        "x-kubernetes-validations" = [{
            "rule": "!self.startsWith('/') && !self.split('/').exists(p, p == '..')",
            "message": "spec.template.git.path must be relative to the repository root and must not contain '..'"
        }]
    ))]
    pub path: Option<String>,
    /// A Secret of this namespace with Git credentials (`username`/`password`
    /// or `identity`/`known_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

/// A Git ref; at most one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.branch), has(self.tag), has(self.commit)].filter(x, x).size() <= 1",
    "message": "spec.template.git.ref may set only one of branch, tag or commit"
}]))]
pub struct GitReference {
    /// Branch name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub branch: Option<String>,
    /// Tag name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub tag: Option<String>,
    /// Full or abbreviated commit SHA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{7,40}$"))]
    pub commit: Option<String>,
}

/// The kinds of Flux source kiln can read templates from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FluxSourceKind {
    /// source.toolkit.fluxcd.io GitRepository.
    GitRepository,
    /// source.toolkit.fluxcd.io OCIRepository.
    OCIRepository,
    /// source.toolkit.fluxcd.io Bucket.
    Bucket,
}

/// A Flux source in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FluxSourceReference {
    /// GitRepository, OCIRepository or Bucket.
    pub kind: FluxSourceKind,
    /// Name of the source, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Path of the template inside the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "maxLength" = 1024,
        "x-kubernetes-validations" = [{
            "rule": "!self.startsWith('/') && !self.split('/').exists(p, p == '..')",
            "message": "spec.template.sourceRef.path must be relative to the artifact root and must not contain '..'"
        }]
    ))]
    pub path: Option<String>,
}

/// Kinds that can supply variables.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VariablesFromKind {
    /// Every key of a Secret; values never reach logs or status.
    Secret,
    /// Every key of a ConfigMap.
    ConfigMap,
}

/// A Secret or ConfigMap whose keys become template variables.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariablesFromSource {
    /// Secret or ConfigMap.
    pub kind: VariablesFromKind,
    /// Name, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Build without it when it does not exist, instead of waiting for it.
    #[serde(default)]
    pub optional: bool,
}

/// The ImageBuild whose image this one starts from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Name of the parent ImageBuild, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Template variable that receives the parent's image ID for the region
    /// being built.
    #[serde(default = "default_parent_variable")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$")
    )]
    pub variable: String,
}

fn default_parent_variable() -> String {
    "source_image".to_owned()
}

/// Retries of failed builds, with exponential backoff.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.maxBackoff) || duration(self.backoff) <= duration(self.maxBackoff)",
    "message": "spec.retry.backoff must not be longer than spec.retry.maxBackoff",
    "fieldPath": ".backoff"
}]))]
pub struct RetryPolicy {
    /// Attempts after the first failure before the build is Stalled.
    #[serde(default = "default_retry_limit")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self >= 0 && self <= 10",
        "message": "spec.retry.limit must be between 0 and 10"
    }]))]
    pub limit: i32,
    /// Wait before the first retry; doubled after each further failure.
    #[serde(default = "default_backoff")]
    #[schemars(extend("default" = "1m", "pattern" = super::common::DURATION_PATTERN))]
    pub backoff: Duration,
    /// Longest wait between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = super::common::DURATION_PATTERN))]
    pub max_backoff: Option<Duration>,
}

fn default_retry_limit() -> i32 {
    3
}

fn default_backoff() -> Duration {
    Duration::from(std::time::Duration::from_secs(60))
}

/// How a build runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorType {
    /// A Kubernetes Job running `kiln runner` from the kiln image.
    Job,
    /// A child process of the controller (development and the local demo).
    Process,
}

/// Where Packer runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.type == 'job' || !has(self.serviceAccountName)",
    "message": "spec.executor.serviceAccountName applies only to the job executor",
    "fieldPath": ".serviceAccountName"
}]))]
pub struct ExecutorSpec {
    /// job or process.
    #[serde(rename = "type")]
    pub type_: ExecutorType,
    /// ServiceAccount the build Job runs as (for IRSA or Workload Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// What the controller observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Where the build is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BuildPhase>,

    /// The newest image built from this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_image: Option<ImageRecord>,

    /// The build in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_build: Option<CurrentBuild>,

    /// The most recent builds, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<BuildRecord>,

    /// The last failure of the build being attempted, for retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,

    /// The last `reconcile.fluxcd.io/requestedAt` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

impl ImageBuildStatus {
    /// The image IDs of the latest image, one per region.
    pub fn latest_image_ids(&self) -> impl Iterator<Item = &str> {
        self.latest_image
            .iter()
            .flat_map(|l| l.artifacts.iter().map(|a| a.image_id.as_str()))
    }
}

/// Failed attempts at one build, which decide the next retry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// The build (spec hash and trigger) that failed.
    pub build_key: String,
    /// Attempts that failed so far.
    pub failed_attempts: i32,
    /// Whether retrying can help (false for templates Packer refuses).
    pub retryable: bool,
    /// The last error, secrets redacted.
    pub message: String,
    /// When the next attempt may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
}

/// The phases of an ImageBuild.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BuildPhase {
    /// Waiting to build (dependencies, backoff).
    Pending,
    /// Packer is running.
    Building,
    /// The latest image matches the spec.
    Succeeded,
    /// The last build failed.
    Failed,
    /// `suspend` is set.
    Suspended,
}

/// An image kiln built.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// Human-readable version, the `kiln_timestamp` of the build
    /// (`YYYY-MM-DD-HHMM`).
    pub version: String,
    /// The build that produced it.
    pub build_id: String,
    /// The build's identity without the attempt: spec hash and trigger.
    pub build_key: String,
    /// Hash of the spec it was built from.
    pub spec_hash: String,
    /// Revision of the template source (Git commit, artifact digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_revision: Option<String>,
    /// When the build finished.
    pub built_at: Time,
    /// The parent's image this one was built from (layered images); retention
    /// never removes it while this image is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_image: Option<String>,
    /// The image in each region.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["region"], "maxItems" = 32))]
    pub artifacts: Vec<RegionArtifact>,
}

/// The image ID in one region.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionArtifact {
    /// Region (or zone, or location).
    pub region: String,
    /// The provider's image ID (AMI ID, image name, snapshot ID, ...).
    pub image_id: String,
}

/// A build in progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentBuild {
    /// Deterministic ID: object UID, spec hash and attempt.
    pub build_id: String,
    /// The build's identity without the attempt.
    pub build_key: String,
    /// Spec hash being built.
    pub spec_hash: String,
    /// job or process.
    pub executor: ExecutorType,
    /// The parent's image being built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_image: Option<String>,
    /// Job name or process ID.
    pub handle: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// When this attempt started.
    pub started_at: Time,
}

/// The outcome of one finished build attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    /// The build's ID.
    pub build_id: String,
    /// Spec hash it built.
    pub spec_hash: String,
    /// Attempt number.
    pub attempt: i32,
    /// Succeeded or Failed.
    pub result: BuildResult,
    /// When it started.
    pub started_at: Time,
    /// When it finished.
    pub finished_at: Time,
    /// Last lines of the error, secrets redacted, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Images it produced, per region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<RegionArtifact>,
}

/// How a build ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BuildResult {
    /// Packer produced the images and kiln verified them.
    Succeeded,
    /// Packer or verification failed.
    Failed,
    /// Stopped by a controller shutdown or restart and started again; not a
    /// failed attempt.
    Interrupted,
}
