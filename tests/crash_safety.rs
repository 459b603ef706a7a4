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
    all_amis_of(&env.ec2()).await
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
    // What the sweep removed after interrupted runs, as their history says.
    for b in &builds {
        for h in &b.status.as_ref().expect("status").history {
            if let Some(m) = h.message.as_deref().filter(|m| m.contains("kiln removed")) {
                println!("{}: {m}", h.build_id);
            }
        }
    }
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
            let out = std::fs::read_to_string(entry.path().join("packer").join("packer.out"))
                .unwrap_or_default();
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

/// The sweep by build removes exactly what a run announced and left: its
/// instance, key pair and security group, and untagged images of the
/// announced name made since the run began; never an owned image, an older
/// one, or one of another name.
#[tokio::test]
async fn the_sweep_removes_what_a_run_announced_and_nothing_else() {
    use kiln::provider::ImageProvider as _;
    use kiln_core::image_build::run::Created;

    let moto = kiln_testenv::Moto::start()
        .await
        .unwrap_or_else(|e| panic!("moto: {e}"));
    let aws = kiln::provider::aws::Aws::for_emulator(moto.endpoint());
    let regions: Vec<String> = REGIONS.iter().map(|r| (*r).to_owned()).collect();
    // What Packer would leave after a cancellation past the AMI copy.
    let left_copy = make_ami(&aws, "eu-west-1", "app-run-1", &[]).await;
    let owned = make_ami(
        &aws,
        "us-east-1",
        "app-run-1",
        &[
            ("kiln.dev/managed-by", "kiln"),
            ("kiln.dev/namespace", NS),
            ("kiln.dev/image-build", "a"),
            ("kiln.dev/build-id", "other-1"),
        ],
    )
    .await;
    let foreign = make_ami(&aws, "eu-west-1", "someone-else", &[]).await;
    let ec2 = aws.client("us-east-1").await;
    ec2.create_key_pair()
        .key_name("packer_run1")
        .send()
        .await
        .expect("CreateKeyPair");
    ec2.create_security_group()
        .group_name("packer_run1")
        .description("Temporary group for Packer")
        .send()
        .await
        .expect("CreateSecurityGroup");
    let instance = ec2
        .run_instances()
        .image_id("ami-1e749f67")
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("RunInstances")
        .instances()[0]
        .instance_id()
        .expect("instance")
        .to_owned();
    let mut created = Created {
        since: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)),
        images: vec!["app-run-1".into()],
        instances: vec![instance.clone()],
        key_pairs: vec!["packer_run1".into()],
        security_groups: vec!["packer_run1".into()],
    };

    // Images made before the run began are not the run's.
    let removed = aws.reclaim(&regions, &created).await.expect("reclaim");
    assert!(!removed.iter().any(|r| r.contains("image")), "{removed:?}");
    assert!(all_amis_of(&aws).await.contains(&left_copy));

    created.since = Some(jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10));
    let removed = aws.reclaim(&regions, &created).await.expect("reclaim");
    println!("removed: {removed:?}");
    let amis = all_amis_of(&aws).await;
    assert!(
        !amis.contains(&left_copy),
        "the left copy stays: {removed:?}"
    );
    assert!(amis.contains(&owned), "an owned image went");
    assert!(amis.contains(&foreign), "another name's image went");
    let left = leftovers(&aws, "us-east-1").await;
    assert!(
        !left.iter().any(|l| l.contains("packer_run1")),
        "left: {left:?}"
    );
    let state = ec2
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()[0]
        .instances()[0]
        .state()
        .and_then(|s| s.name().cloned());
    assert!(
        matches!(
            state,
            Some(
                aws_sdk_ec2::types::InstanceStateName::Terminated
                    | aws_sdk_ec2::types::InstanceStateName::ShuttingDown
            )
        ),
        "{state:?}"
    );
    // Sweeping again finds nothing more: a crash mid-sweep is harmless.
    let again = aws.reclaim(&regions, &created).await.expect("reclaim");
    assert!(again.is_empty(), "{again:?}");
}

async fn all_amis_of(aws: &kiln::provider::aws::Aws) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for region in REGIONS {
        out.extend(
            amis(aws, region)
                .await
                .iter()
                .filter_map(|i| i.image_id().map(str::to_owned)),
        );
    }
    out
}
