//! GCP end to end, as on AWS: a real control plane, current Packer with its
//! googlecompute plugin (pointed at the stand-in with `custom_endpoints`) and
//! `kiln controller`, against the Compute Engine stand-in that validates every
//! request and response against Google's Discovery document.
//!
//! An ImageBuild goes Ready with its image, labelled as kiln's and in the
//! ImageBuild's family. After five builds an ImagePolicy with keepLast 2
//! plans (dry run), then takes the older images through GCE's own stages,
//! DEPRECATED and OBSOLETE with the newest as replacement, and deletes them:
//! never the latest, a foreign image of the same kind, or one the user
//! labelled `kiln-keep`. `kiln images list` and `kiln prune --dry-run` agree.

mod support;

use std::{collections::BTreeSet, time::Duration};

use kiln::api::ImageBuild;
use kiln_testenv::{CurrentPacker, Service};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use support::{images::*, *};

/// One image from the public Debian family, built in the zone the
/// ImageBuild names, with no instance ever contacted.
const GCE_TEMPLATE: &str = r#"
packer {
  required_plugins {
    googlecompute = {
      source  = "github.com/hashicorp/googlecompute"
      version = ">= 1.2.7"
    }
  }
}
variable "kiln_build_id" { type = string }
variable "kiln_endpoint" { type = string }
variable "kiln_regions" { type = list(string) }
variable "kiln_image_family" { type = string }
variable "kiln_project_id" { type = string }
source "googlecompute" "app" {
  project_id          = var.kiln_project_id
  zone                = var.kiln_regions[0]
  source_image_family = "debian-12"
  image_name          = "app-${var.kiln_build_id}"
  image_family        = var.kiln_image_family
  communicator        = "none"
  custom_endpoints    = { compute = var.kiln_endpoint }
}
build {
  sources = ["source.googlecompute.app"]
}
"#;

/// The stand-in, as a test reads and changes it.
struct Gce {
    http: reqwest::Client,
    api: String,
    token: String,
    control: String,
    project: String,
}

impl Gce {
    fn new(svc: &Service) -> Gce {
        kiln::install_crypto_provider();
        Gce {
            http: reqwest::Client::new(),
            api: svc.get("/api_url").to_owned(),
            token: svc.get("/token").to_owned(),
            control: svc.get("/control_url").to_owned(),
            project: svc.get("/project").to_owned(),
        }
    }

    async fn image(&self, name: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!(
                "{}projects/{}/global/images/{name}",
                self.api, self.project
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("get image");
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "{}", r.status());
        Some(r.json().await.expect("image"))
    }

    /// Seeds an image in the test project, as someone else made it.
    async fn seed(&self, body: Value) {
        let r = self
            .http
            .post(format!("{}/images", self.control))
            .json(&body)
            .send()
            .await
            .expect("seed");
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }

    /// Adds a label, as a person would with `gcloud compute images add-labels`.
    async fn label(&self, name: &str, key: &str, value: &str) {
        let image = self.image(name).await.expect("image");
        let mut labels = image["labels"].as_object().cloned().unwrap_or_default();
        labels.insert(key.into(), value.into());
        let r = self
            .http
            .post(format!(
                "{}projects/{}/global/images/{name}/setLabels",
                self.api, self.project
            ))
            .bearer_auth(&self.token)
            .json(&json!({"labels": labels, "labelFingerprint": image["labelFingerprint"]}))
            .send()
            .await
            .expect("setLabels");
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }

    async fn state_of(&self, name: &str) -> Option<String> {
        let image = self.image(name).await?;
        Some(
            image["deprecated"]["state"]
                .as_str()
                .unwrap_or("ACTIVE")
                .to_owned(),
        )
    }
}

fn names(build: &[Vec<(String, String)>], which: &[usize]) -> BTreeSet<(String, String)> {
    which.iter().flat_map(|i| build[*i].clone()).collect()
}

#[tokio::test]
async fn gce_images_are_labelled_in_a_family_deprecated_in_stages_and_pruned() {
    let packer = CurrentPacker::find().unwrap_or_else(|e| panic!("{e}"));
    let (env, svc) = tokio::join!(Env::start(false), async {
        Service::gce().await.unwrap_or_else(|e| panic!("gce: {e}"))
    });
    let gce = Gce::new(&svc);
    let key = std::fs::read_to_string(svc.get("/credentials_file")).expect("key file");
    env.namespace("images").await;
    env.aws_secret("images", "gcp", &[("GOOGLE_CREDENTIALS", &key)])
        .await;
    let creds: Vec<(String, String)> = vec![("GOOGLE_CREDENTIALS".into(), key.clone())];
    let controller = env.controller_with_packer("c1", &packer).await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), "images");
    let provider = json!({
        "type": "gcp",
        "regions": ["us-central1-a"],
        "endpoint": gce.api,
        "gcp": {"projectId": gce.project, "imageFamily": "app"},
        "credentials": {"secretRef": {"name": "gcp"}}
    });
    let ib = image_build_for(provider, GCE_TEMPLATE);
    let builds = five_builds(&api, &ib, &controller.log).await;

    // One global image per build, labelled as kiln's, in the family.
    let ib = api.get("app").await.expect("get");
    let latest = ib
        .status
        .as_ref()
        .and_then(|s| s.latest_image.clone())
        .expect("latest");
    for build in &builds {
        assert_eq!(build.len(), 1, "{build:?}");
        assert_eq!(build[0].0, "global", "GCE images are global: {build:?}");
    }
    let image = gce.image(&builds[4][0].1).await.expect("latest image");
    assert_eq!(image["family"], "app", "{image}");
    let labels = &image["labels"];
    assert_eq!(labels["kiln-managed"], "true", "{labels}");
    assert_eq!(labels["kiln-namespace"], "images", "{labels}");
    assert_eq!(labels["kiln-name"], "app", "{labels}");
    assert_eq!(
        labels["kiln-build"].as_str(),
        Some(latest.build_id.to_lowercase().as_str()),
        "{labels}"
    );

    // The user keeps the second build's image; someone else has an image
    // in the family without kiln's labels.
    gce.label(&builds[1][0].1, "kiln-keep", "true").await;
    gce.seed(json!({"name": "app-foreign", "family": "app", "creationTimestamp": "2026-01-01T00:00:00Z"}))
        .await;

    let manifest_dir = tempfile::tempdir().expect("tempdir");
    let manifest = manifest_dir.path().join("app.yaml");
    let mut listed_ib = ib.clone();
    listed_ib.metadata.namespace = Some("images".into());
    listed_ib.metadata.managed_fields = None;
    listed_ib.status = None;
    std::fs::write(&manifest, serde_json::to_string(&listed_ib).expect("json")).expect("write");

    // Builds 1 and 3 are beyond keepLast 2 (4 and 5 are kept, 2 is kept by label).
    let expected = names(&builds, &[0, 2]);
    let mut spec = json!({"builds": {"names": ["app"]}, "keepLast": 2,
                          "deprecateAfter": "1s", "deleteAfter": "24h"});
    let planned = dry_run_agrees(&env, &controller, &spec, &manifest, &creds).await;
    assert_eq!(planned, expected, "builds 1 and 3 go; 2 is kept");
    for (_, name) in builds.iter().flatten() {
        assert_eq!(
            gce.state_of(name).await.as_deref(),
            Some("ACTIVE"),
            "a dry run changes nothing"
        );
    }

    // DEPRECATED, with the newest image as replacement.
    let p = enforce(&env, &controller, spec.clone()).await;
    assert_eq!(pairs(&p.status.expect("status").deprecated), expected);
    for (_, name) in expected.iter() {
        let image = gce.image(name).await.expect("image");
        assert_eq!(image["deprecated"]["state"], "DEPRECATED", "{image}");
        let replacement = image["deprecated"]["replacement"]
            .as_str()
            .unwrap_or_default();
        assert!(
            replacement.ends_with(&format!("/global/images/{}", builds[4][0].1)),
            "{image}"
        );
    }

    // Then OBSOLETE.
    spec["obsoleteAfter"] = "2s".into();
    let p = enforce(&env, &controller, spec.clone()).await;
    let status = p.status.expect("status");
    assert_eq!(pairs(&status.deprecated), expected);
    assert!(
        status
            .deprecated
            .iter()
            .all(|d| d.action == kiln::api::RetentionAction::Obsolete),
        "{:?}",
        status.deprecated
    );
    for (_, name) in expected.iter() {
        assert_eq!(
            gce.state_of(name).await.as_deref(),
            Some("OBSOLETE"),
            "{name}"
        );
    }

    // Then deleted.
    spec["deleteAfter"] = "3s".into();
    let p = enforce(&env, &controller, spec).await;
    assert_eq!(pairs(&p.status.expect("status").deleted), expected);
    for (_, name) in builds.iter().flatten() {
        let gone = gce.image(name).await.is_none();
        assert_eq!(gone, expected.iter().any(|(_, e)| e == name), "{name}");
    }
    assert!(
        gce.image("app-foreign").await.is_some(),
        "the foreign image stays"
    );
    assert_eq!(
        gce.state_of(&builds[4][0].1).await.as_deref(),
        Some("ACTIVE"),
        "the latest stays, untouched"
    );
}

#[tokio::test]
async fn gce_bad_input_gives_named_conditions() {
    let packer = CurrentPacker::find().unwrap_or_else(|e| panic!("{e}"));
    let (env, svc) = tokio::join!(Env::start(false), async {
        Service::gce().await.unwrap_or_else(|e| panic!("gce: {e}"))
    });
    let gce = Gce::new(&svc);
    let key = std::fs::read_to_string(svc.get("/credentials_file")).expect("key file");
    env.namespace("images").await;
    env.aws_secret("images", "gcp", &[("GOOGLE_CREDENTIALS", &key)])
        .await;
    let controller = env.controller_with_packer("c1", &packer).await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), "images");
    let provider = |project: &str| {
        json!({
            "type": "gcp",
            "regions": ["us-central1-a"],
            "endpoint": gce.api,
            "gcp": {"projectId": project},
            "credentials": {"secretRef": {"name": "gcp"}}
        })
    };

    // A key for another project: the stand-in's key belongs to kiln-test,
    // and kiln-other exists but lets it do nothing.
    let mut wrong = image_build_for(provider("kiln-other"), GCE_TEMPLATE);
    wrong.metadata.name = Some("wrong-project".into());
    // A name GCP labels cannot hold (64 characters).
    let long_name = format!("a{}", "b".repeat(63));
    let mut long = image_build_for(provider(&gce.project), GCE_TEMPLATE);
    long.metadata.name = Some(long_name.clone());
    for ib in [&wrong, &long] {
        api.create(&PostParams::default(), ib)
            .await
            .expect("create");
    }
    let ib = wait_for(
        &api,
        "wrong-project",
        Duration::from_secs(90),
        &controller.log,
        stalled_with("CredentialsInvalid"),
    )
    .await;
    let message = ready_message(&ib);
    assert!(
        message.contains("kiln-other") && message.contains("GOOGLE_CREDENTIALS"),
        "{message}"
    );
    // A project that does not exist is a setting to fix.
    let mut missing = image_build_for(provider("no-such-project"), GCE_TEMPLATE);
    missing.metadata.name = Some("no-project".into());
    api.create(&PostParams::default(), &missing)
        .await
        .expect("create");
    let ib = wait_for(
        &api,
        "no-project",
        Duration::from_secs(90),
        &controller.log,
        stalled_with("ProviderInvalid"),
    )
    .await;
    let message = ready_message(&ib);
    assert!(message.contains("spec.provider.gcp.projectId"), "{message}");
    let ib = wait_for(
        &api,
        &long_name,
        Duration::from_secs(90),
        &controller.log,
        stalled_with("InvalidName"),
    )
    .await;
    let message = ready_message(&ib);
    assert!(
        message.contains("metadata.name") && message.contains("63"),
        "{message}"
    );

    // Neither built anything.
    let state: Value = reqwest::get(format!("{}/state", gce.control))
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    let instances = state["instances"].as_array().map_or(0, Vec::len)
        + state["instances"]
            .as_object()
            .map_or(0, serde_json::Map::len);
    assert_eq!(instances, 0, "no build started: {}", state["instances"]);

    // An operation that fails halfway: the build's first operation (its
    // instance) ends in error, so the build fails, and nothing is recorded.
    let r = reqwest::Client::new()
        .post(format!("{}/fail-operations", gce.control))
        .json(&json!({"count": 1, "code": "QUOTA_EXCEEDED", "message": "Quota 'IMAGES' exceeded.", "http": 403}))
        .send()
        .await
        .expect("fail-operations");
    assert!(r.status().is_success());
    let mut failing = image_build_for(provider(&gce.project), GCE_TEMPLATE);
    failing.metadata.name = Some("halfway".into());
    api.create(&PostParams::default(), &failing)
        .await
        .expect("create");
    let ib = wait_for(
        &api,
        "halfway",
        Duration::from_secs(240),
        &controller.log,
        |ib| {
            ib.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "BuildFailed")
            })
        },
    )
    .await;
    assert!(
        ib.status
            .as_ref()
            .and_then(|s| s.latest_image.as_ref())
            .is_none(),
        "a failed operation records no image"
    );
}
