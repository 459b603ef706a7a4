//! Azure end to end: a real control plane, current Packer with its azure
//! plugin (v1.4.5, pointed at the stand-in with `metadata_host`) and `kiln
//! controller`, against the Azure Resource Manager stand-in that validates
//! every request and response against Azure's Swagger (or, where the specs
//! are absent, Microsoft's SDK schemas).
//!
//! An ImageBuild goes Ready with its Compute Gallery image version in both
//! regions, tagged as kiln's. After five builds an ImagePolicy with keepLast
//! 2 plans (dry run), deprecates the older versions the Azure way
//! (`excludeFromLatest` and `endOfLifeDate`), then deletes them, following
//! each long-running operation: never the latest, a foreign version, one the
//! user tagged `kiln-keep`, or one Azure blocks from deletion before its end
//! of life (the plan says why).

mod support;

use std::{collections::BTreeSet, time::Duration};

use kiln::api::{ImageBuild, RetentionAction};
use kiln_testenv::{CurrentPacker, Service};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use support::{images::*, *};

/// A gallery version from a managed source image, replicated to every
/// region of the ImageBuild; credentials from the Secret by `env()`, since
/// the plugin reads no `AZURE_*` variable itself. The stand-in's SSH
/// responder answers the communicator (v1.4.5 waits for SSH even with
/// `communicator = "none"`).
const AZURE_TEMPLATE: &str = r#"
packer {
  required_plugins {
    azure = {
      source  = "github.com/hashicorp/azure"
      version = ">= 1.4.5"
    }
  }
}
variable "kiln_build_id" { type = string }
variable "kiln_regions" { type = list(string) }
variable "kiln_subscription_id" { type = string }
variable "kiln_resource_group" { type = string }
variable "kiln_gallery" { type = string }
variable "kiln_image_definition" { type = string }
variable "metadata_host" { type = string }
variable "cloud_environment_name" { type = string }
variable "ssh_port" { type = number }
variable "tenant_id" {
  type    = string
  default = env("AZURE_TENANT_ID")
}
variable "client_id" {
  type    = string
  default = env("AZURE_CLIENT_ID")
}
variable "client_secret" {
  type      = string
  default   = env("AZURE_CLIENT_SECRET")
  sensitive = true
}
locals {
  now = timestamp()
}
source "azure-arm" "app" {
  metadata_host          = var.metadata_host
  cloud_environment_name = var.cloud_environment_name
  subscription_id        = var.kiln_subscription_id
  tenant_id              = var.tenant_id
  client_id              = var.client_id
  client_secret          = var.client_secret

  build_resource_group_name                = var.kiln_resource_group
  os_type                                  = "Linux"
  vm_size                                  = "Standard_B1s"
  custom_managed_image_name                = "kiln-source"
  custom_managed_image_resource_group_name = var.kiln_resource_group

  communicator = "ssh"
  ssh_username = "packer"
  ssh_port     = var.ssh_port
  ssh_timeout  = "2m"

  managed_image_name                = "app-${var.kiln_build_id}"
  managed_image_resource_group_name = var.kiln_resource_group
  shared_image_gallery_destination {
    subscription        = var.kiln_subscription_id
    resource_group      = var.kiln_resource_group
    gallery_name        = var.kiln_gallery
    image_name          = var.kiln_image_definition
    image_version       = "${formatdate("YYYY", local.now)}.${parseint(formatdate("MMDDhhmm", local.now), 10)}.${parseint(formatdate("ss", local.now), 10)}"
    replication_regions = var.kiln_regions
  }
  azure_tags = {
    "kiln-build" = var.kiln_build_id
  }
}
build {
  sources = ["source.azure-arm.app"]
}
"#;

/// The stand-in, as a test reads and changes it.
struct Arm {
    http: reqwest::Client,
    info: Value,
    token: String,
}

impl Arm {
    async fn new(svc: &Service) -> Arm {
        kiln::install_crypto_provider();
        let http = reqwest::Client::new();
        let info = svc.info.clone();
        let s = |k: &str| info[k].as_str().expect(k).to_owned();
        let token: Value = http
            .post(format!(
                "{}{}/oauth2/v2.0/token",
                s("authority_host"),
                s("tenant_id")
            ))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &s("client_id")),
                ("client_secret", &s("client_secret")),
                ("scope", "https://management.azure.com/.default"),
            ]))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        let token = token["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        Arm { http, info, token }
    }

    fn s(&self, key: &str) -> String {
        self.info[key].as_str().expect(key).to_owned()
    }

    fn versions_url(&self) -> String {
        format!(
            "{}subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/galleries/{}/images/{}/versions",
            self.s("api_url"),
            self.s("subscription_id"),
            self.s("resource_group"),
            self.s("gallery"),
            self.s("image_definition"),
        )
    }

    /// A version by its full resource ID.
    async fn version(&self, id: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!(
                "{}{}?api-version=2024-03-03",
                self.s("api_url"),
                id.trim_start_matches('/')
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("get version");
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "{}", r.status());
        Some(r.json().await.expect("version"))
    }

    /// Seeds a version through the control API; its resource ID.
    async fn seed(&self, body: Value) -> String {
        let name = body["name"].as_str().expect("name").to_owned();
        let r = self
            .http
            .post(format!("{}image-versions", self.s("control_url")))
            .json(&body)
            .send()
            .await
            .expect("seed");
        assert!(r.status().is_success(), "{:?}", r.text().await);
        let versions = self.versions_url();
        let path = versions.trim_start_matches(&self.s("api_url"));
        format!("/{path}/{name}")
    }

    async fn control(&self, path: &str, body: Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.s("control_url")))
            .json(&body)
            .send()
            .await
            .expect("control");
        assert!(r.status().is_success(), "{path}: {:?}", r.text().await);
    }
}

#[tokio::test]
async fn azure_gallery_versions_are_tagged_deprecated_and_pruned() {
    let packer = CurrentPacker::find().unwrap_or_else(|e| panic!("{e}"));
    let (env, svc) = tokio::join!(Env::start(false), async {
        Service::azure()
            .await
            .unwrap_or_else(|e| panic!("azure: {e}"))
    });
    let arm = Arm::new(&svc).await;
    let regions = ["eastus2", "westeurope"];
    env.namespace("images").await;
    let creds = [
        ("AZURE_TENANT_ID", arm.s("tenant_id")),
        ("AZURE_CLIENT_ID", arm.s("client_id")),
        ("AZURE_CLIENT_SECRET", arm.s("client_secret")),
        // The Entra ID endpoint is the stand-in's, as a sovereign cloud's is.
        ("AZURE_AUTHORITY_HOST", arm.s("authority_host")),
    ];
    let secret: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.aws_secret("images", "azure", &secret).await;
    let cli_env: Vec<(String, String)> = creds
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    // Packer's plugin reads the cloud's endpoints over TLS from the
    // stand-in, whose certificate the test made.
    let ca = arm.s("tls_ca_file");
    let controller = env
        .controller_with_packer_env("c1", &packer, &[("SSL_CERT_FILE", ca.as_str())])
        .await;
    arm.control(
        "images",
        json!({"name": "kiln-source", "location": "westeurope", "osType": "Linux", "hyperVGeneration": "V1"}),
    )
    .await;

    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), "images");
    let provider = json!({
        "type": "azure",
        "regions": regions,
        "endpoint": arm.s("api_url"),
        "azure": {
            "subscriptionId": arm.s("subscription_id"),
            "resourceGroup": arm.s("resource_group"),
            "gallery": {"name": arm.s("gallery"), "imageDefinition": arm.s("image_definition")}
        },
        "credentials": {"secretRef": {"name": "azure"}}
    });
    let mut ib = image_build_for(provider, AZURE_TEMPLATE);
    ib.spec.variables = [
        ("metadata_host".to_owned(), arm.s("metadata_host")),
        (
            "cloud_environment_name".to_owned(),
            arm.s("cloud_environment_name"),
        ),
        ("ssh_port".to_owned(), arm.info["ssh_port"].to_string()),
    ]
    .into();
    let builds = five_builds(&api, &ib, &controller.log).await;

    // One gallery version per build, in both regions under one ID, tagged.
    let ib = api.get("app").await.expect("get");
    let latest = ib
        .status
        .as_ref()
        .and_then(|s| s.latest_image.clone())
        .expect("latest");
    for build in &builds {
        let in_regions: Vec<&str> = build.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(in_regions, regions, "{build:?}");
        assert_eq!(build[0].1, build[1].1, "one version in both regions");
        assert!(
            build[0]
                .1
                .contains("/galleries/kilngallery/images/base/versions/"),
            "{build:?}"
        );
    }
    let version = arm.version(&builds[4][0].1).await.expect("latest version");
    let tags = &version["tags"];
    assert_eq!(tags["kiln-managed"], "true", "{tags}");
    assert_eq!(tags["kiln-namespace"], "images", "{tags}");
    assert_eq!(tags["kiln-name"], "app", "{tags}");
    assert_eq!(
        tags["kiln-build"].as_str(),
        Some(latest.build_id.as_str()),
        "{tags}"
    );

    // Beside kiln's: a version someone else made; one of kiln's the user
    // keeps; and an old one of kiln's that Azure blocks from deletion for
    // another day.
    let foreign = arm
        .seed(
            json!({"name": "0.0.1", "publishedDate": "2026-01-01T00:00:00Z",
                      "targetRegions": regions, "tags": {"team": "web"}}),
        )
        .await;
    let kiln_tags = json!({"kiln-managed": "true", "kiln-namespace": "images", "kiln-name": "app",
                           "kiln-build": "old-1", "kiln-spec": "0000000000000000"});
    let eol = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)).to_string();
    let blocked = arm
        .seed(
            json!({"name": "0.0.2", "publishedDate": "2026-01-02T00:00:00Z",
                      "targetRegions": regions, "tags": kiln_tags,
                      "endOfLifeDate": eol, "blockDeletionBeforeEndOfLife": true}),
        )
        .await;
    let r = arm
        .http
        .patch(format!("{}{}?api-version=2024-03-03", arm.s("api_url"), builds[1][0].1.trim_start_matches('/')))
        .bearer_auth(&arm.token)
        .json(&json!({"tags": {"kiln-keep": "true", "kiln-managed": "true", "kiln-namespace": "images",
                               "kiln-name": "app", "kiln-build": builds_tag(&arm, &builds[1][0].1).await,
                               "kiln-spec": version["tags"]["kiln-spec"]}}))
        .send()
        .await
        .expect("keep");
    assert!(r.status().is_success(), "{:?}", r.status());
    // The PATCH is a long-running operation: follow it, as a client must.
    let operation = r
        .headers()
        .get("azure-asyncoperation")
        .and_then(|v| v.to_str().ok())
        .expect("Azure-AsyncOperation")
        .to_owned();
    wait_until(Duration::from_secs(30), || async {
        let status: Value = arm
            .http
            .get(&operation)
            .bearer_auth(&arm.token)
            .send()
            .await
            .expect("operation")
            .json()
            .await
            .expect("operation json");
        status["status"] == "Succeeded"
    })
    .await;

    let manifest_dir = tempfile::tempdir().expect("tempdir");
    let manifest = manifest_dir.path().join("app.yaml");
    let mut listed_ib = ib.clone();
    listed_ib.metadata.namespace = Some("images".into());
    listed_ib.metadata.managed_fields = None;
    listed_ib.status = None;
    std::fs::write(&manifest, serde_json::to_string(&listed_ib).expect("json")).expect("write");

    // Builds 1 and 3 are beyond keepLast 2; 2 is kept by tag; the blocked
    // one is deprecated but never deleted before its end of life.
    let mut expected: BTreeSet<(String, String)> =
        builds[0].iter().chain(&builds[2]).cloned().collect();
    let with_blocked: BTreeSet<(String, String)> = expected
        .iter()
        .cloned()
        .chain(regions.iter().map(|r| ((*r).to_owned(), blocked.clone())))
        .collect();
    let mut spec = json!({"builds": {"names": ["app"]}, "keepLast": 2,
                          "deprecateAfter": "1s", "deleteAfter": "24h"});
    let planned = dry_run_agrees(&env, &controller, &spec, &manifest, &cli_env).await;
    assert_eq!(
        planned, with_blocked,
        "builds 1 and 3 and the blocked version are deprecated"
    );
    for (_, id) in builds.iter().flatten() {
        let v = arm.version(id).await.expect("version");
        assert!(
            v["properties"]["publishingProfile"]["excludeFromLatest"] != true,
            "a dry run changes nothing"
        );
    }

    let p = enforce(&env, &controller, spec.clone()).await;
    assert_eq!(pairs(&p.status.expect("status").deprecated), with_blocked);
    for (_, id) in &expected {
        let v = arm.version(id).await.expect("version");
        let profile = &v["properties"]["publishingProfile"];
        assert_eq!(profile["excludeFromLatest"], true, "{v}");
        assert!(
            profile["endOfLifeDate"].is_string(),
            "kiln says when it will delete it: {v}"
        );
    }

    // Deleted; the blocked version stays, and the plan says why.
    spec["deleteAfter"] = "3s".into();
    let p = enforce(&env, &controller, spec).await;
    let status = p.status.expect("status");
    assert_eq!(pairs(&status.deleted), expected);
    let kept_blocked: Vec<_> = status
        .retained
        .iter()
        .chain(&status.deprecated)
        .filter(|d| d.image_id == blocked)
        .collect();
    assert!(!kept_blocked.is_empty(), "{status:?}");
    assert!(
        kept_blocked
            .iter()
            .all(|d| d.action != RetentionAction::Delete
                && d.reason
                    .contains("blocks its deletion until its end of life")),
        "{kept_blocked:?}"
    );
    for (_, id) in builds.iter().flatten() {
        let gone = arm.version(id).await.is_none();
        assert_eq!(gone, expected.iter().any(|(_, e)| e == id), "{id}");
    }
    assert!(
        arm.version(&foreign).await.is_some(),
        "the foreign version stays"
    );
    assert!(
        arm.version(&blocked).await.is_some(),
        "the blocked version stays"
    );
    expected.clear();
}

/// An `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `kiln-build` tag on a version.
async fn builds_tag(arm: &Arm, id: &str) -> Value {
    arm.version(id).await.expect("version")["tags"]["kiln-build"].clone()
}

#[tokio::test]
async fn azure_bad_input_gives_named_conditions() {
    let (env, svc) = tokio::join!(Env::start(false), async {
        Service::azure()
            .await
            .unwrap_or_else(|e| panic!("azure: {e}"))
    });
    let arm = Arm::new(&svc).await;
    env.namespace("images").await;
    // A principal with access to another subscription only.
    let other: Value = arm
        .http
        .post(format!("{}principals", arm.s("control_url")))
        .json(&json!({}))
        .send()
        .await
        .expect("principal")
        .json()
        .await
        .expect("json");
    let s = |v: &Value, k: &str| v[k].as_str().expect(k).to_owned();
    let (tenant, client, secret) = (
        arm.s("tenant_id"),
        arm.s("client_id"),
        arm.s("client_secret"),
    );
    let authority = arm.s("authority_host");
    env.aws_secret(
        "images",
        "azure",
        &[
            ("AZURE_TENANT_ID", &tenant),
            ("AZURE_CLIENT_ID", &client),
            ("AZURE_CLIENT_SECRET", &secret),
            ("AZURE_AUTHORITY_HOST", &authority),
        ],
    )
    .await;
    let (other_client, other_secret) = (s(&other, "client_id"), s(&other, "client_secret"));
    env.aws_secret(
        "images",
        "other",
        &[
            ("AZURE_TENANT_ID", &tenant),
            ("AZURE_CLIENT_ID", &other_client),
            ("AZURE_CLIENT_SECRET", &other_secret),
            ("AZURE_AUTHORITY_HOST", &authority),
        ],
    )
    .await;
    let controller = env
        .controller("c1", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), "images");
    let build = |name: &str, secret: &str, gallery: &str| {
        let mut ib = image_build_for(
            json!({
                "type": "azure",
                "regions": ["westeurope"],
                "endpoint": arm.s("api_url"),
                "azure": {
                    "subscriptionId": arm.s("subscription_id"),
                    "resourceGroup": arm.s("resource_group"),
                    "gallery": {"name": gallery, "imageDefinition": arm.s("image_definition")}
                },
                "credentials": {"secretRef": {"name": secret}}
            }),
            AZURE_TEMPLATE,
        );
        ib.metadata.name = Some(name.into());
        ib
    };
    for ib in [
        build("wrong-subscription", "other", &arm.s("gallery")),
        build("no-gallery", "azure", "nosuchgallery"),
    ] {
        api.create(&PostParams::default(), &ib)
            .await
            .expect("create");
    }
    let ib = wait_for(
        &api,
        "wrong-subscription",
        Duration::from_secs(90),
        &controller.log,
        stalled_with("CredentialsInvalid"),
    )
    .await;
    let message = ready_message(&ib);
    assert!(message.contains(&arm.s("subscription_id")), "{message}");
    let ib = wait_for(
        &api,
        "no-gallery",
        Duration::from_secs(90),
        &controller.log,
        stalled_with("ProviderInvalid"),
    )
    .await;
    let message = ready_message(&ib);
    assert!(
        message.contains("spec.provider.azure.gallery.name") && message.contains("nosuchgallery"),
        "{message}"
    );
}

/// Polls `check` until it holds.
async fn wait_until<F, Fut>(limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
