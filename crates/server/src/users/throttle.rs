//! Throttling of password guesses and registrations, on the [`RateLimiter`] trait (so that a Redis
//! implementation can replace the in-process one for several nodes).
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

use portcullis_core::devices::DeviceId;
use portcullis_core::ratelimit::{LoginBackoff, RateDecision, RatePolicy};

use crate::error::{Error, Throttled};
use crate::ratelimit::{RateLimiter, client_bucket};

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
pub fn refused_policy(e: &Error) -> Option<&'static str> {
    match e {
        Error::RateLimited(t) => Some(t.policy),
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

    fn waiting(&self, policy: &'static str, backoff: LoginBackoff, wait: u64) -> Error {
        Error::RateLimited(Throttled {
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
    ) -> Result<Attempt, Error> {
        let p = self.policies;
        let ip_key = match device {
            Some(_) => None,
            None => {
                let key = Self::ip_key(ip);
                let by_ip = self.limiter.check(&key, p.ip, 1).await;
                if !by_ip.allowed {
                    return Err(Error::RateLimited(Throttled {
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
    pub async fn register(&self, ip: IpAddr) -> Result<(), Error> {
        let policy = self.policies.registration_ip;
        let decision = self
            .limiter
            .check(&format!("register:ip:{}", client_bucket(ip)), policy, 1)
            .await;
        if decision.allowed {
            Ok(())
        } else {
            Err(Error::RateLimited(Throttled {
                policy: "registration-ip",
                limit: policy.limit,
                window_s: policy.period_ms / 1000,
                decision,
            }))
        }
    }
}
