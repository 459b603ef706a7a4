//! DigitalOcean: snapshots, owned through tags, over the v2 REST API.
//!
//! A DigitalOcean snapshot is one image ID present in several regions
//! (Packer reports `nyc3,sfo3:123`, split into one artifact per region with
//! the same ID). kiln records its ownership as tag names on the image, since
//! DigitalOcean tags have no values: see [`owner_tags`].

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use jiff::Timestamp;
use reqwest::{Method, StatusCode, Url, header::HeaderMap};
use serde::{Deserialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use super::{
    Capabilities, Claimed, ImageProvider, Owner, Pacing, ProviderError,
    factory::{CredentialKeys, Credentials},
    http,
    pace::{self, BucketKey, TokenBucket},
};
use crate::api::RegionArtifact;
use kiln_core::retention::{ImageInfo, ImageOwner};

/// What a DigitalOcean credentials Secret holds.
pub const CREDENTIAL_KEYS: CredentialKeys = CredentialKeys {
    required: &[&["DIGITALOCEAN_TOKEN", "DIGITALOCEAN_API_TOKEN"]],
    optional: &["DIGITALOCEAN_API_URL"],
};

/// DigitalOcean's API, when neither the spec nor the Secret names another.
pub const DEFAULT_API_URL: &str = "https://api.digitalocean.com";

/// The tag names kiln puts on every snapshot it claims. Retention only ever
/// touches images that carry the owner tag of the ImageBuild it prunes.
pub mod tags {
    /// `kiln:owner:<namespace>:<ImageBuild, with `.` as `_`>`.
    pub const OWNER: &str = "kiln:owner:";
    /// `kiln:build:<build id>`.
    pub const BUILD: &str = "kiln:build:";
    /// `kiln:spec:<spec hash>`.
    pub const SPEC: &str = "kiln:spec:";
    /// On every image kiln claimed.
    pub const MANAGED: &str = "kiln:managed";
    /// Put on by a user to protect an image from retention.
    pub const KEEP: &str = "kiln:keep";
    /// DigitalOcean's limit on a tag name (the spec's `maxLength`).
    pub const MAX_LEN: usize = 255;

    /// Whether DigitalOcean accepts `name` as a tag name: the spec's pattern
    /// `^[a-zA-Z0-9_\-\:]+$` and at most [`MAX_LEN`] characters.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
    }
}

/// The tag that says which ImageBuild owns an image, and the one that lists
/// its images (`GET /v2/images?tag_name=`).
///
/// `kiln:owner:<namespace>:<name>` with the name's `.` written as `_` (DNS
/// names never hold `_`, so this reverses). A namespace (63) and a name (253)
/// at their limits do not fit in 255 characters: such a tag keeps as much of
/// the name as fits and ends in `:` and a digest of namespace and name; it
/// still tells owners apart, but [`decode_owner`] cannot give the name back
/// (listing compares it with the tag of the ImageBuild asked about instead).
pub fn owner_tag(namespace: &str, image_build: &str) -> String {
    let full = format!(
        "{}{namespace}:{}",
        tags::OWNER,
        image_build.replace('.', "_")
    );
    if tags::is_valid(&full) {
        return full;
    }
    let digest = hex_digest(format!("{namespace}/{image_build}").as_bytes(), 16);
    let suffix = format!(":{digest}");
    // Whatever DigitalOcean would refuse becomes `-`; the digest keeps the
    // tag unique.
    let head: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':') {
                c
            } else {
                '-'
            }
        })
        .take(tags::MAX_LEN - suffix.len())
        .collect();
    format!("{head}{suffix}")
}

/// The owner as DigitalOcean tag names: owner, build, spec hash, managed.
pub fn owner_tags(owner: &Owner) -> Vec<String> {
    vec![
        owner_tag(&owner.namespace, &owner.image_build),
        format!("{}{}", tags::BUILD, owner.build_id),
        format!("{}{}", tags::SPEC, owner.spec_hash),
        tags::MANAGED.to_owned(),
    ]
}

/// The owner kiln recorded in an image's tags. `None` when there is no owner
/// tag, more than one (two ImageBuilds claimed it: neither may delete it),
/// or one that does not decode (malformed, or the digest form of a name too
/// long to fit). Other tags are ignored.
pub fn decode_owner(tags: &[String]) -> Option<ImageOwner> {
    let rest = single(tags, tags::OWNER)?;
    let (namespace, name) = rest.split_once(':')?;
    let label = |s: &str, also: &[u8]| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || also.contains(&b)
            })
    };
    if !label(namespace, b"") || !label(name, b"_") {
        return None;
    }
    Some(ImageOwner {
        namespace: namespace.to_owned(),
        image_build: name.replace('_', "."),
        build_id: build_id(tags),
    })
}

/// The owner of an image if it is exactly `namespace/image_build`.
fn owner_if(tags: &[String], namespace: &str, image_build: &str) -> Option<ImageOwner> {
    match decode_owner(tags) {
        Some(o) if o.namespace == namespace && o.image_build == image_build => Some(o),
        Some(_) => None,
        // The digest form: the tag itself must be this ImageBuild's.
        None => {
            let rest = single(tags, tags::OWNER)?;
            (format!("{}{rest}", tags::OWNER) == owner_tag(namespace, image_build)).then(|| {
                ImageOwner {
                    namespace: namespace.to_owned(),
                    image_build: image_build.to_owned(),
                    build_id: build_id(tags),
                }
            })
        }
    }
}

/// What follows `prefix` in the one tag that has it (the same tag twice
/// counts once); `None` when none or several do.
fn single<'t>(tags: &'t [String], prefix: &str) -> Option<&'t str> {
    let mut found = tags.iter().filter_map(|t| t.strip_prefix(prefix));
    let first = found.next()?;
    found.all(|other| other == first).then_some(first)
}

fn build_id(tags: &[String]) -> String {
    single(tags, tags::BUILD).unwrap_or_default().to_owned()
}

fn hex_digest(bytes: &[u8], len: usize) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(len)
        .collect()
}

// DigitalOcean limits each token to 5,000 requests an hour (each request
// counts for the hour after it) and 250 a minute (API reference, "Rate
// Limit"). The token is usually the one Packer builds with, so kiln keeps to
// 80% of both and leaves the rest to it and to people:
// - the rate is 80% of the hourly limit, 4,000/h (1.1/s). 80% of the
//   per-minute limit (200/min, 3.3/s) would spend the whole hour's budget in
//   25 minutes of pruning and then leave every caller of the token throttled
//   for the rest of the hour;
// - a burst of 100 lets claims, listings and small prunes go at once. At
//   most 100 + 60 × 1.1 = 167 calls fall in any minute (80% of 250 is 200),
//   and 100 + 4,000 in any hour.
// So 2,000 snapshots take about half an hour to delete. Retention's
// concurrency only hides latency at that rate.

/// kiln's share of DigitalOcean's limits (see above).
pub const DIGITALOCEAN_PACING: Pacing = Pacing {
    concurrency: Pacing::DEFAULT_CONCURRENCY,
    requests_per_second: 4_000.0 / 3_600.0,
    burst: 100,
};

/// Attempts per call on 429, 5xx and transport errors.
pub const ATTEMPTS: u32 = 6;
/// The first wait between attempts, doubled each time.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest kiln waits within a call; a longer `Retry-After` (or
/// `ratelimit-reset`) fails the call at once, to be retried later.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The only bucket: DigitalOcean counts every request of a token alike.
const OPERATION: &str = "api";
/// DigitalOcean has no regional API endpoints.
const GLOBAL: &str = "global";

/// The DigitalOcean API with one token.
pub struct DigitalOcean {
    // The API root, or why it is not usable (reported at the first call).
    base: Result<Url, String>,
    token: String,
    // The API root and a digest of the token: tells accounts apart for the
    // token buckets without holding the token.
    account: String,
    http: reqwest::Client,
    pacing: Pacing,
    backoff_base: Duration,
    max_wait: Duration,
    calls: AtomicU64,
}

impl fmt::Debug for DigitalOcean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOcean")
            .field("account", &self.account)
            .field("pacing", &self.pacing)
            .field("calls", &self.api_calls())
            .finish_non_exhaustive()
    }
}

/// The provider for a Secret's credentials (or the CLI's environment), at
/// `endpoint` (spec.provider.endpoint), else `DIGITALOCEAN_API_URL`, else
/// DigitalOcean's own API.
pub fn from_credentials(endpoint: Option<String>, credentials: &Credentials) -> DigitalOcean {
    let (api_url, field) = match endpoint {
        Some(url) => (url, "spec.provider.endpoint"),
        None => match credentials.get("DIGITALOCEAN_API_URL") {
            Some(url) => (url.clone(), "DIGITALOCEAN_API_URL in the Secret"),
            None => (DEFAULT_API_URL.to_owned(), "the default API URL"),
        },
    };
    let token = credentials
        .get("DIGITALOCEAN_TOKEN")
        .or_else(|| credentials.get("DIGITALOCEAN_API_TOKEN"))
        .cloned()
        .unwrap_or_default();
    DigitalOcean::with_field(&api_url, token, field)
}

/// An answer kiln reads (2xx) or judges itself (404, 422, ...).
struct Reply {
    status: StatusCode,
    body: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    // The `error_with_root_causes` shape some endpoints answer.
    error: Option<String>,
}

impl Reply {
    fn json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        region: &str,
    ) -> Result<T, ProviderError> {
        serde_json::from_str(&self.body).map_err(|e| ProviderError::Api {
            operation,
            region: region.to_owned(),
            message: format!("unreadable answer (HTTP {}): {e}", self.status.as_u16()),
        })
    }

    /// The error's message, as DigitalOcean words it.
    fn message(&self) -> String {
        error_message(self.status, &self.body)
    }

    fn unexpected(&self, operation: &'static str, region: &str) -> ProviderError {
        ProviderError::Api {
            operation,
            region: region.to_owned(),
            message: format!("HTTP {}: {}", self.status.as_u16(), self.message()),
        }
    }
}

fn error_message(status: StatusCode, body: &str) -> String {
    let parsed: Option<ErrorBody> = serde_json::from_str(body).ok();
    let message = parsed
        .and_then(|b| b.message.or(b.error))
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    // Prism's validation messages can run long.
    if message.chars().count() > 400 {
        format!("{}…", message.chars().take(400).collect::<String>())
    } else {
        message
    }
}

#[derive(Deserialize)]
struct Links {
    #[serde(default)]
    pages: Pages,
}

#[derive(Deserialize, Default)]
struct Pages {
    next: Option<String>,
}

#[derive(Deserialize)]
struct RegionList {
    regions: Vec<Region>,
    links: Option<Links>,
}

#[derive(Deserialize)]
struct Region {
    slug: String,
}

#[derive(Deserialize)]
struct ImageList {
    images: Vec<Image>,
    links: Option<Links>,
}

#[derive(Deserialize)]
struct ImageReply {
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    id: u64,
    name: Option<String>,
    #[serde(default)]
    regions: Vec<String>,
    created_at: Option<String>,
    // `tags_array` is nullable.
    tags: Option<Vec<String>>,
    // Set on custom images; snapshots may leave it out.
    status: Option<String>,
}

fn has_next(links: Option<&Links>) -> bool {
    links.is_some_and(|l| l.pages.next.as_deref().is_some_and(|n| !n.is_empty()))
}

/// Pages of a listing at most (200 items each): a guard against an endpoint
/// that always says there is another.
const MAX_PAGES: u32 = 10_000;

impl DigitalOcean {
    /// The API at `api_url` with `token`, paced to DigitalOcean's limits
    /// ([`DIGITALOCEAN_PACING`]).
    pub fn new(api_url: &str, token: impl Into<String>) -> DigitalOcean {
        DigitalOcean::with_field(api_url, token.into(), "the API URL")
    }

    fn with_field(api_url: &str, token: String, field: &str) -> DigitalOcean {
        let trimmed = api_url.trim().trim_end_matches('/');
        let base = Url::parse(trimmed)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                format!(
                    "{field}: '{trimmed}' is not an http(s) URL; give the DigitalOcean API root, such as {DEFAULT_API_URL}"
                )
            });
        let account = format!("digitalocean|{trimmed}|{}", hex_digest(token.as_bytes(), 8));
        DigitalOcean {
            base,
            token,
            account,
            http: http::client(),
            pacing: DIGITALOCEAN_PACING,
            backoff_base: BACKOFF_BASE,
            max_wait: MAX_WAIT,
            calls: AtomicU64::new(0),
        }
    }

    /// Paces calls as given instead of to DigitalOcean's limits (tests and
    /// benchmarks against the stand-in).
    pub fn with_pacing(mut self, pacing: Pacing) -> DigitalOcean {
        self.pacing = pacing;
        self
    }

    /// Backs off from `base` (doubling) and waits at most `max_wait` within
    /// a call, instead of [`BACKOFF_BASE`] and [`MAX_WAIT`] (tests).
    pub fn with_backoff(mut self, base: Duration, max_wait: Duration) -> DigitalOcean {
        self.backoff_base = base;
        self.max_wait = max_wait;
        self
    }

    /// HTTP requests made through this value (for benchmarks and tests).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn bucket(&self) -> Option<Arc<TokenBucket>> {
        pace::bucket(
            BucketKey {
                account: self.account.clone(),
                region: GLOBAL.to_owned(),
                operation: OPERATION,
            },
            self.pacing,
        )
    }

    fn url(&self, segments: &[&str]) -> Result<Url, ProviderError> {
        let mut url = self.base.clone().map_err(ProviderError::Misconfigured)?;
        url.path_segments_mut()
            .map_err(|()| {
                ProviderError::Misconfigured("the DigitalOcean API URL cannot take a path".into())
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One API call in its turn, retried on 429 (after `Retry-After`), 5xx
    /// and transport errors. 401 and 403 are the user's to fix; any other
    /// answer goes back to the caller to judge.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        operation: &'static str,
        region: &str,
    ) -> Result<Reply, ProviderError> {
        let mut url = self.url(segments)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let bucket = self.bucket();
        let api = |message: String| ProviderError::Api {
            operation,
            region: region.to_owned(),
            message,
        };
        let mut backoff = self.backoff_base;
        let mut last = Retry::default();
        for attempt in 1..=ATTEMPTS {
            pace::wait_turn(bucket.as_deref()).await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&self.token)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            let retry = match request.send().await {
                Err(e) => Retry::after(backoff, http::describe(&e)),
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    match response.text().await {
                        Err(e) => Retry::after(backoff, http::describe(&e)),
                        Ok(text) => match status {
                            StatusCode::TOO_MANY_REQUESTS => Retry {
                                wait: rate_limit_wait(&headers).unwrap_or(backoff),
                                last: format!("HTTP 429: {}", error_message(status, &text)),
                                rate_limited: true,
                            },
                            s if s.is_server_error() => Retry::after(
                                backoff,
                                format!("HTTP {}: {}", s.as_u16(), error_message(s, &text)),
                            ),
                            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                                return Err(refused(status, &method, operation, &text));
                            }
                            _ => return Ok(Reply { status, body: text }),
                        },
                    }
                }
            };
            if retry.rate_limited {
                if let Some(bucket) = &bucket {
                    // Every call of the token waits too, but no longer than
                    // one call may: a longer wait fails them instead.
                    bucket.throttled();
                    bucket.hold_for(retry.wait.min(self.max_wait), Instant::now());
                }
                if retry.wait > self.max_wait {
                    return Err(api(exhausted(&format!(
                        "{}, retry after {}s",
                        retry.last,
                        retry.wait.as_secs()
                    ))));
                }
            }
            if attempt < ATTEMPTS {
                tracing::debug!(
                    operation,
                    attempt,
                    wait_ms = u64::try_from(retry.wait.as_millis()).unwrap_or(u64::MAX),
                    last = %retry.last,
                    "DigitalOcean call retried"
                );
                tokio::time::sleep(retry.wait).await;
                backoff = (backoff * 2).min(self.max_wait);
            }
            last = retry;
        }
        Err(api(if last.rate_limited {
            exhausted(&format!("{}, {ATTEMPTS} attempts", last.last))
        } else {
            format!("{} ({ATTEMPTS} attempts)", last.last)
        }))
    }

    /// Every page of a listing (`per_page=200`), until no `next` link.
    async fn pages<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        operation: &'static str,
        mut each: impl FnMut(T) -> bool,
    ) -> Result<(), ProviderError> {
        // Pages are asked for by number rather than by following the `next`
        // URL, so the token only ever goes to the configured API.
        for page in 1..=MAX_PAGES {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("per_page", "200".into()));
            q.push(("page", page.to_string()));
            let reply = self
                .call(Method::GET, segments, &q, None, operation, GLOBAL)
                .await?;
            if reply.status != StatusCode::OK {
                return Err(reply.unexpected(operation, GLOBAL));
            }
            if !each(reply.json(operation, GLOBAL)?) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// All region slugs.
    async fn region_slugs(&self) -> Result<Vec<String>, ProviderError> {
        let mut slugs = Vec::new();
        self.pages(
            &["v2", "regions"],
            &[],
            "regions_list",
            |page: RegionList| {
                let more = has_next(page.links.as_ref()) && !page.regions.is_empty();
                slugs.extend(page.regions.into_iter().map(|r| r.slug));
                more
            },
        )
        .await?;
        Ok(slugs)
    }

    /// The images carrying one tag.
    async fn images_tagged(&self, tag: &str) -> Result<Vec<Image>, ProviderError> {
        let mut images = Vec::new();
        self.pages(
            &["v2", "images"],
            &[("tag_name", tag.to_owned())],
            "images_list",
            |page: ImageList| {
                let more = has_next(page.links.as_ref()) && !page.images.is_empty();
                images.extend(page.images);
                more
            },
        )
        .await?;
        Ok(images)
    }

    /// Makes sure a tag exists; one that already does is fine.
    async fn ensure_tag(&self, name: &str, region: &str) -> Result<(), ProviderError> {
        let body = serde_json::json!({ "name": name });
        let reply = self
            .call(
                Method::POST,
                &["v2", "tags"],
                &[],
                Some(&body),
                "tags_create",
                region,
            )
            .await?;
        match reply.status {
            s if s.is_success() => Ok(()),
            // The stand-in answers 201 for a tag that exists; the spec says
            // nothing of duplicates, so a refusal saying the tag already
            // exists is taken as success too.
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST
                if reply.message().to_lowercase().contains("already") =>
            {
                Ok(())
            }
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
                Err(ProviderError::Invalid(format!(
                    "DigitalOcean refused the tag name '{name}' ({}); the ImageBuild's namespace, name, build ID or spec hash make a tag DigitalOcean does not accept",
                    reply.message()
                )))
            }
            _ => Err(reply.unexpected("tags_create", region)),
        }
    }

    /// Checks one snapshot Packer reported, in every region it was reported in.
    /// Checks a snapshot is usable in every region Packer reported; returns
    /// every region it is in.
    async fn verify(&self, image_id: &str, regions: &[&str]) -> Result<Vec<String>, ProviderError> {
        let first = regions.first().copied().unwrap_or(GLOBAL);
        let missing = || ProviderError::ImageMissing {
            region: first.to_owned(),
            image_id: image_id.to_owned(),
        };
        // Snapshot IDs are integers; anything else cannot be one.
        if image_id.parse::<u64>().is_err() {
            return Err(missing());
        }
        let reply = self
            .call(
                Method::GET,
                &["v2", "images", image_id],
                &[],
                None,
                "images_get",
                first,
            )
            .await?;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(missing()),
            _ => return Err(reply.unexpected("images_get", first)),
        }
        let image = reply.json::<ImageReply>("images_get", first)?.image;
        let state = image.status.unwrap_or_else(|| "available".to_owned());
        match state.as_str() {
            "available" => {}
            "deleted" | "retired" => {
                return Err(ProviderError::ImageFailed {
                    region: first.to_owned(),
                    image_id: image_id.to_owned(),
                    state,
                });
            }
            // NEW, pending, and whatever DigitalOcean adds: not usable yet.
            _ => {
                return Err(ProviderError::ImageNotReady {
                    region: first.to_owned(),
                    image_id: image_id.to_owned(),
                    state,
                });
            }
        }
        // Packer 1.6.6 reports its transfers without waiting for them.
        if let Some(region) = regions
            .iter()
            .find(|r| !image.regions.iter().any(|i| i == *r))
        {
            return Err(ProviderError::ImageNotReady {
                region: (*region).to_owned(),
                image_id: image_id.to_owned(),
                state: format!("transferring to {region}"),
            });
        }
        Ok(image.regions)
    }
}

/// Why an attempt is to be repeated, and after how long.
#[derive(Default)]
struct Retry {
    wait: Duration,
    last: String,
    rate_limited: bool,
}

impl Retry {
    fn after(wait: Duration, last: String) -> Retry {
        Retry {
            wait,
            last,
            rate_limited: false,
        }
    }
}

fn exhausted(last: &str) -> String {
    format!(
        "DigitalOcean's rate limit for this token is exhausted ({last}); the call will be retried later"
    )
}

/// 401 and 403: the Secret's token, which the user must fix.
fn refused(status: StatusCode, method: &Method, operation: &str, body: &str) -> ProviderError {
    let message = error_message(status, body);
    if status == StatusCode::UNAUTHORIZED {
        return ProviderError::Unauthorized(format!(
            "DigitalOcean refused the token in the Secret named by spec.provider.credentials.secretRef (DIGITALOCEAN_TOKEN): {message}; fix the Secret"
        ));
    }
    let scope = if *method == Method::GET {
        "read"
    } else {
        "write"
    };
    ProviderError::Unauthorized(format!(
        "the token in the Secret named by spec.provider.credentials.secretRef (DIGITALOCEAN_TOKEN) lacks {scope} scope for {operation} ({message}); create a token with read and write scope (or the custom scopes regions:read, image:read, image:delete and tag:create) and put it in the Secret"
    ))
}

/// How long a 429 asks to wait: `Retry-After`, else, when the hour's budget
/// is spent (`ratelimit-remaining: 0`), until `ratelimit-reset`.
fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    if let Some(wait) = http::retry_after(headers) {
        return Some(wait);
    }
    let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<i64>().ok();
    if header("ratelimit-remaining")? != 0 {
        return None;
    }
    let reset = header("ratelimit-reset")?;
    let secs = reset.saturating_sub(Timestamp::now().as_second()).max(1);
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(1)))
}

fn image_infos(
    image: Image,
    owner: ImageOwner,
    regions: &[String],
) -> impl Iterator<Item = ImageInfo> + '_ {
    let tags = image.tags.unwrap_or_default();
    let created_at = image
        .created_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    if created_at.is_none() {
        tracing::warn!(
            image_id = image.id,
            created_at = image.created_at.as_deref().unwrap_or_default(),
            "DigitalOcean image left out of retention: its creation time does not parse"
        );
    }
    let info = created_at.map(|created_at| ImageInfo {
        region: String::new(),
        image_id: image.id.to_string(),
        name: image.name,
        created_at,
        owner: Some(owner),
        keep: tags.iter().any(|t| t == tags::KEEP),
        tags: tags.iter().map(|t| (t.clone(), String::new())).collect(),
        deprecated: false,
        obsolete: false,
        end_of_life: None,
        delete_blocked: false,
        dependents: Vec::new(),
    });
    let present = image.regions;
    regions
        .iter()
        .filter(move |r| present.contains(r))
        .filter_map(move |r| {
            info.clone().map(|mut i| {
                i.region = r.clone();
                i
            })
        })
}

impl ImageProvider for DigitalOcean {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cloud: "DigitalOcean",
            ownership: true,
            deprecation: false,
            obsolescence: false,
            pacing: self.pacing,
        }
    }

    fn check_regions<'a>(
        &'a self,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            if regions.is_empty() {
                return Ok(());
            }
            let known = self.region_slugs().await?;
            let unknown: Vec<String> = regions
                .iter()
                .filter(|r| !known.contains(r))
                .map(|r| format!("'{r}'"))
                .collect();
            if unknown.is_empty() {
                return Ok(());
            }
            Err(ProviderError::Invalid(format!(
                "spec.provider.regions: {} {} a DigitalOcean region; use one of: {}",
                unknown.join(", "),
                if unknown.len() == 1 {
                    "is not"
                } else {
                    "are not"
                },
                known.join(", ")
            )))
        })
    }

    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        owner: &'a Owner,
    ) -> BoxFuture<'a, Result<Claimed, ProviderError>> {
        Box::pin(async move {
            // One snapshot, many regions: each ID is checked once.
            let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for a in artifacts {
                by_id.entry(&a.image_id).or_default().push(&a.region);
            }
            // The digitalocean plugin (1.4) reports only the build region,
            // having waited for the transfers: record every region the
            // snapshot is in.
            let mut placed = Vec::new();
            for (id, regions) in &by_id {
                let present = self.verify(id, regions).await?;
                let mut all: Vec<&str> = regions.clone();
                all.extend(present.iter().map(String::as_str));
                all.sort_unstable();
                all.dedup();
                placed.extend(all.into_iter().map(|region| RegionArtifact {
                    region: region.to_owned(),
                    image_id: (*id).to_owned(),
                }));
            }
            let Some(region) = artifacts.first().map(|a| a.region.as_str()) else {
                return Ok(Claimed::as_reported(artifacts));
            };
            let resources: Vec<serde_json::Value> = by_id
                .keys()
                .map(|id| serde_json::json!({"resource_id": id, "resource_type": "image"}))
                .collect();
            let body = serde_json::json!({ "resources": resources });
            for tag in owner_tags(owner) {
                self.ensure_tag(&tag, region).await?;
                let reply = self
                    .call(
                        Method::POST,
                        &["v2", "tags", &tag, "resources"],
                        &[],
                        Some(&body),
                        "tags_assign_resources",
                        region,
                    )
                    .await?;
                match reply.status {
                    s if s.is_success() => {}
                    // The snapshot went, or the tag did, since they were
                    // checked: the next claim tells which.
                    _ => return Err(reply.unexpected("tags_assign_resources", region)),
                }
            }
            Ok(Claimed {
                artifacts: placed,
                note: None,
            })
        })
    }

    fn list_owned<'a>(
        &'a self,
        regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ImageInfo>, ProviderError>> {
        Box::pin(async move {
            let images = self
                .images_tagged(&owner_tag(namespace, image_build))
                .await?;
            let mut out = Vec::new();
            for image in images {
                let tags = image.tags.as_deref().unwrap_or_default();
                // Another ImageBuild's tag as well: not this one's to delete.
                let Some(owner) = owner_if(tags, namespace, image_build) else {
                    continue;
                };
                out.extend(image_infos(image, owner, regions));
            }
            Ok(out)
        })
    }

    fn delete<'a>(
        &'a self,
        image: &'a ImageInfo,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            if image.image_id.parse::<u64>().is_err() {
                return Err(ProviderError::Invalid(format!(
                    "'{}' is not a DigitalOcean image ID",
                    image.image_id
                )));
            }
            let reply = self
                .call(
                    Method::DELETE,
                    &["v2", "images", &image.image_id],
                    &[],
                    None,
                    "images_delete",
                    &image.region,
                )
                .await?;
            match reply.status {
                // 404: already gone; a snapshot is listed once per region,
                // and the first region's deletion removed it everywhere.
                s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(None),
                _ => Err(reply.unexpected("images_delete", &image.region)),
            }
        })
    }

    fn sweep<'a>(
        &'a self,
        _regions: &'a [String],
        _namespace: &'a str,
        _image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        // A snapshot is deleted whole: nothing is left behind.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn deprecate<'a>(
        &'a self,
        _image: &'a ImageInfo,
        _: &'a super::Deprecation,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async {
            Ok(Some(
                "kept: DigitalOcean has no deprecation of its own".to_owned(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(namespace: &str, image_build: &str) -> Owner {
        Owner {
            namespace: namespace.into(),
            image_build: image_build.into(),
            build_id: "3f2a9c01bd-2".into(),
            spec_hash: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn owner_tags_round_trip() {
        let o = owner("team-a", "base");
        let t = owner_tags(&o);
        assert_eq!(
            t,
            [
                "kiln:owner:team-a:base",
                "kiln:build:3f2a9c01bd-2",
                "kiln:spec:0123456789abcdef",
                "kiln:managed"
            ]
        );
        assert!(t.iter().all(|t| tags::is_valid(t)), "{t:?}");
        assert_eq!(
            decode_owner(&t),
            Some(ImageOwner {
                namespace: "team-a".into(),
                image_build: "base".into(),
                build_id: "3f2a9c01bd-2".into(),
            })
        );
    }

    #[test]
    fn a_name_with_dots_round_trips() {
        let o = owner("default", "ubuntu.24-04.base");
        let t = owner_tags(&o);
        assert_eq!(t[0], "kiln:owner:default:ubuntu_24-04_base");
        let decoded = decode_owner(&t).expect("decodes");
        assert_eq!(decoded.image_build, "ubuntu.24-04.base");
        assert_eq!(owner_if(&t, "default", "ubuntu.24-04.base"), Some(decoded));
        // `a.b` and `a-b` are different ImageBuilds, and stay apart.
        assert_ne!(owner_tag("default", "a.b"), owner_tag("default", "a-b"));
    }

    #[test]
    fn names_at_their_limits_fit_in_a_tag_and_stay_apart() {
        let namespace = "n".repeat(63);
        let long = |c: &str| format!("{}.{}", "a".repeat(126), c.repeat(126));
        let (one, two) = (long("b"), long("c"));
        assert_eq!(one.len(), 253);
        for name in [&one, &two] {
            let t = owner_tags(&owner(&namespace, name));
            assert!(t.iter().all(|t| tags::is_valid(t)), "{t:?}");
            assert!(t[0].len() <= 255);
            // Not decodable alone, but the ImageBuild's own tag matches.
            assert_eq!(decode_owner(&t), None);
            let found = owner_if(&t, &namespace, name).expect("matches its own ImageBuild");
            assert_eq!(found.image_build, *name);
            assert_eq!(found.build_id, "3f2a9c01bd-2");
        }
        let t = owner_tags(&owner(&namespace, &one));
        assert_eq!(owner_if(&t, &namespace, &two), None);
        assert_ne!(owner_tag(&namespace, &one), owner_tag(&namespace, &two));
        // Just short enough: the plain form.
        let fits = "x".repeat(255 - "kiln:owner:".len() - 63 - 1);
        let tag = owner_tag(&namespace, &fits);
        assert_eq!(tag.len(), 255);
        assert_eq!(
            decode_owner(&[tag]).map(|o| o.image_build),
            Some(fits.clone())
        );
    }

    #[test]
    fn foreign_and_malformed_tags_decode_to_nothing() {
        let t = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            decode_owner(&t(&["prod", "kiln:managed", "kiln:keep"])),
            None
        );
        // Foreign tags beside kiln's are ignored.
        assert_eq!(
            decode_owner(&t(&["prod", "kiln:owner:ns:web", "env:prod", "kiln:keep"])).map(|o| (
                o.namespace,
                o.image_build,
                o.build_id
            )),
            Some(("ns".into(), "web".into(), String::new()))
        );
        for bad in [
            "kiln:owner:",
            "kiln:owner:ns",
            "kiln:owner:ns:",
            "kiln:owner::web",
            "kiln:owner:NS:web",
            "kiln:owner:ns:web:extra",
        ] {
            assert_eq!(decode_owner(&t(&[bad])), None, "{bad}");
        }
        // Claimed by two ImageBuilds: nobody's.
        assert_eq!(
            decode_owner(&t(&["kiln:owner:ns:a", "kiln:owner:ns:b"])),
            None
        );
        // The same tag twice is one owner.
        assert!(decode_owner(&t(&["kiln:owner:ns:a", "kiln:owner:ns:a"])).is_some());
        // Another ImageBuild's image is not this one's.
        assert_eq!(owner_if(&t(&["kiln:owner:ns:a"]), "ns", "b"), None);
        assert_eq!(owner_if(&t(&["kiln:owner:ns:a"]), "other", "a"), None);
    }

    #[test]
    fn the_token_stays_out_of_debug_and_bucket_keys() {
        let token = "dop_v1_0123456789abcdef0123456789abcdef";
        let d = DigitalOcean::new("https://api.example.test/", token);
        assert!(!format!("{d:?}").contains(token));
        assert!(!d.account.contains(token));
        assert!(
            d.account
                .starts_with("digitalocean|https://api.example.test|")
        );
    }

    #[test]
    fn the_api_url_comes_from_the_spec_then_the_secret() {
        let creds = Credentials::from([
            ("DIGITALOCEAN_API_TOKEN".to_owned(), "t".to_owned()),
            (
                "DIGITALOCEAN_API_URL".to_owned(),
                "http://secret.test".to_owned(),
            ),
        ]);
        let d = from_credentials(Some("http://spec.test/".into()), &creds);
        assert_eq!(d.token, "t");
        assert_eq!(
            d.url(&["v2", "images", "7"]).expect("url").as_str(),
            "http://spec.test/v2/images/7"
        );
        let d = from_credentials(None, &creds);
        assert_eq!(
            d.url(&["v2", "tags", "kiln:owner:a:b", "resources"])
                .expect("url")
                .as_str(),
            "http://secret.test/v2/tags/kiln:owner:a:b/resources"
        );
        let d = from_credentials(None, &Credentials::new());
        assert!(
            d.url(&["v2"])
                .expect("url")
                .as_str()
                .starts_with(DEFAULT_API_URL)
        );
        let d = from_credentials(Some("not a url".into()), &creds);
        match d.url(&["v2"]) {
            Err(ProviderError::Misconfigured(m)) => {
                assert!(m.starts_with("spec.provider.endpoint:"), "{m}")
            }
            other => panic!("{:?}", other.map(|u| u.to_string())),
        }
    }

    #[test]
    fn pacing_keeps_within_both_limits() {
        let p = DIGITALOCEAN_PACING;
        let per_minute = f64::from(p.burst) + 60.0 * p.requests_per_second;
        let per_hour = f64::from(p.burst) + 3_600.0 * p.requests_per_second;
        assert!(per_minute <= 0.8 * 250.0, "{per_minute}");
        assert!(per_hour < 5_000.0, "{per_hour}");
    }

    #[test]
    fn a_429_waits_as_told() {
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_wait(&h), None);
        h.insert("ratelimit-remaining", "0".parse().expect("header"));
        let reset = Timestamp::now().as_second() + 120;
        h.insert(
            "ratelimit-reset",
            reset.to_string().parse().expect("header"),
        );
        let wait = rate_limit_wait(&h).expect("until the reset");
        assert!((110..=121).contains(&wait.as_secs()), "{wait:?}");
        h.insert("retry-after", "29".parse().expect("header"));
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(29)));
    }
}
