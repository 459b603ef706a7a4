//! OpenStack: Glance images, owned through properties and a tag.
//!
//! Keystone v3 gives a token and the catalogue, which names one Glance per
//! region. kiln records its owner on each image it claims as Glance
//! properties (`kiln_namespace`, ...) plus the tag `kiln`, lists its images
//! by them, hides superseded ones (`os_hidden`) and deletes them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Capabilities, Claimed, ImageProvider, Owner, Pacing, ProviderError,
    factory::{CredentialKeys, Credentials},
    http,
};
use crate::api::RegionArtifact;
use kiln_core::retention::ImageInfo;

/// What an OpenStack credentials Secret holds (the `OS_*` names of
/// openrc files and clouds.yaml exports).
pub const CREDENTIAL_KEYS: CredentialKeys = CredentialKeys {
    required: &[
        &["OS_AUTH_URL"],
        &[
            "OS_APPLICATION_CREDENTIAL_ID",
            "OS_APPLICATION_CREDENTIAL_NAME",
            "OS_USERNAME",
            "OS_USER_ID",
        ],
        &["OS_APPLICATION_CREDENTIAL_SECRET", "OS_PASSWORD"],
    ],
    optional: &[
        "OS_PROJECT_ID",
        "OS_PROJECT_NAME",
        "OS_TENANT_ID",
        "OS_TENANT_NAME",
        "OS_USER_DOMAIN_NAME",
        "OS_USER_DOMAIN_ID",
        "OS_PROJECT_DOMAIN_NAME",
        "OS_PROJECT_DOMAIN_ID",
        "OS_DOMAIN_NAME",
        "OS_INTERFACE",
        "OS_ENDPOINT_TYPE",
        "OS_CACERT",
        "OS_INSECURE",
    ],
};

/// Where the credentials come from, for messages.
const SECRET: &str = "the Secret named by spec.provider.credentials.secretRef";

/// Glance properties and tags kiln puts on every image it claims, and the
/// ones users set to protect an image. Retention only ever touches images
/// that carry the tag and the owner properties.
pub mod properties {
    use std::collections::BTreeMap;

    use kiln_core::retention::ImageOwner;

    use crate::provider::Owner;

    /// Always `kiln`.
    pub const MANAGED_BY: &str = "kiln_managed_by";
    /// Namespace of the owning ImageBuild.
    pub const NAMESPACE: &str = "kiln_namespace";
    /// Name of the owning ImageBuild.
    pub const IMAGE_BUILD: &str = "kiln_image_build";
    /// The build that made the image.
    pub const BUILD_ID: &str = "kiln_build_id";
    /// The spec hash it was built from.
    pub const SPEC_HASH: &str = "kiln_spec_hash";
    /// Set (to anything) by a user to protect an image from retention.
    pub const KEEP: &str = "kiln_keep";
    /// The Glance tag on every image kiln claimed.
    pub const TAG: &str = "kiln";
    /// The Glance tag a user sets to protect an image from retention.
    pub const KEEP_TAG: &str = "kiln-keep";

    /// The owner as Glance properties.
    pub fn encode(owner: &Owner) -> Vec<(&'static str, String)> {
        vec![
            (MANAGED_BY, "kiln".to_owned()),
            (NAMESPACE, owner.namespace.clone()),
            (IMAGE_BUILD, owner.image_build.clone()),
            (BUILD_ID, owner.build_id.clone()),
            (SPEC_HASH, owner.spec_hash.clone()),
        ]
    }

    /// The owner kiln recorded on an image, if it claimed it. The tag is
    /// required as well as the properties: Nova copies an image's custom
    /// properties (not its tags) into every snapshot of a server booted from
    /// it, and so does a child build's Packer run before kiln claims its
    /// image, so properties alone do not make an image kiln's.
    pub fn decode(properties: &BTreeMap<String, String>, tags: &[String]) -> Option<ImageOwner> {
        if !tags.iter().any(|t| t == TAG) {
            return None;
        }
        if properties.get(MANAGED_BY).is_some_and(|m| m != "kiln") {
            return None;
        }
        Some(ImageOwner {
            namespace: properties.get(NAMESPACE)?.clone(),
            image_build: properties.get(IMAGE_BUILD)?.clone(),
            build_id: properties.get(BUILD_ID).cloned().unwrap_or_default(),
        })
    }

    /// Whether a person protected the image: the property `kiln_keep` (any
    /// value), the tag `kiln-keep`, or Glance's own `protected` (which makes
    /// Glance refuse the deletion anyway).
    pub fn keep(properties: &BTreeMap<String, String>, tags: &[String], protected: bool) -> bool {
        protected || properties.contains_key(KEEP) || tags.iter().any(|t| t == KEEP_TAG)
    }
}

/// A domain, by ID or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Domain {
    Id(String),
    Name(String),
}

impl Domain {
    fn body(&self) -> Value {
        match self {
            Domain::Id(id) => json!({ "id": id }),
            Domain::Name(name) => json!({ "name": name }),
        }
    }
}

/// A user, by ID or by name in a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum User {
    Id(String),
    Name(String, Domain),
}

impl User {
    fn body(&self) -> Value {
        match self {
            User::Id(id) => json!({ "id": id }),
            User::Name(name, domain) => json!({ "name": name, "domain": domain.body() }),
        }
    }
}

/// How kiln authenticates. The secret and password are never shown: this
/// type has no `Debug`.
#[derive(Clone, PartialEq, Eq)]
enum Auth {
    /// An application credential by ID (scoped to its own project).
    AppCredentialId { id: String, secret: String },
    /// An application credential by name, of a user.
    AppCredentialName {
        name: String,
        user: User,
        secret: String,
    },
    /// A user's password, scoped to a project.
    Password {
        user: User,
        password: String,
        project: Project,
    },
}

/// A project, by ID or by name in a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Project {
    Id(String),
    Name(String, Domain),
}

impl Auth {
    /// The body of `POST /v3/auth/tokens`.
    fn body(&self) -> Value {
        match self {
            Auth::AppCredentialId { id, secret } => json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": id, "secret": secret},
            }}}),
            Auth::AppCredentialName { name, user, secret } => json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"name": name, "user": user.body(), "secret": secret},
            }}}),
            Auth::Password {
                user,
                password,
                project,
            } => {
                let mut user = user.body();
                user["password"] = json!(password);
                let project = match project {
                    Project::Id(id) => json!({ "id": id }),
                    Project::Name(name, domain) => {
                        json!({ "name": name, "domain": domain.body() })
                    }
                };
                json!({"auth": {
                    "identity": {"methods": ["password"], "password": {"user": user}},
                    "scope": {"project": project},
                }})
            }
        }
    }

    /// Which method and which keys of the Secret, for messages.
    fn describe(&self) -> String {
        match self {
            Auth::AppCredentialId { id, .. } => format!(
                "application credential {id} (OS_APPLICATION_CREDENTIAL_ID and OS_APPLICATION_CREDENTIAL_SECRET)"
            ),
            Auth::AppCredentialName { name, user, .. } => format!(
                "application credential '{name}' of {} (OS_APPLICATION_CREDENTIAL_NAME, {} and OS_APPLICATION_CREDENTIAL_SECRET)",
                user_words(user),
                user_keys(user)
            ),
            Auth::Password { user, .. } => format!(
                "password of {} ({} and OS_PASSWORD)",
                user_words(user),
                user_keys(user)
            ),
        }
    }
}

fn user_words(user: &User) -> String {
    match user {
        User::Id(id) => format!("user {id}"),
        User::Name(name, Domain::Name(d)) => format!("user '{name}' in domain '{d}'"),
        User::Name(name, Domain::Id(d)) => format!("user '{name}' in domain {d}"),
    }
}

fn user_keys(user: &User) -> &'static str {
    match user {
        User::Id(_) => "OS_USER_ID",
        User::Name(..) => "OS_USERNAME, OS_USER_DOMAIN_NAME",
    }
}

/// What the credentials say, checked once.
#[derive(Clone)]
struct Config {
    /// Keystone's root, without `/v3`.
    keystone: String,
    /// The setting it came from, for messages.
    keystone_field: &'static str,
    auth: Auth,
    /// `public`, `internal` or `admin`.
    interface: String,
}

/// A credential value: absent when unset or empty (openrc files export
/// empty variables); a trailing newline (a Secret made from a file) is not
/// part of it.
fn value<'a>(credentials: &'a Credentials, key: &str) -> Option<&'a str> {
    credentials
        .get(key)
        .map(|v| v.trim_end_matches(['\r', '\n']))
        .filter(|v| !v.trim().is_empty())
}

fn first<'a>(credentials: &'a Credentials, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| value(credentials, k))
}

/// Keystone's root from an auth URL given with or without its version.
fn keystone_root(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    for version in ["/v3", "/v2.0"] {
        if let Some(root) = url.strip_suffix(version) {
            return root.trim_end_matches('/').to_owned();
        }
    }
    url.to_owned()
}

/// `public`, `internal` or `admin` from either spelling (`publicURL`).
fn interface(credentials: &Credentials) -> String {
    let given = first(credentials, &["OS_INTERFACE", "OS_ENDPOINT_TYPE"]).unwrap_or("public");
    let lower = given.trim().to_ascii_lowercase();
    lower.strip_suffix("url").unwrap_or(&lower).to_owned()
}

fn domain(credentials: &Credentials, id: &str, name: &str) -> Domain {
    // OS_DOMAIN_NAME, which some openrc files set alone, stands in for both
    // domains before Keystone's `Default`.
    match (
        value(credentials, id),
        first(credentials, &[name, "OS_DOMAIN_NAME"]),
    ) {
        (Some(id), _) => Domain::Id(id.to_owned()),
        (None, Some(name)) => Domain::Name(name.to_owned()),
        (None, None) => Domain::Name("Default".to_owned()),
    }
}

fn user(credentials: &Credentials) -> Option<User> {
    if let Some(id) = value(credentials, "OS_USER_ID") {
        return Some(User::Id(id.to_owned()));
    }
    value(credentials, "OS_USERNAME").map(|name| {
        User::Name(
            name.to_owned(),
            domain(credentials, "OS_USER_DOMAIN_ID", "OS_USER_DOMAIN_NAME"),
        )
    })
}

fn config(endpoint: Option<&str>, credentials: &Credentials) -> Result<Config, String> {
    let (url, keystone_field) = match endpoint.filter(|e| !e.trim().is_empty()) {
        Some(e) => (e, "spec.provider.endpoint"),
        None => (
            value(credentials, "OS_AUTH_URL").ok_or_else(|| {
                format!("{SECRET} has no OS_AUTH_URL (Keystone's URL); add it, or set spec.provider.endpoint")
            })?,
            "OS_AUTH_URL",
        ),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "{keystone_field}: '{url}' is not an http(s) URL; set it to Keystone's URL, such as https://keystone.example.com:5000/v3"
        ));
    }
    let app_secret = value(credentials, "OS_APPLICATION_CREDENTIAL_SECRET");
    let auth = match (
        app_secret,
        value(credentials, "OS_APPLICATION_CREDENTIAL_ID"),
        value(credentials, "OS_APPLICATION_CREDENTIAL_NAME"),
    ) {
        (Some(secret), Some(id), _) => Auth::AppCredentialId {
            id: id.to_owned(),
            secret: secret.to_owned(),
        },
        (Some(secret), None, Some(name)) => Auth::AppCredentialName {
            name: name.to_owned(),
            user: user(credentials).ok_or_else(|| {
                format!("{SECRET}: OS_APPLICATION_CREDENTIAL_NAME needs OS_USERNAME (and OS_USER_DOMAIN_NAME) or OS_USER_ID; or give OS_APPLICATION_CREDENTIAL_ID instead")
            })?,
            secret: secret.to_owned(),
        },
        _ => {
            let Some(password) = value(credentials, "OS_PASSWORD") else {
                return Err(match app_secret {
                    Some(_) => format!("{SECRET} has OS_APPLICATION_CREDENTIAL_SECRET but no OS_APPLICATION_CREDENTIAL_ID or OS_APPLICATION_CREDENTIAL_NAME; add one"),
                    None => format!("{SECRET} has neither OS_APPLICATION_CREDENTIAL_SECRET nor OS_PASSWORD; add an application credential (OS_APPLICATION_CREDENTIAL_ID and OS_APPLICATION_CREDENTIAL_SECRET) or a password"),
                });
            };
            let user = user(credentials).ok_or_else(|| {
                format!("{SECRET}: OS_PASSWORD needs OS_USERNAME or OS_USER_ID")
            })?;
            let project = if let Some(id) = first(credentials, &["OS_PROJECT_ID", "OS_TENANT_ID"])
            {
                Project::Id(id.to_owned())
            } else if let Some(name) = first(credentials, &["OS_PROJECT_NAME", "OS_TENANT_NAME"])
            {
                Project::Name(
                    name.to_owned(),
                    domain(credentials, "OS_PROJECT_DOMAIN_ID", "OS_PROJECT_DOMAIN_NAME"),
                )
            } else {
                // Glance images belong to a project: an unscoped token has
                // neither a project nor a catalogue.
                return Err(format!(
                    "{SECRET}: password authentication needs a project; add OS_PROJECT_ID or OS_PROJECT_NAME (with OS_PROJECT_DOMAIN_NAME)"
                ));
            };
            Auth::Password {
                user,
                password: password.to_owned(),
                project,
            }
        }
    };
    Ok(Config {
        keystone: keystone_root(url),
        keystone_field,
        auth,
        interface: interface(credentials),
    })
}

/// The HTTP client, with the cloud's CA (`OS_CACERT`: a PEM bundle, or the
/// path of one) or without verification (`OS_INSECURE`).
fn client(credentials: &Credentials) -> Result<reqwest::Client, String> {
    let cacert = value(credentials, "OS_CACERT");
    let insecure = value(credentials, "OS_INSECURE")
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    if cacert.is_none() && !insecure {
        return Ok(http::client());
    }
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(http::CALL_TIMEOUT)
        .tls_danger_accept_invalid_certs(insecure);
    if let Some(cacert) = cacert {
        let pem = if cacert.trim_start().starts_with("-----BEGIN") {
            cacert.as_bytes().to_vec()
        } else {
            std::fs::read(cacert.trim()).map_err(|e| {
                format!("{SECRET}: OS_CACERT is neither a PEM certificate nor a readable file ({e}); put the CA's PEM text in it")
            })?
        };
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{SECRET}: OS_CACERT holds no usable PEM certificate ({e})"))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up TLS with OS_CACERT/OS_INSECURE: {e}"))
}

/// A Keystone token with what came with it.
struct Session {
    token: String,
    project_id: String,
    /// When to authenticate again (some minutes before it expires).
    renew_at: Timestamp,
    /// Glance's root (without `/v2`) per region, for the interface asked.
    glance: BTreeMap<String, String>,
    /// The interfaces the catalogue has image endpoints for, for messages.
    interfaces: BTreeSet<String>,
}

impl Session {
    /// Glance's root in `region`, or why there is none.
    fn glance(&self, region: &str, interface: &str) -> Result<&str, ProviderError> {
        self.glance
            .get(region)
            .map(String::as_str)
            .ok_or_else(|| ProviderError::Invalid(self.not_a_region(&[region], interface)))
    }

    fn not_a_region(&self, unknown: &[&str], interface: &str) -> String {
        let names = unknown
            .iter()
            .map(|r| format!("'{r}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let verb = if unknown.len() == 1 {
            "is not a region"
        } else {
            "are not regions"
        };
        if self.glance.is_empty() {
            let other: Vec<&str> = self.interfaces.iter().map(String::as_str).collect();
            return if other.is_empty() {
                format!(
                    "spec.provider.regions: {names} {verb} of this cloud's image service; the catalogue has no image service (Glance) at all"
                )
            } else {
                format!(
                    "spec.provider.regions: {names} {verb} of this cloud's image service; the catalogue has no {interface} image endpoint (only {}); set OS_INTERFACE in {SECRET}",
                    other.join(", ")
                )
            };
        }
        format!(
            "spec.provider.regions: {names} {verb} of this cloud's image service; the catalogue has: {}",
            self.glance.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    }
}

/// An HTTP answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    /// Glance's or Keystone's words for an error, short and plain.
    fn error_text(&self) -> String {
        if let Ok(v) = serde_json::from_str::<Value>(&self.body)
            && let Some(m) = v.pointer("/error/message").and_then(Value::as_str)
        {
            return format!("HTTP {}: {m}", self.status.as_u16());
        }
        // Glance answers errors as a small HTML-ish page: "404 Not Found\n\n<why>".
        let mut text = String::new();
        let mut in_tag = false;
        for c in self.body.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some((cut, _)) = text.char_indices().nth(300) {
            text.truncate(cut);
            text.push('…');
        }
        let code = self.status.as_u16().to_string();
        if text.starts_with(&code) {
            format!("HTTP {text}")
        } else if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {text}", self.status)
        }
    }
}

/// Keystone's answer to `POST /v3/auth/tokens`, what kiln reads of it.
#[derive(Deserialize)]
struct TokenBody {
    token: Token,
}

#[derive(Deserialize)]
struct Token {
    expires_at: Timestamp,
    project: Option<TokenProject>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct TokenProject {
    id: String,
}

#[derive(Deserialize)]
struct CatalogService {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Deserialize)]
struct CatalogEndpoint {
    interface: String,
    region_id: Option<String>,
    region: Option<String>,
    url: String,
}

/// A Glance image, what kiln reads of it; custom properties are top-level
/// fields of the image, so everything else lands in `extra`.
#[derive(Deserialize)]
struct Image {
    id: String,
    name: Option<String>,
    status: String,
    owner: Option<String>,
    created_at: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    protected: bool,
    #[serde(default)]
    os_hidden: bool,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// Glance's own image fields, which are not custom properties.
const CORE_FIELDS: &[&str] = &[
    "checksum",
    "container_format",
    "created_at",
    "direct_url",
    "disk_format",
    "file",
    "id",
    "locations",
    "min_disk",
    "min_ram",
    "name",
    "os_hash_algo",
    "os_hash_value",
    "os_hidden",
    "owner",
    "protected",
    "schema",
    "self",
    "size",
    "status",
    "stores",
    "tags",
    "updated_at",
    "virtual_size",
    "visibility",
];

impl Image {
    /// Custom properties with string values.
    fn properties(&self) -> BTreeMap<String, String> {
        self.extra
            .iter()
            .filter(|(k, _)| !CORE_FIELDS.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect()
    }
}

/// One page of `GET /v2/images`.
#[derive(Deserialize)]
struct ImagePage {
    images: Vec<Image>,
    next: Option<String>,
}

/// The listing as ImageInfo: properties as `key=value`, Glance tags as keys
/// with an empty value (a property of the same name wins).
fn image_info(region: &str, image: &Image) -> ImageInfo {
    let properties = image.properties();
    let mut tags = properties.clone();
    for t in &image.tags {
        tags.entry(t.clone()).or_default();
    }
    // An image whose age cannot be read must not look old (old images are
    // the ones retention removes); Glance always sends RFC 3339.
    let created_at = image
        .created_at
        .as_deref()
        .and_then(|c| c.parse::<Timestamp>().ok())
        .unwrap_or_else(Timestamp::now);
    ImageInfo {
        region: region.to_owned(),
        image_id: image.id.clone(),
        name: image.name.clone(),
        created_at,
        owner: properties::decode(&properties, &image.tags),
        keep: properties::keep(&properties, &image.tags, image.protected),
        tags,
        deprecated: image.os_hidden,
        obsolete: false,
        end_of_life: None,
        delete_blocked: false,
        dependents: vec![],
    }
}

/// A path segment or query value, percent-encoded.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Attempts per call: 5xx, 429 and connection errors are retried.
const ATTEMPTS: u32 = 5;
/// The first wait between attempts; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Images per page of `GET /v2/images` (Glance's own default is 25, its
/// maximum `api_limit_max` 1000).
pub const PAGE_SIZE: usize = 100;

/// Glance in every region of one OpenStack cloud, with one set of
/// credentials.
pub struct OpenStack {
    config: Result<Config, String>,
    http: Result<reqwest::Client, String>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    calls: AtomicU64,
    page_size: usize,
}

impl std::fmt::Debug for OpenStack {
    // By hand: the password, the secret and the token must never show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("OpenStack");
        match &self.config {
            Ok(c) => d
                .field("keystone", &c.keystone)
                .field("auth", &c.auth.describe())
                .field("interface", &c.interface),
            Err(e) => d.field("invalid", e),
        };
        d.field("api_calls", &self.api_calls()).finish()
    }
}

/// The provider for a Secret's `OS_*` keys; `endpoint` (spec.provider.endpoint),
/// when set, is Keystone's URL instead of `OS_AUTH_URL`.
pub fn from_credentials(endpoint: Option<String>, credentials: &Credentials) -> OpenStack {
    OpenStack::from_credentials(endpoint, credentials)
}

impl OpenStack {
    /// See [`from_credentials`]. What is wrong with the credentials is
    /// reported by every call, as [`ProviderError::Misconfigured`].
    pub fn from_credentials(endpoint: Option<String>, credentials: &Credentials) -> OpenStack {
        OpenStack {
            config: config(endpoint.as_deref(), credentials),
            http: client(credentials),
            session: tokio::sync::Mutex::new(None),
            calls: AtomicU64::new(0),
            page_size: PAGE_SIZE,
        }
    }

    /// Lists `n` images per page instead of [`PAGE_SIZE`] (for tests).
    pub fn with_page_size(mut self, n: usize) -> OpenStack {
        self.page_size = n.max(1);
        self
    }

    /// HTTP requests made through this value, Keystone's included (for
    /// benchmarks).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn config(&self) -> Result<&Config, ProviderError> {
        self.config
            .as_ref()
            .map_err(|e| ProviderError::Misconfigured(e.clone()))
    }

    fn http(&self) -> Result<&reqwest::Client, ProviderError> {
        self.http
            .as_ref()
            .map_err(|e| ProviderError::Misconfigured(e.clone()))
    }

    /// Sends a request, again on 5xx, 429 (after its `Retry-After`) and
    /// transport errors, up to [`ATTEMPTS`] times; the last answer is
    /// returned whatever its status.
    async fn send(
        &self,
        region: &str,
        operation: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer, ProviderError> {
        let mut wait = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let outcome = match request().send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    response.text().await.map(|body| Answer {
                        status,
                        headers,
                        body,
                    })
                }
                Err(e) => Err(e),
            };
            let retry = match &outcome {
                // 501: this server never will.
                Ok(a) => {
                    (a.status.is_server_error() && a.status != StatusCode::NOT_IMPLEMENTED)
                        || a.status == StatusCode::TOO_MANY_REQUESTS
                }
                Err(_) => true,
            };
            if !retry || attempt >= ATTEMPTS {
                return outcome.map_err(|e| ProviderError::Api {
                    operation,
                    region: region.to_owned(),
                    message: http::describe(&e),
                });
            }
            let pause = match &outcome {
                Ok(a) => http::retry_after(&a.headers).unwrap_or(wait),
                Err(_) => wait,
            };
            tracing::debug!(operation, region, attempt, ?pause, "OpenStack call retried");
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(Duration::from_secs(8));
            attempt += 1;
        }
    }

    /// A token that is good for a while yet, authenticating when needed.
    async fn session(&self, region: &str) -> Result<Arc<Session>, ProviderError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref()
            && Timestamp::now() < s.renew_at
        {
            return Ok(s.clone());
        }
        let s = Arc::new(self.authenticate(region).await?);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Drops a token Glance refused, unless another call replaced it already.
    async fn forget(&self, stale: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *slot = None;
        }
    }

    async fn authenticate(&self, region: &str) -> Result<Session, ProviderError> {
        const OPERATION: &str = "POST /v3/auth/tokens";
        let config = self.config()?;
        let http = self.http()?;
        let url = format!("{}/v3/auth/tokens", config.keystone);
        let body = config.auth.body();
        let field = config.keystone_field;
        let answer = self
            .send(region, OPERATION, || http.post(&url).json(&body))
            .await
            .map_err(|e| match e {
                ProviderError::Api {
                    operation,
                    region,
                    message,
                } => ProviderError::Api {
                    operation,
                    region,
                    message: format!("Keystone at {}/v3 ({field}): {message}", config.keystone),
                },
                other => other,
            })?;
        let not_keystone = |what: String| {
            ProviderError::Misconfigured(format!(
                "{field}: {}/v3 is not Keystone's v3 API (POST {url} {what}); set {field} to the cloud's identity endpoint, such as https://keystone.example.com:5000/v3",
                config.keystone
            ))
        };
        match answer.status {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(ProviderError::Unauthorized(format!(
                    "Keystone at {}/v3 refused the credentials in {SECRET}: the {} ({}); fix the Secret",
                    config.keystone,
                    config.auth.describe(),
                    answer.error_text()
                )));
            }
            StatusCode::BAD_REQUEST => {
                return Err(ProviderError::Unauthorized(format!(
                    "Keystone at {}/v3 rejected the authentication request made from {SECRET} with the {} ({}); fix the Secret",
                    config.keystone,
                    config.auth.describe(),
                    answer.error_text()
                )));
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                return Err(ProviderError::Api {
                    operation: OPERATION,
                    region: region.to_owned(),
                    message: format!(
                        "Keystone at {}/v3 ({field}): {}",
                        config.keystone,
                        answer.error_text()
                    ),
                });
            }
            s => return Err(not_keystone(format!("answered HTTP {s}"))),
        }
        let token = answer
            .headers
            .get("x-subject-token")
            .and_then(|t| t.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| not_keystone("answered without an X-Subject-Token".to_owned()))?;
        let body: TokenBody = serde_json::from_str(&answer.body)
            .map_err(|e| not_keystone(format!("answered something that is not a token: {e}")))?;
        let Some(project) = body.token.project else {
            return Err(ProviderError::Misconfigured(format!(
                "Keystone gave the {} a token without a project, and Glance images belong to a project; add OS_PROJECT_ID or OS_PROJECT_NAME to {SECRET}",
                config.auth.describe()
            )));
        };
        let mut glance = BTreeMap::new();
        let mut interfaces = BTreeSet::new();
        for endpoint in body
            .token
            .catalog
            .iter()
            .filter(|s| s.kind == "image")
            .flat_map(|s| &s.endpoints)
        {
            interfaces.insert(endpoint.interface.clone());
            if endpoint.interface != config.interface {
                continue;
            }
            let Some(region) = endpoint.region_id.as_ref().or(endpoint.region.as_ref()) else {
                continue;
            };
            let url = endpoint.url.trim_end_matches('/');
            let root = url.strip_suffix("/v2").unwrap_or(url);
            glance.insert(region.clone(), root.to_owned());
        }
        // Renew 5 minutes before expiry, or halfway for shorter tokens.
        let now = Timestamp::now();
        let left = body.token.expires_at.duration_since(now);
        let margin = SignedDuration::from_mins(5)
            .min(left / 2)
            .max(SignedDuration::ZERO);
        Ok(Session {
            token,
            project_id: project.id,
            renew_at: body.token.expires_at.checked_sub(margin).unwrap_or(now),
            glance,
            interfaces,
        })
    }

    /// A Glance call in `region` (`path` from Glance's root, with its query);
    /// on a 401 it authenticates again, once.
    async fn glance(
        &self,
        region: &str,
        operation: &'static str,
        method: Method,
        path: &str,
        patch: Option<&Value>,
    ) -> Result<(Answer, Arc<Session>), ProviderError> {
        let http = self.http()?;
        let interface = self.config()?.interface.clone();
        let mut renewed = false;
        loop {
            let session = self.session(region).await?;
            let url = format!("{}{path}", session.glance(region, &interface)?);
            let answer = self
                .send(region, operation, || {
                    let mut request = http
                        .request(method.clone(), &url)
                        .header("X-Auth-Token", &session.token);
                    if let Some(patch) = patch {
                        request = request
                            .header(
                                reqwest::header::CONTENT_TYPE,
                                "application/openstack-images-v2.1-json-patch",
                            )
                            .body(patch.to_string());
                    }
                    request
                })
                .await?;
            if answer.status == StatusCode::UNAUTHORIZED && !renewed {
                // Revoked or expired early: one new token, then give up.
                self.forget(&session).await;
                renewed = true;
                continue;
            }
            return Ok((answer, session));
        }
    }

    /// An image in one region; `None` when Glance there does not have it.
    async fn get_image(&self, region: &str, id: &str) -> Result<Option<Image>, ProviderError> {
        const OPERATION: &str = "GET /v2/images/{id}";
        let path = format!("/v2/images/{}", encode(id));
        let (answer, _) = self
            .glance(region, OPERATION, Method::GET, &path, None)
            .await?;
        match answer.status {
            StatusCode::OK => serde_json::from_str(&answer.body)
                .map(Some)
                .map_err(|e| unreadable(OPERATION, region, &e)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(failed(OPERATION, region, &answer)),
        }
    }

    /// Where an artifact's image is: the region Packer's artifact names
    /// first, then every other region of the catalogue. Packer's openstack
    /// builder reports only an ID, so kiln placed it in the ImageBuild's
    /// first region; a template with one source per region made the other
    /// images elsewhere.
    async fn locate(&self, artifact: &RegionArtifact) -> Result<(String, Image), ProviderError> {
        let session = self.session(&artifact.region).await?;
        let mut regions = vec![artifact.region.clone()];
        regions.extend(
            session
                .glance
                .keys()
                .filter(|r| **r != artifact.region)
                .cloned(),
        );
        for region in regions {
            if !session.glance.contains_key(&region) {
                continue;
            }
            if let Some(image) = self.get_image(&region, &artifact.image_id).await? {
                return Ok((region, image));
            }
        }
        Err(ProviderError::ImageMissing {
            region: artifact.region.clone(),
            image_id: artifact.image_id.clone(),
        })
    }

    /// One pass of kiln's images of one ImageBuild in one region: visible
    /// ones, or (`hidden`) the ones `os_hidden` keeps out of the default
    /// listing.
    async fn list_pass(
        &self,
        region: &str,
        namespace: &str,
        image_build: &str,
        hidden: bool,
        out: &mut Vec<ImageInfo>,
    ) -> Result<(), ProviderError> {
        const OPERATION: &str = "GET /v2/images";
        let session = self.session(region).await?;
        let mut path = format!(
            "/v2/images?tag={}&{}={}&{}={}&visibility=all&owner={}&sort_key=created_at&sort_dir=desc&limit={}",
            properties::TAG,
            properties::NAMESPACE,
            encode(namespace),
            properties::IMAGE_BUILD,
            encode(image_build),
            encode(&session.project_id),
            self.page_size
        );
        if hidden {
            path.push_str("&os_hidden=true");
        }
        loop {
            let (answer, session) = self
                .glance(region, OPERATION, Method::GET, &path, None)
                .await?;
            if answer.status != StatusCode::OK {
                return Err(failed(OPERATION, region, &answer));
            }
            let page: ImagePage = serde_json::from_str(&answer.body)
                .map_err(|e| unreadable(OPERATION, region, &e))?;
            out.extend(
                page.images
                    .iter()
                    // Glance filtered already; checked again, as retention
                    // deletes what this returns.
                    .filter(|i| i.owner.as_deref() == Some(session.project_id.as_str()))
                    .map(|i| image_info(region, i))
                    .filter(|i| {
                        i.owner.as_ref().is_some_and(|o| {
                            o.namespace == namespace && o.image_build == image_build
                        })
                    }),
            );
            // `next` is relative to Glance's root (it carries the query and
            // the marker); the last page has none, or no images.
            match page.next {
                Some(next) if !page.images.is_empty() => {
                    let interface = self.config()?.interface.clone();
                    let root = session.glance(region, &interface)?;
                    path = match next.strip_prefix(root) {
                        Some(rest) => rest.to_owned(),
                        None if next.starts_with('/') => next,
                        None => format!("/{next}"),
                    };
                }
                _ => return Ok(()),
            }
        }
    }
}

fn failed(operation: &'static str, region: &str, answer: &Answer) -> ProviderError {
    ProviderError::Api {
        operation,
        region: region.to_owned(),
        message: answer.error_text(),
    }
}

fn unreadable(operation: &'static str, region: &str, e: &serde_json::Error) -> ProviderError {
    ProviderError::Api {
        operation,
        region: region.to_owned(),
        message: format!("unreadable answer from Glance: {e}"),
    }
}

impl ImageProvider for OpenStack {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cloud: "OpenStack",
            ownership: true,
            deprecation: true,
            obsolescence: false,
            // Glance documents no request limits (an operator may put a rate
            // limiter in front; its 429s are retried after Retry-After), so
            // calls are not paced.
            pacing: Pacing::UNLIMITED,
        }
    }

    fn check_regions<'a>(
        &'a self,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            // Keystone is global; a region only names where the check was for.
            let first = regions.first().map(String::as_str).unwrap_or("global");
            let session = self.session(first).await?;
            let unknown: Vec<&str> = regions
                .iter()
                .filter(|r| !session.glance.contains_key(*r))
                .map(String::as_str)
                .collect();
            if unknown.is_empty() {
                return Ok(());
            }
            let interface = self.config()?.interface.as_str();
            Err(ProviderError::Invalid(
                session.not_a_region(&unknown, interface),
            ))
        })
    }

    fn claim<'a>(
        &'a self,
        artifacts: &'a [RegionArtifact],
        owner: &'a Owner,
    ) -> BoxFuture<'a, Result<Claimed, ProviderError>> {
        Box::pin(async move {
            // `add` sets a property whether or not the image has it (Glance
            // 33 checked): a child build's image arrives with its parent's
            // kiln_* properties, copied by Nova.
            let patch = Value::Array(
                properties::encode(owner)
                    .into_iter()
                    .map(|(k, v)| json!({"op": "add", "path": format!("/{k}"), "value": v}))
                    .collect(),
            );
            let mut claimed = Vec::with_capacity(artifacts.len());
            for artifact in artifacts {
                let (region, image) = self.locate(artifact).await?;
                let not = |state: &str| (region.clone(), image.id.clone(), state.to_owned());
                match image.status.as_str() {
                    "active" => {}
                    "queued" | "saving" | "uploading" | "importing" => {
                        let (region, image_id, state) = not(&image.status);
                        return Err(ProviderError::ImageNotReady {
                            region,
                            image_id,
                            state,
                        });
                    }
                    // killed, deleted, pending_delete, deactivated, and
                    // whatever a later Glance adds: not usable.
                    other => {
                        let (region, image_id, state) = not(other);
                        return Err(ProviderError::ImageFailed {
                            region,
                            image_id,
                            state,
                        });
                    }
                }
                let path = format!("/v2/images/{}", encode(&image.id));
                let (answer, session) = self
                    .glance(
                        &region,
                        "PATCH /v2/images/{id}",
                        Method::PATCH,
                        &path,
                        Some(&patch),
                    )
                    .await?;
                self.claim_answer("PATCH /v2/images/{id}", &region, &image, &session, &answer)?;
                let (answer, session) = self
                    .glance(
                        &region,
                        "PUT /v2/images/{id}/tags/kiln",
                        Method::PUT,
                        &format!("{path}/tags/{}", properties::TAG),
                        None,
                    )
                    .await?;
                self.claim_answer(
                    "PUT /v2/images/{id}/tags/kiln",
                    &region,
                    &image,
                    &session,
                    &answer,
                )?;
                claimed.push(RegionArtifact {
                    region,
                    image_id: image.id,
                });
            }
            claimed.sort_by(|a, b| a.region.cmp(&b.region));
            Ok(Claimed {
                artifacts: claimed,
                note: None,
            })
        })
    }

    fn list_owned<'a>(
        &'a self,
        regions: &'a [String],
        namespace: &'a str,
        image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ImageInfo>, ProviderError>> {
        Box::pin(async move {
            let mut all = Vec::new();
            let unique: BTreeSet<&String> = regions.iter().collect();
            for region in unique {
                // Hidden images are missing from Glance's default listing,
                // and `os_hidden=true` lists only them: two passes.
                for hidden in [false, true] {
                    self.list_pass(region, namespace, image_build, hidden, &mut all)
                        .await?;
                }
            }
            // An image hidden between the passes shows up twice.
            all.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| a.region.cmp(&b.region))
                    .then_with(|| a.image_id.cmp(&b.image_id))
            });
            all.dedup_by(|a, b| a.region == b.region && a.image_id == b.image_id);
            Ok(all)
        })
    }

    fn delete<'a>(
        &'a self,
        image: &'a ImageInfo,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            const OPERATION: &str = "DELETE /v2/images/{id}";
            let path = format!("/v2/images/{}", encode(&image.image_id));
            let (answer, _) = self
                .glance(&image.region, OPERATION, Method::DELETE, &path, None)
                .await?;
            match answer.status {
                // Gone already: an earlier evaluation got this far.
                s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(None),
                StatusCode::FORBIDDEN => Err(ProviderError::Invalid(format!(
                    "Glance refused to delete image {} in {} ({}): it is protected (protected: true) or not this project's; set protected to false to let retention delete it, or mark it kiln_keep to keep it",
                    image.image_id,
                    image.region,
                    answer.error_text()
                ))),
                _ => Err(failed(OPERATION, &image.region, &answer)),
            }
        })
    }

    fn sweep<'a>(
        &'a self,
        _regions: &'a [String],
        _namespace: &'a str,
        _image_build: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, ProviderError>> {
        // A Glance image is one object: deleting it leaves nothing behind.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn deprecate<'a>(
        &'a self,
        image: &'a ImageInfo,
        _: &'a super::Deprecation,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            const OPERATION: &str = "PATCH /v2/images/{id}";
            if image.deprecated {
                return Ok(None);
            }
            // Hidden from default listings (and so from name lookups, such as
            // Packer's source_image_name), still bootable by ID.
            let patch = json!([{"op": "replace", "path": "/os_hidden", "value": true}]);
            let path = format!("/v2/images/{}", encode(&image.image_id));
            let (answer, _) = self
                .glance(&image.region, OPERATION, Method::PATCH, &path, Some(&patch))
                .await?;
            match answer.status {
                s if s.is_success() => Ok(None),
                StatusCode::NOT_FOUND => Ok(Some(format!(
                    "image {} in {} is no longer in Glance",
                    image.image_id, image.region
                ))),
                StatusCode::FORBIDDEN => Err(ProviderError::Unauthorized(format!(
                    "Glance refused to hide image {} in {} ({}); the credentials in {SECRET} must be of the project that owns it",
                    image.image_id,
                    image.region,
                    answer.error_text()
                ))),
                _ => Err(failed(OPERATION, &image.region, &answer)),
            }
        })
    }
}

impl OpenStack {
    /// What a claim's PATCH or tag PUT answered, as an outcome.
    fn claim_answer(
        &self,
        operation: &'static str,
        region: &str,
        image: &Image,
        session: &Session,
        answer: &Answer,
    ) -> Result<(), ProviderError> {
        match answer.status {
            s if s.is_success() => Ok(()),
            // Deleted since it was found.
            StatusCode::NOT_FOUND => Err(ProviderError::ImageMissing {
                region: region.to_owned(),
                image_id: image.id.clone(),
            }),
            StatusCode::FORBIDDEN => Err(ProviderError::Unauthorized(format!(
                "Glance refused to record kiln's properties on image {} in {region} ({}); it belongs to project {}, and the credentials in {SECRET} are of project {}: use credentials of the project Packer builds in",
                image.id,
                answer.error_text(),
                image.owner.as_deref().unwrap_or("(none)"),
                session.project_id
            ))),
            _ => Err(failed(operation, region, answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(pairs: &[(&str, &str)]) -> Credentials {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn owner() -> Owner {
        Owner {
            namespace: "team".into(),
            image_build: "base".into(),
            build_id: "b-1".into(),
            spec_hash: "h".into(),
        }
    }

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_owner_round_trips_through_properties_and_the_tag() {
        let encoded: BTreeMap<String, String> = properties::encode(&owner())
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(encoded["kiln_managed_by"], "kiln");
        let decoded = properties::decode(&encoded, &["kiln".into()]).expect("owned");
        assert_eq!(
            (
                decoded.namespace.as_str(),
                decoded.image_build.as_str(),
                decoded.build_id.as_str()
            ),
            ("team", "base", "b-1")
        );
        // A snapshot of a kiln image carries its properties (Nova copies
        // them) but not the tag: not kiln's.
        assert_eq!(properties::decode(&encoded, &[]), None);
        // Another tool's properties of the same names.
        let mut foreign = encoded.clone();
        foreign.insert("kiln_managed_by".into(), "other".into());
        assert_eq!(properties::decode(&foreign, &["kiln".into()]), None);
        let partial = props(&[("kiln_namespace", "team")]);
        assert_eq!(properties::decode(&partial, &["kiln".into()]), None);
    }

    #[test]
    fn three_ways_to_keep_an_image() {
        let none = props(&[]);
        assert!(!properties::keep(&none, &["kiln".into()], false));
        assert!(properties::keep(&props(&[("kiln_keep", "")]), &[], false));
        assert!(properties::keep(&none, &["kiln-keep".into()], false));
        assert!(properties::keep(&none, &[], true));
    }

    #[test]
    fn a_listed_image_becomes_image_info() {
        let image: Image = serde_json::from_value(json!({
            "id": "i-1", "name": "base-1", "status": "active", "owner": "p",
            "created_at": "2026-01-02T03:04:05Z", "tags": ["kiln", "blue"],
            "protected": false, "os_hidden": true, "visibility": "shared",
            "disk_format": "raw", "min_disk": 0, "size": null,
            "kiln_namespace": "team", "kiln_image_build": "base",
            "kiln_build_id": "b-1", "kiln_keep": "yes", "os_distro": "debian",
            "hw_numa": 2
        }))
        .expect("image");
        let info = image_info("RegionOne", &image);
        assert_eq!(info.image_id, "i-1");
        assert_eq!(info.name.as_deref(), Some("base-1"));
        assert_eq!(info.created_at.to_string(), "2026-01-02T03:04:05Z");
        assert!(info.deprecated && info.keep);
        assert_eq!(info.owner.expect("owned").build_id, "b-1");
        assert_eq!(info.tags["os_distro"], "debian");
        assert_eq!(info.tags["blue"], "");
        assert!(!info.tags.contains_key("visibility"), "{:?}", info.tags);
        assert!(!info.tags.contains_key("hw_numa"), "only strings");
    }

    #[test]
    fn credentials_choose_the_auth_method() {
        let c = config(
            None,
            &creds(&[
                ("OS_AUTH_URL", "https://k.example:5000/v3/"),
                ("OS_APPLICATION_CREDENTIAL_ID", "ac"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "s3cret\n"),
                ("OS_PASSWORD", "ignored"),
                ("OS_INTERFACE", "internalURL"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.keystone, "https://k.example:5000");
        assert_eq!(c.keystone_field, "OS_AUTH_URL");
        assert_eq!(c.interface, "internal");
        assert_eq!(
            c.auth.body(),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac", "secret": "s3cret"}}}})
        );

        let c = config(
            Some("http://override:5000"),
            &creds(&[
                ("OS_AUTH_URL", "https://k.example:5000"),
                ("OS_USERNAME", "u"),
                ("OS_PASSWORD", "pw"),
                ("OS_TENANT_NAME", "proj"),
                ("OS_PROJECT_DOMAIN_ID", "d1"),
                ("OS_USER_DOMAIN_NAME", ""),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.keystone, "http://override:5000");
        assert_eq!(c.keystone_field, "spec.provider.endpoint");
        assert_eq!(c.interface, "public");
        assert_eq!(
            c.auth.body(),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user":
                    {"name": "u", "domain": {"name": "Default"}, "password": "pw"}}},
                "scope": {"project": {"name": "proj", "domain": {"id": "d1"}}}}})
        );

        let c = config(
            None,
            &creds(&[
                ("OS_AUTH_URL", "https://k.example/identity/v3"),
                ("OS_APPLICATION_CREDENTIAL_NAME", "ci"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
                ("OS_USER_ID", "uid"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.keystone, "https://k.example/identity");
        assert_eq!(
            c.auth.body()["auth"]["identity"]["application_credential"],
            json!({"name": "ci", "user": {"id": "uid"}, "secret": "s"})
        );
    }

    #[test]
    fn incomplete_credentials_say_what_to_add_without_the_secret() {
        let no_project = config(
            None,
            &creds(&[
                ("OS_AUTH_URL", "https://k"),
                ("OS_USERNAME", "u"),
                ("OS_PASSWORD", "hunter2"),
            ]),
        )
        .err()
        .expect("refused");
        assert!(no_project.contains("OS_PROJECT_ID"), "{no_project}");
        assert!(!no_project.contains("hunter2"));
        let no_url = config(None, &creds(&[("OS_PASSWORD", "p")]))
            .err()
            .expect("refused");
        assert!(no_url.contains("OS_AUTH_URL"), "{no_url}");
        let no_user = config(
            None,
            &creds(&[
                ("OS_AUTH_URL", "https://k"),
                ("OS_APPLICATION_CREDENTIAL_NAME", "n"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
            ]),
        )
        .err()
        .expect("refused");
        assert!(no_user.contains("OS_USERNAME"), "{no_user}");
        let not_url = config(Some("keystone:5000"), &creds(&[]))
            .err()
            .expect("refused");
        assert!(not_url.starts_with("spec.provider.endpoint"), "{not_url}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let os = from_credentials(
            None,
            &creds(&[
                ("OS_AUTH_URL", "https://k/v3"),
                ("OS_USERNAME", "u"),
                ("OS_PASSWORD", "hunter2"),
                ("OS_PROJECT_NAME", "p"),
            ]),
        );
        let shown = format!("{os:?}");
        assert!(shown.contains("password of user 'u'"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn glance_errors_read_plainly() {
        let answer = Answer {
            status: StatusCode::FORBIDDEN,
            headers: HeaderMap::new(),
            body: "<html><body><h1>403 Forbidden</h1>\n\nImage x is protected and cannot be deleted.\n\n   </body></html>".into(),
        };
        assert_eq!(
            answer.error_text(),
            "HTTP 403 Forbidden Image x is protected and cannot be deleted."
        );
        let keystone = Answer {
            status: StatusCode::UNAUTHORIZED,
            headers: HeaderMap::new(),
            body: r#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#.into(),
        };
        assert_eq!(
            keystone.error_text(),
            "HTTP 401: The request you have made requires authentication."
        );
        assert_eq!(encode("a b/ç"), "a%20b%2F%C3%A7");
    }

    /// A scripted HTTP server on 127.0.0.1 for what real Keystone and Glance
    /// will not do on demand (5xx, 429, a token refused mid-way); the
    /// provider's behaviour against the real ones is in
    /// tests/openstack_provider.rs.
    async fn scripted(
        answer: impl Fn(&str, &str, &str) -> (u16, Vec<(&'static str, String)>, String)
        + Send
        + Sync
        + 'static,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Headers, then as much body as Content-Length says.
                    let (head, body_len) = loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&request[..end]).to_string();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            break (head, end + 4 + len);
                        }
                    };
                    while request.len() < body_len {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    let mut first = head.lines().next().unwrap_or_default().split(' ');
                    let (method, path) = (
                        first.next().unwrap_or_default(),
                        first.next().unwrap_or_default(),
                    );
                    let token = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("x-auth-token")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let (status, headers, body) = answer(method, path, &token);
                    let mut out = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(&body);
                    let _ = socket.write_all(out.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn throttling_and_a_refused_token_are_retried_and_pages_followed() {
        use std::sync::atomic::AtomicUsize;
        let tokens = Arc::new(AtomicUsize::new(0));
        let first_page = Arc::new(AtomicUsize::new(0));
        let base = Arc::new(std::sync::OnceLock::<String>::new());
        let image = |id: &str| {
            json!({"id": id, "name": id, "status": "active", "owner": "p",
                "created_at": "2026-01-01T00:00:00Z", "tags": ["kiln"],
                "kiln_namespace": "team", "kiln_image_build": "base"})
        };
        let url = scripted({
            let (tokens, first_page, base) = (tokens.clone(), first_page.clone(), base.clone());
            move |method, path, token| {
                let root = base.get().cloned().unwrap_or_default();
                match (method, path) {
                    ("POST", "/identity/v3/auth/tokens") => {
                        let n = tokens.fetch_add(1, Ordering::SeqCst) + 1;
                        let expires = Timestamp::now() + SignedDuration::from_hours(1);
                        let body = json!({"token": {"expires_at": expires.to_string(),
                            "project": {"id": "p"},
                            "catalog": [{"type": "image", "endpoints": [
                                {"interface": "public", "region_id": "RegionOne",
                                 "url": format!("{root}/image/v2/")},
                                {"interface": "internal", "region_id": "RegionTwo",
                                 "url": format!("{root}/other")}]}]}});
                        (
                            201,
                            vec![("X-Subject-Token", format!("tok-{n}"))],
                            body.to_string(),
                        )
                    }
                    ("GET", p) if p.contains("os_hidden=true") => {
                        (200, vec![], json!({"images": []}).to_string())
                    }
                    ("GET", p) if p.starts_with("/image/v2/images?") && p.contains("marker=") => {
                        (200, vec![], json!({"images": [image("i-2")]}).to_string())
                    }
                    ("GET", p) if p.starts_with("/image/v2/images?") => {
                        match first_page.fetch_add(1, Ordering::SeqCst) {
                            0 => (503, vec![("Retry-After", "0".into())], String::new()),
                            1 => (429, vec![("Retry-After", "0".into())], String::new()),
                            _ if token == "tok-1" => (401, vec![], String::new()),
                            _ => (
                                200,
                                vec![],
                                json!({"images": [image("i-1")],
                                    "next": "/v2/images?tag=kiln&marker=i-1"})
                                .to_string(),
                            ),
                        }
                    }
                    _ => (404, vec![], String::new()),
                }
            }
        })
        .await;
        base.set(url.clone()).expect("once");
        let os = from_credentials(
            Some(format!("{url}/identity/v3")),
            &creds(&[
                ("OS_APPLICATION_CREDENTIAL_ID", "id"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
            ]),
        );
        let listed = os
            .list_owned(&["RegionOne".into()], "team", "base")
            .await
            .expect("listed");
        let ids: Vec<&str> = listed.iter().map(|i| i.image_id.as_str()).collect();
        assert_eq!(ids, ["i-1", "i-2"]);
        assert_eq!(
            tokens.load(Ordering::SeqCst),
            2,
            "one new token after the 401"
        );
        // Token, 503, 429, 401, token, page 1, page 2, hidden pass.
        assert_eq!(os.api_calls(), 8);
        // The internal endpoint is not the one asked for.
        let message = match os.check_regions(&["RegionTwo".into()]).await {
            Err(ProviderError::Invalid(m)) => m,
            other => panic!("wanted Invalid, got {other:?}"),
        };
        assert_eq!(
            message,
            "spec.provider.regions: 'RegionTwo' is not a region of this cloud's image service; the catalogue has: RegionOne"
        );
    }
}
