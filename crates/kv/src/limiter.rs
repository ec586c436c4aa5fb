//! Rate-limit state keyed by string, behind one trait: [`MemoryLimiter`] for one node, [`RedisLimiter`]
//! for several (the same GCRA and login backoff, each step one Lua script, so N nodes together allow
//! exactly the configured rate), and [`Limiter`], the one a service holds. When Redis cannot be
//! reached a [`RedisLimiter`] answers from its own in-process state (per-node limits) until it can.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moka::ops::compute::Op;
use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::ratelimit::{LoginBackoff, RateDecision, RatePolicy, gcra};

use crate::redis::Redis;

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

/// GCRA on Redis: the same arithmetic as `portcullis_core::ratelimit::gcra::check` (which the tests
/// compare it with), in one script so that concurrent nodes cannot both pass on one stored TAT.
const CHECK: &str = r#"
local now = tonumber(ARGV[1])
local limit = math.max(tonumber(ARGV[2]), 1)
local period = math.max(tonumber(ARGV[3]), 1)
local cost = tonumber(ARGV[4])
local interval = math.max(math.floor(period / limit), 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, math.max(tat - now, 0), math.max(allow_at - now, 0)}
end
local remaining = math.floor((period - (new_tat - now)) / interval)
if remaining < 0 then remaining = 0 end
if remaining > limit then remaining = limit end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(new_tat - now, 1) + 1000)
return {1, remaining, math.max(new_tat - now, 0), 0}
"#;

const REFUND: &str = r#"
local now = tonumber(ARGV[1])
local limit = math.max(tonumber(ARGV[2]), 1)
local period = math.max(tonumber(ARGV[3]), 1)
local cost = tonumber(ARGV[4])
local interval = math.max(math.floor(period / limit), 1)
local tat = redis.call('GET', KEYS[1])
if not tat then return 0 end
local new_tat = math.max(tonumber(tat) - interval * cost, now)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(new_tat - now, 1) + 1000)
return 1
"#;

/// `LoginBackoff::retry_after_ms` and `record_failure` on a hash {n, last}.
const RESERVE_FAILURE: &str = r#"
local now = tonumber(ARGV[1])
local free = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local forget = tonumber(ARGV[5])
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or 0)
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or 0)
local since = math.max(now - last, 0)
local wait = 0
if since < forget and n >= free then
  local doublings = math.min(n - free, 40)
  wait = math.min(base * (2 ^ doublings), max_wait)
  wait = math.max(wait - since, 0)
end
if wait > 0 then return wait end
if since >= forget then n = 1 else n = n + 1 end
redis.call('HSET', KEYS[1], 'n', n, 'last', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], forget)
return 0
"#;

const RELEASE_FAILURE: &str = r#"
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or 0)
if n > 1 then redis.call('HSET', KEYS[1], 'n', n - 1) else redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Rate limits shared by every node through Redis, keys under `<prefix>:rl:`.
pub struct RedisLimiter {
    redis: Arc<Redis>,
    fallback: MemoryLimiter,
    degraded: AtomicBool,
    check: ::redis::Script,
    refund: ::redis::Script,
    reserve: ::redis::Script,
    release: ::redis::Script,
}

impl RedisLimiter {
    /// `fallback` answers while Redis cannot.
    pub fn new(redis: Arc<Redis>, fallback: MemoryLimiter) -> Self {
        Self {
            redis,
            fallback,
            degraded: AtomicBool::new(false),
            check: ::redis::Script::new(CHECK),
            refund: ::redis::Script::new(REFUND),
            reserve: ::redis::Script::new(RESERVE_FAILURE),
            release: ::redis::Script::new(RELEASE_FAILURE),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}:rl:{key}", self.redis.prefix())
    }

    /// Whether the last call fell back to per-node state.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn outcome<T>(&self, op: &'static str, r: Result<T, ::redis::RedisError>) -> Option<T> {
        match r {
            Ok(v) => {
                self.degraded.store(false, Ordering::Relaxed);
                Some(v)
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, op, "Redis is unreachable: rate limits are per node until it is back");
                }
                metrics::counter!("portcullis_redis_errors_total", "op" => op).increment(1);
                None
            }
        }
    }
}

impl RateLimiter for RedisLimiter {
    async fn check(&self, key: &str, policy: RatePolicy, cost: u32) -> RateDecision {
        let mut c = self.redis.conn();
        let mut inv = self.check.key(self.key(key));
        inv.arg(Millis::now().0)
            .arg(policy.limit)
            .arg(policy.period_ms)
            .arg(cost);
        let r: Result<(i64, i64, i64, i64), _> =
            self.redis.timed("rl_check", inv.invoke_async(&mut c)).await;
        match self.outcome("rl_check", r) {
            Some((allowed, remaining, reset, retry)) => RateDecision {
                allowed: allowed == 1,
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset_ms: u64::try_from(reset).unwrap_or(0),
                retry_after_ms: u64::try_from(retry).unwrap_or(0),
            },
            None => self.fallback.check(key, policy, cost).await,
        }
    }

    async fn refund(&self, key: &str, policy: RatePolicy, cost: u32) {
        let mut c = self.redis.conn();
        let mut inv = self.refund.key(self.key(key));
        inv.arg(Millis::now().0)
            .arg(policy.limit)
            .arg(policy.period_ms)
            .arg(cost);
        let r: Result<i64, _> = self
            .redis
            .timed("rl_refund", inv.invoke_async(&mut c))
            .await;
        if self.outcome("rl_refund", r).is_none() {
            self.fallback.refund(key, policy, cost).await;
        }
    }

    async fn reserve_failure(&self, key: &str, backoff: LoginBackoff) -> u64 {
        let mut c = self.redis.conn();
        let mut inv = self.reserve.key(self.key(key));
        inv.arg(Millis::now().0)
            .arg(backoff.free_failures)
            .arg(backoff.base_wait_ms)
            .arg(backoff.max_wait_ms)
            .arg(backoff.forget_after_ms);
        let r: Result<u64, _> = self.redis.timed("rl_fail", inv.invoke_async(&mut c)).await;
        match self.outcome("rl_fail", r) {
            Some(wait) => wait,
            None => self.fallback.reserve_failure(key, backoff).await,
        }
    }

    async fn release_failure(&self, key: &str) {
        let mut c = self.redis.conn();
        let inv = self.release.key(self.key(key));
        let r: Result<i64, _> = self
            .redis
            .timed("rl_release", inv.invoke_async(&mut c))
            .await;
        if self.outcome("rl_release", r).is_none() {
            self.fallback.release_failure(key).await;
        }
    }

    async fn clear_failures(&self, key: &str) {
        let mut c = self.redis.conn();
        let k = self.key(key);
        let r: Result<i64, _> = self
            .redis
            .timed("rl_clear", ::redis::cmd("DEL").arg(k).query_async(&mut c))
            .await;
        if self.outcome("rl_clear", r).is_none() {
            self.fallback.clear_failures(key).await;
        }
    }
}

/// The limiter a service holds: in-process, or on Redis.
pub enum Limiter {
    Memory(MemoryLimiter),
    Redis(Box<RedisLimiter>),
}

impl Limiter {
    /// On Redis when there is one, else in-process; `max_period` and `forget_after` size the
    /// in-process state (also the Redis limiter's fallback).
    pub fn new(redis: Option<&Arc<Redis>>, max_period: Duration, forget_after: Duration) -> Self {
        let memory = MemoryLimiter::new(max_period, forget_after);
        match redis {
            Some(r) => Self::Redis(Box::new(RedisLimiter::new(Arc::clone(r), memory))),
            None => Self::Memory(memory),
        }
    }
}

impl RateLimiter for Limiter {
    async fn check(&self, key: &str, policy: RatePolicy, cost: u32) -> RateDecision {
        match self {
            Self::Memory(m) => m.check(key, policy, cost).await,
            Self::Redis(r) => r.check(key, policy, cost).await,
        }
    }

    async fn refund(&self, key: &str, policy: RatePolicy, cost: u32) {
        match self {
            Self::Memory(m) => m.refund(key, policy, cost).await,
            Self::Redis(r) => r.refund(key, policy, cost).await,
        }
    }

    async fn reserve_failure(&self, key: &str, backoff: LoginBackoff) -> u64 {
        match self {
            Self::Memory(m) => m.reserve_failure(key, backoff).await,
            Self::Redis(r) => r.reserve_failure(key, backoff).await,
        }
    }

    async fn release_failure(&self, key: &str) {
        match self {
            Self::Memory(m) => m.release_failure(key).await,
            Self::Redis(r) => r.release_failure(key).await,
        }
    }

    async fn clear_failures(&self, key: &str) {
        match self {
            Self::Memory(m) => m.clear_failures(key).await,
            Self::Redis(r) => r.clear_failures(key).await,
        }
    }
}
