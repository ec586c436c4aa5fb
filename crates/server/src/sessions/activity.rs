//! When sessions were last used, for the idle timeout and the session list.

use std::time::Duration;

use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::ids::SessionId;

use crate::coalesce::{OncePerMinute, WRITE_EVERY};

/// When sessions were last used. Every request notes its time in memory (the idle timeout is measured
/// from it on this node); the store's `last_seen_at` is written at most once a minute per session, in
/// batches, for the session list and for other nodes.
pub struct SessionActivity {
    seen: Cache<SessionId, Millis>,
    writes: OncePerMinute<SessionId>,
}

impl SessionActivity {
    /// `idle`: the idle timeout; a session unseen for that long needs no memory of it.
    pub fn new(idle: Duration) -> Self {
        Self {
            seen: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(idle + WRITE_EVERY)
                .build(),
            writes: OncePerMinute::default(),
        }
    }

    pub fn seen(&self, id: &SessionId) {
        let now = Millis::now();
        self.seen.insert(id.clone(), now);
        self.writes.note(id, now);
    }

    /// The writes to make now.
    pub fn take(&self) -> Vec<(SessionId, Millis)> {
        self.writes.take()
    }

    /// When this node last saw the session used (the epoch: not recently).
    pub fn last_seen(&self, id: &SessionId) -> Millis {
        self.seen.get(id).unwrap_or(Millis(0))
    }
}
