//! kiln with a current Packer: 1.16 and its plugins as `hack/packer/setup.sh`
//! builds them (`kiln_testenv::CurrentPacker`), against a real control plane
//! and moto, the DigitalOcean stand-in and real Keystone and Glance, with
//! `kiln controller` and the process executor. The other end-to-end tests
//! run Debian's Packer 1.6.6 (the GCE ones excepted).
//!
//! Each test runs inside a network namespace of its own whose only interface
//! is loopback (`unshare -n`, as root or with user namespaces), so the
//! build provably needs no network: `packer init` finds the preinstalled
//! plugins, or names the missing one. Where `unshare` is refused the test
//! runs in place and relies on the runner's own record that `packer init`
//! made no download attempt.

mod support;

use std::{collections::BTreeSet, time::Duration};

use kiln::api::{BuildResult, ImageBuild};
use kiln_testenv::{CurrentPacker, Service};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use support::{images::image_build_for, *};

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

/// The digitalocean plugin (1.4.1) against the DigitalOcean stand-in: one
/// droplet snapshot, transferred to every region. `SOURCE` is the plugin's
/// source as installed (`github.com/digitalocean/digitalocean`, or the
/// pre-2023 `github.com/hashicorp/digitalocean`). The plugin waits for the
/// transfers itself (`wait_snapshot_transfer` defaults to true, and unlike
/// Packer 1.6.6 it asks for the transfer's own action).
const DIGITALOCEAN_TEMPLATE_CURRENT: &str = r#"
packer {
  required_version = ">= 1.10.0"
  required_plugins {
    digitalocean = {
      source  = "SOURCE"
      version = ">= 1.4.1"
    }
  }
}
variable "kiln_build_id" { type = string }
variable "kiln_endpoint" { type = string }
variable "kiln_regions" { type = list(string) }
source "digitalocean" "app" {
  api_url          = var.kiln_endpoint
  image            = "ubuntu-22-04-x64"
  region           = var.kiln_regions[0]
  size             = "s-1vcpu-1gb"
  snapshot_name    = "app-${var.kiln_build_id}"
  snapshot_regions = var.kiln_regions
  communicator     = "none"
}
build {
  sources = ["source.digitalocean.app"]
}
"#;

/// The openstack plugin (1.1.2) against real Keystone and Glance (and
/// kiln's Nova stand-in): one source per region, as with Packer 1.6.6. The
/// credentials come from the environment (`OS_AUTH_URL` and the application
/// credential), as kiln's runner passes the Secret.
const OPENSTACK_TEMPLATE_CURRENT: &str = r#"
packer {
  required_version = ">= 1.10.0"
  required_plugins {
    openstack = {
      source  = "github.com/hashicorp/openstack"
      version = ">= 1.1.2"
    }
  }
}
variable "kiln_build_id" { type = string }
variable "kiln_regions" { type = list(string) }
source "openstack" "first" {
  region            = var.kiln_regions[0]
  source_image_name = "cirros"
  flavor            = "m1.tiny"
  image_name        = "app-${var.kiln_build_id}"
  communicator      = "none"
}
source "openstack" "second" {
  region            = var.kiln_regions[1]
  source_image_name = "cirros"
  flavor            = "m1.tiny"
  image_name        = "app-${var.kiln_build_id}"
  communicator      = "none"
}
build {
  sources = ["source.openstack.first", "source.openstack.second"]
}
"#;

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

/// It was Packer 1.16 that built, after one `packer init` that found every
/// required plugin installed and never tried to download one.
fn assert_packer_1_16_built_offline(controller: &KilnController) {
    let found = log_events(controller, "packer found");
    assert!(
        found.iter().any(|e| e
            .pointer("/fields/packer")
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains("1.16."))),
        "packer 1.16 ran: {found:?}"
    );
    let init = log_events(
        controller,
        "packer init: every required plugin is installed",
    );
    println!("packer found: {found:?}\npacker init: {init:?}");
    assert_eq!(init.len(), 1, "{}", controller.log_text());
    assert_eq!(
        init[0].pointer("/fields/download_attempts"),
        Some(&json!(0)),
        "packer init tried no download: {init:?}"
    );
}

/// The lines of one of a stand-in's logs (`/logs/<name>` of its ready line).
fn service_log(svc: &Service, name: &str) -> String {
    std::fs::read_to_string(svc.get(&format!("/logs/{name}"))).unwrap_or_default()
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
    let controller = env.controller_with_packer("c", &packer).await;
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

    assert_packer_1_16_built_offline(&controller);
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
    let controller = env.controller_with_packer("c", &packer).await;
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

/// The digitalocean plugin 1.4.1 builds against the stand-in, every request
/// and response of it checked against DigitalOcean's spec, and the snapshot
/// is recorded and tagged as kiln's.
#[tokio::test]
async fn digitalocean_plugin_builds_a_snapshot_with_packer_1_16() {
    let test = "digitalocean_plugin_builds_a_snapshot_with_packer_1_16";
    if run_in_netns(test).await {
        return;
    }
    assert_offline();
    let packer = CurrentPacker::find().unwrap_or_else(|e| panic!("{e}"));
    let installed = packer.installed_sources();
    let source = [
        "github.com/digitalocean/digitalocean",
        "github.com/hashicorp/digitalocean",
    ]
    .into_iter()
    .find(|s| installed.iter().any(|i| i == s))
    .unwrap_or_else(|| panic!("the digitalocean plugin is installed: {installed:?}"));
    let (env, svc) = tokio::join!(Env::start(false), async {
        Service::digitalocean()
            .await
            .unwrap_or_else(|e| panic!("digitalocean: {e}"))
    });
    kiln::install_crypto_provider();
    let api_url = svc.get("/api_url").to_owned();
    let token = svc.get("/token").to_owned();
    let control = svc.get("/control_url").to_owned();
    env.namespace(NS).await;
    // The plugin's own name for the token (it still reads
    // DIGITALOCEAN_API_TOKEN, with a deprecation warning); kiln reads either.
    env.aws_secret(NS, "do", &[("DIGITALOCEAN_TOKEN", &token)])
        .await;
    let controller = env.controller_with_packer("c", &packer).await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let regions = ["nyc3", "sfo3"];
    let template = DIGITALOCEAN_TEMPLATE_CURRENT.replace("SOURCE", source);
    let ib = image_build_for(
        json!({
            "type": "digitalocean",
            "regions": regions,
            "endpoint": api_url,
            "credentials": {"secretRef": {"name": "do"}}
        }),
        &template,
    );
    api.create(&PostParams::default(), &ib)
        .await
        .expect("create");
    let ib = wait_for(&api, "app", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let status = ib.status.expect("status");
    let latest = status.latest_image.expect("latestImage");
    println!("{source}: latestImage {:?}", latest.artifacts);
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].result, BuildResult::Succeeded);
    // One snapshot. The plugin's artifact names only the build region
    // (1.4.1's stepSnapshot puts just `region` into the artifact's regions,
    // where Packer 1.6.6 listed every transfer).
    let ids: BTreeSet<&str> = latest
        .artifacts
        .iter()
        .map(|a| a.image_id.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "one snapshot: {:?}", latest.artifacts);
    // The plugin names only the build region; kiln records every region
    // the snapshot was transferred to.
    let recorded: Vec<&str> = latest.artifacts.iter().map(|a| a.region.as_str()).collect();
    assert_eq!(recorded, regions, "{:?}", latest.artifacts);
    let id = latest.artifacts[0].image_id.clone();

    // At DigitalOcean: the snapshot, in both regions, tagged as kiln's.
    let reply = reqwest::Client::new()
        .get(format!("{api_url}/v2/images/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get image");
    assert_eq!(reply.status(), 200);
    let snapshot: Value = reply.json().await.expect("image");
    let snapshot = &snapshot["image"];
    println!("snapshot: {snapshot}");
    assert_eq!(snapshot["name"], format!("app-{}", latest.build_id));
    assert_eq!(snapshot["type"], "snapshot");
    let in_regions: BTreeSet<&str> = snapshot["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(in_regions, regions.into_iter().collect(), "transferred");
    let tags: Vec<&str> = snapshot["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "kiln:managed".to_owned(),
        format!("kiln:owner:{NS}:app"),
        format!("kiln:build:{}", latest.build_id),
    ] {
        assert!(tags.contains(&want.as_str()), "{want} in {tags:?}");
    }

    // Every request passed the spec and the stand-in's strict checks, and
    // the plugin cleaned up its droplet and key.
    let state: Value = reqwest::get(format!("{control}/state"))
        .await
        .expect("state")
        .json()
        .await
        .expect("state json");
    let front = service_log(&svc, "front");
    let rejected: Vec<&str> = front.lines().filter(|l| l.contains("REJECTED")).collect();
    assert!(rejected.is_empty(), "the spec refused: {rejected:#?}");
    for counter in ["strict_request_failures", "strict_response_failures"] {
        assert_eq!(
            state["counts"][counter].as_u64().unwrap_or(0),
            0,
            "{}",
            state["counts"]
        );
    }
    assert!(
        !service_log(&svc, "standin").contains("standin_not_implemented"),
        "{}",
        service_log(&svc, "standin")
    );
    assert_eq!(state["droplets"], json!([]), "droplet destroyed");
    assert_eq!(state["ssh_keys"], json!([]), "temporary key deleted");

    assert_packer_1_16_built_offline(&controller);
    controller.stop().await;
}

/// A Glance token for the stack's application credential.
async fn glance_token(http: &reqwest::Client, stack: &Service) -> String {
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
        .await
        .expect("Keystone");
    assert_eq!(response.status(), 201);
    response
        .headers()
        .get("x-subject-token")
        .and_then(|t| t.to_str().ok())
        .expect("token")
        .to_owned()
}

/// The openstack plugin 1.1.2 builds in two regions against real Keystone
/// and Glance, and each image carries kiln's ownership.
#[tokio::test]
async fn openstack_plugin_builds_in_two_regions_with_packer_1_16() {
    let test = "openstack_plugin_builds_in_two_regions_with_packer_1_16";
    if run_in_netns(test).await {
        return;
    }
    assert_offline();
    let packer = CurrentPacker::find().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        packer
            .installed_sources()
            .contains(&"github.com/hashicorp/openstack".to_owned()),
        "the openstack plugin is installed: {:?}",
        packer.installed_sources()
    );
    let (env, stack) = tokio::join!(Env::start(false), async {
        Service::openstack()
            .await
            .unwrap_or_else(|e| panic!("openstack: {e}"))
    });
    kiln::install_crypto_provider();
    let http = reqwest::Client::new();
    let token = glance_token(&http, &stack).await;
    let glance =
        |region: &str, path: &str| format!("{}{path}", stack.get(&format!("/glance/{region}")));
    let regions = ["RegionOne", "RegionTwo"];
    // The source image, in each region's Glance.
    for region in regions {
        let created: Value = http
            .post(glance(region, "/v2/images"))
            .header("X-Auth-Token", &token)
            .json(&json!({"name": "cirros", "disk_format": "raw", "container_format": "bare"}))
            .send()
            .await
            .expect("create image")
            .json()
            .await
            .expect("image");
        let id = created["id"].as_str().expect("id");
        let uploaded = http
            .put(glance(region, &format!("/v2/images/{id}/file")))
            .header("X-Auth-Token", &token)
            .header("Content-Type", "application/octet-stream")
            .body(vec![7u8; 4096])
            .send()
            .await
            .expect("upload");
        assert_eq!(uploaded.status(), 204);
    }
    env.namespace(NS).await;
    env.aws_secret(
        NS,
        "openstack",
        &[
            ("OS_AUTH_URL", stack.get("/auth_url")),
            ("OS_APPLICATION_CREDENTIAL_ID", stack.get("/app_cred_id")),
            (
                "OS_APPLICATION_CREDENTIAL_SECRET",
                stack.get("/app_cred_secret"),
            ),
        ],
    )
    .await;
    let controller = env.controller_with_packer("c", &packer).await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let ib = image_build_for(
        json!({
            "type": "openstack",
            "regions": regions,
            "credentials": {"secretRef": {"name": "openstack"}}
        }),
        OPENSTACK_TEMPLATE_CURRENT,
    );
    api.create(&PostParams::default(), &ib)
        .await
        .expect("create");
    let ib = wait_for(&api, "app", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let status = ib.status.expect("status");
    let latest = status.latest_image.expect("latestImage");
    println!("latestImage {:?}", latest.artifacts);
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.history[0].result, BuildResult::Succeeded);
    let got: Vec<&str> = latest.artifacts.iter().map(|a| a.region.as_str()).collect();
    assert_eq!(got, regions, "one image in each region");

    // In each region's Glance: active, named by the build, owned by kiln.
    for a in &latest.artifacts {
        let reply = http
            .get(glance(&a.region, &format!("/v2/images/{}", a.image_id)))
            .header("X-Auth-Token", &token)
            .send()
            .await
            .expect("get image");
        assert_eq!(reply.status(), 200, "{} in {}", a.image_id, a.region);
        let image: Value = reply.json().await.expect("image");
        println!("{}: {image}", a.region);
        assert_eq!(image["status"], "active");
        assert_eq!(image["name"], format!("app-{}", latest.build_id));
        assert_eq!(image["kiln_managed_by"], "kiln", "{image}");
        assert_eq!(image["kiln_namespace"], NS);
        assert_eq!(image["kiln_image_build"], "app");
        assert_eq!(image["kiln_build_id"], latest.build_id.as_str());
        assert_eq!(image["kiln_spec_hash"], latest.spec_hash.as_str());
        assert!(
            image["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("kiln"))),
            "{image}"
        );
    }

    // The plugin deleted its servers and temporary key pairs in Nova.
    for region in regions {
        for (path, key) in [("/servers", "servers"), ("/os-keypairs", "keypairs")] {
            let left: Value = http
                .get(format!("{}{path}", stack.get(&format!("/nova/{region}"))))
                .header("X-Auth-Token", &token)
                .send()
                .await
                .expect("Nova")
                .json()
                .await
                .expect("Nova json");
            assert_eq!(left[key], json!([]), "{key} left in {region}");
        }
    }

    assert_packer_1_16_built_offline(&controller);
    controller.stop().await;
}
