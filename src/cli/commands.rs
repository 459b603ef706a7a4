//! `kiln validate`, `kiln images list` and `kiln prune`: what the seeds'
//! users do by hand today, from the same code the controller runs.

use std::{
    io::{BufRead, IsTerminal, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    api::{ImageBuild, ImagePolicy, RetentionAction},
    packer::runner::{self, BuildRequest, RunnerOptions},
    provider::{ImageProvider, factory},
    retention::{self, Applied, BuildPlan, ImageInfo},
};
use anyhow::{Context as _, bail};
use jiff::Timestamp;
use serde_json::Value;

use super::table::format_rows;

/// Progress for people, not for logs: only when stderr is a terminal.
fn progress(text: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("... {text}");
    }
}

/// Reads every YAML document of a file.
pub fn read_manifests(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("{}: document {} is not valid YAML", path.display(), i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The first manifest of `kind` in a file, checked like `kiln validate` does.
fn load_valid<T: serde::de::DeserializeOwned>(path: &Path, kind: &str) -> anyhow::Result<T> {
    let doc = read_manifests(path)?
        .into_iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .with_context(|| format!("{}: no {kind} in the file", path.display()))?;
    let problems: Vec<String> = crate::validate::manifest(&doc)
        .iter()
        .map(ToString::to_string)
        .collect();
    if !problems.is_empty() {
        bail!(
            "{}: {} is invalid:\n  - {}",
            path.display(),
            describe(&doc),
            problems.join("\n  - ")
        );
    }
    Ok(serde_json::from_value(doc)?)
}

fn describe(v: &Value) -> String {
    format!(
        "{}/{}",
        v.get("kind").and_then(Value::as_str).unwrap_or("<no kind>"),
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<no name>")
    )
}

/// `kiln validate`: schema, CEL rules, and `packer validate` for inline
/// templates. Returns whether everything was valid.
pub async fn validate(files: &[PathBuf], packer: Option<PathBuf>) -> anyhow::Result<bool> {
    let mut ok = true;
    for file in files {
        let docs = match read_manifests(file) {
            Ok(d) => d,
            Err(e) => {
                println!("{e:#}");
                ok = false;
                continue;
            }
        };
        if docs.is_empty() {
            println!("{}: no manifests", file.display());
            ok = false;
        }
        for doc in docs {
            let what = describe(&doc);
            let mut problems: Vec<String> = crate::validate::manifest(&doc)
                .iter()
                .map(ToString::to_string)
                .collect();
            if problems.is_empty()
                && let Some(packer) = &packer
                && doc.get("kind").and_then(Value::as_str) == Some("ImageBuild")
            {
                let ib: ImageBuild =
                    serde_json::from_value(doc.clone()).context("reading a valid ImageBuild")?;
                if let Some(template) = ib.spec.template.inline.clone() {
                    progress(&format!("packer validate {what}"));
                    if let Some(output) = packer_validate(&ib, template, packer).await? {
                        problems.push(format!(
                            "spec.template.inline: packer validate failed:\n{output}"
                        ));
                    }
                }
            }
            if problems.is_empty() {
                println!("{}: {what}: valid", file.display());
            } else {
                ok = false;
                println!("{}: {what}: invalid", file.display());
                for p in problems {
                    println!("  - {}", p.replace('\n', "\n    "));
                }
            }
        }
    }
    Ok(ok)
}

async fn packer_validate(
    ib: &ImageBuild,
    template: String,
    packer: &Path,
) -> anyhow::Result<Option<String>> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let request = BuildRequest {
        build_id: "validate-0".into(),
        namespace: ib
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: ib.metadata.name.clone().unwrap_or_default(),
        spec_hash: "0".repeat(16),
        provider: ib.spec.provider.type_,
        regions: ib.spec.provider.regions.clone(),
        endpoint: ib.spec.provider.endpoint.clone(),
        template,
        variables: ib.spec.variables.clone(),
        timestamp: crate::image_build::status::version_stamp(Timestamp::now()),
        gcp: ib.spec.provider.gcp.clone(),
        azure: ib.spec.provider.azure.clone(),
    };
    let options = RunnerOptions::new(packer.to_owned(), dir.path().to_owned());
    Ok(runner::validate_only(&request, &options).await?)
}

/// Where `images list` finds the ImageBuild.
pub enum BuildSource {
    /// `NAMESPACE/NAME` in the cluster; credentials from its Secret.
    Cluster(String, String),
    /// A manifest; credentials from the environment.
    File(PathBuf),
}

/// `kiln images list`: the images kiln owns for a build, newest first.
pub async fn images_list(source: BuildSource) -> anyhow::Result<()> {
    let (ib, provider): (ImageBuild, Arc<dyn ImageProvider>) = match source {
        BuildSource::File(path) => {
            let ib: ImageBuild = load_valid(&path, "ImageBuild")?;
            // Credentials from the environment, under the names the
            // provider's Secret would hold.
            let type_ = ib.spec.provider.type_;
            let provider = factory::build(&ib.spec.provider, &factory::credentials_from_env(type_));
            (ib, provider)
        }
        BuildSource::Cluster(ns, name) => {
            let client = super::connect().await?;
            let api: kube::Api<ImageBuild> = kube::Api::namespaced(client.clone(), &ns);
            let ib = api
                .get_opt(&name)
                .await?
                .with_context(|| format!("ImageBuild {ns}/{name} not found"))?;
            let provider = match crate::dereference::provider(
                &crate::dereference::Reader::new(client.clone()),
                &ib,
            )
            .await?
            {
                Ok((p, _, _)) => p,
                Err(problem) => bail!("ImageBuild {ns}/{name}: {problem:?}"),
            };
            (ib, provider)
        }
    };
    let ns = ib
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = ib.metadata.name.clone().unwrap_or_default();
    progress(&format!(
        "listing the images of {ns}/{name} in {}",
        ib.spec.provider.regions.join(", ")
    ));
    let mut images = provider
        .list_owned(&ib.spec.provider.regions, &ns, &name)
        .await?;
    images.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.region.cmp(&b.region))
    });
    let latest: Vec<&str> = ib
        .status
        .iter()
        .flat_map(|s| s.latest_image_ids())
        .collect();
    let now = Timestamp::now();
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i: &ImageInfo| {
            vec![
                i.region.clone(),
                i.image_id.clone(),
                i.name.clone().unwrap_or_default(),
                i.build_id().unwrap_or("").to_owned(),
                i.created_at.strftime("%Y-%m-%d %H:%M").to_string(),
                age(now, i.created_at),
                if latest.contains(&i.image_id.as_str()) {
                    "yes".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        format_rows(
            &[
                "REGION", "IMAGE", "NAME", "BUILD-ID", "CREATED", "AGE", "LATEST"
            ]
            .map(String::from),
            &rows
        )
    );
    eprintln!("{} image(s) owned by ImageBuild {ns}/{name}", images.len());
    Ok(())
}

fn age(now: Timestamp, then: Timestamp) -> String {
    use kiln_core::retention::plan;
    plan::human(plan::age(now, then))
}

/// `kiln prune`: the plan an ImagePolicy would carry out, and with
/// confirmation (or `--yes`), carrying it out.
pub async fn prune(
    policy_file: &Path,
    namespace: Option<String>,
    dry_run: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let policy: ImagePolicy = load_valid(policy_file, "ImagePolicy")?;
    let client = super::connect().await?;
    let ns = namespace
        .or(policy.metadata.namespace.clone())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let now = Timestamp::now();
    progress(&format!(
        "listing the images of the ImageBuilds the policy selects in {ns}"
    ));
    let all = retention::list_builds(&client, &ns).await?;
    let reader = crate::dereference::Reader::new(client.clone());
    let plan = retention::plan_policy(&reader, &ns, &all, &policy.spec, now).await?;
    for p in plan.stalls.iter().chain(&plan.problems) {
        eprintln!("warning: {p}");
    }
    if plan.selected.is_empty() {
        bail!(
            "the policy selects no ImageBuild in namespace {ns}{}",
            if plan.missing.is_empty() {
                String::new()
            } else {
                format!(" (not found: {})", plan.missing.join(", "))
            }
        );
    }
    let mut rows = Vec::new();
    let mut kept = 0;
    for BuildPlan {
        build, verdicts, ..
    } in &plan.plans
    {
        for d in verdicts {
            if d.action == RetentionAction::Keep {
                kept += 1;
                continue;
            }
            rows.push(vec![
                build.clone(),
                d.image.region.clone(),
                d.image.image_id.clone(),
                d.image.name.clone().unwrap_or_default(),
                d.image.build_id().unwrap_or("").to_owned(),
                action(d.action).into(),
                d.reason.clone(),
            ]);
        }
    }
    print!(
        "{}",
        format_rows(
            &[
                "BUILD", "REGION", "IMAGE", "NAME", "BUILD-ID", "ACTION", "REASON"
            ]
            .map(String::from),
            &rows
        )
    );
    println!("plan: {} to deprecate or delete, {kept} kept", rows.len());
    if dry_run || rows.is_empty() {
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to change images without confirmation: run on a terminal, or pass --yes"
            );
        }
        eprint!("Carry out this plan ({} images)? [y/N] ", rows.len());
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(());
        }
    }
    let mut failed = 0;
    for build_plan in &plan.plans {
        let build = &build_plan.build;
        progress(&format!("pruning {build}"));
        for o in retention::carry_out(build_plan, None, now).await {
            let d = &o.verdict;
            match o.applied {
                Applied::Kept | Applied::Planned => {}
                Applied::Deleted => {
                    println!(
                        "deleted {} in {} ({build})",
                        d.image.image_id, d.image.region
                    )
                }
                Applied::DeletedPartly(note) => println!(
                    "deleted {} in {} ({build}): {note}",
                    d.image.image_id, d.image.region
                ),
                Applied::Deprecated => {
                    println!(
                        "deprecated {} in {} ({build})",
                        d.image.image_id, d.image.region
                    )
                }
                Applied::Unsupported(note) => {
                    println!("kept {} in {}: {note}", d.image.image_id, d.image.region)
                }
                Applied::Failed(e) | Applied::Refused(e) => {
                    failed += 1;
                    println!("failed {} in {}: {e}", d.image.image_id, d.image.region);
                }
            }
        }
        let swept = build_plan
            .provider
            .sweep(&build_plan.regions, &ns, build)
            .await?;
        for s in swept {
            println!("deleted {s}, left behind by a deleted image ({build})");
        }
    }
    if failed > 0 {
        bail!("{failed} action(s) failed");
    }
    Ok(())
}

fn action(a: RetentionAction) -> &'static str {
    match a {
        RetentionAction::Keep => "keep",
        RetentionAction::Deprecate => "deprecate",
        RetentionAction::Obsolete => "obsolete",
        RetentionAction::Delete => "delete",
    }
}
