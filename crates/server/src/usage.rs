//! Writes that are not decisions, coalesced off the request path:
//!
//! * [`KeyUsage`]: `last_used_at` of API keys, written at most once a minute per key (and per node), in
//!   batches of one transaction each second. [`SessionActivity`] does the same for sessions.
//! * [`VerifyFailures`]: failed key verifications are audited as counts — one event per caller and
//!   code per interval — rather than one row per request, so a flood of bad keys cannot flood the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use moka::sync::Cache;
use portcullis_core::apikeys::VerifyCode;
use portcullis_core::clock::Millis;
use portcullis_store::{ApiKeyStore, SessionStore};

use crate::state::AppState;

/// How often a key's `last_used_at` may be written.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// How often pending `last_used_at` values are flushed.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Key ids kept per aggregated failure event.
const SAMPLE_KEYS: usize = 20;

/// Uses of something (a key, a session) to be written to the store at most once a minute per id.
pub struct OncePerMinute {
    /// Ids whose use was queued within the last minute.
    written: Cache<String, ()>,
    pending: Mutex<Vec<(String, i64)>>,
}

impl Default for OncePerMinute {
    fn default() -> Self {
        Self {
            written: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(LAST_USED_EVERY)
                .build(),
            pending: Mutex::new(Vec::new()),
        }
    }
}

impl OncePerMinute {
    /// Queues a use of `id` at `at` unless one was queued within the last minute.
    pub fn note(&self, id: &str, at: i64) {
        if self.written.contains_key(id) {
            return;
        }
        self.written.insert(id.to_owned(), ());
        if let Ok(mut p) = self.pending.lock() {
            p.push((id.to_owned(), at));
        }
    }

    fn take(&self) -> Vec<(String, i64)> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// `last_used_at` of API keys.
#[derive(Default)]
pub struct KeyUsage(OncePerMinute);

impl KeyUsage {
    /// Notes a use of key `id`; cheap when the key was used within the last minute.
    pub fn used(&self, id: &str) {
        self.0.note(id, Millis::now().0);
    }
}

/// When sessions were last used. Every request notes its time in memory (the idle timeout is measured
/// from it on this node); the store's `last_seen_at` is written at most once a minute per session, in
/// batches, for the session list and for other nodes.
pub struct SessionActivity {
    seen: Cache<String, i64>,
    writes: OncePerMinute,
}

impl SessionActivity {
    /// `idle`: the idle timeout; a session unseen for that long needs no memory of it.
    pub fn new(idle: Duration) -> Self {
        Self {
            seen: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(idle + LAST_USED_EVERY)
                .build(),
            writes: OncePerMinute::default(),
        }
    }

    pub fn seen(&self, id: &str) {
        let now = Millis::now().0;
        self.seen.insert(id.to_owned(), now);
        self.writes.note(id, now);
    }

    /// When this node last saw the session used (0: not recently).
    pub fn last_seen(&self, id: &str) -> i64 {
        self.seen.get(id).unwrap_or(0)
    }
}

/// Counts of failed verifications since the last flush, by (caller, code).
#[derive(Default)]
pub struct VerifyFailures {
    counts: Mutex<HashMap<(String, VerifyCode), Failures>>,
}

#[derive(Default)]
struct Failures {
    count: u64,
    first_ms: i64,
    key_ids: Vec<String>,
}

impl VerifyFailures {
    pub fn record(&self, caller: &str, code: VerifyCode, key_id: Option<&str>) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let entry = counts.entry((caller.to_owned(), code)).or_default();
        if entry.count == 0 {
            entry.first_ms = Millis::now().0;
        }
        entry.count += 1;
        if let Some(id) = key_id
            && entry.key_ids.len() < SAMPLE_KEYS
            && !entry.key_ids.iter().any(|k| k == id)
        {
            entry.key_ids.push(id.to_owned());
        }
    }

    fn take(&self) -> HashMap<(String, VerifyCode), Failures> {
        self.counts
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

/// Writes pending `last_used_at` (keys) and `last_seen_at` (sessions) values.
pub async fn flush_key_usage(state: &AppState) {
    let used = state.key_usage.0.take();
    if !used.is_empty()
        && let Err(e) = state.store.touch_api_keys(&used).await
    {
        tracing::warn!(error = %e, keys = used.len(), "recording API key use failed");
    }
    let seen = state.session_activity.writes.take();
    if !seen.is_empty()
        && let Err(e) = state.store.touch_sessions(&seen).await
    {
        tracing::warn!(error = %e, sessions = seen.len(), "recording session use failed");
    }
}

/// Turns the failure counts into audit events (`api_key.verify_failed`).
pub fn flush_verify_failures(state: &AppState) {
    let now = Millis::now();
    for ((caller, code), f) in state.verify_failures.take() {
        state.audit.record(
            "api_key.verify_failed",
            Some(&caller),
            None,
            &Default::default(),
            serde_json::json!({
                "code": code.as_str(),
                "count": f.count,
                "since": Millis(f.first_ms).rfc3339(),
                "until": now.rfc3339(),
                "key_ids": f.key_ids,
            }),
        );
    }
}

pub async fn key_usage_loop(state: AppState) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        flush_key_usage(&state).await;
    }
}

pub async fn verify_failures_loop(state: AppState) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(state.config.verify_audit_interval_ms));
    loop {
        tick.tick().await;
        flush_verify_failures(&state);
    }
}
