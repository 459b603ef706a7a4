//! Benchmark (not a test): prune owned AMIs to keepLast 3 in moto, at a
//! cloud's latency and at none.
//!
//! Seeds the AMIs directly into moto (CreateImage from one instance, tagged in
//! batches), then measures two ways to prune them, each on a fresh moto:
//! - baseline: what a hand-written script does; list, then deregister and
//!   delete snapshots one image at a time, one region after another;
//! - kiln: the retention planner and the ImagePolicy controller's executor
//!   (regions in parallel, a bounded number of calls in flight per region,
//!   backoff on throttling).
//!
//! moto answers on loopback in a few milliseconds, where doing calls at once
//! cannot help; EC2 answers in tens of milliseconds. So each side runs at
//! every latency of `BENCH_LATENCY_MS` (default `0,80`): above 0, every
//! request to moto goes through a proxy that delays it by that long.
//!
//! Prints, per latency, API calls and wall time for both, and their ratio.
//! Run with `make bench`. Settings (environment):
//! - `BENCH_IMAGES`: AMIs in all (default 2000), spread over
//! - `BENCH_REGIONS`: regions (default 1);
//! - `BENCH_LATENCY_MS`: latencies, comma-separated (default `0,80`);
//! - `BENCH_CONCURRENCY`: kiln's calls in flight per region (default: the
//!   provider's, as `kiln controller --prune-concurrency`);
//! - `BENCH_PACING=ec2`: pace kiln's calls to EC2's request limits, as
//!   against EC2 (moto documents none, so by default they are not paced).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aws_sdk_ec2::types::Tag;
use futures::{StreamExt, stream};
use kiln::{
    provider::{
        ImageProvider,
        aws::{self, Aws, tags},
    },
    retention::{self, Protection, Rules},
};
use kiln_testenv::Moto;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const NS: &str = "bench";
const BUILD: &str = "base";
const REGIONS: [&str; 4] = ["us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2"];
const KEEP: usize = 3;

/// A TCP proxy in front of moto (plain HTTP on loopback) that delivers each
/// chunk a client sends `latency` after it arrived, as a link with that
/// one-way delay would (chunks in flight overlap: the delay is not
/// added once per chunk in a row); answers come back as they are.
struct LatencyProxy {
    endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl LatencyProxy {
    async fn start(upstream: &str, latency: Duration) -> anyhow::Result<LatencyProxy> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let (chunks, mut delayed) =
                        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
                    let read = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = client_read.read(&mut buf).await {
                            let due = tokio::time::Instant::now() + latency;
                            if n == 0 || chunks.send((due, buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    };
                    let write = async move {
                        while let Some((due, chunk)) = delayed.recv().await {
                            tokio::time::sleep_until(due).await;
                            if server_write.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let back = async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(read, write, back);
                });
            }
        });
        Ok(LatencyProxy { endpoint, task })
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fresh moto with `count` owned AMIs spread over `regions`, and the
/// endpoint to prune them through (moto's, or a proxy's delaying requests
/// by `latency`).
struct Cloud {
    moto: Moto,
    proxy: Option<LatencyProxy>,
}

impl Cloud {
    async fn start(regions: &[&str], count: usize, latency: Duration) -> anyhow::Result<Cloud> {
        let moto = Moto::start().await?;
        let started = Instant::now();
        for (n, region) in regions.iter().enumerate() {
            let share = count / regions.len() + usize::from(n < count % regions.len());
            seed(&moto, region, share).await?;
        }
        eprintln!(
            "  seeded {count} owned AMIs in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let proxy = match latency.is_zero() {
            true => None,
            false => Some(LatencyProxy::start(moto.endpoint(), latency).await?),
        };
        Ok(Cloud { moto, proxy })
    }

    fn endpoint(&self) -> &str {
        self.proxy
            .as_ref()
            .map_or(self.moto.endpoint(), |p| &p.endpoint)
    }

    /// Owned AMIs left, asked of moto directly.
    async fn remaining(&self, regions: &[&str]) -> anyhow::Result<usize> {
        let aws = Aws::for_emulator(self.moto.endpoint());
        let mut left = 0;
        for region in regions {
            left += aws.list_region(region, NS, BUILD).await?.len();
        }
        Ok(left)
    }
}

async fn seed(moto: &Moto, region: &str, count: usize) -> anyhow::Result<()> {
    let client = Aws::for_emulator(moto.endpoint()).client(region).await;
    let run = client
        .run_instances()
        .image_id("ami-1e749f67")
        .min_count(1)
        .max_count(1)
        .send()
        .await?;
    let instance = run.instances()[0]
        .instance_id()
        .unwrap_or_default()
        .to_owned();
    let ids: Vec<String> = stream::iter(0..count)
        .map(|n| {
            let client = client.clone();
            let instance = instance.clone();
            async move {
                let out = client
                    .create_image()
                    .instance_id(instance)
                    .name(format!("{BUILD}-{n:05}"))
                    .send()
                    .await?;
                anyhow::Ok(out.image_id().unwrap_or_default().to_owned())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    for (n, chunk) in ids.chunks(500).enumerate() {
        let tags = vec![
            Tag::builder().key(tags::MANAGED_BY).value("kiln").build(),
            Tag::builder().key(tags::NAMESPACE).value(NS).build(),
            Tag::builder().key(tags::IMAGE_BUILD).value(BUILD).build(),
            Tag::builder()
                .key(tags::BUILD_ID)
                .value(format!("seed-{n}"))
                .build(),
        ];
        client
            .create_tags()
            .set_resources(Some(chunk.to_vec()))
            .set_tags(Some(tags))
            .send()
            .await?;
    }
    Ok(())
}

struct Run {
    calls: u64,
    seconds: f64,
    remaining: usize,
}

/// The script users run today: per region, list everything, delete all but
/// the newest three, one at a time.
async fn baseline(cloud: &Cloud, regions: &[&str]) -> anyhow::Result<Run> {
    let aws = Aws::for_emulator(cloud.endpoint());
    let started = Instant::now();
    let mut calls = 0u64;
    for region in regions {
        let client = aws.client(region).await;
        let mut images = Vec::new();
        let mut token = None;
        loop {
            calls += 1;
            let page = client
                .describe_images()
                .owners("self")
                .filters(aws::tag_filter(tags::IMAGE_BUILD, BUILD))
                .set_next_token(token)
                .send()
                .await?;
            images.extend(page.images().to_vec());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        images.sort_by(|a, b| {
            b.creation_date()
                .cmp(&a.creation_date())
                .then_with(|| a.image_id().cmp(&b.image_id()))
        });
        for image in images.iter().skip(KEEP) {
            calls += 1;
            client
                .deregister_image()
                .image_id(image.image_id().unwrap_or_default())
                .send()
                .await?;
            for m in image.block_device_mappings() {
                if let Some(snapshot) = m.ebs().and_then(|e| e.snapshot_id()) {
                    calls += 1;
                    client
                        .delete_snapshot()
                        .snapshot_id(snapshot)
                        .send()
                        .await?;
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Run {
        calls,
        seconds,
        remaining: cloud.remaining(regions).await?,
    })
}

/// kiln: list through the provider, plan, carry out (regions in parallel,
/// each with its own calls in flight and pacing).
async fn kiln_prune(
    cloud: &Cloud,
    regions: &[&str],
    ec2_pacing: bool,
    concurrency: Option<usize>,
) -> anyhow::Result<Run> {
    let mut aws = Aws::for_emulator(cloud.endpoint());
    if ec2_pacing {
        aws = aws.with_pacing(aws::EC2_MUTATING, aws::EC2_NON_MUTATING);
    }
    let aws = Arc::new(aws);
    let regions: Vec<String> = regions.iter().map(|r| (*r).to_owned()).collect();
    let started = Instant::now();
    let images = aws.list_owned(&regions, NS, BUILD).await?;
    let now = jiff::Timestamp::now();
    let rules = Rules {
        keep_last: KEEP,
        ..Default::default()
    };
    let verdicts = retention::plan(NS, BUILD, &images, &rules, &Protection::default(), now)?;
    let plan = retention::BuildPlan {
        build: BUILD.to_owned(),
        regions: regions.clone(),
        provider: aws.clone() as Arc<dyn ImageProvider>,
        verdicts,
    };
    let results = retention::carry_out(&plan, concurrency, now).await;
    let failed = results
        .iter()
        .filter(|o| matches!(o.applied, retention::Applied::Failed(_)))
        .count();
    anyhow::ensure!(failed == 0, "{failed} deletions failed");
    let seconds = started.elapsed().as_secs_f64();
    let regions: Vec<&str> = regions.iter().map(String::as_str).collect();
    Ok(Run {
        calls: aws.api_calls(),
        seconds,
        remaining: cloud.remaining(&regions).await?,
    })
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiln::install_crypto_provider();
    let count: usize = env("BENCH_IMAGES").unwrap_or(2_000);
    let region_count = env::<usize>("BENCH_REGIONS")
        .unwrap_or(1)
        .clamp(1, REGIONS.len());
    let regions = &REGIONS[..region_count];
    let latencies: Vec<u64> = match std::env::var("BENCH_LATENCY_MS") {
        Ok(list) => list
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("BENCH_LATENCY_MS={list}: {e}"))?,
        Err(_) => vec![0, 80],
    };
    let concurrency: Option<usize> = env("BENCH_CONCURRENCY");
    let ec2_pacing = std::env::var("BENCH_PACING").is_ok_and(|p| p == "ec2");
    let kiln_pacing = if ec2_pacing {
        aws::EC2_MUTATING
    } else {
        Aws::for_emulator("http://unused").pacing()
    };
    println!(
        "prune benchmark: {count} owned AMIs in moto ({} region(s): {}), keepLast {KEEP} per region",
        regions.len(),
        regions.join(", ")
    );
    println!(
        "kiln: {} calls in flight per region, {}",
        concurrency.unwrap_or(kiln_pacing.concurrency),
        match kiln_pacing.is_limited() {
            true => format!(
                "each API paced to {}/s after a burst of {} (EC2's limits, BENCH_PACING=ec2)",
                kiln_pacing.requests_per_second, kiln_pacing.burst
            ),
            false => "not paced (moto documents no request limits)".to_owned(),
        }
    );

    let mut results = Vec::new();
    for &ms in &latencies {
        let latency = Duration::from_millis(ms);
        eprintln!("{ms} ms: baseline (sequential script):");
        let cloud = Cloud::start(regions, count, latency).await?;
        let base = baseline(&cloud, regions).await?;
        drop(cloud);
        eprintln!("  {} calls in {:.1}s", base.calls, base.seconds);

        eprintln!("{ms} ms: kiln (planner + ImagePolicy executor):");
        let cloud = Cloud::start(regions, count, latency).await?;
        let ours = kiln_prune(&cloud, regions, ec2_pacing, concurrency).await?;
        drop(cloud);
        eprintln!("  {} calls in {:.1}s", ours.calls, ours.seconds);

        let kept = KEEP * regions.len();
        anyhow::ensure!(
            base.remaining == kept && ours.remaining == kept,
            "both must leave exactly {kept} AMIs ({} / {})",
            base.remaining,
            ours.remaining
        );
        report(ms, &base, &ours);
        results.push((ms, base, ours));
    }
    if results.len() > 1 {
        println!();
        println!("summary (kiln/baseline):");
        for (ms, base, ours) in &results {
            println!(
                "  {ms:>4} ms: {:.2}x the API calls, {:.2}x the wall time ({:.2}x faster)",
                ours.calls as f64 / base.calls as f64,
                ours.seconds / base.seconds,
                base.seconds / ours.seconds
            );
        }
    }
    Ok(())
}

fn report(ms: u64, base: &Run, ours: &Run) {
    println!();
    println!("latency {ms} ms per request:");
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
