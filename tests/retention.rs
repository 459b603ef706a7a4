//! ImagePolicy end to end: eight builds of one ImageBuild in two regions,
//! pruned to keepLast 3 in moto, with a pinned build, a hand-made AMI kiln
//! does not own, a dry run first, and maxAge that never takes the latest.

mod support;

use std::time::Duration;

use kiln::{
    api::{ImageBuild, ImagePolicy, RetentionAction},
    provider::aws::tags,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::*;

const NS: &str = "retention";
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

fn policy(name: &str, spec: serde_json::Value) -> ImagePolicy {
    serde_json::from_value(json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImagePolicy", "metadata": {"name": name}, "spec": spec}))
        .expect("ImagePolicy")
}

/// Waits until the policy's current generation is evaluated with `reason`.
async fn wait_policy(
    api: &Api<ImagePolicy>,
    name: &str,
    reason: &str,
    log: &std::path::Path,
) -> ImagePolicy {
    wait_for(api, name, Duration::from_secs(60), log, |p| {
        p.status.as_ref().is_some_and(|s| {
            s.observed_generation == p.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == reason)
        })
    })
    .await
}

/// An AMI ID with its snapshot IDs.
type AmiSnapshots = (String, Vec<String>);

/// AMIs of ImageBuild `retention/app` in a region, with their snapshots.
async fn owned(env: &Env, region: &str) -> Vec<AmiSnapshots> {
    let aws = env.ec2();
    let images = amis(&aws, region).await;
    images
        .iter()
        .filter(|i| tag(i, tags::IMAGE_BUILD) == Some("app") && tag(i, tags::NAMESPACE) == Some(NS))
        .map(|i| {
            let snaps = i
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
                .collect();
            (i.image_id().unwrap_or_default().to_owned(), snaps)
        })
        .collect()
}

async fn snapshot_exists(env: &Env, region: &str, id: &str) -> bool {
    let out = env
        .ec2()
        .client(region)
        .await
        .describe_snapshots()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("snapshot-id")
                .values(id)
                .build(),
        )
        .send()
        .await
        .expect("DescribeSnapshots");
    !out.snapshots().is_empty()
}

#[tokio::test]
async fn keep_last_three_prunes_the_oldest_owned_amis_and_their_snapshots() {
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("c", &["--default-executor", "process"])
        .await;
    let builds: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let policies: Api<ImagePolicy> = Api::namespaced(env.client.clone(), NS);

    // Eight builds, oldest first: (build id, region -> AMI).
    builds
        .create(
            &PostParams::default(),
            &image_build("app", env.moto.endpoint(), &REGIONS, json!({})),
        )
        .await
        .expect("create");
    let mut made: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for n in 0..8 {
        let ib = if n == 0 {
            wait_for(&builds, "app", BUILD_TIMEOUT, &controller.log, is_ready).await
        } else {
            let token = format!("rebuild-{n}");
            rebuild(&builds, "app", &token, BUILD_TIMEOUT, &controller.log).await
        };
        let latest = ib.status.and_then(|s| s.latest_image).expect("latest");
        made.push((
            latest.build_id,
            latest
                .artifacts
                .into_iter()
                .map(|a| (a.region, a.image_id))
                .collect(),
        ));
        // Distinct creation times (moto stores whole seconds).
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let built = |n: usize, region: &str| {
        made[n]
            .1
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, id)| id.clone())
            .expect("artifact")
    };

    // An AMI kiln does not own in each region: same name prefix and the same
    // ImageBuild name, but another namespace's.
    let mut handmade = Vec::new();
    for region in REGIONS {
        let owner = [
            (tags::IMAGE_BUILD, "app"),
            (tags::NAMESPACE, "someone-else"),
        ];
        let id = make_ami(&env.ec2(), region, "app-plain-handmade", &owner).await;
        handmade.push((region, id));
    }
    let snapshots_before: Vec<(String, Vec<AmiSnapshots>)> = {
        let mut v = Vec::new();
        for region in REGIONS {
            v.push((region.to_owned(), owned(&env, region).await));
        }
        v
    };
    for (region, images) in &snapshots_before {
        assert_eq!(images.len(), 8, "eight owned AMIs in {region}");
    }

    // Dry run: the plan, and nothing changes in moto.
    let pinned = made[1].0.clone();
    let spec = json!({"builds": {"names": ["app"]}, "keepLast": 3, "protect": {"buildIds": [pinned]}, "dryRun": true});
    policies
        .create(&PostParams::default(), &policy("keep-three", spec))
        .await
        .expect("policy");
    let p = wait_policy(&policies, "keep-three", "DryRun", &controller.log).await;
    let status = p.status.clone().expect("status");
    let mut planned: Vec<(String, String)> = status
        .plan
        .iter()
        .map(|d| (d.region.clone(), d.image_id.clone()))
        .collect();
    planned.sort();
    let mut expected: Vec<(String, String)> = REGIONS
        .iter()
        .flat_map(|r| [0, 2, 3, 4].map(|n| (r.to_string(), built(n, r))))
        .collect();
    expected.sort();
    assert_eq!(
        planned, expected,
        "the plan deletes exactly the four oldest unpinned AMIs per region"
    );
    assert!(
        status
            .plan
            .iter()
            .all(|d| d.action == RetentionAction::Delete && d.reason.contains("beyond keepLast 3"))
    );
    assert!(
        status
            .retained
            .iter()
            .any(|d| d.image_id == built(1, "us-east-1") && d.reason.contains("pinned"))
    );
    assert_eq!(
        status.summary.as_ref().map(|s| (s.planned, s.deleted)),
        Some((8, 0))
    );
    for region in REGIONS {
        assert_eq!(
            owned(&env, region).await.len(),
            8,
            "a dry run deletes nothing in {region}"
        );
    }

    // For real.
    policies
        .patch(
            "keep-three",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dryRun": false}})),
        )
        .await
        .expect("patch");
    let p = wait_policy(&policies, "keep-three", "Evaluated", &controller.log).await;
    let status = p.status.clone().expect("status");
    assert_eq!(status.summary.as_ref().map(|s| s.deleted), Some(8));
    assert!(status.plan.is_empty());
    for (region, before) in &snapshots_before {
        let mut remaining: Vec<String> = owned(&env, region)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        remaining.sort();
        let mut want: Vec<String> = [1, 5, 6, 7].map(|n| built(n, region)).to_vec();
        want.sort();
        assert_eq!(
            remaining, want,
            "{region}: the pinned AMI and the newest three remain"
        );
        assert!(
            before.iter().all(|(_, snaps)| !snaps.is_empty()),
            "every owned AMI in {region} has snapshots"
        );
        for (id, snaps) in before {
            let kept = want.contains(id);
            for s in snaps {
                assert_eq!(
                    snapshot_exists(&env, region, s).await,
                    kept,
                    "snapshot {s} of {id} in {region}"
                );
            }
        }
        // The AMI kiln does not own remains (a panic names it otherwise).
        let (_, foreign) = handmade
            .iter()
            .find(|(r, _)| r == region)
            .expect("handmade");
        ami(&env.ec2(), region, foreign).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), NS);
    let deletions = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ImageDeleted"))
        .count();
    assert_eq!(deletions, 8, "an Event per deletion");

    // Deleting the policy deletes no image.
    policies
        .delete("keep-three", &DeleteParams::default())
        .await
        .expect("delete policy");
    wait_list("deletion of the policy", || async {
        match policies.get_opt("keep-three").await {
            Ok(None) => vec![()],
            _ => vec![],
        }
    })
    .await;
    for region in REGIONS {
        assert_eq!(owned(&env, region).await.len(), 4);
    }

    // maxAge keeps superseded images younger than it...
    let spec = json!({"builds": {"names": ["app"]}, "keepLast": 1, "maxAge": "1h"});
    policies
        .create(&PostParams::default(), &policy("max-age", spec))
        .await
        .expect("policy");
    let p = wait_policy(&policies, "max-age", "Evaluated", &controller.log).await;
    for region in REGIONS {
        assert_eq!(
            owned(&env, region).await.len(),
            4,
            "{region}: maxAge 1h keeps them"
        );
    }
    let retained = p.status.map(|s| s.retained).unwrap_or_default();
    assert!(
        retained
            .iter()
            .any(|d| d.reason.contains("younger than maxAge")),
        "{retained:?}"
    );
    // ...and removes older ones, but never the latest, however old.
    policies
        .patch(
            "max-age",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxAge": "1s"}})),
        )
        .await
        .expect("patch");
    wait_policy(&policies, "max-age", "Evaluated", &controller.log).await;
    for region in REGIONS {
        let remaining: Vec<String> = owned(&env, region)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            remaining,
            vec![built(7, region)],
            "{region}: only the latest remains"
        );
    }

    // Staged deprecation: moto does not implement EnableImageDeprecation, which
    // is reported and is not fatal; the image stays.
    // (The maxAge policy goes first: it would prune the new build's predecessor
    // as soon as the new image is Ready.)
    policies
        .delete("max-age", &DeleteParams::default())
        .await
        .expect("delete policy");
    rebuild(&builds, "app", "one-more", BUILD_TIMEOUT, &controller.log).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let spec = json!({"builds": {"names": ["app"]}, "keepLast": 1, "deprecateAfter": "1s", "deleteAfter": "24h"});
    policies
        .create(&PostParams::default(), &policy("staged", spec))
        .await
        .expect("policy");
    let p = wait_policy(&policies, "staged", "Evaluated", &controller.log).await;
    let status = p.status.expect("status");
    for region in REGIONS {
        let superseded = built(7, region);
        let kept = status
            .retained
            .iter()
            .find(|d| d.image_id == superseded)
            .expect("the superseded image is reported");
        assert!(
            kept.reason
                .contains("does not implement EnableImageDeprecation"),
            "{}",
            kept.reason
        );
        assert_eq!(
            owned(&env, region).await.len(),
            2,
            "{region}: nothing deleted before deleteAfter"
        );
    }

    // A policy that selects nothing says so.
    policies
        .create(
            &PostParams::default(),
            &policy("nothing", json!({"builds": {"names": ["no-such-build"]}})),
        )
        .await
        .expect("policy");
    let p = wait_policy(&policies, "nothing", "NoBuildsSelected", &controller.log).await;
    // kstatus: the user must act, so Stalled (what Flux's health checks read).
    let conditions = p.status.clone().map(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == "NoBuildsSelected"),
        "{conditions:?}"
    );
    let message = p
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains("selects no ImageBuild") && message.contains("no-such-build"),
        "{message}"
    );
    controller.stop().await;
}

/// A prune killed (SIGKILL) again and again finishes on a later pass: no
/// snapshot of a deleted AMI is left, and the status counts every deletion
/// that happened exactly once.
#[tokio::test]
async fn a_prune_killed_midway_finishes_later_with_exact_counts_and_no_leaked_snapshot() {
    const AMIS: usize = 60;
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    // 40 ms per request: the prune takes seconds, so the kills land in it.
    let proxy = SlowProxy::start(env.moto.endpoint(), Duration::from_millis(40)).await;
    let builds: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let policies: Api<ImagePolicy> = Api::namespaced(env.client.clone(), NS);
    let mut controller = env
        .controller("c0", &["--default-executor", "process"])
        .await;
    builds
        .create(
            &PostParams::default(),
            &image_build("app", &proxy.endpoint, &["us-east-1"], json!({})),
        )
        .await
        .expect("create");
    let ib = wait_for(&builds, "app", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let latest = ib.status.and_then(|s| s.latest_image).expect("latest");

    // Older AMIs of the same ImageBuild, owned (image and snapshot tagged).
    let aws = env.ec2();
    let ec2 = aws.client("us-east-1").await;
    let owner = [
        (tags::NAMESPACE, NS),
        (tags::IMAGE_BUILD, "app"),
        (tags::BUILD_ID, "old"),
    ];
    for n in 0..AMIS {
        let id = make_ami(&aws, "us-east-1", &format!("old-{n}"), &owner).await;
        let image = ami(&aws, "us-east-1", &id).await;
        let snaps: Vec<String> = image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
            .collect();
        let tags: Vec<aws_sdk_ec2::types::Tag> = owner
            .iter()
            .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build())
            .collect();
        ec2.create_tags()
            .set_resources(Some(snaps))
            .set_tags(Some(tags))
            .send()
            .await
            .expect("CreateTags");
    }
    let before = owned(&env, "us-east-1").await.len();
    assert_eq!(before, AMIS + 1);

    policies
        .create(
            &PostParams::default(),
            &policy(
                "keep-one",
                json!({"builds": {"names": ["app"]}, "keepLast": 1}),
            ),
        )
        .await
        .expect("create policy");

    // Kill the controller as soon as some deletions happened, three times.
    let mut kills = 0;
    while kills < 3 {
        let left = owned(&env, "us-east-1").await.len();
        if left == 1 {
            break;
        }
        if left < before {
            controller.signal(libc::SIGKILL);
            let _ = controller.stop_killed().await;
            kills += 1;
            controller = env
                .controller(&format!("c{}", kills), &["--default-executor", "process"])
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("killed the controller {kills} time(s) mid-prune");
    assert!(kills >= 1, "no kill landed in the prune");

    // keepLast 1 keeps the newest hand-made AMI and the latest build's AMI
    // is protected: AMIS - 1 are deleted. Every deletion counted once: more
    // would be a double count, fewer a lost one (this waits, and fails
    // showing the last status).
    let p = wait_for(
        &policies,
        "keep-one",
        Duration::from_secs(120),
        &controller.log,
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.pending_deletions.is_empty()
                    && s.summary
                        .as_ref()
                        .is_some_and(|x| x.deleted == (AMIS - 1) as i32)
            })
        },
    )
    .await;
    let remaining = owned(&env, "us-east-1").await;
    assert_eq!(remaining.len(), 2, "{remaining:?}");
    assert!(
        remaining
            .iter()
            .any(|(id, _)| latest.artifacts.iter().any(|a| &a.image_id == id)),
        "the latest AMI is kept"
    );
    let deleted = p.status.and_then(|s| s.summary).map_or(0, |s| s.deleted);
    assert_eq!(deleted as usize, before - remaining.len(), "an exact count");
    // No owned snapshot without its AMI.
    let snaps = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(kiln::provider::aws::tag_filter(tags::IMAGE_BUILD, "app"))
        .send()
        .await
        .expect("DescribeSnapshots");
    let in_use: Vec<&String> = remaining.iter().flat_map(|(_, s)| s).collect();
    let leaked: Vec<&str> = snaps
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id())
        .filter(|id| !in_use.iter().any(|u| u.as_str() == *id))
        .collect();
    assert!(
        leaked.is_empty(),
        "snapshots of deleted AMIs leaked: {leaked:?}"
    );
    controller.stop().await;
}
