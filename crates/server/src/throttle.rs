//! Throttling of password guesses and registrations. Everything runs on the [`RateLimiter`] trait so
//! that a Redis implementation can replace the in-process one for several nodes; the algorithms live
//! in `portcullis_core::ratelimit`.
//!
//! A login attempt is **reserved before the password is hashed**, atomically per key: the attempt
//! counts as a failure from the moment it is admitted, and only a correct password takes it back. So
//! 300 guesses released at the same instant are decided one at a time against the counters, exactly as
//! if they had come one after another: the free allowance admits that many, the rest are refused
//! before any hashing. (Recording failures after the hash, as an earlier release did, let every one of
//! them through.)
//!
//! Who is charged:
//! * the **client IP** (GCRA, `login_ip_limit` per `login_ip_period_s`; an IPv6 /64 is one client),
//!   taken on every attempt and given back on success, so one address cannot spray many accounts;
//! * **(account, client)**: growing waits after `login_free_failures`, so a guesser at one address
//!   locks out only that address;
//! * **the account from everywhere**: growing waits after `login_account_free_failures` (more), which
//!   bounds an attacker spread over many addresses to fewer than 100 guesses a day (NIST SP 800-63B-4
//!   §3.2.2);
//! * a **known device** (a signed cookie from an earlier successful login, see
//!   `portcullis_core::devices`) is charged on its own (account, device) counter only: neither the
//!   IP limit nor the account-wide waits hold it, so an attacker cannot lock the real user out of a
//!   device they have used before, even from behind the same shared address.
//!
//! Unknown accounts are throttled exactly like real ones, so a 429 says nothing about whether an
//! account exists.

use std::net::IpAddr;
use std::time::Duration;

use moka::ops::compute::Op;
use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::devices::DeviceId;
use portcullis_core::ratelimit::{LoginBackoff, RateDecision, RatePolicy, gcra};

use crate::error::{ApiError, Throttled};
use crate::listener::client_bucket;

/// Rate-limit state keyed by string. Every operation is atomic per key.
pub trait RateLimiter: Send + Sync {
    /// Takes `cost` from the key's GCRA allowance if it has that much.
    fn check(
        &self,
        key: &str,
        policy: RatePolicy,
        cost: u32,
    ) -> impl Future<Output = RateDecision> + Send;
    /// Gives back `cost` taken earlier.
    fn refund(&self, key: &str, policy: RatePolicy, cost: u32) -> impl Future<Output = ()> + Send;
    /// Counts one more failure unless the backoff says to wait: `0` when reserved, else the
    /// milliseconds still to wait (and nothing counted).
    fn reserve_failure(&self, key: &str, backoff: LoginBackoff)
    -> impl Future<Output = u64> + Send;
    /// Takes back one failure counted by [`Self::reserve_failure`] (an attempt that never ran).
    fn release_failure(&self, key: &str) -> impl Future<Output = ()> + Send;
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

    async fn refund(&self, key: &str, policy: RatePolicy, cost: u32) {
        let now = Millis::now().0;
        self.tats
            .entry(key.to_owned())
            .and_compute_with(|entry| match entry {
                Some(e) => Op::Put(gcra::refund(e.into_value(), now, policy, cost)),
                None => Op::Nop,
            });
    }

    async fn reserve_failure(&self, key: &str, backoff: LoginBackoff) -> u64 {
        let now = Millis::now().0;
        let mut wait = 0;
        self.failures
            .entry(key.to_owned())
            .and_compute_with(|entry| {
                let (n, last) = entry.map(|e| e.into_value()).unwrap_or((0, 0));
                wait = backoff.retry_after_ms(n, last, now);
                if wait > 0 {
                    Op::Nop
                } else {
                    Op::Put((backoff.record_failure(n, last, now), now))
                }
            });
        wait
    }

    async fn release_failure(&self, key: &str) {
        self.failures
            .entry(key.to_owned())
            .and_compute_with(|entry| match entry.map(|e| e.into_value()) {
                Some((n, last)) if n > 1 => Op::Put((n - 1, last)),
                Some(_) => Op::Remove,
                None => Op::Nop,
            });
    }

    async fn clear_failures(&self, key: &str) {
        self.failures.invalidate(key);
    }
}

/// The policies of [`LoginThrottle`].
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicies {
    pub ip: RatePolicy,
    /// Per (account, client): an address or a known device.
    pub per_client: LoginBackoff,
    /// Per account, from every client that is not a known device.
    pub per_account: LoginBackoff,
    pub registration_ip: RatePolicy,
}

/// The login and registration throttle.
pub struct LoginThrottle<L> {
    limiter: L,
    policies: LoginPolicies,
}

/// An admitted password check, counted as a failure until [`LoginThrottle::succeeded`] says
/// otherwise. Dropping it leaves it counted: an attempt whose outcome is unknown is a failure.
#[must_use = "an attempt must end in succeeded, failed or abandon"]
pub struct Attempt {
    /// The IP allowance it took, when it took one (known devices take none).
    ip_key: Option<String>,
    client_key: String,
    /// The account-wide counter, when it was charged (not for known devices).
    account_key: Option<String>,
}

/// Why a throttle refused, for the aggregated audit event.
pub fn refused_policy(e: &ApiError) -> Option<&'static str> {
    match e {
        ApiError::RateLimited(t) => Some(t.policy),
        _ => None,
    }
}

impl<L: RateLimiter> LoginThrottle<L> {
    pub fn new(limiter: L, policies: LoginPolicies) -> Self {
        Self { limiter, policies }
    }

    fn ip_key(ip: IpAddr) -> String {
        format!("login:ip:{}", client_bucket(ip))
    }

    fn waiting(&self, policy: &'static str, backoff: LoginBackoff, wait: u64) -> ApiError {
        ApiError::RateLimited(Throttled {
            policy,
            limit: backoff.free_failures,
            window_s: backoff.max_wait_ms / 1000,
            decision: RateDecision {
                allowed: false,
                remaining: 0,
                reset_ms: wait,
                retry_after_ms: wait,
            },
        })
    }

    /// Admits one password check of `account` (an email key) from `ip`, or refuses it before any
    /// hashing. `device`: the known device the request proved, if any.
    pub async fn begin(
        &self,
        ip: IpAddr,
        account: &str,
        device: Option<&DeviceId>,
    ) -> Result<Attempt, ApiError> {
        let p = self.policies;
        let ip_key = match device {
            Some(_) => None,
            None => {
                let key = Self::ip_key(ip);
                let by_ip = self.limiter.check(&key, p.ip, 1).await;
                if !by_ip.allowed {
                    return Err(ApiError::RateLimited(Throttled {
                        policy: "login-ip",
                        limit: p.ip.limit,
                        window_s: p.ip.period_ms / 1000,
                        decision: by_ip,
                    }));
                }
                Some(key)
            }
        };
        let client_key = match device {
            Some(d) => format!("login:dev:{account}:{}", d.0),
            None => format!("login:client:{account}:{}", client_bucket(ip)),
        };
        let wait = self
            .limiter
            .reserve_failure(&client_key, p.per_client)
            .await;
        if wait > 0 {
            return Err(self.waiting("login-account", p.per_client, wait));
        }
        let account_key = match device {
            Some(_) => None,
            None => {
                let key = format!("login:acct:{account}");
                let wait = self.limiter.reserve_failure(&key, p.per_account).await;
                if wait > 0 {
                    self.limiter.release_failure(&client_key).await;
                    return Err(self.waiting("login-account", p.per_account, wait));
                }
                Some(key)
            }
        };
        Ok(Attempt {
            ip_key,
            client_key,
            account_key,
        })
    }

    /// The password was right: the attempt is not a failure after all, and earlier failures of this
    /// client (and, from a client that is not a known device, of the account) are forgotten.
    pub async fn succeeded(&self, a: Attempt) {
        self.limiter.clear_failures(&a.client_key).await;
        if let Some(k) = &a.account_key {
            self.limiter.clear_failures(k).await;
        }
        if let Some(k) = &a.ip_key {
            self.limiter.refund(k, self.policies.ip, 1).await;
        }
    }

    /// The password was wrong: the attempt stays counted.
    pub fn failed(&self, _: Attempt) {}

    /// The check never ran (the hashing queue was full): nothing is counted.
    pub async fn abandon(&self, a: Attempt) {
        self.limiter.release_failure(&a.client_key).await;
        if let Some(k) = &a.account_key {
            self.limiter.release_failure(k).await;
        }
        if let Some(k) = &a.ip_key {
            self.limiter.refund(k, self.policies.ip, 1).await;
        }
    }

    /// Takes one registration from the client's allowance, or refuses it.
    pub async fn register(&self, ip: IpAddr) -> Result<(), ApiError> {
        let policy = self.policies.registration_ip;
        let decision = self
            .limiter
            .check(&format!("register:ip:{}", client_bucket(ip)), policy, 1)
            .await;
        if decision.allowed {
            Ok(())
        } else {
            Err(ApiError::RateLimited(Throttled {
                policy: "registration-ip",
                limit: policy.limit,
                window_s: policy.period_ms / 1000,
                decision,
            }))
        }
    }
}
