//! The CRDs on a real kube-apiserver: they install, every sample is accepted,
//! and bad manifests are refused with a message that names the field.

use std::path::Path;

use kiln::api::{ImageBuild, ImagePolicy};
use kiln_testenv::{ControlPlane, Options};
use kube::{
    Api, Client,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};

const NS: &str = "default";

async fn control_plane() -> (ControlPlane, Client) {
    let plane = ControlPlane::start(Options::default())
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let client = plane.admin_client().await.expect("admin client");
    kiln::crdgen::apply(&client, std::time::Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (plane, client)
}

fn api_for(client: &Client, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kiln.dev", "v1alpha1", kind);
    let plural = match kind {
        "ImageBuild" => "imagebuilds",
        "ImagePolicy" => "imagepolicies",
        other => panic!("unexpected kind {other}"),
    };
    Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

async fn create(client: &Client, manifest: &Value) -> Result<DynamicObject, kube::Error> {
    let obj: DynamicObject =
        serde_json::from_value(manifest.clone()).expect("manifest is an object");
    let kind = manifest["kind"].as_str().expect("kind");
    api_for(client, kind)
        .create(&PostParams::default(), &obj)
        .await
}

/// RFC 7386 JSON merge patch, enough to derive invalid manifests from valid ones.
fn merged(base: &Value, patch: Value) -> Value {
    fn merge(target: &mut Value, patch: Value) {
        let Value::Object(fields) = patch else {
            *target = patch;
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        let Some(map) = target.as_object_mut() else {
            return;
        };
        for (k, v) in fields {
            if v.is_null() {
                map.remove(&k);
            } else {
                merge(map.entry(k).or_insert(Value::Null), v);
            }
        }
    }
    let mut out = base.clone();
    merge(&mut out, patch);
    out
}

fn build(name: &str) -> Value {
    json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "provider": {"type": "aws", "regions": ["us-east-1"]},
            "template": {"inline": "source \"null\" \"x\" { communicator = \"none\" }"}
        }
    })
}

fn policy(name: &str) -> Value {
    json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {"builds": {"names": ["base-ami"]}, "keepLast": 3}
    })
}

#[tokio::test]
async fn crds_install_and_every_sample_is_accepted() {
    let (plane, client) = control_plane().await;

    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut files: Vec<_> = std::fs::read_dir(&samples)
        .expect("config/samples")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected a sample per provider and policies, found {files:?}"
    );

    let mut kinds = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read sample");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let manifest: Value = serde::Deserialize::deserialize(doc).expect("sample is YAML");
            let created = create(&client, &manifest)
                .await
                .unwrap_or_else(|e| panic!("{} was refused: {e}", file.display()));
            // What the apiserver stored (with schema defaults) reads back as the typed API.
            let stored = serde_json::to_value(&created).expect("serialize");
            match manifest["kind"].as_str() {
                Some("ImageBuild") => {
                    serde_json::from_value::<ImageBuild>(stored).unwrap_or_else(|e| {
                        panic!("{}: stored object does not parse: {e}", file.display())
                    });
                }
                Some("ImagePolicy") => {
                    serde_json::from_value::<ImagePolicy>(stored).unwrap_or_else(|e| {
                        panic!("{}: stored object does not parse: {e}", file.display())
                    });
                }
                other => panic!("{}: unexpected kind {other:?}", file.display()),
            }
            kinds.insert(manifest["kind"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(kinds.len(), 2, "samples cover both kinds");

    // Schema defaults are applied at admission.
    let created = create(
        &client,
        &json!({
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": "defaults"},
            "spec": {"builds": {"names": ["base-ami"]}}
        }),
    )
    .await
    .expect("minimal policy is accepted");
    let policy: ImagePolicy =
        serde_json::from_value(serde_json::to_value(created).expect("json")).expect("typed");
    assert_eq!(policy.spec.keep_last, 3);
    assert_eq!(policy.spec.interval, std::time::Duration::from_secs(3600));
    plane.stop().await;
}

#[tokio::test]
async fn invalid_manifests_are_refused_naming_the_field() {
    let (plane, client) = control_plane().await;
    let b = build("bad");
    let p = policy("bad");
    // (case, manifest, substrings the apiserver's message must contain)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "no template source",
            merged(&b, json!({"spec": {"template": {"inline": null}}})),
            vec![
                "spec.template",
                "must set exactly one of inline, configMapRef, git or sourceRef",
            ],
        ),
        (
            "two template sources",
            merged(
                &b,
                json!({"spec": {"template": {"configMapRef": {"name": "t", "key": "a.pkr.hcl"}}}}),
            ),
            vec!["spec.template", "exactly one of"],
        ),
        (
            "empty regions",
            merged(&b, json!({"spec": {"provider": {"regions": []}}})),
            vec!["spec.provider.regions", "at least one region"],
        ),
        (
            "malformed AWS region",
            merged(
                &b,
                json!({"spec": {"provider": {"regions": ["Mars North"]}}}),
            ),
            vec!["spec.provider.regions", "AWS regions look like"],
        ),
        (
            "unknown provider",
            merged(&b, json!({"spec": {"provider": {"type": "vultr"}}})),
            vec!["spec.provider.type", "Unsupported value: \"vultr\""],
        ),
        (
            "endpoint with ftp scheme",
            merged(
                &b,
                json!({"spec": {"provider": {"endpoint": "ftp://moto:5000"}}}),
            ),
            vec![
                "spec.provider.endpoint",
                "must be an http:// or https:// URL",
            ],
        ),
        (
            "endpoint that is no URL",
            merged(
                &b,
                json!({"spec": {"provider": {"endpoint": "localhost 5000"}}}),
            ),
            vec![
                "spec.provider.endpoint",
                "must be an http:// or https:// URL",
            ],
        ),
        (
            "cron in words",
            merged(&b, json!({"spec": {"schedule": "every monday"}})),
            vec!["spec.schedule", "must be a cron expression"],
        ),
        (
            "cron with four fields",
            merged(&b, json!({"spec": {"schedule": "0 3 * *"}})),
            vec!["spec.schedule", "five fields"],
        ),
        (
            "timeout not a duration",
            merged(&b, json!({"spec": {"timeout": "5 minutes"}})),
            vec!["spec.timeout", "should match"],
        ),
        (
            "timeout too long",
            merged(&b, json!({"spec": {"timeout": "100h"}})),
            vec!["spec.timeout", "between 1m and 48h"],
        ),
        (
            "gcp without project",
            merged(
                &b,
                json!({"spec": {"provider": {"type": "gcp", "regions": ["us-central1-a"]}}}),
            ),
            vec![
                "spec.provider.gcp",
                "required when spec.provider.type is gcp",
            ],
        ),
        (
            "azure settings on aws",
            merged(
                &b,
                json!({"spec": {"provider": {"azure": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg"}}}}),
            ),
            vec!["spec.provider.azure", "allowed only then"],
        ),
        (
            "gcp with a region, not a zone",
            merged(
                &b,
                json!({"spec": {"provider": {"type": "gcp", "regions": ["us-central1"], "gcp": {"projectId": "my-project"}}}}),
            ),
            vec!["spec.provider.regions", "exactly one zone"],
        ),
        (
            "gcp with two zones",
            merged(
                &b,
                json!({"spec": {"provider": {"type": "gcp", "regions": ["us-central1-a", "europe-west4-b"], "gcp": {"projectId": "my-project"}}}}),
            ),
            vec!["spec.provider.regions", "images are global"],
        ),
        (
            "gcp project id malformed",
            merged(
                &b,
                json!({"spec": {"provider": {"type": "gcp", "regions": ["us-central1-a"], "gcp": {"projectId": "My_Project"}}}}),
            ),
            vec!["spec.provider.gcp.projectId", "should match"],
        ),
        (
            "parent is itself",
            merged(&b, json!({"spec": {"parent": {"name": "bad"}}})),
            vec!["spec.parent.name", "must name another ImageBuild"],
        ),
        (
            "reserved variable",
            merged(&b, json!({"spec": {"variables": {"kiln_build_id": "x"}}})),
            vec!["spec.variables", "reserved"],
        ),
        (
            "variable name starting with a digit",
            merged(&b, json!({"spec": {"variables": {"1st": "x"}}})),
            vec!["spec.variables", "Packer variable name"],
        ),
        (
            "variablesFrom of a Pod",
            merged(
                &b,
                json!({"spec": {"variablesFrom": [{"kind": "Pod", "name": "p"}]}}),
            ),
            vec!["spec.variablesFrom[0].kind", "Unsupported value"],
        ),
        (
            "retry limit too high",
            merged(&b, json!({"spec": {"retry": {"limit": 11}}})),
            vec!["spec.retry.limit", "between 0 and 10"],
        ),
        (
            "git URL without scheme",
            merged(
                &b,
                json!({"spec": {"template": {"inline": null, "git": {"url": "github.com/acme/images"}}}}),
            ),
            vec!["spec.template.git.url", "Git URL"],
        ),
        (
            "git ref with branch and tag",
            merged(
                &b,
                json!({"spec": {"template": {"inline": null, "git": {"url": "https://github.com/acme/images", "ref": {"branch": "main", "tag": "v1"}}}}}),
            ),
            vec!["spec.template.git.ref", "only one of branch, tag or commit"],
        ),
        (
            "git path escaping the repository",
            merged(
                &b,
                json!({"spec": {"template": {"inline": null, "git": {"url": "https://github.com/acme/images", "path": "../etc/passwd"}}}}),
            ),
            vec!["spec.template.git.path", "must not contain '..'"],
        ),
        (
            "service account on the process executor",
            merged(
                &b,
                json!({"spec": {"executor": {"type": "process", "serviceAccountName": "builder"}}}),
            ),
            vec![
                "spec.executor.serviceAccountName",
                "applies only to the job executor",
            ],
        ),
        (
            "missing provider",
            merged(&b, json!({"spec": {"provider": null}})),
            vec!["spec.provider", "Required value"],
        ),
        (
            "keepLast zero",
            merged(&p, json!({"spec": {"keepLast": 0}})),
            vec!["spec.keepLast", "between 1 and 1000"],
        ),
        (
            "minAge longer than maxAge",
            merged(&p, json!({"spec": {"minAge": "48h", "maxAge": "24h"}})),
            vec!["spec.minAge", "must not be longer than spec.maxAge"],
        ),
        (
            "policy selecting nothing",
            merged(&p, json!({"spec": {"builds": {"names": null}}})),
            vec!["spec.builds", "must set names or selector"],
        ),
        (
            "deprecate after delete",
            merged(
                &p,
                json!({"spec": {"deprecateAfter": "720h", "deleteAfter": "168h"}}),
            ),
            vec!["spec.deprecateAfter", "shorter than spec.deleteAfter"],
        ),
        (
            "obsolete without delete",
            merged(&p, json!({"spec": {"obsoleteAfter": "72h"}})),
            vec!["spec.obsoleteAfter", "needs a longer spec.deleteAfter"],
        ),
        (
            "obsolete before deprecated",
            merged(
                &p,
                json!({"spec": {"deprecateAfter": "96h", "obsoleteAfter": "72h", "deleteAfter": "168h"}}),
            ),
            vec!["spec.obsoleteAfter", "DEPRECATED comes before OBSOLETE"],
        ),
        (
            "interval too short",
            merged(&p, json!({"spec": {"interval": "10s"}})),
            vec!["spec.interval", "at least 1m"],
        ),
        (
            "empty region",
            merged(
                &b,
                json!({"spec": {"provider": {"type": "openstack", "regions": [""], "aws": null}}}),
            ),
            vec!["spec.provider.regions[0]"],
        ),
        (
            "selector operator Like",
            merged(
                &p,
                json!({"spec": {"builds": {"names": null, "selector": {"matchExpressions": [{"key": "tier", "operator": "Like", "values": ["base"]}]}}}}),
            ),
            vec![
                "spec.builds.selector.matchExpressions",
                "In, NotIn, Exists or DoesNotExist",
            ],
        ),
        (
            "selector In without values",
            merged(
                &p,
                json!({"spec": {"builds": {"names": null, "selector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}}}}),
            ),
            vec!["spec.builds.selector.matchExpressions", "need values"],
        ),
        (
            "maxAge in days",
            merged(&p, json!({"spec": {"maxAge": "30d"}})),
            vec!["spec.maxAge", "should match"],
        ),
    ];
    assert!(cases.len() >= 15);

    let mut failures = Vec::new();
    for (case, manifest, expected) in &cases {
        match create(&client, manifest).await {
            Ok(_) => failures.push(format!("{case}: was accepted")),
            Err(kube::Error::Api(status)) => {
                println!("{case}: {}", status.message);
                let missing: Vec<_> = expected
                    .iter()
                    .filter(|s| !status.message.contains(**s))
                    .collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{case}: code {} message {:?} lacks {missing:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(other) => failures.push(format!("{case}: unexpected error {other}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    plane.stop().await;
}
