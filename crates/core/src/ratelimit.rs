//! The rate-limit algorithms, as pure functions of stored state and the current time, so that the
//! in-process limiter and the Redis one (a later issue) share one definition.
//!
//! * [`gcra`]: the Generic Cell Rate Algorithm. State is one number, the theoretical arrival time
//!   (TAT); a policy of `limit` requests per `period` allows bursts of `limit` and refills smoothly.
//! * [`LoginBackoff`]: consecutive failed logins of one account buy growing waits (NIST SP 800-63B-4
//!   §3.2.2), capped so that a legitimate user is never locked out for long, and sized so that an
//!   attacker gets fewer than 100 guesses per account per day.

/// `limit` requests per `period_ms`, in bursts of up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RatePolicy {
    pub limit: u32,
    pub period_ms: u64,
}

/// The answer for one request, with what the IETF `RateLimit` header reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Milliseconds until the quota is fully restored.
    pub reset_ms: u64,
    /// When refused: milliseconds until one request would be allowed.
    pub retry_after_ms: u64,
}

pub mod gcra {
    use super::{RateDecision, RatePolicy};

    /// Decides a request of `cost` at `now_ms` given the stored TAT; returns the decision and the TAT
    /// to store (unchanged when refused).
    pub fn check(
        tat: Option<i64>,
        now_ms: i64,
        policy: RatePolicy,
        cost: u32,
    ) -> (RateDecision, i64) {
        let limit = i64::from(policy.limit.max(1));
        let period = i64::try_from(policy.period_ms.max(1)).unwrap_or(i64::MAX);
        let interval = (period / limit).max(1);
        let tat = tat.unwrap_or(now_ms).max(now_ms);
        let new_tat = tat.saturating_add(interval.saturating_mul(i64::from(cost)));
        let allow_at = new_tat - period;
        if now_ms < allow_at {
            let decision = RateDecision {
                allowed: false,
                remaining: 0,
                reset_ms: (tat - now_ms).max(0) as u64,
                retry_after_ms: (allow_at - now_ms).max(0) as u64,
            };
            return (decision, tat);
        }
        let remaining = ((period - (new_tat - now_ms)) / interval).clamp(0, limit) as u32;
        let decision = RateDecision {
            allowed: true,
            remaining,
            reset_ms: (new_tat - now_ms).max(0) as u64,
            retry_after_ms: 0,
        };
        (decision, new_tat)
    }

    /// Gives back `cost` requests taken earlier (a login that turned out to be right): the TAT moves
    /// back by their share of the period, never before `now_ms`.
    pub fn refund(tat: i64, now_ms: i64, policy: RatePolicy, cost: u32) -> i64 {
        let limit = i64::from(policy.limit.max(1));
        let period = i64::try_from(policy.period_ms.max(1)).unwrap_or(i64::MAX);
        let interval = (period / limit).max(1);
        tat.saturating_sub(interval.saturating_mul(i64::from(cost)))
            .max(now_ms)
    }
}

/// Growing waits after consecutive failed logins of one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoginBackoff {
    /// Failures allowed before any wait.
    pub free_failures: u32,
    /// The first wait; each further failure doubles it.
    pub base_wait_ms: u64,
    /// The longest wait: a user is never locked out for longer than this after the last failure.
    pub max_wait_ms: u64,
    /// A run of failures is forgotten this long after its last failure.
    pub forget_after_ms: u64,
}

impl Default for LoginBackoff {
    /// 5 free failures, then 1 s, 2 s, 4 s … capped at 20 min: at most about 86 guesses per account per
    /// day, under NIST's limit of 100 consecutive failures, while the real user waits at most 20 min.
    fn default() -> Self {
        Self {
            free_failures: 5,
            base_wait_ms: 1_000,
            max_wait_ms: 20 * 60 * 1000,
            forget_after_ms: 24 * 3600 * 1000,
        }
    }
}

impl LoginBackoff {
    /// How long after the last failure the next attempt must wait, given the failures so far.
    pub fn wait_ms(&self, failures: u32) -> u64 {
        if failures < self.free_failures {
            return 0;
        }
        let doublings = (failures - self.free_failures).min(40);
        self.base_wait_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_wait_ms)
    }

    /// Milliseconds the caller must still wait, or 0 when an attempt is allowed now.
    pub fn retry_after_ms(&self, failures: u32, last_failure_ms: i64, now_ms: i64) -> u64 {
        let since = (now_ms - last_failure_ms).max(0) as u64;
        if since >= self.forget_after_ms {
            return 0;
        }
        self.wait_ms(failures).saturating_sub(since)
    }

    /// The failure count after one more failure at `now_ms`.
    pub fn record_failure(&self, failures: u32, last_failure_ms: i64, now_ms: i64) -> u32 {
        if (now_ms - last_failure_ms).max(0) as u64 >= self.forget_after_ms {
            1
        } else {
            failures.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: RatePolicy = RatePolicy {
        limit: 10,
        period_ms: 1000,
    };

    #[test]
    fn gcra_allows_a_burst_of_limit_then_refuses_then_refills() {
        let mut tat = None;
        for i in 0..10 {
            let (d, t) = gcra::check(tat, 0, P, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = Some(t);
        }
        let (d, _) = gcra::check(tat, 0, P, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 100);
        let (d, _) = gcra::check(tat, 100, P, 1);
        assert!(d.allowed);
    }

    #[test]
    fn a_refund_gives_back_what_was_taken_and_no_more() {
        let (_, tat) = gcra::check(None, 0, P, 1);
        let (_, tat) = gcra::check(Some(tat), 0, P, 1);
        assert_eq!(tat, 200);
        assert_eq!(gcra::refund(tat, 0, P, 1), 100);
        assert_eq!(gcra::refund(tat, 150, P, 1), 150);
        assert_eq!(gcra::refund(tat, 0, P, 5), 0);
    }

    #[test]
    fn backoff_grows_caps_and_is_forgotten() {
        let b = LoginBackoff::default();
        assert_eq!(b.wait_ms(4), 0);
        assert_eq!(b.wait_ms(5), 1_000);
        assert_eq!(b.wait_ms(7), 4_000);
        assert_eq!(b.wait_ms(100), 20 * 60 * 1000);
        assert_eq!(b.retry_after_ms(7, 0, 1_000), 3_000);
        assert_eq!(b.retry_after_ms(100, 0, 24 * 3600 * 1000), 0);
        assert_eq!(b.record_failure(50, 0, 24 * 3600 * 1000), 1);
    }

    /// Guesses one attacker gets in a day against `b`, guessing as soon as each wait ends.
    fn guesses_a_day(b: LoginBackoff) -> u32 {
        let (mut failures, mut now, mut last) = (0u32, 0i64, i64::MIN / 2);
        while now < 24 * 3600 * 1000 {
            now += b.retry_after_ms(failures, last, now) as i64;
            failures = b.record_failure(failures, last, now);
            last = now;
            now += 1;
        }
        failures
    }

    #[test]
    fn backoff_allows_fewer_than_100_guesses_a_day() {
        let per_client = guesses_a_day(LoginBackoff::default());
        assert!(per_client < 100, "{per_client} guesses in a day");
        // The account-wide ceiling (10 free failures by default) holds under NIST's 100 as well: it is
        // what bounds an attacker who spreads guesses over many addresses.
        let account_wide = guesses_a_day(LoginBackoff {
            free_failures: 10,
            ..LoginBackoff::default()
        });
        assert!(account_wide < 100, "{account_wide} guesses in a day");
        assert!(account_wide > per_client);
    }

    #[test]
    fn the_window_bound_is_tight() {
        // A full burst at 0, then one request at each refill: exactly 19 in [0, 1000).
        let mut tat = None;
        let mut allowed = 0;
        for now in std::iter::repeat_n(0, 10).chain((1..10).map(|i| i * 100)) {
            let (d, t) = gcra::check(tat, now, P, 1);
            tat = Some(t);
            allowed += usize::from(d.allowed);
        }
        assert_eq!(allowed, 19);
        assert!(!gcra::check(tat, 950, P, 1).0.allowed);
    }

    proptest! {
        #[test]
        fn gcra_never_allows_more_than_the_burst_plus_the_refill(times in proptest::collection::vec(0i64..5_000, 1..200)) {
            let mut times = times;
            times.sort_unstable();
            let mut tat = None;
            let mut allowed = Vec::new();
            for now in times {
                let (d, t) = gcra::check(tat, now, P, 1);
                tat = Some(t);
                if d.allowed { allowed.push(now); }
            }
            // A burst of `limit`, plus what refills during the window itself: one per 100 ms, so at
            // t+100 … t+900 (the window [t, t+1000) holds nine refills).
            for (i, start) in allowed.iter().enumerate() {
                let in_window = allowed.iter().skip(i).take_while(|t| **t < start + 1000).count();
                prop_assert!(in_window <= 10 + 9, "{} allowed within 1 s", in_window);
            }
        }
    }
}
