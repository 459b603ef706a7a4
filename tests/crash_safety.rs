//! Faults at any moment of a build lose no image, build none twice and leave
//! no cloud resource behind: a controller SIGKILLed again and again, and a
//! 409 Conflict on the status write that records a finished build.

mod support;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use kiln::api::ImageBuild;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::*;

const NS: &str = "crash";
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const SETTLE: Duration = Duration::from_secs(300);

/// Every AMI in moto, in both regions.
async fn all_amis(env: &Env) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for region in REGIONS {
        out.extend(
            amis(&env.ec2(), region)
                .await
                .iter()
                .filter_map(|i| i.image_id().map(str::to_owned)),
        );
    }
    out
}

/// Every AMI some ImageBuild records: its latest image and its history.
fn recorded(builds: &[ImageBuild]) -> BTreeSet<String> {
    builds
        .iter()
        .filter_map(|b| b.status.as_ref())
        .flat_map(|s| {
            let latest = s.latest_image.iter().flat_map(|l| l.artifacts.iter());
            let history = s.history.iter().flat_map(|h| h.artifacts.iter());
            latest.chain(history).map(|a| a.image_id.clone())
        })
        .collect()
}

#[tokio::test]
async fn repeated_sigkills_during_builds_lose_no_image_and_leak_nothing() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let mut controller = env
        .controller("c0", &["--default-executor", "process"])
        .await;
    let names = ["a", "b", "c"];
    for (n, name) in names.iter().enumerate() {
        let pause = (3 + 2 * n).to_string();
        api.create(
            &PostParams::default(),
            &image_build(name, env.moto.endpoint(), &REGIONS, json!({"pause": pause})),
        )
        .await
        .expect("create");
    }

    // SIGKILL the controller every few seconds while builds run, at moments
    // that fall in every phase: starting, provisioning, creating and copying
    // the AMI, recording it.
    let mut kills = 0;
    let mut phase = 0u64;
    while kills < 8 {
        tokio::time::sleep(Duration::from_millis(2_500 + 700 * (phase % 4))).await;
        phase += 1;
        let all = api.list(&Default::default()).await.expect("list").items;
        if all.iter().all(is_ready) && kills >= 4 {
            break;
        }
        controller.signal(libc::SIGKILL);
        let _ = controller.stop_killed().await;
        kills += 1;
        controller = env
            .controller(&format!("c{kills}"), &["--default-executor", "process"])
            .await;
    }
    println!("killed the controller {kills} times during builds");

    // Settled: every ImageBuild Ready.
    let deadline = Instant::now() + SETTLE;
    let builds = loop {
        let all = api.list(&Default::default()).await.expect("list").items;
        if all.iter().all(is_ready) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {:#?}\n{}",
            all.iter().map(|b| &b.status).collect::<Vec<_>>(),
            controller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Every AMI in the cloud is in some status: none built and lost.
    let in_cloud = all_amis(&env).await;
    let known = recorded(&builds);
    let lost: Vec<&String> = in_cloud.difference(&known).collect();
    if !lost.is_empty() {
        for region in REGIONS {
            for image in amis(&env.ec2(), region).await {
                if image
                    .image_id()
                    .is_some_and(|id| lost.iter().any(|l| *l == id))
                {
                    println!("lost in {region}: {image:?}");
                }
            }
        }
        for b in &builds {
            println!("{:?}: {:#?}", b.metadata.name, b.status);
        }
        // What Packer said in every run: which step each kill interrupted.
        let builds_dir = env.dir.path().join("builds");
        for entry in std::fs::read_dir(&builds_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let out = std::fs::read_to_string(entry.path().join("packer.out")).unwrap_or_default();
            let said: Vec<&str> = out.lines().filter(|l| l.contains(",ui,")).collect();
            println!("{}:\n{}", entry.path().display(), said.join("\n"));
        }
    }
    assert!(lost.is_empty(), "AMIs no status records: {lost:?}");
    // One image per build and region: nothing built twice.
    for b in &builds {
        let status = b.status.as_ref().expect("status");
        assert!(
            status.last_failure.is_none(),
            "{}: a kill counted as a failure: {:?}",
            b.metadata.name.as_deref().unwrap_or_default(),
            status.last_failure
        );
    }
    assert_eq!(in_cloud.len(), names.len() * REGIONS.len(), "{in_cloud:?}");
    // Packer cleaned up after every interrupted run, in every region.
    wait_no_leftovers(&env, &REGIONS, Duration::from_secs(120)).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_conflict_on_the_status_write_after_a_build_records_it_once() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("c", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    api.create(
        &PostParams::default(),
        &image_build("busy", env.moto.endpoint(), &REGIONS, json!({"pause": "2"})),
    )
    .await
    .expect("create");

    // Someone edits a label every 20 ms while kiln records the build: its
    // status write, conditional on the object it read, meets 409s.
    let deadline = Instant::now() + SETTLE;
    let mut n = 0u64;
    loop {
        n += 1;
        let patch = json!({"metadata": {"labels": {"touched": n.to_string()}}});
        let _ = api
            .patch("busy", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let ib = api.get("busy").await.expect("get");
        let conflicts = controller
            .metrics_text()
            .await
            .lines()
            .any(|l| l.starts_with("kiln_reconcile_errors_total{kind=\"conflict\"}"));
        if is_ready(&ib) && conflicts {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no conflict or not Ready: {:?}\n{}",
            ib.status,
            controller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ib = api.get("busy").await.expect("get");
    let status = ib.status.expect("status");
    let successes = status
        .history
        .iter()
        .filter(|h| h.result == kiln::api::BuildResult::Succeeded)
        .count();
    assert_eq!(successes, 1, "{:?}", status.history);
    assert_eq!(
        all_amis(&env).await.len(),
        REGIONS.len(),
        "one AMI per region: the build ran once"
    );
    controller.stop().await;
}
