//! Access tokens for the Compute API, two ways:
//!
//! - a service-account key (the JSON Google issues) in the Secret key
//!   [`KEY`]: kiln signs a JWT with the key (RS256, with `ring`, the crypto
//!   kiln's TLS already uses) and exchanges it at the key's `token_uri`, the
//!   OAuth 2.0 JWT-bearer grant Google's own libraries make;
//! - no key (GKE Workload Identity): the metadata server's token endpoint, at
//!   `GCE_METADATA_HOST` when set, as Google's libraries read it.

use std::time::Duration;

use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;
use ring::{rand::SystemRandom, signature};
use serde::Deserialize;

use crate::provider::{ProviderError, factory::Credentials, http};

/// The Secret key that holds the service-account key's JSON.
pub const KEY: &str = crate::api::GCP_CREDENTIALS_KEY;
/// The scope kiln asks for: read and write Compute Engine resources.
pub const SCOPE: &str = "https://www.googleapis.com/auth/compute";
/// Google's token endpoint, for keys that name none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's name on GCE and GKE.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// The environment variable Google's libraries read for another metadata
/// server (`host[:port]`).
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Where the credentials come from, for messages.
pub const SECRET: &str = "the Secret named by spec.provider.credentials.secretRef";

/// Attempts at the token endpoint on 5xx, 429 and transport errors.
const ATTEMPTS: u32 = 4;

/// What kiln reads of a key file.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

/// A service account's key, parsed and checked once.
pub struct ServiceAccount {
    /// `client_email`.
    pub email: String,
    /// `private_key_id`, the JWT's `kid`.
    key_id: Option<String>,
    key: signature::RsaKeyPair,
    /// Where the signed JWT is exchanged for a token.
    pub token_uri: String,
    /// The project the service account belongs to, for messages.
    pub project_id: Option<String>,
}

/// Where tokens come from.
pub enum Source {
    /// A service-account key from the Secret.
    Key(Box<ServiceAccount>),
    /// The metadata server (`host[:port]`).
    Metadata(String),
}

impl std::fmt::Debug for Source {
    // By hand: the key must never show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Source {
    /// The key in `credentials`, or the metadata server at `metadata_host`
    /// when there is none. A key that cannot be used is an error, never a
    /// fallback to the metadata server.
    pub fn from_credentials(
        credentials: &Credentials,
        metadata_host: String,
    ) -> Result<Source, String> {
        match credentials.get(KEY).filter(|v| !v.trim().is_empty()) {
            Some(json) => parse_key(json).map(|sa| Source::Key(Box::new(sa))),
            None => Ok(Source::Metadata(metadata_host)),
        }
    }

    /// Who asks, for messages (never the key itself).
    pub fn describe(&self) -> String {
        match self {
            Source::Key(sa) => format!(
                "service account {} (the key{} in {KEY} of {SECRET})",
                sa.email,
                sa.key_id
                    .as_deref()
                    .map(|k| format!(" {}", k.chars().take(12).collect::<String>()))
                    .unwrap_or_default()
            ),
            Source::Metadata(host) => format!(
                "the metadata server's service account at {host} (Workload Identity: {SECRET} has no {KEY})"
            ),
        }
    }
}

/// The metadata server kiln asks when there is no key: `GCE_METADATA_HOST`
/// when set, else GCE's and GKE's own.
pub fn metadata_host(env: Option<String>) -> String {
    env.map(|h| h.trim().trim_end_matches('/').to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned())
}

fn parse_key(json: &str) -> Result<ServiceAccount, String> {
    let file: KeyFile = serde_json::from_str(json).map_err(|e| {
        format!(
            "{KEY} in {SECRET} is not a service-account key file ({e}); put the JSON key of a service account in it (IAM > Service accounts > Keys > Add key > JSON)"
        )
    })?;
    let kind = file.kind.as_deref().unwrap_or_default();
    if kind != "service_account" {
        return Err(format!(
            "{KEY} in {SECRET} is a '{kind}' credential; kiln reads service-account keys (\"type\": \"service_account\"); put one in the Secret, or remove {KEY} to use Workload Identity"
        ));
    }
    let missing = |field: &str| {
        format!("{KEY} in {SECRET} has no {field}; put the whole JSON key file in it")
    };
    let email = file
        .client_email
        .filter(|e| !e.is_empty())
        .ok_or_else(|| missing("client_email"))?;
    let pem = file
        .private_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| missing("private_key"))?;
    let token_uri = file
        .token_uri
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
    if reqwest::Url::parse(&token_uri)
        .ok()
        .is_none_or(|u| !matches!(u.scheme(), "http" | "https"))
    {
        return Err(format!(
            "{KEY} in {SECRET}: token_uri '{token_uri}' is not an http(s) URL; Google's is {DEFAULT_TOKEN_URI}"
        ));
    }
    Ok(ServiceAccount {
        key: private_key(&pem).map_err(|why| {
            format!("{KEY} in {SECRET}: the private_key of {email} cannot be used ({why}); put the key file Google issued in it, unchanged")
        })?,
        email,
        key_id: file.private_key_id.filter(|k| !k.is_empty()),
        token_uri,
        project_id: file.project_id.filter(|p| !p.is_empty()),
    })
}

/// An RSA key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`, what Google issues) or
/// PKCS#1 (`BEGIN RSA PRIVATE KEY`).
fn private_key(pem: &str) -> Result<signature::RsaKeyPair, String> {
    let pkcs1 = pem.contains("-----BEGIN RSA PRIVATE KEY-----");
    if !pkcs1 && !pem.contains("-----BEGIN PRIVATE KEY-----") {
        return Err("not a PEM private key".into());
    }
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("its PEM body is not base64: {e}"))?;
    let key = if pkcs1 {
        signature::RsaKeyPair::from_der(&der)
    } else {
        signature::RsaKeyPair::from_pkcs8(&der)
    };
    key.map_err(|e| format!("not an RSA key ring accepts: {e}"))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signed JWT for the JWT-bearer grant, valid for an hour from `now`.
fn assertion(sa: &ServiceAccount, now: Timestamp) -> Result<String, String> {
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &sa.key_id {
        header["kid"] = kid.as_str().into();
    }
    let iat = now.as_second();
    let claims = serde_json::json!({
        "iss": sa.email,
        "scope": SCOPE,
        "aud": sa.token_uri,
        "iat": iat,
        "exp": iat + 3600,
    });
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut signature = vec![0; sa.key.public().modulus_len()];
    sa.key
        .sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "signing the token request failed".to_owned())?;
    Ok(format!("{signed}.{}", b64url(&signature)))
}

/// An access token and when to get a new one.
pub struct Token {
    /// The bearer token.
    pub value: String,
    /// Some minutes before it expires.
    pub renew_at: Timestamp,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// A new token from `source`.
pub async fn fetch(http: &reqwest::Client, source: &Source) -> Result<Token, ProviderError> {
    let (operation, url) = match source {
        Source::Key(sa) => ("oauth2.token", sa.token_uri.clone()),
        Source::Metadata(host) => (
            "metadata.token",
            format!("http://{host}{METADATA_TOKEN_PATH}"),
        ),
    };
    let api = |message: String| ProviderError::Api {
        operation,
        region: super::GLOBAL.to_owned(),
        message,
    };
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    let (status, body) = loop {
        let request = match source {
            Source::Key(sa) => {
                let jwt = assertion(sa, Timestamp::now()).map_err(api)?;
                http.post(&url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    // Both values are URL-safe as they are but for the
                    // grant type's colons.
                    .body(format!(
                        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
                    ))
            }
            Source::Metadata(_) => http.get(&url).header("Metadata-Flavor", "Google"),
        };
        let outcome = match request.send().await {
            Ok(r) => {
                let status = r.status();
                r.text().await.map(|b| (status, b))
            }
            Err(e) => Err(e),
        };
        let retry = match &outcome {
            Ok((s, _)) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
            Err(e) => !(matches!(source, Source::Metadata(_)) && e.is_connect()),
        };
        if !retry || attempt >= ATTEMPTS {
            match outcome {
                Ok(answer) => break answer,
                Err(e) if e.is_connect() && matches!(source, Source::Metadata(_)) => {
                    return Err(ProviderError::Unauthorized(format!(
                        "{SECRET} has no {KEY}, and the metadata server at {url} cannot be reached ({}); put a service-account key in {KEY}, or run kiln on GKE with Workload Identity",
                        http::describe(&e)
                    )));
                }
                Err(e) => return Err(api(format!("{url}: {}", http::describe(&e)))),
            }
        }
        tracing::debug!(operation, attempt, ?wait, "GCP token request retried");
        tokio::time::sleep(wait).await;
        wait *= 2;
        attempt += 1;
    };
    if status.is_success() {
        let reply: TokenReply = serde_json::from_str(&body)
            .map_err(|e| api(format!("{url} answered something that is not a token: {e}")))?;
        let now = Timestamp::now();
        let left = SignedDuration::from_secs(reply.expires_in.unwrap_or(3600).max(0));
        let margin = SignedDuration::from_mins(5).min(left / 2);
        return Ok(Token {
            value: reply.access_token,
            renew_at: now.checked_add(left - margin).unwrap_or(now),
        });
    }
    let why = match serde_json::from_str::<OAuthError>(&body) {
        Ok(OAuthError {
            error: Some(error),
            error_description,
        }) => match error_description {
            Some(d) => format!("{error}: {d}"),
            None => error,
        },
        _ => format!(
            "HTTP {}: {}",
            status.as_u16(),
            body.trim().chars().take(200).collect::<String>()
        ),
    };
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(api(format!("{url}: {why}")));
    }
    Err(ProviderError::Unauthorized(match source {
        Source::Key(sa) => format!(
            "{} refused the {} ({why}); the key may be deleted or disabled: put a valid key in {KEY} of {SECRET}",
            sa.token_uri,
            source.describe()
        ),
        Source::Metadata(_) => format!(
            "the metadata server gave no token at {url} ({why}); bind kiln's Kubernetes service account to a Google service account (Workload Identity), or put a service-account key in {KEY} of {SECRET}"
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_host_follows_google_s_variable() {
        assert_eq!(metadata_host(None), "metadata.google.internal");
        assert_eq!(metadata_host(Some(" ".into())), "metadata.google.internal");
        assert_eq!(
            metadata_host(Some("127.0.0.1:8080/".into())),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn keys_that_cannot_work_say_what_to_put_in_the_secret() {
        let err = |json: &str| match Source::from_credentials(
            &Credentials::from([(KEY.to_owned(), json.to_owned())]),
            String::new(),
        ) {
            Err(e) => e,
            Ok(s) => panic!("accepted: {s:?}"),
        };
        assert!(err("not json").contains("not a service-account key file"));
        assert!(err(r#"{"type": "authorized_user"}"#).contains("'authorized_user'"));
        let no_key = err(r#"{"type": "service_account", "client_email": "a@b"}"#);
        assert!(no_key.contains("no private_key"), "{no_key}");
        let secret = "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu";
        let bad = err(&format!(
            r#"{{"type": "service_account", "client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"}}"#
        ));
        assert!(bad.contains("private_key of a@b cannot be used"), "{bad}");
        assert!(!bad.contains(secret), "{bad}");
        match Source::from_credentials(&Credentials::new(), "h:1".into()) {
            Ok(Source::Metadata(h)) => assert_eq!(h, "h:1"),
            other => panic!("{other:?}"),
        }
    }
}
