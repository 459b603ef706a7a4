//! Azure: Compute Gallery image versions (replicated to the build's
//! regions) or, without a gallery, managed images; owned through resource
//! tags, over Azure Resource Manager.
//!
//! Tokens come from Microsoft Entra ID through azure_identity ([`auth`]).
//! The ARM calls themselves go over kiln's reqwest client ([`arm`]), with
//! typed bodies for exactly the fields kiln uses ([`model`]): no maintained
//! Azure compute crate exists, and azure_core's pipeline refuses bearer
//! tokens to an `http://` endpoint (a stand-in) and retries on its own,
//! where kiln holds every call to the subscription's pace.
//!
//! The image ID kiln records is the full ARM resource ID. A gallery version
//! is one ID in every region it is replicated to (listed once per region,
//! as a DigitalOcean snapshot is); a managed image lives in its location.
//! kiln deprecates a version with Azure's own means: `excludeFromLatest`
//! and `endOfLifeDate` (when kiln plans to delete it), and never asks to
//! delete one that `blockDeletionBeforeEndOfLife` protects before then.

mod arm;
pub mod auth;
mod images;
pub mod model;
mod retire;
pub mod tags;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, Mutex, PoisonError, Weak, atomic::AtomicU64},
    time::Duration,
};

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode, Url};
use tracing::Instrument;

use self::{
    auth::Auth,
    images::{managed_info, version_infos},
    model::{ImageRef, ResourceProvider, location_key},
};
use super::{
    Capabilities, Claimed, Deprecation, ImageProvider, Owner, Pacing, ProviderError,
    factory::{CredentialKeys, Credentials},
    http,
};
use crate::api::{AzureGallery, AzureSettings, RegionArtifact};
use kiln_core::retention::ImageInfo;

/// What an Azure credentials Secret holds: a service principal's tenant and
/// client ID, and its client secret or (workload identity) the path of a
/// federated token file.
pub const CREDENTIAL_KEYS: CredentialKeys = CredentialKeys {
    required: &[&["AZURE_TENANT_ID"], &["AZURE_CLIENT_ID"]],
    optional: &[
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
    ],
};

/// Azure Resource Manager of the public cloud.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com/";
/// The Compute Gallery API (GalleryRP).
pub const GALLERY_API_VERSION: &str = "2024-03-03";
/// Managed images (ComputeRP).
pub const COMPUTE_API_VERSION: &str = "2025-04-01";
/// Resource providers (Microsoft.Resources): where images may be kept.
pub const RESOURCES_API_VERSION: &str = "2025-04-01";

// ARM throttles per subscription and principal. Its documented limits were
// 12,000 reads and 1,200 writes an hour (newer regions refill a token
// bucket faster); the principal is usually the one Packer builds with, so
// kiln keeps to 80% of the old hourly figures:
// - reads 9,600/h (2.7/s) with a burst of 100: listings, claims and LRO polls;
// - writes 960/h (0.27/s) with a burst of 20: tags, deprecations, deletions.
//   At most 20 + 960 writes fall in any hour (1,200 allowed).
// A 429 holds every call of the principal for its `Retry-After`.

/// kiln's share of ARM's read limit.
pub const AZURE_READ_PACING: Pacing = Pacing {
    concurrency: Pacing::DEFAULT_CONCURRENCY,
    requests_per_second: 9_600.0 / 3_600.0,
    burst: 100,
};

/// kiln's share of ARM's write limit; what retention plans deletions with.
pub const AZURE_WRITE_PACING: Pacing = Pacing {
    concurrency: 4,
    requests_per_second: 960.0 / 3_600.0,
    burst: 20,
};

/// Attempts per call on 429, 5xx and transport errors.
pub const ATTEMPTS: u32 = 6;
/// The first wait between attempts, doubled each time.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest kiln waits within a call.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Between polls of a long-running operation that sent no `Retry-After`.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long kiln follows one long-running operation (a gallery version's
/// deletion takes minutes) before it reports it unfinished.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// ARM has no regional endpoints.
const GLOBAL: &str = "global";
/// Where the settings are, for messages.
const SETTINGS: &str = "spec.provider.azure";

/// Azure Resource Manager for one subscription and resource group.
pub struct Azure {
    // The ARM endpoint, or why it is not usable (reported at the first call).
    base: Result<Url, String>,
    settings: AzureSettings,
    auth: Auth,
    // Endpoint, subscription and client ID: tells principals apart for the
    // token buckets without holding a secret.
    account: String,
    http: reqwest::Client,
    read_pacing: Pacing,
    write_pacing: Pacing,
    backoff_base: Duration,
    max_wait: Duration,
    poll_interval: Duration,
    operation_timeout: Duration,
    calls: AtomicU64,
    // One deletion or deprecation per image at a time: retention asks once
    // per region for a version replicated to several.
    busy: Mutex<BTreeMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for Azure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Azure")
            .field("account", &self.account)
            .field("settings", &self.settings)
            .field("auth", &self.auth)
            .field("calls", &self.api_calls())
            .finish_non_exhaustive()
    }
}

/// The provider for a Secret's credentials (or the CLI's environment), at
/// `endpoint` (spec.provider.endpoint: the ARM root) or Azure's own, for
/// the subscription, resource group and gallery of `settings`.
pub fn from_credentials(
    endpoint: Option<String>,
    credentials: &Credentials,
    settings: &AzureSettings,
) -> Azure {
    let (url, field) = match endpoint {
        Some(url) => (url, "spec.provider.endpoint"),
        None => (DEFAULT_ENDPOINT.to_owned(), "the default endpoint"),
    };
    let trimmed = url.trim().trim_end_matches('/').to_owned();
    let base = Url::parse(&format!("{trimmed}/"))
        .ok()
        .filter(|u| u.host().is_some())
        .filter(|u| u.scheme() == "https" || (u.scheme() == "http" && auth::is_loopback(u)))
        .ok_or_else(|| {
            format!(
                "{field}: '{trimmed}' is not an https URL (or an http URL on this machine, for a stand-in); give the Azure Resource Manager root, such as {DEFAULT_ENDPOINT}"
            )
        });
    // Tokens are for the endpoint's audience: a sovereign cloud's ARM is
    // its own; a local stand-in takes the public cloud's.
    let scope = match &base {
        Ok(u) if u.scheme() == "https" && u.as_str() != DEFAULT_ENDPOINT => {
            format!("{}/.default", u.origin().ascii_serialization())
        }
        _ => "https://management.azure.com/.default".to_owned(),
    };
    let auth = Auth::from_credentials(credentials, scope);
    let account = format!(
        "azure|{trimmed}|{}|{}",
        settings.subscription_id, auth.client_id
    );
    Azure {
        base,
        settings: settings.clone(),
        auth,
        account,
        http: http::client(),
        read_pacing: AZURE_READ_PACING,
        write_pacing: AZURE_WRITE_PACING,
        backoff_base: BACKOFF_BASE,
        max_wait: MAX_WAIT,
        poll_interval: POLL_INTERVAL,
        operation_timeout: OPERATION_TIMEOUT,
        calls: AtomicU64::new(0),
        busy: Mutex::default(),
    }
}

impl Azure {
    /// Paces reads and writes alike as given instead of to ARM's limits
    /// (tests and benchmarks against the stand-in).
    pub fn with_pacing(mut self, pacing: Pacing) -> Azure {
        self.read_pacing = pacing;
        self.write_pacing = pacing;
        self
    }

    /// Backs off from `base` (doubling), waits at most `max_wait` within a
    /// call, and polls long-running operations every `poll` unless ARM says
    /// otherwise (tests).
    pub fn with_timing(mut self, base: Duration, max_wait: Duration, poll: Duration) -> Azure {
        self.backoff_base = base;
        self.max_wait = max_wait;
        self.poll_interval = poll;
        self
    }

    /// HTTP requests to ARM made through this value (tests, benchmarks).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the Secret signs in, if it can.
    pub fn auth_method(&self) -> Option<auth::Method> {
        self.auth.method()
    }

    /// A token for ARM: checks the credentials alone (tests, `kiln doctor`).
    pub async fn check_credentials(&self) -> Result<(), ProviderError> {
        self.auth.token().await.map(|_| ())
    }

    fn gallery(&self) -> Option<&AzureGallery> {
        self.settings.gallery.as_ref()
    }

    fn scope_segments(&self) -> [&str; 4] {
        [
            "subscriptions",
            &self.settings.subscription_id,
            "resourceGroups",
            &self.settings.resource_group,
        ]
    }

    fn definition_segments<'g>(&'g self, g: &'g AzureGallery) -> Vec<&'g str> {
        let mut s = self.scope_segments().to_vec();
        s.extend([
            "providers",
            "Microsoft.Compute",
            "galleries",
            &g.name,
            "images",
            &g.image_definition,
        ]);
        s
    }

    fn api_version(image: &ImageRef) -> &'static str {
        match image {
            ImageRef::Version { .. } => GALLERY_API_VERSION,
            ImageRef::Managed { .. } => COMPUTE_API_VERSION,
        }
    }

    fn image_url(&self, image: &ImageRef) -> Result<Url, ProviderError> {
        self.url(&image.segments(), Self::api_version(image))
    }

    /// Whether an image is in the configured subscription and resource
    /// group (and gallery definition): kiln touches nothing else.
    fn is_ours(&self, image: &ImageRef) -> bool {
        let (subscription, group) = image.scope();
        let same = subscription.eq_ignore_ascii_case(&self.settings.subscription_id)
            && group.eq_ignore_ascii_case(&self.settings.resource_group);
        match (image, self.gallery()) {
            (
                ImageRef::Version {
                    gallery,
                    definition,
                    ..
                },
                Some(g),
            ) => {
                same && gallery.eq_ignore_ascii_case(&g.name)
                    && definition.eq_ignore_ascii_case(&g.image_definition)
            }
            (ImageRef::Managed { .. }, None) => same,
            _ => false,
        }
    }

    fn lock_for(&self, image_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        busy.retain(|_, w| w.strong_count() > 0);
        let key = image_id.to_ascii_lowercase();
        if let Some(lock) = busy.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        busy.insert(key, Arc::downgrade(&lock));
        lock
    }

    /// The locations where the resource type kiln makes is available, as
    /// [`location_key`]s, with their spelling for messages.
    async fn locations(&self) -> Result<BTreeMap<String, String>, ProviderError> {
        const OP: &str = "Providers_Get";
        let url = self.url(
            &[
                "subscriptions",
                &self.settings.subscription_id,
                "providers",
                "Microsoft.Compute",
            ],
            RESOURCES_API_VERSION,
        )?;
        let Some(provider) = self.get_json::<ResourceProvider>(url, OP, GLOBAL).await? else {
            return Err(ProviderError::Invalid(format!(
                "{SETTINGS}.subscriptionId: subscription {} does not have the Microsoft.Compute resource provider; register it (az provider register --namespace Microsoft.Compute)",
                self.settings.subscription_id
            )));
        };
        let wanted = if self.gallery().is_some() {
            "galleries/images/versions"
        } else {
            "images"
        };
        Ok(provider
            .resource_types
            .into_iter()
            .filter(|t| {
                t.resource_type
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(wanted))
            })
            .flat_map(|t| t.locations)
            .map(|l| (location_key(&l), l))
            .collect())
    }

    /// The resource group, gallery and image definition exist.
    async fn check_scope(&self) -> Result<(), ProviderError> {
        let group = &self.settings.resource_group;
        let subscription = &self.settings.subscription_id;
        let no_group = || {
            ProviderError::Misconfigured(format!(
                "{SETTINGS}.resourceGroup: resource group '{group}' does not exist in subscription {subscription}; create it (az group create --name {group} --location <region>) or fix the name"
            ))
        };
        let Some(g) = self.gallery() else {
            let mut segments = self.scope_segments().to_vec();
            segments.extend(["providers", "Microsoft.Compute", "images"]);
            let url = self.url(&segments, COMPUTE_API_VERSION)?;
            // One page tells whether the resource group is there.
            return match self
                .get_json::<serde_json::Value>(url, "Images_ListByResourceGroup", GLOBAL)
                .await?
            {
                Some(_) => Ok(()),
                None => Err(no_group()),
            };
        };
        const OP: &str = "Galleries_Get";
        let mut segments = self.scope_segments().to_vec();
        segments.extend(["providers", "Microsoft.Compute", "galleries", &g.name]);
        let reply = self
            .call::<()>(
                Method::GET,
                self.url(&segments, GALLERY_API_VERSION)?,
                None,
                OP,
                GLOBAL,
            )
            .await?;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND
                if reply
                    .error()
                    .code
                    .is_some_and(|c| c.eq_ignore_ascii_case("ResourceGroupNotFound")) =>
            {
                return Err(no_group());
            }
            StatusCode::NOT_FOUND => {
                return Err(ProviderError::Misconfigured(format!(
                    "{SETTINGS}.gallery.name: Compute Gallery '{}' does not exist in resource group '{group}' of subscription {subscription}; create it (az sig create --resource-group {group} --gallery-name {}) or fix the name",
                    g.name, g.name
                )));
            }
            _ => return Err(reply.unexpected(OP, GLOBAL)),
        }
        let url = self.url(&self.definition_segments(g), GALLERY_API_VERSION)?;
        if self
            .get_json::<serde_json::Value>(url, "GalleryImages_Get", GLOBAL)
            .await?
            .is_none()
        {
            return Err(ProviderError::Misconfigured(format!(
                "{SETTINGS}.gallery.imageDefinition: image definition '{}' does not exist in gallery '{}' (resource group '{group}'); create it (az sig image-definition create --resource-group {group} --gallery-name {} --gallery-image-definition {} --publisher … --offer … --sku … --os-type Linux) or fix the name",
                g.image_definition, g.name, g.name, g.image_definition
            )));
        }
        Ok(())
    }
}

impl ImageProvider for Azure {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cloud: "Azure",
            ownership: true,
            // Managed images have no deprecation; gallery versions do.
            deprecation: self.gallery().is_some(),
            obsolescence: false,
            pacing: self.write_pacing,
        }
    }

    fn check_regions<'a>(
        &'a self,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let span = tracing::info_span!("azure.check_regions", regions = regions.len());
        Box::pin(
            async move {
                self.check_scope().await?;
                if regions.is_empty() {
                    return Ok(());
                }
                let known = self.locations().await?;
                let unknown: Vec<String> = regions
                    .iter()
                    .filter(|r| !known.contains_key(&location_key(r)))
                    .map(|r| format!("'{r}'"))
                    .collect();
                if unknown.is_empty() {
                    return Ok(());
                }
                let names: BTreeSet<&String> = known.keys().collect();
                Err(ProviderError::Invalid(format!(
                    "spec.provider.regions: {} {} an Azure location where {} can be kept; use one of: {}",
                    unknown.join(", "),
                    if unknown.len() == 1 { "is not" } else { "are not" },
                    if self.gallery().is_some() {
                        "gallery image versions"
                    } else {
                        "managed images"
                    },
                    names
                        .into_iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            .instrument(span),
        )
    }

    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        owner: &'a Owner,
    ) -> BoxFuture<'a, Result<Claimed, ProviderError>> {
        let span = tracing::info_span!(
            "azure.claim",
            namespace = %owner.namespace,
            image_build = %owner.image_build,
            build_id = %owner.build_id
        );
        Box::pin(
            async move {
                // One ID, many regions: each is checked once.
                let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for a in artifacts {
                    by_id.entry(&a.image_id).or_default().push(&a.region);
                }
                let mut out = Vec::new();
                let mut notes = Vec::new();
                for (reported, regions) in by_id {
                    let first = regions.first().copied().unwrap_or(GLOBAL);
                    let parsed = ImageRef::parse(reported);
                    let target = match (parsed, self.gallery()) {
                        (Some(i @ ImageRef::Version { .. }), Some(_)) if self.is_ours(&i) => i,
                        // Packer names the managed image even where it also
                        // published a version, or names nothing usable: the
                        // version carries the build's tag.
                        (_, Some(g)) => match self.find_by_build(&owner.build_id).await? {
                            Some(found) => found,
                            None => {
                                tracing::info!(reported, gallery = %g.name, "no version of this build in the gallery");
                                return Err(ProviderError::ImageMissing {
                                    region: first.to_owned(),
                                    image_id: reported.to_owned(),
                                });
                            }
                        },
                        (Some(i @ ImageRef::Managed { .. }), None) if self.is_ours(&i) => i,
                        (Some(i), None) => {
                            return Err(ProviderError::Invalid(format!(
                                "{} is not a managed image in resource group {} of subscription {} ({SETTINGS}); kiln lists and prunes only there: set managed_image_resource_group_name to it, or set {SETTINGS}.gallery for gallery versions",
                                i.id(),
                                self.settings.resource_group,
                                self.settings.subscription_id
                            )));
                        }
                        (None, None) => {
                            return Err(ProviderError::ImageMissing {
                                region: first.to_owned(),
                                image_id: reported.to_owned(),
                            });
                        }
                    };
                    let id = target.id();
                    match target {
                        ImageRef::Version { .. } => {
                            let (found, note) = self.claim_version(&target, &regions, owner).await?;
                            out.extend(found.into_iter().map(|region| RegionArtifact {
                                region,
                                image_id: id.clone(),
                            }));
                            notes.extend(note);
                        }
                        ImageRef::Managed { .. } => {
                            let (region, note) = self.claim_managed(&target, &regions, owner).await?;
                            out.push(RegionArtifact {
                                region,
                                image_id: id,
                            });
                            notes.extend(note);
                        }
                    }
                }
                out.sort_by(|a, b| (&a.region, &a.image_id).cmp(&(&b.region, &b.image_id)));
                out.dedup();
                Ok(Claimed {
                    artifacts: out,
                    note: (!notes.is_empty()).then(|| notes.join("; ")),
                })
            }
            .instrument(span),
        )
    }

    fn list_owned<'a>(
        &'a self,
        regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ImageInfo>, ProviderError>> {
        let span = tracing::info_span!("azure.list_owned", namespace, image_build);
        Box::pin(
            async move {
                let who = (namespace, image_build);
                match self.gallery() {
                    Some(g) => {
                        let Some(versions) = self.versions(g).await? else {
                            return Err(ProviderError::Invalid(format!(
                                "{SETTINGS}.gallery: image definition {}/{} does not exist in resource group {}",
                                g.name, g.image_definition, self.settings.resource_group
                            )));
                        };
                        Ok(versions
                            .into_iter()
                            .flat_map(|v| version_infos(v, who, regions))
                            .collect())
                    }
                    None => {
                        let Some(images) = self.managed_images().await? else {
                            return Err(ProviderError::Invalid(format!(
                                "{SETTINGS}.resourceGroup: resource group {} does not exist in subscription {}",
                                self.settings.resource_group, self.settings.subscription_id
                            )));
                        };
                        Ok(images
                            .into_iter()
                            .filter_map(|m| managed_info(m, who, regions))
                            .collect())
                    }
                }
            }
            .instrument(span),
        )
    }

    fn delete<'a>(
        &'a self,
        image: &'a ImageInfo,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        let span =
            tracing::info_span!("azure.delete", image_id = %image.image_id, region = %image.region);
        Box::pin(self.delete_image(image).instrument(span))
    }

    fn sweep<'a>(
        &'a self,
        _regions: &'a [String],
        _namespace: &'a str,
        _image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        // A version goes with its replicas, a managed image whole.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn deprecate<'a>(
        &'a self,
        image: &'a ImageInfo,
        deprecation: &'a Deprecation,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        let span = tracing::info_span!("azure.deprecate", image_id = %image.image_id, region = %image.region);
        Box::pin(
            async move {
                if self.gallery().is_none() {
                    return Ok(Some(
                        "kept: Azure managed images have no deprecation; set spec.provider.azure.gallery for gallery versions, which do".to_owned(),
                    ));
                }
                self.deprecate_version(image, deprecation).await
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AzureGallery;

    fn settings(gallery: bool) -> AzureSettings {
        AzureSettings {
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            resource_group: "kiln-test".into(),
            gallery: gallery.then(|| AzureGallery {
                name: "kilngallery".into(),
                image_definition: "base".into(),
            }),
        }
    }

    fn creds() -> Credentials {
        Credentials::from([
            ("AZURE_TENANT_ID".to_owned(), "tenant".to_owned()),
            ("AZURE_CLIENT_ID".to_owned(), "client".to_owned()),
            ("AZURE_CLIENT_SECRET".to_owned(), "s3cret-value".to_owned()),
        ])
    }

    #[test]
    fn urls_carry_the_api_version_and_the_secret_stays_out() {
        let a = from_credentials(None, &creds(), &settings(true));
        let g = a.gallery().expect("gallery").clone();
        let mut s = a.definition_segments(&g);
        s.push("versions");
        assert_eq!(
            a.url(&s, GALLERY_API_VERSION).expect("url").as_str(),
            "https://management.azure.com/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/kiln-test/providers/Microsoft.Compute/galleries/kilngallery/images/base/versions?api-version=2024-03-03"
        );
        assert!(!format!("{a:?}").contains("s3cret-value"));
        assert!(!a.account.contains("s3cret-value"));
        assert_eq!(a.auth_method(), Some(auth::Method::ClientSecret));
        assert_eq!(a.auth.client_id, "client");
    }

    #[test]
    fn an_endpoint_must_be_https_or_local() {
        let a = from_credentials(
            Some("http://127.0.0.1:9/".into()),
            &creds(),
            &settings(false),
        );
        assert!(a.url(&["x"], "v").is_ok());
        let a = from_credentials(
            Some("http://arm.example.com".into()),
            &creds(),
            &settings(false),
        );
        match a.url(&["x"], "v") {
            Err(ProviderError::Misconfigured(m)) => {
                assert!(m.starts_with("spec.provider.endpoint:"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn links_are_followed_only_to_the_endpoint() {
        let a = from_credentials(Some("http://127.0.0.1:9".into()), &creds(), &settings(true));
        assert!(
            a.follow("http://127.0.0.1:9/ops/1?api-version=x", "op")
                .is_ok()
        );
        assert!(a.follow("https://evil.example.com/ops/1", "op").is_err());
        assert!(a.follow("http://127.0.0.1:10/ops/1", "op").is_err());
    }

    #[test]
    fn only_the_configured_scope_is_ours() {
        let a = from_credentials(None, &creds(), &settings(true));
        let mine = ImageRef::parse("/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/KILN-TEST/providers/Microsoft.Compute/galleries/kilngallery/images/base/versions/1.0.0").expect("id");
        assert!(a.is_ours(&mine));
        let other = ImageRef::parse("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/kiln-test/providers/Microsoft.Compute/galleries/kilngallery/images/web/versions/1.0.0").expect("id");
        assert!(!a.is_ours(&other));
        let managed = ImageRef::parse("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/kiln-test/providers/Microsoft.Compute/images/x").expect("id");
        assert!(!a.is_ours(&managed));
        assert!(from_credentials(None, &creds(), &settings(false)).is_ours(&managed));
    }

    #[test]
    fn pacing_keeps_within_arms_hourly_limits() {
        let per_hour = |p: Pacing| f64::from(p.burst) + 3_600.0 * p.requests_per_second;
        assert!(per_hour(AZURE_READ_PACING) <= 0.85 * 12_000.0);
        assert!(per_hour(AZURE_WRITE_PACING) <= 0.85 * 1_200.0);
    }

    #[test]
    fn capabilities_follow_the_settings() {
        let with = from_credentials(None, &creds(), &settings(true)).capabilities();
        assert!(with.ownership && with.deprecation && !with.obsolescence);
        let without = from_credentials(None, &creds(), &settings(false)).capabilities();
        assert!(without.ownership && !without.deprecation);
    }
}
