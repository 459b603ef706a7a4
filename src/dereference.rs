//! Step 1 of an ImageBuild reconcile: read what it refers to (template,
//! variables, credentials, parent) and check its regions at the provider.
//!
//! Missing objects are `InputProblem::Missing` (wait for them), objects that
//! exist but cannot work are `InputProblem::Invalid` (the user must act);
//! only apiserver failures are errors.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::{
    api::{ImageBuild, VariablesFromKind},
    executor::SecretEnv,
    image_build::{
        decide::{InputProblem, Inputs},
        identity::{ResolvedInputs, spec_hash},
    },
    provider::{ImageProvider, ProviderError, factory},
    reasons,
};

/// Why dereferencing failed; a missing or unusable input is not an error
/// but an [`InputProblem`], which the decision reports.
#[derive(Debug, thiserror::Error)]
pub enum DereferenceError {
    /// The apiserver failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The provider could not be asked (the region check).
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    /// The object lacks metadata the apiserver always sets.
    #[error("object has no {0}")]
    Metadata(&'static str),
}

type Error = DereferenceError;

/// What a build consumes.
#[derive(Clone)]
pub struct Resolved {
    /// Template text and referenced values, for the spec hash.
    pub inputs: ResolvedInputs,
    /// Non-secret variables for the var-file.
    pub variables: BTreeMap<String, String>,
    /// Credentials and secret variables, as environment.
    pub secret_env: Vec<SecretEnv>,
    /// The provider, with the credentials.
    pub provider: Arc<dyn ImageProvider>,
    /// Which provider: type, endpoint and a digest of the credentials.
    pub provider_key: String,
}

impl std::fmt::Debug for Resolved {
    // Secret values stay out of every Debug print (decisions are logged).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("template_revision", &self.inputs.template_revision)
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field(
                "secret_env",
                &self.secret_env.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Everything a build needs, hashed, with the regions checked at the
/// provider; or why it cannot be had.
pub async fn inputs(
    reader: &Reader,
    ib: &ImageBuild,
) -> Result<Result<Inputs<Resolved>, InputProblem>, Error> {
    let resolved = match resolve(reader, ib).await? {
        Ok(r) => r,
        Err(problem) => return Ok(Err(problem)),
    };
    // A suspended ImageBuild starts no build: the cloud need not be asked.
    if ib.spec.suspend {
        return Ok(Ok(Inputs {
            spec_hash: spec_hash(&ib.spec, &resolved.inputs),
            resolved,
        }));
    }
    let (ns, name) = (ib.namespace().unwrap_or_default(), ib.name_any());
    if let Err(ProviderError::Invalid(message)) = resolved.provider.check_owner(&ns, &name) {
        return Ok(Err(invalid(reasons::INVALID_NAME, message)));
    }
    match reader
        .check_regions(
            resolved.provider.as_ref(),
            &resolved.provider_key,
            &ib.spec.provider.regions,
        )
        .await
    {
        Ok(()) => {}
        Err(ProviderError::Invalid(message)) => {
            return Ok(Err(invalid(reasons::INVALID_REGION, message)));
        }
        Err(ProviderError::Unauthorized(message)) => {
            return Ok(Err(invalid(reasons::CREDENTIALS_INVALID, message)));
        }
        Err(ProviderError::Misconfigured(message)) => {
            return Ok(Err(invalid(reasons::PROVIDER_INVALID, message)));
        }
        // The cloud cannot be asked now: say so, and try again.
        Err(e @ ProviderError::Api { .. }) => {
            return Ok(Err(InputProblem::Missing {
                reason: reasons::PROVIDER_UNAVAILABLE,
                message: format!("checking the regions failed, retried: {e}"),
            }));
        }
        Err(other) => return Err(other.into()),
    }
    Ok(Ok(Inputs {
        spec_hash: spec_hash(&ib.spec, &resolved.inputs),
        resolved,
    }))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_variable_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|s| (k.clone(), s)))
        .collect();
    out.extend(
        secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out
}

/// How long a Secret or ConfigMap read is reused. Thousands of ImageBuilds
/// share a few credentials Secrets: without it a cold start GETs each once
/// per object and trips the apiserver's fairness limits. A change reaches
/// builds this much later; a missing object is never cached.
pub const READ_TTL: std::time::Duration = std::time::Duration::from_secs(10);

type Cached = (std::time::Instant, Arc<dyn std::any::Any + Send + Sync>);
/// How long a provider (its clients and connection pools) is kept without
/// use: longer than any resync, so that a steady ImageBuild keeps its own.
pub const PROVIDER_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long a passed region check is trusted: regions come and go rarely.
pub const REGIONS_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// A shared provider and when an ImageBuild last asked for it.
type LastUsed = (std::time::Instant, Arc<dyn ImageProvider>);

/// What the controller's reconciles share.
#[derive(Default)]
struct Shared {
    /// Reads by (kind, namespace, name).
    reads: std::sync::Mutex<BTreeMap<(&'static str, String, String), Cached>>,
    /// One provider (with its clients and their connection pools) per
    /// provider type, endpoint and credentials.
    providers: std::sync::Mutex<BTreeMap<String, LastUsed>>,
    /// When a provider last confirmed a region list, by provider key and
    /// regions. One lock per list, so that a cold start with thousands of
    /// ImageBuilds asks once while the others wait for the answer.
    regions:
        std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Option<std::time::Instant>>>>>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An object an ImageBuild refers to (Secret, ConfigMap, its parent).
trait Referenced:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Referenced for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Reads what ImageBuilds refer to: the client, and for the controller a
/// short-lived cache of Secrets and ConfigMaps.
#[derive(Clone)]
pub struct Reader {
    client: Client,
    cache: Option<Arc<Shared>>,
}

impl Reader {
    /// Reads straight from the apiserver (the CLI).
    pub fn new(client: Client) -> Reader {
        Reader {
            client,
            cache: None,
        }
    }

    /// Reuses Secret and ConfigMap reads for [`READ_TTL`], providers for as
    /// long as it lives, and region checks for [`REGIONS_TTL`] (the
    /// controller).
    pub fn cached(client: Client) -> Reader {
        Reader {
            client,
            cache: Some(Arc::default()),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn get_opt<K: Referenced>(
        &self,
        api: &Api<K>,
        ns: &str,
        name: &str,
    ) -> kube::Result<Option<K>> {
        let kind = match K::kind(&()).as_ref() {
            "Secret" => "Secret",
            "ConfigMap" => "ConfigMap",
            _ => return api.get_opt(name).await,
        };
        let Some(cache) = &self.cache else {
            return api.get_opt(name).await;
        };
        let key = (kind, ns.to_owned(), name.to_owned());
        let lock = || locked(&cache.reads);
        if let Some((at, value)) = lock().get(&key)
            && at.elapsed() < READ_TTL
            && let Some(found) = value.downcast_ref::<K>()
        {
            return Ok(Some(found.clone()));
        }
        let found = api.get_opt(name).await?;
        let mut entries = lock();
        entries.retain(|_, (at, _)| at.elapsed() < READ_TTL);
        if let Some(found) = &found {
            entries.insert(key, (std::time::Instant::now(), Arc::new(found.clone())));
        }
        Ok(found)
    }
}

impl Reader {
    /// The provider for `key`, made once per key when shared.
    fn provider(
        &self,
        key: &str,
        make: impl FnOnce() -> Arc<dyn ImageProvider>,
    ) -> Arc<dyn ImageProvider> {
        let Some(shared) = &self.cache else {
            return make();
        };
        let now = std::time::Instant::now();
        let mut providers = locked(&shared.providers);
        // A provider no ImageBuild asked for lately went with credentials
        // that were rotated (a new key) or an ImageBuild that is gone.
        providers.retain(|_, (used, _)| now.duration_since(*used) < PROVIDER_IDLE);
        let (used, provider) = providers
            .entry(key.to_owned())
            .or_insert_with(|| (now, make()));
        *used = now;
        provider.clone()
    }

    /// Checks regions at the provider, unless the same check passed lately.
    async fn check_regions(
        &self,
        provider: &dyn ImageProvider,
        key: &str,
        regions: &[String],
    ) -> Result<(), ProviderError> {
        let key = format!("{key}|{}", regions.join(","));
        let Some(shared) = &self.cache else {
            return provider.check_regions(regions).await;
        };
        let slot = locked(&shared.regions).entry(key).or_default().clone();
        let mut checked = slot.lock().await;
        if checked.is_some_and(|at| at.elapsed() < REGIONS_TTL) {
            return Ok(());
        }
        provider.check_regions(regions).await?;
        *checked = Some(std::time::Instant::now());
        Ok(())
    }
}

/// Reads an object the ImageBuild refers to in `field`. A 403 is something
/// the installer must fix, so it becomes a named problem rather than an error
/// retried in silence.
async fn read<K: Referenced>(
    reader: &Reader,
    api: &Api<K>,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Result<Option<K>, InputProblem>, Error> {
    match reader.get_opt(api, ns, name).await {
        Ok(found) => Ok(Ok(found)),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(Err(missing(
            reasons::ACCESS_DENIED,
            format!(
                "kiln may not read {kind} {ns}/{name} ({field}); grant kiln's ServiceAccount get on {plural} in namespace {ns} (Helm chart: add {ns} to rbac.buildNamespaces)",
                kind = K::kind(&()),
                plural = K::plural(&()),
            ),
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Unwraps the outer `Result` of [`read`], returning the problem from the caller.
macro_rules! read_or_return {
    ($read:expr) => {
        match $read.await? {
            Ok(found) => found,
            Err(problem) => return Ok(Err(problem)),
        }
    };
}

fn missing(reason: &'static str, message: String) -> InputProblem {
    InputProblem::Missing { reason, message }
}

fn invalid(reason: &'static str, message: String) -> InputProblem {
    InputProblem::Invalid { reason, message }
}

/// Reads template, variables, credentials and parent of an ImageBuild.
async fn resolve(
    reader: &Reader,
    ib: &ImageBuild,
) -> Result<Result<Resolved, InputProblem>, Error> {
    let ns = ib.namespace().ok_or(Error::Metadata("namespace"))?;
    let spec = &ib.spec;
    let secrets: Api<Secret> = Api::namespaced(reader.client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(reader.client.clone(), &ns);
    let mut inputs = ResolvedInputs::default();
    let mut variables = BTreeMap::new();
    let mut secret_env = Vec::new();

    // Template.
    if let Some(inline) = &spec.template.inline {
        inputs.template = inline.clone();
    } else if let Some(r) = &spec.template.config_map_ref {
        let cm = read_or_return!(read(
            reader,
            &config_maps,
            &ns,
            &r.name,
            "spec.template.configMapRef"
        ));
        let Some(cm) = cm else {
            return Ok(Err(missing(
                reasons::TEMPLATE_NOT_FOUND,
                format!(
                    "ConfigMap {ns}/{} (spec.template.configMapRef) not found; create it with the template under key {}",
                    r.name, r.key
                ),
            )));
        };
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(&r.key)) else {
            return Ok(Err(invalid(
                reasons::TEMPLATE_NOT_FOUND,
                format!(
                    "ConfigMap {ns}/{} has no key {} (spec.template.configMapRef.key); add it or fix the key",
                    r.name, r.key
                ),
            )));
        };
        inputs.template = text.clone();
        let digest = Sha256::digest(text.as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        inputs.template_revision = Some(format!("configmap/{}@sha256:{hex}", r.name));
    } else {
        let which = if spec.template.git.is_some() {
            "spec.template.git"
        } else {
            "spec.template.sourceRef"
        };
        return Ok(Err(InputProblem::Unsupported {
            message: format!(
                "{which} is not supported by this version of kiln yet; use spec.template.inline or spec.template.configMapRef"
            ),
        }));
    }

    // Variables from ConfigMaps and Secrets; later entries win.
    for (i, source) in spec.variables_from.iter().enumerate() {
        let field = format!("spec.variablesFrom[{i}]");
        match source.kind {
            VariablesFromKind::ConfigMap => {
                match read_or_return!(read(reader, &config_maps, &ns, &source.name, &field)) {
                    Some(cm) => {
                        for (k, v) in cm.data.unwrap_or_default() {
                            if is_variable_name(&k) {
                                inputs.referenced_variables.insert(k.clone(), v.clone());
                                variables.insert(k, v);
                            }
                        }
                    }
                    None if source.optional => {}
                    None => {
                        return Ok(Err(missing(
                            reasons::VARIABLES_NOT_FOUND,
                            format!(
                                "ConfigMap {ns}/{} (spec.variablesFrom[{i}]) not found; create it or mark it optional",
                                source.name
                            ),
                        )));
                    }
                }
            }
            VariablesFromKind::Secret => {
                match read_or_return!(read(reader, &secrets, &ns, &source.name, &field)) {
                    Some(secret) => {
                        for (k, v) in secret_strings(&secret) {
                            if is_variable_name(&k) && is_env_name(&k.replace('-', "_")) {
                                // Secret values reach Packer as PKR_VAR_* environment only.
                                inputs.referenced_variables.insert(k.clone(), v.clone());
                                secret_env.retain(|e: &SecretEnv| e.name != format!("PKR_VAR_{k}"));
                                secret_env.push(SecretEnv {
                                    name: format!("PKR_VAR_{k}"),
                                    secret: source.name.clone(),
                                    key: k,
                                    value: v,
                                });
                            }
                        }
                    }
                    None if source.optional => {}
                    None => {
                        return Ok(Err(missing(
                            reasons::VARIABLES_NOT_FOUND,
                            format!(
                                "Secret {ns}/{} (spec.variablesFrom[{i}]) not found; create it or mark it optional",
                                source.name
                            ),
                        )));
                    }
                }
            }
        }
    }
    variables.extend(spec.variables.iter().map(|(k, v)| (k.clone(), v.clone())));

    // Parent image: the parent's image in the region Packer builds in.
    if let Some(parent) = &spec.parent {
        let builds: Api<ImageBuild> = Api::namespaced(reader.client.clone(), &ns);
        let parent_build =
            read_or_return!(read(reader, &builds, &ns, &parent.name, "spec.parent.name"));
        let Some(p) = parent_build else {
            return Ok(Err(missing(
                reasons::PARENT_NOT_FOUND,
                format!(
                    "ImageBuild {ns}/{} (spec.parent.name) not found",
                    parent.name
                ),
            )));
        };
        let Some(latest) = p.status.as_ref().and_then(|s| s.latest_image.as_ref()) else {
            return Ok(Err(missing(
                reasons::PARENT_NOT_READY,
                format!(
                    "waiting for parent ImageBuild {ns}/{} to produce an image",
                    parent.name
                ),
            )));
        };
        let region = spec.provider.regions.first().cloned().unwrap_or_default();
        let Some(image) = latest.artifacts.iter().find(|a| a.region == region) else {
            return Ok(Err(invalid(
                reasons::PARENT_REGION_MISMATCH,
                format!(
                    "parent ImageBuild {ns}/{} has no image in region {region}; add {region} to the parent's spec.provider.regions",
                    parent.name
                ),
            )));
        };
        inputs
            .referenced_variables
            .insert(parent.variable.clone(), image.image_id.clone());
        variables.insert(parent.variable.clone(), image.image_id.clone());
    }

    let (provider, provider_key, mut credential_env) = match provider(reader, ib).await? {
        Ok(p) => p,
        Err(problem) => return Ok(Err(problem)),
    };
    secret_env.append(&mut credential_env);

    Ok(Ok(Resolved {
        inputs,
        variables,
        secret_env,
        provider,
        provider_key,
    }))
}

/// The provider of an ImageBuild (shared by every ImageBuild with the same
/// type, endpoint and credentials), its key, with the credentials from its Secret, and
/// those credentials as runner environment (every key whose name is a valid
/// environment variable).
pub async fn provider(
    reader: &Reader,
    ib: &ImageBuild,
) -> Result<Result<(Arc<dyn ImageProvider>, String, Vec<SecretEnv>), InputProblem>, Error> {
    let ns = ib.namespace().ok_or(Error::Metadata("namespace"))?;
    let spec = &ib.spec;
    let secrets: Api<Secret> = Api::namespaced(reader.client.clone(), &ns);
    let mut credentials = BTreeMap::new();
    let mut secret_env = Vec::new();
    if let Some(c) = &spec.provider.credentials {
        let name = &c.secret_ref.name;
        let secret = read_or_return!(read(
            reader,
            &secrets,
            &ns,
            name,
            "spec.provider.credentials.secretRef"
        ));
        let keys = factory::credential_keys(spec.provider.type_);
        let Some(secret) = secret else {
            return Ok(Err(missing(
                reasons::CREDENTIALS_NOT_FOUND,
                format!(
                    "Secret {ns}/{name} (spec.provider.credentials.secretRef) not found; create it{}",
                    keys.hint()
                ),
            )));
        };
        credentials = secret_strings(&secret);
        let lacking = keys.lacking(&credentials);
        if !lacking.is_empty() {
            return Ok(Err(invalid(
                reasons::CREDENTIALS_INVALID,
                format!(
                    "Secret {ns}/{name} (spec.provider.credentials.secretRef) lacks {}; add {} to the Secret",
                    lacking.join(", "),
                    if lacking.len() == 1 { "it" } else { "them" }
                ),
            )));
        }
        for (k, v) in &credentials {
            if is_env_name(k) {
                secret_env.push(SecretEnv {
                    name: k.clone(),
                    secret: name.clone(),
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
    }

    // Type, endpoint, the cloud's settings (project, gallery) and a digest
    // of the credentials: never the secrets.
    let digest = Sha256::digest(serde_json::to_vec(&credentials).unwrap_or_default());
    let settings = serde_json::json!([spec.provider.gcp, spec.provider.azure]);
    let key = format!(
        "{}|{}|{settings}|{}",
        spec.provider.type_.as_str(),
        spec.provider.endpoint.as_deref().unwrap_or_default(),
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let make = || factory::build(&spec.provider, &credentials);
    let provider = reader.provider(&key, make);
    Ok(Ok((provider, key, secret_env)))
}
