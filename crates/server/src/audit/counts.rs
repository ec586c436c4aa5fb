//! Audit events that cost an attacker nothing (a failed key verification, a login refused by the
//! throttle) are counted, not written one by one.

use std::collections::HashMap;
use std::sync::Mutex;

use portcullis_core::apikeys::VerifyCode;
use portcullis_core::clock::Millis;

use super::Audit;

/// Key ids kept per aggregated event.
const SAMPLE_KEYS: usize = 20;

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

impl AuditCounts {
    /// Turns the counts so far into audit events (`api_key.verify_failed`, `login.throttled` …).
    pub fn flush(&self, audit: &Audit) {
        let now = Millis::now();
        for ((kind, actor, _), c) in self.take() {
            let mut data = match c.detail {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            data.insert("count".into(), c.count.into());
            data.insert("since".into(), Millis(c.first_ms).rfc3339().into());
            data.insert("until".into(), now.rfc3339().into());
            data.insert(c.sample_field.into(), c.samples.into());
            audit.record(
                kind,
                actor.as_deref(),
                None,
                &Default::default(),
                serde_json::Value::Object(data),
            );
        }
    }
}
