//! Carrying out an ImagePolicy: select its ImageBuilds, list their owned
//! images through each build's provider, plan (pure, in
//! `kiln_core::retention`), then deprecate and delete. The controller and
//! `kiln prune` share all of it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::{StreamExt, stream};
use jiff::Timestamp;
use kube::{Api, ResourceExt, api::ListParams};

pub use kiln_core::retention::{
    ImageInfo, ImageOwner, ImageVerdict, PlanError, Protection, Rules, in_use, plan, rules,
    selects,
    status::{Applied, Evaluation, Outcome},
};

use crate::{
    api::{ImageBuild, ImageDecision, ImagePolicySpec, RetentionAction},
    dereference::{self, DereferenceError},
    image_build::decide::InputProblem,
    provider::{Deprecation, DeprecationStage, ImageProvider, ProviderError},
};

/// Why a policy could not be evaluated at all (one build's problem is not
/// an error: it is reported in the evaluation and the rest go on).
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Listing the ImageBuilds failed.
    #[error("listing ImageBuilds: {0}")]
    List(#[from] kube::Error),
    /// Reading a build's credentials failed.
    #[error(transparent)]
    Dereference(#[from] DereferenceError),
}

/// The plan for one selected ImageBuild.
pub struct BuildPlan {
    /// ImageBuild name.
    pub build: String,
    /// Its regions.
    pub regions: Vec<String>,
    /// Its provider, with its credentials.
    pub provider: Arc<dyn ImageProvider>,
    /// A verdict per owned image.
    pub verdicts: Vec<ImageVerdict>,
}

/// What a policy would do now.
pub struct PolicyPlan {
    /// Names of the ImageBuilds it selects.
    pub selected: Vec<String>,
    /// Names it lists that do not exist.
    pub missing: Vec<String>,
    /// A plan per build that could be evaluated.
    pub plans: Vec<BuildPlan>,
    /// Why other builds could not be evaluated, for now (retried).
    pub problems: Vec<String>,
    /// Why some builds cannot be evaluated until the user acts.
    pub stalls: Vec<String>,
}

/// Every ImageBuild of a namespace, from the apiserver (the CLI; the
/// controller reads its watch cache instead).
pub async fn list_builds(
    client: &kube::Client,
    ns: &str,
) -> Result<Vec<Arc<ImageBuild>>, RetentionError> {
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect())
}

/// Selects a policy's builds among `all` (every ImageBuild of the namespace:
/// children protect their sources), lists their owned images and plans
/// retention.
pub async fn plan_policy(
    reader: &dereference::Reader,
    ns: &str,
    all: &[Arc<ImageBuild>],
    spec: &ImagePolicySpec,
    now: Timestamp,
) -> Result<PolicyPlan, RetentionError> {
    let selected: BTreeMap<String, &ImageBuild> = all
        .iter()
        .map(|b| &**b)
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
    let in_use = in_use(all);
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    let mut stalls = Vec::new();
    for (name, build) in &selected {
        let provider: Arc<dyn ImageProvider> = match dereference::provider(reader, build).await? {
            Ok((p, _, _)) => p,
            Err(InputProblem::Missing { message, .. }) => {
                problems.push(format!("ImageBuild {name}: {message}"));
                continue;
            }
            Err(InputProblem::Invalid { message, .. } | InputProblem::Unsupported { message }) => {
                stalls.push(format!("ImageBuild {name}: {message}"));
                continue;
            }
        };
        // A plan promises only what the provider can carry out.
        if let Some(refusal) = provider.capabilities().refuses(spec) {
            stalls.push(format!("ImageBuild {name}: {refusal}"));
            continue;
        }
        let images = match provider
            .list_owned(&build.spec.provider.regions, ns, name)
            .await
        {
            Ok(images) => images,
            Err(
                ProviderError::Invalid(message)
                | ProviderError::Unauthorized(message)
                | ProviderError::Misconfigured(message),
            ) => {
                stalls.push(format!("ImageBuild {name}: {message}"));
                continue;
            }
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
        match plan(ns, name, &images, &rules, &protection, now) {
            Ok(verdicts) => plans.push(BuildPlan {
                build: name.clone(),
                regions: build.spec.provider.regions.clone(),
                provider,
                verdicts,
            }),
            Err(e) => problems.push(format!("ImageBuild {name}: {e}")),
        }
    }
    Ok(PolicyPlan {
        selected: selected.into_keys().collect(),
        missing,
        plans,
        problems,
        stalls,
    })
}

/// Carries out the deprecations and deletions of one build's plan. Regions
/// go in parallel, each with its own budget of calls in flight (the
/// provider's pacing, or `per_region` when set: `kiln controller
/// --prune-concurrency`); the provider holds each call
/// to the cloud's rate for its region. Keep verdicts are kept. Outcomes come
/// in the plan's order.
pub async fn carry_out(
    plan: &BuildPlan,
    per_region: Option<usize>,
    now: Timestamp,
) -> Vec<Outcome> {
    let pacing = plan.provider.pacing();
    let per_region = per_region.unwrap_or(pacing.concurrency).max(1);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; plan.verdicts.len()];
    let mut regions: BTreeMap<String, Vec<(usize, ImageVerdict)>> = BTreeMap::new();
    for (i, verdict) in plan.verdicts.iter().enumerate() {
        match verdict.action {
            RetentionAction::Keep => {
                outcomes[i] = Some(Outcome {
                    build: plan.build.clone(),
                    verdict: verdict.clone(),
                    applied: Applied::Kept,
                })
            }
            _ => regions
                .entry(verdict.image.region.clone())
                .or_default()
                .push((i, verdict.clone())),
        }
    }
    let mut lanes = Vec::new();
    for (region, verdicts) in regions {
        tracing::debug!(build = %plan.build, %region, actions = verdicts.len(), per_region, requests_per_second = pacing.requests_per_second, "carrying out retention");
        let provider = plan.provider.clone();
        let build = plan.build.clone();
        lanes.push(
            stream::iter(verdicts)
                .map(move |(i, verdict)| {
                    let (provider, build) = (provider.clone(), build.clone());
                    async move { (i, act(provider, build, verdict, now).await) }
                })
                .buffer_unordered(per_region)
                .collect::<Vec<_>>(),
        );
    }
    for (i, outcome) in futures::future::join_all(lanes).await.into_iter().flatten() {
        outcomes[i] = Some(outcome);
    }
    outcomes.into_iter().flatten().collect()
}

/// Deprecates or deletes one image.
async fn act(
    provider: Arc<dyn ImageProvider>,
    build: String,
    verdict: ImageVerdict,
    now: Timestamp,
) -> Outcome {
    let applied = match verdict.action {
        RetentionAction::Keep => Applied::Kept,
        RetentionAction::Delete => match provider.delete(&verdict.image).await {
            Ok(None) => Applied::Deleted,
            Ok(Some(note)) => Applied::DeletedPartly(note),
            Err(
                ProviderError::Invalid(e)
                | ProviderError::Unauthorized(e)
                | ProviderError::Misconfigured(e),
            ) => Applied::Refused(e),
            Err(e) => Applied::Failed(e.to_string()),
        },
        RetentionAction::Deprecate | RetentionAction::Obsolete => match provider
            .deprecate(&verdict.image, &deprecation(&verdict, now))
            .await
        {
            Ok(None) => Applied::Deprecated,
            Ok(Some(note)) => Applied::Unsupported(note),
            Err(
                ProviderError::Invalid(e)
                | ProviderError::Unauthorized(e)
                | ProviderError::Misconfigured(e),
            ) => Applied::Refused(e),
            Err(e) => Applied::Failed(e.to_string()),
        },
    };
    Outcome {
        build,
        verdict,
        applied,
    }
}

/// What a deprecate or obsolete verdict asks of the provider.
fn deprecation(verdict: &ImageVerdict, now: Timestamp) -> Deprecation {
    Deprecation {
        stage: match verdict.action {
            RetentionAction::Obsolete => DeprecationStage::Obsolete,
            _ => DeprecationStage::Deprecated,
        },
        at: now,
        delete_at: verdict.delete_at,
        replacement: verdict.replacement.clone(),
    }
}

/// The deletions a plan is about to make, for the intent written first.
pub fn deletions(plan: &PolicyPlan) -> Vec<Outcome> {
    plan.plans
        .iter()
        .flat_map(|b| {
            b.verdicts
                .iter()
                .filter(|v| v.action == RetentionAction::Delete)
                .map(|v| Outcome {
                    build: b.build.clone(),
                    verdict: v.clone(),
                    applied: Applied::Planned,
                })
        })
        .collect()
}

/// The evaluation of a plan: carried out, or with `dry_run` only planned.
/// `pending` are the deletions an earlier, interrupted evaluation announced:
/// those whose image is gone from its build's listing are counted now.
pub async fn evaluate(
    ns: &str,
    plan: PolicyPlan,
    pending: &[ImageDecision],
    dry_run: bool,
    per_region: Option<usize>,
    now: Timestamp,
) -> Evaluation {
    let mut outcomes = Vec::new();
    let mut still_pending = Vec::new();
    for p in pending {
        match plan.plans.iter().find(|b| b.build == p.build) {
            Some(b) if b.verdicts.iter().any(|v| v.image.image_id == p.image_id) => {}
            Some(_) => outcomes.push(kiln_core::retention::status::recovered(p)),
            None => still_pending.push(p.clone()),
        }
    }
    for build in &plan.plans {
        if dry_run {
            outcomes.extend(build.verdicts.iter().map(|v| Outcome {
                build: build.build.clone(),
                verdict: v.clone(),
                applied: match v.action {
                    RetentionAction::Keep => Applied::Kept,
                    _ => Applied::Planned,
                },
            }));
            continue;
        }
        outcomes.extend(carry_out(build, per_region, now).await);
        // What deleted images left behind (a snapshot whose delete failed or
        // was interrupted) goes now. The provider's listings are shared, so
        // this costs no call per ImageBuild.
        match build.provider.sweep(&build.regions, ns, &build.build).await {
            Ok(swept) if !swept.is_empty() => {
                tracing::info!(build = %build.build, swept = %swept.join(", "), "deleted what deleted images left behind");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(build = %build.build, error = %e, "sweeping what deleted images left behind failed; retried next evaluation")
            }
        }
    }
    Evaluation {
        namespace: ns.to_owned(),
        selected: plan.selected,
        missing: plan.missing,
        outcomes,
        problems: plan.problems,
        stalls: plan.stalls,
        dry_run,
        still_pending,
    }
}
