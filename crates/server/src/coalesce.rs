//! Writes that are not decisions (`last_used_at` of keys, `last_seen_at` of sessions) are coalesced:
//! at most one per id per minute, queued in memory and flushed in batches off the request path.

use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use moka::sync::Cache;
use portcullis_core::clock::Millis;

/// How often an id's use may be written.
pub const WRITE_EVERY: Duration = Duration::from_secs(60);
/// How often pending writes are flushed.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Uses of something (a key, a session: `Id`) to be written to the store at most once a minute per id.
pub struct OncePerMinute<Id> {
    /// Ids whose use was queued within the last minute.
    written: Cache<Id, ()>,
    pending: Mutex<Vec<(Id, Millis)>>,
}

impl<Id: Hash + Eq + Clone + Send + Sync + 'static> Default for OncePerMinute<Id> {
    fn default() -> Self {
        Self {
            written: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(WRITE_EVERY)
                .build(),
            pending: Mutex::new(Vec::new()),
        }
    }
}

impl<Id: Hash + Eq + Clone + Send + Sync + 'static> OncePerMinute<Id> {
    /// Queues a use of `id` at `at` unless one was queued within the last minute.
    pub fn note(&self, id: &Id, at: Millis) {
        if self.written.contains_key(id) {
            return;
        }
        self.written.insert(id.clone(), ());
        if let Ok(mut p) = self.pending.lock() {
            p.push((id.clone(), at));
        }
    }

    /// The uses queued since the last call, to be written now.
    pub fn take(&self) -> Vec<(Id, Millis)> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}
