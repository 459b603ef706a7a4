//! The test control plane enforces RBAC, and its per-user clients are seen by
//! the apiserver as exactly that user.

use k8s_openapi::api::{
    core::v1::{Namespace, Secret},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kiln::api::ImageBuild;
use kiln_testenv::{ControlPlane, Options};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams},
};

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(ref s)) if s.code == 403)
}

#[tokio::test]
async fn user_clients_are_subject_to_rbac() {
    let plane = ControlPlane::start(Options::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = plane.admin_client().await.expect("admin client");
    kiln::crdgen::apply(&admin, std::time::Duration::from_secs(30))
        .await
        .expect("crds");

    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["team-a", "team-b"] {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &obj)
            .await
            .expect("namespace");
    }

    let alice = plane
        .user_client("alice", &["platform"])
        .await
        .expect("alice");
    let alice_builds: Api<ImageBuild> = Api::namespaced(alice.clone(), "team-a");
    assert!(
        forbidden(alice_builds.list(&ListParams::default()).await),
        "alice has no binding yet"
    );

    // Grant the "platform" group read access to ImageBuilds and Secrets in team-a only.
    let roles: Api<Role> = Api::namespaced(admin.clone(), "team-a");
    roles
        .create(
            &PostParams::default(),
            &Role {
                metadata: ObjectMeta {
                    name: Some("reader".into()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["kiln.dev".into(), "".into()]),
                    resources: Some(vec!["imagebuilds".into(), "secrets".into()]),
                    verbs: vec!["get".into(), "list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("role");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "team-a");
    bindings
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta {
                    name: Some("platform-reader".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "Group".into(),
                    name: "platform".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("binding");

    // The authorizer reads RBAC from an informer: the grant takes effect
    // once the apiserver has seen it, not necessarily on the next request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = alice_builds.list(&ListParams::default()).await {
        assert!(
            std::time::Instant::now() < deadline,
            "alice can list ImageBuilds in team-a: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let alice_secrets_b: Api<Secret> = Api::namespaced(alice.clone(), "team-b");
    assert!(
        forbidden(alice_secrets_b.list(&ListParams::default()).await),
        "but not Secrets in team-b"
    );
    let alice_create: Api<Secret> = Api::namespaced(alice, "team-a");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("s".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        forbidden(alice_create.create(&PostParams::default(), &secret).await),
        "and cannot write"
    );

    // The same user without the group is denied again: groups come from the client.
    let bob = plane
        .user_client("alice", &[])
        .await
        .expect("alice without groups");
    let bob_builds: Api<ImageBuild> = Api::namespaced(bob, "team-a");
    assert!(forbidden(bob_builds.list(&ListParams::default()).await));

    // A ServiceAccount identity is another user to RBAC.
    let sa = plane
        .service_account_client("team-a", "kiln")
        .await
        .expect("sa client");
    let sa_builds: Api<ImageBuild> = Api::namespaced(sa, "team-a");
    assert!(forbidden(sa_builds.list(&ListParams::default()).await));
    plane.stop().await;
}
