//! Installing kiln as users do: the Helm chart rendered by real helm and
//! server-side applied to a real apiserver, the controller then running with
//! the chart's ServiceAccount token through an AWS build, and the kustomize
//! base in config/ matching the chart.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kiln::{
    api::ImageBuild,
    packer::runner::{Outcome, RunnerResult},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::*;

const RELEASE_NS: &str = "kiln-system";
const BUILD_NS: &str = "images";
const OTHER_NS: &str = "elsewhere";
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm(args: &[&str]) -> String {
    let helm = kiln_testenv::which("helm").expect(
        "helm is not on PATH: run `make setup` (it builds helm into ~/.cache/kiln/tools/bin)",
    );
    let out = Command::new(helm)
        .args(args)
        .current_dir(root())
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn render(values: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "kiln",
        "charts/kiln",
        "--namespace",
        RELEASE_NS,
        "--include-crds",
    ];
    for v in values {
        args.extend(["--set", v]);
    }
    documents(&helm(&args))
}

/// Server-side applies every object, as `kubectl apply --server-side` would.
async fn apply(client: &Client, objects: &[Value]) {
    let params = PatchParams::apply("helm-template").force();
    for object in objects {
        let api_version = object["apiVersion"].as_str().expect("apiVersion");
        let kind = object["kind"].as_str().expect("kind");
        let name = object["metadata"]["name"].as_str().expect("name");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{api_version} {kind}: {e}"));
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(RELEASE_NS),
                &resource,
            ),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(name, &params, &Patch::Apply(object))
            .await
            .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    kinds.sort();
    kinds
}

#[test]
fn chart_lints_clean_and_renders_its_options() {
    let lint = helm(&["lint", "charts/kiln", "--strict"]);
    assert!(
        lint.contains("0 chart(s) failed")
            && !lint.contains("[WARNING]")
            && !lint.contains("[INFO]"),
        "helm lint is not clean:\n{lint}"
    );
    let all = render(&[
        "metrics.serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
        "podDisruptionBudget.enabled=true",
        "rbac.buildNamespaces={a,b}",
    ]);
    let names = kinds(&all);
    for want in [
        "ServiceMonitor/kiln",
        "NetworkPolicy/kiln",
        "PodDisruptionBudget/kiln",
        "CustomResourceDefinition/imagebuilds.kiln.dev",
        "CustomResourceDefinition/imagepolicies.kiln.dev",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let bindings: Vec<&str> = all
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["name"] == "kiln-builds")
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(bindings, ["a", "b"]);

    // The Deployment is hardened.
    let deployment = all
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert!(container["resources"]["requests"].is_object());
    assert!(container["resources"]["limits"].is_object());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    // values.schema.json refuses what would not work, naming the value.
    let helm_path = kiln_testenv::which("helm").expect("helm");
    for (bad, named) in [
        (
            "controller.defaultExecutor=vm",
            "/controller/defaultExecutor",
        ),
        (
            "rbac.buildNamespaces={Not_A_Namespace}",
            "/rbac/buildNamespaces/0",
        ),
        (
            "replicaCount=2,leaderElection.enabled=false",
            "leaderElection.enabled",
        ),
        ("metricsPort=80", "/metricsPort"),
        (
            "leaderElection.renewBeforeSeconds=15",
            "renewBeforeSeconds must be less than",
        ),
    ] {
        let out = Command::new(&helm_path)
            .args(["template", "kiln", "charts/kiln", "--set", bad])
            .current_dir(root())
            .output()
            .expect("helm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(stderr.contains(named), "{bad}: {stderr}");
    }
}

/// Every argument the chart's Deployment passes is one `kiln` accepts: clap
/// parses them all before `--help` stops it.
#[test]
fn the_deployment_args_are_kiln_flags() {
    let objects = render(&["controller.watchNamespace=images"]);
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .arg("--help")
        .output()
        .expect("run kiln");
    assert!(
        out.status.success(),
        "kiln refused the chart's args {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// config/base is the chart's default rendering, object for object.
#[test]
fn kustomize_base_matches_the_chart() {
    let chart: Vec<Value> = render(&[])
        .into_iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .collect();
    let base = root().join("config/base");
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(base.join("kustomization.yaml")).expect("kustomization"),
    )
    .expect("kustomization YAML");
    let mut files = Vec::new();
    for file in kustomization["resources"].as_array().expect("resources") {
        let file = file.as_str().expect("file name");
        files.extend(documents(
            &std::fs::read_to_string(base.join(file)).expect("resource file"),
        ));
    }
    let namespace = files
        .iter()
        .position(|o| o["kind"] == "Namespace")
        .expect("config/base creates the namespace");
    files.remove(namespace);
    let key = |o: &Value| {
        format!(
            "{}/{}/{}",
            o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]
        )
    };
    let mut chart = chart;
    chart.sort_by_key(key);
    files.sort_by_key(key);
    assert!(
        chart == files,
        "config/base differs from the chart's default rendering; run `make manifests` and commit the result"
    );
    // The RoleBinding kustomize users copy per build namespace is the chart's.
    let chart_binding = render(&["rbac.buildNamespaces={images}"])
        .into_iter()
        .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == "images")
        .expect("the chart's RoleBinding in images");
    let example = documents(
        &std::fs::read_to_string(root().join("config/rbac/build-namespace.yaml"))
            .expect("config/rbac/build-namespace.yaml"),
    );
    assert_eq!(example[0]["roleRef"], chart_binding["roleRef"]);
    assert_eq!(example[0]["subjects"], chart_binding["subjects"]);
}

#[tokio::test]
async fn chart_installs_and_its_service_account_builds_but_reads_no_other_secrets() {
    // With kube-controller-manager: the Job executor's Job gets a Pod.
    let env = Env::start(true).await;
    env.namespace(RELEASE_NS).await;
    env.build_namespace(BUILD_NS).await;
    env.build_namespace(OTHER_NS).await;
    let objects = render(&[
        "rbac.buildNamespaces={images}",
        "networkPolicy.enabled=true",
        "podDisruptionBudget.enabled=true",
    ]);
    apply(&env.client, &objects).await;

    // The controller as the chart's ServiceAccount, with a real token.
    let kubeconfig = env
        .plane
        .service_account_kubeconfig(RELEASE_NS, "kiln")
        .await
        .expect("ServiceAccount kubeconfig");
    let controller = env
        .controller_with(
            "sa",
            &kubeconfig,
            &[
                "--default-executor",
                "process",
                "--leader-elect",
                "--leader-election-namespace",
                RELEASE_NS,
            ],
            &[("POD_NAME", "kiln-0")],
        )
        .await;

    // The AWS build goes Ready with tagged AMIs: the RBAC is sufficient.
    let builds: Api<ImageBuild> = Api::namespaced(env.client.clone(), BUILD_NS);
    builds
        .create(
            &PostParams::default(),
            &image_build(
                "app",
                env.moto.endpoint(),
                &["us-east-1", "eu-west-1"],
                json!({"flavor": "chart"}),
            ),
        )
        .await
        .expect("create");
    let ib = wait_for(&builds, "app", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let latest = ib.status.and_then(|s| s.latest_image).expect("latestImage");
    assert_eq!(latest.artifacts.len(), 2);
    let aws = env.ec2();
    for a in &latest.artifacts {
        let image = ami(&aws, &a.region, &a.image_id).await;
        assert_eq!(
            tag(&image, kiln::provider::aws::tags::MANAGED_BY),
            Some("kiln")
        );
    }
    // The Job executor under the same RBAC: kiln creates the Job in the build
    // namespace, kube-controller-manager its Pod; the test finishes the Pod as
    // a kubelet would, and kiln reads the result from it.
    let mut jobbed = serde_json::to_value(image_build(
        "jobbed",
        env.moto.endpoint(),
        &["us-east-1"],
        json!({}),
    ))
    .expect("to JSON");
    jobbed["spec"]["executor"] = json!({"type": "job"});
    builds
        .create(
            &PostParams::default(),
            &serde_json::from_value(jobbed).expect("ImageBuild"),
        )
        .await
        .expect("create jobbed");
    let ib = wait_for(
        &builds,
        "jobbed",
        Duration::from_secs(60),
        &controller.log,
        is_building,
    )
    .await;
    let current = ib
        .status
        .and_then(|s| s.current_build)
        .expect("currentBuild");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), BUILD_NS);
    let selector =
        ListParams::default().labels(&format!("batch.kubernetes.io/job-name={}", current.handle));
    let pod = wait_list("build Pod", || async {
        pods.list(&selector)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    })
    .await
    .remove(0);
    let built = make_ami(&env.ec2(), "us-east-1", "jobbed-built", &[]).await;
    let result = RunnerResult {
        build_id: current.build_id.clone(),
        outcome: Outcome::Succeeded,
        artifacts: vec![kiln::api::RegionArtifact {
            region: "us-east-1".into(),
            image_id: built.clone(),
        }],
        message: None,
        packer_version: Some("1.16.0".into()),
        created: Default::default(),
    };
    finish_runner_pod(
        &pods,
        &pod.name_any(),
        "ghcr.io/kiln-dev/kiln:0.1.0",
        &result,
    )
    .await;
    let ib = wait_for(&builds, "jobbed", BUILD_TIMEOUT, &controller.log, is_ready).await;
    let latest = ib.status.and_then(|s| s.latest_image).expect("latestImage");
    assert_eq!(latest.artifacts[0].image_id, built);

    let log = controller.log_text();
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC refused something the controller does:\n{log}"
    );

    // The same identity may not read Secrets outside rbac.buildNamespaces.
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config");
    let as_kiln = Client::try_from(config).expect("client");
    let other: Api<Secret> = Api::namespaced(as_kiln.clone(), OTHER_NS);
    match other.get("aws").await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("reading a Secret in {OTHER_NS} was not denied: {other:?}"),
    }
    let all: Api<Secret> = Api::all(as_kiln);
    assert!(
        matches!(all.list(&Default::default()).await, Err(kube::Error::Api(s)) if s.code == 403),
        "listing Secrets cluster-wide was not denied"
    );

    // An ImageBuild there waits with a message that names the fix.
    let elsewhere: Api<ImageBuild> = Api::namespaced(env.client.clone(), OTHER_NS);
    elsewhere
        .create(
            &PostParams::default(),
            &image_build("app", env.moto.endpoint(), &["us-east-1"], json!({})),
        )
        .await
        .expect("create elsewhere");
    let ib = wait_for(
        &elsewhere,
        "app",
        Duration::from_secs(60),
        &controller.log,
        |ib| condition(ib, "Reconciling").is_some_and(|c| c.reason == "AccessDenied"),
    )
    .await;
    let message = condition(&ib, "Reconciling")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    println!("AccessDenied: {message}");
    assert!(
        message.contains("rbac.buildNamespaces") && message.contains(OTHER_NS),
        "{message}"
    );
    controller.stop().await;
}
