//! Every reason kiln writes into a condition or an Event, in one place, as
//! Flux keeps them in its API package. docs/conditions.md lists them for
//! users; a test there keeps the two in step.

// ImageBuild: Ready.
/// A build is running (`Ready` Unknown, `Reconciling` True).
pub const BUILDING: &str = "Building";
/// The latest image matches the spec (`Ready` True).
pub const SUCCEEDED: &str = "Succeeded";
/// An attempt failed and a retry is scheduled (`Ready` False).
pub const BUILD_FAILED: &str = "BuildFailed";
/// The `Reconciling` reason while a retry waits for its time.
pub const RETRY_SCHEDULED: &str = "RetryScheduled";
/// A build was stopped by a controller shutdown or restart; it starts again
/// (`Reconciling`, and an Event).
pub const INTERRUPTED: &str = "Interrupted";
/// `packer validate` refused the template or variables (stalled).
pub const BUILD_INVALID: &str = "BuildInvalid";
/// Every retry failed (stalled).
pub const RETRIES_EXHAUSTED: &str = "RetriesExhausted";
/// `spec.schedule` does not parse (stalled).
pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
/// A region in `spec.provider.regions` does not exist (stalled).
pub const INVALID_REGION: &str = "InvalidRegion";
/// A feature this version does not implement (stalled).
pub const UNSUPPORTED: &str = "Unsupported";
/// kiln may not read a referenced object (RBAC).
pub const ACCESS_DENIED: &str = "AccessDenied";
/// A finished build's inputs can no longer be read.
pub const DEPENDENCY_NOT_FOUND: &str = "DependencyNotFound";
/// The template ConfigMap or key is missing.
pub const TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
/// A `variablesFrom` Secret, ConfigMap or key is missing.
pub const VARIABLES_NOT_FOUND: &str = "VariablesNotFound";
/// The parent ImageBuild does not exist.
pub const PARENT_NOT_FOUND: &str = "ParentNotFound";
/// The parent ImageBuild has no image yet.
pub const PARENT_NOT_READY: &str = "ParentNotReady";
/// The parent has no image in a region this build needs (stalled).
pub const PARENT_REGION_MISMATCH: &str = "ParentRegionMismatch";
/// The credentials Secret is missing.
pub const CREDENTIALS_NOT_FOUND: &str = "CredentialsNotFound";
/// The credentials Secret lacks a key or holds a bad value (stalled).
pub const CREDENTIALS_INVALID: &str = "CredentialsInvalid";
/// The provider's settings cannot work at this cloud (an auth URL that is
/// not Keystone, a malformed API URL): the user must act.
pub const PROVIDER_INVALID: &str = "ProviderInvalid";
/// The cloud cannot record this ImageBuild as the owner of its images (a
/// name longer than GCP's 63-character labels): the user must act.
pub const INVALID_NAME: &str = "InvalidName";
/// The provider could not be asked (unreachable, 5xx, its rate limit
/// exhausted): retried.
pub const PROVIDER_UNAVAILABLE: &str = "ProviderUnavailable";

// ImageBuild: Events only.
/// A build was started.
pub const BUILD_STARTED: &str = "BuildStarted";
/// A build produced images, which kiln verified and tagged.
pub const BUILD_SUCCEEDED: &str = "BuildSucceeded";

// ImagePolicy: Ready.
/// Retention ran and did what it planned (`Ready` True).
pub const EVALUATED: &str = "Evaluated";
/// Retention planned but changed nothing: `spec.dryRun` (`Ready` True).
pub const DRY_RUN: &str = "DryRun";
/// `spec.builds` selects no ImageBuild (stalled).
pub const NO_BUILDS_SELECTED: &str = "NoBuildsSelected";
/// Some selected ImageBuilds could not be evaluated; retried.
pub const BUILDS_NOT_EVALUATED: &str = "BuildsNotEvaluated";
/// Some deletions or deprecations failed; retried.
pub const PRUNE_FAILED: &str = "PruneFailed";
/// The provider cannot carry out the policy for some builds (a capability
/// it lacks, credentials it refuses): the user must act.
pub const PRUNE_REFUSED: &str = "PruneRefused";

// ImagePolicy: Events only.
/// An image was deleted.
pub const IMAGE_DELETED: &str = "ImageDeleted";

/// Every reason above, for the documentation check.
pub const ALL: &[&str] = &[
    BUILDING,
    SUCCEEDED,
    BUILD_FAILED,
    RETRY_SCHEDULED,
    INTERRUPTED,
    BUILD_INVALID,
    RETRIES_EXHAUSTED,
    INVALID_SCHEDULE,
    INVALID_REGION,
    UNSUPPORTED,
    ACCESS_DENIED,
    DEPENDENCY_NOT_FOUND,
    TEMPLATE_NOT_FOUND,
    VARIABLES_NOT_FOUND,
    PARENT_NOT_FOUND,
    PARENT_NOT_READY,
    PARENT_REGION_MISMATCH,
    CREDENTIALS_NOT_FOUND,
    CREDENTIALS_INVALID,
    PROVIDER_UNAVAILABLE,
    PROVIDER_INVALID,
    INVALID_NAME,
    BUILD_STARTED,
    BUILD_SUCCEEDED,
    EVALUATED,
    DRY_RUN,
    NO_BUILDS_SELECTED,
    BUILDS_NOT_EVALUATED,
    PRUNE_FAILED,
    PRUNE_REFUSED,
    IMAGE_DELETED,
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// docs/conditions.md lists exactly the reasons above.
    #[test]
    fn the_documentation_lists_every_reason() {
        let doc = include_str!("../../../docs/conditions.md");
        let documented: BTreeSet<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let defined: BTreeSet<&str> = super::ALL.iter().copied().collect();
        assert_eq!(documented, defined);
    }
}
