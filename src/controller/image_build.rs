//! Reconciling one ImageBuild, in named steps, one call each: dereference
//! (what runs, what the spec refers to), decide (pure), act, update status
//! (pure, written only when it changed).

use std::{borrow::Cow, sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::{Instrument, info, info_span, warn};

use super::{Context, Error, KILN_REQUESTED_AT, REQUESTED_AT, events, finalizer, now};
use crate::{
    api::{CurrentBuild, ExecutorType, ImageBuild, ImageBuildStatus, RegionArtifact},
    conditions::{self, READY, STALLED},
    dereference::{self, Resolved},
    executor::Launch,
    image_build::{
        decide::{self, BuildDecision, InputProblem, Inputs, Observation, RunState, Start, Sweep},
        identity::job_name,
        status,
    },
    metrics::BuildLabels,
    packer::runner::{BuildRequest, Created, Outcome},
    provider::{Owner, ProviderError},
    reasons,
};

/// Reconciles an ImageBuild.
pub async fn reconcile(ib: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        namespace = ib.namespace().unwrap_or_default(),
        name = ib.name_any()
    );
    async move {
        ctx.metrics.reconciles.inc();
        reconcile_inner(&ib, &ctx).await
    }
    .instrument(span)
    .await
}

async fn reconcile_inner(ib: &ImageBuild, ctx: &Context) -> Result<Action, Error> {
    let uid = ib.uid().ok_or(Error::Metadata("uid"))?;
    let old = ib.status.clone().unwrap_or_default();
    let now = now();
    if ib.metadata.deletion_timestamp.is_some() {
        return deleted(ctx, ib, &old).await;
    }

    // 1. Dereference.
    let (run, inputs) = dereference(ctx, ib, &old).await?;
    // 2. Decide.
    let decision = decide::decide(&Observation {
        uid: &uid,
        spec: &ib.spec,
        status: &old,
        requested_at: requested_at(ib),
        inputs,
        run,
        now,
    });
    tracing::debug!(?decision, "decided");
    let ends = decision.ends().cloned();
    // Intent before action: the finalizer is in place before a build
    // starts, so deleting the ImageBuild cannot strand it.
    let ib = match &decision {
        BuildDecision::Start(_) if !finalizer::held(ib) => {
            Cow::Owned(finalizer::add(ctx, ib).await?)
        }
        _ => Cow::Borrowed(ib),
    };
    // 3. Act.
    let (new, action) = act(ctx, &ib, &old, decision, now).await?;
    // 4. Update status, only when it changed.
    let stored = match old != new {
        true => Cow::Owned(super::apply_status(ctx, &*ib, &new).await?),
        false => ib,
    };
    // Only a stored record lets the build's traces go: after a 409 or a
    // crash before this point, the next reconcile finds the result again.
    // A finished build whose images are not claimed yet stays current, and
    // so does its result.
    if let Some(current) = ends
        && new
            .current_build
            .as_ref()
            .is_none_or(|c| c.build_id != current.build_id)
    {
        forget(ctx, &current);
    }
    if new.current_build.is_none() && finalizer::held(&stored) {
        finalizer::remove(ctx, &stored).await?;
    }
    Ok(action)
}

/// A deleted ImageBuild that holds kiln's finalizer: its build is stopped
/// (Packer cleans up within the grace period), the images of a build that
/// finished unrecorded are claimed so they stay findable, then the
/// finalizer goes.
async fn deleted(ctx: &Context, ib: &ImageBuild, old: &ImageBuildStatus) -> Result<Action, Error> {
    if !finalizer::held(ib) {
        return Ok(Action::await_change());
    }
    if let Some(current) = &old.current_build {
        let ns = ib.namespace().ok_or(Error::Metadata("namespace"))?;
        let run = match current.executor {
            ExecutorType::Process => ctx.process.observe(&current.build_id),
            ExecutorType::Job => ctx.jobs.observe(&ns, &current.handle).await?,
        };
        match run {
            RunState::Running => {
                info!(build_id = %current.build_id, "ImageBuild deleted; stopping its build");
                stop_build(ctx, ib, current, "the ImageBuild was deleted").await?;
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            RunState::Finished(result) if result.outcome == Outcome::Succeeded => {
                claim_orphans(ctx, ib, current, &result.artifacts).await;
            }
            RunState::Finished(result) if !result.created.is_empty() => {
                sweep_orphans(ctx, ib, current, &result.created).await;
            }
            _ => {}
        }
        forget(ctx, current);
    }
    finalizer::remove(ctx, ib).await?;
    Ok(Action::await_change())
}

/// Tags the images of a build that finished while its ImageBuild was being
/// deleted, so they are owned (and listed by `kiln images list`) rather
/// than lost. Best effort: the deletion is not held up by a missing Secret.
async fn claim_orphans(
    ctx: &Context,
    ib: &ImageBuild,
    current: &CurrentBuild,
    artifacts: &[RegionArtifact],
) {
    let owner = Owner {
        namespace: ib.namespace().unwrap_or_default(),
        image_build: ib.name_any(),
        build_id: current.build_id.clone(),
        spec_hash: current.spec_hash.clone(),
    };
    let claimed = match dereference::inputs(&ctx.reader, ib).await {
        Ok(Ok(inputs)) => inputs
            .resolved
            .provider
            .claim(artifacts, &owner)
            .await
            .map_err(|e| e.to_string()),
        Ok(Err(problem)) => Err(format!("{problem:?}")),
        Err(e) => Err(e.to_string()),
    };
    let ids: Vec<String> = artifacts
        .iter()
        .map(|a| format!("{}={}", a.region, a.image_id))
        .collect();
    match claimed {
        Ok(_) => {
            info!(build_id = %current.build_id, images = %ids.join(", "), "ImageBuild deleted after its build finished; images tagged as its own")
        }
        Err(error) => {
            warn!(build_id = %current.build_id, images = %ids.join(", "), %error, "ImageBuild deleted after its build finished; its images could not be tagged")
        }
    }
}

/// Removes what the stopped build of a deleted ImageBuild left in the cloud
/// (see [`swept`]). Best effort, as [`claim_orphans`].
async fn sweep_orphans(ctx: &Context, ib: &ImageBuild, current: &CurrentBuild, created: &Created) {
    let removed = match dereference::inputs(&ctx.reader, ib).await {
        Ok(Ok(inputs)) => inputs
            .resolved
            .provider
            .reclaim(&ib.spec.provider.regions, created)
            .await
            .map_err(|e| e.to_string()),
        Ok(Err(problem)) => Err(format!("{problem:?}")),
        Err(e) => Err(e.to_string()),
    };
    match removed {
        Ok(removed) => {
            info!(build_id = %current.build_id, removed = %removed.join(", "), "ImageBuild deleted mid-build; removed what its build left")
        }
        Err(error) => {
            warn!(build_id = %current.build_id, %error, "ImageBuild deleted mid-build; what its build left could not be removed")
        }
    }
}

/// `reconcile.fluxcd.io/requestedAt`, or kiln's own spelling.
fn requested_at(ib: &ImageBuild) -> Option<&str> {
    let annotations = ib.annotations();
    annotations
        .get(REQUESTED_AT)
        .or_else(|| annotations.get(KILN_REQUESTED_AT))
        .map(String::as_str)
}

type Observed = (
    Option<RunState>,
    Option<Result<Inputs<Resolved>, InputProblem>>,
);

/// What the current build is doing, and the inputs unless it is still
/// running: polling a build must not read Secrets, ConfigMaps and the parent
/// every 15 seconds.
async fn dereference(
    ctx: &Context,
    ib: &ImageBuild,
    old: &ImageBuildStatus,
) -> Result<Observed, Error> {
    let ns = ib.namespace().ok_or(Error::Metadata("namespace"))?;
    let run = match &old.current_build {
        Some(current) => Some(match current.executor {
            ExecutorType::Process => ctx.process.observe(&current.build_id),
            ExecutorType::Job => ctx.jobs.observe(&ns, &current.handle).await?,
        }),
        None => None,
    };
    let inputs = match run {
        Some(RunState::Running) => None,
        _ => Some(dereference::inputs(&ctx.reader, ib).await?),
    };
    Ok((run, inputs))
}

/// Carries out a decision; returns the new status and when to look again.
async fn act(
    ctx: &Context,
    ib: &ImageBuild,
    old: &ImageBuildStatus,
    decision: BuildDecision<Resolved>,
    now: Timestamp,
) -> Result<(ImageBuildStatus, Action), Error> {
    let generation = ib.metadata.generation;
    Ok(match decision {
        BuildDecision::Start(start) => start_build(ctx, ib, old, start, now).await?,
        BuildDecision::Wait(after) => (status::running(old, generation), Action::requeue(after)),
        BuildDecision::TimedOut { current, message } => {
            stop_build(ctx, ib, &current, &message).await?;
            match current.executor {
                // The runner ends within the grace period, Packer's cleanup
                // done; that end is recorded, with a sweep of what it left.
                ExecutorType::Process => (
                    status::running(old, generation),
                    Action::requeue(Duration::from_secs(2)),
                ),
                ExecutorType::Job => {
                    finish_failed(ctx, ib, old, &current, &message, true, now).await
                }
            }
        }
        BuildDecision::Failed {
            current,
            message,
            retryable,
            sweep,
        } => {
            let message = swept(ib, &current, sweep, message).await?;
            finish_failed(ctx, ib, old, &current, &message, retryable, now).await
        }
        BuildDecision::Interrupted {
            current,
            message,
            sweep,
        } => {
            let message = swept(ib, &current, sweep, message).await?;
            warn!(build_id = %current.build_id, %message, "build interrupted; starting it again");
            let s = status::interrupted(old, &current, &message, generation, now);
            let note = format!(
                "build {} was interrupted ({message}); starting it again",
                current.build_id
            );
            build_event(ctx, ib, EventType::Normal, reasons::INTERRUPTED, note).await;
            (s, Action::requeue(Duration::from_secs(1)))
        }
        BuildDecision::Succeeded {
            current,
            artifacts,
            inputs,
        } => finish(ctx, ib, old, &current, artifacts, &inputs, now).await?,
        BuildDecision::RetryAt(at) => {
            let wait = at
                .duration_since(now)
                .unsigned_abs()
                .max(Duration::from_secs(1));
            (
                status::retry_scheduled(old, generation),
                Action::requeue(wait),
            )
        }
        BuildDecision::Stalled { reason, message } => {
            // An Event on the transition only, not on every look.
            if !conditions::is_true(&old.conditions, STALLED)
                || conditions::get(&old.conditions, READY).is_none_or(|c| c.message != message)
            {
                warn!(reason, %message, "stalled");
                build_event(ctx, ib, EventType::Warning, reason, message.clone()).await;
            }
            (
                status::stalled(old, reason, &message, generation, now),
                Action::await_change(),
            )
        }
        BuildDecision::Waiting { reason, message } => {
            if conditions::get(&old.conditions, READY).is_none_or(|c| c.reason != reason) {
                build_event(ctx, ib, EventType::Warning, reason, message.clone()).await;
            }
            (
                status::waiting(old, reason, &message, generation, now),
                Action::requeue(decide::POLL_DEPENDENCY),
            )
        }
        BuildDecision::Suspended => (status::suspended(old, generation), Action::await_change()),
        BuildDecision::UpToDate => (
            status::up_to_date(old, generation, now),
            Action::requeue(decide::recheck_after(&ib.spec, now, ctx.config.resync)),
        ),
    })
}

/// Removes what a run that ended without images left in the cloud, before
/// its end is recorded (and the same build runs again): a crash in between
/// finds the same result and sweeps again. Returns `message` with what was
/// removed.
async fn swept(
    ib: &ImageBuild,
    current: &CurrentBuild,
    sweep: Option<Sweep<Resolved>>,
    message: String,
) -> Result<String, Error> {
    let Some(sweep) = sweep else {
        return Ok(message);
    };
    match sweep
        .inputs
        .provider
        .reclaim(&ib.spec.provider.regions, &sweep.created)
        .await
    {
        Ok(removed) if removed.is_empty() => Ok(message),
        Ok(removed) => {
            info!(build_id = %current.build_id, removed = %removed.join(", "), "removed what the build left in the cloud");
            Ok(format!(
                "{message} (kiln removed what the run left: {})",
                removed.join(", ")
            ))
        }
        // Unreachable provider: the result stays; sweep on the next look.
        Err(e @ ProviderError::Api { .. }) => Err(e.into()),
        Err(e) => {
            warn!(build_id = %current.build_id, error = %e, "cannot remove what the build left in the cloud");
            Ok(message)
        }
    }
}

fn executor_of(ib: &ImageBuild, ctx: &Context) -> ExecutorType {
    ib.spec
        .executor
        .as_ref()
        .map_or(ctx.config.default_executor, |e| e.type_)
}

fn executor_label(e: ExecutorType) -> BuildLabels {
    BuildLabels {
        executor: match e {
            ExecutorType::Job => "job".into(),
            ExecutorType::Process => "process".into(),
        },
    }
}

/// Starts a build with its executor and records it as the current build.
async fn start_build(
    ctx: &Context,
    ib: &ImageBuild,
    old: &ImageBuildStatus,
    start: Start<Resolved>,
    now: Timestamp,
) -> Result<(ImageBuildStatus, Action), Error> {
    let ns = ib.namespace().ok_or(Error::Metadata("namespace"))?;
    let executor = executor_of(ib, ctx);
    let resolved = &start.inputs;
    let launch = Launch {
        request: BuildRequest {
            build_id: start.build_id.clone(),
            namespace: ns,
            name: ib.name_any(),
            spec_hash: start.spec_hash.clone(),
            provider: ib.spec.provider.type_,
            regions: ib.spec.provider.regions.clone(),
            endpoint: ib.spec.provider.endpoint.clone(),
            template: resolved.inputs.template.clone(),
            variables: resolved.variables.clone(),
            timestamp: status::version_stamp(now),
            gcp: ib.spec.provider.gcp.clone(),
            azure: ib.spec.provider.azure.clone(),
        },
        secret_env: resolved.secret_env.clone(),
        timeout: decide::timeout(&ib.spec),
        grace: ctx.config.build_grace,
        service_account: ib
            .spec
            .executor
            .as_ref()
            .and_then(|e| e.service_account_name.clone()),
    };
    let parent_image = ib
        .spec
        .parent
        .as_ref()
        .and_then(|p| launch.request.variables.get(&p.variable).cloned());
    let handle = match executor {
        ExecutorType::Job => {
            ctx.jobs
                .start(ib, &job_name(&ib.name_any(), &start.build_id), &launch)
                .await?
        }
        ExecutorType::Process => {
            let tx = ctx.finished.clone();
            let obj = ObjectRef::from_obj(ib);
            ctx.process.start(
                &launch,
                Arc::new(move |_| {
                    let _ = tx.send(obj.clone());
                }),
            )?
        }
    };
    info!(build_id = %start.build_id, attempt = start.attempt, ?executor, %handle, scheduled_for = ?start.scheduled_for, "build started");
    ctx.metrics
        .builds_started
        .get_or_create(&executor_label(executor))
        .inc();
    let scheduled = start
        .scheduled_for
        .map(|at| format!(", scheduled by spec.schedule for {at}"))
        .unwrap_or_default();
    build_event(
        ctx,
        ib,
        EventType::Normal,
        reasons::BUILD_STARTED,
        format!(
            "started build {} (attempt {}) as {handle}{scheduled}",
            start.build_id, start.attempt,
        ),
    )
    .await;
    Ok((
        status::started(
            old,
            &start,
            executor,
            &handle,
            parent_image,
            ib.metadata.generation,
            now,
        ),
        Action::requeue(decide::POLL_RUNNING),
    ))
}

async fn stop_build(
    ctx: &Context,
    ib: &ImageBuild,
    current: &CurrentBuild,
    why: &str,
) -> Result<(), Error> {
    match current.executor {
        ExecutorType::Process => ctx.process.stop(&current.build_id, why),
        ExecutorType::Job => {
            let ns = ib.namespace().ok_or(Error::Metadata("namespace"))?;
            ctx.jobs.stop(&ns, &current.handle).await?;
        }
    }
    Ok(())
}

fn forget(ctx: &Context, current: &CurrentBuild) {
    if current.executor == ExecutorType::Process {
        ctx.process.forget(&current.build_id);
    }
}

/// How soon a claim is tried again while the provider readies the images.
const CLAIM_AGAIN: Duration = Duration::from_secs(10);
/// How soon a claim the provider refused is tried again (the Secret may
/// have been fixed; a Secret change does not trigger a reconcile).
const CLAIM_REFUSED_AGAIN: Duration = Duration::from_secs(60);

/// Records a build that produced images, once the provider verified and
/// claimed them.
async fn finish(
    ctx: &Context,
    ib: &ImageBuild,
    old: &ImageBuildStatus,
    current: &CurrentBuild,
    artifacts: Vec<RegionArtifact>,
    inputs: &Resolved,
    now: Timestamp,
) -> Result<(ImageBuildStatus, Action), Error> {
    let owner = Owner {
        namespace: ib.namespace().unwrap_or_default(),
        image_build: ib.name_any(),
        build_id: current.build_id.clone(),
        spec_hash: current.spec_hash.clone(),
    };
    let (artifacts, note) = match inputs.provider.claim(&artifacts, &owner).await {
        Ok(claimed) => (claimed.artifacts, claimed.note),
        // Unreachable provider: keep the finished build and try again.
        Err(e @ ProviderError::Api { .. }) => {
            warn!(build_id = %current.build_id, %e, "claiming the build's images failed; retrying");
            let message = format!(
                "build {} finished; recording its images failed and is retried: {e}",
                current.build_id
            );
            let s = status::claim_pending(
                old,
                reasons::PROVIDER_UNAVAILABLE,
                &message,
                false,
                ib.metadata.generation,
                now,
            );
            return Ok((s, Action::requeue(CLAIM_AGAIN)));
        }
        // Slow clouds finish images after Packer exits (Glance `saving`):
        // claim again until the build's own timeout.
        Err(e @ ProviderError::ImageNotReady { .. }) => {
            let limit = decide::timeout(&ib.spec);
            let waited = now.duration_since(current.started_at.0);
            if waited.unsigned_abs() < limit {
                let message = format!(
                    "build {} finished; waiting for its images to become usable: {e}",
                    current.build_id
                );
                info!(build_id = %current.build_id, %e, "waiting for the build's images");
                let s = status::claim_pending(
                    old,
                    reasons::BUILDING,
                    &message,
                    false,
                    ib.metadata.generation,
                    now,
                );
                return Ok((s, Action::requeue(CLAIM_AGAIN)));
            }
            let message = format!(
                "verifying the images failed: {e} past spec.timeout ({}); raise spec.timeout if the cloud is this slow",
                jiff::SignedDuration::try_from(limit)
                    .map(|d| format!("{d:#}"))
                    .unwrap_or_default()
            );
            return Ok(finish_failed(ctx, ib, old, current, &message, true, now).await);
        }
        // The credentials may not tag (a read-only token): the images are
        // built, so keep the build and its images until the Secret is fixed.
        Err(
            ProviderError::Invalid(message)
            | ProviderError::Unauthorized(message)
            | ProviderError::Misconfigured(message),
        ) => {
            let images: Vec<String> = artifacts
                .iter()
                .map(|a| format!("{}={}", a.region, a.image_id))
                .collect();
            let message = format!(
                "build {} made {} but kiln cannot record them as its own: {message}",
                current.build_id,
                images.join(", ")
            );
            warn!(build_id = %current.build_id, %message, "claim refused");
            if conditions::get(&old.conditions, READY).is_none_or(|c| c.message != message) {
                build_event(
                    ctx,
                    ib,
                    EventType::Warning,
                    reasons::CREDENTIALS_INVALID,
                    message.clone(),
                )
                .await;
            }
            let s = status::claim_pending(
                old,
                reasons::CREDENTIALS_INVALID,
                &message,
                true,
                ib.metadata.generation,
                now,
            );
            return Ok((s, Action::requeue(CLAIM_REFUSED_AGAIN)));
        }
        Err(e @ (ProviderError::ImageMissing { .. } | ProviderError::ImageFailed { .. })) => {
            let message = format!("verifying the images failed: {e}");
            return Ok(finish_failed(ctx, ib, old, current, &message, true, now).await);
        }
    };
    ctx.metrics
        .builds_succeeded
        .get_or_create(&executor_label(current.executor))
        .inc();
    ctx.metrics
        .build_duration
        .observe(now.duration_since(current.started_at.0).as_secs_f64());
    let ids: Vec<String> = artifacts
        .iter()
        .map(|a| format!("{}={}", a.region, a.image_id))
        .collect();
    let mut message = format!("build {} produced {}", current.build_id, ids.join(", "));
    if let Some(note) = note {
        message = format!("{message} ({note})");
    }
    info!(build_id = %current.build_id, images = %ids.join(", "), "build succeeded");
    build_event(
        ctx,
        ib,
        EventType::Normal,
        reasons::BUILD_SUCCEEDED,
        message,
    )
    .await;
    let s = status::succeeded(
        old,
        current,
        artifacts,
        inputs.inputs.template_revision.clone(),
        ib.metadata.generation,
        now,
    );
    Ok((s, Action::requeue(Duration::from_secs(1))))
}

async fn finish_failed(
    ctx: &Context,
    ib: &ImageBuild,
    old: &ImageBuildStatus,
    current: &CurrentBuild,
    message: &str,
    retryable: bool,
    now: Timestamp,
) -> (ImageBuildStatus, Action) {
    ctx.metrics
        .builds_failed
        .get_or_create(&executor_label(current.executor))
        .inc();
    ctx.metrics
        .build_duration
        .observe(now.duration_since(current.started_at.0).as_secs_f64());
    warn!(build_id = %current.build_id, attempt = current.attempt, retryable, %message, "build failed");
    let s = status::failed(
        old,
        &ib.spec,
        current,
        message,
        retryable,
        ib.metadata.generation,
        now,
    );
    let note = conditions::get(&s.conditions, READY)
        .map_or_else(|| message.to_owned(), |c| c.message.clone());
    build_event(ctx, ib, EventType::Warning, reasons::BUILD_FAILED, note).await;
    // The next reconcile schedules the retry or reports the stall.
    (s, Action::requeue(Duration::from_secs(1)))
}

async fn build_event(ctx: &Context, ib: &ImageBuild, type_: EventType, reason: &str, note: String) {
    events::publish(ctx, ib, type_, reason, "Reconcile", note, None).await;
}
