//! What the cloud end-to-end tests share: an ImageBuild and ImagePolicy
//! shaped for them, running the `kiln` CLI, five builds in a row, the dry run
//! that agrees with `kiln images list` and `kiln prune --dry-run`, and an
//! enforced evaluation.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use kiln::api::{ImageBuild, ImagePolicy};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::*;

/// How long one build may take on a loaded machine.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

pub fn image_build_for(provider: Value, template: &str) -> ImageBuild {
    serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "app"},
        "spec": {
            "provider": provider,
            "template": {"inline": template},
            "executor": {"type": "process"},
            "retry": {"limit": 1, "backoff": "1s"}
        }
    }))
    .expect("ImageBuild")
}

pub fn policy(spec: Value) -> ImagePolicy {
    serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": "keep-two"}, "spec": spec
    }))
    .expect("ImagePolicy")
}

pub fn kiln(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args).stdin(Stdio::null()).env_clear();
    cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kiln")
}

pub fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// (region, image) pairs of an ImagePolicy status list.
pub fn pairs(list: &[kiln::api::ImageDecision]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|d| (d.region.clone(), d.image_id.clone()))
        .collect()
}

/// Runs five builds of `app` (the first, then four rebuilds) and returns
/// each build's artifacts as (region, image) pairs, oldest first.
pub async fn five_builds(
    api: &Api<ImageBuild>,
    ib: &ImageBuild,
    log: &Path,
) -> Vec<Vec<(String, String)>> {
    api.create(&PostParams::default(), ib)
        .await
        .expect("create ImageBuild");
    let mut builds = Vec::new();
    let mut latest = wait_for(api, "app", BUILD_TIMEOUT, log, is_ready).await;
    for i in 0..5 {
        if i > 0 {
            latest = rebuild(api, "app", &format!("rebuild-{i}"), BUILD_TIMEOUT, log).await;
        }
        let image = latest
            .status
            .as_ref()
            .and_then(|s| s.latest_image.clone())
            .expect("latestImage");
        builds.push(
            image
                .artifacts
                .iter()
                .map(|a| (a.region.clone(), a.image_id.clone()))
                .collect(),
        );
    }
    builds
}

/// The policy dry run, `kiln images list` and `kiln prune --dry-run` agree on
/// the plan, and nothing changed. Returns the planned (region, image) pairs.
pub async fn dry_run_agrees(
    env: &Env,
    controller: &KilnController,
    policy_spec: &Value,
    manifest: &Path,
    cli_env: &[(String, String)],
) -> BTreeSet<(String, String)> {
    let policies: Api<ImagePolicy> = Api::namespaced(env.client.clone(), "images");
    let mut spec = policy_spec.clone();
    spec["dryRun"] = true.into();
    policies
        .create(&PostParams::default(), &policy(spec))
        .await
        .expect("create ImagePolicy");
    let p = wait_for(
        &policies,
        "keep-two",
        Duration::from_secs(90),
        &controller.log,
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.observed_generation == p.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == "DryRun")
            })
        },
    )
    .await;
    let status = p.status.expect("status");
    let planned = pairs(&status.plan);

    // `kiln images list` lists what the provider holds, newest first.
    let listed = kiln(
        &["images", "list", "--file", manifest.to_str().expect("path")],
        cli_env,
    );
    assert!(listed.status.success(), "{}", out(&listed));
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    let rows: BTreeSet<(String, String)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_owned(), cols.next()?.to_owned()))
        })
        .collect();
    let retained = pairs(&status.retained);
    let all: BTreeSet<(String, String)> = planned.union(&retained).cloned().collect();
    assert_eq!(rows, all, "images list shows every owned image:\n{text}");
    assert!(
        text.lines()
            .skip(1)
            .all(|l| l.split_whitespace().count() >= 3),
        "names are shown:\n{text}"
    );

    // `kiln prune --dry-run` plans the same as the controller's dry run.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        serde_json::to_string(&json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ImagePolicy",
            "metadata": {"name": "keep-two", "namespace": "images"},
            "spec": policy_spec
        }))
        .expect("json"),
    )
    .expect("write policy");
    let kubeconfig = env.plane.admin_kubeconfig_path().display().to_string();
    let mut with_cluster = cli_env.to_vec();
    with_cluster.push(("KUBECONFIG".into(), kubeconfig));
    let pruned = kiln(
        &[
            "prune",
            "--policy",
            file.to_str().expect("path"),
            "--dry-run",
        ],
        &with_cluster,
    );
    assert!(pruned.status.success(), "{}", out(&pruned));
    let text = String::from_utf8_lossy(&pruned.stdout).into_owned();
    let cli_plan: BTreeSet<(String, String)> = text
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("plan:"))
        .filter_map(|l| {
            let mut cols = l.split_whitespace().skip(1);
            Some((cols.next()?.to_owned(), cols.next()?.to_owned()))
        })
        .collect();
    assert_eq!(cli_plan, planned, "kiln prune --dry-run:\n{text}");
    assert!(
        text.contains(&format!(
            "plan: {} to deprecate or delete, {} kept",
            planned.len(),
            retained.len()
        )),
        "{text}"
    );
    planned
}

/// Turns the dry run off and waits for an evaluation that acted.
pub async fn enforce(env: &Env, controller: &KilnController, spec: Value) -> ImagePolicy {
    let policies: Api<ImagePolicy> = Api::namespaced(env.client.clone(), "images");
    let mut spec = spec;
    spec["dryRun"] = false.into();
    policies
        .patch(
            "keep-two",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch policy");
    wait_for(
        &policies,
        "keep-two",
        Duration::from_secs(120),
        &controller.log,
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.observed_generation == p.metadata.generation
                    && s.conditions.iter().any(|c| {
                        c.type_ == "Ready" && c.reason == "Evaluated" && c.status == "True"
                    })
            })
        },
    )
    .await
}

pub trait TapName {
    fn tap_name(self, name: &str) -> Self;
}

impl TapName for ImagePolicy {
    fn tap_name(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self
    }
}

/// An ImageBuild is Stalled with `reason`.
pub fn stalled_with(reason: &'static str) -> impl Fn(&ImageBuild) -> bool {
    move |ib: &ImageBuild| {
        ib.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == reason)
        })
    }
}

/// The message of an ImageBuild's Ready condition.
pub fn ready_message(ib: &ImageBuild) -> String {
    ib.status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}
