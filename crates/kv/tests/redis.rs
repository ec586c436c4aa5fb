//! The Redis implementations against a real Redis (`PORTCULLIS_TEST_REDIS_URL`; without it each test
//! says it is skipped): several limiters on one Redis behave as one, with the same arithmetic as the
//! in-process ones; several replay caches catch a nonce used on any of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::ratelimit::{LoginBackoff, RatePolicy};
use portcullis_kv::limiter::{MemoryLimiter, RateLimiter, RedisLimiter};
use portcullis_kv::nonces::{FirstUse, MemoryNonces, NonceCache, RedisNonces};
use portcullis_kv::redis::Redis;

async fn redis(prefix: &str) -> Option<Arc<Redis>> {
    let Ok(url) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: PORTCULLIS_TEST_REDIS_URL is not set");
        return None;
    };
    Some(Arc::new(
        Redis::connect(&url, prefix)
            .await
            .expect("Redis at PORTCULLIS_TEST_REDIS_URL"),
    ))
}

fn unique(what: &str) -> String {
    let mut b = [0u8; 8];
    portcullis_core::secrets::fill_random(&mut b).unwrap();
    format!(
        "test-{what}-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn memory() -> MemoryLimiter {
    MemoryLimiter::new(Duration::from_secs(3600), Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_hitting_one_key_at_once_allow_exactly_the_limit() {
    let prefix = unique("rl");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let Some(r) = redis(&prefix).await else {
            return;
        };
        nodes.push(Arc::new(RedisLimiter::new(r, memory())));
    }
    let policy = RatePolicy {
        limit: 25,
        period_ms: 60_000,
    };
    let mut tasks = Vec::new();
    for i in 0..150 {
        let node = Arc::clone(&nodes[i % 3]);
        tasks.push(tokio::spawn(async move {
            node.check("key:k1", policy, 1).await.allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(
        allowed, 25,
        "150 concurrent requests through 3 nodes on a limit of 25"
    );
    assert!(nodes.iter().all(|n| !n.degraded()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_limiter_decides_as_the_in_process_one_does() {
    let Some(r) = redis(&unique("same")).await else {
        return;
    };
    let shared = RedisLimiter::new(r, memory());
    let local = memory();
    let policy = RatePolicy {
        limit: 5,
        period_ms: 2_000,
    };
    for i in 0..8 {
        let a = shared.check("k", policy, 1).await;
        let b = local.check("k", policy, 1).await;
        assert_eq!(a.allowed, b.allowed, "request {i}");
        assert_eq!(a.remaining, b.remaining, "request {i}");
        assert!(
            a.retry_after_ms.abs_diff(b.retry_after_ms) <= 50,
            "request {i}: {a:?} {b:?}"
        );
    }
    shared.refund("k", policy, 2).await;
    local.refund("k", policy, 2).await;
    assert_eq!(
        shared.check("k", policy, 1).await.allowed,
        local.check("k", policy, 1).await.allowed
    );

    // Login backoff: the same free failures, then the same wait, shared.
    let backoff = LoginBackoff {
        free_failures: 3,
        base_wait_ms: 60_000,
        max_wait_ms: 600_000,
        forget_after_ms: 3_600_000,
    };
    for _ in 0..3 {
        assert_eq!(shared.reserve_failure("acct", backoff).await, 0);
        assert_eq!(local.reserve_failure("acct", backoff).await, 0);
    }
    let (a, b) = (
        shared.reserve_failure("acct", backoff).await,
        local.reserve_failure("acct", backoff).await,
    );
    assert!(a > 59_000 && a.abs_diff(b) <= 50, "{a} {b}");
    shared.release_failure("acct").await;
    shared.clear_failures("acct").await;
    assert_eq!(shared.reserve_failure("acct", backoff).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_used_on_one_node_is_a_replay_on_every_other() {
    let prefix = unique("nonce");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let Some(r) = redis(&prefix).await else {
            return;
        };
        nodes.push(Arc::new(RedisNonces::new(
            r,
            Arc::new(MemoryNonces::new(1000)),
        )));
    }
    let now = 1_000;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let node = Arc::clone(&nodes[i % 3]);
        tasks.push(tokio::spawn(async move {
            node.first_use("sig_a", b"nonce-1", now, now + 300).await
        }));
    }
    let mut firsts = 0;
    for t in tasks {
        match t.await.unwrap() {
            FirstUse::Yes => firsts += 1,
            FirstUse::Replayed => {}
            FirstUse::Unavailable => panic!("Redis answered"),
        }
    }
    assert_eq!(firsts, 1, "one first use among 30 tries on 3 nodes");
    // Another key, or another nonce, is a first use.
    assert_eq!(
        nodes[1]
            .first_use("sig_b", b"nonce-1", now, now + 300)
            .await,
        FirstUse::Yes
    );
    assert_eq!(
        nodes[2]
            .first_use("sig_a", b"nonce-2", now, now + 300)
            .await,
        FirstUse::Yes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_url_is_refused_with_a_message_naming_it() {
    for bad in ["not a url", "http://127.0.0.1:6379"] {
        let err = Redis::connect(bad, "x").await.expect_err("refused");
        assert!(err.0.contains("redis_url"), "{bad}: {}", err.0);
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let began = std::time::Instant::now();
    let err = Redis::connect(&format!("redis://{closed}"), "x")
        .await
        .expect_err("refused");
    assert!(err.0.contains("redis_url"), "{}", err.0);
    assert!(
        began.elapsed() < Duration::from_secs(6),
        "{:?}",
        began.elapsed()
    );
}
