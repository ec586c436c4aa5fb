//! Rate-limit state behind one trait, so that a Redis implementation can replace the in-process one
//! for several nodes (the issue "Several nodes"); the algorithms themselves are pure functions in
//! `portcullis_core::ratelimit`, shared by both.

use std::net::IpAddr;
use std::time::Duration;

use moka::ops::compute::Op;
use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::ratelimit::{LoginBackoff, RateDecision, RatePolicy, gcra};

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

/// What limits count as one client: an IPv4 address, or the /64 of an IPv6 one (one customer's
/// network usually gets a whole /64, so one address each would be no limit at all).
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_ne!(client_bucket(a), client_bucket(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_bucket(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
