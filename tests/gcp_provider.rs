//! The GCP provider against the Compute Engine stand-in (`hack/gce`), which
//! checks every request and response against Google's Discovery document:
//! zone checks, claims (labels and family), listing by owner labels with
//! paging, staged deprecation with a replacement, deletion through the
//! long-running Operation (and one that fails halfway), a key of another
//! project, the metadata server without a key, rate quota errors.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kiln::{
    api::{GcpSettings, RegionArtifact},
    provider::{
        Deprecation, DeprecationStage, ImageProvider, Owner, Pacing, ProviderError,
        factory::Credentials,
        gcp::{self, Gcp},
    },
};
use kiln_core::retention::ImageInfo;
use kiln_testenv::Service;
use serde_json::{Value, json};

struct Stand {
    _service: Service,
    http: reqwest::Client,
    api: String,
    control: String,
    project: String,
    key: String,
    metadata_host: String,
}

async fn stand() -> Stand {
    let service = Service::gce()
        .await
        .unwrap_or_else(|e| panic!("gce stand-in: {e}"));
    kiln::install_crypto_provider();
    let key = std::fs::read_to_string(service.get("/credentials_file"))
        .unwrap_or_else(|e| panic!("the stand-in's key file: {e}"));
    Stand {
        http: reqwest::Client::new(),
        api: service.get("/api_url").to_owned(),
        control: service.get("/control_url").trim_end_matches('/').to_owned(),
        project: service.get("/project").to_owned(),
        metadata_host: service.get("/metadata_host").to_owned(),
        key,
        _service: service,
    }
}

fn settings(project: &str, family: Option<&str>) -> GcpSettings {
    GcpSettings {
        project_id: project.into(),
        image_family: family.map(str::to_owned),
        storage_locations: Vec::new(),
    }
}

impl Stand {
    fn credentials(&self) -> Credentials {
        Credentials::from([(gcp::CREDENTIALS_KEY.to_owned(), self.key.clone())])
    }

    /// The provider as tests use it: unpaced, with short backoff.
    fn provider(&self, credentials: &Credentials, settings: &GcpSettings) -> Gcp {
        gcp::from_credentials(Some(self.api.clone()), credentials, settings)
            .with_pacing(Pacing::UNLIMITED)
            .with_backoff(Duration::from_millis(10), Duration::from_secs(5))
    }

    fn with_key(&self, family: Option<&str>) -> Gcp {
        self.provider(&self.credentials(), &settings(&self.project, family))
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/{path}", self.control))
            .json(&body)
            .send()
            .await
            .expect("control endpoint");
        assert_eq!(response.status(), 200, "control {path} {body}");
        response.json().await.expect("control JSON")
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/{path}", self.control))
            .send()
            .await
            .expect("control endpoint")
            .json()
            .await
            .expect("control JSON")
    }

    async fn seed(&self, body: Value) {
        self.control("images", body).await;
    }

    /// The stand-in's record of an image of the test project.
    async fn image(&self, name: &str) -> Option<Value> {
        let state = self.get("state").await;
        state["images"]
            .as_array()
            .expect("images")
            .iter()
            .find(|i| i["name"] == name && i["project"] == self.project.as_str())
            .cloned()
    }

    async fn counts(&self) -> Value {
        self.get("state").await["counts"].clone()
    }

    /// The API methods called after request `since`.
    async fn methods_since(&self, since: u64) -> Vec<String> {
        self.get(&format!("requests?since={since}")).await["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .filter_map(|r| r["method"].as_str().map(str::to_owned))
            .collect()
    }

    async fn last_request(&self) -> u64 {
        self.get("requests?since=0").await["last"]
            .as_u64()
            .expect("last")
    }

    /// Every request kiln sent was valid, and every answer too.
    async fn assert_within_spec(&self) {
        let counts = self.counts().await;
        for counter in [
            "request_validation_failures",
            "request_undeclared_fields",
            "response_validation_failures",
            "unknown_paths",
            "not_implemented",
            "crashes",
        ] {
            assert_eq!(
                counts[counter].as_u64().unwrap_or(0),
                0,
                "{counter}: {counts}"
            );
        }
        assert!(counts["requests"].as_u64() > Some(0), "{counts}");
    }
}

fn owner(namespace: &str, image_build: &str, build_id: &str) -> Owner {
    Owner {
        namespace: namespace.into(),
        image_build: image_build.into(),
        build_id: build_id.into(),
        spec_hash: "0123456789abcdef".into(),
    }
}

/// As Packer's googlecompute artifact is recorded: in the build's zone.
fn built(name: &str) -> Vec<RegionArtifact> {
    vec![RegionArtifact {
        region: "us-central1-a".into(),
        image_id: name.into(),
    }]
}

fn zones(z: &[&str]) -> Vec<String> {
    z.iter().map(|s| (*s).to_owned()).collect()
}

fn ids(images: &[ImageInfo]) -> Vec<&str> {
    let mut ids: Vec<&str> = images.iter().map(|i| i.image_id.as_str()).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn zones_are_checked_against_the_project() {
    let s = stand().await;
    let g = s.with_key(None);
    g.check_regions(&zones(&["us-central1-a"]))
        .await
        .expect("a zone of the project");
    for (given, words) in [
        (
            zones(&["us-central1-z"]),
            vec![
                "spec.provider.regions: 'us-central1-z' is not a zone of project 'kiln-test'",
                "was not found",
            ],
        ),
        (
            zones(&["us-central1"]),
            vec!["looks like a region", "such as us-central1-a"],
        ),
        (zones(&["US-East"]), vec!["'US-East' is not a zone"]),
        (
            zones(&["us-central1-a", "europe-west1-b"]),
            vec!["exactly one zone", "not 2"],
        ),
    ] {
        match g.check_regions(&given).await {
            Err(ProviderError::Invalid(m)) => {
                assert!(m.starts_with("spec.provider.regions:"), "{m}");
                for w in words {
                    assert!(m.contains(w), "{w} not in {m}");
                }
            }
            other => panic!("{given:?}: {other:?}"),
        }
    }
    match s
        .provider(&s.credentials(), &settings("no-such-project", None))
        .check_regions(&zones(&["us-central1-a"]))
        .await
    {
        Err(ProviderError::Misconfigured(m)) => assert!(
            m.starts_with("spec.provider.gcp.projectId: project 'no-such-project' does not exist"),
            "{m}"
        ),
        other => panic!("unknown project: {other:?}"),
    }
    // The key was exchanged for a token once per provider value, and the
    // token reused.
    assert_eq!(s.counts().await["tokens_issued"], 2);
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_claim_labels_the_image_and_puts_it_in_the_family() {
    let s = stand().await;
    s.seed(json!({"name": "kiln-base-1", "family": "someone-else",
                  "labels": {"team": "web"}}))
        .await;
    let g = s.with_key(Some("kiln-base"));
    let o = owner("team-a", "base.ubuntu", "3F2A9C01BD-2");
    let claimed = g.claim(&built("kiln-base-1"), &o).await.expect("claim");
    assert_eq!(
        claimed.artifacts,
        [RegionArtifact {
            region: "global".into(),
            image_id: "kiln-base-1".into()
        }]
    );
    assert_eq!(claimed.note, None);
    let image = s.image("kiln-base-1").await.expect("image");
    assert_eq!(
        image["labels"],
        json!({"team": "web", "kiln-managed": "true", "kiln-namespace": "team-a",
               "kiln-name": "base_ubuntu", "kiln-build": "3f2a9c01bd-2",
               "kiln-spec": "0123456789abcdef"})
    );
    assert_eq!(image["family"], "kiln-base");

    // Claiming again (a restarted controller) changes nothing and writes
    // nothing.
    let since = s.last_request().await;
    g.claim(&built("kiln-base-1"), &o)
        .await
        .expect("claim again");
    assert_eq!(s.methods_since(since).await, ["compute.images.get"]);

    // An image without a family: labels, then the family, each write
    // followed to the end of its Operation.
    s.seed(json!({"name": "kiln-base-2"})).await;
    let since = s.last_request().await;
    g.claim(&built("kiln-base-2"), &o).await.expect("claim");
    assert_eq!(
        s.methods_since(since).await,
        [
            "compute.images.get",
            "compute.images.setLabels",
            "compute.globalOperations.wait",
            "compute.images.patch",
            "compute.globalOperations.wait"
        ]
    );
    assert_eq!(
        s.image("kiln-base-2").await.expect("image")["family"],
        "kiln-base"
    );

    // Another ImageBuild's image is not taken over.
    match g
        .claim(&built("kiln-base-1"), &owner("team-b", "web", "abc-1"))
        .await
    {
        Err(ProviderError::Invalid(m)) => {
            assert!(m.contains("ImageBuild team-a/base.ubuntu"), "{m}")
        }
        other => panic!("another owner: {other:?}"),
    }
    match g.claim(&built("kiln-nothing-9"), &o).await {
        Err(ProviderError::ImageMissing { region, image_id }) => {
            assert_eq!(
                (region.as_str(), image_id.as_str()),
                ("global", "kiln-nothing-9")
            )
        }
        other => panic!("missing image: {other:?}"),
    }
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_pending_image_is_not_ready_and_a_failed_one_fails() {
    let s = stand().await;
    s.seed(json!({"name": "kiln-pending", "status": "PENDING"}))
        .await;
    s.seed(json!({"name": "kiln-failed", "status": "FAILED"}))
        .await;
    let g = s.with_key(Some("kiln-base"));
    let o = owner("team-a", "base", "b-1");
    match g.claim(&built("kiln-pending"), &o).await {
        Err(ProviderError::ImageNotReady {
            region,
            image_id,
            state,
        }) => assert_eq!(
            (region.as_str(), image_id.as_str(), state.as_str()),
            ("global", "kiln-pending", "PENDING")
        ),
        other => panic!("pending: {other:?}"),
    }
    match g.claim(&built("kiln-failed"), &o).await {
        Err(ProviderError::ImageFailed { state, .. }) => assert_eq!(state, "FAILED"),
        other => panic!("failed: {other:?}"),
    }
    for name in ["kiln-pending", "kiln-failed"] {
        let image = s.image(name).await.expect("image");
        assert!(image.get("labels").is_none(), "{image}");
        assert!(image.get("family").is_none(), "{image}");
    }
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_name_that_cannot_be_a_label_is_refused_before_any_call() {
    let s = stand().await;
    s.seed(json!({"name": "kiln-long-1"})).await;
    let g = s.with_key(None);
    let long = format!("{}.x", "a".repeat(62));
    let since = s.last_request().await;
    match g
        .claim(&built("kiln-long-1"), &owner("team-a", &long, "b-1"))
        .await
    {
        Err(ProviderError::Invalid(m)) => {
            assert!(m.starts_with("metadata.name:"), "{m}");
            assert!(m.contains("at most 63"), "{m}");
            assert!(
                m.contains("shorten the ImageBuild's name to 63 characters or fewer"),
                "{m}"
            );
        }
        other => panic!("long name: {other:?}"),
    }
    assert!(s.methods_since(since).await.is_empty());
    assert!(
        g.list_owned(&zones(&["us-central1-a"]), "team-a", &long)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn only_this_image_build_s_images_are_listed_across_pages() {
    let s = stand().await;
    let g = s.with_key(None).with_page_size(2);
    let mine = owner("team-a", "base.ubuntu", "b-1");
    for (name, created) in [
        ("kiln-base-1", "2026-01-01T10:00:00Z"),
        ("kiln-base-2", "2026-02-01T10:00:00-08:00"),
        ("kiln-base-3", "2026-03-01T10:00:00.123-08:00"),
    ] {
        s.seed(json!({"name": name, "creationTimestamp": created}))
            .await;
        g.claim(&built(name), &mine).await.expect("claim");
    }
    // Marked to keep, and already obsolete.
    s.seed(json!({"name": "kiln-base-kept", "labels": {
        "kiln-managed": "true", "kiln-namespace": "team-a", "kiln-name": "base_ubuntu",
        "kiln-build": "b-0", "kiln-keep": ""},
        "deprecated": {"state": "OBSOLETE", "deleted": "2027-01-01T00:00:00Z"}}))
        .await;
    // Another ImageBuild, the same name in another namespace, a foreign
    // image, and one with kiln's owner labels but not claimed by kiln.
    s.seed(json!({"name": "kiln-other-1"})).await;
    g.claim(
        &built("kiln-other-1"),
        &owner("team-a", "base-ubuntu", "b-9"),
    )
    .await
    .expect("claim");
    s.seed(json!({"name": "kiln-elsewhere-1"})).await;
    g.claim(
        &built("kiln-elsewhere-1"),
        &owner("team-b", "base.ubuntu", "b-1"),
    )
    .await
    .expect("claim");
    s.seed(json!({"name": "foreign-1", "labels": {"team": "a"}}))
        .await;
    s.seed(json!({"name": "copied-1", "labels": {
        "kiln-namespace": "team-a", "kiln-name": "base_ubuntu"}}))
        .await;

    let listed = g
        .list_owned(&zones(&["us-central1-a"]), "team-a", "base.ubuntu")
        .await
        .expect("list");
    assert_eq!(
        ids(&listed),
        [
            "kiln-base-1",
            "kiln-base-2",
            "kiln-base-3",
            "kiln-base-kept"
        ]
    );
    for i in &listed {
        assert_eq!(i.region, "global");
        assert_eq!(i.name.as_deref(), Some(i.image_id.as_str()));
        let o = i.owner.as_ref().expect("owned");
        assert_eq!(
            (o.namespace.as_str(), o.image_build.as_str()),
            ("team-a", "base.ubuntu")
        );
        assert!(i.dependents.is_empty());
        let kept = i.image_id == "kiln-base-kept";
        assert_eq!(
            (i.keep, i.deprecated, i.obsolete),
            (kept, kept, kept),
            "{i:?}"
        );
    }
    let by_id = |id: &str| listed.iter().find(|i| i.image_id == id).expect("listed");
    assert_eq!(
        by_id("kiln-base-2").created_at.to_string(),
        "2026-02-01T18:00:00Z"
    );
    assert_eq!(
        by_id("kiln-base-1")
            .owner
            .as_ref()
            .map(|o| o.build_id.as_str()),
        Some("b-1")
    );
    assert_eq!(
        by_id("kiln-base-kept")
            .end_of_life
            .map(|t| t.to_string())
            .as_deref(),
        Some("2027-01-01T00:00:00Z")
    );
    // Five images match the filter at two a page: three pages.
    let since = s.last_request().await;
    g.list_owned(&[], "team-a", "base.ubuntu")
        .await
        .expect("list");
    assert_eq!(
        s.methods_since(since).await,
        [
            "compute.images.list",
            "compute.images.list",
            "compute.images.list"
        ]
    );
    let other = g
        .list_owned(&[], "team-a", "base-ubuntu")
        .await
        .expect("list");
    assert_eq!(ids(&other), ["kiln-other-1"]);
    s.assert_within_spec().await;
}

#[tokio::test]
async fn images_are_deprecated_then_obsolete_then_deleted() {
    let s = stand().await;
    let g = s.with_key(None);
    let mine = owner("team-a", "base", "b-1");
    for (name, created) in [
        ("kiln-base-1", "2026-01-01T10:00:00Z"),
        ("kiln-base-2", "2026-02-01T10:00:00Z"),
    ] {
        s.seed(json!({"name": name, "creationTimestamp": created}))
            .await;
        g.claim(&built(name), &mine).await.expect("claim");
    }
    let listed = g.list_owned(&[], "team-a", "base").await.expect("list");
    let old = listed
        .iter()
        .find(|i| i.image_id == "kiln-base-1")
        .expect("old image");
    let newest_url = s.image("kiln-base-2").await.expect("newest")["selfLink"].clone();

    let at: Timestamp = "2026-03-01T00:00:00Z".parse().expect("time");
    let delete_at = at + SignedDuration::from_hours(24 * 30);
    let staged = |stage, at| Deprecation {
        stage,
        at,
        delete_at: Some(delete_at),
        replacement: Some("kiln-base-2".into()),
    };
    let note = g
        .deprecate(old, &staged(DeprecationStage::Deprecated, at))
        .await
        .expect("deprecate");
    assert_eq!(note, None);
    let image = s.image("kiln-base-1").await.expect("image");
    assert_eq!(
        image["deprecated"],
        json!({"state": "DEPRECATED", "replacement": newest_url,
               "deprecated": "2026-03-01T00:00:00Z", "deleted": "2026-03-31T00:00:00Z"})
    );

    let later = at + SignedDuration::from_hours(24 * 7);
    g.deprecate(old, &staged(DeprecationStage::Obsolete, later))
        .await
        .expect("obsolete");
    let image = s.image("kiln-base-1").await.expect("image");
    assert_eq!(
        image["deprecated"],
        json!({"state": "OBSOLETE", "replacement": newest_url,
               "deprecated": "2026-03-01T00:00:00Z", "obsolete": "2026-03-08T00:00:00Z",
               "deleted": "2026-03-31T00:00:00Z"})
    );
    let listed = g.list_owned(&[], "team-a", "base").await.expect("list");
    let old = listed
        .iter()
        .find(|i| i.image_id == "kiln-base-1")
        .expect("still listed when obsolete");
    assert!(old.deprecated && old.obsolete);

    let since = s.last_request().await;
    assert_eq!(g.delete(old).await.expect("delete"), None);
    assert_eq!(
        s.methods_since(since).await,
        ["compute.images.delete", "compute.globalOperations.wait"]
    );
    assert!(s.image("kiln-base-1").await.is_none(), "deleted once DONE");
    // Gone already: nothing to do.
    assert_eq!(g.delete(old).await.expect("delete again"), None);
    assert_eq!(
        ids(&g.list_owned(&[], "team-a", "base").await.expect("list")),
        ["kiln-base-2"]
    );
    s.assert_within_spec().await;
}

#[tokio::test]
async fn an_operation_that_fails_halfway_is_named_and_the_image_stays() {
    let s = stand().await;
    let g = s.with_key(None);
    s.seed(json!({"name": "kiln-base-1"})).await;
    g.claim(&built("kiln-base-1"), &owner("team-a", "base", "b-1"))
        .await
        .expect("claim");
    let listed = g.list_owned(&[], "team-a", "base").await.expect("list");
    let image = listed.first().expect("listed");
    s.control(
        "fail-operations",
        json!({"count": 1, "code": "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
               "message": "The image resource is already being used by 'projects/kiln-test/global/machineImages/m'",
               "http": 400}),
    )
    .await;
    match g.delete(image).await {
        Err(ProviderError::Api {
            operation,
            region,
            message,
        }) => {
            assert_eq!((operation, region.as_str()), ("images.delete", "global"));
            assert!(
                message.starts_with("image 'kiln-base-1': operation operation-"),
                "{message}"
            );
            assert!(
                message.contains("ended with an error: RESOURCE_IN_USE_BY_ANOTHER_RESOURCE: The image resource is already being used"),
                "{message}"
            );
        }
        other => panic!("failed operation: {other:?}"),
    }
    let kept = s.image("kiln-base-1").await.expect("the image stays");
    assert_eq!(kept["status"], "READY");
    g.delete(image).await.expect("the next attempt deletes it");
    assert!(s.image("kiln-base-1").await.is_none());
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_key_for_another_project_is_unauthorized_naming_the_secret_key() {
    let s = stand().await;
    let g = s.provider(&s.credentials(), &settings("kiln-other", None));
    for outcome in [
        g.check_regions(&zones(&["us-central1-a"])).await.map(drop),
        g.list_owned(&[], "team-a", "base").await.map(drop),
    ] {
        match outcome {
            Err(ProviderError::Unauthorized(m)) => {
                assert!(m.contains("project 'kiln-other'"), "{m}");
                assert!(m.contains("GOOGLE_CREDENTIALS"), "{m}");
                assert!(m.contains("spec.provider.credentials.secretRef"), "{m}");
                assert!(m.contains("the key is of project 'kiln-test'"), "{m}");
                assert!(m.contains("Required 'compute."), "{m}");
                assert!(!m.contains("PRIVATE KEY"), "{m}");
            }
            other => panic!("another project: {other:?}"),
        }
    }
    // A key that is not one: told before any call.
    let broken = Credentials::from([(gcp::CREDENTIALS_KEY.to_owned(), "{}".to_owned())]);
    match s
        .provider(&broken, &settings(&s.project, None))
        .check_regions(&zones(&["us-central1-a"]))
        .await
    {
        Err(ProviderError::Misconfigured(m)) => {
            assert!(m.starts_with("GOOGLE_CREDENTIALS in the Secret"), "{m}")
        }
        other => panic!("broken key: {other:?}"),
    }
}

#[tokio::test]
async fn without_a_key_the_metadata_server_gives_the_token() {
    let s = stand().await;
    let g = s
        .provider(&Credentials::new(), &settings(&s.project, None))
        .with_metadata_host(&s.metadata_host);
    g.check_regions(&zones(&["us-central1-a"]))
        .await
        .expect("zone check with a Workload Identity token");
    s.seed(json!({"name": "kiln-wi-1"})).await;
    g.claim(&built("kiln-wi-1"), &owner("team-a", "wi", "b-1"))
        .await
        .expect("claim");
    assert_eq!(
        ids(&g.list_owned(&[], "team-a", "wi").await.expect("list")),
        ["kiln-wi-1"]
    );
    let counts = s.counts().await;
    assert_eq!(counts["metadata_tokens_issued"], 1, "{counts}");
    assert_eq!(counts["tokens_issued"].as_u64().unwrap_or(0), 0, "{counts}");

    // No key and no metadata server: say what to put in the Secret.
    let nowhere = s
        .provider(&Credentials::new(), &settings(&s.project, None))
        .with_metadata_host("127.0.0.1:9");
    match nowhere.check_regions(&zones(&["us-central1-a"])).await {
        Err(ProviderError::Unauthorized(m)) => {
            assert!(m.contains("has no GOOGLE_CREDENTIALS"), "{m}");
            assert!(m.contains("Workload Identity"), "{m}");
        }
        other => panic!("no metadata server: {other:?}"),
    }
    s.assert_within_spec().await;
}

#[tokio::test]
async fn rate_quota_errors_are_waited_out() {
    let s = stand().await;
    let g = s.with_key(None);
    s.seed(json!({"name": "kiln-base-1"})).await;
    g.claim(&built("kiln-base-1"), &owner("team-a", "base", "b-1"))
        .await
        .expect("claim");
    // GCE's own form: 403 rateLimitExceeded, no Retry-After.
    s.control(
        "ratelimit",
        json!({"count": 2, "status": 403, "retry_after": null}),
    )
    .await;
    let before = g.api_calls();
    let listed = g.list_owned(&[], "team-a", "base").await.expect("list");
    assert_eq!(ids(&listed), ["kiln-base-1"]);
    assert_eq!(g.api_calls() - before, 3, "two refusals, then the listing");
    // 429 with Retry-After, past every attempt: the call fails, to be
    // retried later.
    s.control("ratelimit", json!({"count": 10, "retry_after": 0}))
        .await;
    match g.list_owned(&[], "team-a", "base").await {
        Err(ProviderError::Api { message, .. }) => {
            assert!(
                message.contains("rate quota for this project is exhausted"),
                "{message}"
            )
        }
        other => panic!("exhausted: {other:?}"),
    }
    assert_eq!(s.counts().await["forced_429"], 8);
    s.assert_within_spec().await;
}
