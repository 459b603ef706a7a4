//! The Job executor: `kiln runner` in a Kubernetes Job, reporting through the
//! container's termination message.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod,
            PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
            SecretKeySelector, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams, PropagationPolicy},
};

use super::{ExecutorError, Launch};
use crate::{
    api::ImageBuild,
    image_build::run::RunState,
    packer::runner::{GRACE_ENV, Outcome, REQUEST_ENV, RunnerResult, SECRET_ENV},
};

/// Label naming the ImageBuild a Job builds.
pub const LABEL_IMAGE_BUILD: &str = "kiln.dev/image-build";
/// Label naming the build ID.
pub const LABEL_BUILD_ID: &str = "kiln.dev/build-id";
/// Where the runner writes its result.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// UID the runner runs as (the image's non-root user).
pub const RUNNER_UID: i64 = 65532;

/// Builds the Job for a launch. Pure, so its properties are unit-tested.
pub fn job_for(ib: &ImageBuild, job_name: &str, launch: &Launch, image: &str) -> Job {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "kiln".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "build".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "kiln".to_owned()),
        (LABEL_IMAGE_BUILD.to_owned(), ib.name_any()),
        (LABEL_BUILD_ID.to_owned(), launch.request.build_id.clone()),
    ]);
    let plain = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![
        plain(
            REQUEST_ENV,
            serde_json::to_string(&launch.request).unwrap_or_default(),
        ),
        plain(SECRET_ENV, launch.secret_env_names()),
        plain("HOME", "/tmp".into()),
        plain("TMPDIR", "/tmp".into()),
        plain("CHECKPOINT_DISABLE", "1".into()),
        plain(GRACE_ENV, launch.grace.as_secs().to_string()),
    ];
    env.extend(launch.secret_env.iter().map(|e| EnvVar {
        name: e.name.clone(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: e.secret.clone(),
                key: e.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }));
    let quantity = |s: &str| Quantity(s.to_owned());
    let container = Container {
        name: "runner".into(),
        image: Some(image.to_owned()),
        args: Some(vec![
            "runner".into(),
            "--result-file".into(),
            TERMINATION_LOG.into(),
            "--workdir".into(),
            "/tmp/build".into(),
        ]),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("250m")),
                ("memory".into(), quantity("256Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("2Gi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let timeout = i64::try_from(launch.timeout.as_secs()).unwrap_or(i64::MAX);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name.to_owned()),
            namespace: ib.namespace(),
            labels: Some(labels.clone()),
            owner_references: ib.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // kiln retries itself, with backoff and a record of each attempt.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(timeout),
            ttl_seconds_after_finished: Some(86_400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // Room for Packer to cancel and clean up after SIGTERM
                    // (the runner forwards it), plus a margin.
                    termination_grace_period_seconds: Some(
                        i64::try_from(launch.grace.as_secs()).unwrap_or(i64::MAX) + 30,
                    ),
                    service_account_name: launch.service_account.clone(),
                    // The runner needs no API access; a named ServiceAccount is
                    // for cloud identity (IRSA, Workload Identity), which needs
                    // the token.
                    automount_service_account_token: Some(launch.service_account.is_some()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUNNER_UID),
                        run_as_group: Some(RUNNER_UID),
                        fs_group: Some(RUNNER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs builds as Jobs.
#[derive(Clone)]
pub struct JobExecutor {
    client: kube::Client,
    image: String,
}

impl JobExecutor {
    /// Jobs run `image`, which must carry `kiln` and `packer`.
    pub fn new(client: kube::Client, image: String) -> Self {
        JobExecutor { client, image }
    }

    /// Creates the Job, or adopts it when it already exists (a controller
    /// restarted between creating it and recording it). Returns its name.
    pub async fn start(
        &self,
        ib: &ImageBuild,
        job_name: &str,
        launch: &Launch,
    ) -> Result<String, ExecutorError> {
        let ns = ib.namespace().unwrap_or_default();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let job = job_for(ib, job_name, launch, &self.image);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => Ok(job_name.to_owned()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(job = job_name, "adopting the existing Job for this build");
                Ok(job_name.to_owned())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What became of a build's Job.
    pub async fn observe(
        &self,
        namespace: &str,
        job_name: &str,
    ) -> Result<RunState, ExecutorError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let Some(job) = jobs.get_opt(job_name).await? else {
            return Ok(RunState::Lost(format!(
                "Job {namespace}/{job_name} no longer exists"
            )));
        };
        let status = job.status.unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        let finished = |t: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True")
        };
        let failed = finished("Failed") || status.failed.unwrap_or(0) > 0;
        let succeeded = finished("Complete") || status.succeeded.unwrap_or(0) > 0;
        if !failed && !succeeded {
            return Ok(RunState::Running);
        }
        // The runner writes its result as the termination message, on success
        // and on build failure alike.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("batch.kubernetes.io/job-name={job_name}");
        for pod in pods.list(&ListParams::default().labels(&selector)).await? {
            let statuses = pod
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default();
            for cs in statuses.iter().filter(|cs| cs.name == "runner") {
                let message = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.message.clone());
                if let Some(message) = message {
                    return Ok(match serde_json::from_str::<RunnerResult>(&message) {
                        // A Job's name is its build ID, so a stopped Pod
                        // (eviction, deadline) counts as a failed attempt and
                        // the retry gets a Job of its own.
                        Ok(result) if result.outcome == Outcome::Interrupted => {
                            RunState::Lost(format!(
                                "the build Pod was stopped: {}",
                                result.message.unwrap_or_default()
                            ))
                        }
                        Ok(result) => RunState::Finished(result),
                        Err(_) => RunState::Lost(format!(
                            "the build Pod ended without a result: {}",
                            crate::packer::runner::tail(&message, 800)
                        )),
                    });
                }
            }
        }
        let why = conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| {
                format!(
                    "{}: {}",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "no Pod reported a result".into());
        Ok(RunState::Lost(format!(
            "Job {namespace}/{job_name} failed: {why}"
        )))
    }

    /// Deletes a build's Job and its Pod.
    pub async fn stop(&self, namespace: &str, job_name: &str) -> Result<(), ExecutorError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match jobs.delete(job_name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
