//! Reconciling one ImageBuild: dereference, decide (pure), act, update status.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::{Instrument, info, info_span, warn};

use super::{Context, Error, KILN_REQUESTED_AT, REQUESTED_AT, dereference, now};
use crate::{
    api::{CurrentBuild, ExecutorType, ImageBuild, ImageBuildStatus, condition::READY},
    build::{
        conditions,
        decide::{self, Decision, Observation, RunState, Start},
        identity::{job_name, spec_hash},
        status,
    },
    executor::Launch,
    metrics::BuildLabels,
    packer::runner::{BuildRequest, Outcome, RunnerResult},
    provider::{Owner, ProviderError},
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

fn executor_of(ib: &ImageBuild, ctx: &Context) -> ExecutorType {
    ib.spec
        .executor
        .as_ref()
        .map_or(ctx.config.default_executor, |e| e.type_)
}

async fn reconcile_inner(ib: &ImageBuild, ctx: &Context) -> Result<Action, Error> {
    let ns = ib.namespace().ok_or(Error::Metadata("namespace"))?;
    let uid = ib.uid().ok_or(Error::Metadata("uid"))?;
    let generation = ib.metadata.generation;
    let old = ib.status.clone().unwrap_or_default();
    let now = now();

    // 1. Dereference.
    let run = match &old.current_build {
        Some(current) => Some(observe(ctx, &ns, current).await?),
        None => None,
    };
    // While a build runs, decide() looks only at it: polling it must not read
    // Secrets, ConfigMaps and the parent every 15 seconds.
    let resolved = match run {
        Some(RunState::Running) => None,
        _ => Some(dereference::resolve(&ctx.client, ib).await?),
    };
    let annotations = ib.annotations();
    let requested_at = annotations
        .get(REQUESTED_AT)
        .or_else(|| annotations.get(KILN_REQUESTED_AT))
        .map(String::as_str);
    let hash = resolved.as_ref().map(|r| {
        r.as_ref()
            .map(|r| spec_hash(&ib.spec, &r.inputs))
            .map_err(Clone::clone)
    });

    // 2. Decide.
    let decision = decide::decide(&Observation {
        uid: &uid,
        spec: &ib.spec,
        status: &old,
        requested_at,
        inputs: hash,
        run,
        now,
    });
    tracing::debug!(?decision, "decided");

    // 3. Act.
    let (new, action) = match decision {
        Decision::Start(start) => {
            let Some(Ok(resolved)) = resolved else {
                // decide() only starts builds whose inputs resolved.
                return Ok(Action::requeue(decide::POLL_DEPENDENCY));
            };
            match resolved
                .provider
                .check_regions(&ib.spec.provider.regions)
                .await
            {
                Err(ProviderError::Invalid(message)) => (
                    status::stalled(&old, "InvalidRegion", &message, generation, now),
                    Action::await_change(),
                ),
                Err(other) => return Err(other.into()),
                Ok(()) => {
                    let executor = executor_of(ib, ctx);
                    let launch = Launch {
                        request: BuildRequest {
                            build_id: start.build_id.clone(),
                            namespace: ns.clone(),
                            name: ib.name_any(),
                            spec_hash: start.spec_hash.clone(),
                            provider: ib.spec.provider.type_,
                            regions: ib.spec.provider.regions.clone(),
                            endpoint: ib.spec.provider.endpoint.clone(),
                            template: resolved.inputs.template.clone(),
                            variables: resolved.variables.clone(),
                            timestamp: status::version_stamp(now),
                        },
                        secret_env: resolved.secret_env,
                        timeout: decide::timeout(&ib.spec),
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
                    let handle = start_build(ctx, ib, executor, &start, &launch).await?;
                    info!(build_id = %start.build_id, attempt = start.attempt, ?executor, %handle, scheduled_for = ?start.scheduled_for, "build started");
                    ctx.metrics
                        .builds_started
                        .get_or_create(&BuildLabels {
                            executor: executor_label(executor),
                        })
                        .inc();
                    publish(
                        ctx,
                        ib,
                        EventType::Normal,
                        "BuildStarted",
                        format!(
                            "started build {} (attempt {}) as {handle}{}",
                            start.build_id,
                            start.attempt,
                            start
                                .scheduled_for
                                .map(|at| format!(", scheduled by spec.schedule for {at}"))
                                .unwrap_or_default()
                        ),
                    )
                    .await;
                    (
                        status::started(
                            &old,
                            &start,
                            executor,
                            &handle,
                            parent_image,
                            generation,
                            now,
                        ),
                        Action::requeue(decide::POLL_RUNNING),
                    )
                }
            }
        }
        Decision::Wait(after) => (status::running(&old, generation), Action::requeue(after)),
        Decision::TimedOut { message } => {
            let current = current(&old)?;
            stop_build(ctx, &ns, current).await?;
            finish_failed(ctx, ib, &old, current, &message, true, now).await
        }
        Decision::Lost(message) => {
            let current = current(&old)?;
            finish_failed(ctx, ib, &old, current, &message, true, now).await
        }
        Decision::Finished(result) => {
            let current = current(&old)?;
            match resolved {
                Some(Ok(r)) => {
                    finish(
                        ctx,
                        ib,
                        &old,
                        current,
                        result,
                        r.provider.as_ref(),
                        r.inputs.template_revision,
                        now,
                    )
                    .await?
                }
                // The inputs vanished after the build started (a Secret was
                // deleted): the images still have to be claimed, so wait.
                // (They are always read for a finished build: `None` cannot occur.)
                Some(Err(problem)) => {
                    let message = format!(
                        "build {} finished, but its inputs can no longer be read: {problem:?}",
                        current.build_id
                    );
                    (
                        status::waiting(&old, "DependencyNotFound", &message, generation, now),
                        Action::requeue(decide::POLL_DEPENDENCY),
                    )
                }
                None => (
                    status::running(&old, generation),
                    Action::requeue(decide::POLL_RUNNING),
                ),
            }
        }
        Decision::RetryAt(at) => {
            let wait = at
                .duration_since(now)
                .unsigned_abs()
                .max(Duration::from_secs(1));
            (
                status::retry_scheduled(&old, generation),
                Action::requeue(wait),
            )
        }
        Decision::Stalled { reason, message } => {
            if !conditions::is_true(&old.conditions, crate::api::condition::STALLED)
                || conditions::get(&old.conditions, READY).is_none_or(|c| c.message != message)
            {
                warn!(reason, %message, "stalled");
                publish(ctx, ib, EventType::Warning, reason, message.clone()).await;
            }
            (
                status::stalled(&old, reason, &message, generation, now),
                Action::await_change(),
            )
        }
        Decision::Waiting { reason, message } => {
            if conditions::get(&old.conditions, READY).is_none_or(|c| c.reason != reason) {
                publish(ctx, ib, EventType::Warning, reason, message.clone()).await;
            }
            (
                status::waiting(&old, reason, &message, generation, now),
                Action::requeue(decide::POLL_DEPENDENCY),
            )
        }
        Decision::Suspended => (status::suspended(&old, generation), Action::await_change()),
        Decision::UpToDate => (
            status::up_to_date(&old, generation, now),
            Action::requeue(decide::recheck_after(&ib.spec, now, ctx.config.resync)),
        ),
    };

    // 4. Update status, only when it changed.
    write_status(ctx, ib, &old, &new).await?;
    Ok(action)
}

fn current(status: &ImageBuildStatus) -> Result<&CurrentBuild, Error> {
    status
        .current_build
        .as_ref()
        .ok_or(Error::Metadata("status.currentBuild"))
}

fn executor_label(e: ExecutorType) -> String {
    match e {
        ExecutorType::Job => "job".into(),
        ExecutorType::Process => "process".into(),
    }
}

async fn observe(ctx: &Context, ns: &str, current: &CurrentBuild) -> Result<RunState, Error> {
    Ok(match current.executor {
        ExecutorType::Process => ctx.process.observe(&current.build_id),
        ExecutorType::Job => ctx.jobs.observe(ns, &current.handle).await?,
    })
}

async fn start_build(
    ctx: &Context,
    ib: &ImageBuild,
    executor: ExecutorType,
    start: &Start,
    launch: &Launch,
) -> Result<String, Error> {
    Ok(match executor {
        ExecutorType::Job => {
            ctx.jobs
                .start(ib, &job_name(&ib.name_any(), &start.build_id), launch)
                .await?
        }
        ExecutorType::Process => {
            let tx = ctx.finished.clone();
            let obj = ObjectRef::from_obj(ib);
            ctx.process.start(
                launch,
                Arc::new(move |_| {
                    let _ = tx.send(obj.clone());
                }),
            )?
        }
    })
}

async fn stop_build(ctx: &Context, ns: &str, current: &CurrentBuild) -> Result<(), Error> {
    match current.executor {
        ExecutorType::Process => ctx.process.stop(
            &current.build_id,
            "the build exceeded its timeout and was stopped",
        ),
        ExecutorType::Job => ctx.jobs.stop(ns, &current.handle).await?,
    }
    Ok(())
}

fn forget(ctx: &Context, current: &CurrentBuild) {
    if current.executor == ExecutorType::Process {
        ctx.process.forget(&current.build_id);
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &Context,
    ib: &ImageBuild,
    old: &ImageBuildStatus,
    current: &CurrentBuild,
    result: RunnerResult,
    provider: &dyn crate::provider::ImageProvider,
    template_revision: Option<String>,
    now: Timestamp,
) -> Result<(ImageBuildStatus, Action), Error> {
    match result.outcome {
        Outcome::Invalid => Ok(finish_failed(
            ctx,
            ib,
            old,
            current,
            result
                .message
                .as_deref()
                .unwrap_or("packer validate failed"),
            false,
            now,
        )
        .await),
        Outcome::Failed => Ok(finish_failed(
            ctx,
            ib,
            old,
            current,
            result.message.as_deref().unwrap_or("packer build failed"),
            true,
            now,
        )
        .await),
        Outcome::Succeeded => {
            let owner = Owner {
                namespace: ib.namespace().unwrap_or_default(),
                image_build: ib.name_any(),
                build_id: current.build_id.clone(),
                spec_hash: current.spec_hash.clone(),
            };
            match provider.claim(&result.artifacts, &owner).await {
                Ok(note) => {
                    forget(ctx, current);
                    let labels = BuildLabels {
                        executor: executor_label(current.executor),
                    };
                    ctx.metrics.builds_succeeded.get_or_create(&labels).inc();
                    ctx.metrics
                        .build_duration
                        .observe(now.duration_since(current.started_at.0).as_secs_f64());
                    let ids: Vec<String> = result
                        .artifacts
                        .iter()
                        .map(|a| format!("{}={}", a.region, a.image_id))
                        .collect();
                    let mut message =
                        format!("build {} produced {}", current.build_id, ids.join(", "));
                    if let Some(note) = note {
                        message = format!("{message} ({note})");
                    }
                    info!(build_id = %current.build_id, images = %ids.join(", "), "build succeeded");
                    publish(ctx, ib, EventType::Normal, "BuildSucceeded", message).await;
                    let s = status::succeeded(
                        old,
                        current,
                        result.artifacts,
                        template_revision,
                        ib.metadata.generation,
                        now,
                    );
                    Ok((s, Action::requeue(Duration::from_secs(1))))
                }
                // Unreachable provider: keep the finished build and try again.
                Err(e @ ProviderError::Api { .. }) => Err(e.into()),
                Err(e) => Ok(finish_failed(
                    ctx,
                    ib,
                    old,
                    current,
                    &format!("verifying the images failed: {e}"),
                    true,
                    now,
                )
                .await),
            }
        }
    }
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
    forget(ctx, current);
    let labels = BuildLabels {
        executor: executor_label(current.executor),
    };
    ctx.metrics.builds_failed.get_or_create(&labels).inc();
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
    publish(ctx, ib, EventType::Warning, "BuildFailed", note).await;
    // The next reconcile schedules the retry or reports the stall.
    (s, Action::requeue(Duration::from_secs(1)))
}

async fn publish(ctx: &Context, ib: &ImageBuild, type_: EventType, reason: &str, note: String) {
    super::publish(ctx, ib, type_, reason, "Reconcile", note, None).await;
}

async fn write_status(
    ctx: &Context,
    ib: &ImageBuild,
    old: &ImageBuildStatus,
    new: &ImageBuildStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    super::apply_status(ctx, ib, new).await
}
