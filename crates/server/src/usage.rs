//! Writes that are not decisions, coalesced off the request path:
//!
//! * [`KeyUsage`]: `last_used_at` of API keys, written at most once a minute per key (and per node), in
//!   batches of one transaction each second. [`SessionActivity`] does the same for sessions.
//! * [`AuditCounts`]: failed key verifications and throttled logins are audited as counts — one event
//!   per caller and outcome per interval — rather than one row per request, so a flood of bad keys or
//!   refused guesses cannot flood the log (or, on SQLite, take turns with every decision for the one
//!   writer).

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

/// Events that cost an attacker nothing (a failed key verification, a login refused by the throttle)
/// are counted, not written one by one: one audit event per (kind, actor, detail) per interval, with
/// the count, the first and last moment, and a sample of ids. A flood of them therefore writes a
/// bounded number of rows instead of one per request.
#[derive(Default)]
pub struct AuditCounts {
    counts: Mutex<HashMap<Group, Counted>>,
}

/// What one aggregated event stands for: (kind, actor, detail as JSON text).
type Group = (&'static str, Option<String>, String);

struct Counted {
    detail: serde_json::Value,
    count: u64,
    first_ms: i64,
    /// The name of the sample list in the event (`key_ids`, `ips`), and the samples.
    sample_field: &'static str,
    samples: Vec<String>,
}

/// Distinct (kind, actor, detail) groups kept per interval; past it, further groups are counted in
/// one overflow event, so even varied junk cannot grow memory or the log without bound.
const MAX_GROUPS: usize = 10_000;

impl AuditCounts {
    /// Counts one event `kind` by `actor` with `detail` (a small JSON object, part of the grouping),
    /// keeping `sample` under `sample_field`.
    pub fn record(
        &self,
        kind: &'static str,
        actor: Option<&str>,
        detail: serde_json::Value,
        sample_field: &'static str,
        sample: Option<&str>,
    ) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let mut key = (kind, actor.map(str::to_owned), detail.to_string());
        if counts.len() >= MAX_GROUPS && !counts.contains_key(&key) {
            key = (kind, None, "{\"overflow\":true}".to_owned());
        }
        let overflow = key.2.starts_with("{\"overflow\"");
        let entry = counts.entry(key).or_insert_with(|| Counted {
            detail: if overflow {
                serde_json::json!({ "overflow": true })
            } else {
                detail
            },
            count: 0,
            first_ms: Millis::now().0,
            sample_field,
            samples: Vec::new(),
        });
        entry.count += 1;
        if let Some(id) = sample
            && entry.samples.len() < SAMPLE_KEYS
            && !entry.samples.iter().any(|k| k == id)
        {
            entry.samples.push(id.to_owned());
        }
    }

    /// A failed key verification by `caller`.
    pub fn verify_failed(&self, caller: &str, code: VerifyCode, key_id: Option<&str>) {
        self.record(
            "api_key.verify_failed",
            Some(caller),
            serde_json::json!({ "code": code.as_str() }),
            "key_ids",
            key_id,
        );
    }

    fn take(&self) -> HashMap<Group, Counted> {
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

/// Turns the counts into audit events (`api_key.verify_failed`, `login.throttled` …).
pub fn flush_audit_counts(state: &AppState) {
    let now = Millis::now();
    for ((kind, actor, _), c) in state.audit_counts.take() {
        let mut data = match c.detail {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        data.insert("count".into(), c.count.into());
        data.insert("since".into(), Millis(c.first_ms).rfc3339().into());
        data.insert("until".into(), now.rfc3339().into());
        data.insert(c.sample_field.into(), c.samples.into());
        state.audit.record(
            kind,
            actor.as_deref(),
            None,
            &Default::default(),
            serde_json::Value::Object(data),
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

pub async fn audit_counts_loop(state: AppState) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(state.config.verify_audit_interval_ms));
    loop {
        tick.tick().await;
        flush_audit_counts(&state);
    }
}
