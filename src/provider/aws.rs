//! AWS: AMIs and their EBS snapshots, through aws-sdk-ec2.

mod reclaim;

use aws_sdk_ec2::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    error::ProvideErrorMetadata,
    types::{Filter, Tag},
};
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use jiff::Timestamp;

use super::{
    ImageProvider, Owner, Pacing, ProviderError,
    pace::{BucketKey, TokenBucket},
};
use crate::api::RegionArtifact;
use kiln_core::{image_build::run::Created, retention::ImageInfo};

/// EC2 tag keys kiln puts on every AMI (and snapshot) it makes. Retention
/// only ever touches images that carry them.
pub mod tags {
    /// Always `kiln`.
    pub const MANAGED_BY: &str = "kiln.dev/managed-by";
    /// Namespace of the owning ImageBuild.
    pub const NAMESPACE: &str = "kiln.dev/namespace";
    /// Name of the owning ImageBuild.
    pub const IMAGE_BUILD: &str = "kiln.dev/image-build";
    /// The build that made the image.
    pub const BUILD_ID: &str = "kiln.dev/build-id";
    /// The spec hash it was built from.
    pub const SPEC_HASH: &str = "kiln.dev/spec-hash";
    /// Set (to anything) by a user to protect an image from retention.
    pub const KEEP: &str = "kiln.dev/keep";

    use std::collections::BTreeMap;

    use kiln_core::retention::ImageOwner;

    /// The owner kiln wrote into an image's tags, if it did.
    pub fn owner(tags: &BTreeMap<String, String>) -> Option<ImageOwner> {
        Some(ImageOwner {
            namespace: tags.get(NAMESPACE)?.clone(),
            image_build: tags.get(IMAGE_BUILD)?.clone(),
            build_id: tags.get(BUILD_ID).cloned().unwrap_or_default(),
        })
    }
}

/// The owner as EC2 tags.
pub fn owner_tags(owner: &Owner) -> Vec<(&'static str, String)> {
    vec![
        (tags::MANAGED_BY, "kiln".to_owned()),
        (tags::NAMESPACE, owner.namespace.clone()),
        (tags::IMAGE_BUILD, owner.image_build.clone()),
        (tags::BUILD_ID, owner.build_id.clone()),
        (tags::SPEC_HASH, owner.spec_hash.clone()),
    ]
}

/// Credentials read from the ImageBuild's Secret.
#[derive(Clone)]
pub struct StaticCredentials {
    /// AWS_ACCESS_KEY_ID.
    pub access_key_id: String,
    /// AWS_SECRET_ACCESS_KEY.
    pub secret_access_key: String,
    /// AWS_SESSION_TOKEN.
    pub session_token: Option<String>,
}

/// What an AWS credentials Secret holds.
pub const CREDENTIAL_KEYS: super::factory::CredentialKeys = super::factory::CredentialKeys {
    required: &[&["AWS_ACCESS_KEY_ID"], &["AWS_SECRET_ACCESS_KEY"]],
    optional: &["AWS_SESSION_TOKEN"],
};

/// EC2 in any region, at the real endpoint or an override.
pub struct Aws {
    endpoint: Option<String>,
    credentials: Option<StaticCredentials>,
    calls: AtomicU64,
    // One client (and so one connection pool) per region, reused by every call.
    clients: std::sync::Mutex<BTreeMap<String, Client>>,
    // Mutating calls (DeregisterImage, DeleteSnapshot, EnableImageDeprecation).
    pacing: Pacing,
    // Non-mutating calls (DescribeImages, DescribeSnapshots).
    describe_pacing: Pacing,
    // kiln's images per region, listed once and shared by every ImageBuild
    // and policy with these credentials; one listing at a time per region.
    listings: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Option<Listing>>>>>,
    // kiln's snapshots per region (id, namespace, ImageBuild), likewise.
    snapshot_listings:
        std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Option<Snapshots>>>>>,
}

/// When a region's snapshot listing was made, and what it found.
type Snapshots = (std::time::Instant, Arc<Vec<(String, String, String)>>);

/// When a region's listing was made, and what it found.
type Listing = (std::time::Instant, Arc<Vec<ImageInfo>>);

/// How long a region's listing of kiln's images is reused. Anything kiln
/// itself changes (a claim, a deletion, a deprecation) drops it at once; a
/// change by someone else is seen this much later.
pub const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// Deletions retention has in flight per region, by default.
pub const CONCURRENCY: usize = Pacing::DEFAULT_CONCURRENCY;
const ATTEMPTS: u32 = 6;

// EC2 throttles each API per account and per region with a token bucket
// (Amazon EC2 developer guide, "Request throttling for the Amazon EC2 API",
// table "Request token bucket sizes and refill rates"):
//
//   category      kiln's calls in it                           bucket  refill
//   mutating      DeregisterImage, DeleteSnapshot,              200     5/s
//                 EnableImageDeprecation
//   non-mutating  DescribeImages, DescribeSnapshots             100     20/s
//
// kiln keeps to 80% of each refill rate and a quarter of each bucket: the
// bucket is the account's, shared with Packer, the console and every other
// tool, and a prune that took all of it would starve them and be throttled
// itself at their first call. So a region's DeregisterImage calls go 50 at
// once, then 4 a second: 2,000 AMIs in one region take about 8 minutes, and
// 2,000 in each of four regions no longer (each region has its own buckets).
// Concurrency only fills the burst and hides latency (4/s at 80 ms needs one
// call in flight); 8 is plenty.

/// kiln's share of EC2's limits for mutating actions (see above).
pub const EC2_MUTATING: Pacing = Pacing {
    concurrency: CONCURRENCY,
    requests_per_second: 4.0,
    burst: 50,
};

/// kiln's share of EC2's limits for non-mutating actions (see above).
pub const EC2_NON_MUTATING: Pacing = Pacing {
    concurrency: CONCURRENCY,
    requests_per_second: 16.0,
    burst: 25,
};

impl Aws {
    /// Without credentials the SDK's default chain applies (IRSA, instance
    /// profile, environment).
    /// EC2 with the keys of a Secret (or the environment); without both
    /// keys, the SDK's default chain (instance role, web identity).
    pub fn from_credentials(endpoint: Option<String>, keys: &super::factory::Credentials) -> Self {
        let credentials = match (
            keys.get("AWS_ACCESS_KEY_ID"),
            keys.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Some(StaticCredentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: keys.get("AWS_SESSION_TOKEN").cloned(),
            }),
            _ => None,
        };
        Aws::new(endpoint, credentials)
    }

    pub fn new(endpoint: Option<String>, credentials: Option<StaticCredentials>) -> Self {
        Aws {
            endpoint,
            credentials,
            calls: AtomicU64::new(0),
            clients: std::sync::Mutex::default(),
            pacing: EC2_MUTATING,
            describe_pacing: EC2_NON_MUTATING,
            listings: std::sync::Mutex::default(),
            snapshot_listings: std::sync::Mutex::default(),
        }
    }

    /// kiln's snapshots in `region`, listed once per [`LISTING_TTL`].
    async fn snapshots_in(&self, region: &str) -> Result<Snapshots, ProviderError> {
        let slot = self
            .snapshot_listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(region.to_owned())
            .or_default()
            .clone();
        let mut listing = slot.lock().await;
        if let Some((at, found)) = listing.as_ref()
            && at.elapsed() < LISTING_TTL
        {
            return Ok((*at, found.clone()));
        }
        let client = self.client(region).await;
        let at = std::time::Instant::now();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = with_backoff(self, region, "DescribeSnapshots", &[], || {
                client
                    .describe_snapshots()
                    .owner_ids("self")
                    .filters(
                        Filter::builder()
                            .name("tag-key")
                            .values(tags::IMAGE_BUILD)
                            .build(),
                    )
                    .set_next_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| ProviderError::Api {
                operation: "DescribeSnapshots",
                region: region.to_owned(),
                message: describe_error(&e),
            })?;
            out.extend(page.snapshots().iter().filter_map(|s| {
                let tag = |key: &str| {
                    s.tags()
                        .iter()
                        .find(|t| t.key() == Some(key))
                        .and_then(|t| t.value())
                        .map(str::to_owned)
                };
                Some((
                    s.snapshot_id()?.to_owned(),
                    tag(tags::NAMESPACE)?,
                    tag(tags::IMAGE_BUILD)?,
                ))
            }));
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let found = Arc::new(out);
        *listing = Some((at, found.clone()));
        Ok((at, found))
    }

    fn listing(&self, region: &str) -> Arc<tokio::sync::Mutex<Option<Listing>>> {
        self.listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(region.to_owned())
            .or_default()
            .clone()
    }

    /// Drops a region's listings: kiln changed an image there.
    fn forget_listing(&self, region: &str) {
        self.listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(region);
        self.snapshot_listings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(region);
    }

    /// Every image in `region` that carries kiln's owner tags, listed once
    /// per [`LISTING_TTL`]: a thousand policies cost one listing, not one
    /// per ImageBuild.
    async fn owned_in(&self, region: &str) -> Result<Arc<Vec<ImageInfo>>, ProviderError> {
        self.owned_in_since(region, None).await
    }

    /// [`Self::owned_in`], listed no earlier than `since` when given.
    async fn owned_in_since(
        &self,
        region: &str,
        since: Option<std::time::Instant>,
    ) -> Result<Arc<Vec<ImageInfo>>, ProviderError> {
        let slot = self.listing(region);
        let mut listing = slot.lock().await;
        if let Some((at, images)) = listing.as_ref()
            && at.elapsed() < LISTING_TTL
            && since.is_none_or(|s| *at >= s)
        {
            return Ok(images.clone());
        }
        let client = self.client(region).await;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = with_backoff(self, region, "DescribeImages", &[], || {
                client
                    .describe_images()
                    .owners("self")
                    .filters(
                        Filter::builder()
                            .name("tag-key")
                            .values(tags::IMAGE_BUILD)
                            .build(),
                    )
                    .max_results(1000)
                    .set_next_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| ProviderError::Api {
                operation: "DescribeImages",
                region: region.to_owned(),
                message: describe_error(&e),
            })?;
            out.extend(page.images().iter().filter_map(|i| image_info(region, i)));
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let images = Arc::new(out);
        *listing = Some((std::time::Instant::now(), images.clone()));
        Ok(images)
    }

    /// Paces mutating and non-mutating calls as given instead of to EC2's
    /// limits ([`EC2_MUTATING`], [`EC2_NON_MUTATING`]).
    pub fn with_pacing(mut self, mutating: Pacing, non_mutating: Pacing) -> Aws {
        self.pacing = mutating;
        self.describe_pacing = non_mutating;
        self
    }

    /// Waits for this call's turn in its API's token bucket for this
    /// account (endpoint and access key) and region, shared by every `Aws`
    /// of the process.
    async fn pace(&self, region: &str, operation: &'static str) {
        super::pace::wait_turn(self.bucket(region, operation).as_deref()).await;
    }

    fn bucket(&self, region: &str, operation: &'static str) -> Option<Arc<TokenBucket>> {
        let non_mutating = ["Describe", "List", "Get"]
            .iter()
            .any(|p| operation.starts_with(p));
        let pacing = if non_mutating {
            self.describe_pacing
        } else {
            self.pacing
        };
        let key = BucketKey {
            account: format!(
                "ec2|{}|{}",
                self.endpoint.as_deref().unwrap_or_default(),
                self.credentials
                    .as_ref()
                    .map(|c| c.access_key_id.as_str())
                    .unwrap_or_default()
            ),
            region: region.to_owned(),
            operation,
        };
        super::pace::bucket(key, pacing)
    }

    /// EC2 API calls made through this value (for benchmarks).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// An EC2 client for one region.
    pub async fn client(&self, region: &str) -> Client {
        let cached = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(region)
            .cloned();
        if let Some(client) = cached {
            return client;
        }
        let mut builder = match &self.credentials {
            Some(c) => aws_sdk_ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(
                    c.access_key_id.clone(),
                    c.secret_access_key.clone(),
                    c.session_token.clone(),
                    None,
                    "kiln-secret",
                )),
            None => {
                let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
                aws_sdk_ec2::config::Builder::from(&shared)
            }
        };
        builder = builder.region(Region::new(region.to_owned()));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        let client = Client::from_conf(builder.build());
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_owned(), client.clone());
        client
    }
}

/// The EC2 error code of a service error (`InvalidAMIID.NotFound`, ...).
fn error_code<E: ProvideErrorMetadata>(e: &aws_sdk_ec2::error::SdkError<E>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

/// The SDK's error, as code and message, without the request (which may
/// carry signed headers).
pub fn describe_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &aws_sdk_ec2::error::SdkError<E>,
) -> String {
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("Error"),
            service.message().unwrap_or_default()
        ),
        None => match e {
            aws_sdk_ec2::error::SdkError::DispatchFailure(f) => {
                format!("cannot reach the EC2 endpoint: {f:?}")
            }
            aws_sdk_ec2::error::SdkError::TimeoutError(_) => {
                "the EC2 endpoint timed out".to_owned()
            }
            // The whole chain: the top-level text alone can be empty.
            other => aws_sdk_ec2::error::DisplayErrorContext(other).to_string(),
        },
    }
}

/// The region to list a partition's regions from: one every account of
/// that partition has.
fn anchor_region(region: &str) -> &'static str {
    match region {
        r if r.starts_with("us-gov-") => "us-gov-west-1",
        r if r.starts_with("cn-") => "cn-north-1",
        r if r.starts_with("us-isob-") => "us-isob-east-1",
        r if r.starts_with("us-iso-") => "us-iso-east-1",
        _ => "us-east-1",
    }
}

fn is_throttling(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled")
    )
}

/// Runs an EC2 call in its turn (see [`EC2_MUTATING`]), backing off on
/// throttling (and on `retry_also` codes, such as a snapshot still in use)
/// up to six attempts.
async fn with_backoff<T, E, F, Fut>(
    aws: &Aws,
    region: &str,
    operation: &'static str,
    retry_also: &[&str],
    mut call: F,
) -> Result<T, aws_sdk_ec2::error::SdkError<E>>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, aws_sdk_ec2::error::SdkError<E>>>,
{
    let mut wait = Duration::from_millis(200);
    for attempt in 1.. {
        aws.pace(region, operation).await;
        aws.count();
        match call().await {
            Err(e) if attempt < ATTEMPTS => {
                let code = error_code(&e);
                if is_throttling(code)
                    && let Some(bucket) = aws.bucket(region, operation)
                {
                    bucket.throttled();
                }
                if !is_throttling(code) && !code.is_some_and(|c| retry_also.contains(&c)) {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
    unreachable!("the loop returns by the last attempt")
}

fn is_auth_error(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AuthFailure"
                | "UnauthorizedOperation"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
        )
    )
}

impl ImageProvider for Aws {
    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            cloud: "AWS",
            ownership: true,
            deprecation: true,
            obsolescence: false,
            pacing: self.pacing,
        }
    }

    fn check_regions<'a>(
        &'a self,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let Some(first) = regions.first() else {
                return Ok(());
            };
            // Asked in a region the partition always has, never in the one
            // being checked: a region that does not exist has no endpoint.
            let anchor = anchor_region(first);
            let client = self.client(anchor).await;
            self.count();
            let out = client.describe_regions().all_regions(true).send().await.map_err(|e| {
                if is_auth_error(error_code(&e)) {
                    ProviderError::Unauthorized(format!(
                        "the credentials in spec.provider.credentials.secretRef were refused by EC2 ({}); fix the Secret",
                        describe_error(&e)
                    ))
                } else {
                    ProviderError::Api { operation: "DescribeRegions", region: anchor.to_owned(), message: describe_error(&e) }
                }
            })?;
            let known: Vec<String> = out
                .regions()
                .iter()
                .filter_map(|r| r.region_name().map(str::to_owned))
                .collect();
            let unknown: Vec<&String> = regions.iter().filter(|r| !known.contains(r)).collect();
            if unknown.is_empty() {
                return Ok(());
            }
            Err(ProviderError::Invalid(format!(
                "spec.provider.regions: {} not an EC2 region at this endpoint; use one of: {}",
                unknown
                    .iter()
                    .map(|r| format!("'{r}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if unknown.len() == 1 { " is" } else { " are" },
                known.join(", ")
            )))
        })
    }

    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        owner: &'a Owner,
    ) -> BoxFuture<'a, Result<super::Claimed, ProviderError>> {
        Box::pin(async move {
            let tags: Vec<Tag> = owner_tags(owner)
                .into_iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect();
            for a in artifacts {
                self.forget_listing(&a.region);
            }
            for a in artifacts {
                let client = self.client(&a.region).await;
                let api = |operation| {
                    let region = a.region.clone();
                    move |e: String| ProviderError::Api {
                        operation,
                        region,
                        message: e,
                    }
                };
                let described = client
                    .describe_images()
                    .image_ids(&a.image_id)
                    .send()
                    .await
                    .map_err(|e| describe_error(&e))
                    .map_err(api("DescribeImages"))?;
                let Some(image) = described
                    .images()
                    .iter()
                    .find(|i| i.image_id() == Some(a.image_id.as_str()))
                else {
                    return Err(ProviderError::ImageMissing {
                        region: a.region.clone(),
                        image_id: a.image_id.clone(),
                    });
                };
                let state = image
                    .state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                match state.as_str() {
                    "available" => {}
                    "pending" | "transient" | "" => {
                        return Err(ProviderError::ImageNotReady {
                            region: a.region.clone(),
                            image_id: a.image_id.clone(),
                            state,
                        });
                    }
                    _ => {
                        return Err(ProviderError::ImageFailed {
                            region: a.region.clone(),
                            image_id: a.image_id.clone(),
                            state,
                        });
                    }
                }
                let mut resources = vec![a.image_id.clone()];
                resources.extend(
                    image
                        .block_device_mappings()
                        .iter()
                        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned)),
                );
                client
                    .create_tags()
                    .set_resources(Some(resources))
                    .set_tags(Some(tags.clone()))
                    .send()
                    .await
                    .map_err(|e| describe_error(&e))
                    .map_err(api("CreateTags"))?;
            }
            Ok(super::Claimed::as_reported(artifacts))
        })
    }

    fn list_owned<'a>(
        &'a self,
        regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ImageInfo>, ProviderError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            for region in regions {
                let owned = self.owned_in(region).await?;
                all.extend(
                    owned
                        .iter()
                        .filter(|i| {
                            i.owner.as_ref().is_some_and(|o| {
                                o.namespace == namespace && o.image_build == image_build
                            })
                        })
                        .cloned(),
                );
            }
            Ok(all)
        })
    }

    fn delete<'a>(
        &'a self,
        image: &'a ImageInfo,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            self.forget_listing(&image.region);
            let client = self.client(&image.region).await;
            let api = |operation: &'static str, message: String| ProviderError::Api {
                operation,
                region: image.region.clone(),
                message,
            };
            // DeleteAssociatedSnapshots removes the snapshots in the same call
            // where EC2 supports it; whatever it did not report deleted (an
            // endpoint that ignores the flag, such as moto) is deleted below.
            let mut remaining: Vec<&String> = image.dependents.iter().collect();
            let deregister = || {
                client
                    .deregister_image()
                    .image_id(&image.image_id)
                    .delete_associated_snapshots(true)
                    .send()
            };
            match with_backoff(self, &image.region, "DeregisterImage", &[], deregister).await {
                Ok(out) => {
                    let done: Vec<&str> = out
                        .delete_snapshot_results()
                        .iter()
                        .filter(|r| {
                            r.return_code()
                                == Some(&aws_sdk_ec2::types::SnapshotReturnCodes::Success)
                        })
                        .filter_map(|r| r.snapshot_id())
                        .collect();
                    remaining.retain(|s| !done.contains(&s.as_str()));
                }
                // Already gone: a previous evaluation got this far.
                Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => {}
                Err(e) => return Err(api("DeregisterImage", describe_error(&e))),
            }
            // The AMI is gone from here on: a snapshot that cannot be deleted
            // now is reported, and the next pass's sweep deletes it.
            let mut left = Vec::new();
            for snapshot in remaining {
                if let Err(e) = self.delete_snapshot(&client, &image.region, snapshot).await {
                    left.push(format!("{snapshot}: {e}"));
                }
            }
            Ok((!left.is_empty()).then(|| {
                format!(
                    "snapshot(s) not deleted yet, deleted by the next evaluation: {}",
                    left.join("; ")
                )
            }))
        })
    }

    fn sweep<'a>(
        &'a self,
        regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        Box::pin(async move {
            let mut deleted = Vec::new();
            for region in regions {
                // Snapshots first, then images listed no earlier: a snapshot
                // seen without its AMI is then truly one whose AMI is gone.
                let (listed_at, snapshots) = self.snapshots_in(region).await?;
                let in_use: std::collections::BTreeSet<String> = self
                    .owned_in_since(region, Some(listed_at))
                    .await?
                    .iter()
                    .flat_map(|i| i.dependents.iter().cloned())
                    .collect();
                let client = self.client(region).await;
                // kiln tags a snapshot only with its verified AMI, so an owned
                // snapshot no owned AMI uses belonged to an AMI kiln deleted.
                for (id, _, _) in snapshots.iter().filter(|(id, ns, build)| {
                    ns == namespace && build == image_build && !in_use.contains(id)
                }) {
                    self.delete_snapshot(&client, region, id).await?;
                    deleted.push(format!("{region}/{id}"));
                }
                if !deleted.is_empty() {
                    self.forget_listing(region);
                }
            }
            Ok(deleted)
        })
    }

    fn reclaim<'a>(
        &'a self,
        regions: &'a [String],
        created: &'a Created,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        Box::pin(async move {
            let mut removed = Vec::new();
            for region in regions {
                removed.extend(self.reclaim_in(region, created).await?);
            }
            Ok(removed)
        })
    }

    fn deprecate<'a>(
        &'a self,
        image: &'a ImageInfo,
        deprecation: &'a super::Deprecation,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            if image.deprecated {
                return Ok(None);
            }
            self.forget_listing(&image.region);
            let client = self.client(&image.region).await;
            let when = aws_sdk_ec2::primitives::DateTime::from_secs(deprecation.at.as_second());
            match with_backoff(self, &image.region, "EnableImageDeprecation", &[], || {
                client
                    .enable_image_deprecation()
                    .image_id(&image.image_id)
                    .deprecate_at(when)
                    .send()
            })
            .await
            {
                Ok(_) => Ok(None),
                Err(e) => {
                    let code = error_code(&e).unwrap_or_default();
                    let unsupported = code.is_empty()
                        || code.contains("NotImplemented")
                        || code == "InvalidAction"
                        || code == "UnsupportedOperation";
                    if unsupported {
                        Ok(Some(format!(
                            "kept: this EC2 endpoint does not implement EnableImageDeprecation ({})",
                            describe_error(&e)
                        )))
                    } else {
                        Err(ProviderError::Api {
                            operation: "EnableImageDeprecation",
                            region: image.region.clone(),
                            message: describe_error(&e),
                        })
                    }
                }
            }
        })
    }
}

impl Aws {
    /// A provider for an EC2 emulator (moto) at `endpoint`, which takes any
    /// credentials: the tests, the benchmark and the demo use it. moto
    /// documents no request limits, so calls are not paced
    /// ([`Self::with_pacing`] paces them as EC2's would be).
    pub fn for_emulator(endpoint: &str) -> Aws {
        Aws::new(
            Some(endpoint.to_owned()),
            Some(StaticCredentials {
                access_key_id: "testing".into(),
                secret_access_key: "testing".into(),
                session_token: None,
            }),
        )
        .with_pacing(Pacing::UNLIMITED, Pacing::UNLIMITED)
    }
}

/// A filter on one tag, for listing owned images.
pub fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

fn image_info(region: &str, image: &aws_sdk_ec2::types::Image) -> Option<ImageInfo> {
    let image_id = image.image_id()?.to_owned();
    let created_at = image
        .creation_date()
        .and_then(|d| d.parse::<Timestamp>().ok())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let tags: BTreeMap<String, String> = image
        .tags()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect();
    let deprecated = image
        .deprecation_time()
        .and_then(|d| d.parse::<Timestamp>().ok())
        .is_some_and(|d| d <= Timestamp::now());
    let snapshots = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
        .collect();
    Some(ImageInfo {
        region: region.to_owned(),
        image_id,
        name: image.name().map(str::to_owned),
        created_at,
        owner: tags::owner(&tags),
        keep: tags.contains_key(tags::KEEP),
        tags,
        deprecated,
        obsolete: false,
        end_of_life: None,
        delete_blocked: false,
        dependents: snapshots,
    })
}

impl Aws {
    /// Deletes a snapshot; one still "in use" for a moment after its AMI went
    /// is retried, one already gone is fine.
    async fn delete_snapshot(
        &self,
        client: &Client,
        region: &str,
        snapshot: &str,
    ) -> Result<(), ProviderError> {
        match with_backoff(
            self,
            region,
            "DeleteSnapshot",
            &["InvalidSnapshot.InUse"],
            || client.delete_snapshot().snapshot_id(snapshot).send(),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("InvalidSnapshot.NotFound") => Ok(()),
            Err(e) => Err(ProviderError::Api {
                operation: "DeleteSnapshot",
                region: region.to_owned(),
                message: format!("{snapshot}: {}", describe_error(&e)),
            }),
        }
    }

    /// Owned AMIs of one ImageBuild in one region, following pagination.
    pub async fn list_region(
        &self,
        region: &str,
        namespace: &str,
        image_build: &str,
    ) -> Result<Vec<ImageInfo>, ProviderError> {
        let client = self.client(region).await;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = with_backoff(self, region, "DescribeImages", &[], || {
                client
                    .describe_images()
                    .owners("self")
                    .filters(tag_filter(tags::NAMESPACE, namespace))
                    .filters(tag_filter(tags::IMAGE_BUILD, image_build))
                    .max_results(1000)
                    .set_next_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| ProviderError::Api {
                operation: "DescribeImages",
                region: region.to_owned(),
                message: describe_error(&e),
            })?;
            out.extend(page.images().iter().filter_map(|i| image_info(region, i)));
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::anchor_region;

    #[test]
    fn regions_are_checked_from_their_partition() {
        assert_eq!(anchor_region("xx-nowhere-9"), "us-east-1");
        assert_eq!(anchor_region("eu-west-1"), "us-east-1");
        assert_eq!(anchor_region("us-gov-east-1"), "us-gov-west-1");
        assert_eq!(anchor_region("cn-northwest-1"), "cn-north-1");
    }
}
