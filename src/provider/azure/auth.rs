//! Tokens for Azure Resource Manager from Microsoft Entra ID, through
//! azure_identity: a service principal's client secret, or workload identity
//! federation (a Kubernetes service account token in a file, as AKS
//! injects it).
//!
//! azure_identity sends its token requests over kiln's reqwest client (one
//! TLS stack: rustls with ring). It accepts only an `https` authority; a
//! local stand-in speaks plain HTTP, so an `http://` authority on a loopback
//! address is given to azure_identity as `https://` and [`Loopback`] sends
//! those requests as plain HTTP. A secret never goes over plain HTTP to
//! another machine.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use async_trait::async_trait;
use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{Secret, TokenCredential},
    error::ErrorKind,
    http::{
        AsyncRawResponse, ClientOptions, ExponentialRetryOptions, HttpClient, Request,
        RetryOptions, Transport, Url,
    },
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use crate::provider::{ProviderError, factory::Credentials, http};

/// Microsoft Entra ID of Azure's public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Where the Secret's keys are named, for messages.
const SECRET: &str = "the Secret named by spec.provider.credentials.secretRef";

/// How kiln signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `AZURE_CLIENT_SECRET`.
    ClientSecret,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity,
}

impl Method {
    /// The Secret keys this method reads, for messages.
    pub fn keys(self) -> &'static str {
        match self {
            Method::ClientSecret => "AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET",
            Method::WorkloadIdentity => {
                "AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE"
            }
        }
    }
}

/// A token source for one principal, or why there cannot be one (reported
/// at the first call, as the other providers do).
pub struct Auth {
    credential: Result<(Arc<dyn TokenCredential>, Method), ProviderError>,
    scope: String,
    refusal: Arc<Mutex<Option<Refusal>>>,
    /// The principal's client ID (public), for messages and bucket keys.
    pub client_id: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("client_id", &self.client_id)
            .field("method", &self.method())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What Entra answered when it refused a token request.
#[derive(Debug, Clone)]
struct Refusal {
    status: u16,
    description: String,
}

/// Entra's error body (owned strings: its descriptions hold `\r\n`, which
/// azure_identity 1.0's borrowed parse cannot read, losing the status).
#[derive(serde::Deserialize)]
struct EntraError {
    error: Option<String>,
    error_description: Option<String>,
}

/// The transport of azure_identity's token requests: sends requests for
/// the loopback authority as plain HTTP (see the module comment), and
/// records Entra's refusals for [`refused`].
#[derive(Debug)]
struct Loopback {
    http: reqwest::Client,
    plain: Option<(String, Option<u16>)>,
    refusal: Arc<Mutex<Option<Refusal>>>,
}

#[async_trait]
impl HttpClient for Loopback {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let plain = self.plain.as_ref().is_some_and(|(host, port)| {
            request.url().scheme() == "https"
                && request.url().host_str() == Some(host.as_str())
                && request.url().port_or_known_default() == *port
        });
        let response = if plain {
            let mut request = request.clone();
            // https -> http is always a valid scheme change.
            let _ = request.url_mut().set_scheme("http");
            self.http.execute_request(&request).await?
        } else {
            self.http.execute_request(request).await?
        };
        let status = u16::from(response.status());
        if !(400..500).contains(&status) || status == 429 {
            return Ok(response);
        }
        let (code, headers, body) = response.deconstruct();
        let bytes = body.collect().await?;
        let parsed: Option<EntraError> = serde_json::from_slice(&bytes).ok();
        let description = parsed
            .and_then(|e| e.error_description.or(e.error))
            .map(|d| first_line(&d))
            .unwrap_or_else(|| format!("HTTP {status}"));
        *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(Refusal {
            status,
            description,
        });
        Ok(AsyncRawResponse::from_bytes(code, headers, bytes))
    }
}

/// Whether a URL's host is this machine.
pub fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The authority to give azure_identity, and the host and port to send as
/// plain HTTP, if any.
type AuthorityPlan = (String, Option<(String, Option<u16>)>);

fn authority(raw: &str, field: &str) -> Result<AuthorityPlan, ProviderError> {
    let trimmed = raw.trim().trim_end_matches('/');
    let bad = || {
        ProviderError::Misconfigured(format!(
            "{field}: '{trimmed}' is not an https URL (or an http URL on this machine, for a stand-in); give the Microsoft Entra authority, such as {DEFAULT_AUTHORITY_HOST}"
        ))
    };
    let url = Url::parse(trimmed).map_err(|_| bad())?;
    if url.host().is_none() {
        return Err(bad());
    }
    match url.scheme() {
        "https" => Ok((trimmed.to_owned(), None)),
        "http" if is_loopback(&url) => {
            let mut secure = url.clone();
            secure.set_scheme("https").map_err(|()| bad())?;
            // Keep the port the stand-in listens on, even where it is 80.
            let port = url.port_or_known_default();
            if secure.port().is_none() {
                secure.set_port(port).map_err(|()| bad())?;
            }
            let host = secure.host_str().unwrap_or_default().to_owned();
            let plain_port = secure.port_or_known_default();
            Ok((
                secure.as_str().trim_end_matches('/').to_owned(),
                Some((host, plain_port)),
            ))
        }
        _ => Err(bad()),
    }
}

impl Auth {
    /// The credential the Secret describes, for tokens with `scope`.
    pub fn from_credentials(credentials: &Credentials, scope: String) -> Auth {
        let client_id = credentials
            .get("AZURE_CLIENT_ID")
            .cloned()
            .unwrap_or_default();
        let refusal = Arc::default();
        Auth {
            credential: credential(credentials, &client_id, &refusal),
            scope,
            refusal,
            client_id,
        }
    }

    /// How it signs in, when the Secret says.
    pub fn method(&self) -> Option<Method> {
        self.credential.as_ref().ok().map(|(_, m)| *m)
    }

    /// A token for ARM (azure_identity caches it until shortly before it
    /// expires).
    pub async fn token(&self) -> Result<Secret, ProviderError> {
        let (credential, method) = match &self.credential {
            Ok(c) => c,
            Err(e) => return Err(copy(e)),
        };
        let result = credential.get_token(&[self.scope.as_str()], None).await;
        let refusal = self
            .refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        result
            .map(|t| t.token)
            .map_err(|e| refused(&e, *method, refusal))
    }
}

fn copy(e: &ProviderError) -> ProviderError {
    match e {
        ProviderError::Misconfigured(m) => ProviderError::Misconfigured(m.clone()),
        ProviderError::Unauthorized(m) => ProviderError::Unauthorized(m.clone()),
        other => ProviderError::Misconfigured(other.to_string()),
    }
}

fn credential(
    credentials: &Credentials,
    client_id: &str,
    refusal: &Arc<Mutex<Option<Refusal>>>,
) -> Result<(Arc<dyn TokenCredential>, Method), ProviderError> {
    let value = |k: &str| {
        credentials
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let lacking: Vec<&str> = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID"]
        .into_iter()
        .filter(|k| value(k).is_none())
        .collect();
    if !lacking.is_empty() {
        return Err(ProviderError::Misconfigured(format!(
            "{SECRET} lacks {}; add the service principal's tenant and client (application) ID",
            lacking.join(" and ")
        )));
    }
    let tenant = value("AZURE_TENANT_ID").unwrap_or_default();
    let (host, field) = match value("AZURE_AUTHORITY_HOST") {
        Some(h) => (h, "AZURE_AUTHORITY_HOST in the Secret"),
        None => (DEFAULT_AUTHORITY_HOST, "the default authority host"),
    };
    let (authority_host, plain) = authority(host, field)?;
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority_host;
    let client_options = ClientOptions {
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        transport: Some(Transport::new(Arc::new(Loopback {
            http: http::client(),
            plain,
            refusal: refusal.clone(),
        }))),
        // A refused secret is not retried; an unreachable authority a few
        // times, then the call fails and the reconcile comes back later.
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(500),
            max_retries: 3,
            max_total_elapsed: azure_core::time::Duration::seconds(30),
            ..Default::default()
        }),
        ..Default::default()
    };
    let unusable = |method: Method, e: azure_core::Error| {
        ProviderError::Misconfigured(format!(
            "{SECRET} ({}): {}",
            method.keys(),
            first_line(&e.to_string())
        ))
    };
    if let Some(secret) = value("AZURE_CLIENT_SECRET") {
        let options = ClientSecretCredentialOptions { client_options };
        return ClientSecretCredential::new(
            tenant,
            client_id.trim().to_owned(),
            Secret::new(secret.to_owned()),
            Some(options),
        )
        .map(|c| (c as Arc<dyn TokenCredential>, Method::ClientSecret))
        .map_err(|e| unusable(Method::ClientSecret, e));
    }
    if let Some(file) = value("AZURE_FEDERATED_TOKEN_FILE") {
        let options = WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions { client_options },
            client_id: Some(client_id.trim().to_owned()),
            tenant_id: Some(tenant.to_owned()),
            token_file_path: Some(PathBuf::from(file)),
        };
        return WorkloadIdentityCredential::new(Some(options))
            .map(|c| (c as Arc<dyn TokenCredential>, Method::WorkloadIdentity))
            .map_err(|e| unusable(Method::WorkloadIdentity, e));
    }
    Err(ProviderError::Misconfigured(format!(
        "{SECRET} has neither AZURE_CLIENT_SECRET (a service principal's client secret) nor AZURE_FEDERATED_TOKEN_FILE (workload identity: the path of the projected service account token); add one"
    )))
}

/// Entra's refusal (a 4xx from the token endpoint) is the Secret's to fix;
/// anything else (no answer, 5xx) is retried later.
fn refused(e: &azure_core::Error, method: Method, refusal: Option<Refusal>) -> ProviderError {
    let message = first_line(&e.to_string());
    let refused = match (refusal, entra_status(e)) {
        (Some(r), _) => Some(format!("HTTP {}: {}", r.status, r.description)),
        (None, Some(status)) if status.is_client_error() && u16::from(status) != 429 => {
            Some(message.clone())
        }
        _ => None,
    };
    if let Some(why) = refused {
        return ProviderError::Unauthorized(format!(
            "Microsoft Entra ID refused the service principal in {SECRET} ({}): {why}; fix the Secret",
            method.keys()
        ));
    }
    ProviderError::Api {
        operation: "token",
        region: "global".to_owned(),
        message: format!("cannot get a token from Microsoft Entra ID: {message}"),
    }
}

/// The HTTP status Entra answered, wherever azure_identity wrapped it.
fn entra_status(e: &azure_core::Error) -> Option<azure_core::http::StatusCode> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(az) = err.downcast_ref::<azure_core::Error>()
            && let ErrorKind::HttpResponse { status, .. } = az.kind()
        {
            return Some(*status);
        }
        current = err.source();
    }
    None
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_accepted_only_on_this_machine() {
        let (host, plain) = authority("http://127.0.0.1:4567/", "x").expect("loopback");
        assert_eq!(host, "https://127.0.0.1:4567");
        assert_eq!(plain, Some(("127.0.0.1".to_owned(), Some(4567))));
        let (host, plain) = authority("http://localhost", "x").expect("loopback");
        assert_eq!(host, "https://localhost:80");
        assert_eq!(plain, Some(("localhost".to_owned(), Some(80))));
        let (host, plain) = authority(DEFAULT_AUTHORITY_HOST, "x").expect("https");
        assert_eq!((host.as_str(), plain), (DEFAULT_AUTHORITY_HOST, None));
        for bad in ["http://login.example.com", "ftp://127.0.0.1", "not a url"] {
            match authority(bad, "AZURE_AUTHORITY_HOST in the Secret") {
                Err(ProviderError::Misconfigured(m)) => {
                    assert!(m.starts_with("AZURE_AUTHORITY_HOST in the Secret:"), "{m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_secret_without_a_way_to_sign_in_is_named() {
        let creds = Credentials::from([
            ("AZURE_TENANT_ID".to_owned(), "t".to_owned()),
            ("AZURE_CLIENT_ID".to_owned(), "c".to_owned()),
        ]);
        let a = Auth::from_credentials(&creds, "https://management.azure.com/.default".into());
        match &a.credential {
            Err(ProviderError::Misconfigured(m)) => {
                assert!(
                    m.contains("AZURE_CLIENT_SECRET") && m.contains("AZURE_FEDERATED_TOKEN_FILE"),
                    "{m}"
                )
            }
            Ok(_) => panic!("no secret, no token file"),
            Err(e) => panic!("{e:?}"),
        }
        let a = Auth::from_credentials(&Credentials::new(), String::new());
        assert!(
            matches!(&a.credential, Err(ProviderError::Misconfigured(m)) if m.contains("AZURE_TENANT_ID and AZURE_CLIENT_ID"))
        );
    }
}
