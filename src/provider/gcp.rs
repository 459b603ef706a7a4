//! Google Compute Engine: images, owned through labels, over the Compute
//! Engine v1 REST API.
//!
//! GCE images are global: kiln records them in the region `global`, by
//! name (unique per project, and what Packer's googlecompute artifact
//! reports). `spec.provider.regions` holds the one zone Packer builds in.
//! Where an image is stored (`storageLocations`) is Packer's to set
//! (googlecompute's `image_storage_locations`, which templates can take from
//! `kiln_storage_locations`); this provider neither sets nor reports it.
//!
//! Ownership is a set of labels ([`labels`]); retention deprecates with
//! GCE's own staged deprecation (DEPRECATED, then OBSOLETE, with the
//! newest image as `replacement`) and deletes. Every write answers a
//! long-running Operation, which kiln follows to its end.

mod auth;
pub mod labels;
mod transport;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use jiff::Timestamp;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::{
    Capabilities, Claimed, Deprecation, DeprecationStage, ImageProvider, Owner, Pacing,
    ProviderError,
    factory::{CredentialKeys, Credentials},
    http,
};
use crate::api::{GcpSettings, RegionArtifact};
use kiln_core::retention::ImageInfo;
use transport::Group;

pub use auth::{KEY as CREDENTIALS_KEY, METADATA_HOST_ENV};

/// What a GCP credentials Secret holds: nothing is required, since without
/// a key kiln uses the metadata server (GKE Workload Identity).
pub const CREDENTIAL_KEYS: CredentialKeys = CredentialKeys {
    required: &[],
    optional: &[auth::KEY],
};

/// The Compute API, when spec.provider.endpoint names no other.
pub const DEFAULT_API_URL: &str = "https://compute.googleapis.com/compute/v1/";

/// The region kiln records GCE images in: they are global.
pub const GLOBAL: &str = "global";

// GCE counts requests per project and per minute, in groups of methods
// ("Compute Engine rate quotas"): reads (*.get), lists, global writes
// ("Queries") and operation reads each had a default of 1,500 a minute per
// project; the newer, consolidated quotas are higher. Packer and people use
// the same project, so kiln keeps to 80% of the older figure in each group:
// a burst of 200, then 1,000 a minute (16.7/s), so that at most
// 200 + 1,000 = 1,200 calls of a group fall in any minute. A quota error is
// a 403 with reason `rateLimitExceeded` (or a 429); the quota refills at the
// next minute, so kiln backs off (doubling to a minute) and gives the rest
// of the burst up.

/// kiln's share of GCE's rate quotas, per project and group of methods.
pub const GCP_PACING: Pacing = Pacing {
    concurrency: Pacing::DEFAULT_CONCURRENCY,
    requests_per_second: 1_000.0 / 60.0,
    burst: 200,
};

/// Attempts per call on quota errors, 5xx and transport errors.
pub const ATTEMPTS: u32 = 6;
/// The first wait between attempts, doubled each time.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest kiln waits within a call; a longer `Retry-After` fails the
/// call at once, to be retried later.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long kiln follows one Operation before giving up on it.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// Images per page of `images.list` (GCE's maximum).
pub const PAGE_SIZE: u32 = 500;
/// Pages of a listing at most: a guard against an endpoint that always says
/// there is another.
const MAX_PAGES: u32 = 10_000;
/// What kiln reads of a listed image.
const LIST_FIELDS: &str =
    "items(name,status,creationTimestamp,labels,family,deprecated,selfLink),nextPageToken";

/// The Compute API of one project, with one set of credentials.
pub struct Gcp {
    // The API root, or why it is not usable (reported at the first call).
    base: Result<Url, String>,
    project: String,
    family: Option<String>,
    source: Result<auth::Source, String>,
    token: tokio::sync::Mutex<Option<Arc<auth::Token>>>,
    // The API root and the project: GCE's quotas are per project.
    account: String,
    http: reqwest::Client,
    pacing: Pacing,
    backoff_base: Duration,
    max_wait: Duration,
    page_size: u32,
    calls: AtomicU64,
}

impl fmt::Debug for Gcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcp")
            .field("account", &self.account)
            .field("source", &self.source)
            .field("pacing", &self.pacing)
            .field("calls", &self.api_calls())
            .finish_non_exhaustive()
    }
}

/// The provider for a Secret's credentials (or the CLI's environment):
/// the key in `GOOGLE_CREDENTIALS`, else the metadata server
/// (`GCE_METADATA_HOST`, else `metadata.google.internal`). `endpoint`
/// (spec.provider.endpoint) is the Compute API's root, such as
/// [`DEFAULT_API_URL`].
pub fn from_credentials(
    endpoint: Option<String>,
    credentials: &Credentials,
    settings: &GcpSettings,
) -> Gcp {
    let (api_url, field) = match endpoint.filter(|e| !e.trim().is_empty()) {
        Some(url) => (url, "spec.provider.endpoint"),
        None => (DEFAULT_API_URL.to_owned(), "the default API URL"),
    };
    let metadata_host = auth::metadata_host(std::env::var(METADATA_HOST_ENV).ok());
    Gcp::new(
        &api_url,
        field,
        settings,
        auth::Source::from_credentials(credentials, metadata_host),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    name: String,
    status: Option<String>,
    creation_timestamp: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    label_fingerprint: Option<String>,
    family: Option<String>,
    deprecated: Option<DeprecationStatus>,
    self_link: Option<String>,
}

#[derive(Deserialize, Default)]
struct DeprecationStatus {
    state: Option<String>,
    deprecated: Option<String>,
    deleted: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageList {
    #[serde(default)]
    items: Vec<Image>,
    next_page_token: Option<String>,
}

/// GCE's resource names (`[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?`): image and
/// zone names kiln puts in a URL.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.last().is_some_and(|c| *c != b'-')
}

/// An RFC 3339 time as GCE's DeprecationStatus takes it, to the second.
fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn time(s: Option<&str>) -> Option<Timestamp> {
    s?.parse::<Timestamp>().ok()
}

/// A listed image as retention sees it. GCE images have no snapshots or
/// other parts: nothing is deleted with them, so `dependents` stays empty.
fn image_info(image: Image, owner: kiln_core::retention::ImageOwner) -> Option<ImageInfo> {
    // An image whose age cannot be read must not look old.
    let Some(created_at) = time(image.creation_timestamp.as_deref()) else {
        tracing::warn!(
            image = image.name,
            created_at = image.creation_timestamp.as_deref().unwrap_or_default(),
            "GCE image left out of retention: its creation time does not parse"
        );
        return None;
    };
    let deprecation = image.deprecated.unwrap_or_default();
    let state = deprecation.state.as_deref().unwrap_or("ACTIVE");
    Some(ImageInfo {
        region: GLOBAL.to_owned(),
        image_id: image.name.clone(),
        name: Some(image.name),
        created_at,
        owner: Some(owner),
        keep: labels::keep(&image.labels),
        tags: image.labels,
        deprecated: matches!(state, "DEPRECATED" | "OBSOLETE" | "DELETED"),
        obsolete: matches!(state, "OBSOLETE" | "DELETED"),
        end_of_life: time(deprecation.deleted.as_deref()),
        delete_blocked: false,
        dependents: Vec::new(),
    })
}

impl Gcp {
    fn new(
        api_url: &str,
        field: &str,
        settings: &GcpSettings,
        source: Result<auth::Source, String>,
    ) -> Gcp {
        let trimmed = api_url.trim();
        let base = Url::parse(trimmed)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                format!(
                    "{field}: '{trimmed}' is not an http(s) URL; give the Compute API root, such as {DEFAULT_API_URL}"
                )
            });
        Gcp {
            base,
            project: settings.project_id.clone(),
            family: settings.image_family.clone().filter(|f| !f.is_empty()),
            source,
            token: tokio::sync::Mutex::new(None),
            account: format!(
                "gcp|{}|{}",
                trimmed.trim_end_matches('/'),
                settings.project_id
            ),
            http: http::client(),
            pacing: GCP_PACING,
            backoff_base: BACKOFF_BASE,
            max_wait: MAX_WAIT,
            page_size: PAGE_SIZE,
            calls: AtomicU64::new(0),
        }
    }

    /// Paces calls as given instead of to GCE's quotas (tests).
    pub fn with_pacing(mut self, pacing: Pacing) -> Gcp {
        self.pacing = pacing;
        self
    }

    /// Backs off from `base` (doubling) and waits at most `max_wait` within
    /// a call, instead of [`BACKOFF_BASE`] and [`MAX_WAIT`] (tests).
    pub fn with_backoff(mut self, base: Duration, max_wait: Duration) -> Gcp {
        self.backoff_base = base;
        self.max_wait = max_wait;
        self
    }

    /// Lists `n` images per page instead of [`PAGE_SIZE`] (tests).
    pub fn with_page_size(mut self, n: u32) -> Gcp {
        self.page_size = n.clamp(1, PAGE_SIZE);
        self
    }

    /// Asks the metadata server at `host` (`host:port`) instead of the one
    /// `GCE_METADATA_HOST` names, when there is no key (tests).
    pub fn with_metadata_host(mut self, host: &str) -> Gcp {
        if let Ok(auth::Source::Metadata(h)) = &mut self.source {
            *h = auth::metadata_host(Some(host.to_owned()));
        }
        self
    }

    /// HTTP requests made to the Compute API through this value.
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// One image; `None` when the project has none of that name.
    async fn get_image(&self, name: &str) -> Result<Option<Image>, ProviderError> {
        const OPERATION: &str = "images.get";
        if !is_name(name) {
            return Ok(None);
        }
        let reply = self
            .call(
                Method::GET,
                &["global", "images", name],
                &[],
                None,
                OPERATION,
                Group::Read,
                None,
            )
            .await?;
        match reply.status {
            StatusCode::OK => reply.json(OPERATION).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(reply.unexpected(OPERATION)),
        }
    }

    /// Records `owner` on an image, beside its other labels.
    async fn label(
        &self,
        mut image: Image,
        owner: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        const OPERATION: &str = "images.setLabels";
        // A concurrent change of the labels moves the fingerprint on; read
        // them again and merge anew, a few times.
        for _ in 0..3 {
            if let Some(other) = labels::decode(&image.labels)
                && (Some(&other.namespace), Some(&other.image_build))
                    != (
                        owner.get(labels::NAMESPACE),
                        owner
                            .get(labels::NAME)
                            .map(|n| n.replace('_', "."))
                            .as_ref(),
                    )
            {
                return Err(ProviderError::Invalid(format!(
                    "image '{}' is already labelled as ImageBuild {}/{}'s; kiln does not take images of another ImageBuild",
                    image.name, other.namespace, other.image_build
                )));
            }
            let mut merged = image.labels.clone();
            merged.extend(owner.iter().map(|(k, v)| (k.clone(), v.clone())));
            if merged == image.labels {
                return Ok(());
            }
            let body = json!({
                "labels": merged,
                "labelFingerprint": image.label_fingerprint,
            });
            let reply = self
                .call(
                    Method::POST,
                    &["global", "images", &image.name, "setLabels"],
                    &[],
                    Some(&body),
                    OPERATION,
                    Group::Write,
                    None,
                )
                .await?;
            match reply.status {
                StatusCode::OK => return self.finish(&reply, OPERATION, &image.name).await,
                StatusCode::PRECONDITION_FAILED => {
                    image = self
                        .get_image(&image.name)
                        .await?
                        .ok_or_else(|| missing(&image.name))?;
                }
                StatusCode::NOT_FOUND => return Err(missing(&image.name)),
                StatusCode::BAD_REQUEST => {
                    return Err(ProviderError::Invalid(format!(
                        "GCP refused kiln's labels on image '{}' ({}); an image holds at most 64 labels",
                        image.name,
                        reply.message()
                    )));
                }
                _ => return Err(reply.unexpected(OPERATION)),
            }
        }
        Err(ProviderError::Api {
            operation: OPERATION,
            region: GLOBAL.to_owned(),
            message: format!(
                "image '{}': its labels kept changing while kiln set them",
                image.name
            ),
        })
    }

    /// Puts an image in `family` with `images.patch`, which may change an
    /// image's family, description and deprecation status.
    async fn join_family(&self, image: &str, family: &str) -> Result<(), ProviderError> {
        const OPERATION: &str = "images.patch";
        let body = json!({ "family": family });
        let reply = self
            .call(
                Method::PATCH,
                &["global", "images", image],
                &[],
                Some(&body),
                OPERATION,
                Group::Write,
                None,
            )
            .await?;
        match reply.status {
            StatusCode::OK => self.finish(&reply, OPERATION, image).await,
            StatusCode::NOT_FOUND => Err(missing(image)),
            StatusCode::BAD_REQUEST => Err(ProviderError::Invalid(format!(
                "spec.provider.gcp.imageFamily: GCP refused family '{family}' for image '{image}' ({})",
                reply.message()
            ))),
            _ => Err(reply.unexpected(OPERATION)),
        }
    }

    /// Every image of the project that matches `filter`.
    async fn images_matching(&self, filter: &str) -> Result<Vec<Image>, ProviderError> {
        const OPERATION: &str = "images.list";
        let mut images = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("filter", filter.to_owned()),
                ("maxResults", self.page_size.to_string()),
                ("fields", LIST_FIELDS.to_owned()),
            ];
            if let Some(t) = &token {
                query.push(("pageToken", t.clone()));
            }
            let reply = self
                .call(
                    Method::GET,
                    &["global", "images"],
                    &query,
                    None,
                    OPERATION,
                    Group::List,
                    None,
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(reply.unexpected(OPERATION));
            }
            let page: ImageList = reply.json(OPERATION)?;
            images.extend(page.items);
            token = page.next_page_token.filter(|t| !t.is_empty());
            if token.is_none() {
                break;
            }
        }
        Ok(images)
    }

    async fn check_zone(&self, zone: &str) -> Result<(), ProviderError> {
        const OPERATION: &str = "zones.get";
        let project = &self.project;
        let not_a_zone = |why: String| {
            let hint = if zone.rsplit_once('-').is_some_and(|(_, z)| z.len() == 1) {
                String::new()
            } else {
                format!(" ('{zone}' looks like a region; give one of its zones, such as {zone}-a)")
            };
            ProviderError::Invalid(format!(
                "spec.provider.regions: '{zone}' is not a zone of project '{project}'{why}{hint}; GCP images are global, and regions holds the one zone Packer builds in, such as us-central1-a"
            ))
        };
        if !is_name(zone) {
            return Err(not_a_zone(String::new()));
        }
        let reply = self
            .call(
                Method::GET,
                &["zones", zone],
                &[],
                None,
                OPERATION,
                Group::Read,
                None,
            )
            .await?;
        match reply.status {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND if reply.message().contains(&format!("'projects/{project}'")) => {
                Err(ProviderError::Misconfigured(format!(
                    "spec.provider.gcp.projectId: project '{project}' does not exist ({})",
                    reply.message()
                )))
            }
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => {
                Err(not_a_zone(format!(" ({})", reply.message())))
            }
            _ => Err(reply.unexpected(OPERATION)),
        }
    }

    /// An image's URL as GCE's `replacement` takes it: the image's own
    /// `selfLink`; `None` when it is gone.
    async fn self_link(&self, image: &str) -> Result<Option<String>, ProviderError> {
        Ok(self.get_image(image).await?.map(|i| {
            i.self_link.unwrap_or_else(|| {
                self.url(&["global", "images", image])
                    .map(String::from)
                    .unwrap_or_default()
            })
        }))
    }

    async fn deprecate_image(
        &self,
        image: &ImageInfo,
        deprecation: &Deprecation,
    ) -> Result<Option<String>, ProviderError> {
        const OPERATION: &str = "images.deprecate";
        let name = &image.image_id;
        if !is_name(name) {
            return Err(missing(name));
        }
        let mut body = json!({});
        match deprecation.stage {
            DeprecationStage::Deprecated => {
                body["state"] = "DEPRECATED".into();
                body["deprecated"] = rfc3339(deprecation.at).into();
            }
            DeprecationStage::Obsolete => {
                // The status is replaced whole: keep when it was deprecated.
                let current = self.get_image(name).await?.ok_or_else(|| missing(name))?;
                let since = current
                    .deprecated
                    .and_then(|d| time(d.deprecated.as_deref()))
                    .unwrap_or(deprecation.at);
                body["state"] = "OBSOLETE".into();
                body["deprecated"] = rfc3339(since).into();
                body["obsolete"] = rfc3339(deprecation.at).into();
            }
        }
        if let Some(at) = deprecation.delete_at {
            body["deleted"] = rfc3339(at).into();
        }
        if let Some(newest) = deprecation.replacement.as_deref().filter(|r| *r != name) {
            match self.self_link(newest).await? {
                Some(url) => body["replacement"] = url.into(),
                None => tracing::warn!(
                    image = %name,
                    replacement = newest,
                    "GCE image deprecated without a replacement: the newest image is gone"
                ),
            }
        }
        let reply = self
            .call(
                Method::POST,
                &["global", "images", name, "deprecate"],
                &[],
                Some(&body),
                OPERATION,
                Group::Write,
                None,
            )
            .await?;
        match reply.status {
            StatusCode::OK => self.finish(&reply, OPERATION, name).await.map(|()| None),
            StatusCode::NOT_FOUND => Err(missing(name)),
            _ => Err(reply.unexpected(OPERATION)),
        }
    }
}

fn missing(image: &str) -> ProviderError {
    ProviderError::ImageMissing {
        region: GLOBAL.to_owned(),
        image_id: image.to_owned(),
    }
}

impl ImageProvider for Gcp {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cloud: "GCP",
            ownership: true,
            deprecation: true,
            obsolescence: true,
            pacing: self.pacing,
        }
    }

    fn check_owner(&self, _namespace: &str, image_build: &str) -> Result<(), ProviderError> {
        // Refused before a build, not after it at claim.
        labels::encode_name(image_build).map(|_| ())
    }

    fn check_regions<'a>(
        &'a self,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let span = tracing::info_span!("gcp.check_regions", project = %self.project);
        Box::pin(
            async move {
                if regions.len() != 1 {
                    return Err(ProviderError::Invalid(format!(
                        "spec.provider.regions: GCP images are global; give exactly one zone, the one Packer builds in (such as us-central1-a), not {}",
                        regions.len()
                    )));
                }
                for zone in regions {
                    self.check_zone(zone).await?;
                }
                Ok(())
            }
            .instrument(span),
        )
    }

    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        owner: &'a Owner,
    ) -> BoxFuture<'a, Result<Claimed, ProviderError>> {
        let span =
            tracing::info_span!("gcp.claim", project = %self.project, images = artifacts.len());
        Box::pin(
            async move {
                let owner_labels = labels::encode(owner)?;
                // Packer reports the image in the build's zone; it is global.
                let names: BTreeSet<&str> = artifacts.iter().map(|a| a.image_id.as_str()).collect();
                for name in &names {
                    let image = self.get_image(name).await?.ok_or_else(|| missing(name))?;
                    let state = image.status.clone().unwrap_or_default();
                    match state.as_str() {
                        "READY" => {}
                        "FAILED" | "DELETING" => {
                            return Err(ProviderError::ImageFailed {
                                region: GLOBAL.to_owned(),
                                image_id: (*name).to_owned(),
                                state,
                            });
                        }
                        // PENDING, and whatever GCE adds: not usable yet.
                        _ => {
                            return Err(ProviderError::ImageNotReady {
                                region: GLOBAL.to_owned(),
                                image_id: (*name).to_owned(),
                                state,
                            });
                        }
                    }
                    let family = image.family.clone();
                    self.label(image, &owner_labels).await?;
                    if let Some(want) = &self.family
                        && family.as_ref() != Some(want)
                    {
                        self.join_family(name, want).await?;
                    }
                }
                Ok(Claimed {
                    artifacts: names
                        .into_iter()
                        .map(|n| RegionArtifact {
                            region: GLOBAL.to_owned(),
                            image_id: n.to_owned(),
                        })
                        .collect(),
                    note: None,
                })
            }
            .instrument(span),
        )
    }

    fn list_owned<'a>(
        &'a self,
        _regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ImageInfo>, ProviderError>> {
        let span =
            tracing::info_span!("gcp.list_owned", project = %self.project, namespace, image_build);
        Box::pin(
            async move {
                // Images are global: one listing, whatever the zone. A name
                // that cannot be a label value is on no image.
                let Ok(name) = labels::encode_name(image_build) else {
                    return Ok(Vec::new());
                };
                if !labels::is_valid_value(namespace) {
                    return Ok(Vec::new());
                }
                // Deprecated images are listed too: GCE lists them unless a
                // filter leaves them out.
                let filter = format!(
                    "labels.{} = \"{namespace}\" AND labels.{} = \"{name}\"",
                    labels::NAMESPACE,
                    labels::NAME
                );
                let images = self.images_matching(&filter).await?;
                Ok(images
                    .into_iter()
                    .filter_map(|image| {
                        let owner = labels::decode(&image.labels)
                            .filter(|o| o.namespace == namespace && o.image_build == image_build)?;
                        image_info(image, owner)
                    })
                    .collect())
            }
            .instrument(span),
        )
    }

    fn delete<'a>(
        &'a self,
        image: &'a ImageInfo,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        const OPERATION: &str = "images.delete";
        let span =
            tracing::info_span!("gcp.delete", project = %self.project, image = %image.image_id);
        Box::pin(
            async move {
                let name = &image.image_id;
                if !is_name(name) {
                    return Err(ProviderError::Invalid(format!(
                        "'{name}' is not a GCE image name"
                    )));
                }
                let reply = self
                    .call(
                        Method::DELETE,
                        &["global", "images", name],
                        &[],
                        None,
                        OPERATION,
                        Group::Write,
                        None,
                    )
                    .await?;
                match reply.status {
                    // A GCE image is one resource: nothing else to delete.
                    StatusCode::OK => self.finish(&reply, OPERATION, name).await.map(|()| None),
                    StatusCode::NOT_FOUND => Ok(None),
                    _ => Err(reply.unexpected(OPERATION)),
                }
            }
            .instrument(span),
        )
    }

    fn sweep<'a>(
        &'a self,
        _regions: &'a [String],
        _namespace: &'a str,
        _image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        // GCE images have no snapshots: nothing is left behind.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn deprecate<'a>(
        &'a self,
        image: &'a ImageInfo,
        deprecation: &'a Deprecation,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        let span = tracing::info_span!(
            "gcp.deprecate",
            project = %self.project,
            image = %image.image_id,
            stage = ?deprecation.stage
        );
        Box::pin(self.deprecate_image(image, deprecation).instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(family: Option<&str>) -> GcpSettings {
        GcpSettings {
            project_id: "kiln-test".into(),
            image_family: family.map(str::to_owned),
            storage_locations: Vec::new(),
        }
    }

    #[test]
    fn urls_are_built_below_the_project() {
        let g = from_credentials(
            Some("http://127.0.0.1:9/compute/v1/".into()),
            &Credentials::new(),
            &settings(None),
        );
        assert_eq!(
            g.url(&["global", "images", "a"]).expect("url").as_str(),
            "http://127.0.0.1:9/compute/v1/projects/kiln-test/global/images/a"
        );
        let g = from_credentials(None, &Credentials::new(), &settings(None));
        assert_eq!(
            g.url(&["zones", "us-central1-a"]).expect("url").as_str(),
            "https://compute.googleapis.com/compute/v1/projects/kiln-test/zones/us-central1-a"
        );
        let g = from_credentials(Some("nope".into()), &Credentials::new(), &settings(None));
        assert!(matches!(
            g.url(&[]),
            Err(ProviderError::Misconfigured(m)) if m.starts_with("spec.provider.endpoint:")
        ));
    }

    #[test]
    fn pacing_keeps_within_the_quota() {
        let p = GCP_PACING;
        let per_minute = f64::from(p.burst) + 60.0 * p.requests_per_second;
        assert!(per_minute <= 0.8 * 1_500.0 + 0.5, "{per_minute}");
    }

    #[test]
    fn listed_images_map_their_deprecation() {
        let image: Image = serde_json::from_value(json!({
            "name": "base-1", "status": "READY",
            "creationTimestamp": "2026-12-07T14:35:51.123-08:00",
            "labels": {"kiln-keep": "", "team": "a"},
            "deprecated": {"state": "OBSOLETE", "deleted": "2027-01-01T00:00:00Z"}
        }))
        .expect("image");
        let owner = kiln_core::retention::ImageOwner {
            namespace: "ns".into(),
            image_build: "base".into(),
            build_id: "b".into(),
        };
        let info = image_info(image, owner).expect("info");
        assert_eq!(info.region, "global");
        assert_eq!(info.created_at.to_string(), "2026-12-07T22:35:51.123Z");
        assert!(info.deprecated && info.obsolete && info.keep);
        assert_eq!(
            info.end_of_life.map(|t| t.to_string()).as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        assert_eq!(info.tags["team"], "a");
        assert!(info.dependents.is_empty());
        assert_eq!(
            rfc3339("2026-01-02T03:04:05.678Z".parse().expect("time")),
            "2026-01-02T03:04:05Z"
        );
    }

    #[test]
    fn names_go_into_urls_only_when_gce_could_have_made_them() {
        assert!(is_name("kiln-base-1") && is_name("us-central1-a"));
        for bad in ["", "Base", "1abc", "a-", "a/b", &"a".repeat(64)] {
            assert!(!is_name(bad), "{bad}");
        }
    }
}
