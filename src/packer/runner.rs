//! `kiln runner`: one Packer build, the same code path for both executors.
//!
//! It materializes the template, writes the variables to a var-file (adding
//! kiln's own where the template declares them), runs `packer init` when the
//! template needs plugins and Packer has it, `packer validate`, then
//! `packer build -machine-readable`, and reports a [`RunnerResult`].
//!
//! Plugins are never downloaded: `packer init` runs with its proxy pointed
//! at a loopback port that refuses every connection, so it only confirms
//! that the image's preinstalled plugins (`PACKER_PLUGIN_PATH`) meet the
//! template's `required_plugins`. A missing one fails the build with a
//! message naming it and how to add it to the image ([`plugins`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{
    Version,
    artifacts::{BuilderKind, region_artifacts},
    declared_variables,
    machine_readable::Summary,
    plugins,
};
use crate::api::ProviderType;
pub use kiln_core::image_build::run::{Created, Outcome, RunnerResult};

/// Environment variable carrying the [`BuildRequest`] as JSON.
pub const REQUEST_ENV: &str = "KILN_BUILD_REQUEST";
/// Environment variable naming (comma-separated) the variables whose values
/// are secret and must be redacted from every message.
pub const SECRET_ENV: &str = "KILN_SECRET_ENV";
/// Longest message a result carries; a Pod's termination message holds 4 KiB.
pub const MAX_MESSAGE: usize = 1500;

/// What to build. Holds no secret: secret values reach the runner as
/// environment (`PKR_VAR_*` and provider credentials), never in here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildRequest {
    /// The deterministic build ID.
    pub build_id: String,
    /// Namespace of the ImageBuild.
    pub namespace: String,
    /// Name of the ImageBuild.
    pub name: String,
    /// Hash of the spec being built.
    pub spec_hash: String,
    /// Provider type.
    pub provider: ProviderType,
    /// Regions, the first being where Packer builds.
    pub regions: Vec<String>,
    /// Endpoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The template's HCL.
    pub template: String,
    /// Non-secret variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// `YYYY-MM-DD-HHMM` of the build's start, for image names.
    pub timestamp: String,
    /// The cloud's settings (GCP project and family, Azure gallery), offered
    /// to templates as `kiln_*` variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<crate::api::GcpSettings>,
    /// See `gcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<crate::api::AzureSettings>,
}

impl BuildRequest {
    /// The variables kiln offers every template; set only where declared.
    pub fn kiln_variables(&self) -> BTreeMap<&'static str, serde_json::Value> {
        let mut vars = BTreeMap::from([
            ("kiln_build_id", self.build_id.clone().into()),
            ("kiln_timestamp", self.timestamp.clone().into()),
            ("kiln_namespace", self.namespace.clone().into()),
            ("kiln_image_build", self.name.clone().into()),
            ("kiln_spec_hash", self.spec_hash.clone().into()),
            ("kiln_regions", serde_json::json!(self.regions)),
            (
                "kiln_region",
                self.regions.first().cloned().unwrap_or_default().into(),
            ),
        ]);
        if let Some(endpoint) = &self.endpoint {
            vars.insert("kiln_endpoint", endpoint.clone().into());
        }
        if let Some(gcp) = &self.gcp {
            vars.insert("kiln_project_id", gcp.project_id.clone().into());
            // An empty family leaves the image in none.
            vars.insert(
                "kiln_image_family",
                gcp.image_family.clone().unwrap_or_default().into(),
            );
            vars.insert(
                "kiln_storage_locations",
                serde_json::json!(gcp.storage_locations),
            );
        }
        if let Some(azure) = &self.azure {
            vars.insert("kiln_subscription_id", azure.subscription_id.clone().into());
            vars.insert("kiln_resource_group", azure.resource_group.clone().into());
            if let Some(gallery) = &azure.gallery {
                vars.insert("kiln_gallery", gallery.name.clone().into());
                vars.insert(
                    "kiln_image_definition",
                    gallery.image_definition.clone().into(),
                );
            }
        }
        vars
    }
}

/// Replaces secret values in text.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Redacts these values (very short ones would redact ordinary words, and
    /// are not credentials anyway).
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = values.into_iter().filter(|v| v.len() >= 4).collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    /// Reads the values of the variables listed in `KILN_SECRET_ENV`.
    pub fn from_env() -> Self {
        let names = std::env::var(SECRET_ENV).unwrap_or_default();
        Self::new(
            names
                .split(',')
                .filter(|n| !n.is_empty())
                .filter_map(|n| std::env::var(n).ok()),
        )
    }

    /// The text with every secret replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |acc, s| {
            acc.replace(s.as_str(), "[redacted]")
        })
    }
}

/// Keeps the last characters of a message, on a line boundary where possible.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    let cut = cut.split_once('\n').map_or(cut, |(_, rest)| rest);
    format!("...\n{cut}")
}

/// How long Packer may take to cancel and clean up after the runner is told
/// to stop, unless `$KILN_BUILD_GRACE_SECONDS` says otherwise. A Job's
/// `terminationGracePeriodSeconds` and the chart's leave room for it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// Environment variable overriding [`DEFAULT_GRACE`], in seconds.
pub const GRACE_ENV: &str = "KILN_BUILD_GRACE_SECONDS";

/// Where and how the runner works.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// The packer binary.
    pub packer: PathBuf,
    /// Directory to work in (created; the template and var-file go here).
    pub workdir: PathBuf,
    /// Cancelled when the runner must stop (SIGTERM or SIGINT).
    pub stop: CancellationToken,
    /// How long Packer may take to clean up after `stop`.
    pub grace: Duration,
}

impl RunnerOptions {
    /// Options for `packer` in `workdir`, never stopped, with the default grace.
    pub fn new(packer: PathBuf, workdir: PathBuf) -> RunnerOptions {
        RunnerOptions {
            packer,
            workdir,
            stop: CancellationToken::new(),
            grace: DEFAULT_GRACE,
        }
    }

    /// Stops on SIGTERM or SIGINT (the first one; Packer gets exactly one
    /// SIGTERM), with the grace from `$KILN_BUILD_GRACE_SECONDS`.
    pub fn stopped_by_signals(mut self) -> std::io::Result<RunnerOptions> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
            // Later signals are absorbed: the first one already stops Packer.
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
        });
        if let Some(seconds) = std::env::var(GRACE_ENV)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            self.grace = Duration::from_secs(seconds);
        }
        Ok(self)
    }
}

/// Where `packer build` writes its machine-readable output, in the runner's
/// work directory: a file, so that Packer can still write while it cleans up
/// after the runner is gone.
pub const PACKER_OUT: &str = "packer.out";

/// Why the runner could not even start Packer.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Local I/O.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The build request is missing or unreadable.
    #[error("{0}")]
    Request(String),
}

/// `kiln runner`: runs the build described by `$KILN_BUILD_REQUEST` and writes
/// the result to `result_file` (a Job's termination log), redacting every
/// secret the environment carries. A failed build is a result, not an error.
pub async fn run_from_env(
    options: &RunnerOptions,
    result_file: &Path,
) -> Result<RunnerResult, RunnerError> {
    let raw = std::env::var(REQUEST_ENV)
        .map_err(|_| RunnerError::Request(format!("{REQUEST_ENV} is not set")))?;
    let request: BuildRequest = serde_json::from_str(&raw)
        .map_err(|e| RunnerError::Request(format!("{REQUEST_ENV} is not a build request: {e}")))?;
    let redactor = Redactor::from_env();
    let result = match run(&request, options, &redactor).await {
        Ok(result) => result,
        Err(e) => RunnerResult {
            build_id: request.build_id.clone(),
            outcome: Outcome::Failed,
            artifacts: vec![],
            message: Some(redactor.redact(&e.to_string())),
            packer_version: None,
            created: Default::default(),
        },
    };
    let json = serde_json::to_vec(&result)
        .map_err(|e| RunnerError::Request(format!("encoding the result: {e}")))?;
    std::fs::write(result_file, json)
        .map_err(|e| RunnerError::Io(format!("writing {}", result_file.display()), e))?;
    tracing::info!(build_id = %result.build_id, outcome = ?result.outcome, "runner finished");
    Ok(result)
}

/// Runs one build and reports what happened. Packer failures are results, not
/// errors; only local I/O problems are errors.
pub async fn run(
    request: &BuildRequest,
    options: &RunnerOptions,
    redactor: &Redactor,
) -> Result<RunnerResult, RunnerError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e| RunnerError::Io(what, e)
    };
    let dir = &options.workdir;
    let var_file = prepare(request, dir).await?;

    let result =
        |outcome, message: Option<String>, artifacts, version: Option<Version>| RunnerResult {
            build_id: request.build_id.clone(),
            outcome,
            artifacts,
            message: message.map(|m| tail(&redactor.redact(&m), MAX_MESSAGE)),
            packer_version: version.map(|v| v.to_string()),
            created: Default::default(),
        };

    let version_out = match packer(options, dir, &["version"]).await {
        Ok(out) => out,
        Err(e) => {
            return Ok(result(
                Outcome::Failed,
                Some(format!("cannot run {}: {e}", options.packer.display())),
                vec![],
                None,
            ));
        }
    };
    let version = Version::parse(&version_out.stdout);
    tracing::info!(build_id = %request.build_id, packer = ?version.map(|v| v.to_string()), "packer found");

    let required = plugins::required_plugins(&request.template);
    if request.template.contains("required_plugins") {
        match version {
            Some(v) if v.has_init() => {
                // Plugins come from the image: `packer init` only confirms
                // they are installed, and cannot download (see NoDownload).
                let no_download = plugins::NoDownload::start()
                    .await
                    .map_err(io("starting the no-download proxy for packer init"))?;
                let init = packer_with(options, dir, &["init", "."], |cmd| {
                    cmd.envs(provider_env(request, dir));
                    no_download.apply(cmd);
                })
                .await
                .map_err(io("running packer init"))?;
                let attempts = no_download.attempts();
                if !init.success {
                    let text = init.combined();
                    let message =
                        match missing_plugins_message(options, dir, &text, &required).await {
                            Some(m) => m,
                            None => format!("packer init failed:\n{text}"),
                        };
                    tracing::warn!(build_id = %request.build_id, download_attempts = attempts, "packer init failed");
                    return Ok(result(Outcome::Failed, Some(message), vec![], version));
                }
                tracing::info!(
                    build_id = %request.build_id,
                    download_attempts = attempts,
                    plugins = ?required.iter().map(|r| format!("{} {}", r.source, r.version)).collect::<Vec<_>>(),
                    "packer init: every required plugin is installed"
                );
            }
            _ => tracing::warn!(
                "template declares required_plugins but this Packer has no `init`; relying on installed plugins"
            ),
        }
    }

    let var_arg = format!("-var-file={}", var_file.display());
    let validate = packer_with(options, dir, &["validate", &var_arg, "."], |cmd| {
        cmd.envs(provider_env(request, dir));
    })
    .await
    .map_err(io("running packer validate"))?;
    if !validate.success {
        // A missing plugin is the image's fault, not the template's: a
        // retry once the image has it succeeds.
        if let Some(m) =
            missing_plugins_message(options, dir, &validate.combined(), &required).await
        {
            return Ok(result(Outcome::Failed, Some(m), vec![], version));
        }
        return Ok(result(
            Outcome::Invalid,
            Some(format!("packer validate failed:\n{}", validate.combined())),
            vec![],
            version,
        ));
    }

    if options.stop.is_cancelled() {
        return Ok(result(
            Outcome::Interrupted,
            Some("stopped before packer build started".into()),
            vec![],
            version,
        ));
    }
    let since = jiff::Timestamp::now();
    let (build, interrupted) = packer_streaming(
        options,
        dir,
        &["build", "-machine-readable", "-color=false", &var_arg, "."],
        redactor,
        &provider_env(request, dir),
    )
    .await
    .map_err(io("running packer build"))?;
    let summary = Summary::from_output(&build.stdout);
    // Whatever the run announced, for the sweep should it not end with
    // recorded images.
    let mut created = Created {
        since: Some(since),
        ..Default::default()
    };
    super::created::collect(&build.stdout, &mut created);
    let result = |outcome, message, artifacts, version| RunnerResult {
        created: match outcome {
            Outcome::Succeeded => Created::default(),
            _ => created.clone(),
        },
        ..result(outcome, message, artifacts, version)
    };
    // A stop that came as Packer finished does not undo the build: a
    // successful exit with artifacts is a built image, to be recorded.
    let built = build.success && !summary.artifacts.is_empty();
    if interrupted && !built {
        let cleaned = build.stdout.contains("Cleanly cancelled builds")
            || build.stderr.contains("Cleanly cancelled builds");
        return Ok(result(
            Outcome::Interrupted,
            Some(if cleaned {
                "stopped; packer cancelled the build and cleaned up".into()
            } else {
                format!(
                    "stopped; packer did not report a clean cancellation:\n{}",
                    summary.errors.join("\n")
                )
            }),
            vec![],
            version,
        ));
    }
    if !build.success {
        if let Some(m) = missing_plugins_message(options, dir, &build.combined(), &required).await {
            return Ok(result(Outcome::Failed, Some(m), vec![], version));
        }
        let errors = if summary.errors.is_empty() {
            build.combined()
        } else {
            summary.errors.join("\n")
        };
        return Ok(result(
            Outcome::Failed,
            Some(format!("packer build failed:\n{errors}")),
            vec![],
            version,
        ));
    }

    let mut artifacts = Vec::new();
    for a in &summary.artifacts {
        let Some(kind) = BuilderKind::from_builder_id(&a.builder_id) else {
            continue;
        };
        match region_artifacts(kind, &a.builder_id, &a.id, &request.regions) {
            Ok(mut regional) => artifacts.append(&mut regional),
            Err(e) => {
                return Ok(result(
                    Outcome::Failed,
                    Some(e.to_string()),
                    vec![],
                    version,
                ));
            }
        }
    }
    artifacts.sort_by(|a, b| (&a.region, &a.image_id).cmp(&(&b.region, &b.image_id)));
    artifacts.dedup();
    if artifacts.is_empty() {
        return Ok(result(
            Outcome::Failed,
            Some("packer build succeeded but reported no cloud image artifact".into()),
            vec![],
            version,
        ));
    }
    if let Some(mismatch) = cross_check_manifest(dir, &summary).await {
        return Ok(result(Outcome::Failed, Some(mismatch), vec![], version));
    }
    Ok(result(Outcome::Succeeded, None, artifacts, version))
}

/// Runs only `packer validate` on a request's template and variables, with
/// placeholder values for kiln's own variables. `Ok(None)` when Packer accepts
/// it, `Ok(Some(output))` when it does not.
pub async fn validate_only(
    request: &BuildRequest,
    options: &RunnerOptions,
) -> Result<Option<String>, RunnerError> {
    let dir = &options.workdir;
    let var_file = prepare(request, dir).await?;
    let var_arg = format!("-var-file={}", var_file.display());
    let out = packer(options, dir, &["validate", &var_arg, "."])
        .await
        .map_err(|e| RunnerError::Io(format!("running {}", options.packer.display()), e))?;
    if out.success {
        return Ok(None);
    }
    let required = plugins::required_plugins(&request.template);
    Ok(Some(
        missing_plugins_message(options, dir, &out.combined(), &required)
            .await
            .unwrap_or_else(|| out.combined().trim().to_owned()),
    ))
}

/// When Packer's output says required plugins are missing, the message that
/// names them and how to add them to the image; `None` otherwise.
async fn missing_plugins_message(
    options: &RunnerOptions,
    dir: &Path,
    output: &str,
    required: &[plugins::RequiredPlugin],
) -> Option<String> {
    let missing = plugins::missing_plugins(output, required);
    if missing.is_empty() {
        return None;
    }
    let installed = match packer(options, dir, &["plugins", "installed"]).await {
        Ok(out) if out.success => plugins::installed_plugins(&out.stdout),
        _ => Vec::new(),
    };
    Some(plugins::missing_message(
        &missing,
        &plugin_dir().display().to_string(),
        &installed,
    ))
}

/// Where Packer (≥ 1.7) looks for plugins: `$PACKER_PLUGIN_PATH`, else
/// `plugins` in its config directory (`$PACKER_CONFIG_DIR`, else
/// `$HOME/.config/packer`).
pub fn plugin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PACKER_PLUGIN_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let config = std::env::var_os("PACKER_CONFIG_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config/packer")
        });
    config.join("plugins")
}

/// Environment Packer gets from the request. For AWS with
/// `spec.provider.endpoint`: `AWS_ENDPOINT_URL_EC2`, the endpoint for every
/// region, as kiln's own EC2 calls use it. The amazon plugin (1.8) honours
/// `custom_endpoint_ec2` only in the build region and copies to
/// `ami_regions` through the SDK's default endpoint unless this is set; Packer
/// 1.6's built-in builder ignores it. A value already in the environment wins.
fn provider_env(request: &BuildRequest, dir: &Path) -> Vec<(&'static str, String)> {
    if request.provider == ProviderType::Gcp
        && std::env::var_os(GCP_KEY_FILE_ENV).is_none()
        && let Some(path) = gcp_key_file(dir)
    {
        return vec![(GCP_KEY_FILE_ENV, path.display().to_string())];
    }
    match (&request.provider, &request.endpoint) {
        (ProviderType::Aws, Some(endpoint))
            if std::env::var_os("AWS_ENDPOINT_URL_EC2").is_none() =>
        {
            vec![("AWS_ENDPOINT_URL_EC2", endpoint.clone())]
        }
        _ => Vec::new(),
    }
}

/// Where Google's libraries (and so Packer's googlecompute) look for a
/// service-account key: a path.
const GCP_KEY_FILE_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// The key file the runner wrote into `dir` from the Secret's
/// `GOOGLE_CREDENTIALS` (the key's JSON), if it did.
fn gcp_key_file(dir: &Path) -> Option<PathBuf> {
    Some(dir.join(GCP_KEY_FILE)).filter(|p| p.is_file())
}

const GCP_KEY_FILE: &str = ".gcp-credentials.json";

/// The Secret holds the key itself (`GOOGLE_CREDENTIALS`), Packer wants a
/// path: write it next to the template, readable by this user only, so it
/// never reaches a command line.
async fn write_gcp_key(request: &BuildRequest, dir: &Path) -> std::io::Result<()> {
    let key = crate::api::GCP_CREDENTIALS_KEY;
    let Some(json) = std::env::var_os(key).filter(|_| request.provider == ProviderType::Gcp) else {
        return Ok(());
    };
    let path = dir.join(GCP_KEY_FILE);
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&path).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, json.as_encoded_bytes()).await
}

/// Writes the template and the var-file (with kiln's variables where the
/// template declares them) into `dir`; returns the var-file's path.
async fn prepare(request: &BuildRequest, dir: &Path) -> Result<PathBuf, RunnerError> {
    let io = |what: &'static str| move |e| RunnerError::Io(what.to_owned(), e);
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("creating the work directory"))?;
    tokio::fs::write(dir.join("template.pkr.hcl"), &request.template)
        .await
        .map_err(io("writing the template"))?;
    write_gcp_key(request, dir)
        .await
        .map_err(io("writing the GCP key file"))?;
    let var_file = dir.join("kiln.pkrvars.json");
    let vars = var_file_contents(request, &declared_variables(&request.template));
    tokio::fs::write(
        &var_file,
        serde_json::to_vec_pretty(&vars).unwrap_or_default(),
    )
    .await
    .map_err(io("writing the var-file"))?;
    Ok(var_file)
}

fn var_file_contents(
    request: &BuildRequest,
    declared: &BTreeSet<String>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut vars: serde_json::Map<String, serde_json::Value> = request
        .variables
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    for (name, value) in request.kiln_variables() {
        if declared.contains(name) {
            vars.insert(name.to_owned(), value);
        }
    }
    vars
}

/// The manifest post-processor's file, when the template has one, must name
/// the same artifacts as the machine-readable stream for this run.
async fn cross_check_manifest(dir: &Path, summary: &Summary) -> Option<String> {
    let text = tokio::fs::read_to_string(dir.join("packer-manifest.json"))
        .await
        .ok()?;
    let manifest: serde_json::Value = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => return Some(format!("packer-manifest.json is not valid JSON: {e}")),
    };
    let run = manifest
        .get("last_run_uuid")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let listed: BTreeSet<&str> = manifest
        .get("builds")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .filter(|b| b.get("packer_run_uuid").and_then(|v| v.as_str()) == Some(run))
        .filter_map(|b| b.get("artifact_id").and_then(|v| v.as_str()))
        .collect();
    let streamed: BTreeSet<&str> = summary.artifacts.iter().map(|a| a.id.as_str()).collect();
    (!listed.is_empty() && !listed.is_subset(&streamed)).then(|| {
        format!("the manifest post-processor lists artifacts {listed:?} but packer reported {streamed:?}")
    })
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

async fn packer(options: &RunnerOptions, dir: &Path, args: &[&str]) -> std::io::Result<Output> {
    packer_with(options, dir, args, |_| {}).await
}

/// [`packer`], with the command adjusted first (its environment).
async fn packer_with(
    options: &RunnerOptions,
    dir: &Path,
    args: &[&str],
    adjust: impl FnOnce(&mut Command),
) -> std::io::Result<Output> {
    let mut cmd = Command::new(&options.packer);
    crate::child::die_with_parent(&mut cmd);
    adjust(&mut cmd);
    let out = cmd
        .args(args)
        .current_dir(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `packer build`, echoing its `ui` messages to the log as they come
/// (builds take minutes to hours) and keeping the whole stream for parsing.
///
/// Packer writes to files, not pipes: if the runner dies, a Packer still
/// cleaning up would otherwise be killed by a broken pipe mid-cleanup. When
/// the runner is told to stop, Packer gets SIGTERM once (it cancels the build
/// and deletes its instance, key pair and security group) and up to
/// `options.grace` to finish; only then is it killed.
async fn packer_streaming(
    options: &RunnerOptions,
    dir: &Path,
    args: &[&str],
    redactor: &Redactor,
    env: &[(&str, String)],
) -> std::io::Result<(Output, bool)> {
    let out_path = dir.join(PACKER_OUT);
    let err_path = dir.join("packer.err");
    let mut cmd = Command::new(&options.packer);
    crate::child::die_with_parent(&mut cmd);
    let mut child = cmd
        .args(args)
        .current_dir(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()?;
    let mut reader = LineTail::open(&out_path).await?;
    let mut all = String::new();
    let echo = |all: &mut String, lines: Vec<String>| {
        for line in lines {
            if let Some(parsed) = super::machine_readable::parse_line(&line)
                && parsed.kind == "ui"
                && let Some(text) = parsed.data.get(1)
            {
                tracing::info!(target: "kiln::packer", "{}", redactor.redact(text.trim_end()));
            }
            all.push_str(&line);
            all.push('\n');
        }
    };
    let mut interrupted = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let status = loop {
        let tick = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            status = child.wait() => break status?,
            () = options.stop.cancelled(), if !interrupted => {
                interrupted = true;
                tracing::warn!(grace_seconds = options.grace.as_secs(), "stopping: packer cancels the build and cleans up");
                signal(&child, libc::SIGTERM);
                deadline = Some(tokio::time::Instant::now() + options.grace);
            }
            () = tick => {
                echo(&mut all, reader.read_lines().await?);
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    tracing::error!("packer did not finish cleaning up within the grace period; killing it");
                    child.kill().await?;
                }
            }
        }
    };
    echo(&mut all, reader.read_lines().await?);
    if let Some(rest) = reader.rest() {
        echo(&mut all, vec![rest]);
    }
    let stderr = tokio::fs::read_to_string(&err_path)
        .await
        .unwrap_or_default();
    Ok((
        Output {
            success: status.success(),
            stdout: all,
            stderr,
        },
        interrupted,
    ))
}

fn signal(child: &tokio::process::Child, signal: i32) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Reads whole lines appended to a file since the last read.
struct LineTail {
    file: tokio::fs::File,
    partial: String,
}

impl LineTail {
    async fn open(path: &Path) -> std::io::Result<LineTail> {
        Ok(LineTail {
            file: tokio::fs::File::open(path).await?,
            partial: String::new(),
        })
    }

    async fn read_lines(&mut self) -> std::io::Result<Vec<String>> {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = Vec::new();
        self.file.read_to_end(&mut bytes).await?;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(Vec::new());
        };
        let complete: String = self.partial.drain(..=end).collect();
        Ok(complete.lines().map(str::to_owned).collect())
    }

    /// A last line without a newline.
    fn rest(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_longest_first() {
        let r = Redactor::new(vec!["abc".into(), "s3cr3t".into(), "s3cr3t-long".into()]);
        assert_eq!(
            r.redact("x s3cr3t-long y s3cr3t abc"),
            "x [redacted] y [redacted] abc"
        );
    }

    #[test]
    fn tails_on_line_boundaries() {
        let text = "line one\nline two\nline three";
        assert_eq!(tail(text, 100), text);
        assert_eq!(tail(text, 14), "...\nline three");
    }

    #[test]
    fn kiln_variables_only_where_declared() {
        let request = BuildRequest {
            build_id: "b-1".into(),
            namespace: "ns".into(),
            name: "base".into(),
            spec_hash: "h".into(),
            provider: ProviderType::Aws,
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
            endpoint: Some("http://127.0.0.1:5000".into()),
            template: String::new(),
            variables: BTreeMap::from([("flavor".into(), "b".into())]),
            timestamp: "2026-11-22-1100".into(),
            gcp: None,
            azure: None,
        };
        let declared = BTreeSet::from(["kiln_timestamp".to_owned(), "kiln_regions".to_owned()]);
        let vars = var_file_contents(&request, &declared);
        assert_eq!(vars["flavor"], "b");
        assert_eq!(vars["kiln_timestamp"], "2026-11-22-1100");
        assert_eq!(
            vars["kiln_regions"],
            serde_json::json!(["us-east-1", "eu-west-1"])
        );
        assert!(!vars.contains_key("kiln_build_id"));
        assert!(!vars.contains_key("kiln_endpoint"));

        // The endpoint reaches the amazon plugin's copies to other regions.
        if std::env::var_os("AWS_ENDPOINT_URL_EC2").is_none() {
            assert_eq!(
                provider_env(&request, Path::new("/nonexistent")),
                vec![("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:5000".to_owned())]
            );
        }
        let other = BuildRequest {
            provider: ProviderType::Openstack,
            ..request.clone()
        };
        assert!(provider_env(&other, Path::new("/nonexistent")).is_empty());
        let real = BuildRequest {
            endpoint: None,
            ..request
        };
        assert!(provider_env(&real, Path::new("/nonexistent")).is_empty());
    }
}
