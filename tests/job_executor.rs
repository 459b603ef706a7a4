//! The Job executor on a real apiserver with kube-controller-manager running
//! the Job. No kubelet runs, so the test writes the Pod's terminated state
//! itself, as a kubelet would, with the runner's result as the termination
//! message.

mod support;

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kiln::{
    api::{ExecutorType, ImageBuild},
    packer::runner::{Outcome, RunnerResult},
    provider::aws::tags,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::json;
use support::*;

const NS: &str = "jobs";
const SECRET_KEY: &str = "Job-s3cret-never-in-a-spec";

#[tokio::test]
async fn job_executor_runs_the_runner_in_a_locked_down_job_and_reads_its_result() {
    let env = Env::start(true).await;
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
    let args = [
        "--default-executor",
        "job",
        "--runner-image",
        "registry.example/kiln:test",
    ];
    let controller = env.controller("c1", &args).await;
    let builds: Api<ImageBuild> = Api::namespaced(env.client.clone(), NS);
    let mut ib = image_build(
        "app",
        env.moto.endpoint(),
        &["us-east-1"],
        json!({"flavor": "job"}),
    );
    ib.spec.executor = None; // the controller's default: job
    ib.spec.timeout = Some("30m".parse().expect("duration"));
    let created = builds
        .create(&PostParams::default(), &ib)
        .await
        .expect("create");

    let jobs: Api<Job> = Api::namespaced(env.client.clone(), NS);
    let listed = wait_list("Job", || async {
        jobs.list(&ListParams::default().labels("kiln.dev/image-build=app"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    })
    .await;
    assert_eq!(listed.len(), 1);
    let job = &listed[0];
    let job_name = job.name_any();

    // The Job's properties.
    let owner = job.owner_references().first().expect("owner reference");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("ImageBuild", "app", Some(true))
    );
    assert_eq!(Some(owner.uid.clone()), created.uid());
    let labels = job.labels();
    assert_eq!(
        labels.get("kiln.dev/image-build").map(String::as_str),
        Some("app")
    );
    assert!(labels.contains_key("kiln.dev/build-id"));
    let spec = job.spec.as_ref().expect("job spec");
    assert_eq!(spec.backoff_limit, Some(0), "kiln retries, not the Job");
    assert_eq!(
        spec.active_deadline_seconds,
        Some(1800),
        "the timeout bounds the Job"
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/kiln:test"));
    assert_eq!(
        c.args.as_ref().and_then(|a| a.first()).map(String::as_str),
        Some("runner")
    );
    let sc = c
        .security_context
        .as_ref()
        .expect("container security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    let requests = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let env_vars = c.env.as_ref().expect("env");
    let secret_env = env_vars
        .iter()
        .find(|e| e.name == "AWS_SECRET_ACCESS_KEY")
        .expect("credentials env");
    assert!(
        secret_env.value.is_none(),
        "no literal credential in the Job"
    );
    let key_ref = secret_env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("aws", "AWS_SECRET_ACCESS_KEY")
    );
    assert!(
        !serde_json::to_string(job)
            .expect("json")
            .contains(SECRET_KEY),
        "the secret value is not in the Job"
    );

    let ib = wait_for(
        &builds,
        "app",
        Duration::from_secs(30),
        &controller.log,
        |ib| {
            ib.status
                .as_ref()
                .and_then(|s| s.current_build.as_ref())
                .is_some_and(|c| c.executor == ExecutorType::Job)
        },
    )
    .await;
    let current = ib
        .status
        .and_then(|s| s.current_build)
        .expect("currentBuild");
    assert_eq!(current.handle, job_name);

    // A restarted controller adopts the running Job instead of starting another.
    controller.stop().await;
    let controller = env.controller("c2", &args).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = jobs
        .list(&ListParams::default().labels("kiln.dev/image-build=app"))
        .await
        .expect("jobs");
    assert_eq!(after.items.len(), 1, "still exactly one Job");
    let still = builds
        .get("app")
        .await
        .expect("get")
        .status
        .and_then(|s| s.current_build)
        .expect("currentBuild");
    assert_eq!(still.build_id, current.build_id);

    // kube-controller-manager made the Pod; play kubelet: the runner "built"
    // an AMI (made directly in moto) and wrote its result as termination message.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NS);
    let pod = wait_list("Pod", || async {
        pods.list(
            &ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job_name}")),
        )
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    })
    .await
    .remove(0);
    let ami = make_ami(&env.ec2(), "us-east-1", "app-job-built", &[]).await;
    let result = RunnerResult {
        build_id: current.build_id.clone(),
        outcome: Outcome::Succeeded,
        artifacts: vec![kiln::api::RegionArtifact {
            region: "us-east-1".into(),
            image_id: ami.clone(),
        }],
        message: None,
        packer_version: Some("1.6.6".into()),
        created: Default::default(),
    };
    finish_runner_pod(
        &pods,
        &pod.name_any(),
        "registry.example/kiln:test",
        &result,
    )
    .await;

    let ib = wait_for(
        &builds,
        "app",
        Duration::from_secs(60),
        &controller.log,
        is_ready,
    )
    .await;
    let latest = ib.status.and_then(|s| s.latest_image).expect("latestImage");
    assert_eq!(latest.artifacts[0].image_id, ami);
    let tagged = support::ami(&env.ec2(), "us-east-1", &ami).await;
    assert_eq!(
        tag(&tagged, tags::BUILD_ID),
        Some(current.build_id.as_str())
    );
    let metrics = controller.metrics_text().await;
    assert!(
        metrics.contains("kiln_builds_succeeded_total{executor=\"job\"} 1"),
        "{metrics}"
    );
    controller.stop().await;
}
