//! Writes that are not decisions (`last_used_at` of keys, `last_seen_at` of sessions) are coalesced:
//! at most one per id per minute, queued in memory and flushed in batches off the request path.

use std::sync::Mutex;
use std::time::Duration;

use moka::sync::Cache;

/// How often an id's use may be written.
pub const WRITE_EVERY: Duration = Duration::from_secs(60);
/// How often pending writes are flushed.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

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
                .time_to_live(WRITE_EVERY)
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

    /// The uses queued since the last call, to be written now.
    pub fn take(&self) -> Vec<(String, i64)> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}
