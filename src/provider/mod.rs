//! Cloud providers behind one trait: what kiln does with images after Packer
//! made them. One module per provider.

pub mod aws;
pub mod azure;
pub mod digitalocean;
pub mod factory;
pub mod gcp;
pub mod http;
pub mod openstack;
pub mod pace;

use futures::future::BoxFuture;

use jiff::Timestamp;

use crate::api::RegionArtifact;
use kiln_core::{image_build::run::Created, retention::ImageInfo};

/// Who owns an image: what kiln records on every image it makes, each
/// provider in its own cloud's terms (EC2 tags, Glance properties,
/// DigitalOcean tag names), and decodes into an [`ImageOwner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Namespace of the ImageBuild.
    pub namespace: String,
    /// Name of the ImageBuild.
    pub image_build: String,
    /// Build ID.
    pub build_id: String,
    /// Spec hash.
    pub spec_hash: String,
}

/// What can go wrong at a provider, sorted by what the controller does about it.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The user must fix the spec (stall).
    #[error("{0}")]
    Invalid(String),
    /// The provider's settings cannot work at this cloud: an endpoint that
    /// is not its API (an auth URL that is not Keystone), a malformed URL,
    /// a Secret without a setting the cloud needs (stall).
    #[error("{0}")]
    Misconfigured(String),
    /// The cloud refused the credentials, or they lack a right kiln needs
    /// (a 401, a 403): the user must fix the Secret (stall).
    #[error("{0}")]
    Unauthorized(String),
    /// An image Packer reported is not there (the build counts as failed).
    #[error("image {image_id} in {region} does not exist at the provider")]
    ImageMissing {
        /// Region.
        region: String,
        /// Image ID.
        image_id: String,
    },
    /// An image Packer reported failed at the provider (Glance's `killed`):
    /// the build counts as failed.
    #[error("image {image_id} in {region} is {state} at the provider; it cannot be used")]
    ImageFailed {
        /// Region.
        region: String,
        /// Image ID.
        image_id: String,
        /// The provider's word for its state.
        state: String,
    },
    /// An image Packer reported is not usable yet (Glance's `queued`,
    /// `saving`): claim it again later, until the build's timeout.
    #[error("image {image_id} in {region} is still {state} at the provider")]
    ImageNotReady {
        /// Region.
        region: String,
        /// Image ID.
        image_id: String,
        /// The provider's word for its state.
        state: String,
    },
    /// The call failed; retry later.
    #[error("{operation} in {region}: {message}")]
    Api {
        /// The API operation.
        operation: &'static str,
        /// Region.
        region: String,
        /// The provider's message.
        message: String,
    },
}

/// How hard retention may drive a provider, per region: calls in flight and
/// a token bucket (`burst` calls at once, then `requests_per_second`).
/// Clouds throttle per account and region, so each region has its own budget
/// and regions proceed in parallel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// Deletions (or deprecations) in flight per region.
    pub concurrency: usize,
    /// Sustained calls per second of each API, per region;
    /// `f64::INFINITY` when the provider documents no limit.
    pub requests_per_second: f64,
    /// Calls of each API that may go at once before the rate applies.
    pub burst: u32,
}

impl Pacing {
    /// Deletions in flight per region when a provider says nothing else.
    pub const DEFAULT_CONCURRENCY: usize = 8;

    /// No rate limit, [`Self::DEFAULT_CONCURRENCY`] in flight.
    pub const UNLIMITED: Pacing = Pacing {
        concurrency: Self::DEFAULT_CONCURRENCY,
        requests_per_second: f64::INFINITY,
        burst: u32::MAX,
    };

    /// Whether calls need pacing at all.
    pub fn is_limited(&self) -> bool {
        self.requests_per_second.is_finite()
    }
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing::UNLIMITED
    }
}

/// What a provider can do, declared up front, so that retention never plans
/// what the provider cannot carry out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capabilities {
    /// The cloud's name, for messages.
    pub cloud: &'static str,
    /// kiln records its ownership on images there, lists and deletes them.
    pub ownership: bool,
    /// The cloud deprecates images itself (EC2's deprecation time; GCE's
    /// DEPRECATED state; Glance's `os_hidden`; Azure's `excludeFromLatest`).
    pub deprecation: bool,
    /// The cloud has a stage after deprecation that refuses new instances
    /// (GCE's OBSOLETE).
    pub obsolescence: bool,
    /// How hard retention may drive it (the provider itself holds each call
    /// to the rate; retention keeps `concurrency` in flight per region).
    pub pacing: Pacing,
}

impl Capabilities {
    /// Why a policy cannot be carried out with this provider, naming the
    /// field to change; `None` when it can.
    pub fn refuses(&self, policy: &crate::api::ImagePolicySpec) -> Option<String> {
        if !self.ownership {
            return Some(format!(
                "kiln cannot list or delete {} images yet; retention supports AWS, OpenStack and DigitalOcean",
                self.cloud
            ));
        }
        if policy.deprecate_after.is_some() && !self.deprecation {
            return Some(format!(
                "spec.deprecateAfter: {} has no deprecation of its own; remove spec.deprecateAfter (superseded images are deleted after spec.deleteAfter)",
                self.cloud
            ));
        }
        if policy.obsolete_after.is_some() && !self.obsolescence {
            return Some(format!(
                "spec.obsoleteAfter: {} has no OBSOLETE stage (only GCP has); remove spec.obsoleteAfter",
                self.cloud
            ));
        }
        None
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The images, each in the region it was found in.
    pub artifacts: Vec<RegionArtifact>,
    /// What the status should say about them (the provider could not
    /// verify or tag them).
    pub note: Option<String>,
}

impl Claimed {
    /// Verified and tagged where Packer said.
    pub fn as_reported(artifacts: &[RegionArtifact]) -> Claimed {
        Claimed {
            artifacts: artifacts.to_vec(),
            note: None,
        }
    }
}

/// How far to take an image towards its end: the stage, when it began, and
/// what the provider records with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    /// Deprecated, or further: obsolete.
    pub stage: DeprecationStage,
    /// When the stage takes effect.
    pub at: Timestamp,
    /// When kiln will delete the image (Azure's `endOfLifeDate`), if planned.
    pub delete_at: Option<Timestamp>,
    /// The image that replaces it (GCE's `replacement`), by image ID.
    pub replacement: Option<String>,
}

impl Deprecation {
    /// Deprecated as of `at`, with nothing else to record.
    pub fn deprecated(at: Timestamp) -> Deprecation {
        Deprecation {
            stage: DeprecationStage::Deprecated,
            at,
            delete_at: None,
            replacement: None,
        }
    }
}

/// The stages of an image's end before deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeprecationStage {
    /// Still usable; users are steered to the replacement.
    Deprecated,
    /// No new instances (GCE's OBSOLETE).
    Obsolete,
}

/// What kiln does with images at a provider.
pub trait ImageProvider: Send + Sync {
    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// How retention paces its calls.
    fn pacing(&self) -> Pacing {
        self.capabilities().pacing
    }

    /// Checks, before a build, that kiln can record ImageBuild
    /// `namespace/image_build` as the owner of its images (GCP labels hold
    /// at most 63 characters); [`ProviderError::Invalid`] names the field.
    fn check_owner(&self, _namespace: &str, _image_build: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Checks, before a build, that the regions exist at this endpoint.
    fn check_regions<'a>(
        &'a self,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>>;

    /// Confirms each image exists and is usable, and records `owner` on it
    /// (and on what is deleted with it). Returns the images where they
    /// are (a provider whose Packer artifact names no region places them)
    /// and a note for the status when the provider can do neither.
    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        owner: &'a Owner,
    ) -> BoxFuture<'a, Result<Claimed, ProviderError>>;

    /// Lists the images carrying kiln's owner tags for one ImageBuild, in
    /// each region.
    fn list_owned<'a>(
        &'a self,
        regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ImageInfo>, ProviderError>>;

    /// Deletes an image and its snapshots. `Ok(Some(note))`: the image is
    /// gone but something deleted with it is not (yet); [`Self::sweep`]
    /// removes it on a later pass. An error means the image is still there.
    fn delete<'a>(
        &'a self,
        image: &'a ImageInfo,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>>;

    /// Deletes what kiln's images of one ImageBuild left behind when they
    /// went (snapshots of a deleted AMI, after an interrupted prune); returns
    /// what it deleted.
    fn sweep<'a>(
        &'a self,
        regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>>;

    /// Removes what one run of a build announced it created (see
    /// [`Created`]) and left behind: its temporary instances, key pairs and
    /// security groups, and images of the announced names created since the
    /// run began that carry no other build's tags. Called only for runs that
    /// ended without recorded images. Returns what it removed.
    fn reclaim<'a>(
        &'a self,
        _regions: &'a [String],
        _created: &'a Created,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Takes an image to a deprecation stage, where the provider can; returns
    /// a note (and leaves the image as it is) where it cannot.
    fn deprecate<'a>(
        &'a self,
        image: &'a ImageInfo,
        deprecation: &'a Deprecation,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>>;
}

fn unsupported(provider: &str, what: &str) -> ProviderError {
    ProviderError::Invalid(format!(
        "kiln cannot {what} {provider} images yet; retention supports AWS, OpenStack and DigitalOcean"
    ))
}

/// Providers kiln does not yet verify or tag: images are recorded as Packer
/// reported them.
pub struct Unverified(pub &'static str);

impl ImageProvider for Unverified {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cloud: self.0,
            ownership: false,
            deprecation: false,
            obsolescence: false,
            pacing: Pacing::default(),
        }
    }

    fn check_regions<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        _: &'a Owner,
    ) -> BoxFuture<'a, Result<Claimed, ProviderError>> {
        Box::pin(async move {
            Ok(Claimed {
                artifacts: artifacts.to_vec(),
                note: Some(format!(
                    "{} images are recorded as Packer reported them; kiln does not tag them yet",
                    self.0
                )),
            })
        })
    }

    fn list_owned<'a>(
        &'a self,
        _: &'a [String],
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ImageInfo>, ProviderError>> {
        Box::pin(async move { Err(unsupported(self.0, "list")) })
    }

    fn delete<'a>(
        &'a self,
        _: &'a ImageInfo,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move { Err(unsupported(self.0, "delete")) })
    }

    fn sweep<'a>(
        &'a self,
        _: &'a [String],
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn deprecate<'a>(
        &'a self,
        _: &'a ImageInfo,
        _: &'a Deprecation,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move { Err(unsupported(self.0, "deprecate")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(deprecate_after: Option<&str>) -> crate::api::ImagePolicySpec {
        let mut spec = serde_json::json!({
            "builds": {"names": ["base"]},
            "keepLast": 2
        });
        if let Some(d) = deprecate_after {
            spec["deprecateAfter"] = d.into();
        }
        serde_json::from_value(spec).expect("ImagePolicySpec")
    }

    #[test]
    fn a_plan_never_asks_what_the_provider_cannot_do() {
        let aws = crate::provider::aws::Aws::for_emulator("http://unused").capabilities();
        assert_eq!(aws.refuses(&policy(Some("24h"))), None);
        let without = Capabilities {
            cloud: "DigitalOcean",
            ownership: true,
            deprecation: false,
            obsolescence: false,
            pacing: Pacing::default(),
        };
        assert_eq!(without.refuses(&policy(None)), None);
        let refusal = without.refuses(&policy(Some("24h"))).expect("refused");
        assert!(
            refusal.starts_with("spec.deprecateAfter: DigitalOcean"),
            "{refusal}"
        );
        let unverified = Unverified("GCP").capabilities();
        assert!(
            unverified
                .refuses(&policy(None))
                .is_some_and(|r| r.contains("GCP"))
        );
    }
}
