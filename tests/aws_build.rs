//! ImageBuild end to end on AWS: a real control plane, moto as EC2, Debian's
//! packer, and `kiln controller` with the process executor.

mod support;

use std::time::Duration;

use kiln::{
    api::{BuildResult, ImageBuild},
    provider::aws::tags,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::*;

const NS: &str = "images";
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn amazon_build_goes_ready_with_tagged_amis_in_both_regions() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("c1", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let regions = ["us-east-1", "eu-west-1"];
    api.create(
        &PostParams::default(),
        &image_build(
            "app",
            env.moto.endpoint(),
            &regions,
            json!({"flavor": "one"}),
        ),
    )
    .await
    .expect("create");

    // First build: Ready, an AMI per region, kiln's tags on AMIs and snapshots.
    let ib = wait_for(&api, "app", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let status = ib.status.clone().expect("status");
    let latest = status.latest_image.clone().expect("latestImage");
    let mut got_regions: Vec<&str> = latest.artifacts.iter().map(|a| a.region.as_str()).collect();
    got_regions.sort();
    assert_eq!(got_regions, vec!["eu-west-1", "us-east-1"]);
    assert!(status.current_build.is_none());
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.observed_generation, ib.metadata.generation);
    assert!(
        latest.version.len() == "2026-11-22-1100".len(),
        "version is YYYY-MM-DD-HHMM: {}",
        latest.version
    );
    let aws = env.ec2();
    for a in &latest.artifacts {
        let image = &ami(&aws, &a.region, &a.image_id).await;
        assert_eq!(tag(image, tags::MANAGED_BY), Some("kiln"));
        assert_eq!(tag(image, tags::NAMESPACE), Some(NS));
        assert_eq!(tag(image, tags::IMAGE_BUILD), Some("app"));
        assert_eq!(tag(image, tags::BUILD_ID), Some(latest.build_id.as_str()));
        assert_eq!(tag(image, tags::SPEC_HASH), Some(latest.spec_hash.as_str()));
        let snapshots: Vec<String> = image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
            .collect();
        assert!(!snapshots.is_empty(), "AMI {} has snapshots", a.image_id);
        let snaps = aws
            .client(&a.region)
            .await
            .describe_snapshots()
            .set_snapshot_ids(Some(snapshots))
            .send()
            .await
            .expect("snapshots");
        for s in snaps.snapshots() {
            assert!(
                s.tags().iter().any(|t| t.key() == Some(tags::BUILD_ID)
                    && t.value() == Some(latest.build_id.as_str())),
                "snapshot {:?} carries the build id",
                s.snapshot_id()
            );
        }
    }
    let first = latest.clone();

    // A changed variable builds a second AMI and moves latestImage.
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"variables": {"flavor": "two"}}})),
    )
    .await
    .expect("patch");
    let ib = wait_for(&api, "app", BUILD_TIMEOUT, &controller.log, |ib| {
        is_ready(ib)
            && ib
                .status
                .as_ref()
                .and_then(|s| s.latest_image.as_ref())
                .is_some_and(|l| l.build_id != first.build_id)
    })
    .await;
    let second = ib
        .status
        .clone()
        .and_then(|s| s.latest_image)
        .expect("latest");
    assert_ne!(second.spec_hash, first.spec_hash);
    for region in regions {
        let ids: Vec<String> = amis(&aws, region)
            .await
            .iter()
            .filter_map(|i| i.image_id().map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 2, "two AMIs in {region}: {ids:?}");
    }
    assert_eq!(ib.status.as_ref().map(|s| s.history.len()), Some(2));

    // Restarting the controller with nothing changed builds nothing.
    let exit = controller.stop().await;
    assert!(
        exit.success(),
        "controller exits cleanly on SIGTERM: {exit}"
    );
    let controller = env
        .controller("c2", &["--default-executor", "process"])
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let ib = api.get("app").await.expect("get");
    assert!(is_ready(&ib));
    assert_eq!(
        ib.status
            .as_ref()
            .and_then(|s| s.latest_image.as_ref())
            .map(|l| l.build_id.clone()),
        Some(second.build_id.clone())
    );
    for region in regions {
        assert_eq!(
            amis(&aws, region).await.len(),
            2,
            "no new AMI in {region} after a restart"
        );
    }
    assert!(
        !controller.log_text().contains("build started"),
        "restarted controller started nothing:\n{}",
        controller.log_text()
    );

    // requestedAt forces exactly one rebuild per new value, mirrored to status.
    let ib = rebuild(
        &api,
        "app",
        "2026-11-22T11:00:00Z",
        BUILD_TIMEOUT,
        &controller.log,
    )
    .await;
    let third = ib
        .status
        .clone()
        .and_then(|s| s.latest_image)
        .expect("latest");
    assert_ne!(third.build_id, second.build_id, "a new build");
    assert_eq!(
        third.spec_hash, second.spec_hash,
        "a forced rebuild builds the same spec"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        amis(&aws, "us-east-1").await.len(),
        3,
        "one rebuild per requestedAt value"
    );

    let metrics = controller.metrics_text().await;
    assert!(
        metrics.contains("kiln_builds_succeeded_total{executor=\"process\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_build_duration_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_reconciles_total"), "{metrics}");
    controller.stop().await;
}

#[tokio::test]
async fn a_process_build_stopped_by_a_restart_is_cleaned_up_and_built_again() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("c1", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let ib = image_build(
        "slow",
        env.moto.endpoint(),
        &["us-east-1"],
        json!({"pause": "6"}),
    );
    api.create(&PostParams::default(), &ib)
        .await
        .expect("create");
    let ib = wait_for(
        &api,
        "slow",
        Duration::from_secs(30),
        &controller.log,
        is_building,
    )
    .await;
    let first = ib
        .status
        .and_then(|s| s.current_build)
        .expect("currentBuild");
    assert_eq!(first.attempt, 1);

    // The controller is stopped mid-build, once Packer has made its key
    // pair, security group and instance and provisions: its runner forwards
    // SIGTERM to Packer, which cancels and cleans up before the controller
    // exits.
    wait_log(&controller, "Running local shell script", BUILD_TIMEOUT).await;
    controller.stop().await;
    let controller = env
        .controller("c2", &["--default-executor", "process"])
        .await;
    let ib = wait_for(&api, "slow", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let status = ib.status.expect("status");
    let interrupted = status
        .history
        .iter()
        .find(|h| h.build_id == first.build_id && h.result != BuildResult::Succeeded)
        .expect("the interrupted run is recorded");
    assert_eq!(
        interrupted.result,
        BuildResult::Interrupted,
        "{interrupted:?}"
    );
    assert!(
        interrupted
            .message
            .as_deref()
            .is_some_and(|m| m.contains("packer cancelled the build and cleaned up")),
        "{interrupted:?}"
    );
    assert_eq!(status.last_failure, None, "a restart is no failed attempt");
    let latest = status.latest_image.expect("latestImage");
    assert_eq!(
        latest.build_id, first.build_id,
        "the same build (attempt 1) ran again"
    );
    assert_eq!(
        amis(&env.ec2(), "us-east-1").await.len(),
        1,
        "exactly one AMI: the interrupted run made none"
    );
    assert_eq!(
        leftovers(&env.ec2(), "us-east-1").await,
        Vec::<String>::new(),
        "Packer cleaned up after the interrupted run"
    );
    controller.stop().await;
}

#[tokio::test]
async fn an_image_build_deleted_mid_build_leaves_nothing_behind() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("c", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let ib = image_build(
        "doomed",
        env.moto.endpoint(),
        &["us-east-1"],
        json!({"pause": "60"}),
    );
    api.create(&PostParams::default(), &ib)
        .await
        .expect("create");
    wait_log(&controller, "Running local shell script", BUILD_TIMEOUT).await;
    let running = api.get("doomed").await.expect("get");
    assert!(
        running
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kiln.dev/build"),
        "a running build holds the finalizer: {:?}",
        running.metadata.finalizers
    );

    api.delete("doomed", &Default::default())
        .await
        .expect("delete");
    let deadline = std::time::Instant::now() + BUILD_TIMEOUT;
    while api.get_opt("doomed").await.expect("get").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ImageBuild is still there:\n{}",
            controller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        leftovers(&env.ec2(), "us-east-1").await,
        Vec::<String>::new(),
        "Packer cleaned up the deleted ImageBuild's build"
    );
    assert!(amis(&env.ec2(), "us-east-1").await.is_empty());
    assert!(
        controller
            .log_text()
            .contains("ImageBuild deleted; stopping its build"),
        "{}",
        controller.log_text()
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_build_past_its_timeout_is_stopped_and_counted_as_failed() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("c", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let mut ib = image_build(
        "stuck",
        env.moto.endpoint(),
        &["us-east-1"],
        json!({"pause": "600"}),
    );
    ib.spec.timeout = Some("1m".parse().expect("duration"));
    ib.spec.retry.as_mut().expect("retry").limit = 0;
    api.create(&PostParams::default(), &ib)
        .await
        .expect("create");
    let ib = wait_for(
        &api,
        "stuck",
        Duration::from_secs(150),
        &controller.log,
        is_stalled,
    )
    .await;
    let status = ib.status.expect("status");
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].result, BuildResult::Failed);
    assert!(
        status.history[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("timeout")),
        "{:?}",
        status.history[0]
    );
    let ran = status.history[0]
        .finished_at
        .0
        .duration_since(status.history[0].started_at.0)
        .as_secs();
    assert!(
        (60..120).contains(&ran),
        "stopped at the timeout, after {ran}s"
    );
    assert!(
        amis(&env.ec2(), "us-east-1").await.is_empty(),
        "the stopped build made no AMI"
    );
    // Stopping at the timeout lets Packer clean up (SIGTERM, then grace).
    wait_no_leftovers(&env, &["us-east-1"], Duration::from_secs(120)).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_schedule_rebuilds_without_any_change() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("schedule", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let mut ib = image_build(
        "nightly",
        env.moto.endpoint(),
        &["us-east-1"],
        json!({"flavor": "nightly"}),
    );
    // Every minute, so the test sees a scheduled time pass.
    ib.spec.schedule = Some("* * * * *".into());
    api.create(&PostParams::default(), &ib)
        .await
        .expect("create");
    let first = wait_for(&api, "nightly", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let first = first
        .status
        .and_then(|s| s.latest_image)
        .expect("latestImage");

    // No edit, no annotation: the next minute brings a new image.
    let rebuilt = wait_for(&api, "nightly", BUILD_TIMEOUT, &controller.log, |ib| {
        is_ready(ib)
            && ib
                .status
                .as_ref()
                .and_then(|s| s.latest_image.as_ref())
                .is_some_and(|l| l.build_key != first.build_key)
    })
    .await;
    let status = rebuilt.status.expect("status");
    let latest = status.latest_image.expect("latestImage");
    assert_eq!(latest.spec_hash, first.spec_hash, "same inputs");
    assert_ne!(latest.artifacts[0].image_id, first.artifacts[0].image_id);
    assert!(status.history.len() >= 2);
    assert_eq!(
        rebuilt.metadata.generation,
        Some(1),
        "the object was not edited"
    );
    // The controller says why it built (the Events API folds repeated
    // BuildStarted Events into one series, keeping the first note).
    let log = controller.log_text();
    assert!(
        log.lines().any(|l| l.contains("build started")
            && l.contains("scheduled_for")
            && l.contains("Some(")),
        "{log}"
    );
    controller.stop().await;
}
