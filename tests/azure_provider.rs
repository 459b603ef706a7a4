//! The Azure provider against the ARM stand-in (`hack/azure`), which checks
//! every request and response against Azure's Swagger (GalleryRP
//! 2024-03-03) or the azure-mgmt-compute SDK (managed images) and issues
//! Entra ID tokens: region and scope checks, claims of gallery versions and
//! managed images, listing by owner tags per target region, deprecation
//! with Azure's own fields, deletion through the long-running operation,
//! deletion protection, and refused credentials.

use std::time::Duration;

use base64::Engine as _;
use kiln::{
    api::{AzureGallery, AzureSettings, RegionArtifact},
    provider::{
        Deprecation, ImageProvider, Owner, Pacing, ProviderError,
        azure::{self, Azure, tags},
        factory::Credentials,
    },
};
use kiln_core::retention::ImageInfo;
use kiln_testenv::Service;
use serde_json::{Value, json};

struct Stand {
    service: Service,
    http: reqwest::Client,
    control: String,
}

async fn stand() -> Stand {
    let service = Service::azure()
        .await
        .unwrap_or_else(|e| panic!("azure stand-in: {e}"));
    kiln::install_crypto_provider();
    Stand {
        http: reqwest::Client::new(),
        control: service.get("/control_url").trim_end_matches('/').to_owned(),
        service,
    }
}

impl Stand {
    fn get(&self, key: &str) -> String {
        self.service.get(&format!("/{key}")).to_owned()
    }

    fn settings(&self, gallery: bool) -> AzureSettings {
        AzureSettings {
            subscription_id: self.get("subscription_id"),
            resource_group: self.get("resource_group"),
            gallery: gallery.then(|| AzureGallery {
                name: self.get("gallery"),
                image_definition: self.get("image_definition"),
            }),
        }
    }

    fn secret_credentials(&self) -> Credentials {
        Credentials::from([
            ("AZURE_TENANT_ID".to_owned(), self.get("tenant_id")),
            ("AZURE_CLIENT_ID".to_owned(), self.get("client_id")),
            ("AZURE_CLIENT_SECRET".to_owned(), self.get("client_secret")),
            (
                "AZURE_AUTHORITY_HOST".to_owned(),
                self.get("authority_host"),
            ),
        ])
    }

    /// The provider as tests use it: unpaced, with short waits.
    fn with(&self, credentials: &Credentials, settings: &AzureSettings) -> Azure {
        azure::from_credentials(Some(self.get("api_url")), credentials, settings)
            .with_pacing(Pacing::UNLIMITED)
            .with_timing(
                Duration::from_millis(10),
                Duration::from_secs(5),
                Duration::from_millis(10),
            )
    }

    fn provider(&self, gallery: bool) -> Azure {
        self.with(&self.secret_credentials(), &self.settings(gallery))
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/{path}", self.control))
            .json(&body)
            .send()
            .await
            .expect("control endpoint");
        let status = response.status();
        let out: Value = response.json().await.expect("control JSON");
        assert_eq!(status, 200, "control {path} {body}: {out}");
        out
    }

    async fn state(&self) -> Value {
        self.http
            .get(format!("{}/state", self.control))
            .send()
            .await
            .expect("control state")
            .json()
            .await
            .expect("state JSON")
    }

    /// A resource as the stand-in holds it, by ARM ID (case aside).
    async fn resource(&self, id: &str) -> Option<Value> {
        let state = self.state().await;
        state["resources"]
            .as_object()
            .expect("resources")
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(id))
            .map(|(_, v)| v["body"].clone())
    }

    async fn calls(&self, operation: &str) -> u64 {
        self.state().await["calls"][operation].as_u64().unwrap_or(0)
    }

    /// Every request and response held to the schemas.
    async fn assert_within_spec(&self) {
        let counters = &self.state().await["counters"];
        assert_eq!(counters["request_validation_failures"], 0, "{counters}");
        assert_eq!(counters["response_validation_failures"], 0, "{counters}");
        assert_eq!(counters["unknown_paths"], 0, "{counters}");
        assert_eq!(counters["not_implemented"], 0, "{counters}");
        assert!(counters["requests"].as_u64() > Some(0), "{counters}");
    }

    /// Seeds a gallery version; returns its ARM ID.
    async fn version(&self, body: Value) -> String {
        let out = self.control("image-versions", body).await;
        out["id"].as_str().expect("version id").to_owned()
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

fn owned_tags(o: &Owner) -> Value {
    serde_json::to_value(tags::owner_tags(o)).expect("tags")
}

fn artifacts(id: &str, regions: &[&str]) -> Vec<RegionArtifact> {
    regions
        .iter()
        .map(|r| RegionArtifact {
            region: (*r).into(),
            image_id: id.into(),
        })
        .collect()
}

fn regions(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| (*s).to_owned()).collect()
}

const BOTH: [&str; 2] = ["westeurope", "eastus2"];

#[tokio::test]
async fn regions_gallery_and_image_definition_are_checked() {
    let s = stand().await;
    let a = s.provider(true);
    a.check_regions(&regions(&BOTH))
        .await
        .expect("the stand-in's gallery, definition and locations");
    match a
        .check_regions(&regions(&["westeurope", "marsnorth1"]))
        .await
    {
        Err(ProviderError::Invalid(m)) => {
            assert!(
                m.starts_with("spec.provider.regions: 'marsnorth1' is not an Azure location"),
                "{m}"
            );
            assert!(m.contains("eastus2") && m.contains("westeurope"), "{m}");
        }
        other => panic!("unknown location: {other:?}"),
    }

    let mut missing = s.settings(true);
    if let Some(g) = missing.gallery.as_mut() {
        g.name = "nosuchgallery".into();
    }
    match s
        .with(&s.secret_credentials(), &missing)
        .check_regions(&regions(&BOTH))
        .await
    {
        Err(ProviderError::Misconfigured(m)) => {
            assert!(m.starts_with("spec.provider.azure.gallery.name:"), "{m}");
            assert!(
                m.contains("'nosuchgallery'") && m.contains("'kiln-test'"),
                "{m}"
            );
            assert!(m.contains("az sig create"), "{m}");
        }
        other => panic!("missing gallery: {other:?}"),
    }
    let mut missing = s.settings(true);
    if let Some(g) = missing.gallery.as_mut() {
        g.image_definition = "nosuchdef".into();
    }
    match s
        .with(&s.secret_credentials(), &missing)
        .check_regions(&regions(&BOTH))
        .await
    {
        Err(ProviderError::Misconfigured(m)) => {
            assert!(
                m.starts_with("spec.provider.azure.gallery.imageDefinition:"),
                "{m}"
            );
        }
        other => panic!("missing image definition: {other:?}"),
    }
    let mut missing = s.settings(false);
    missing.resource_group = "nosuchgroup".into();
    match s
        .with(&s.secret_credentials(), &missing)
        .check_regions(&regions(&BOTH))
        .await
    {
        Err(ProviderError::Misconfigured(m)) => {
            assert!(m.starts_with("spec.provider.azure.resourceGroup:"), "{m}");
            assert!(m.contains("'nosuchgroup'"), "{m}");
        }
        other => panic!("missing resource group: {other:?}"),
    }
    s.provider(false)
        .check_regions(&regions(&BOTH))
        .await
        .expect("managed images in the resource group");
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_gallery_version_is_claimed_tagged_and_listed_in_each_target_region() {
    let s = stand().await;
    let a = s.provider(true);
    let o = owner("team-a", "base.ubuntu", "3f2a9c01bd-2");
    let id = s
        .version(json!({"name": "1.0.1", "targetRegions": BOTH,
                        "publishedDate": "2026-01-01T00:00:00Z", "tags": {"env": "prod"}}))
        .await;
    let reported = artifacts(&id, &BOTH);
    let claimed = a.claim(&reported, &o).await.expect("claim");
    let mut want = reported.clone();
    want.sort_by(|a, b| a.region.cmp(&b.region));
    assert_eq!(claimed.artifacts, want);
    assert_eq!(claimed.note, None);
    let body = s.resource(&id).await.expect("version");
    let t = &body["tags"];
    assert_eq!(t["env"], "prod", "other tags stay: {t}");
    assert_eq!(t["kiln-managed"], "true", "{t}");
    assert_eq!(t["kiln-namespace"], "team-a", "{t}");
    assert_eq!(t["kiln-name"], "base.ubuntu", "{t}");
    assert_eq!(t["kiln-build"], "3f2a9c01bd-2", "{t}");
    assert_eq!(t["kiln-spec"], "0123456789abcdef", "{t}");
    assert_eq!(body["properties"]["provisioningState"], "Succeeded");
    // Claiming again (a restarted controller) writes nothing.
    let updates = s.calls("GalleryImageVersions_Update").await;
    a.claim(&reported, &o).await.expect("claim again");
    assert_eq!(s.calls("GalleryImageVersions_Update").await, updates);

    let listed = a
        .list_owned(
            &regions(&["westeurope", "eastus2", "uksouth"]),
            "team-a",
            "base.ubuntu",
        )
        .await
        .expect("list");
    let mut where_: Vec<(&str, &str)> = listed
        .iter()
        .map(|i| (i.region.as_str(), i.image_id.as_str()))
        .collect();
    where_.sort();
    assert_eq!(
        where_,
        [("eastus2", id.as_str()), ("westeurope", id.as_str())]
    );
    for i in &listed {
        assert_eq!(i.build_id(), Some("3f2a9c01bd-2"));
        assert_eq!(i.name.as_deref(), Some("1.0.1"));
        assert_eq!(i.created_at.to_string(), "2026-01-01T00:00:00Z");
        assert!(!i.keep && !i.deprecated && !i.delete_blocked);
        assert_eq!(i.end_of_life, None);
        assert_eq!(i.tags.get("env").map(String::as_str), Some("prod"));
    }

    // Packer named the managed image it published from (or nothing): the
    // version is found by its build tag.
    let b = owner("team-a", "base.ubuntu", "3f2a9c01bd-3");
    let tagged = s
        .version(json!({"name": "1.0.2", "targetRegions": BOTH,
                        "tags": {"kiln-build": "3f2a9c01bd-3"}}))
        .await;
    let managed_id = format!(
        "/subscriptions/{}/resourceGroups/kiln-test/providers/Microsoft.Compute/images/packer-base-2",
        s.get("subscription_id")
    );
    for reported in [managed_id.as_str(), "UNKNOWN ID"] {
        let claimed = a
            .claim(&artifacts(reported, &BOTH), &b)
            .await
            .expect("found by tag");
        assert_eq!(claimed.artifacts.len(), 2, "{claimed:?}");
        assert!(
            claimed
                .artifacts
                .iter()
                .all(|x| x.image_id.eq_ignore_ascii_case(&tagged)),
            "{claimed:?}"
        );
    }
    // Not replicated everywhere asked: claimed where it is, with a note.
    let one = s
        .version(json!({"name": "1.0.3", "targetRegions": ["westeurope"]}))
        .await;
    let claimed = a
        .claim(&artifacts(&one, &BOTH), &o)
        .await
        .expect("claim in one region");
    assert_eq!(claimed.artifacts, artifacts(&one, &["westeurope"]));
    assert!(
        claimed
            .note
            .as_deref()
            .is_some_and(|n| n.contains("eastus2")),
        "{claimed:?}"
    );
    s.assert_within_spec().await;
}

#[tokio::test]
async fn claims_tell_unfinished_failed_and_missing_versions_apart() {
    let s = stand().await;
    let a = s.provider(true);
    let o = owner("team-a", "base", "aaaaaaaaaa-1");
    let creating = s
        .version(json!({"name": "2.0.0", "provisioningState": "Creating"}))
        .await;
    match a.claim(&artifacts(&creating, &["westeurope"]), &o).await {
        Err(ProviderError::ImageNotReady {
            state, image_id, ..
        }) => {
            assert_eq!(state, "Creating");
            assert!(image_id.eq_ignore_ascii_case(&creating));
        }
        other => panic!("creating: {other:?}"),
    }
    let failed = s
        .version(json!({"name": "2.0.1", "provisioningState": "Failed"}))
        .await;
    match a.claim(&artifacts(&failed, &["westeurope"]), &o).await {
        Err(ProviderError::ImageFailed { state, .. }) => assert_eq!(state, "Failed"),
        other => panic!("failed: {other:?}"),
    }
    let gone = failed.replace("2.0.1", "9.9.9");
    match a.claim(&artifacts(&gone, &["westeurope"]), &o).await {
        Err(ProviderError::ImageMissing { region, image_id }) => {
            assert_eq!(region, "westeurope");
            assert_eq!(image_id, gone);
        }
        other => panic!("missing: {other:?}"),
    }
    // Nothing tagged along the way.
    assert_eq!(s.calls("GalleryImageVersions_Update").await, 0);
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_managed_image_is_claimed_listed_and_deleted_in_its_location() {
    let s = stand().await;
    let a = s.provider(false);
    let o = owner("team-a", "runner", "bbbbbbbbbb-1");
    let image = s
        .control(
            "images",
            json!({"name": "runner-1", "location": "westeurope"}),
        )
        .await;
    let id = image["id"].as_str().expect("image id").to_owned();
    let claimed = a.claim(&artifacts(&id, &BOTH), &o).await.expect("claim");
    assert_eq!(claimed.artifacts, artifacts(&id, &["westeurope"]));
    assert!(
        claimed
            .note
            .as_deref()
            .is_some_and(|n| n.contains("spec.provider.azure.gallery") && n.contains("eastus2")),
        "{claimed:?}"
    );
    let body = s.resource(&id).await.expect("image");
    assert_eq!(body["tags"]["kiln-name"], "runner", "{body}");
    assert!(body["tags"][tags::CLAIMED].is_string(), "{body}");
    // A foreign managed image and one of another ImageBuild.
    s.control(
        "images",
        json!({"name": "handmade", "location": "westeurope",
                               "tags": {"env": "prod"}}),
    )
    .await;
    s.control(
        "images",
        json!({"name": "web-1", "location": "westeurope",
                               "tags": owned_tags(&owner("team-a", "web", "cccccccccc-1"))}),
    )
    .await;
    let listed = a
        .list_owned(&regions(&BOTH), "team-a", "runner")
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].region.as_str(), listed[0].name.as_deref()),
        ("westeurope", Some("runner-1"))
    );
    assert!(listed[0].image_id.eq_ignore_ascii_case(&id));

    // Managed images have no deprecation: the policy is refused up front,
    // and a call changes nothing.
    assert!(!a.capabilities().deprecation);
    let note = a
        .deprecate(&listed[0], &Deprecation::deprecated(jiff::Timestamp::now()))
        .await
        .expect("deprecate");
    assert!(note.is_some_and(|n| n.starts_with("kept:")));

    s.control("config", json!({"polls": 2})).await;
    let polls = s.calls("OperationStatus_Get").await;
    assert_eq!(a.delete(&listed[0]).await.expect("delete"), None);
    assert_eq!(s.resource(&id).await, None, "gone");
    assert_eq!(s.calls("Images_Delete").await, 1);
    assert_eq!(
        s.calls("OperationStatus_Get").await - polls,
        2,
        "polled to the end"
    );
    s.assert_within_spec().await;
}

#[tokio::test]
async fn only_the_image_builds_own_versions_are_listed_with_their_protection() {
    let s = stand().await;
    let a = s.provider(true);
    let mine = owner("team-a", "base", "dddddddddd-1");
    let mut owned = Vec::new();
    for day in 1..=3 {
        owned.push(
            s.version(json!({"name": format!("1.0.{day}"), "targetRegions": BOTH,
                             "publishedDate": format!("2026-01-0{day}T00:00:00Z"),
                             "tags": owned_tags(&mine)}))
                .await,
        );
    }
    let mut keep = owned_tags(&mine);
    keep["kiln-keep"] = json!("");
    let kept = s
        .version(json!({"name": "1.1.0", "targetRegions": ["westeurope"], "tags": keep}))
        .await;
    let protected = s
        .version(
            json!({"name": "1.2.0", "targetRegions": BOTH, "tags": owned_tags(&mine),
                        "endOfLifeDate": "2099-12-31T00:00:00Z",
                        "blockDeletionBeforeEndOfLife": true, "excludeFromLatest": true}),
        )
        .await;
    // Another ImageBuild's, a namesake's in another namespace, half-written
    // tags, none at all.
    s.version(
        json!({"name": "3.0.0", "tags": owned_tags(&owner("team-a", "web", "eeeeeeeeee-1"))}),
    )
    .await;
    s.version(
        json!({"name": "3.0.1", "tags": owned_tags(&owner("team-b", "base", "ffffffffff-1"))}),
    )
    .await;
    s.version(json!({"name": "3.0.2", "tags": {"kiln-namespace": "team-a", "kiln-name": "base"}}))
        .await;
    s.version(json!({"name": "3.0.3"})).await;
    // Listings follow nextLink.
    s.control("config", json!({"page_size": 2})).await;

    let listed = a
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
        .expect("list");
    let mut seen: Vec<(String, String)> = listed
        .iter()
        .map(|i| (i.image_id.to_lowercase(), i.region.clone()))
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = owned
        .iter()
        .chain([&protected])
        .flat_map(|id| BOTH.map(|r| (id.to_lowercase(), r.to_owned())))
        .chain([(kept.to_lowercase(), "westeurope".to_owned())])
        .collect();
    want.sort();
    assert_eq!(seen, want);
    assert!(
        s.calls("GalleryImageVersions_ListByGalleryImage").await >= 5,
        "paged"
    );

    let find = |id: &str| -> Vec<&ImageInfo> {
        listed
            .iter()
            .filter(|i| i.image_id.eq_ignore_ascii_case(id))
            .collect()
    };
    assert!(find(&kept).iter().all(|i| i.keep));
    for i in find(&protected) {
        assert!(i.delete_blocked && i.deprecated, "{i:?}");
        assert_eq!(
            i.end_of_life.map(|t| t.to_string()).as_deref(),
            Some("2099-12-31T00:00:00Z")
        );
    }
    for i in find(&owned[0]) {
        assert!(!i.delete_blocked && !i.deprecated && i.end_of_life.is_none());
    }

    // kiln never asks to delete a protected version before its end of life.
    let p = find(&protected)[0];
    match a.delete(p).await {
        Err(ProviderError::Api { message, .. }) => {
            assert!(message.contains("2099-12-31T00:00:00Z"), "{message}");
            assert!(
                message.contains("blockDeletionBeforeEndOfLife"),
                "{message}"
            );
        }
        other => panic!("protected: {other:?}"),
    }
    assert_eq!(s.calls("GalleryImageVersions_Delete").await, 0);
    // Protection set after the listing: Azure refuses, and the error names
    // the date too.
    let mut stale = p.clone();
    stale.delete_blocked = false;
    match a.delete(&stale).await {
        Err(ProviderError::Api { message, .. }) => {
            assert!(message.contains("2099-12-31T00:00:00Z"), "{message}");
        }
        other => panic!("refused by Azure: {other:?}"),
    }
    assert_eq!(s.calls("GalleryImageVersions_Delete").await, 1);
    assert!(s.resource(&protected).await.is_some(), "still there");
    // Deprecating it never moves its end of life earlier (that would lift
    // the protection).
    let soon: jiff::Timestamp = "2026-04-01T00:00:00Z".parse().expect("time");
    let d = Deprecation {
        delete_at: Some(soon),
        ..Deprecation::deprecated(soon)
    };
    // It is deprecated all the same.
    assert_eq!(a.deprecate(p, &d).await.expect("deprecate"), None);
    let body = s.resource(&protected).await.expect("version");
    let eol: jiff::Timestamp = body["properties"]["publishingProfile"]["endOfLifeDate"]
        .as_str()
        .expect("endOfLifeDate")
        .parse()
        .expect("date-time");
    assert_eq!(eol.to_string(), "2099-12-31T00:00:00Z");
    assert_eq!(
        body["properties"]["publishingProfile"]["excludeFromLatest"],
        true
    );
    s.assert_within_spec().await;
}

#[tokio::test]
async fn deprecation_sets_exclude_from_latest_and_the_end_of_life() {
    let s = stand().await;
    let a = s.provider(true);
    let mine = owner("team-a", "base", "gggggggggg-1");
    let id = s
        .version(json!({"name": "1.0.0", "targetRegions": BOTH, "tags": owned_tags(&mine)}))
        .await;
    let listed = a
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    let at: jiff::Timestamp = "2026-03-01T00:00:00Z".parse().expect("time");
    let delete_at: jiff::Timestamp = "2026-04-01T00:00:00Z".parse().expect("time");
    let d = Deprecation {
        delete_at: Some(delete_at),
        ..Deprecation::deprecated(at)
    };
    // Once per region, as retention asks: one PATCH.
    for i in &listed {
        assert_eq!(a.deprecate(i, &d).await.expect("deprecate"), None);
    }
    assert_eq!(s.calls("GalleryImageVersions_Update").await, 1);
    let body = s.resource(&id).await.expect("version");
    let profile = &body["properties"]["publishingProfile"];
    assert_eq!(profile["excludeFromLatest"], true, "{profile}");
    let eol: jiff::Timestamp = profile["endOfLifeDate"]
        .as_str()
        .expect("endOfLifeDate")
        .parse()
        .expect("date-time");
    assert_eq!(eol, delete_at);
    assert_eq!(body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(body["tags"]["kiln-name"], "base", "tags stay: {body}");

    // Without a planned deletion the end of life is the deprecation's time.
    let other = s
        .version(json!({"name": "1.0.1", "tags": owned_tags(&mine)}))
        .await;
    let listed = a
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
        .expect("list");
    let i = listed
        .iter()
        .find(|i| i.image_id.eq_ignore_ascii_case(&other))
        .expect("listed");
    a.deprecate(i, &Deprecation::deprecated(at))
        .await
        .expect("deprecate");
    let listed = a
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
        .expect("list");
    let i = listed
        .iter()
        .find(|i| i.image_id.eq_ignore_ascii_case(&other))
        .expect("listed");
    assert!(i.deprecated);
    assert_eq!(i.end_of_life, Some(at));
    assert!(a.capabilities().deprecation && !a.capabilities().obsolescence);
    s.assert_within_spec().await;
}

#[tokio::test]
async fn deletion_follows_the_operation_and_a_failure_halfway_keeps_the_version() {
    let s = stand().await;
    let a = s.provider(true);
    let mine = owner("team-a", "base", "hhhhhhhhhh-1");
    let doomed = s
        .version(json!({"name": "1.0.0", "targetRegions": BOTH, "tags": owned_tags(&mine)}))
        .await;
    let survivor = s
        .version(json!({"name": "1.0.1", "targetRegions": BOTH, "tags": owned_tags(&mine)}))
        .await;
    let listed = a
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
        .expect("list");
    let entries = |id: &str| -> Vec<ImageInfo> {
        listed
            .iter()
            .filter(|i| i.image_id.eq_ignore_ascii_case(id))
            .cloned()
            .collect()
    };

    s.control("config", json!({"polls": 3})).await;
    let d = entries(&doomed);
    assert_eq!(a.delete(&d[0]).await.expect("delete"), None);
    assert_eq!(s.resource(&doomed).await, None, "gone");
    assert_eq!(
        s.calls("OperationStatus_Get").await,
        3,
        "polled until Succeeded"
    );
    // The other region's entry of the same version: already gone.
    assert_eq!(a.delete(&d[1]).await.expect("delete again"), None);

    s.control(
        "fail-next",
        json!({"operation": "delete", "type": "galleryImageVersion",
               "code": "InternalExecutionError", "message": "replica cleanup failed"}),
    )
    .await;
    let v = entries(&survivor);
    match a.delete(&v[0]).await {
        Err(ProviderError::Api {
            operation, message, ..
        }) => {
            assert_eq!(operation, "GalleryImageVersions_Delete");
            assert!(message.contains(&v[0].image_id), "{message}");
            assert!(message.contains("ended Failed"), "{message}");
            assert!(message.contains("InternalExecutionError"), "{message}");
            assert!(message.contains("replica cleanup failed"), "{message}");
            assert!(message.contains("still there"), "{message}");
        }
        other => panic!("failed deletion: {other:?}"),
    }
    let body = s.resource(&survivor).await.expect("the version stays");
    assert_eq!(body["properties"]["provisioningState"], "Failed");
    let after = a
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
        .expect("list");
    assert_eq!(after.len(), 2, "still listed in both regions: {after:?}");
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_wrong_secret_and_a_foreign_subscription_are_unauthorized() {
    let s = stand().await;
    let mut wrong = s.secret_credentials();
    wrong.insert("AZURE_CLIENT_SECRET".into(), "kiln~not-the-secret".into());
    match s
        .with(&wrong, &s.settings(true))
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
    {
        Err(ProviderError::Unauthorized(m)) => {
            assert!(m.contains("spec.provider.credentials.secretRef"), "{m}");
            assert!(
                m.contains("AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET"),
                "{m}"
            );
            assert!(m.contains("AADSTS7000215"), "{m}");
            assert!(!m.contains("kiln~not-the-secret"), "{m}");
        }
        other => panic!("wrong secret: {other:?}"),
    }
    // A principal with access to another subscription only.
    let other = s.control("principals", json!({})).await;
    let creds = Credentials::from([
        ("AZURE_TENANT_ID".to_owned(), s.get("tenant_id")),
        (
            "AZURE_CLIENT_ID".to_owned(),
            other["client_id"].as_str().expect("client_id").to_owned(),
        ),
        (
            "AZURE_CLIENT_SECRET".to_owned(),
            other["client_secret"].as_str().expect("secret").to_owned(),
        ),
        ("AZURE_AUTHORITY_HOST".to_owned(), s.get("authority_host")),
    ]);
    let subscription = s.get("subscription_id");
    match s
        .with(&creds, &s.settings(true))
        .check_regions(&regions(&BOTH))
        .await
    {
        Err(ProviderError::Unauthorized(m)) => {
            assert!(m.contains(&subscription), "{m}");
            assert!(m.contains("spec.provider.azure.subscriptionId"), "{m}");
            assert!(m.contains("AuthorizationFailed"), "{m}");
        }
        other => panic!("foreign subscription: {other:?}"),
    }
    // Neither a secret nor a token file: named before any call.
    let mut none = s.secret_credentials();
    none.remove("AZURE_CLIENT_SECRET");
    match s.with(&none, &s.settings(true)).check_credentials().await {
        Err(ProviderError::Misconfigured(m)) => {
            assert!(m.contains("AZURE_FEDERATED_TOKEN_FILE"), "{m}")
        }
        other => panic!("no way to sign in: {other:?}"),
    }
    s.assert_within_spec().await;
}

/// A service account token as AKS projects it (the stand-in does not check
/// signatures).
fn service_account_token() -> String {
    let b64 = |v: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let exp = jiff::Timestamp::now().as_second() + 3_600;
    format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "kid": "kiln-test", "typ": "JWT"})),
        b64(json!({"aud": ["api://AzureADTokenExchange"],
                   "iss": "https://oidc.example.test/kiln",
                   "sub": "system:serviceaccount:kiln-system:kiln-controller",
                   "exp": exp})),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"not-a-signature")
    )
}

#[tokio::test]
async fn workload_identity_gets_a_token_from_the_projected_file() {
    let s = stand().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, service_account_token()).expect("token file");
    let creds = Credentials::from([
        ("AZURE_TENANT_ID".to_owned(), s.get("tenant_id")),
        ("AZURE_CLIENT_ID".to_owned(), s.get("client_id")),
        (
            "AZURE_FEDERATED_TOKEN_FILE".to_owned(),
            file.display().to_string(),
        ),
        ("AZURE_AUTHORITY_HOST".to_owned(), s.get("authority_host")),
    ]);
    let a = s.with(&creds, &s.settings(true));
    assert_eq!(a.auth_method(), Some(azure::auth::Method::WorkloadIdentity));
    let before = s.state().await["counters"]["tokens_issued"]
        .as_u64()
        .unwrap_or(0);
    a.check_credentials().await.expect("token");
    let listed = a
        .list_owned(&regions(&BOTH), "team-a", "base")
        .await
        .expect("an ARM call with it");
    assert!(listed.is_empty());
    let after = s.state().await["counters"]["tokens_issued"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(after, before + 1, "one token, cached");

    // A token file that is not there is the Secret's to fix.
    let mut gone = creds.clone();
    gone.insert(
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        dir.path().join("missing").display().to_string(),
    );
    match s.with(&gone, &s.settings(true)).check_credentials().await {
        Err(ProviderError::Misconfigured(m)) => {
            assert!(m.contains("AZURE_FEDERATED_TOKEN_FILE"), "{m}")
        }
        other => panic!("missing token file: {other:?}"),
    }
    s.assert_within_spec().await;
}
