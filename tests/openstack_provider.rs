//! The OpenStack provider against real Keystone and real Glance (one per
//! region, `hack/openstack`): authentication and its failures, claims that
//! find an image in another region than Packer said, and listing, hiding and
//! deleting kiln's images.

use std::time::Duration;

use jiff::Timestamp;
use kiln::{
    api::RegionArtifact,
    provider::{
        Deprecation, ImageProvider, Owner, ProviderError,
        factory::Credentials,
        openstack::{self, OpenStack},
    },
};
use kiln_testenv::Service;
use serde_json::{Value, json};

/// The stack, with a token of the `kiln` user to set up images as a user
/// would (with the Glance API, not through the provider).
struct Cloud {
    stack: Service,
    http: reqwest::Client,
    token: String,
}

impl Cloud {
    async fn start() -> Cloud {
        let stack = Service::openstack()
            .await
            .unwrap_or_else(|e| panic!("openstack: {e}"));
        kiln::install_crypto_provider();
        let http = reqwest::Client::new();
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
        let token = response.headers()["x-subject-token"]
            .to_str()
            .expect("token")
            .to_owned();
        Cloud { stack, http, token }
    }

    fn app_credential(&self) -> Credentials {
        Credentials::from([
            ("OS_AUTH_URL".into(), self.stack.get("/auth_url").into()),
            (
                "OS_APPLICATION_CREDENTIAL_ID".into(),
                self.stack.get("/app_cred_id").into(),
            ),
            (
                "OS_APPLICATION_CREDENTIAL_SECRET".into(),
                self.stack.get("/app_cred_secret").into(),
            ),
        ])
    }

    fn provider(&self) -> OpenStack {
        openstack::from_credentials(None, &self.app_credential())
    }

    fn glance(&self, region: &str) -> String {
        self.stack.get(&format!("/glance/{region}")).to_owned()
    }

    /// Creates an image (`extra`: properties, tags, protected); with
    /// `data`, uploads it (the image becomes active).
    async fn create(&self, region: &str, name: &str, extra: Value, data: bool) -> String {
        let mut body = json!({"name": name, "disk_format": "raw", "container_format": "bare"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let glance = self.glance(region);
        let created: Value = self
            .http
            .post(format!("{glance}/v2/images"))
            .header("x-auth-token", &self.token)
            .json(&body)
            .send()
            .await
            .expect("Glance")
            .error_for_status()
            .expect("image created")
            .json()
            .await
            .expect("JSON");
        let id = created["id"].as_str().expect("id").to_owned();
        if data {
            let status = self
                .http
                .put(format!("{glance}/v2/images/{id}/file"))
                .header("x-auth-token", &self.token)
                .header("content-type", "application/octet-stream")
                .body(format!("kiln test image {name}\n"))
                .send()
                .await
                .expect("upload")
                .status();
            assert_eq!(status, 204, "upload {name}");
            self.wait_for(region, &id, |i| i["status"] == "active")
                .await;
        }
        id
    }

    /// GET /v2/images/{id}: status and body.
    async fn image(&self, region: &str, id: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/v2/images/{id}", self.glance(region)))
            .header("x-auth-token", &self.token)
            .send()
            .await
            .expect("Glance");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls an image until `ready` holds (at most 30 s).
    async fn wait_for(&self, region: &str, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, image) = self.image(region, id).await;
            if status == 200 && ready(&image) {
                return image;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} in {region}: {status} {image}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// IDs in Glance's default listing for a query.
    async fn listed(&self, region: &str, query: &str) -> Vec<String> {
        let page: Value = self
            .http
            .get(format!("{}/v2/images?{query}", self.glance(region)))
            .header("x-auth-token", &self.token)
            .send()
            .await
            .expect("Glance")
            .json()
            .await
            .expect("JSON");
        page["images"]
            .as_array()
            .expect("images")
            .iter()
            .filter_map(|i| i["id"].as_str().map(str::to_owned))
            .collect()
    }
}

fn owner(image_build: &str, build_id: &str) -> Owner {
    Owner {
        namespace: "team".into(),
        image_build: image_build.into(),
        build_id: build_id.into(),
        spec_hash: "spec-1".into(),
    }
}

/// What claim would have written, for images made directly.
fn owned_by(image_build: &str, build_id: &str) -> Value {
    json!({
        "kiln_managed_by": "kiln", "kiln_namespace": "team",
        "kiln_image_build": image_build, "kiln_build_id": build_id,
        "kiln_spec_hash": "spec-1", "tags": ["kiln"],
    })
}

fn invalid(result: Result<(), ProviderError>) -> String {
    match result {
        Err(ProviderError::Invalid(m)) => m,
        other => panic!("wanted Invalid, got {other:?}"),
    }
}

/// Settings that cannot work: the ImageBuild stalls as ProviderInvalid.
fn misconfigured(result: Result<(), ProviderError>) -> String {
    match result {
        Err(ProviderError::Misconfigured(m)) => m,
        other => panic!("wanted Misconfigured, got {other:?}"),
    }
}

/// Refused credentials: the ImageBuild stalls as CredentialsInvalid.
fn unauthorized(result: Result<(), ProviderError>) -> String {
    match result {
        Err(ProviderError::Unauthorized(m)) => m,
        other => panic!("wanted Unauthorized, got {other:?}"),
    }
}

/// Waits until the clock is past `t`'s second: Glance's `created_at` has
/// one-second resolution, and the order of images is under test.
async fn next_second(t: Timestamp) {
    while Timestamp::now().as_second() <= t.as_second() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn authenticates_checks_regions_and_claims_where_the_image_is() {
    let cloud = Cloud::start().await;
    let regions = ["RegionOne".to_owned(), "RegionTwo".to_owned()];

    // --- Authentication.
    let os = cloud.provider();
    os.check_regions(&regions)
        .await
        .expect("application credential");
    let after_one = os.api_calls();
    os.check_regions(&regions[..1]).await.expect("again");
    assert_eq!(os.api_calls(), after_one, "the token is reused");
    let debug = format!("{os:?}");
    assert!(
        !debug.contains(cloud.stack.get("/app_cred_secret")),
        "{debug}"
    );

    // A password, with an auth URL without /v3 and a project by name.
    let root = cloud
        .stack
        .get("/auth_url")
        .trim_end_matches("/v3")
        .to_owned();
    let password = Credentials::from([
        ("OS_AUTH_URL".into(), format!("{root}/")),
        ("OS_USERNAME".into(), cloud.stack.get("/username").into()),
        ("OS_PASSWORD".into(), cloud.stack.get("/password").into()),
        ("OS_PROJECT_NAME".into(), cloud.stack.get("/project").into()),
        ("OS_USER_DOMAIN_NAME".into(), "Default".into()),
        ("OS_ENDPOINT_TYPE".into(), "publicURL".into()),
    ]);
    openstack::from_credentials(None, &password)
        .check_regions(&regions)
        .await
        .expect("password");

    // Refused credentials name the Secret and the method, never the secret.
    let mut wrong = cloud.app_credential();
    wrong.insert(
        "OS_APPLICATION_CREDENTIAL_SECRET".into(),
        "not-the-secret".into(),
    );
    let message = unauthorized(
        openstack::from_credentials(None, &wrong)
            .check_regions(&regions)
            .await,
    );
    assert!(
        message.contains("spec.provider.credentials.secretRef")
            && message.contains("application credential")
            && message.contains("refused"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"), "{message}");
    let mut wrong = password.clone();
    wrong.insert("OS_PASSWORD".into(), "hunter2".into());
    let message = unauthorized(
        openstack::from_credentials(None, &wrong)
            .check_regions(&regions)
            .await,
    );
    assert!(
        message.contains("password of user 'kiln'") && !message.contains("hunter2"),
        "{message}"
    );

    // A region the catalogue's image service lacks.
    let message = invalid(
        os.check_regions(&["RegionOne".into(), "RegionThree".into()])
            .await,
    );
    assert_eq!(
        message,
        "spec.provider.regions: 'RegionThree' is not a region of this cloud's image service; the catalogue has: RegionOne, RegionTwo"
    );
    let mut internal = cloud.app_credential();
    internal.insert("OS_INTERFACE".into(), "internal".into());
    let message = invalid(
        openstack::from_credentials(None, &internal)
            .check_regions(&regions)
            .await,
    );
    assert!(message.contains("OS_INTERFACE"), "{message}");

    // Something that is not Keystone: named as the setting it came from.
    let mut glance_as_keystone = cloud.app_credential();
    glance_as_keystone.insert("OS_AUTH_URL".into(), cloud.glance("RegionOne"));
    let message = misconfigured(
        openstack::from_credentials(None, &glance_as_keystone)
            .check_regions(&regions)
            .await,
    );
    assert!(
        message.starts_with("OS_AUTH_URL:") && message.contains("not Keystone"),
        "{message}"
    );
    let message = misconfigured(
        openstack::from_credentials(Some(format!("{root}/nowhere/v3")), &cloud.app_credential())
            .check_regions(&regions)
            .await,
    );
    assert!(
        message.starts_with("spec.provider.endpoint:") && message.contains("404"),
        "{message}"
    );
    // Nothing listening: transient, retried, then reported naming the URL.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        listener.local_addr().expect("address").port()
    };
    let unreachable = openstack::from_credentials(
        Some(format!("http://127.0.0.1:{closed}/v3")),
        &cloud.app_credential(),
    );
    match unreachable.check_regions(&regions).await {
        Err(ProviderError::Api { message, .. }) => {
            assert!(
                message.contains(&format!("127.0.0.1:{closed}")),
                "{message}"
            )
        }
        other => panic!("wanted Api, got {other:?}"),
    }
    assert_eq!(unreachable.api_calls(), 5, "retried");

    // --- Claims. Packer's artifact says RegionOne (the ImageBuild's first
    // region) for an image it made in RegionTwo; the image carries its
    // parent's kiln properties, as Nova copies them into a snapshot.
    let mut parent = owned_by("parent", "p-1");
    if let Some(p) = parent.as_object_mut() {
        p.remove("tags");
    }
    let in_two = cloud
        .create("RegionTwo", "web-two", parent.clone(), true)
        .await;
    let in_one = cloud.create("RegionOne", "web-one", json!({}), true).await;
    let reported = [
        RegionArtifact {
            region: "RegionOne".into(),
            image_id: in_two.clone(),
        },
        RegionArtifact {
            region: "RegionOne".into(),
            image_id: in_one.clone(),
        },
    ];
    let claimed = os
        .claim(&reported, &owner("web", "b-7"))
        .await
        .expect("claimed");
    assert_eq!(claimed.note, None);
    assert_eq!(
        claimed.artifacts,
        [
            RegionArtifact {
                region: "RegionOne".into(),
                image_id: in_one.clone()
            },
            RegionArtifact {
                region: "RegionTwo".into(),
                image_id: in_two.clone()
            },
        ]
    );
    let (_, image) = cloud.image("RegionTwo", &in_two).await;
    for (key, value) in [
        ("kiln_managed_by", "kiln"),
        ("kiln_namespace", "team"),
        ("kiln_image_build", "web"),
        ("kiln_build_id", "b-7"),
        ("kiln_spec_hash", "spec-1"),
    ] {
        assert_eq!(image[key], value, "{key}: {image}");
    }
    assert_eq!(image["tags"], json!(["kiln"]));
    // Claimed twice (a retried reconcile): the same.
    os.claim(&reported[..1], &owner("web", "b-7"))
        .await
        .expect("claimed again");
    // And listed as the ImageBuild's, in the region it is in.
    let listed = os
        .list_owned(&regions, "team", "web")
        .await
        .expect("listed");
    let found: Vec<(&str, &str)> = listed
        .iter()
        .map(|i| (i.region.as_str(), i.image_id.as_str()))
        .collect();
    assert_eq!(found.len(), 2, "{listed:?}");
    assert!(found.contains(&("RegionTwo", in_two.as_str())), "{found:?}");

    // Created, no data: queued, not ready yet.
    let queued = cloud
        .create("RegionOne", "web-queued", json!({}), false)
        .await;
    let artifact = RegionArtifact {
        region: "RegionOne".into(),
        image_id: queued.clone(),
    };
    match os
        .claim(std::slice::from_ref(&artifact), &owner("web", "b-8"))
        .await
    {
        Err(ProviderError::ImageNotReady {
            region,
            image_id,
            state,
        }) => assert_eq!(
            (region.as_str(), image_id.as_str(), state.as_str()),
            ("RegionOne", queued.as_str(), "queued")
        ),
        other => panic!("wanted ImageNotReady, got {other:?}"),
    }
    let (_, image) = cloud.image("RegionOne", &queued).await;
    assert_eq!(image["tags"], json!([]), "an unready image is not claimed");
    // Nowhere in the cloud.
    let ghost = RegionArtifact {
        region: "RegionOne".into(),
        image_id: "5d3c7f7e-0000-4000-8000-000000000000".into(),
    };
    match os
        .claim(std::slice::from_ref(&ghost), &owner("web", "b-9"))
        .await
    {
        Err(ProviderError::ImageMissing { region, image_id }) => {
            assert_eq!((region, image_id), (ghost.region, ghost.image_id))
        }
        other => panic!("wanted ImageMissing, got {other:?}"),
    }
}

#[tokio::test]
async fn lists_hides_and_deletes_only_the_image_builds_own_images() {
    let cloud = Cloud::start().await;
    let os = cloud.provider();
    let one = ["RegionOne".to_owned()];

    // Oldest to newest, each in its own second.
    let mut made = Vec::new();
    for (name, extra) in [
        ("web-1", owned_by("web", "b-1")),
        ("web-kept", {
            let mut v = owned_by("web", "b-2");
            v["kiln_keep"] = json!("release 1.0");
            v
        }),
        ("web-protected", {
            let mut v = owned_by("web", "b-3");
            v["protected"] = json!(true);
            v
        }),
        ("web-tag-kept", {
            let mut v = owned_by("web", "b-4");
            v["tags"] = json!(["kiln", "kiln-keep"]);
            v
        }),
        ("web-5", owned_by("web", "b-5")),
    ] {
        let id = cloud.create("RegionOne", name, extra, false).await;
        let (_, image) = cloud.image("RegionOne", &id).await;
        let created: Timestamp = image["created_at"]
            .as_str()
            .expect("created_at")
            .parse()
            .expect("timestamp");
        made.push((name, id));
        next_second(created).await;
    }
    // Not the ImageBuild's: another ImageBuild's, a snapshot of a kiln image
    // (properties without the tag), another region's.
    let other = cloud
        .create("RegionOne", "api-1", owned_by("api", "a-1"), false)
        .await;
    let mut copied = owned_by("web", "b-1");
    copied["tags"] = json!(["snapshot"]);
    let snapshot = cloud
        .create("RegionOne", "web-snapshot", copied, false)
        .await;
    let elsewhere = cloud
        .create("RegionTwo", "web-two", owned_by("web", "b-6"), false)
        .await;

    let listed = os.list_owned(&one, "team", "web").await.expect("listed");
    let names: Vec<&str> = listed.iter().filter_map(|i| i.name.as_deref()).collect();
    assert_eq!(
        names,
        [
            "web-5",
            "web-tag-kept",
            "web-protected",
            "web-kept",
            "web-1"
        ],
        "exactly the ImageBuild's, newest first"
    );
    let keep: Vec<bool> = listed.iter().map(|i| i.keep).collect();
    assert_eq!(keep, [false, true, true, true, false]);
    let web5 = &listed[0];
    assert_eq!(web5.region, "RegionOne");
    assert_eq!(
        web5.owner.as_ref().map(|o| o.build_id.as_str()),
        Some("b-5")
    );
    assert_eq!(web5.tags["kiln_spec_hash"], "spec-1");
    assert_eq!(web5.tags["kiln"], "");
    assert!(!web5.deprecated && web5.dependents.is_empty());
    for id in [&other, &snapshot, &elsewhere] {
        assert!(listed.iter().all(|i| &i.image_id != id), "{id} listed");
    }
    let both = os
        .list_owned(&["RegionOne".into(), "RegionTwo".into()], "team", "web")
        .await
        .expect("listed");
    assert_eq!(both.len(), 6);
    assert!(
        both.iter()
            .any(|i| i.region == "RegionTwo" && i.image_id == elsewhere)
    );

    // Hidden: gone from Glance's default listing, still kiln's, still there.
    let web1 = listed[4].clone();
    assert_eq!(web1.name.as_deref(), Some("web-1"));
    assert_eq!(
        os.deprecate(&web1, &Deprecation::deprecated(Timestamp::now()))
            .await
            .expect("hidden"),
        None
    );
    let query = "tag=kiln&kiln_image_build=web";
    assert!(
        !cloud
            .listed("RegionOne", query)
            .await
            .contains(&web1.image_id)
    );
    let (status, image) = cloud.image("RegionOne", &web1.image_id).await;
    assert_eq!((status, &image["os_hidden"]), (200, &json!(true)));
    let listed = os.list_owned(&one, "team", "web").await.expect("listed");
    let hidden = listed
        .iter()
        .find(|i| i.image_id == web1.image_id)
        .expect("a hidden image is still listed");
    assert!(hidden.deprecated);
    assert_eq!(listed.len(), 5);
    assert_eq!(
        os.deprecate(hidden, &Deprecation::deprecated(Timestamp::now()))
            .await
            .expect("again"),
        None
    );

    // Deleted: 404 after, and deleting again is fine.
    assert_eq!(os.delete(hidden).await.expect("deleted"), None);
    assert_eq!(cloud.image("RegionOne", &web1.image_id).await.0, 404);
    assert_eq!(os.delete(hidden).await.expect("gone already"), None);
    // Glance's protection holds, and says so.
    let protected = listed
        .iter()
        .find(|i| i.name.as_deref() == Some("web-protected"))
        .expect("protected");
    match os.delete(protected).await {
        Err(ProviderError::Invalid(m)) => assert!(m.contains("protected"), "{m}"),
        other => panic!("wanted Invalid, got {other:?}"),
    }
    assert_eq!(cloud.image("RegionOne", &protected.image_id).await.0, 200);

    // More images than a page (100), a few of them hidden: all listed once.
    // One at a time: the stack's Glance keeps its database in SQLite, which
    // answers concurrent writes with 500 "database is locked".
    let mut ids = Vec::new();
    for n in 0..110 {
        ids.push(
            cloud
                .create(
                    "RegionOne",
                    &format!("many-{n}"),
                    owned_by("many", "m"),
                    false,
                )
                .await,
        );
    }
    let before = os.api_calls();
    let many = os.list_owned(&one, "team", "many").await.expect("listed");
    let calls = os.api_calls() - before;
    assert_eq!(many.len(), 110);
    let mut seen: Vec<&str> = many.iter().map(|i| i.image_id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 110, "each once");
    assert_eq!(calls, 3, "two pages and the hidden pass");
    assert!(
        many.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    for image in many.iter().take(25) {
        os.deprecate(image, &Deprecation::deprecated(Timestamp::now()))
            .await
            .expect("hidden");
    }
    let small_pages = cloud.provider().with_page_size(7);
    let many = small_pages
        .list_owned(&one, "team", "many")
        .await
        .expect("listed");
    assert_eq!(many.len(), 110);
    assert_eq!(many.iter().filter(|i| i.deprecated).count(), 25);
    assert!(ids.iter().all(|id| many.iter().any(|i| &i.image_id == id)));
}
