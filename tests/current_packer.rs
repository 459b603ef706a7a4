//! kiln with a current Packer: 1.16 and its plugins as `hack/packer/setup.sh`
//! builds them (`kiln_testenv::CurrentPacker`), against a real control plane
//! and moto, with `kiln controller` and the process executor. The other
//! end-to-end tests run Debian's Packer 1.6.6.
//!
//! Each test runs inside a network namespace of its own whose only interface
//! is loopback (`unshare -n`, as root or with user namespaces), so the
//! build provably needs no network: `packer init` finds the preinstalled
//! plugins, or names the missing one. Where `unshare` is refused the test
//! runs in place and relies on the runner's own record that `packer init`
//! made no download attempt.

mod support;

use std::time::Duration;

use kiln::api::{BuildResult, ImageBuild};
use kiln_testenv::CurrentPacker;
use kube::{Api, api::PostParams};
use serde_json::json;
use support::*;

const NS: &str = "current";
/// Generous: under `stress-ng --cpu 2` Packer 1.16 and its plugin start slowly.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Set in the re-executed test inside the network namespace.
const NETNS_ENV: &str = "KILN_TEST_IN_NETNS";

/// The amazon plugin (≥ 1.8) against moto: as `support::AMAZON_TEMPLATE`,
/// plus what the plugin would otherwise ask AWS itself (STS for the
/// credentials, the instance metadata service), and `required_plugins`.
const AMAZON_TEMPLATE_CURRENT: &str = r#"
packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.8.0"
    }
  }
}
variable "kiln_build_id" { type = string }
variable "kiln_endpoint" { type = string }
variable "kiln_regions" { type = list(string) }
source "amazon-ebs" "app" {
  region                     = var.kiln_regions[0]
  ami_regions                = slice(var.kiln_regions, 1, length(var.kiln_regions))
  source_ami                 = "ami-1e749f67"
  instance_type              = "t2.micro"
  communicator               = "none"
  custom_endpoint_ec2        = var.kiln_endpoint
  skip_region_validation     = true
  skip_credential_validation = true
  skip_metadata_api_check    = true
  ami_name                   = "current-${var.kiln_build_id}"
}
build {
  sources = ["source.amazon-ebs.app"]
  provisioner "shell-local" {
    inline = ["echo built by current packer"]
  }
  post-processor "manifest" {}
}
"#;

/// Requires a plugin no kiln image carries.
const MISSING_PLUGIN: &str = "github.com/hashicorp/vsphere";

/// Runs `test` in a network namespace with only loopback, by running this
/// very test again under `unshare -n`; `true` when that happened (the caller
/// returns), `false` when the caller should run the test body itself.
async fn run_in_netns(test: &str) -> bool {
    if std::env::var_os(NETNS_ENV).is_some() {
        return false;
    }
    let unshare = ["-n", "-rn"].into_iter().find(|flag| {
        std::process::Command::new("unshare")
            .args([flag, "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(flag) = unshare else {
        eprintln!("unshare is not permitted here: running with the host's network");
        return false;
    };
    let exe = std::env::current_exe().expect("test binary");
    let out = tokio::process::Command::new("unshare")
        .args([flag, "--", "sh", "-c"])
        .arg(r#"PATH="$PATH:/usr/sbin:/sbin" ip link set lo up && exec "$0" "$@""#)
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, "1")
        .output()
        .await
        .expect("run the test under unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- {test} in a network namespace (unshare {flag}) ---\n{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "{test} failed inside the network namespace"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run inside the network namespace"
    );
    true
}

/// In the namespace, nothing but loopback is reachable.
fn assert_offline() {
    if std::env::var_os(NETNS_ENV).is_none() {
        return;
    }
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:443"))
        .is_ok();
    assert!(!routed, "a route leads off this host inside the namespace");
}

/// `kiln controller` with the current Packer first on its PATH (its
/// runners inherit the environment).
async fn controller(env: &Env, packer: &CurrentPacker) -> KilnController {
    let config = env.dir.path().join("packer-config");
    std::fs::create_dir_all(&config).expect("packer config dir");
    let vars = packer.env(&config);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.controller_with(
        "c",
        &env.plane.admin_kubeconfig_path(),
        &["--default-executor", "process"],
        &vars,
    )
    .await
}

fn image_build_with(name: &str, endpoint: &str, regions: &[&str], template: &str) -> ImageBuild {
    let mut ib = image_build(name, endpoint, regions, json!({}));
    ib.spec.template.inline = Some(template.to_owned());
    ib
}

/// The runners' JSON log lines whose message is `message`.
fn log_events(controller: &KilnController, message: &str) -> Vec<serde_json::Value> {
    controller
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.pointer("/fields/message").and_then(|m| m.as_str()) == Some(message))
        .collect()
}

#[tokio::test]
async fn required_plugins_preinstalled_build_offline_with_packer_1_16() {
    let test = "required_plugins_preinstalled_build_offline_with_packer_1_16";
    if run_in_netns(test).await {
        return;
    }
    assert_offline();
    let packer = CurrentPacker::find().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        packer
            .installed_sources()
            .contains(&"github.com/hashicorp/amazon".to_owned()),
        "the amazon plugin is installed: {:?}",
        packer.installed_sources()
    );
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = controller(&env, &packer).await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let regions = ["us-east-1", "eu-west-1"];
    api.create(
        &PostParams::default(),
        &image_build_with(
            "app",
            env.moto.endpoint(),
            &regions,
            AMAZON_TEMPLATE_CURRENT,
        ),
    )
    .await
    .expect("create");

    let ib = wait_for(&api, "app", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let status = ib.status.expect("status");
    let latest = status.latest_image.expect("latestImage");
    let mut got: Vec<&str> = latest.artifacts.iter().map(|a| a.region.as_str()).collect();
    got.sort();
    assert_eq!(got, vec!["eu-west-1", "us-east-1"]);
    for a in &latest.artifacts {
        assert!(a.image_id.starts_with("ami-"), "{a:?}");
        let image = ami(&env.ec2(), &a.region, &a.image_id).await;
        assert_eq!(
            tag(&image, kiln::provider::aws::tags::BUILD_ID),
            Some(latest.build_id.as_str())
        );
    }
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].result, BuildResult::Succeeded);

    // It was Packer 1.16 that built, after a `packer init` that found the
    // plugin installed and never tried to download it.
    let found = log_events(&controller, "packer found");
    assert!(
        found.iter().any(|e| e
            .pointer("/fields/packer")
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains("1.16."))),
        "packer 1.16 ran: {found:?}"
    );
    let init = log_events(
        &controller,
        "packer init: every required plugin is installed",
    );
    println!("packer found: {found:?}\npacker init: {init:?}");
    assert_eq!(init.len(), 1, "{}", controller.log_text());
    assert_eq!(
        init[0].pointer("/fields/download_attempts"),
        Some(&json!(0)),
        "packer init tried no download: {init:?}"
    );
    assert!(
        controller.log_text().contains("built by current packer"),
        "the provisioner ran"
    );
    wait_no_leftovers(&env, &["us-east-1"], Duration::from_secs(60)).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_missing_plugin_fails_the_build_naming_it_and_the_fix() {
    let test = "a_missing_plugin_fails_the_build_naming_it_and_the_fix";
    if run_in_netns(test).await {
        return;
    }
    assert_offline();
    let packer = CurrentPacker::find().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !packer
            .installed_sources()
            .contains(&MISSING_PLUGIN.to_owned()),
        "{MISSING_PLUGIN} must not be installed for this test"
    );
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = controller(&env, &packer).await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let template = AMAZON_TEMPLATE_CURRENT.replace(
        "  required_plugins {\n",
        &format!(
            "  required_plugins {{\n    vsphere = {{\n      source  = \"{MISSING_PLUGIN}\"\n      version = \">= 1.2.0\"\n    }}\n"
        ),
    );
    assert!(template.contains(MISSING_PLUGIN));
    let mut ib = image_build_with(
        "needs-vsphere",
        env.moto.endpoint(),
        &["us-east-1"],
        &template,
    );
    // One retry, far away: the condition stays BuildFailed while we look.
    let retry = ib.spec.retry.as_mut().expect("retry");
    retry.limit = 1;
    retry.backoff = "1h".parse().expect("duration");
    api.create(&PostParams::default(), &ib)
        .await
        .expect("create");

    let ib = wait_for(
        &api,
        "needs-vsphere",
        BUILD_TIMEOUT,
        &controller.log,
        |ib| {
            condition(ib, "Ready").is_some_and(|c| c.status == "False" && c.reason == "BuildFailed")
        },
    )
    .await;
    let ready = condition(&ib, "Ready").expect("Ready").message.clone();
    println!("Ready: {ready}");
    for expected in [
        "not installed",
        &format!("* {MISSING_PLUGIN} >= 1.2.0"),
        "installed: ",
        "github.com/hashicorp/amazon v1.",
        &format!(r#"RUN ["packer", "plugins", "install", "{MISSING_PLUGIN}", ">= 1.2.0"]"#),
        "packer plugins install --path",
        kiln::packer::plugins::DOCS_URL,
        &packer.plugin_dir().display().to_string(),
    ] {
        assert!(
            ready.contains(expected),
            "{expected:?} in the Ready message:\n{ready}"
        );
    }
    assert!(
        !ready.contains("github.com/hashicorp/amazon >="),
        "only the missing plugin is named as missing:\n{ready}"
    );
    let status = ib.status.expect("status");
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].result, BuildResult::Failed);
    assert!(status.latest_image.is_none());
    assert!(
        amis(&env.ec2(), "us-east-1").await.is_empty(),
        "nothing was built"
    );
    // The controller lives on: the failure is a condition, not a crash.
    assert!(
        reqwest::get(format!("{}/readyz", controller.metrics))
            .await
            .is_ok_and(|r| r.status().is_success())
    );
    controller.stop().await;
}

/// The same two-region AMI build with Debian's Packer 1.6.6 (the default the
/// other tests use, from `PATH`): both Packers stay supported.
#[tokio::test]
async fn debian_packer_1_6_6_builds_the_same_image_build() {
    let test = "debian_packer_1_6_6_builds_the_same_image_build";
    if run_in_netns(test).await {
        return;
    }
    assert_offline();
    let env = Env::start(false).await;
    env.build_namespace(NS).await;
    let controller = env
        .controller("c", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    api.create(
        &PostParams::default(),
        &image_build(
            "app",
            env.moto.endpoint(),
            &["us-east-1", "eu-west-1"],
            json!({}),
        ),
    )
    .await
    .expect("create");
    let ib = wait_for(&api, "app", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let latest = ib.status.and_then(|s| s.latest_image).expect("latestImage");
    assert_eq!(latest.artifacts.len(), 2, "{latest:?}");
    let found = log_events(&controller, "packer found");
    assert!(
        found.iter().any(|e| e
            .pointer("/fields/packer")
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains("1.6.6"))),
        "packer 1.6.6 ran: {found:?}"
    );
    controller.stop().await;
}
