//! OpenStack and DigitalOcean end to end, as on AWS: a real control plane,
//! Debian's Packer and `kiln controller`, against real Keystone and Glance
//! (with kiln's Nova stand-in) and against the DigitalOcean stand-in that
//! validates every request and response against DigitalOcean's spec.
//!
//! For each cloud: an ImageBuild in two regions goes Ready with kiln's
//! ownership at the provider; after five builds an ImagePolicy with
//! keepLast 2 plans (dry run, changing nothing), then hides or deletes
//! exactly the older images, never the latest, a foreign image of the same
//! name or one the user protected; `kiln images list` and `kiln prune
//! --dry-run` show the same.

mod support;

use std::{collections::BTreeSet, time::Duration};

use kiln::api::{ImageBuild, ImagePolicy, RetentionAction};
use kiln_testenv::Service;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{images::*, *};

/// Two openstack sources, one per region: Packer's openstack builder makes
/// its image in one region, and reports only the image ID.
const OPENSTACK_TEMPLATE: &str = r#"
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

/// One droplet snapshot, transferred to every region.
const DIGITALOCEAN_TEMPLATE: &str = r#"
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

// ---------------------------------------------------------------- OpenStack

struct Glance {
    http: reqwest::Client,
    token: String,
    urls: serde_json::Map<String, Value>,
}

impl Glance {
    async fn new(stack: &Service) -> Glance {
        kiln::install_crypto_provider();
        // Glance (eventlet, single-threaded here) may close an idle
        // keep-alive connection just as it is reused: one connection a call.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
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
        let token = response
            .headers()
            .get("x-subject-token")
            .and_then(|t| t.to_str().ok())
            .expect("token")
            .to_owned();
        let urls = stack.info["glance"].as_object().expect("glance").clone();
        Glance { http, token, urls }
    }

    fn url(&self, region: &str, path: &str) -> String {
        format!("{}{path}", self.urls[region].as_str().expect("url"))
    }

    /// An active image named `name` in `region`; its ID.
    async fn create(&self, region: &str, name: &str) -> String {
        let created: Value = self
            .http
            .post(self.url(region, "/v2/images"))
            .header("X-Auth-Token", &self.token)
            .json(&json!({"name": name, "disk_format": "raw", "container_format": "bare"}))
            .send()
            .await
            .expect("create image")
            .json()
            .await
            .expect("image");
        let id = created["id"].as_str().expect("id").to_owned();
        let uploaded = self
            .http
            .put(self.url(region, &format!("/v2/images/{id}/file")))
            .header("X-Auth-Token", &self.token)
            .header("Content-Type", "application/octet-stream")
            .body(vec![7u8; 4096])
            .send()
            .await
            .expect("upload");
        assert_eq!(uploaded.status(), 204);
        id
    }

    async fn get(&self, region: &str, id: &str) -> Option<Value> {
        let r = self
            .http
            .get(self.url(region, &format!("/v2/images/{id}")))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .expect("get image");
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "{}", r.status());
        Some(r.json().await.expect("image"))
    }

    /// IDs in Glance's default listing (hidden images are not in it).
    async fn default_listing(&self, region: &str) -> BTreeSet<String> {
        let listed: Value = self
            .http
            .get(self.url(region, "/v2/images?limit=1000"))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("images");
        listed["images"]
            .as_array()
            .expect("images")
            .iter()
            .filter_map(|i| i["id"].as_str().map(str::to_owned))
            .collect()
    }

    async fn set_property(&self, region: &str, id: &str, key: &str, value: &str) {
        let r = self
            .http
            .patch(self.url(region, &format!("/v2/images/{id}")))
            .header("X-Auth-Token", &self.token)
            .header(
                "Content-Type",
                "application/openstack-images-v2.1-json-patch",
            )
            .body(json!([{"op": "add", "path": format!("/{key}"), "value": value}]).to_string())
            .send()
            .await
            .expect("patch");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
}

#[tokio::test]
async fn openstack_builds_are_owned_listed_hidden_and_pruned() {
    let (env, stack) = tokio::join!(Env::start(false), async {
        Service::openstack()
            .await
            .unwrap_or_else(|e| panic!("openstack: {e}"))
    });
    let glance = Glance::new(&stack).await;
    let regions = ["RegionOne", "RegionTwo"];
    for region in regions {
        glance.create(region, "cirros").await;
    }
    env.namespace("images").await;
    let creds: Vec<(String, String)> = [
        ("OS_AUTH_URL", stack.get("/auth_url")),
        ("OS_APPLICATION_CREDENTIAL_ID", stack.get("/app_cred_id")),
        (
            "OS_APPLICATION_CREDENTIAL_SECRET",
            stack.get("/app_cred_secret"),
        ),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let pairs_ref: Vec<(&str, &str)> = creds
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.aws_secret("images", "openstack", &pairs_ref).await;
    let controller = env
        .controller("c1", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), "images");
    let provider = json!({
        "type": "openstack",
        "regions": regions,
        "credentials": {"secretRef": {"name": "openstack"}}
    });
    let ib = image_build_for(provider.clone(), OPENSTACK_TEMPLATE);
    let builds = five_builds(&api, &ib, &controller.log).await;

    // Each build has an image in each region, found where Packer made it,
    // active, with kiln's owner properties and tag.
    let ib = api.get("app").await.expect("get");
    let latest = ib
        .status
        .as_ref()
        .and_then(|s| s.latest_image.clone())
        .expect("latest");
    for build in &builds {
        let in_regions: Vec<&str> = build.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(in_regions, regions, "{build:?}");
    }
    for (region, id) in &builds[4] {
        let image = glance.get(region, id).await.expect("image in its region");
        assert_eq!(image["status"], "active");
        assert_eq!(image["kiln_managed_by"], "kiln", "{image}");
        assert_eq!(image["kiln_namespace"], "images");
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

    // The user protects the second build's images; someone else makes an
    // image with the first build's name.
    for (region, id) in &builds[1] {
        glance
            .set_property(region, id, "kiln_keep", "rollback")
            .await;
    }
    let first_name = glance
        .get("RegionOne", &builds[0][0].1)
        .await
        .expect("image")["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let foreign = glance.create("RegionOne", &first_name).await;

    let manifest_dir = tempfile::tempdir().expect("tempdir");
    let manifest = manifest_dir.path().join("app.yaml");
    let mut listed_ib = ib.clone();
    listed_ib.metadata.namespace = Some("images".into());
    listed_ib.metadata.managed_fields = None;
    listed_ib.status = None;
    std::fs::write(&manifest, serde_json::to_string(&listed_ib).expect("json")).expect("write");

    // Hide what keepLast 2 supersedes, delete it much later.
    let spec = json!({
        "builds": {"names": ["app"]},
        "keepLast": 2,
        "deprecateAfter": "0s",
        "deleteAfter": "720h"
    });
    let planned = dry_run_agrees(&env, &controller, &spec, &manifest, &creds).await;
    let expected: BTreeSet<(String, String)> =
        builds[0].iter().chain(&builds[2]).cloned().collect();
    assert_eq!(planned, expected, "builds 1 and 3 go; 2 is protected");
    for (region, id) in builds.iter().flatten() {
        let image = glance
            .get(region, id)
            .await
            .expect("a dry run deletes nothing");
        assert_eq!(image["os_hidden"], false, "a dry run hides nothing");
    }

    let p = enforce(&env, &controller, spec).await;
    let status = p.status.expect("status");
    assert_eq!(pairs(&status.deprecated), expected, "{status:?}");
    for region in regions {
        let visible = glance.default_listing(region).await;
        for (r, id) in builds.iter().flatten().filter(|(r, _)| r == region) {
            let hidden = expected.contains(&(r.clone(), id.clone()));
            assert_eq!(!visible.contains(id), hidden, "{r}/{id} hidden: {hidden}");
            let image = glance.get(r, id).await.expect("hidden images stay");
            assert_eq!(image["os_hidden"], hidden);
        }
    }

    // Deleting at once now: the hidden images go (listing finds them), the
    // rest stays.
    let spec = json!({"builds": {"names": ["app"]}, "keepLast": 2, "deprecateAfter": null, "deleteAfter": null});
    let p = enforce(&env, &controller, spec).await;
    let status = p.status.expect("status");
    let deleted: BTreeSet<(String, String)> = status
        .deleted
        .iter()
        .filter(|d| d.action == RetentionAction::Delete)
        .map(|d| (d.region.clone(), d.image_id.clone()))
        .collect();
    assert_eq!(deleted, expected, "{status:?}");
    for (region, id) in builds.iter().flatten() {
        let gone = glance.get(region, id).await.is_none();
        assert_eq!(
            gone,
            expected.contains(&(region.clone(), id.clone())),
            "{region}/{id}"
        );
    }
    assert!(
        glance.get("RegionOne", &foreign).await.is_some(),
        "the foreign image stays"
    );
    for (region, id) in &builds[4] {
        assert!(glance.get(region, id).await.is_some(), "the latest stays");
    }
}

// ------------------------------------------------------------ DigitalOcean

struct DigitalOcean {
    http: reqwest::Client,
    api: String,
    token: String,
    control: String,
}

impl DigitalOcean {
    fn new(svc: &Service) -> DigitalOcean {
        kiln::install_crypto_provider();
        DigitalOcean {
            http: reqwest::Client::new(),
            api: svc.get("/api_url").to_owned(),
            token: svc.get("/token").to_owned(),
            control: svc.get("/control_url").to_owned(),
        }
    }

    async fn image(&self, id: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/v2/images/{id}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("get image");
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "{}", r.status());
        let body: Value = r.json().await.expect("image");
        Some(body["image"].clone())
    }

    async fn tag(&self, id: &str, tag: &str) {
        let r = self
            .http
            .post(format!("{}/v2/tags", self.api))
            .bearer_auth(&self.token)
            .json(&json!({ "name": tag }))
            .send()
            .await
            .expect("create tag");
        assert!(r.status().is_success(), "{}", r.status());
        let r = self
            .http
            .post(format!("{}/v2/tags/{tag}/resources", self.api))
            .bearer_auth(&self.token)
            .json(&json!({"resources": [{"resource_id": id, "resource_type": "image"}]}))
            .send()
            .await
            .expect("tag image");
        assert_eq!(r.status(), 204);
    }

    async fn seed(&self, name: &str, regions: &[&str]) -> String {
        let body: Value = self
            .http
            .post(format!("{}/images", self.control))
            .json(&json!({"name": name, "regions": regions}))
            .send()
            .await
            .expect("seed")
            .json()
            .await
            .expect("seeded");
        body["image"]["id"].to_string()
    }
}

#[tokio::test]
async fn digitalocean_snapshots_are_owned_listed_and_pruned() {
    let (env, svc) = tokio::join!(Env::start(false), async {
        Service::digitalocean()
            .await
            .unwrap_or_else(|e| panic!("digitalocean: {e}"))
    });
    let cloud = DigitalOcean::new(&svc);
    let regions = ["nyc3", "sfo3"];
    env.namespace("images").await;
    // Packer 1.6.6 reads DIGITALOCEAN_API_TOKEN; kiln reads either name.
    let creds: Vec<(String, String)> = vec![("DIGITALOCEAN_API_TOKEN".into(), cloud.token.clone())];
    env.aws_secret("images", "do", &[("DIGITALOCEAN_API_TOKEN", &cloud.token)])
        .await;
    let controller = env
        .controller("c1", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), "images");
    let provider = json!({
        "type": "digitalocean",
        "regions": regions,
        "endpoint": cloud.api,
        "credentials": {"secretRef": {"name": "do"}}
    });
    let ib = image_build_for(provider, DIGITALOCEAN_TEMPLATE);
    let builds = five_builds(&api, &ib, &controller.log).await;

    // One snapshot per build, in both regions, tagged as kiln's.
    let ib = api.get("app").await.expect("get");
    let latest = ib
        .status
        .as_ref()
        .and_then(|s| s.latest_image.clone())
        .expect("latest");
    for build in &builds {
        let in_regions: Vec<&str> = build.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(in_regions, regions, "{build:?}");
        assert_eq!(build[0].1, build[1].1, "one snapshot in both regions");
    }
    let snapshot = cloud.image(&builds[4][0].1).await.expect("snapshot");
    let tags: Vec<&str> = snapshot["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "kiln:managed".to_owned(),
        "kiln:owner:images:app".to_owned(),
        format!("kiln:build:{}", latest.build_id),
    ] {
        assert!(tags.contains(&want.as_str()), "{want} in {tags:?}");
    }
    let in_regions: BTreeSet<&str> = snapshot["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(in_regions, regions.into_iter().collect());

    // The user protects the second build's snapshot; someone else has a
    // snapshot named as the first.
    cloud.tag(&builds[1][0].1, "kiln:keep").await;
    let first_name = cloud.image(&builds[0][0].1).await.expect("snapshot")["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let foreign = cloud.seed(&first_name, &regions).await;

    let manifest_dir = tempfile::tempdir().expect("tempdir");
    let manifest = manifest_dir.path().join("app.yaml");
    let mut listed_ib = ib.clone();
    listed_ib.metadata.namespace = Some("images".into());
    listed_ib.metadata.managed_fields = None;
    listed_ib.status = None;
    std::fs::write(&manifest, serde_json::to_string(&listed_ib).expect("json")).expect("write");

    let spec = json!({"builds": {"names": ["app"]}, "keepLast": 2});
    let planned = dry_run_agrees(&env, &controller, &spec, &manifest, &creds).await;
    let expected: BTreeSet<(String, String)> =
        builds[0].iter().chain(&builds[2]).cloned().collect();
    assert_eq!(planned, expected, "builds 1 and 3 go; 2 is protected");
    for (_, id) in builds.iter().flatten() {
        assert!(cloud.image(id).await.is_some(), "a dry run deletes nothing");
    }

    // A policy that asks for deprecation is refused by name: DigitalOcean
    // has none.
    let policies: Api<ImagePolicy> = Api::namespaced(env.client.clone(), "images");
    policies
        .create(
            &PostParams::default(),
            &policy(json!({"builds": {"names": ["app"]}, "keepLast": 2, "deprecateAfter": "1h", "deleteAfter": "24h"}))
                .tap_name("staged"),
        )
        .await
        .expect("create staged policy");
    let staged = wait_for(
        &policies,
        "staged",
        Duration::from_secs(60),
        &controller.log,
        |p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Stalled" && c.status == "True" && c.reason == "PruneRefused"
                })
            })
        },
    )
    .await;
    let message = staged
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("spec.deprecateAfter"), "{message}");

    let p = enforce(&env, &controller, spec).await;
    let status = p.status.expect("status");
    assert_eq!(pairs(&status.deleted), expected, "{status:?}");
    for (_, id) in builds.iter().flatten() {
        let gone = cloud.image(id).await.is_none();
        let planned_id = expected.iter().any(|(_, e)| e == id);
        assert_eq!(gone, planned_id, "{id}");
    }
    assert!(
        cloud.image(&foreign).await.is_some(),
        "the foreign snapshot stays"
    );
    assert!(
        cloud.image(&builds[4][0].1).await.is_some(),
        "the latest stays"
    );
}

// --------------------------------------------------------------- bad input

fn reason_of(ib: &ImageBuild, type_: &str) -> Option<(String, String, String)> {
    ib.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn has(ib: &ImageBuild, type_: &str, reason: &str) -> bool {
    reason_of(ib, type_).is_some_and(|(s, r, _)| s == "True" && r == reason)
}

/// Each cloud's bad input is a named condition, never a crash, and a built
/// image is never lost: refused credentials, an auth URL that is not
/// Keystone and unknown regions stall; a
/// token that may read but not tag keeps the build until the Secret is
/// fixed, then records the same image; an exhausted rate limit is
/// Reconciling until DigitalOcean answers again.
#[tokio::test]
async fn bad_input_gives_named_conditions_and_loses_no_image() {
    let (env, stack, svc) = tokio::join!(
        Env::start(false),
        async {
            Service::openstack()
                .await
                .unwrap_or_else(|e| panic!("openstack: {e}"))
        },
        async {
            Service::digitalocean()
                .await
                .unwrap_or_else(|e| panic!("digitalocean: {e}"))
        }
    );
    env.namespace("images").await;
    let controller = env
        .controller("c1", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), "images");
    let limit = Duration::from_secs(120);

    // OpenStack: Keystone refuses the application credential (401).
    env.aws_secret(
        "images",
        "os-wrong",
        &[
            ("OS_AUTH_URL", stack.get("/auth_url")),
            ("OS_APPLICATION_CREDENTIAL_ID", stack.get("/app_cred_id")),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "not-the-secret"),
        ],
    )
    .await;
    let mut wrong = image_build_for(
        json!({"type": "openstack", "regions": ["RegionOne"], "credentials": {"secretRef": {"name": "os-wrong"}}}),
        OPENSTACK_TEMPLATE,
    );
    wrong.metadata.name = Some("wrong-secret".into());
    api.create(&PostParams::default(), &wrong)
        .await
        .expect("create");
    let ib = wait_for(&api, "wrong-secret", limit, &controller.log, |ib| {
        has(ib, "Stalled", "CredentialsInvalid")
    })
    .await;
    let (_, _, message) = reason_of(&ib, "Ready").expect("Ready");
    assert!(
        message.contains("refused the credentials")
            && message.contains("spec.provider.credentials.secretRef"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"), "{message}");

    // OpenStack: a region the catalogue lacks.
    env.aws_secret(
        "images",
        "os",
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
    let mut nowhere = image_build_for(
        json!({"type": "openstack", "regions": ["RegionOne", "RegionThree"], "credentials": {"secretRef": {"name": "os"}}}),
        OPENSTACK_TEMPLATE,
    );
    nowhere.metadata.name = Some("no-such-region".into());
    api.create(&PostParams::default(), &nowhere)
        .await
        .expect("create");
    let ib = wait_for(&api, "no-such-region", limit, &controller.log, |ib| {
        has(ib, "Stalled", "InvalidRegion")
    })
    .await;
    let (_, _, message) = reason_of(&ib, "Ready").expect("Ready");
    assert!(
        message.contains("'RegionThree'") && message.contains("RegionOne, RegionTwo"),
        "{message}"
    );

    // OpenStack: an auth URL that is not Keystone (here, Glance's).
    let mut not_keystone = image_build_for(
        json!({"type": "openstack", "regions": ["RegionOne"],
               "endpoint": format!("{}/v3", stack.get("/glance/RegionOne")),
               "credentials": {"secretRef": {"name": "os"}}}),
        OPENSTACK_TEMPLATE,
    );
    not_keystone.metadata.name = Some("not-keystone".into());
    api.create(&PostParams::default(), &not_keystone)
        .await
        .expect("create");
    let ib = wait_for(&api, "not-keystone", limit, &controller.log, |ib| {
        has(ib, "Stalled", "ProviderInvalid")
    })
    .await;
    let (_, _, message) = reason_of(&ib, "Ready").expect("Ready");
    assert!(
        message.starts_with("spec.provider.endpoint:") && message.contains("not Keystone"),
        "{message}"
    );

    // DigitalOcean: Packer builds with a full token, while the token kiln
    // reads may not tag (403). The snapshot is kept in the build, and
    // recorded once the Secret is fixed: not lost, not built twice.
    let cloud = DigitalOcean::new(&svc);
    let readonly = svc.get("/readonly_token").to_owned();
    env.aws_secret(
        "images",
        "do-mixed",
        &[
            ("DIGITALOCEAN_API_TOKEN", cloud.token.as_str()),
            ("DIGITALOCEAN_TOKEN", readonly.as_str()),
        ],
    )
    .await;
    let mut mixed = image_build_for(
        json!({"type": "digitalocean", "regions": ["nyc3"], "endpoint": cloud.api, "credentials": {"secretRef": {"name": "do-mixed"}}}),
        DIGITALOCEAN_TEMPLATE,
    );
    mixed.metadata.name = Some("read-only".into());
    api.create(&PostParams::default(), &mixed)
        .await
        .expect("create");
    let ib = wait_for(&api, "read-only", BUILD_TIMEOUT, &controller.log, |ib| {
        has(ib, "Stalled", "CredentialsInvalid")
    })
    .await;
    let status = ib.status.clone().expect("status");
    let kept = status
        .current_build
        .clone()
        .expect("the build stays current");
    let (_, _, message) = reason_of(&ib, "Ready").expect("Ready");
    assert!(message.contains("lacks write scope"), "{message}");
    assert!(!message.contains(&readonly), "{message}");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.client.clone(), "images")
        .patch(
            "do-mixed",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"DIGITALOCEAN_TOKEN": cloud.token}})),
        )
        .await
        .expect("fix the Secret");
    let ib = wait_for(&api, "read-only", limit, &controller.log, is_ready).await;
    let status = ib.status.expect("status");
    let latest = status.latest_image.expect("latest");
    assert_eq!(latest.build_id, kept.build_id, "the same build, recorded");
    assert_eq!(status.history.len(), 1, "built once: {:?}", status.history);
    let snapshot = cloud
        .image(&latest.artifacts[0].image_id)
        .await
        .expect("snapshot");
    assert!(
        snapshot["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("kiln:owner:images:read-only"))),
        "{snapshot}"
    );

    // DigitalOcean: an exhausted rate limit is Reconciling, then passes.
    let http = reqwest::Client::new();
    let storm = |count: u32| {
        let http = http.clone();
        let url = format!("{}/ratelimit", cloud.control);
        async move {
            let r = http
                .post(url)
                .json(&json!({"count": count, "retry_after": 1}))
                .send()
                .await
                .expect("control");
            assert!(r.status().is_success());
        }
    };
    env.aws_secret(
        "images",
        "do",
        &[("DIGITALOCEAN_API_TOKEN", cloud.token.as_str())],
    )
    .await;
    storm(100_000).await;
    let mut limited = image_build_for(
        json!({"type": "digitalocean", "regions": ["nyc3"], "endpoint": cloud.api, "credentials": {"secretRef": {"name": "do"}}}),
        DIGITALOCEAN_TEMPLATE,
    );
    limited.metadata.name = Some("rate-limited".into());
    api.create(&PostParams::default(), &limited)
        .await
        .expect("create");
    let ib = wait_for(&api, "rate-limited", limit, &controller.log, |ib| {
        has(ib, "Reconciling", "ProviderUnavailable")
    })
    .await;
    let (_, _, message) = reason_of(&ib, "Ready").expect("Ready");
    assert!(message.contains("rate limit"), "{message}");
    assert!(!has(&ib, "Stalled", "ProviderUnavailable"));
    storm(0).await;
    wait_for(
        &api,
        "rate-limited",
        BUILD_TIMEOUT,
        &controller.log,
        is_ready,
    )
    .await;
}
