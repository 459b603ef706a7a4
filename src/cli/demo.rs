//! `kiln demo`: kiln's main job on this machine, with no cloud account and no
//! cluster. A real control plane, moto standing in for EC2, the controller
//! with the process executor, and the sample manifests.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kiln_testenv::{ControlPlane, Moto, Options};

use crate::api::{ExecutorType, ImageBuild, ImagePolicy};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
};

const NS: &str = "demo";
const BUILD: &str = "base-ami";
const IMAGE_BUILD: &str = include_str!("../../config/demo/imagebuild.yaml");
const IMAGE_POLICY: &str = include_str!("../../config/demo/imagepolicy.yaml");

/// What the demo does.
pub struct DemoOptions {
    /// Tear down and exit after the run.
    pub once: bool,
    /// Where the cluster's state, kubeconfig and logs go.
    pub state_dir: PathBuf,
    /// Builds in all (the first plus rebuilds).
    pub builds: usize,
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _ = std::fs::remove_dir_all(&options.state_dir);
    step(
        "starting a local control plane: etcd and kube-apiserver, built from Go modules on first use",
    );
    let plane = ControlPlane::start(Options {
        state_dir: Some(options.state_dir.join("cluster")),
        ..Default::default()
    })
    .await
    .context("starting the control plane")?;
    let client = plane.admin_client().await?;
    step("starting moto as the stand-in for EC2");
    let moto = Moto::start()
        .await
        .context("starting moto (run `make setup`)")?;
    step("installing the CRDs");
    crate::crdgen::apply(&client, Duration::from_secs(30)).await?;

    let pid = std::process::id();
    std::fs::write(options.state_dir.join("pid"), pid.to_string())?;
    let controller = start_controller(client.clone(), &options.state_dir)?;

    step(
        "applying the samples: namespace demo, a credentials Secret, ImageBuild base-ami (us-east-1 + eu-west-1), ImagePolicy keepLast 2",
    );
    apply_samples(&client, moto.endpoint()).await?;
    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), NS);
    let mut seen = Vec::new();
    let first = wait_ready(&builds, &mut seen, None).await?;
    let mut last = first;
    for n in 2..=options.builds {
        step(&format!(
            "requesting rebuild {n} of {} (reconcile.fluxcd.io/requestedAt)",
            options.builds
        ));
        let value = jiff::Timestamp::now().to_string();
        let patch = serde_json::json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": value}}});
        builds
            .patch(BUILD, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        last = wait_ready(&builds, &mut seen, Some(&last)).await?;
    }

    let pruned = wait_pruned(&client, options.builds).await?;

    step("kubectl get imagebuilds,imagepolicies -n demo (printed by the apiserver)");
    let base = format!("/apis/kiln.dev/v1alpha1/namespaces/{NS}");
    print!(
        "{}",
        super::table::render(&client, &format!("{base}/imagebuilds")).await?
    );
    println!();
    print!(
        "{}",
        super::table::render(&client, &format!("{base}/imagepolicies")).await?
    );
    step("pruned by ImagePolicy base-ami-retention");
    let rows: Vec<Vec<String>> = pruned
        .iter()
        .map(|d| {
            vec![
                d.region.clone(),
                d.image_id.clone(),
                d.build_id.clone().unwrap_or_default(),
                d.reason.clone(),
            ]
        })
        .collect();
    let header = ["REGION", "AMI", "BUILD-ID", "REASON"].map(String::from);
    print!("{}", super::table::format_rows(&header, &rows));
    step("AMIs kiln owns in moto now");
    print_amis(&moto).await?;
    println!(
        "demo: {} builds Ready, {} AMIs pruned, in {}s",
        options.builds,
        pruned.len(),
        started.elapsed().as_secs()
    );

    if options.once {
        controller.abort();
        plane.stop().await;
        drop(moto);
        return Ok(());
    }
    let kubeconfig = plane.admin_kubeconfig_path();
    println!(
        "\nThe environment stays up. Try:\n  export KUBECONFIG={}\n  kubectl get kiln -A\nStop it with:\n  kill {pid}",
        kubeconfig.display()
    );
    tokio::signal::ctrl_c().await.ok();
    controller.abort();
    plane.stop().await;
    Ok(())
}

fn start_controller(
    client: Client,
    state: &std::path::Path,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let config = crate::controller::Config {
        default_executor: ExecutorType::Process,
        runner_image: String::new(),
        runner_path: std::env::current_exe().context("locating the kiln binary")?,
        workroot: state.join("builds"),
        namespace: Some(NS.into()),
        resync: Duration::from_secs(600),
        // The demo prints its own progress; Packer's lines go to a log.
        runner_env: vec![("RUST_LOG".into(), "warn".into())],
        build_grace: std::time::Duration::from_secs(60),
        max_concurrent_reconciles: 16,
        prune_concurrency: None,
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = crate::controller::leader::shutdown_on_signal();
    Ok(tokio::spawn(crate::controller::run(
        client, config, metrics, ready, shutdown,
    )))
}

async fn apply_samples(client: &Client, endpoint: &str) -> anyhow::Result<()> {
    let params = PatchParams::apply("kiln-demo").force();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .patch(NS, &params, &Patch::Apply(&ns))
        .await?;
    // moto accepts any credentials; these only show where real ones go.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("aws-credentials".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        string_data: Some(
            [
                ("AWS_ACCESS_KEY_ID".into(), "demo".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "demo-secret".into()),
            ]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NS)
        .patch("aws-credentials", &params, &Patch::Apply(&secret))
        .await?;
    let mut ib: ImageBuild =
        serde_yaml_ng::from_str(IMAGE_BUILD).context("config/demo/imagebuild.yaml")?;
    ib.spec.provider.endpoint = Some(endpoint.to_owned());
    Api::<ImageBuild>::namespaced(client.clone(), NS)
        .patch(BUILD, &params, &Patch::Apply(&ib))
        .await?;
    let policy: ImagePolicy =
        serde_yaml_ng::from_str(IMAGE_POLICY).context("config/demo/imagepolicy.yaml")?;
    Api::<ImagePolicy>::namespaced(client.clone(), NS)
        .patch(&policy.name_any(), &params, &Patch::Apply(&policy))
        .await?;
    Ok(())
}

/// Waits until the policy has pruned everything beyond keepLast: two regions,
/// `builds - keepLast` superseded AMIs in each.
async fn wait_pruned(
    client: &Client,
    builds: usize,
) -> anyhow::Result<Vec<crate::api::ImageDecision>> {
    let policies: Api<ImagePolicy> = Api::namespaced(client.clone(), NS);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        let p = policies.get("base-ami-retention").await?;
        let keep = usize::try_from(p.spec.keep_last).unwrap_or(1);
        let want = 2 * builds.saturating_sub(keep);
        let status = p.status.unwrap_or_default();
        let message = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        if message != last {
            eprintln!("    base-ami-retention: {message}");
            last = message;
        }
        if status.deleted.len() >= want {
            return Ok(status.deleted);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the policy pruned {} of {want} AMIs in 2 minutes",
                status.deleted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for a new Ready image, printing each change of phase on the way.
async fn wait_ready(
    builds: &Api<ImageBuild>,
    seen: &mut Vec<String>,
    previous: Option<&String>,
) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let ib = builds.get(BUILD).await?;
        let status = ib.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let line = format!(
            "    {}: {} {}",
            ib.name_any(),
            status
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "Pending".into()),
            ready.map(|c| c.message.clone()).unwrap_or_default()
        );
        if seen.last() != Some(&line) {
            eprintln!("{line}");
            seen.push(line);
        }
        if let Some(latest) = &status.latest_image
            && ready.is_some_and(|c| c.status == "True")
            && previous != Some(&latest.build_id)
        {
            return Ok(latest.build_id.clone());
        }
        if ready.is_some_and(|c| c.reason == "RetriesExhausted" || c.reason == "BuildInvalid") {
            bail!(
                "the build stalled: {}",
                ready.map(|c| c.message.clone()).unwrap_or_default()
            );
        }
        if std::time::Instant::now() > deadline {
            bail!("no Ready image after 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn print_amis(moto: &Moto) -> anyhow::Result<()> {
    let aws = crate::provider::aws::Aws::for_emulator(moto.endpoint());
    let mut rows = Vec::new();
    for region in ["us-east-1", "eu-west-1"] {
        let out = aws
            .client(region)
            .await
            .describe_images()
            .filters(crate::provider::aws::tag_filter(
                crate::provider::aws::tags::IMAGE_BUILD,
                BUILD,
            ))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(crate::provider::aws::describe_error(&e)))?;
        for image in out.images() {
            let tag = |k: &str| {
                image
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(k))
                    .and_then(|t| t.value())
                    .unwrap_or("")
                    .to_owned()
            };
            rows.push(vec![
                region.to_owned(),
                image.image_id().unwrap_or_default().to_owned(),
                image.name().unwrap_or_default().to_owned(),
                tag(crate::provider::aws::tags::BUILD_ID),
            ]);
        }
    }
    let header = ["REGION", "AMI", "NAME", "BUILD-ID"].map(String::from);
    print!("{}", super::table::format_rows(&header, &rows));
    Ok(())
}
