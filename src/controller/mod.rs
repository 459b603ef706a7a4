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
    /// Set once `builds` has its first full listing. Reconciles wait on
    /// this, not on the store: kube's readiness wakes only the last of many
    /// waiters, and the others (up to the reconcile concurrency) never
    /// finished.
    pub builds_ready: tokio::sync::OnceCell<()>,
    /// Reads what ImageBuilds refer to, reusing Secret and ConfigMap reads.
    pub reader: crate::dereference::Reader,
}

impl Context {
    /// Waits until the ImageBuild cache has its first full listing.
    pub async fn builds_listed(&self) -> Result<(), Error> {
        self.builds_ready
            .get_or_try_init(|| self.builds.wait_until_ready())
            .await
            .map(|_| ())
            .map_err(|_| Error::Metadata("ImageBuild cache"))
    }
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
    // Two caches of ImageBuilds: the build controller's, whole, and the one
    // policies select from, which keeps only what retention reads (see
    // `keep_what_policies_read`); a shared store would have to keep both
    // whole.
    let (build_store, build_writer) = reflector::store();
    let (reader_for_builds, writer_for_builds) = reflector::store();
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
        builds_ready: tokio::sync::OnceCell::new(),
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
    let watched_builds = builds.clone();
    let policies: Api<ImagePolicy> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Bounded, so a cold start with thousands of objects neither opens
    // thousands of connections at once nor trips the apiserver's fairness.
    let concurrency = runtime::Config::default().concurrency(config.max_concurrent_reconciles);
    let build_watch = reflector::reflector(
        writer_for_builds,
        watcher(builds, watcher::Config::default())
            .default_backoff()
            .modify(drop_unread_metadata),
    )
    .applied_objects();
    let build_loop = Controller::for_stream(build_watch, reader_for_builds)
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
    // A new image re-evaluates the policies that select its ImageBuild at
    // once, so superseded images go without waiting an interval. Only what a
    // policy reads passes: the status writes of a running build would
    // otherwise list every image at the provider each time.
    // The initial listing passes no object: the policy controller evaluates
    // every policy on start anyway, and letting them through evaluated each
    // policy twice.
    let build_changes = reflector::reflector(
        build_writer,
        watcher(watched_builds, watcher::Config::default())
            .default_backoff()
            .modify(keep_what_policies_read),
    )
    .filter_map(|event| {
        futures::future::ready(match event {
            Ok(watcher::Event::Apply(ib) | watcher::Event::Delete(ib)) => Some(Ok(ib)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    })
    .predicate_filter(what_policies_read, Default::default());
    let (policy_store, policy_writer) = reflector::store();
    let policy_watch = reflector::reflector(
        policy_writer,
        watcher(policies, watcher::Config::default())
            .default_backoff()
            .modify(drop_unread_metadata),
    )
    .applied_objects();
    let policy_controller =
        Controller::for_stream(policy_watch, policy_store.clone()).with_config(concurrency);
    let store = policy_store;
    let policy_loop = policy_controller
        .watches_stream(build_changes, move |ib: ImageBuild| {
            let ns = ib.metadata.namespace.clone();
            store
                .state()
                .iter()
                .filter(|p| p.metadata.namespace == ns && selects(&p.spec, &ib))
                .map(|p| ObjectRef::from_obj(&**p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(image_policy::reconcile, policy_error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "policy reconcile loop");
            }
        });
    // The loops stop on shutdown once running reconciles finish. Policies
    // stuck on the cache's readiness once kept them from stopping at all
    // (see `builds_listed`); every reconcile is safe to interrupt, so the
    // wait stays bounded, well within the Pod's termination grace.
    let loops = async { futures::join!(build_loop, policy_loop) };
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

/// Metadata kiln never reads, dropped from its caches: Kubernetes' record of
/// who wrote which field (a third of a stored object) and kubectl's copy of
/// the last applied manifest (another copy of the spec).
fn drop_unread_metadata<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The policies' copy of an ImageBuild keeps what retention reads (labels,
/// provider, latest image, parent images in use) and drops the rest: at
/// 10,000 ImageBuilds the template text, history and conditions were most
/// of this second cache.
fn keep_what_policies_read(ib: &mut ImageBuild) {
    drop_unread_metadata(ib);
    ib.metadata.annotations = None;
    if let Some(inline) = ib.spec.template.inline.as_mut() {
        inline.clear();
    }
    if let Some(status) = ib.status.as_mut() {
        status.history = Vec::new();
        status.conditions = Vec::new();
        status.last_failure = None;
    }
}

/// The parts of an ImageBuild an ImagePolicy reads: labels (selectors), the
/// latest image and the parent images in use.
fn what_policies_read(ib: &ImageBuild) -> Option<u64> {
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
    Some(h.finish())
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
