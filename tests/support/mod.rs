//! Shared by the integration tests: a control plane with the CRDs, moto, and
//! `kiln controller` as a real child process.

#![allow(dead_code)]

pub mod images;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kiln::api::ImageBuild;
use kiln_testenv::{ControlPlane, Moto, Options};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::process::{Child, Command};

/// A template that builds an AMI in moto with Debian's packer 1.6.6 (no
/// communicator, so no instance is ever contacted) and copies it to the other
/// regions.
pub const AMAZON_TEMPLATE: &str = r#"
variable "kiln_build_id" { type = string }
variable "kiln_endpoint" { type = string }
variable "kiln_regions" { type = list(string) }
variable "flavor" {
  type    = string
  default = "plain"
}
variable "source_ami" {
  type    = string
  default = "ami-1e749f67"
}
variable "fail" {
  type    = string
  default = "no"
}
variable "pause" {
  type    = string
  default = "0"
}
source "amazon-ebs" "app" {
  region                 = var.kiln_regions[0]
  ami_regions            = slice(var.kiln_regions, 1, length(var.kiln_regions))
  source_ami             = var.source_ami
  instance_type          = "t2.micro"
  communicator           = "none"
  custom_endpoint_ec2    = var.kiln_endpoint
  skip_region_validation = true
  ami_name               = "app-${var.flavor}-${var.kiln_build_id}"
}
build {
  sources = ["source.amazon-ebs.app"]
  # Runs where packer runs: lets a test make a build fail after validation.
  provisioner "shell-local" {
    inline = [
      "sleep ${var.pause}",
      "test '${var.fail}' != 'yes' || { echo 'provisioning failed on purpose' >&2; exit 3; }",
    ]
  }
  post-processor "manifest" {}
}
"#;

/// Everything an end-to-end test talks to.
pub struct Env {
    pub plane: ControlPlane,
    pub client: Client,
    pub moto: Moto,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start(controller_manager: bool) -> Env {
        let plane = ControlPlane::start(Options {
            controller_manager,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
        let client = plane.admin_client().await.expect("admin client");
        kiln::crdgen::apply(&client, Duration::from_secs(30))
            .await
            .expect("CRDs");
        let moto = Moto::start().await.unwrap_or_else(|e| panic!("moto: {e}"));
        let dir = tempfile::tempdir().expect("tempdir");
        Env {
            plane,
            client,
            moto,
            dir,
        }
    }

    pub async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("namespace");
    }

    pub async fn aws_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            string_data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        api.create(&PostParams::default(), &secret)
            .await
            .expect("secret");
    }

    pub async fn controller(&self, name: &str, args: &[&str]) -> KilnController {
        self.controller_with(name, &self.plane.admin_kubeconfig_path(), args, &[])
            .await
    }

    /// A controller with its own kubeconfig and environment.
    pub async fn controller_with(
        &self,
        name: &str,
        kubeconfig: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> KilnController {
        KilnController::start(kubeconfig, &self.dir.path().join(name), args, envs).await
    }

    /// `kiln controller` running builds as processes with the current Packer
    /// first on its PATH and its plugins preinstalled (its runners inherit
    /// the environment).
    pub async fn controller_with_packer(
        &self,
        name: &str,
        packer: &kiln_testenv::CurrentPacker,
    ) -> KilnController {
        self.controller_with_packer_env(name, packer, &[]).await
    }

    /// [`Self::controller_with_packer`], with more environment.
    pub async fn controller_with_packer_env(
        &self,
        name: &str,
        packer: &kiln_testenv::CurrentPacker,
        extra: &[(&str, &str)],
    ) -> KilnController {
        let config = self.dir.path().join(format!("{name}-packer-config"));
        std::fs::create_dir_all(&config).expect("packer config dir");
        let vars = packer.env(&config);
        let mut vars: Vec<(&str, &str)> =
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.extend_from_slice(extra);
        self.controller_with(
            name,
            &self.plane.admin_kubeconfig_path(),
            &["--default-executor", "process"],
            &vars,
        )
        .await
    }

    /// Namespace `ns` with an `aws` Secret holding moto's throwaway credentials.
    pub async fn build_namespace(&self, ns: &str) {
        self.namespace(ns).await;
        self.aws_secret(
            ns,
            "aws",
            &[
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
            ],
        )
        .await;
    }

    pub fn ec2(&self) -> kiln::provider::aws::Aws {
        kiln::provider::aws::Aws::for_emulator(self.moto.endpoint())
    }
}

/// `kiln controller` as a child process, stopped with SIGTERM.
pub struct KilnController {
    pub child: Child,
    pub log: PathBuf,
    pub metrics: String,
}

impl KilnController {
    pub async fn start(
        kubeconfig: &Path,
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> KilnController {
        std::fs::create_dir_all(dir).expect("controller dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let log = dir.join(format!("controller-{port}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("controller")
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            // One work directory for every controller of a test, as a
            // restarted controller has: it finds what its predecessor left.
            .arg("--workdir")
            .arg(dir.parent().unwrap_or(dir).join("builds"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kiln=debug,kube=warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("start kiln controller");
        let metrics = format!("http://127.0.0.1:{port}");
        let c = KilnController {
            child,
            log,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/readyz", c.metrics)).await
                && r.status().is_success()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("controller did not become ready:\n{}", c.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a graceful exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("controller exits after SIGTERM")
            .expect("wait")
    }

    /// Waits for a controller that was sent SIGKILL.
    pub async fn stop_killed(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("controller exits after SIGKILL")
            .expect("wait")
    }

    /// Sends `signal` to the controller process.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// The value of an unlabelled metric, e.g. `kiln_leader`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

/// Polls an object until `done` holds, or panics with its status and the
/// tail of the controller's log.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    log: &Path,
    done: impl Fn(&K) -> bool,
) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(obj) = api.get(name).await {
            if done(&obj) {
                return obj;
            }
            last = Some(obj);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = last
        .and_then(|o| serde_json::to_value(&o).ok())
        .and_then(|v| v.get("status").cloned())
        .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default());
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    panic!(
        "{name} did not reach the expected state in {timeout:?}; status: {}\n--- controller log ---\n{}",
        status.unwrap_or_default(),
        tail.join("\n")
    );
}

/// Polls until `list` returns something.
pub async fn wait_list<T, F>(what: &str, mut list: impl FnMut() -> F) -> Vec<T>
where
    F: std::future::Future<Output = Vec<T>>,
{
    for _ in 0..150 {
        let items = list().await;
        if !items.is_empty() {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no {what} appeared");
}

/// Asks for a rebuild with `reconcile.fluxcd.io/requestedAt = token` and waits
/// until the build answering it is Ready.
pub async fn rebuild(
    api: &Api<ImageBuild>,
    name: &str,
    token: &str,
    timeout: Duration,
    log: &Path,
) -> ImageBuild {
    let patch = serde_json::json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}});
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await
    .expect("annotate");
    wait_for(api, name, timeout, log, |ib| {
        is_ready(ib)
            && ib
                .status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some(token)
    })
    .await
}

/// An AMI made directly in moto (not by kiln) from a throwaway instance,
/// with `tags`; its ID.
pub async fn make_ami(
    aws: &kiln::provider::aws::Aws,
    region: &str,
    name: &str,
    tags: &[(&str, &str)],
) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let ec2 = aws.client(region).await;
    let run = ec2
        .run_instances()
        .image_id("ami-1e749f67")
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("RunInstances");
    let instance = run.instances()[0]
        .instance_id()
        .expect("instance")
        .to_owned();
    let mut request = ec2.create_image().instance_id(instance).name(name);
    if !tags.is_empty() {
        let spec = tags.iter().fold(
            TagSpecification::builder().resource_type(ResourceType::Image),
            |s, (k, v)| s.tags(Tag::builder().key(*k).value(*v).build()),
        );
        request = request.tag_specifications(spec.build());
    }
    request
        .send()
        .await
        .expect("CreateImage")
        .image_id()
        .expect("ami")
        .to_owned()
}

/// Finishes a build Job's Pod as a kubelet would (no kubelet runs here): the
/// runner container terminated with `result` as its termination message.
pub async fn finish_runner_pod(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    pod: &str,
    image: &str,
    result: &kiln::packer::runner::RunnerResult,
) {
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "phase": "Succeeded",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [{
            "name": "runner",
            "image": image,
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "message": serde_json::to_string(result).expect("json"),
                "startedAt": now,
                "finishedAt": now
            }}
        }]
    }});
    pods.patch_status(
        pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .expect("pod status");
}

pub fn condition<'a>(
    ib: &'a ImageBuild,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    ib.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn is_ready(ib: &ImageBuild) -> bool {
    condition(ib, "Ready").is_some_and(|c| c.status == "True")
        && ib.status.as_ref().and_then(|s| s.observed_generation) == ib.metadata.generation
}

/// A build is under way (currentBuild set).
pub fn is_building(ib: &ImageBuild) -> bool {
    ib.status
        .as_ref()
        .is_some_and(|s| s.current_build.is_some())
}

pub fn is_stalled(ib: &ImageBuild) -> bool {
    condition(ib, "Stalled").is_some_and(|c| c.status == "True")
}

/// An ImageBuild of the test template in `regions`, using the process executor.
pub fn image_build(
    name: &str,
    endpoint: &str,
    regions: &[&str],
    variables: serde_json::Value,
) -> ImageBuild {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "provider": {
                "type": "aws",
                "regions": regions,
                "endpoint": endpoint,
                "credentials": {"secretRef": {"name": "aws"}}
            },
            "template": {"inline": AMAZON_TEMPLATE},
            "variables": variables,
            "executor": {"type": "process"},
            "retry": {"limit": 1, "backoff": "1s"}
        }
    }))
    .expect("ImageBuild")
}

/// AMIs in a region, by ID, with their tags.
pub async fn amis(aws: &kiln::provider::aws::Aws, region: &str) -> Vec<aws_sdk_ec2::types::Image> {
    let client = aws.client(region).await;
    let out = client
        .describe_images()
        .owners("self")
        .send()
        .await
        .expect("DescribeImages");
    out.images().to_vec()
}

/// The AMI `id` in `region`, or a panic saying it is missing.
pub async fn ami(
    aws: &kiln::provider::aws::Aws,
    region: &str,
    id: &str,
) -> aws_sdk_ec2::types::Image {
    amis(aws, region)
        .await
        .into_iter()
        .find(|i| i.image_id() == Some(id))
        .unwrap_or_else(|| panic!("{id} missing in {region}"))
}

pub fn tag<'a>(image: &'a aws_sdk_ec2::types::Image, key: &str) -> Option<&'a str> {
    image
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// What a Packer build leaves in a region when it does not clean up: key
/// pairs, `packer_*` security groups and instances not terminated.
pub async fn leftovers(aws: &kiln::provider::aws::Aws, region: &str) -> Vec<String> {
    let client = aws.client(region).await;
    let mut out = Vec::new();
    let keys = client
        .describe_key_pairs()
        .send()
        .await
        .expect("DescribeKeyPairs");
    out.extend(
        keys.key_pairs()
            .iter()
            .map(|k| format!("key pair {}", k.key_name().unwrap_or_default())),
    );
    let groups = client
        .describe_security_groups()
        .send()
        .await
        .expect("DescribeSecurityGroups");
    out.extend(
        groups
            .security_groups()
            .iter()
            .filter(|g| g.group_name().is_some_and(|n| n.starts_with("packer")))
            .map(|g| format!("security group {}", g.group_name().unwrap_or_default())),
    );
    let instances = client
        .describe_instances()
        .send()
        .await
        .expect("DescribeInstances");
    out.extend(
        instances
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                i.state().and_then(|s| s.name())
                    != Some(&aws_sdk_ec2::types::InstanceStateName::Terminated)
            })
            .map(|i| format!("instance {}", i.instance_id().unwrap_or_default())),
    );
    out
}

/// Waits until the controller's log (its runners' included) contains `text`.
pub async fn wait_log(controller: &KilnController, text: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !controller.log_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log after {limit:?}:\n{}",
            controller.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP proxy on loopback that holds every chunk a client sends for
/// `delay` before passing it on: a cloud's round-trip time in front of moto,
/// so that work takes long enough to be interrupted. It stops with the test.
pub struct SlowProxy {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    pub async fn start(upstream: &str, delay: Duration) -> SlowProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            tokio::time::sleep(delay).await;
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        SlowProxy { endpoint, task }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until no key pair, `packer_*` security group or live instance is
/// left in `regions` (Packer's cleanup after a stop takes a moment).
pub async fn wait_no_leftovers(env: &Env, regions: &[&str], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut left = Vec::new();
        for region in regions {
            left.extend(leftovers(&env.ec2(), region).await);
        }
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left in the cloud: {left:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
