//! Benchmark (not a test): prune 10,000 owned AMIs to keepLast 3 in moto.
//!
//! Seeds the AMIs directly into moto (CreateImage from one instance, tagged in
//! batches), then measures two ways to prune them, each on a fresh moto:
//! - baseline: what a hand-written script does; list, then deregister and
//!   delete snapshots one image at a time;
//! - kiln: the retention planner and the ImagePolicy controller's executor
//!   (bounded concurrency, backoff on throttling).
//!
//! Prints API calls and wall time for both, and their ratio. Run with
//! `make bench` (`BENCH_IMAGES` changes the count).

use std::{sync::Arc, time::Instant};

use aws_sdk_ec2::types::Tag;
use futures::{StreamExt, stream};
use kiln::{
    provider::{ImageProvider, aws::Aws, tags},
    retention::{self, Protection, Rules},
};
use kiln_testenv::Moto;

const NS: &str = "bench";
const BUILD: &str = "base";
const REGION: &str = "us-east-1";
const KEEP: usize = 3;

async fn seed(moto: &Moto, count: usize) -> anyhow::Result<()> {
    let client = Aws::for_emulator(moto.endpoint()).client(REGION).await;
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
    let started = Instant::now();
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
    eprintln!(
        "  seeded {count} owned AMIs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Run {
    calls: u64,
    seconds: f64,
    remaining: usize,
}

/// The script users run today: list everything, delete all but the newest
/// three, one at a time.
async fn baseline(moto: &Moto) -> anyhow::Result<Run> {
    let aws = Aws::for_emulator(moto.endpoint());
    let client = aws.client(REGION).await;
    let started = Instant::now();
    let mut calls = 0u64;
    let mut images = Vec::new();
    let mut token = None;
    loop {
        calls += 1;
        let page = client
            .describe_images()
            .owners("self")
            .filters(kiln::provider::aws::tag_filter(tags::IMAGE_BUILD, BUILD))
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
    let seconds = started.elapsed().as_secs_f64();
    let remaining = aws.list_region(REGION, NS, BUILD).await?.len();
    Ok(Run {
        calls,
        seconds,
        remaining,
    })
}

/// kiln: list through the provider, plan, carry out with bounded concurrency.
async fn kiln_prune(moto: &Moto) -> anyhow::Result<Run> {
    let aws = Arc::new(Aws::for_emulator(moto.endpoint()));
    let started = Instant::now();
    let images = aws.list_owned(&[REGION.to_owned()], NS, BUILD).await?;
    let now = jiff::Timestamp::now();
    let rules = Rules {
        keep_last: KEEP,
        ..Default::default()
    };
    let verdicts = retention::plan(NS, BUILD, &images, &rules, &Protection::default(), now)?;
    let plan = retention::BuildPlan {
        build: BUILD.to_owned(),
        regions: vec![REGION.to_owned()],
        provider: aws.clone() as Arc<dyn ImageProvider>,
        verdicts,
    };
    let results = retention::carry_out(&plan, now).await;
    let failed = results
        .iter()
        .filter(|o| matches!(o.applied, retention::Applied::Failed(_)))
        .count();
    anyhow::ensure!(failed == 0, "{failed} deletions failed");
    let seconds = started.elapsed().as_secs_f64();
    let calls = aws.api_calls();
    let remaining = aws.list_region(REGION, NS, BUILD).await?.len();
    Ok(Run {
        calls,
        seconds,
        remaining,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiln::install_crypto_provider();
    let count: usize = std::env::var("BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!("prune benchmark: {count} owned AMIs in moto, keepLast {KEEP}");

    eprintln!("baseline (sequential script):");
    let moto = Moto::start().await?;
    seed(&moto, count).await?;
    let base = baseline(&moto).await?;
    drop(moto);

    eprintln!("kiln (planner + ImagePolicy executor):");
    let moto = Moto::start().await?;
    seed(&moto, count).await?;
    let ours = kiln_prune(&moto).await?;
    drop(moto);

    anyhow::ensure!(
        base.remaining == KEEP && ours.remaining == KEEP,
        "both must leave exactly {KEEP} AMIs ({} / {})",
        base.remaining,
        ours.remaining
    );
    println!(
        "{:<10} {:>10} {:>12} {:>10}",
        "", "API calls", "wall time", "remaining"
    );
    println!(
        "{:<10} {:>10} {:>11.1}s {:>10}",
        "baseline", base.calls, base.seconds, base.remaining
    );
    println!(
        "{:<10} {:>10} {:>11.1}s {:>10}",
        "kiln", ours.calls, ours.seconds, ours.remaining
    );
    println!(
        "kiln/baseline: {:.2}x the API calls, {:.2}x the wall time ({:.2}x faster)",
        ours.calls as f64 / base.calls as f64,
        ours.seconds / base.seconds,
        base.seconds / ours.seconds
    );
    Ok(())
}
