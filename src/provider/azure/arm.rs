//! Calls to Azure Resource Manager over kiln's reqwest client: held to the
//! subscription's pace, retried on 429 (after `Retry-After`), 5xx and
//! transport errors, and long-running operations followed to their end.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode, Url, header::HeaderMap};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    ATTEMPTS, Azure, GLOBAL,
    model::{AsyncOperation, CloudError, ErrorDetail, Page},
};
use crate::provider::{
    ProviderError, http,
    pace::{self, BucketKey},
};

/// Pages of a listing at most: a guard against a `nextLink` that never ends.
const MAX_PAGES: u32 = 10_000;

/// An answer kiln reads (2xx) or judges itself (404, 409, ...).
pub(super) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        region: &str,
    ) -> Result<T, ProviderError> {
        serde_json::from_str(&self.body).map_err(|e| ProviderError::Api {
            operation,
            region: region.to_owned(),
            message: format!("unreadable answer (HTTP {}): {e}", self.status.as_u16()),
        })
    }

    /// ARM's `error` (code and message), if the body has one.
    pub fn error(&self) -> ErrorDetail {
        serde_json::from_str::<CloudError>(&self.body)
            .ok()
            .and_then(|e| e.error)
            .unwrap_or_default()
    }

    /// The error as ARM words it: `code: message`.
    pub fn message(&self) -> String {
        describe_error(&self.error(), self.status)
    }

    pub fn unexpected(&self, operation: &'static str, region: &str) -> ProviderError {
        ProviderError::Api {
            operation,
            region: region.to_owned(),
            message: format!("HTTP {}: {}", self.status.as_u16(), self.message()),
        }
    }
}

pub(super) fn describe_error(e: &ErrorDetail, status: StatusCode) -> String {
    let message = e
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
    let text = match e.code.as_deref().filter(|c| !c.is_empty()) {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    };
    // Validation messages can run long.
    if text.chars().count() > 400 {
        format!("{}…", text.chars().take(400).collect::<String>())
    } else {
        text
    }
}

/// Why an attempt is to be repeated, and after how long.
struct Retry {
    wait: Duration,
    last: String,
    rate_limited: bool,
}

impl Azure {
    /// `{endpoint}/{segments}?api-version=…`.
    pub(super) fn url(&self, segments: &[&str], api_version: &str) -> Result<Url, ProviderError> {
        let mut url = self.base.clone().map_err(ProviderError::Misconfigured)?;
        url.path_segments_mut()
            .map_err(|()| {
                ProviderError::Misconfigured("the Azure endpoint cannot take a path".into())
            })?
            .pop_if_empty()
            .extend(segments);
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        Ok(url)
    }

    /// A URL ARM handed out (`nextLink`, `Azure-AsyncOperation`, `Location`)
    /// if it points at the configured endpoint: the token goes nowhere else.
    pub(super) fn follow(&self, link: &str, operation: &'static str) -> Result<Url, ProviderError> {
        let base = self.base.clone().map_err(ProviderError::Misconfigured)?;
        let url = base.join(link.trim()).map_err(|e| ProviderError::Api {
            operation,
            region: GLOBAL.to_owned(),
            message: format!("ARM answered a link that is not a URL ({e})"),
        })?;
        if url.origin() != base.origin() {
            return Err(ProviderError::Api {
                operation,
                region: GLOBAL.to_owned(),
                message: format!(
                    "ARM answered a link to {}, not the endpoint {}; kiln sends its token only to the endpoint",
                    url.origin().ascii_serialization(),
                    base.origin().ascii_serialization()
                ),
            });
        }
        Ok(url)
    }

    fn bucket(&self, method: &Method) -> Option<std::sync::Arc<pace::TokenBucket>> {
        // ARM counts reads and writes apart.
        let (operation, pacing) = if *method == Method::GET {
            ("reads", self.read_pacing)
        } else {
            ("writes", self.write_pacing)
        };
        pace::bucket(
            BucketKey {
                account: self.account.clone(),
                region: GLOBAL.to_owned(),
                operation,
            },
            pacing,
        )
    }

    /// One ARM call in its turn. 401 and 403 are the user's to fix; any
    /// other answer goes back to the caller to judge.
    pub(super) async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        operation: &'static str,
        region: &str,
    ) -> Result<Reply, ProviderError> {
        let bucket = self.bucket(&method);
        let api = |message: String| ProviderError::Api {
            operation,
            region: region.to_owned(),
            message,
        };
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| api(format!("cannot encode the request: {e}")))?;
        let mut backoff = self.backoff_base;
        let mut last = String::new();
        let mut rate_limited = false;
        for attempt in 1..=ATTEMPTS {
            let token = self.auth.token().await?;
            pace::wait_turn(bucket.as_deref()).await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.secret())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let retry = match request.send().await {
                Err(e) => Retry {
                    wait: backoff,
                    last: http::describe(&e),
                    rate_limited: false,
                },
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    match response.text().await {
                        Err(e) => Retry {
                            wait: backoff,
                            last: http::describe(&e),
                            rate_limited: false,
                        },
                        Ok(text) => {
                            let reply = Reply {
                                status,
                                headers,
                                body: text,
                            };
                            match status {
                                StatusCode::TOO_MANY_REQUESTS => Retry {
                                    wait: http::retry_after(&reply.headers).unwrap_or(backoff),
                                    last: format!("HTTP 429: {}", reply.message()),
                                    rate_limited: true,
                                },
                                s if s.is_server_error() => Retry {
                                    wait: http::retry_after(&reply.headers).unwrap_or(backoff),
                                    last: format!("HTTP {}: {}", s.as_u16(), reply.message()),
                                    rate_limited: false,
                                },
                                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                                    return Err(self.refused(&reply, operation));
                                }
                                _ => return Ok(reply),
                            }
                        }
                    }
                }
            };
            if retry.rate_limited
                && let Some(bucket) = &bucket
            {
                // Every call of the principal waits too.
                bucket.throttled();
                bucket.hold_for(retry.wait.min(self.max_wait), Instant::now());
            }
            if retry.wait > self.max_wait {
                return Err(api(format!(
                    "{}, retry after {}s; the call will be retried later",
                    retry.last,
                    retry.wait.as_secs()
                )));
            }
            if attempt < ATTEMPTS {
                tracing::debug!(
                    operation,
                    attempt,
                    wait_ms = u64::try_from(retry.wait.as_millis()).unwrap_or(u64::MAX),
                    last = %retry.last,
                    "ARM call retried"
                );
                tokio::time::sleep(retry.wait).await;
                backoff = (backoff * 2).min(self.max_wait);
            }
            last = retry.last;
            rate_limited = retry.rate_limited;
        }
        Err(api(if rate_limited {
            format!(
                "ARM's request limit for this subscription is exhausted ({last}, {ATTEMPTS} attempts); the call will be retried later"
            )
        } else {
            format!("{last} ({ATTEMPTS} attempts)")
        }))
    }

    /// 401 and 403: the Secret's principal, or its access to the
    /// subscription, which the user must fix.
    fn refused(&self, reply: &Reply, operation: &str) -> ProviderError {
        let error = reply.error();
        let message = reply.message();
        let subscription = &self.settings.subscription_id;
        let client = &self.auth.client_id;
        let code = error.code.unwrap_or_default();
        if reply.status == StatusCode::UNAUTHORIZED {
            if code.eq_ignore_ascii_case("InvalidAuthenticationTokenTenant") {
                return ProviderError::Unauthorized(format!(
                    "subscription {subscription} (spec.provider.azure.subscriptionId) is not in the tenant of AZURE_TENANT_ID in the Secret named by spec.provider.credentials.secretRef ({message}); fix the subscription ID or the tenant"
                ));
            }
            return ProviderError::Unauthorized(format!(
                "Azure Resource Manager refused the token of service principal {client} ({message}); check AZURE_TENANT_ID and AZURE_CLIENT_ID in the Secret named by spec.provider.credentials.secretRef"
            ));
        }
        ProviderError::Unauthorized(format!(
            "service principal {client} (AZURE_CLIENT_ID) has no access to {operation} in subscription {subscription} (spec.provider.azure.subscriptionId), resource group {} ({message}); give it a role there that may read, tag and delete images (such as Contributor on the resource group), or fix the subscription ID",
            self.settings.resource_group
        ))
    }

    /// A GET that must answer 200 (404 is `None`).
    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        operation: &'static str,
        region: &str,
    ) -> Result<Option<T>, ProviderError> {
        let reply = self
            .call::<()>(Method::GET, url, None, operation, region)
            .await?;
        match reply.status {
            StatusCode::OK => reply.json(operation, region).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(reply.unexpected(operation, region)),
        }
    }

    /// Every item of a listing, following `nextLink`.
    pub(super) async fn list<T: DeserializeOwned>(
        &self,
        first: Url,
        operation: &'static str,
    ) -> Result<Option<Vec<T>>, ProviderError> {
        let mut items = Vec::new();
        let mut url = first;
        for _ in 0..MAX_PAGES {
            let Some(page) = self.get_json::<Page<T>>(url, operation, GLOBAL).await? else {
                // The parent (gallery, image definition, resource group) is gone.
                return Ok(None);
            };
            items.extend(page.value);
            match page.next_link.as_deref().filter(|l| !l.trim().is_empty()) {
                Some(next) => url = self.follow(next, operation)?,
                None => return Ok(Some(items)),
            }
        }
        Ok(Some(items))
    }

    /// Follows a long-running operation (PUT, PATCH, DELETE) to its end:
    /// `Azure-AsyncOperation` until `Succeeded`, else `Location` until it
    /// stops answering 202. `what` names the image in errors; `after` says
    /// what a failure leaves.
    pub(super) async fn finish(
        &self,
        reply: &Reply,
        operation: &'static str,
        region: &str,
        what: &str,
        after: &str,
    ) -> Result<(), ProviderError> {
        let header = |name: &str| {
            reply
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (url, by_status) = match (header("azure-asyncoperation"), header("location")) {
            (Some(u), _) => (self.follow(&u, operation)?, true),
            (None, Some(l)) if reply.status == StatusCode::ACCEPTED => {
                (self.follow(&l, operation)?, false)
            }
            _ => return Ok(()),
        };
        // The operation's own ID, for messages (never the URL: it may carry
        // a signature).
        let id = url
            .path_segments()
            .and_then(|mut s| s.next_back().map(str::to_owned))
            .unwrap_or_default();
        let api = |message: String| ProviderError::Api {
            operation,
            region: region.to_owned(),
            message,
        };
        let deadline = Instant::now() + self.operation_timeout;
        let mut wait = http::retry_after(&reply.headers).unwrap_or(self.poll_interval);
        let mut state = "InProgress".to_owned();
        loop {
            if Instant::now() + wait > deadline {
                return Err(api(format!(
                    "{operation} of {what} is still {state} after {}s (operation {id}); kiln looks again later",
                    self.operation_timeout.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
            let poll = self
                .call::<()>(Method::GET, url.clone(), None, operation, region)
                .await?;
            wait = http::retry_after(&poll.headers).unwrap_or(self.poll_interval);
            if !by_status {
                match poll.status {
                    StatusCode::ACCEPTED => continue,
                    s if s.is_success() => return Ok(()),
                    _ => {
                        return Err(api(format!(
                            "{operation} of {what} failed (operation {id}): {}; {after}",
                            poll.message()
                        )));
                    }
                }
            }
            if poll.status != StatusCode::OK {
                return Err(poll.unexpected(operation, region));
            }
            let status: AsyncOperation = poll.json(operation, region)?;
            match status.status.as_str() {
                "Succeeded" => return Ok(()),
                "Failed" | "Canceled" => {
                    let detail = status
                        .error
                        .map(|e| describe_error(&e, StatusCode::OK))
                        .unwrap_or_else(|| "no reason given".to_owned());
                    return Err(api(format!(
                        "{operation} of {what} ended {} (operation {id}): {detail}; {after}",
                        status.status
                    )));
                }
                other => state = other.to_owned(),
            }
        }
    }
}
