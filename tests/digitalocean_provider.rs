//! The DigitalOcean provider against the DigitalOcean stand-in
//! (`hack/digitalocean`), which checks every request and response against
//! DigitalOcean's published OpenAPI spec: region checks, claims of snapshots
//! made through the API as Packer makes them, listing by owner tag with
//! pagination, deletion, a read-only token, and rate limiting.

use std::time::{Duration, Instant};

use kiln::{
    api::RegionArtifact,
    provider::{
        ImageProvider, Owner, Pacing, ProviderError,
        digitalocean::{self, DigitalOcean},
    },
};
use kiln_testenv::Service;
use serde_json::{Value, json};

struct Stand {
    _service: Service,
    http: reqwest::Client,
    api: String,
    control: String,
    token: String,
    readonly_token: String,
}

async fn stand() -> Stand {
    let service = Service::digitalocean()
        .await
        .unwrap_or_else(|e| panic!("digitalocean stand-in: {e}"));
    kiln::install_crypto_provider();
    Stand {
        http: reqwest::Client::new(),
        api: service.get("/api_url").trim_end_matches('/').to_owned(),
        control: service.get("/control_url").trim_end_matches('/').to_owned(),
        token: service.get("/token").to_owned(),
        readonly_token: service.get("/readonly_token").to_owned(),
        _service: service,
    }
}

impl Stand {
    /// The provider as tests use it: unpaced, with short backoff.
    fn provider(&self, token: &str) -> DigitalOcean {
        DigitalOcean::new(&self.api, token)
            .with_pacing(Pacing::UNLIMITED)
            .with_backoff(Duration::from_millis(10), Duration::from_secs(5))
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

    /// Every request kiln sent declared only what the spec declares, and
    /// the stand-in answered within it (Prism checked the rest on the way).
    async fn assert_within_spec(&self) {
        let state: Value = self
            .http
            .get(format!("{}/state", self.control))
            .send()
            .await
            .expect("control state")
            .json()
            .await
            .expect("state JSON");
        let counts = &state["counts"];
        assert_eq!(counts["strict_request_failures"], 0, "{counts}");
        assert_eq!(counts["strict_response_failures"], 0, "{counts}");
        assert!(counts["requests"].as_u64() > Some(0), "{counts}");
    }

    /// Seeds a snapshot; returns its ID.
    async fn seed(&self, body: Value) -> String {
        let out = self.control("images", body).await;
        out["image"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("seeded image: {out}"))
            .to_string()
    }

    /// An API call with the read-write token: status and body.
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API call");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GETs `path` until `done` holds on the body (or fails after 60 s).
    async fn poll(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.api(reqwest::Method::GET, path, None).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path}: still {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
        }
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

fn artifact(region: &str, image_id: &str) -> RegionArtifact {
    RegionArtifact {
        region: region.into(),
        image_id: image_id.into(),
    }
}

fn regions(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn regions_are_checked_and_a_refused_token_names_the_secret() {
    let s = stand().await;
    let d = s.provider(&s.token);
    d.check_regions(&regions(&["nyc3", "sfo3"]))
        .await
        .expect("known regions pass");
    match d.check_regions(&regions(&["nyc3", "xx9"])).await {
        Err(ProviderError::Invalid(m)) => {
            assert!(
                m.starts_with("spec.provider.regions: 'xx9' is not a DigitalOcean region"),
                "{m}"
            );
            assert!(m.contains("use one of: nyc1, nyc3, sfo3"), "{m}");
        }
        other => panic!("unknown region: {other:?}"),
    }
    let bad_token = "dop_v1_not-a-token-of-this-account";
    match s
        .provider(bad_token)
        .check_regions(&regions(&["nyc3"]))
        .await
    {
        Err(ProviderError::Unauthorized(m)) => {
            assert!(m.contains("spec.provider.credentials.secretRef"), "{m}");
            assert!(
                m.contains("DIGITALOCEAN_TOKEN") && m.contains("fix the Secret"),
                "{m}"
            );
            assert!(m.contains("Unable to authenticate you"), "{m}");
            assert!(!m.contains(bad_token), "{m}");
        }
        other => panic!("bad token: {other:?}"),
    }
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_snapshot_made_as_packer_makes_it_is_claimed_in_each_region() {
    let s = stand().await;
    s.control("config", json!({"action_seconds": 0.2})).await;
    // As Packer does: a droplet, a snapshot of it, a transfer.
    let (status, created) = s
        .api(
            reqwest::Method::POST,
            "/v2/droplets",
            Some(
                json!({"name": "kiln-test", "region": "nyc3", "size": "s-1vcpu-1gb",
                        "image": "ubuntu-22-04-x64"}),
            ),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let droplet = created["droplet"]["id"].as_u64().expect("droplet id");
    s.poll(&format!("/v2/droplets/{droplet}"), |b| {
        b["droplet"]["status"] == "active" && b["droplet"]["locked"] == false
    })
    .await;
    let (status, action) = s
        .api(
            reqwest::Method::POST,
            &format!("/v2/droplets/{droplet}/actions"),
            Some(json!({"type": "snapshot", "name": "kiln-base-1"})),
        )
        .await;
    assert_eq!(status, 201, "{action}");
    let action = action["action"]["id"].as_u64().expect("action id");
    s.poll(&format!("/v2/actions/{action}"), |b| {
        b["action"]["status"] == "completed"
    })
    .await;
    let snapshots = s
        .poll(&format!("/v2/droplets/{droplet}/snapshots"), |b| {
            b["snapshots"][0]["id"].is_u64()
        })
        .await;
    let id = snapshots["snapshots"][0]["id"]
        .as_u64()
        .expect("snapshot id")
        .to_string();

    let d = s.provider(&s.token);
    let o = owner("team-a", "base.ubuntu", "3f2a9c01bd-2");
    // Not yet in sfo3: not ready, and nothing tagged.
    let reported = [artifact("nyc3", &id), artifact("sfo3", &id)];
    match d.claim(&reported, &o).await {
        Err(ProviderError::ImageNotReady {
            region,
            image_id,
            state,
        }) => {
            assert_eq!((region.as_str(), image_id.as_str()), ("sfo3", id.as_str()));
            assert_eq!(state, "transferring to sfo3");
        }
        other => panic!("claim before the transfer: {other:?}"),
    }
    let (_, image) = s
        .api(reqwest::Method::GET, &format!("/v2/images/{id}"), None)
        .await;
    assert_eq!(image["image"]["tags"], json!([]), "{image}");

    let (status, transfer) = s
        .api(
            reqwest::Method::POST,
            &format!("/v2/images/{id}/actions"),
            Some(json!({"type": "transfer", "region": "sfo3"})),
        )
        .await;
    assert_eq!(status, 201, "{transfer}");
    s.poll(&format!("/v2/images/{id}"), |b| {
        b["image"]["regions"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("sfo3")))
    })
    .await;

    let claimed = d.claim(&reported, &o).await.expect("claim");
    assert_eq!(claimed.artifacts, reported);
    assert_eq!(claimed.note, None);
    // Claiming again (a restarted controller) is fine: the tags exist.
    d.claim(&reported, &o).await.expect("claim again");

    let (_, image) = s
        .api(reqwest::Method::GET, &format!("/v2/images/{id}"), None)
        .await;
    let tags: Vec<&str> = image["image"]["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for tag in digitalocean::owner_tags(&o) {
        assert!(tags.contains(&tag.as_str()), "{tag} not in {tags:?}");
    }
    assert!(tags.contains(&"kiln:owner:team-a:base_ubuntu"), "{tags:?}");

    let listed = d
        .list_owned(&regions(&["nyc3", "sfo3", "ams3"]), "team-a", "base.ubuntu")
        .await
        .expect("list");
    let mut where_: Vec<(&str, &str)> = listed
        .iter()
        .map(|i| (i.region.as_str(), i.image_id.as_str()))
        .collect();
    where_.sort();
    assert_eq!(where_, [("nyc3", id.as_str()), ("sfo3", id.as_str())]);
    for i in &listed {
        let owner = i.owner.as_ref().expect("owner");
        assert_eq!(
            (
                owner.namespace.as_str(),
                owner.image_build.as_str(),
                owner.build_id.as_str()
            ),
            ("team-a", "base.ubuntu", "3f2a9c01bd-2")
        );
        assert_eq!(i.name.as_deref(), Some("kiln-base-1"));
        assert!(!i.keep && !i.deprecated);
        assert!(i.tags.contains_key("kiln:managed"));
    }

    // A region the snapshot never went to, an unknown ID, a broken one.
    match d
        .claim(&[artifact("nyc3", &id), artifact("ams3", &id)], &o)
        .await
    {
        Err(ProviderError::ImageNotReady { region, state, .. }) => {
            assert_eq!(
                (region.as_str(), state.as_str()),
                ("ams3", "transferring to ams3")
            );
        }
        other => panic!("claim in ams3: {other:?}"),
    }
    for missing in ["6999999", "not-an-id"] {
        match d.claim(&[artifact("nyc3", missing)], &o).await {
            Err(ProviderError::ImageMissing { region, image_id }) => {
                assert_eq!((region.as_str(), image_id.as_str()), ("nyc3", missing));
            }
            other => panic!("claim of {missing}: {other:?}"),
        }
    }
    s.assert_within_spec().await;
}

#[tokio::test]
async fn snapshots_not_yet_usable_or_gone_bad_are_told_apart() {
    let s = stand().await;
    let d = s.provider(&s.token);
    let o = owner("team-a", "base", "3f2a9c01bd-3");
    let pending = s.seed(json!({"status": "pending"})).await;
    match d.claim(&[artifact("nyc3", &pending)], &o).await {
        Err(ProviderError::ImageNotReady { state, .. }) => assert_eq!(state, "pending"),
        other => panic!("pending: {other:?}"),
    }
    let retired = s.seed(json!({"status": "retired"})).await;
    match d.claim(&[artifact("nyc3", &retired)], &o).await {
        Err(ProviderError::ImageFailed {
            state, image_id, ..
        }) => {
            assert_eq!(
                (state.as_str(), image_id.as_str()),
                ("retired", retired.as_str())
            );
        }
        other => panic!("retired: {other:?}"),
    }
    s.assert_within_spec().await;
}

#[tokio::test]
async fn only_the_image_builds_own_snapshots_are_listed_and_deleted() {
    let s = stand().await;
    let d = s.provider(&s.token);
    let mine = owner("team-a", "base", "3f2a9c01bd-1");
    let tags = digitalocean::owner_tags(&mine);
    let mut owned = Vec::new();
    for day in 1..=5 {
        owned.push(
            s.seed(
                json!({"name": format!("base-{day}"), "regions": ["nyc3", "sfo3"],
                          "created_at": format!("2026-01-0{day}T00:00:00Z"), "tags": tags}),
            )
            .await,
        );
    }
    let mut kept_tags = tags.clone();
    kept_tags.push("kiln:keep".into());
    let kept = s
        .seed(json!({"name": "base-kept", "regions": ["nyc3"],
                      "created_at": "2025-12-01T00:00:00Z", "tags": kept_tags}))
        .await;
    // Another ImageBuild's, one claimed by two ImageBuilds, one with no
    // owner at all, one of a namesake in another namespace.
    let foreign = s
        .seed(json!({"tags": digitalocean::owner_tags(&owner("team-a", "web", "aaaaaaaaaa-1"))}))
        .await;
    let mut both = tags.clone();
    both.push(digitalocean::owner_tag("team-a", "web"));
    s.seed(json!({"tags": both})).await;
    s.seed(json!({"tags": ["kiln:managed"]})).await;
    s.seed(json!({"tags": digitalocean::owner_tags(&owner("team-b", "base", "bbbbbbbbbb-1"))}))
        .await;

    let listed = d
        .list_owned(&regions(&["nyc3", "sfo3"]), "team-a", "base")
        .await
        .expect("list");
    let mut seen: Vec<(String, String, bool)> = listed
        .iter()
        .map(|i| (i.image_id.clone(), i.region.clone(), i.keep))
        .collect();
    seen.sort();
    let mut want: Vec<(String, String, bool)> = owned
        .iter()
        .flat_map(|id| {
            [
                (id.clone(), "nyc3".to_owned(), false),
                (id.clone(), "sfo3".to_owned(), false),
            ]
        })
        .chain([(kept.clone(), "nyc3".to_owned(), true)])
        .collect();
    want.sort();
    assert_eq!(seen, want);
    let first = listed
        .iter()
        .find(|i| i.image_id == owned[0])
        .expect("listed");
    assert_eq!(first.created_at.to_string(), "2026-01-01T00:00:00Z");
    assert_eq!(first.name.as_deref(), Some("base-1"));
    assert_eq!(first.build_id(), Some("3f2a9c01bd-1"));
    // Only the regions asked about.
    let nyc3 = d
        .list_owned(&regions(&["nyc3"]), "team-a", "base")
        .await
        .expect("list nyc3");
    assert!(nyc3.iter().all(|i| i.region == "nyc3") && nyc3.len() == 6);
    let web = d
        .list_owned(&regions(&["nyc3"]), "team-a", "web")
        .await
        .expect("list web");
    assert_eq!(
        web.iter().map(|i| i.image_id.as_str()).collect::<Vec<_>>(),
        [foreign.as_str()]
    );

    // Deleting in one region deletes the snapshot; the other region's entry
    // then finds it gone, which is fine.
    let victim: Vec<_> = listed.iter().filter(|i| i.image_id == owned[0]).collect();
    assert_eq!(victim.len(), 2);
    assert_eq!(d.delete(victim[0]).await.expect("delete"), None);
    let (status, _) = s
        .api(
            reqwest::Method::GET,
            &format!("/v2/images/{}", owned[0]),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(d.delete(victim[1]).await.expect("delete again"), None);
    assert_eq!(d.delete(victim[0]).await.expect("and again"), None);
    let (status, _) = s
        .api(
            reqwest::Method::GET,
            &format!("/v2/images/{}", owned[1]),
            None,
        )
        .await;
    assert_eq!(status, 200, "the others stay");
    let after = d
        .list_owned(&regions(&["nyc3", "sfo3"]), "team-a", "base")
        .await
        .expect("list");
    assert_eq!(after.len(), want.len() - 2);

    assert_eq!(
        d.deprecate(
            first,
            &kiln::provider::Deprecation::deprecated(jiff::Timestamp::now())
        )
        .await
        .expect("deprecate"),
        Some("kept: DigitalOcean has no deprecation of its own".to_owned())
    );
    s.assert_within_spec().await;
}

#[tokio::test]
async fn listing_follows_every_page() {
    let s = stand().await;
    let d = s.provider(&s.token);
    let tags = digitalocean::owner_tags(&owner("ns", "many", "cccccccccc-1"));
    for _ in 0..203 {
        s.seed(json!({"tags": tags})).await;
    }
    let before = d.api_calls();
    let listed = d
        .list_owned(&regions(&["nyc3"]), "ns", "many")
        .await
        .expect("list");
    assert_eq!(listed.len(), 203);
    let mut ids: Vec<&str> = listed.iter().map(|i| i.image_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 203, "no image twice");
    assert_eq!(d.api_calls() - before, 2, "two pages of 200");
    s.assert_within_spec().await;
}

#[tokio::test]
async fn a_read_only_token_cannot_claim() {
    let s = stand().await;
    let id = s.seed(json!({"regions": ["nyc3"]})).await;
    let d = s.provider(&s.readonly_token);
    d.check_regions(&regions(&["nyc3"]))
        .await
        .expect("a read-only token reads");
    match d
        .claim(&[artifact("nyc3", &id)], &owner("ns", "ro", "dddddddddd-1"))
        .await
    {
        Err(ProviderError::Unauthorized(m)) => {
            assert!(m.contains("lacks write scope"), "{m}");
            assert!(
                m.contains("create a token with read and write scope"),
                "{m}"
            );
            assert!(m.contains("You do not have access"), "{m}");
            assert!(!m.contains(&s.readonly_token), "{m}");
        }
        other => panic!("read-only claim: {other:?}"),
    }
    s.assert_within_spec().await;
}

#[tokio::test]
async fn rate_limiting_is_waited_out_then_reported() {
    let s = stand().await;
    // Paced (so that the bucket is held), but fast.
    let d = s.provider(&s.token).with_pacing(Pacing {
        concurrency: 4,
        requests_per_second: 1_000.0,
        burst: 10,
    });
    // A few 429s: waited out.
    s.control("ratelimit", json!({"count": 3, "retry_after": 0}))
        .await;
    let before = d.api_calls();
    d.check_regions(&regions(&["nyc3"]))
        .await
        .expect("succeeds after three 429s");
    assert_eq!(d.api_calls() - before, 4);

    // More than the attempts: the call fails, to be retried later.
    s.control("ratelimit", json!({"count": 100, "retry_after": 0}))
        .await;
    let before = d.api_calls();
    match d.check_regions(&regions(&["nyc3"])).await {
        Err(ProviderError::Api { message, .. }) => {
            assert!(message.contains("rate limit"), "{message}");
            assert!(message.contains("exhausted"), "{message}");
            assert!(message.contains("retried later"), "{message}");
            assert!(message.contains("API Rate limit exceeded"), "{message}");
        }
        other => panic!("after the attempts: {other:?}"),
    }
    assert_eq!(d.api_calls() - before, u64::from(digitalocean::ATTEMPTS));

    // A Retry-After longer than a call may wait: fails at once.
    s.control("ratelimit", json!({"count": 1, "retry_after": 30}))
        .await;
    let d = s
        .provider(&s.token)
        .with_backoff(Duration::from_millis(10), Duration::from_secs(1));
    let started = Instant::now();
    match d.check_regions(&regions(&["nyc3"])).await {
        Err(ProviderError::Api { message, .. }) => {
            assert!(message.contains("retry after 30s"), "{message}");
        }
        other => panic!("long Retry-After: {other:?}"),
    }
    assert_eq!(d.api_calls(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The budget back: calls go through again.
    s.control("ratelimit", json!({"count": 0})).await;
    d.check_regions(&regions(&["nyc3"]))
        .await
        .expect("budget back");
    s.assert_within_spec().await;
}
