//! The controller: a kube-runtime `Controller` over ImageBuilds, with the
//! clients, event recorder, executors and metrics in one [`Context`].

mod events;
pub mod finalizer;
mod image_build;
mod image_policy;
pub mod leader;
pub mod startup;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self as runtime, Action},
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{ExecutorType, ImageBuild, ImagePolicy},
    dereference::DereferenceError,
    executor::{ExecutorError, job::JobExecutor, process::ProcessExecutor},
    metrics::Metrics,
    provider::ProviderError,
    retention::{RetentionError, selects},
};

pub use image_build::reconcile;
pub use image_policy::reconcile as reconcile_policy;

pub use crate::crdgen::FIELD_MANAGER;
/// Annotation that forces a rebuild, Flux's convention.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// kiln's own spelling of the same, for clusters without Flux habits.
pub const KILN_REQUESTED_AT: &str = "kiln.dev/requestedAt";

/// How the controller runs builds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Executor for ImageBuilds that do not name one.
    pub default_executor: ExecutorType,
    /// Image of build Jobs (carries kiln and packer).
    pub runner_image: String,
    /// The kiln binary the process executor runs.
    pub runner_path: PathBuf,
    /// Where process builds work.
    pub workroot: PathBuf,
    /// Watch only this namespace.
    pub namespace: Option<String>,
    /// How often a Ready ImageBuild is looked at again (template ConfigMaps
    /// and parents may have changed).
    pub resync: Duration,
    /// Reconciles running at once, per kind.
    pub max_concurrent_reconciles: u16,
    /// Deletions a policy has in flight per region (`None`: the provider's).
    pub prune_concurrency: Option<usize>,
    /// Extra environment of process-executor runners.
    pub runner_env: Vec<(String, String)>,
    /// How long a stopped build may take to clean up (Packer deletes its
    /// instance, key pair and security group); see docs/crash-safety.md.
    pub build_grace: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: Config,
    /// Child-process builds.
    pub process: ProcessExecutor,
    /// Job builds.
    pub jobs: JobExecutor,
    /// Reconciles an ImageBuild when its process build ends.
    pub finished: mpsc::UnboundedSender<ObjectRef<ImageBuild>>,
    /// Every watched ImageBuild (policies select among them).
    pub builds: reflector::Store<ImageBuild>,
    /// Reads what ImageBuilds refer to, reusing Secret and ConfigMap reads.
    pub reader: crate::dereference::Reader,
}

/// Reconcile errors: all transient (the user cannot fix them by editing the
/// object), so they back off and retry. User errors become Stalled status
/// instead of errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An executor failed to start, observe or stop a build.
    #[error("executor: {0}")]
    Executor(#[from] ExecutorError),
    /// The provider could not be reached.
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    /// Reading an ImageBuild's inputs failed.
    #[error(transparent)]
    Dereference(#[from] DereferenceError),
    /// Evaluating an ImagePolicy failed.
    #[error(transparent)]
    Retention(#[from] RetentionError),
    /// The object lacks metadata the apiserver always sets.
    #[error("object has no {0}")]
    Metadata(&'static str),
}

impl Error {
    /// The label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Executor(_) => "executor",
            Error::Provider(_) | Error::Dereference(DereferenceError::Provider(_)) => "provider",
            Error::Dereference(DereferenceError::Kube(_))
            | Error::Retention(RetentionError::List(_) | RetentionError::Dereference(_)) => "kube",
            Error::Metadata(_) | Error::Dereference(DereferenceError::Metadata(_)) => "metadata",
        }
    }

    /// A 409 Conflict: the object changed since the reconcile read it. An
    /// expected race, retried on fresh data.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }
}

/// Counts and logs a failed reconcile, then retries after `after`.
fn retry_after<K: kube::Resource<DynamicType = ()>>(
    obj: &K,
    error: &Error,
    ctx: &Context,
    after: Duration,
) -> Action {
    let kind = K::kind(&());
    let namespace = obj.meta().namespace.as_deref().unwrap_or_default();
    let name = obj.meta().name.as_deref().unwrap_or_default();
    if error.is_conflict() {
        ctx.metrics.error("conflict");
        tracing::debug!(%kind, namespace, name, "status changed meanwhile (409); reconciling again");
        return Action::requeue(Duration::from_secs(1));
    }
    ctx.metrics.error(error.kind());
    tracing::warn!(%kind, namespace, name, %error, "reconcile failed; retrying");
    Action::requeue(after)
}

fn error_policy(ib: Arc<ImageBuild>, error: &Error, ctx: Arc<Context>) -> Action {
    retry_after(&*ib, error, &ctx, Duration::from_secs(10))
}

fn policy_error_policy(policy: Arc<ImagePolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    retry_after(&*policy, error, &ctx, Duration::from_secs(30))
}

/// How long the reconcile loops get to stop after a shutdown.
const STOP_LOOPS_WITHIN: Duration = Duration::from_secs(10);

/// Runs both controllers until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let (finished, finished_rx) = mpsc::unbounded_channel();
    // One watch and one cache of ImageBuilds, shared by both controllers: at
    // 10,000 objects a second copy cost as much memory as the first.
    let (build_store, build_writer) = reflector::store_shared(SHARED_BUFFER);
    let Some(build_events) = build_writer.subscribe() else {
        unreachable!("a shared store can always be subscribed to")
    };
    let instance = std::env::var("POD_NAME").ok();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kiln".into(),
            instance,
        },
    );
    let ctx = Arc::new(Context {
        process: ProcessExecutor::new(config.runner_path.clone(), config.workroot.clone())
            .with_env(config.runner_env.clone()),
        jobs: JobExecutor::new(client.clone(), config.runner_image.clone()),
        client: client.clone(),
        recorder,
        metrics,
        finished,
        builds: build_store,
        reader: crate::dereference::Reader::cached(client.clone()),
        config: config.clone(),
    });
    let (builds, jobs): (Api<ImageBuild>, Api<Job>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let finished_stream = futures::stream::unfold(finished_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(executor = ?config.default_executor, namespace = config.namespace.as_deref().unwrap_or("<all>"), "controller started");
    let policies: Api<ImagePolicy> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let build_watch = watcher(builds, watcher::Config::default())
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect_shared(build_writer)
        .for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching ImageBuilds");
            }
        });
    // Bounded, so a cold start with thousands of objects neither opens
    // thousands of connections at once nor trips the apiserver's fairness.
    let concurrency = runtime::Config::default().concurrency(config.max_concurrent_reconciles);
    let build_loop = Controller::for_shared_stream(build_events.clone(), ctx.builds.clone())
        .with_config(concurrency.clone())
        .owns(
            jobs,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=kiln"),
        )
        .reconcile_on(finished_stream)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        });
    let (policy_store, policy_writer) = reflector::store();
    let policy_watch = reflector::reflector(
        policy_writer,
        watcher(policies, watcher::Config::default())
            .default_backoff()
            .modify(drop_managed_fields),
    )
    .applied_objects();
    let policy_controller =
        Controller::for_stream(policy_watch, policy_store.clone()).with_config(concurrency);
    let started = now();
    let policy_loop = policy_controller
        .watches_shared_stream(
            build_events.filter(policy_relevant(started)),
            move |ib: Arc<ImageBuild>| {
                let ns = ib.metadata.namespace.clone();
                policy_store
                    .state()
                    .iter()
                    .filter(|p| p.metadata.namespace == ns && selects(&p.spec, &ib))
                    .map(|p| ObjectRef::from_obj(&**p))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(image_policy::reconcile, policy_error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "policy reconcile loop");
            }
        });
    // The loops stop on shutdown once running reconciles finish. With many
    // objects they have been seen not to stop at all; every reconcile is
    // safe to interrupt, so the wait is bounded, well within the Pod's
    // termination grace.
    // The shared watch ends with the loops: it has no subscriber left.
    let loops = async {
        tokio::select! {
            _ = async { futures::join!(build_loop, policy_loop) } => {}
            () = build_watch => {}
        }
    };
    let bounded = async {
        shutdown.cancelled().await;
        tokio::time::sleep(STOP_LOOPS_WITHIN).await;
    };
    tokio::select! {
        _ = loops => {}
        () = bounded => tracing::warn!(
            seconds = STOP_LOOPS_WITHIN.as_secs(),
            "the reconcile loops did not stop in time after the shutdown; stopping without them"
        ),
    }
    ready.store(false, Ordering::Relaxed);
    // Process builds are stopped the way Packer can clean up after: SIGTERM,
    // then the grace period. Each leaves an interrupted result that the next
    // controller adopts.
    ctx.process.shutdown().await;
    tracing::info!("controller stopped");
}

/// Room for events not yet taken by the slower of the shared watch's two
/// readers; the watch waits when it is full.
const SHARED_BUFFER: usize = 1024;

/// Kubernetes' record of who wrote which field: a third of a stored object,
/// and kiln never reads it.
fn drop_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Passes the ImageBuild changes an ImagePolicy cares about (see
/// [`what_policies_read`]). An ImageBuild first seen that existed before the
/// controller `started` passes nothing: every policy is evaluated on start
/// anyway, and letting it through evaluated each policy twice.
fn policy_relevant(
    started: jiff::Timestamp,
) -> impl FnMut(&Arc<ImageBuild>) -> futures::future::Ready<bool> {
    let mut seen: std::collections::HashMap<ObjectRef<ImageBuild>, u64> = Default::default();
    move |ib| {
        let read = what_policies_read(ib);
        let created = ib
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| t.0 >= started);
        let pass = match seen.insert(ObjectRef::from_obj(&**ib), read) {
            Some(before) => before != read,
            None => created,
        };
        futures::future::ready(pass)
    }
}

/// The parts of an ImageBuild an ImagePolicy reads: labels (selectors), the
/// latest image and the parent images in use.
fn what_policies_read(ib: &ImageBuild) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ib.metadata.labels.hash(&mut h);
    if let Some(s) = &ib.status {
        s.latest_image
            .as_ref()
            .map(|l| (&l.build_id, &l.parent_image))
            .hash(&mut h);
        s.current_build
            .as_ref()
            .map(|c| &c.parent_image)
            .hash(&mut h);
    }
    h.finish()
}

/// Now, in whole seconds: the apiserver stores times to the second, and a
/// computed status must not differ from the stored one in nanoseconds.
pub(crate) fn now() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// Server-side applies `status` to `obj`'s status subresource. The
/// resourceVersion makes the write conditional on the object the reconcile
/// decided on: a decision made on a stale cache (which could record a finished
/// build twice) is refused with 409 and retried on fresh data.
pub(crate) async fn apply_status<K>(
    ctx: &Context,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<K, Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    use kube::ResourceExt as _;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": obj.resource_version()},
        "status": status,
    });
    let params = kube::api::PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch_status(&obj.name_any(), &params, &kube::api::Patch::Apply(&patch))
        .await?)
}
