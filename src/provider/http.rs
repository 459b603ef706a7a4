//! The HTTP client of the providers that have no official Rust SDK
//! (OpenStack, DigitalOcean): one reqwest client per provider value, so one
//! connection pool, with timeouts, and errors that never carry a credential.

use std::time::Duration;

/// How long one call may take before it counts as failed (and is retried).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for one provider value. Credentials go in headers only, never
/// in URLs, so that error messages (which name the URL) carry none.
pub fn client() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(CALL_TIMEOUT)
        .build()
        // Only a TLS backend that cannot start fails here; the default
        // client has the same one.
        .unwrap_or_default()
}

/// A transport error as a short message: what failed and where, without
/// the request.
pub fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_decode() {
        "unreadable answer"
    } else {
        "request failed"
    };
    match e.url() {
        Some(url) => format!(
            "{what}: {}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        None => what.to_owned(),
    }
}

/// `Retry-After` in seconds (the form DigitalOcean and Glance send), at
/// most a minute.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(60)))
}
