//! Reconciling one ImagePolicy, in named steps: plan (dereference the
//! selected builds and their images, decide per image), act (or only plan,
//! with `dryRun`), report (Events), then update status (pure, written only
//! when it changed).

use std::{sync::Arc, time::Duration};

use kiln_core::retention::status::{self, RETRY_AFTER};
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use tracing::{Instrument, info, info_span};

use super::{Context, Error, events};
use crate::{
    api::{ImageBuild, ImagePolicy, ImagePolicyStatus},
    reasons,
    retention::{self, Applied, Evaluation},
};

/// Reconciles an ImagePolicy.
pub async fn reconcile(policy: Arc<ImagePolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile_policy",
        namespace = policy.namespace().unwrap_or_default(),
        name = policy.name_any()
    );
    async move {
        ctx.metrics.reconciles.inc();
        reconcile_inner(&policy, &ctx).await
    }
    .instrument(span)
    .await
}

async fn reconcile_inner(policy: &ImagePolicy, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::Metadata("namespace"))?;
    let generation = policy.metadata.generation;
    let old = policy.status.clone().unwrap_or_default();
    let now = super::now();
    let interval: Duration = policy.spec.interval.into();

    if policy.spec.suspend {
        write_status(ctx, policy, &old, &status::suspended(&old, generation)).await?;
        return Ok(Action::await_change());
    }

    // 1-2. Dereference and decide: the selected builds, their images, a plan.
    // The ImageBuilds come from the controller's watch cache, not a LIST
    // per evaluation.
    ctx.builds_listed().await?;
    let all: Vec<Arc<ImageBuild>> = ctx
        .builds
        .state()
        .into_iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let plan = retention::plan_policy(&ctx.reader, &ns, &all, &policy.spec, now).await?;
    // Intent before action: the deletions are in the status before the first
    // one is made, so an interrupted evaluation is counted by the next.
    let deletions = retention::deletions(&plan);
    let policy = match policy.spec.dry_run || deletions.is_empty() {
        true => std::borrow::Cow::Borrowed(policy),
        false => std::borrow::Cow::Owned(
            super::apply_status(ctx, policy, &status::with_intent(&old, &deletions)).await?,
        ),
    };
    // 3. Act, or with dryRun only plan.
    let evaluation = retention::evaluate(
        &ns,
        plan,
        &old.pending_deletions,
        policy.spec.dry_run,
        ctx.config.prune_concurrency,
        now,
    )
    .await;
    // 4. Update status, only when it changed; then the Events, so a deletion
    // is never announced by an evaluation whose record was refused.
    let new = status::evaluated(&old, &evaluation, generation, now);
    let stored = policy.status.clone().unwrap_or_default();
    write_status(ctx, &policy, &stored, &new).await?;
    report_deletions(ctx, &policy, &evaluation).await;
    Ok(Action::requeue(if evaluation.retry_soon() {
        interval.min(RETRY_AFTER)
    } else {
        interval
    }))
}

/// Logs and publishes an Event per deleted image, and logs failures.
async fn report_deletions(ctx: &Context, policy: &ImagePolicy, evaluation: &Evaluation) {
    for o in &evaluation.outcomes {
        let (build, image) = (&o.build, &o.verdict.image);
        match &o.applied {
            Applied::Deleted | Applied::DeletedPartly(_) => {
                info!(%build, region = %image.region, image = %image.image_id, reason = %o.verdict.reason, "deleted image");
                let note = format!(
                    "deleted {} in {} (ImageBuild {build}, build {}): {}",
                    image.image_id,
                    image.region,
                    image.build_id().unwrap_or("?"),
                    o.verdict.reason
                );
                // The image is the Event's related object, so each image gets
                // its own Event instead of joining a series.
                let related = k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("Image".to_owned()),
                    name: Some(image.image_id.clone()),
                    ..Default::default()
                };
                events::publish(
                    ctx,
                    policy,
                    EventType::Normal,
                    reasons::IMAGE_DELETED,
                    "Prune",
                    note,
                    Some(related),
                )
                .await;
            }
            Applied::Failed(error) => {
                tracing::warn!(%build, image = %image.image_id, %error, "retention action failed");
            }
            _ => {}
        }
    }
}

/// Writes the status unless only `lastEvaluatedAt` would change.
async fn write_status(
    ctx: &Context,
    policy: &ImagePolicy,
    old: &ImagePolicyStatus,
    new: &ImagePolicyStatus,
) -> Result<(), Error> {
    let unchanged = ImagePolicyStatus {
        last_evaluated_at: None,
        ..old.clone()
    } == ImagePolicyStatus {
        last_evaluated_at: None,
        ..new.clone()
    };
    if unchanged {
        return Ok(());
    }
    super::apply_status(ctx, policy, new).await?;
    Ok(())
}
