//! The Compute API's transport: URLs below the project, tokens, pacing by
//! GCE's groups of methods, retries on quota errors and 5xx, what a refusal
//! means, and following long-running Operations to their end.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use super::{ATTEMPTS, GLOBAL, Gcp, OPERATION_TIMEOUT, auth};
use crate::provider::{
    ProviderError, http,
    pace::{self, BucketKey, TokenBucket},
};

/// `globalOperations.wait` answers within about two minutes.
const WAIT_CALL_TIMEOUT: Duration = Duration::from_secs(150);

/// GCE's groups of methods, each with its own rate quota.
#[derive(Debug, Clone, Copy)]
pub(super) enum Group {
    Read,
    List,
    Write,
    Operations,
}

impl Group {
    fn name(self) -> &'static str {
        match self {
            Group::Read => "read",
            Group::List => "list",
            Group::Write => "write",
            Group::Operations => "operations",
        }
    }
}

/// An answer kiln reads (2xx) or judges itself (404, 409, 412, ...).
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: String,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<ErrorDetail>,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    message: Option<String>,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    reason: Option<String>,
}

impl Reply {
    pub(super) fn json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
    ) -> Result<T, ProviderError> {
        serde_json::from_str(&self.body).map_err(|e| ProviderError::Api {
            operation,
            region: GLOBAL.to_owned(),
            message: format!("unreadable answer (HTTP {}): {e}", self.status.as_u16()),
        })
    }

    pub(super) fn message(&self) -> String {
        error_message(self.status, &self.body)
    }

    pub(super) fn unexpected(&self, operation: &'static str) -> ProviderError {
        ProviderError::Api {
            operation,
            region: GLOBAL.to_owned(),
            message: format!("HTTP {}: {}", self.status.as_u16(), self.message()),
        }
    }
}

fn error_message(status: StatusCode, body: &str) -> String {
    let message = serde_json::from_str::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error?.message)
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    if message.chars().count() > 400 {
        format!("{}…", message.chars().take(400).collect::<String>())
    } else {
        message
    }
}

/// Whether a 403 is GCE's rate quota (to wait for) rather than a refusal.
fn rate_limited(body: &str) -> bool {
    serde_json::from_str::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.error)
        .is_some_and(|e| {
            e.errors.iter().any(|i| {
                matches!(
                    i.reason.as_deref(),
                    Some("rateLimitExceeded" | "userRateLimitExceeded")
                )
            })
        })
}

/// A long-running operation, what kiln reads of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    name: String,
    status: Option<String>,
    error: Option<OperationError>,
    http_error_status_code: Option<i64>,
}

#[derive(Deserialize)]
struct OperationError {
    #[serde(default)]
    errors: Vec<OperationErrorItem>,
}

#[derive(Deserialize)]
struct OperationErrorItem {
    code: Option<String>,
    message: Option<String>,
}

impl Operation {
    /// What went wrong, when the operation ended with an error.
    fn failure(&self) -> Option<String> {
        let errors = &self.error.as_ref()?.errors;
        let mut words: Vec<String> = errors
            .iter()
            .map(|e| match (&e.code, &e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "error".to_owned(),
            })
            .collect();
        if words.is_empty() {
            words.push(match self.http_error_status_code {
                Some(code) => format!("HTTP {code}"),
                None => "error".to_owned(),
            });
        }
        Some(words.join("; "))
    }
}

/// Operation names as GCE makes them (`operation-<millis>-<hex>-...`), safe
/// as a path segment.
fn is_operation_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why an attempt is to be repeated, and after how long.
#[derive(Default)]
struct Retry {
    wait: Duration,
    last: String,
    rate_limited: bool,
}

impl Retry {
    fn after(wait: Duration, last: String) -> Retry {
        Retry {
            wait,
            last,
            rate_limited: false,
        }
    }

    fn limited(wait: Duration, status: StatusCode, body: &str) -> Retry {
        Retry {
            wait,
            last: format!("HTTP {}: {}", status.as_u16(), error_message(status, body)),
            rate_limited: true,
        }
    }
}

fn exhausted(last: &str) -> String {
    format!(
        "GCE's rate quota for this project is exhausted ({last}); the call will be retried later"
    )
}

impl Gcp {
    fn bucket(&self, group: Group) -> Option<Arc<TokenBucket>> {
        pace::bucket(
            BucketKey {
                account: self.account.clone(),
                region: GLOBAL.to_owned(),
                operation: group.name(),
            },
            self.pacing,
        )
    }

    pub(super) fn url(&self, segments: &[&str]) -> Result<Url, ProviderError> {
        let mut url = self.base.clone().map_err(ProviderError::Misconfigured)?;
        url.path_segments_mut()
            .map_err(|()| {
                ProviderError::Misconfigured("the Compute API URL cannot take a path".into())
            })?
            .pop_if_empty()
            .push("projects")
            .push(&self.project)
            .extend(segments);
        Ok(url)
    }

    fn source(&self) -> Result<&auth::Source, ProviderError> {
        self.source
            .as_ref()
            .map_err(|e| ProviderError::Misconfigured(e.clone()))
    }

    /// A token that is good for a while yet.
    async fn token(&self) -> Result<Arc<auth::Token>, ProviderError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref()
            && Timestamp::now() < t.renew_at
        {
            return Ok(t.clone());
        }
        let t = Arc::new(auth::fetch(&self.http, self.source()?).await?);
        *slot = Some(t.clone());
        Ok(t)
    }

    /// Drops a token the API refused, unless another call replaced it.
    async fn forget(&self, stale: &Arc<auth::Token>) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, stale)) {
            *slot = None;
        }
    }

    /// One call (`segments` below `projects/{project}/`) in its turn,
    /// retried on GCE's rate quota errors (a 429, or a 403
    /// `rateLimitExceeded`), 5xx and transport errors; a refused token is
    /// renewed once. 401 and other 403s are the user's to fix; any other
    /// answer goes back to the caller to judge.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        operation: &'static str,
        group: Group,
        timeout: Option<Duration>,
    ) -> Result<Reply, ProviderError> {
        let mut url = self.url(segments)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let bucket = self.bucket(group);
        let api = |message: String| ProviderError::Api {
            operation,
            region: GLOBAL.to_owned(),
            message,
        };
        let mut backoff = self.backoff_base;
        let mut renewed = false;
        let mut last = Retry::default();
        for attempt in 1..=ATTEMPTS {
            let token = self.token().await?;
            pace::wait_turn(bucket.as_deref()).await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token.value)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            let retry = match request.send().await {
                Err(e) => Retry::after(backoff, http::describe(&e)),
                Ok(response) => {
                    let status = response.status();
                    let retry_after = http::retry_after(response.headers());
                    match response.text().await {
                        Err(e) => Retry::after(backoff, http::describe(&e)),
                        Ok(text) => match status {
                            StatusCode::TOO_MANY_REQUESTS => {
                                Retry::limited(retry_after.unwrap_or(backoff), status, &text)
                            }
                            StatusCode::FORBIDDEN if rate_limited(&text) => {
                                Retry::limited(retry_after.unwrap_or(backoff), status, &text)
                            }
                            StatusCode::UNAUTHORIZED if !renewed => {
                                // Revoked or expired early: one new token.
                                self.forget(&token).await;
                                renewed = true;
                                Retry::after(Duration::ZERO, error_message(status, &text))
                            }
                            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                                return Err(self.refused(status, operation, &text));
                            }
                            s if s.is_server_error() => Retry::after(
                                backoff,
                                format!("HTTP {}: {}", s.as_u16(), error_message(s, &text)),
                            ),
                            _ => return Ok(Reply { status, body: text }),
                        },
                    }
                }
            };
            if retry.rate_limited {
                if let Some(bucket) = &bucket {
                    // Every call of the project's group waits too.
                    bucket.throttled();
                    bucket.hold_for(retry.wait.min(self.max_wait), Instant::now());
                }
                if retry.wait > self.max_wait {
                    return Err(api(exhausted(&format!(
                        "{}, retry after {}s",
                        retry.last,
                        retry.wait.as_secs()
                    ))));
                }
            }
            if attempt < ATTEMPTS {
                tracing::debug!(
                    operation,
                    attempt,
                    wait_ms = u64::try_from(retry.wait.as_millis()).unwrap_or(u64::MAX),
                    last = %retry.last,
                    "GCP call retried"
                );
                tokio::time::sleep(retry.wait).await;
                if !retry.wait.is_zero() {
                    backoff = (backoff * 2).min(self.max_wait);
                }
            }
            last = retry;
        }
        Err(api(if last.rate_limited {
            exhausted(&format!("{}, {ATTEMPTS} attempts", last.last))
        } else {
            format!("{} ({ATTEMPTS} attempts)", last.last)
        }))
    }

    /// 401 and 403: the credentials, which the user must fix.
    fn refused(&self, status: StatusCode, operation: &str, body: &str) -> ProviderError {
        let message = error_message(status, body);
        let who = match &self.source {
            Ok(s) => s.describe(),
            Err(e) => e.clone(),
        };
        let project = &self.project;
        if status == StatusCode::UNAUTHORIZED {
            return ProviderError::Unauthorized(format!(
                "GCP refused the token of {who} for {operation} in project '{project}' ({message}); fix the Secret"
            ));
        }
        let elsewhere = match &self.source {
            Ok(auth::Source::Key(sa)) => sa
                .project_id
                .as_deref()
                .filter(|p| p != project)
                .map(|p| format!("; the key is of project '{p}'"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        ProviderError::Unauthorized(format!(
            "GCP refused {operation} in project '{project}' (spec.provider.gcp.projectId) to {who} ({message}){elsewhere}; grant that service account roles/compute.storageAdmin in project '{project}', or put a key of a service account that has it in {} of {}",
            auth::KEY,
            auth::SECRET
        ))
    }

    /// Follows an Operation until it is DONE; one that ends with an error
    /// becomes an error naming the operation and the image.
    pub(super) async fn finish(
        &self,
        reply: &Reply,
        operation: &'static str,
        image: &str,
    ) -> Result<(), ProviderError> {
        let mut op: Operation = reply.json(operation)?;
        let deadline = Instant::now() + OPERATION_TIMEOUT;
        loop {
            let status = op.status.as_deref().unwrap_or("PENDING");
            if status == "DONE" {
                return match op.failure() {
                    None => Ok(()),
                    Some(why) => Err(ProviderError::Api {
                        operation,
                        region: GLOBAL.to_owned(),
                        message: format!(
                            "image '{image}': operation {} ended with an error: {why}",
                            op.name
                        ),
                    }),
                };
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Api {
                    operation,
                    region: GLOBAL.to_owned(),
                    message: format!(
                        "image '{image}': operation {} is still {status} after {} s",
                        op.name,
                        OPERATION_TIMEOUT.as_secs()
                    ),
                });
            }
            if !is_operation_name(&op.name) {
                return Err(ProviderError::Api {
                    operation,
                    region: GLOBAL.to_owned(),
                    message: format!("image '{image}': unusable operation name '{}'", op.name),
                });
            }
            let started = Instant::now();
            let reply = self
                .call(
                    Method::POST,
                    &["global", "operations", &op.name, "wait"],
                    &[],
                    None,
                    "globalOperations.wait",
                    Group::Operations,
                    Some(WAIT_CALL_TIMEOUT),
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(ProviderError::Api {
                    operation,
                    region: GLOBAL.to_owned(),
                    message: format!(
                        "image '{image}': following operation {}: HTTP {}: {}",
                        op.name,
                        reply.status.as_u16(),
                        reply.message()
                    ),
                });
            }
            op = reply.json("globalOperations.wait")?;
            // `wait` may answer at once, before the operation is done.
            if started.elapsed() < Duration::from_secs(1) && op.status.as_deref() != Some("DONE") {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_failed_operation_says_why() {
        let op: Operation = serde_json::from_value(json!({
            "name": "operation-1", "status": "DONE",
            "error": {"errors": [{"code": "RESOURCE_IN_USE", "message": "in use"}]},
            "httpErrorStatusCode": 400
        }))
        .expect("operation");
        assert_eq!(op.failure().as_deref(), Some("RESOURCE_IN_USE: in use"));
        let ok: Operation =
            serde_json::from_value(json!({"name": "operation-2", "status": "DONE"}))
                .expect("operation");
        assert_eq!(ok.failure(), None);
    }

    #[test]
    fn quota_errors_are_told_from_refusals() {
        let quota = r#"{"error":{"code":403,"message":"Quota exceeded","errors":[{"reason":"rateLimitExceeded","domain":"usageLimits"}]}}"#;
        let refusal = r#"{"error":{"code":403,"message":"Required 'compute.images.get' permission","errors":[{"reason":"forbidden"}]}}"#;
        assert!(rate_limited(quota));
        assert!(!rate_limited(refusal));
        assert_eq!(
            error_message(StatusCode::FORBIDDEN, refusal),
            "Required 'compute.images.get' permission"
        );
    }

    #[test]
    fn operation_names_go_into_urls_only_when_gce_could_have_made_them() {
        assert!(is_operation_name(
            "operation-1733610951123-62a1b2c3d4e5f-ab12cd34-ef56ab78"
        ));
        assert!(!is_operation_name("../x"));
    }
}
