//! The test services of the clouds without an emulator start on a fresh
//! machine and answer as their clouds do: real Keystone and Glance for
//! OpenStack, the DigitalOcean stand-in, which refuses what DigitalOcean's
//! published spec does not allow, and the Compute Engine stand-in, which
//! refuses what Google's Discovery document does not. The providers' own
//! tests build on these.

use kiln_testenv::Service;
use serde_json::{Value, json};

#[tokio::test]
async fn openstack_keystone_and_glance_answer_per_region() {
    let stack = Service::openstack()
        .await
        .unwrap_or_else(|e| panic!("openstack: {e}"));
    kiln::install_crypto_provider();
    let http = reqwest::Client::new();
    // The auth URL is Keystone's v3 root, as an `OS_AUTH_URL` is.
    let auth = format!(
        "{}/auth/tokens",
        stack.get("/auth_url").trim_end_matches('/')
    );
    // An application credential, as a kiln Secret would hold it.
    let response = http
        .post(&auth)
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
    assert_eq!(
        response.status(),
        201,
        "{auth}: {:?}\n{}",
        response.text().await,
        stack.info
    );
    let token = response
        .headers()
        .get("x-subject-token")
        .and_then(|t| t.to_str().ok())
        .expect("a token")
        .to_owned();
    // A wrong secret is refused, as a kiln build must report.
    let refused = http
        .post(&auth)
        .json(&json!({"auth": {"identity": {
            "methods": ["application_credential"],
            "application_credential": {"id": stack.get("/app_cred_id"), "secret": "wrong"}
        }}}))
        .send()
        .await
        .expect("Keystone");
    assert_eq!(refused.status(), 401);
    let regions = stack.info["regions"].as_array().expect("regions").clone();
    assert_eq!(regions.len(), 2, "{}", stack.info);
    for region in regions {
        let region = region.as_str().expect("region");
        let glance = stack
            .get(&format!("/glance/{region}"))
            .trim_end_matches('/')
            .to_owned();
        let images: Value = http
            .get(format!("{glance}/v2/images"))
            .header("x-auth-token", &token)
            .send()
            .await
            .expect("Glance")
            .error_for_status()
            .expect("Glance lists images")
            .json()
            .await
            .expect("JSON");
        assert!(images["images"].is_array(), "{region}: {images}");
    }
}

#[tokio::test]
async fn the_digitalocean_stand_in_answers_and_refuses_what_the_spec_forbids() {
    let api = Service::digitalocean()
        .await
        .unwrap_or_else(|e| panic!("digitalocean: {e}"));
    kiln::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = api.get("/api_url").trim_end_matches('/').to_owned();
    let regions = http
        .get(format!("{url}/v2/regions"))
        .bearer_auth(api.get("/token"))
        .send()
        .await
        .expect("regions");
    assert_eq!(regions.status(), 200);
    assert!(regions.headers().contains_key("ratelimit-remaining"));
    let anonymous = http
        .get(format!("{url}/v2/regions"))
        .send()
        .await
        .expect("regions");
    assert_eq!(anonymous.status(), 401);
    // What the spec does not allow is refused: a value outside an enum, a
    // missing required field.
    let bad_enum = http
        .get(format!("{url}/v2/images?type=snapshot"))
        .bearer_auth(api.get("/token"))
        .send()
        .await
        .expect("images");
    assert_eq!(bad_enum.status(), 422, "{:?}", bad_enum.text().await);
    let no_size = http
        .post(format!("{url}/v2/droplets"))
        .bearer_auth(api.get("/token"))
        .json(&json!({"name": "x", "region": "nyc3", "image": "ubuntu-22-04-x64"}))
        .send()
        .await
        .expect("droplets");
    assert_eq!(no_size.status(), 422, "{:?}", no_size.text().await);
    // A read-only token cannot write.
    let readonly = http
        .post(format!("{url}/v2/tags"))
        .bearer_auth(api.get("/readonly_token"))
        .json(&json!({"name": "kiln-owned"}))
        .send()
        .await
        .expect("tags");
    assert_eq!(readonly.status(), 403);
}

#[tokio::test]
async fn the_compute_engine_stand_in_answers_and_refuses_what_the_discovery_document_forbids() {
    let gce = Service::gce().await.unwrap_or_else(|e| panic!("gce: {e}"));
    kiln::install_crypto_provider();
    let http = reqwest::Client::new();
    // The API root keeps its trailing slash, as Google's clients expect.
    let api = gce.get("/api_url").to_owned();
    let project = gce.get("/project");
    let token = gce.get("/token");
    let zones = http
        .get(format!("{api}projects/{project}/zones"))
        .bearer_auth(token)
        .send()
        .await
        .expect("zones");
    assert_eq!(zones.status(), 200);
    let zones: Value = zones.json().await.expect("JSON");
    assert!(
        zones["items"].as_array().is_some_and(|z| !z.is_empty()),
        "{zones}"
    );
    let anonymous = http
        .get(format!("{api}projects/{project}/global/images"))
        .send()
        .await
        .expect("images");
    assert_eq!(anonymous.status(), 401);
    // A field the Image schema does not declare, and a value outside an
    // enum, are refused as Compute Engine refuses them.
    let undeclared = http
        .post(format!("{api}projects/{project}/global/images"))
        .bearer_auth(token)
        .json(&json!({"name": "x", "sourceDisk": "zones/us-central1-a/disks/d", "colour": "red"}))
        .send()
        .await
        .expect("insert");
    assert_eq!(undeclared.status(), 400, "{:?}", undeclared.text().await);
    let bad_enum = http
        .post(format!("{api}projects/{project}/global/images/x/deprecate"))
        .bearer_auth(token)
        .json(&json!({"state": "RETIRED"}))
        .send()
        .await
        .expect("deprecate");
    assert_eq!(bad_enum.status(), 400, "{:?}", bad_enum.text().await);
}
