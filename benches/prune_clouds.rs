//! Benchmark (not a test): the same prune as `benches/prune.rs` (2,000 owned
//! images to keepLast 3), on OpenStack's real Glance and on the DigitalOcean
//! stand-in (behind Prism, which validates every call against DigitalOcean's
//! spec).
//!
//! Each side starts from the same seeded images:
//! - baseline: what a hand-written script does (the Codelab seed's
//!   `clean-images`, `openstack image list | … | xargs openstack image
//!   delete`): list, then delete one image at a time;
//! - kiln: the provider's listing, the retention planner and the ImagePolicy
//!   controller's executor (a bounded number of calls in flight).
//!
//! Prints, per cloud, API calls and wall time for both, and their ratio.
//! Run with `make bench`. Settings (environment):
//! - `BENCH_IMAGES`: images (default 2000);
//! - `BENCH_CLOUDS`: `openstack,digitalocean` (default both);
//! - `BENCH_CONCURRENCY`: kiln's calls in flight (default: the provider's);
//! - `BENCH_PACING=digitalocean`: hold kiln's DigitalOcean calls to
//!   DigitalOcean's documented rate (250 a minute; 2,000 deletions then take
//!   about ten minutes). The stand-in has no limit, as moto has none, so by
//!   default they are not held.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use kiln::{
    provider::{ImageProvider, Pacing, digitalocean::DigitalOcean, openstack::OpenStack},
    retention::{self, Protection, Rules},
};
use kiln_testenv::Service;
use serde_json::{Value, json};

const NS: &str = "bench";
const BUILD: &str = "base";
const KEEP: usize = 3;

struct Run {
    calls: u64,
    seconds: f64,
    remaining: usize,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// kiln: list through the provider, plan, carry out.
async fn kiln_prune(
    provider: Arc<dyn ImageProvider>,
    calls: impl Fn() -> u64,
    regions: &[String],
    concurrency: Option<usize>,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let images = provider.list_owned(regions, NS, BUILD).await?;
    eprintln!(
        "kiln: listed {} images in {:.1}s ({} calls)",
        images.len(),
        started.elapsed().as_secs_f64(),
        calls()
    );
    let now = jiff::Timestamp::now();
    let rules = Rules {
        keep_last: KEEP,
        ..Default::default()
    };
    let verdicts = retention::plan(NS, BUILD, &images, &rules, &Protection::default(), now)?;
    let plan = retention::BuildPlan {
        build: BUILD.to_owned(),
        regions: regions.to_vec(),
        provider,
        verdicts,
    };
    let results = retention::carry_out(&plan, concurrency, now).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|o| match &o.applied {
            retention::Applied::Failed(e) | retention::Applied::Refused(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} deletions failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    Ok((calls(), started.elapsed().as_secs_f64()))
}

fn report(cloud: &str, count: usize, base: &Run, ours: &Run) {
    println!();
    println!("{cloud}: {count} images, keepLast {KEEP}:");
    println!(
        "{:<10} {:>10} {:>12} {:>10}",
        "", "API calls", "wall time", "remaining"
    );
    for (name, run) in [("baseline", base), ("kiln", ours)] {
        println!(
            "{:<10} {:>10} {:>11.1}s {:>10}",
            name, run.calls, run.seconds, run.remaining
        );
    }
    println!(
        "kiln/baseline: {:.2}x the API calls, {:.2}x the wall time ({:.2}x faster)",
        ours.calls as f64 / base.calls as f64,
        ours.seconds / base.seconds,
        base.seconds / ours.seconds
    );
}

// ---------------------------------------------------------------- OpenStack

struct Glance {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Glance {
    async fn new(stack: &Service) -> anyhow::Result<Glance> {
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{}/auth/tokens", stack.get("/auth_url")))
            .json(&json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {
                    "id": stack.get("/app_cred_id"),
                    "secret": stack.get("/app_cred_secret"),
                }
            }}}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 201, "Keystone: {}", response.status());
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|t| t.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("no token"))?
            .to_owned();
        Ok(Glance {
            http,
            url: stack.get("/glance/RegionOne").to_owned(),
            token,
        })
    }

    /// `count` images owned by kiln's bench build, as kiln's claim leaves
    /// them (properties and tag), made 8 at a time; Glance keeps creation
    /// times to the second, so each gets its own `kiln_build_id` and the
    /// order among equal times does not matter to a keepLast of 3 out of
    /// thousands.
    async fn seed(&self, count: usize) -> anyhow::Result<()> {
        let results: Vec<anyhow::Result<()>> = stream::iter(0..count)
            .map(|i| async move {
                let r = self
                    .http
                    .post(format!("{}/v2/images", self.url))
                    .header("X-Auth-Token", &self.token)
                    .json(&json!({
                        "name": format!("{BUILD}-{i:05}"),
                        "disk_format": "raw", "container_format": "bare",
                        "tags": ["kiln"],
                        "kiln_managed_by": "kiln", "kiln_namespace": NS,
                        "kiln_image_build": BUILD, "kiln_build_id": format!("b{i}-1"),
                        "kiln_spec_hash": "0",
                    }))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 201, "create: {}", r.status());
                Ok(())
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// The script: list the build's images page by page, newest first, then
    /// delete all but the newest three, one at a time.
    async fn baseline(&self) -> anyhow::Result<(u64, f64)> {
        let started = Instant::now();
        let mut calls = 0;
        let mut ids = Vec::new();
        let listing = Instant::now();
        let mut next = Some(format!(
            "/v2/images?kiln_image_build={BUILD}&kiln_namespace={NS}&sort_key=created_at&sort_dir=desc&limit=100"
        ));
        while let Some(path) = next {
            calls += 1;
            let page: Value = self
                .http
                .get(format!("{}{path}", self.url))
                .header("X-Auth-Token", &self.token)
                .send()
                .await?
                .json()
                .await?;
            ids.extend(
                page["images"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned)),
            );
            next = page["next"].as_str().map(str::to_owned);
        }
        eprintln!(
            "baseline: listed {} images in {:.1}s ({calls} calls)",
            ids.len(),
            listing.elapsed().as_secs_f64()
        );
        for id in ids.iter().skip(KEEP) {
            calls += 1;
            let r = self
                .http
                .delete(format!("{}/v2/images/{id}", self.url))
                .header("X-Auth-Token", &self.token)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 204, "delete: {}", r.status());
        }
        Ok((calls, started.elapsed().as_secs_f64()))
    }

    async fn remaining(&self) -> anyhow::Result<usize> {
        let page: Value = self
            .http
            .get(format!(
                "{}/v2/images?kiln_image_build={BUILD}&limit=1000",
                self.url
            ))
            .header("X-Auth-Token", &self.token)
            .send()
            .await?
            .json()
            .await?;
        Ok(page["images"].as_array().map_or(0, Vec::len))
    }
}

async fn openstack(count: usize, concurrency: Option<usize>) -> anyhow::Result<()> {
    // Each side on a fresh Glance: Glance keeps deleted images' rows, so a
    // second run on the same database would be slower for that alone.
    let base = {
        let stack = Service::openstack().await?;
        let glance = Glance::new(&stack).await?;
        eprintln!("openstack: seeding {count} images into Glance");
        let t = Instant::now();
        glance.seed(count).await?;
        eprintln!("openstack: seeded in {:.1}s", t.elapsed().as_secs_f64());
        let (calls, seconds) = glance.baseline().await?;
        Run {
            calls,
            seconds,
            remaining: glance.remaining().await?,
        }
    };
    let ours = {
        let stack = Service::openstack().await?;
        let glance = Glance::new(&stack).await?;
        glance.seed(count).await?;
        let credentials = [
            ("OS_AUTH_URL", stack.get("/auth_url")),
            ("OS_APPLICATION_CREDENTIAL_ID", stack.get("/app_cred_id")),
            (
                "OS_APPLICATION_CREDENTIAL_SECRET",
                stack.get("/app_cred_secret"),
            ),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let provider = Arc::new(OpenStack::from_credentials(None, &credentials));
        let counter = provider.clone();
        let (calls, seconds) = kiln_prune(
            provider.clone(),
            move || counter.api_calls(),
            &["RegionOne".to_owned()],
            concurrency,
        )
        .await?;
        Run {
            calls,
            seconds,
            remaining: glance.remaining().await?,
        }
    };
    report("OpenStack Glance", count, &base, &ours);
    Ok(())
}

// ------------------------------------------------------------ DigitalOcean

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
    control: String,
}

impl Api {
    /// `count` snapshots with kiln's owner tags, through the stand-in's
    /// control endpoint (seeding is not what is measured), each a second
    /// apart, the first at `first` seconds.
    async fn seed(&self, count: usize, first: usize) -> anyhow::Result<()> {
        let base = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1000);
        let owner = kiln::provider::digitalocean::owner_tag(NS, BUILD);
        let results: Vec<anyhow::Result<()>> = stream::iter(first..first + count)
            .map(|i| {
                let owner = owner.clone();
                async move {
                    let created = base + jiff::SignedDuration::from_secs(i as i64);
                    let r = self
                        .http
                        .post(format!("{}/images", self.control))
                        .json(&json!({
                            "name": format!("{BUILD}-{i:05}"),
                            "regions": ["nyc3"],
                            "created_at": created.to_string(),
                            "tags": ["kiln:managed", owner, format!("kiln:build:b{i}-1")],
                        }))
                        .send()
                        .await?;
                    anyhow::ensure!(r.status() == 200, "seed: {}", r.status());
                    Ok(())
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn list(&self, calls: &mut u64) -> anyhow::Result<Vec<(String, String)>> {
        let owner = kiln::provider::digitalocean::owner_tag(NS, BUILD);
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            *calls += 1;
            let body: Value = self
                .http
                .get(format!(
                    "{}/v2/images?tag_name={owner}&per_page=200&page={page}",
                    self.url
                ))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            let images = body["images"].as_array().cloned().unwrap_or_default();
            out.extend(images.iter().map(|i| {
                (
                    i["created_at"].as_str().unwrap_or_default().to_owned(),
                    i["id"].to_string(),
                )
            }));
            if body["links"]["pages"]["next"].is_null() || images.is_empty() {
                break;
            }
            page += 1;
        }
        Ok(out)
    }

    /// The script: list by tag, sort newest first, delete all but three.
    async fn baseline(&self) -> anyhow::Result<(u64, f64)> {
        let started = Instant::now();
        let mut calls = 0;
        let mut images = self.list(&mut calls).await?;
        images.sort_by(|a, b| b.cmp(a));
        for (_, id) in images.iter().skip(KEEP) {
            calls += 1;
            let r = self
                .http
                .delete(format!("{}/v2/images/{id}", self.url))
                .bearer_auth(&self.token)
                .send()
                .await?;
            anyhow::ensure!(r.status() == 204, "delete: {}", r.status());
        }
        Ok((calls, started.elapsed().as_secs_f64()))
    }

    async fn remaining(&self) -> anyhow::Result<usize> {
        Ok(self.list(&mut 0).await?.len())
    }
}

async fn standin() -> anyhow::Result<(Service, Api)> {
    let svc = Service::digitalocean().await?;
    let api = Api {
        http: reqwest::Client::new(),
        url: svc.get("/api_url").to_owned(),
        token: svc.get("/token").to_owned(),
        control: svc.get("/control_url").to_owned(),
    };
    Ok((svc, api))
}

async fn digitalocean(count: usize, concurrency: Option<usize>) -> anyhow::Result<()> {
    // Each side on a fresh stand-in, as on a fresh Glance.
    let base = {
        let (_svc, api) = standin().await?;
        eprintln!("digitalocean: seeding {count} snapshots");
        api.seed(count, 0).await?;
        let (calls, seconds) = api.baseline().await?;
        Run {
            calls,
            seconds,
            remaining: api.remaining().await?,
        }
    };
    let ours = {
        let (_svc, api) = standin().await?;
        api.seed(count, 0).await?;
        let mut provider = DigitalOcean::new(&api.url, api.token.clone());
        if std::env::var("BENCH_PACING").as_deref() != Ok("digitalocean") {
            provider = provider.with_pacing(Pacing::UNLIMITED);
        }
        let provider = Arc::new(provider);
        let counter = provider.clone();
        let (calls, seconds) = kiln_prune(
            provider.clone(),
            move || counter.api_calls(),
            &["nyc3".to_owned()],
            concurrency,
        )
        .await?;
        Run {
            calls,
            seconds,
            remaining: api.remaining().await?,
        }
    };
    report("DigitalOcean stand-in", count, &base, &ours);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiln::install_crypto_provider();
    let count: usize = env::<usize>("BENCH_IMAGES").unwrap_or(2_000).max(KEEP + 1);
    let concurrency: Option<usize> = env("BENCH_CONCURRENCY");
    let clouds =
        std::env::var("BENCH_CLOUDS").unwrap_or_else(|_| "openstack,digitalocean".to_owned());
    let started = Instant::now();
    for cloud in clouds.split(',').map(str::trim) {
        match cloud {
            "openstack" => openstack(count, concurrency).await?,
            "digitalocean" => digitalocean(count, concurrency).await?,
            other => anyhow::bail!("BENCH_CLOUDS: unknown cloud {other}"),
        }
    }
    eprintln!(
        "prune_clouds: done in {:.0?}",
        Duration::from_secs(started.elapsed().as_secs())
    );
    Ok(())
}
