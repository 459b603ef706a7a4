//! Bad input and failing builds end as conditions that name the cause and the
//! fix, while the controller keeps serving every other object.

mod support;

use std::time::Duration;

use kiln::api::ImageBuild;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;
use support::*;

const NS: &str = "failures";
const T: Duration = Duration::from_secs(180);
const SECRET_KEY: &str = "Sup3r-s3cret-AWS-key-value";

fn reason(ib: &ImageBuild, type_: &str) -> String {
    condition(ib, type_)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn message(ib: &ImageBuild) -> String {
    let m = condition(ib, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    println!(
        "{}: {} / {m}",
        ib.metadata.name.as_deref().unwrap_or_default(),
        reason(ib, "Ready")
    );
    m
}

fn with_template(mut ib: ImageBuild, template: &str) -> ImageBuild {
    ib.spec.template.inline = Some(template.to_owned());
    ib
}

#[tokio::test]
async fn bad_input_stalls_or_waits_and_failed_builds_retry_then_stall() {
    let env = Env::start(false).await;
    env.namespace(NS).await;
    env.aws_secret(
        NS,
        "aws",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    )
    .await;
    env.aws_secret(NS, "half", &[("AWS_ACCESS_KEY_ID", "testing")])
        .await;
    let controller = env
        .controller("c", &["--default-executor", "process"])
        .await;
    let api: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let endpoint = env.moto.endpoint();
    let create = |ib: ImageBuild| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &ib)
                .await
                .expect("create")
        }
    };

    // A template that does not parse: Stalled at once, no retries.
    create(with_template(
        image_build("unparsable", endpoint, &["us-east-1"], json!({})),
        "source \"amazon-ebs\" \"x\" { region = ",
    ))
    .await;
    // A variable Packer rejects (a number that is not one).
    let typed = "variable \"disk_gb\" { type = number }\nsource \"null\" \"n\" { communicator = \"none\" }\nbuild { sources = [\"source.null.n\"] }\n";
    create(with_template(
        image_build(
            "bad-variable",
            endpoint,
            &["us-east-1"],
            json!({"disk_gb": "lots"}),
        ),
        typed,
    ))
    .await;
    // A build that fails at run time: retried once, then Stalled.
    create(image_build(
        "flaky",
        endpoint,
        &["us-east-1"],
        json!({"fail": "yes"}),
    ))
    .await;
    // A Secret that does not exist yet.
    let mut waiting = image_build(
        "waits",
        endpoint,
        &["us-east-1"],
        json!({"flavor": "waits"}),
    );
    waiting
        .spec
        .provider
        .credentials
        .as_mut()
        .expect("credentials")
        .secret_ref
        .name = "late".into();
    create(waiting).await;
    // A Secret without the keys AWS needs.
    let mut half = image_build("half-secret", endpoint, &["us-east-1"], json!({}));
    half.spec
        .provider
        .credentials
        .as_mut()
        .expect("credentials")
        .secret_ref
        .name = "half".into();
    create(half).await;
    // A region EC2 does not have (well-formed, so admission lets it through).
    create(image_build(
        "nowhere",
        endpoint,
        &["us-east-1", "xx-nowhere-9"],
        json!({}),
    ))
    .await;
    // A template from a ConfigMap that does not exist yet.
    let mut from_cm = image_build(
        "from-configmap",
        endpoint,
        &["us-east-1"],
        json!({"flavor": "cm"}),
    );
    from_cm.spec.template.inline = None;
    from_cm.spec.template.config_map_ref = Some(kiln::api::LocalKeyReference {
        name: "templates".into(),
        key: "app.pkr.hcl".into(),
    });
    create(from_cm).await;
    // And one good build among them.
    create(image_build(
        "good",
        endpoint,
        &["us-east-1"],
        json!({"flavor": "good"}),
    ))
    .await;

    let ib = wait_for(&api, "unparsable", T, &controller.log, is_stalled).await;
    assert_eq!(reason(&ib, "Stalled"), "BuildInvalid");
    assert!(
        message(&ib).contains("packer validate failed")
            && message(&ib).contains("Invalid expression"),
        "{}",
        message(&ib)
    );

    let ib = wait_for(&api, "bad-variable", T, &controller.log, is_stalled).await;
    assert_eq!(reason(&ib, "Stalled"), "BuildInvalid");
    assert!(
        message(&ib).contains("disk_gb"),
        "names the variable: {}",
        message(&ib)
    );

    let ib = wait_for(&api, "half-secret", T, &controller.log, is_stalled).await;
    assert_eq!(reason(&ib, "Stalled"), "CredentialsInvalid");
    assert!(
        message(&ib).contains("Secret failures/half")
            && message(&ib).contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        message(&ib)
    );

    let ib = wait_for(&api, "nowhere", T, &controller.log, is_stalled).await;
    assert_eq!(reason(&ib, "Stalled"), "InvalidRegion");
    assert!(
        message(&ib).contains("'xx-nowhere-9' is not an EC2 region")
            && message(&ib).contains("us-east-1"),
        "{}",
        message(&ib)
    );

    let ib = wait_for(&api, "waits", T, &controller.log, |ib| {
        reason(ib, "Ready") == "CredentialsNotFound"
    })
    .await;
    assert!(
        message(&ib).contains("Secret failures/late") && message(&ib).contains("not found"),
        "{}",
        message(&ib)
    );
    assert!(
        !is_stalled(&ib),
        "a missing Secret is waited for, not a stall"
    );

    let ib = wait_for(&api, "good", T, &controller.log, is_ready).await;
    assert!(ib.status.and_then(|s| s.latest_image).is_some());

    let ib = wait_for(&api, "flaky", T, &controller.log, is_stalled).await;
    assert_eq!(reason(&ib, "Stalled"), "RetriesExhausted");
    let status = ib.status.clone().expect("status");
    assert_eq!(status.history.len(), 2, "first attempt and one retry");
    assert!(status.history.iter().all(|h| {
        h.message
            .as_deref()
            .is_some_and(|m| m.contains("packer build failed"))
    }));
    assert!(
        message(&ib).contains("gave up after 2 failed attempts"),
        "{}",
        message(&ib)
    );

    let ib = wait_for(&api, "from-configmap", T, &controller.log, |ib| {
        reason(ib, "Ready") == "TemplateNotFound"
    })
    .await;
    assert!(
        message(&ib).contains("ConfigMap failures/templates")
            && message(&ib).contains("app.pkr.hcl"),
        "{}",
        message(&ib)
    );
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(env.client.clone(), NS);
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("templates".into()),
            ..Default::default()
        },
        data: Some([("app.pkr.hcl".to_owned(), AMAZON_TEMPLATE.to_owned())].into()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("configmap");
    let ib = wait_for(&api, "from-configmap", T, &controller.log, is_ready).await;
    let revision = ib
        .status
        .and_then(|s| s.latest_image)
        .and_then(|l| l.template_revision);
    assert!(
        revision.is_some_and(|r| r.starts_with("configmap/templates@sha256:")),
        "the template revision is recorded"
    );

    // The Secret appears: the waiting build proceeds.
    env.aws_secret(
        NS,
        "late",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    )
    .await;
    wait_for(&api, "waits", T, &controller.log, is_ready).await;

    // Stalled builds stay stalled: no further attempts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let unparsable = api.get("unparsable").await.expect("get");
    assert_eq!(
        unparsable.status.map(|s| s.history.len()),
        Some(1),
        "no retry of an invalid template"
    );
    let flaky = api.get("flaky").await.expect("get");
    assert_eq!(flaky.status.map(|s| s.history.len()), Some(2));

    // The secret is nowhere: not in the log, statuses or Events.
    let log = controller.log_text();
    assert!(
        !log.contains(SECRET_KEY),
        "the controller log leaks the secret"
    );
    for ib in api.list(&ListParams::default()).await.expect("list") {
        let text = serde_json::to_string(&ib.status).expect("json");
        assert!(
            !text.contains(SECRET_KEY),
            "status of {:?} leaks the secret",
            ib.metadata.name
        );
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), NS);
    let events = events.list(&ListParams::default()).await.expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("BuildFailed"))
    );
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("BuildSucceeded"))
    );
    assert!(events.items.iter().all(|e| {
        !serde_json::to_string(e)
            .unwrap_or_default()
            .contains(SECRET_KEY)
    }));
    controller.stop().await;
}
