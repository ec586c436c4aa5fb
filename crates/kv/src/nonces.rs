//! Replay protection: a nonce (RFC 9421 signatures, DPoP proofs, client assertions) is good once per
//! key for as long as what carries it could verify. [`MemoryNonces`] is the cache of one node;
//! [`RedisNonces`] is shared by every node (`SET NX PX`), and falls back to another cache while Redis
//! cannot be reached: the server gives it one in the database when the nodes share PostgreSQL (a
//! replay is still caught on every node), else this process's own.
//!
//! An entry may never be dropped early: a forgotten nonce is a replay let through. So the in-process
//! cache is bounded by refusing, not by evicting: at capacity it sweeps out what has expired, and if
//! that frees nothing the request is refused as overloaded.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_core::secrets::TokenHash;

use crate::redis::Redis;

/// What a nonce cache answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    /// Not seen before; now remembered.
    Yes,
    /// Seen within its window: a replay.
    Replayed,
    /// The cache is full of live entries (or unreachable): refuse rather than forget.
    Unavailable,
}

pub type FirstUseFuture<'a> = Pin<Box<dyn Future<Output = FirstUse> + Send + 'a>>;

/// Remembers `(keyid, replay key)` pairs until a time (Unix seconds).
pub trait NonceCache: Send + Sync {
    /// Records the pair until `until` unless it is already there, atomically.
    fn first_use<'a>(
        &'a self,
        keyid: &'a str,
        replay: &'a [u8],
        now: i64,
        until: i64,
    ) -> FirstUseFuture<'a>;
}

const SHARDS: usize = 16;

/// The in-process cache: sharded maps from SHA-256(keyid, replay key) to expiry.
pub struct MemoryNonces {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<[u8; 32], i64>,
    swept_at: i64,
}

impl MemoryNonces {
    /// A cache that holds at most `capacity` live entries (rounded up to a multiple of the shards).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn record(&self, keyid: &str, replay: &[u8], now: i64, until: i64) -> FirstUse {
        let id = pair_id(keyid, replay);
        let index = usize::from(id[0]) % SHARDS;
        let Some(shard) = self.shards.get(index) else {
            return FirstUse::Unavailable;
        };
        let Ok(mut shard) = shard.lock() else {
            return FirstUse::Unavailable;
        };
        if let Some(expiry) = shard.entries.get(&id)
            && *expiry >= now
        {
            return FirstUse::Replayed;
        }
        // Sweep every ten seconds, or at once when full.
        if shard.entries.len() >= self.per_shard || now - shard.swept_at >= 10 {
            shard.entries.retain(|_, expiry| *expiry >= now);
            shard.swept_at = now;
        }
        if shard.entries.len() >= self.per_shard {
            return FirstUse::Unavailable;
        }
        shard.entries.insert(id, until);
        FirstUse::Yes
    }

    /// Live entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.entries.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NonceCache for MemoryNonces {
    fn first_use<'a>(
        &'a self,
        keyid: &'a str,
        replay: &'a [u8],
        now: i64,
        until: i64,
    ) -> FirstUseFuture<'a> {
        let answer = self.record(keyid, replay, now, until);
        Box::pin(std::future::ready(answer))
    }
}

/// A nonce cache shared by every node through Redis: keys `<prefix>:n:<SHA-256 of the pair>`.
pub struct RedisNonces {
    redis: Arc<Redis>,
    fallback: Arc<dyn NonceCache>,
    degraded: AtomicBool,
}

impl RedisNonces {
    pub fn new(redis: Arc<Redis>, fallback: Arc<dyn NonceCache>) -> Self {
        Self {
            redis,
            fallback,
            degraded: AtomicBool::new(false),
        }
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
}

/// The one id of a (key id, replay key) pair, in every cache.
pub fn pair_id(keyid: &str, replay: &[u8]) -> [u8; 32] {
    // Length-prefixed, so (keyid, replay) pairs cannot run into each other.
    let input = [
        (keyid.len() as u64).to_be_bytes().as_slice(),
        keyid.as_bytes(),
        replay,
    ]
    .concat();
    TokenHash::of(&input).0
}

impl NonceCache for RedisNonces {
    fn first_use<'a>(
        &'a self,
        keyid: &'a str,
        replay: &'a [u8],
        now: i64,
        until: i64,
    ) -> FirstUseFuture<'a> {
        Box::pin(async move {
            let id: String = pair_id(keyid, replay)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let key = format!("{}:n:{id}", self.redis.prefix());
            let ttl_ms = (until - now)
                .max(1)
                .saturating_mul(1000)
                .saturating_add(1000);
            let mut c = self.redis.conn();
            let set: redis::RedisResult<Option<String>> = self
                .redis
                .timed(
                    "nonce",
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut c),
                )
                .await;
            match set {
                Ok(answer) => {
                    self.degraded.store(false, Ordering::Relaxed);
                    if answer.is_some() {
                        FirstUse::Yes
                    } else {
                        FirstUse::Replayed
                    }
                }
                Err(e) => {
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "Redis is unreachable: replay protection uses the fallback cache until it is back");
                    }
                    metrics::counter!("portcullis_redis_errors_total", "op" => "nonce")
                        .increment(1);
                    self.fallback.first_use(keyid, replay, now, until).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_once_per_key_within_its_window() {
        let cache = MemoryNonces::new(1000);
        assert_eq!(cache.record("sig_a", b"n:1", 100, 400), FirstUse::Yes);
        assert_eq!(cache.record("sig_a", b"n:1", 399, 400), FirstUse::Replayed);
        assert_eq!(cache.record("sig_b", b"n:1", 100, 400), FirstUse::Yes);
        // After its window the signature is expired anyway; the entry may go.
        assert_eq!(cache.record("sig_a", b"n:1", 401, 700), FirstUse::Yes);
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let cache = MemoryNonces::new(16);
        let mut refused = 0;
        for i in 0..200u32 {
            match cache.record("sig_a", &i.to_be_bytes(), 100, 400) {
                FirstUse::Unavailable => refused += 1,
                FirstUse::Yes => {}
                FirstUse::Replayed => unreachable!(),
            }
        }
        assert!(refused > 0);
        for i in 0..200u32 {
            assert_ne!(
                cache.record("sig_a", &i.to_be_bytes(), 101, 400),
                FirstUse::Yes,
                "{i} was forgotten"
            );
        }
        // Once they expire, there is room again.
        assert_eq!(cache.record("sig_a", b"late", 401, 700), FirstUse::Yes);
    }
}
