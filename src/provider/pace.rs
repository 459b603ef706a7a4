//! Holding calls to a cloud's rate: token buckets shared by every provider
//! value of the process, one per account, region and API, as clouds
//! throttle.

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::Pacing;

/// Which token bucket: the provider names the account (endpoint and a
/// credential's public part), the region and the API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BucketKey {
    /// The cloud and account, as the provider tells them apart.
    pub account: String,
    /// Region (or "global").
    pub region: String,
    /// The API or category of calls.
    pub operation: &'static str,
}

static BUCKETS: LazyLock<Mutex<BTreeMap<BucketKey, Arc<TokenBucket>>>> =
    LazyLock::new(Mutex::default);

/// The bucket for `key`, made with `pacing` on first use; `None` when
/// `pacing` has no limit.
pub fn bucket(key: BucketKey, pacing: Pacing) -> Option<Arc<TokenBucket>> {
    if !pacing.is_limited() {
        return None;
    }
    Some(
        BUCKETS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert_with(|| Arc::new(TokenBucket::new(pacing, Instant::now())))
            .clone(),
    )
}

/// Waits for a call's turn in `bucket`, if there is one.
pub async fn wait_turn(bucket: Option<&TokenBucket>) {
    let Some(bucket) = bucket else { return };
    let wait = bucket.take(Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// A token bucket, as clouds throttle with: up to `burst` calls at once,
/// then `requests_per_second`. A call takes a token now or reserves the next
/// one to come (the count goes below zero), so callers queue in arrival
/// order.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    // Tokens (below zero: reserved ahead) as of the instant.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(pacing: Pacing, now: Instant) -> TokenBucket {
        let burst = f64::from(pacing.burst.max(1));
        TokenBucket {
            rate: pacing.requests_per_second,
            burst,
            state: Mutex::new((burst, now)),
        }
    }

    /// Takes a token at `now`; returns how long to wait before the call.
    pub fn take(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, at) = &mut *state;
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst) - 1.0;
        *at = (*at).max(now);
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }

    /// The cloud throttled a call all the same (someone else shares the
    /// account's bucket): what is left of the burst is not there.
    pub fn throttled(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.min(0.0);
    }

    /// The cloud said how long to wait (`Retry-After`): no call goes before.
    pub fn hold_for(&self, wait: Duration, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let owed = wait.as_secs_f64() * self.rate;
        state.0 = state.0.min(-owed);
        state.1 = state.1.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(burst: u32, requests_per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket::new(
            Pacing {
                concurrency: 1,
                requests_per_second,
                burst,
            },
            now,
        )
    }

    #[test]
    fn the_bucket_lets_a_burst_go_then_queues_calls_at_the_rate() {
        let t0 = Instant::now();
        let b = bucket(3, 2.0, t0);
        let waits: Vec<Duration> = (0..6).map(|_| b.take(t0)).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 0, 500, 1000, 1500]);
        // Once the queue has gone, the bucket refills, never past the burst.
        let later = t0 + Duration::from_secs(60);
        let ms: Vec<u128> = (0..4).map(|_| b.take(later).as_millis()).collect();
        assert_eq!(ms, [0, 0, 0, 500]);
    }

    #[test]
    fn a_throttled_call_gives_up_the_burst_left() {
        let t0 = Instant::now();
        let b = bucket(50, 4.0, t0);
        assert_eq!(b.take(t0), Duration::ZERO);
        b.throttled();
        assert_eq!(b.take(t0).as_millis(), 250);
    }

    #[test]
    fn retry_after_holds_every_call() {
        let t0 = Instant::now();
        let b = bucket(10, 2.0, t0);
        b.hold_for(Duration::from_secs(3), t0);
        assert_eq!(b.take(t0), Duration::from_millis(3500));
    }
}
