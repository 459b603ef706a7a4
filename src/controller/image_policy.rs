//! Reconciling one ImagePolicy: select builds, list their owned images, plan
//! (pure), then deprecate and delete, or with `dryRun` only report the plan.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{controller::Action, events::EventType},
};
use tracing::{Instrument, info, info_span, warn};

use super::{Context, Error, dereference};
use crate::{
    api::{
        ImageBuild, ImageDecision, ImagePolicy, ImagePolicySpec, ImagePolicyStatus, PolicySummary,
        RetentionAction,
    },
    build::{conditions, decide::InputProblem},
    provider::aws::CONCURRENCY,
    retention::{self, Decision, Protection, Rules},
};

/// Entries kept per list in the status; the summary counts them all.
pub const STATUS_LIST_LIMIT: usize = 100;

/// The policy as planner rules.
pub fn rules(spec: &ImagePolicySpec) -> Rules {
    let protect = spec.protect.clone().unwrap_or_default();
    Rules {
        keep_last: usize::try_from(spec.keep_last).unwrap_or(0),
        max_age: spec.max_age.map(Into::into),
        min_age: spec.min_age.map(Into::into),
        protected_tags: protect.tags,
        pinned_builds: protect.build_ids.into_iter().collect(),
        pinned_images: protect.image_ids.into_iter().collect(),
        deprecate_after: spec.deprecate_after.map(Into::into),
        delete_after: spec.delete_after.map(Into::into),
    }
}

/// Whether a policy selects an ImageBuild (by name or label).
pub fn selects(spec: &ImagePolicySpec, ib: &ImageBuild) -> bool {
    if spec.builds.names.contains(&ib.name_any()) {
        return true;
    }
    spec.builds
        .selector
        .clone()
        .and_then(|s| kube::core::Selector::try_from(s).ok())
        .is_some_and(|s| kube::core::SelectorExt::matches(&s, ib.labels()))
}

/// Images of other ImageBuilds' current builds that came from these parents:
/// parent image ID -> child name.
pub fn in_use(all: &[ImageBuild]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for child in all {
        let Some(status) = &child.status else {
            continue;
        };
        let used = status
            .latest_image
            .iter()
            .filter_map(|l| l.parent_image.clone());
        let building = status
            .current_build
            .iter()
            .filter_map(|c| c.parent_image.clone());
        for image in used.chain(building) {
            out.insert(image, child.name_any());
        }
    }
    out
}

fn record(build: &str, d: &Decision, action: RetentionAction, reason: String) -> ImageDecision {
    ImageDecision {
        build: build.to_owned(),
        region: d.image.region.clone(),
        image_id: d.image.image_id.clone(),
        build_id: d.image.build_id().map(str::to_owned),
        created_at: Some(Time(d.image.created_at)),
        action,
        reason,
    }
}

/// The outcome of one retention action: `Ok(Some(note))` when the provider
/// could not do it and left the image as it was.
pub type ActionResult = Result<Option<String>, crate::provider::ProviderError>;

/// Carries out the deprecations and deletions of a plan, a bounded number at
/// a time. Keep decisions are ignored.
pub async fn carry_out(
    provider: Arc<dyn crate::provider::ImageProvider>,
    decisions: Vec<Decision>,
    now: Timestamp,
) -> Vec<(Decision, ActionResult)> {
    stream::iter(
        decisions
            .into_iter()
            .filter(|d| d.action != RetentionAction::Keep),
    )
    .map(|d: Decision| {
        let provider = provider.clone();
        async move {
            let r = match d.action {
                RetentionAction::Delete => provider.delete(&d.image).await.map(|()| None),
                _ => provider.deprecate(&d.image, now).await,
            };
            (d, r)
        }
    })
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await
}

/// The plan for one selected ImageBuild.
pub struct BuildPlan {
    /// ImageBuild name.
    pub build: String,
    /// Its provider, with its credentials.
    pub provider: Arc<dyn crate::provider::ImageProvider>,
    /// A decision per owned image.
    pub decisions: Vec<Decision>,
}

/// What a policy would do now.
pub struct PolicyPlan {
    /// Names of the ImageBuilds it selects.
    pub selected: Vec<String>,
    /// Names it lists that do not exist.
    pub missing: Vec<String>,
    /// A plan per build that could be evaluated.
    pub plans: Vec<BuildPlan>,
    /// Why other builds could not be evaluated.
    pub problems: Vec<String>,
}

/// Selects a policy's builds, lists their owned images and plans retention.
/// Shared by the controller and `kiln prune`.
pub async fn plan_policy(
    client: &kube::Client,
    ns: &str,
    spec: &ImagePolicySpec,
    now: Timestamp,
) -> Result<PolicyPlan, Error> {
    let builds_api: Api<ImageBuild> = Api::namespaced(client.clone(), ns);
    // Every ImageBuild of the namespace: children protect their sources.
    let all = builds_api.list(&ListParams::default()).await?.items;
    let selected: BTreeMap<String, &ImageBuild> = all
        .iter()
        .filter(|b| selects(spec, b))
        .map(|b| (b.name_any(), b))
        .collect();
    let missing: Vec<String> = spec
        .builds
        .names
        .iter()
        .filter(|n| !selected.contains_key(*n))
        .cloned()
        .collect();
    let rules = rules(spec);
    let in_use = in_use(&all);
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for (name, build) in &selected {
        let (provider, _) = match dereference::provider(client, build).await? {
            Ok(p) => p,
            Err(
                InputProblem::Missing { message, .. }
                | InputProblem::Invalid { message, .. }
                | InputProblem::Unsupported { message },
            ) => {
                problems.push(format!("ImageBuild {name}: {message}"));
                continue;
            }
        };
        let provider: Arc<dyn crate::provider::ImageProvider> = Arc::from(provider);
        let images = match provider
            .list_owned(&build.spec.provider.regions, ns, name)
            .await
        {
            Ok(images) => images,
            Err(e) => {
                problems.push(format!("ImageBuild {name}: {e}"));
                continue;
            }
        };
        let latest: BTreeSet<String> = build
            .status
            .iter()
            .flat_map(|s| s.latest_image_ids())
            .map(str::to_owned)
            .collect();
        let protection = Protection {
            latest,
            in_use: in_use.clone(),
        };
        match retention::plan(ns, name, &images, &rules, &protection, now) {
            Ok(decisions) => plans.push(BuildPlan {
                build: name.clone(),
                provider,
                decisions,
            }),
            Err(e) => problems.push(format!("ImageBuild {name}: {e}")),
        }
    }
    Ok(PolicyPlan {
        selected: selected.into_keys().collect(),
        missing,
        plans,
        problems,
    })
}

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
    let mut new = ImagePolicyStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        last_handled_reconcile_at: old.last_handled_reconcile_at.clone(),
        ..Default::default()
    };

    if policy.spec.suspend {
        let mut s = old.clone();
        s.observed_generation = generation;
        write_status(ctx, policy, &old, &s).await?;
        return Ok(Action::await_change());
    }

    // 1-2. Dereference and decide.
    let PolicyPlan {
        selected,
        missing,
        plans,
        problems,
    } = plan_policy(&ctx.client, &ns, &policy.spec, now).await?;
    new.builds = selected;
    new.last_evaluated_at = Some(Time(now));
    if new.builds.is_empty() {
        let message = format!(
            "spec.builds selects no ImageBuild in namespace {ns}{}; nothing to prune",
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (not found: {})", missing.join(", "))
            }
        );
        set(
            &mut new,
            "False",
            "NoBuildsSelected",
            &message,
            Settled::Stalled,
            generation,
            now,
        );
        new.summary = Some(PolicySummary::default());
        write_status(ctx, policy, &old, &new).await?;
        return Ok(Action::requeue(interval));
    }

    // 3. Act (or only report, with dryRun).
    let mut summary = PolicySummary::default();
    let mut failures = Vec::new();
    for BuildPlan {
        build: name,
        provider,
        decisions: plan,
    } in &plans
    {
        let (keep, change): (Vec<&Decision>, Vec<&Decision>) =
            plan.iter().partition(|d| d.action == RetentionAction::Keep);
        for d in &keep {
            new.retained
                .push(record(name, d, RetentionAction::Keep, d.reason.clone()));
        }
        summary.retained += i32::try_from(keep.len()).unwrap_or(i32::MAX);
        if policy.spec.dry_run {
            summary.planned += i32::try_from(change.len()).unwrap_or(i32::MAX);
            new.plan.extend(
                change
                    .iter()
                    .map(|d| record(name, d, d.action, d.reason.clone())),
            );
            continue;
        }
        let results = carry_out(provider.clone(), change.into_iter().cloned().collect(), now).await;
        for (d, r) in &results {
            let r = r.as_ref();
            match (d.action, r) {
                (RetentionAction::Delete, Ok(_)) => {
                    summary.deleted += 1;
                    info!(build = %name, region = %d.image.region, image = %d.image.image_id, reason = %d.reason, "deleted image");
                    publish(
                        ctx,
                        policy,
                        EventType::Normal,
                        "ImageDeleted",
                        format!(
                            "deleted {} in {} (ImageBuild {name}, build {}): {}",
                            d.image.image_id,
                            d.image.region,
                            d.image.build_id().unwrap_or("?"),
                            d.reason
                        ),
                        &d.image.image_id,
                    )
                    .await;
                    new.deleted
                        .push(record(name, d, RetentionAction::Delete, d.reason.clone()));
                }
                (_, Ok(Some(note))) => {
                    summary.retained += 1;
                    new.retained.push(record(
                        name,
                        d,
                        RetentionAction::Keep,
                        format!("{}; {note}", d.reason),
                    ));
                }
                (_, Ok(None)) => {
                    summary.deprecated += 1;
                    new.deprecated.push(record(
                        name,
                        d,
                        RetentionAction::Deprecate,
                        d.reason.clone(),
                    ));
                }
                (_, Err(e)) => {
                    warn!(build = %name, image = %d.image.image_id, error = %e, "retention action failed");
                    failures.push(format!(
                        "{} {} in {}: {e}",
                        if d.action == RetentionAction::Delete {
                            "deleting"
                        } else {
                            "deprecating"
                        },
                        d.image.image_id,
                        d.image.region
                    ));
                    summary.retained += 1;
                    new.retained.push(record(
                        name,
                        d,
                        RetentionAction::Keep,
                        format!("{}; the action failed and is retried: {e}", d.reason),
                    ));
                }
            }
        }
    }
    // Deletions accumulate, newest first: the status says what this policy
    // has pruned, not only what its last evaluation found left to prune.
    let deleted_now = summary.deleted;
    summary.deleted += old.summary.as_ref().map_or(0, |s| s.deleted);
    new.deleted.sort_by(status_order);
    new.deleted.extend(old.deleted.iter().cloned());
    new.deleted.truncate(STATUS_LIST_LIMIT);
    for list in [&mut new.retained, &mut new.deprecated, &mut new.plan] {
        list.sort_by(status_order);
        list.truncate(STATUS_LIST_LIMIT);
    }
    new.summary = Some(summary.clone());

    let mut requeue = interval;
    if !problems.is_empty() {
        // Some builds could not be evaluated: say which, keep the rest going.
        set(
            &mut new,
            "False",
            "BuildsNotEvaluated",
            &problems.join("; "),
            Settled::Retrying,
            generation,
            now,
        );
        requeue = requeue.min(Duration::from_secs(60));
    } else if !failures.is_empty() {
        let message = format!(
            "{} retention actions failed and are retried: {}",
            failures.len(),
            failures
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        set(
            &mut new,
            "False",
            "PruneFailed",
            &message,
            Settled::Retrying,
            generation,
            now,
        );
        requeue = requeue.min(Duration::from_secs(60));
    } else if policy.spec.dry_run {
        let message = format!(
            "dry run: would deprecate or delete {} image(s), keeps {}; see status.plan",
            summary.planned, summary.retained
        );
        set(
            &mut new,
            "True",
            "DryRun",
            &message,
            Settled::Done,
            generation,
            now,
        );
    } else {
        let message = format!(
            "retained {}, deprecated {}, deleted {deleted_now} in this evaluation ({} in all)",
            summary.retained, summary.deprecated, summary.deleted
        );
        set(
            &mut new,
            "True",
            "Evaluated",
            &message,
            Settled::Done,
            generation,
            now,
        );
    }
    // What is only a timestamp changes every run; status stays quiet otherwise.
    write_status(ctx, policy, &old, &new).await?;
    Ok(Action::requeue(requeue))
}

/// Status lists: by build and region, newest first.
fn status_order(a: &ImageDecision, b: &ImageDecision) -> std::cmp::Ordering {
    (&a.build, &a.region, &b.created_at, &a.image_id).cmp(&(
        &b.build,
        &b.region,
        &a.created_at,
        &b.image_id,
    ))
}

/// How an evaluation ended, in kstatus terms.
#[derive(Clone, Copy)]
enum Settled {
    /// Ready as given; nothing pending.
    Done,
    /// Retried on its own soon: Reconciling stays True.
    Retrying,
    /// The user must change something: Stalled True.
    Stalled,
}

fn set(
    s: &mut ImagePolicyStatus,
    status: &str,
    reason: &str,
    message: &str,
    how: Settled,
    generation: Option<i64>,
    now: Timestamp,
) {
    let now = Time(now);
    match how {
        Settled::Retrying => conditions::progress(
            &mut s.conditions,
            status,
            reason,
            reason,
            message,
            generation,
            now,
        ),
        Settled::Done | Settled::Stalled => conditions::settle(
            &mut s.conditions,
            status,
            reason,
            message,
            matches!(how, Settled::Stalled),
            generation,
            now,
        ),
    }
}

/// Publishes an Event about one image. The image is the Event's related
/// object, so each image gets its own Event instead of joining a series.
async fn publish(
    ctx: &Context,
    policy: &ImagePolicy,
    type_: EventType,
    reason: &str,
    note: String,
    image: &str,
) {
    let related = k8s_openapi::api::core::v1::ObjectReference {
        kind: Some("Image".to_owned()),
        name: Some(image.to_owned()),
        ..Default::default()
    };
    super::publish(ctx, policy, type_, reason, "Prune", note, Some(related)).await;
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
    super::apply_status(ctx, policy, new).await
}
