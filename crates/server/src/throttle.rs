//! Throttling of failed logins, per client IP (GCRA) and per account (growing waits). Both run on the
//! [`RateLimiter`] trait so that a Redis implementation can replace the in-process one for several
//! nodes; the algorithms themselves live in `portcullis_core::ratelimit`.
//!
//! Only failures are charged: a user who logs in correctly is never slowed down. Unknown accounts are
//! throttled exactly like real ones, so a 429 says nothing about whether an account exists.

use std::time::Duration;

use moka::ops::compute::Op;
use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::ratelimit::{LoginBackoff, RateDecision, RatePolicy, gcra};

use crate::error::{ApiError, Throttled};

/// Rate-limit state keyed by string. `check` consumes, `peek` only looks.
pub trait RateLimiter: Send + Sync {
    fn check(
        &self,
        key: &str,
        policy: RatePolicy,
        cost: u32,
    ) -> impl Future<Output = RateDecision> + Send;
    fn peek(&self, key: &str, policy: RatePolicy) -> impl Future<Output = RateDecision> + Send;
    /// Consecutive-failure state for growing waits: `(failures, last_failure_ms)`.
    fn failures(&self, key: &str) -> impl Future<Output = (u32, i64)> + Send;
    fn record_failure(&self, key: &str, backoff: LoginBackoff) -> impl Future<Output = ()> + Send;
    fn clear_failures(&self, key: &str) -> impl Future<Output = ()> + Send;
}

/// In-process limiter: GCRA TATs and failure counters in bounded caches whose entries expire when
/// they no longer matter.
pub struct MemoryLimiter {
    tats: Cache<String, i64>,
    failures: Cache<String, (u32, i64)>,
}

impl MemoryLimiter {
    pub fn new(max_period: Duration, forget_after: Duration) -> Self {
        Self {
            tats: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(max_period)
                .build(),
            failures: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(forget_after)
                .build(),
        }
    }
}

impl RateLimiter for MemoryLimiter {
    async fn check(&self, key: &str, policy: RatePolicy, cost: u32) -> RateDecision {
        let now = Millis::now().0;
        let mut decision = None;
        // `and_compute_with` runs atomically per key, so concurrent requests cannot both pass on the
        // same stored TAT.
        self.tats.entry(key.to_owned()).and_compute_with(|entry| {
            let (d, tat) = gcra::check(entry.map(|e| e.into_value()), now, policy, cost);
            decision = Some(d);
            if d.allowed { Op::Put(tat) } else { Op::Nop }
        });
        decision.unwrap_or(RateDecision {
            allowed: false,
            remaining: 0,
            reset_ms: 0,
            retry_after_ms: 1000,
        })
    }

    async fn peek(&self, key: &str, policy: RatePolicy) -> RateDecision {
        gcra::check(self.tats.get(key), Millis::now().0, policy, 1).0
    }

    async fn failures(&self, key: &str) -> (u32, i64) {
        self.failures.get(key).unwrap_or((0, 0))
    }

    async fn record_failure(&self, key: &str, backoff: LoginBackoff) {
        let now = Millis::now().0;
        self.failures
            .entry(key.to_owned())
            .and_compute_with(|entry| {
                let (n, last) = entry.map(|e| e.into_value()).unwrap_or((0, 0));
                Op::Put((backoff.record_failure(n, last, now), now))
            });
    }

    async fn clear_failures(&self, key: &str) {
        self.failures.invalidate(key);
    }
}

/// The login throttle: one GCRA policy per IP, growing waits per account.
pub struct LoginThrottle<L> {
    limiter: L,
    ip_policy: RatePolicy,
    backoff: LoginBackoff,
}

impl<L: RateLimiter> LoginThrottle<L> {
    pub fn new(limiter: L, ip_policy: RatePolicy, backoff: LoginBackoff) -> Self {
        Self {
            limiter,
            ip_policy,
            backoff,
        }
    }

    fn ip_key(ip: &std::net::IpAddr) -> String {
        format!("login:ip:{ip}")
    }

    fn account_key(email_key: &str) -> String {
        format!("login:acct:{email_key}")
    }

    /// Refuses before any password work when either limit is exhausted.
    pub async fn admit(&self, ip: &std::net::IpAddr, email_key: &str) -> Result<(), ApiError> {
        let by_ip = self.limiter.peek(&Self::ip_key(ip), self.ip_policy).await;
        if !by_ip.allowed {
            return Err(ApiError::RateLimited(Throttled {
                policy: "login-ip",
                limit: self.ip_policy.limit,
                window_s: self.ip_policy.period_ms / 1000,
                decision: by_ip,
            }));
        }
        let (failures, last) = self.limiter.failures(&Self::account_key(email_key)).await;
        let wait = self.backoff.retry_after_ms(failures, last, Millis::now().0);
        if wait > 0 {
            return Err(ApiError::RateLimited(Throttled {
                policy: "login-account",
                limit: self.backoff.free_failures,
                window_s: self.backoff.max_wait_ms / 1000,
                decision: RateDecision {
                    allowed: false,
                    remaining: 0,
                    reset_ms: wait,
                    retry_after_ms: wait,
                },
            }));
        }
        Ok(())
    }

    pub async fn failed(&self, ip: &std::net::IpAddr, email_key: &str) {
        let _ = self
            .limiter
            .check(&Self::ip_key(ip), self.ip_policy, 1)
            .await;
        self.limiter
            .record_failure(&Self::account_key(email_key), self.backoff)
            .await;
    }

    pub async fn succeeded(&self, email_key: &str) {
        self.limiter
            .clear_failures(&Self::account_key(email_key))
            .await;
    }
}
