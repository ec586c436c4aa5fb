//! Replay nonces in the database: the shared replay cache of several nodes while Redis is away.

use std::future::Future;

use crate::{Result, Store, with_pool};

pub trait NonceStore {
    /// Records `id` (SHA-256 of key id and replay key) until `until_s` (Unix seconds) unless a live
    /// record is there already; true when this is its first use. One statement, so two nodes
    /// recording the same nonce at once cannot both see a first use.
    fn record_nonce(
        &self,
        id: &[u8; 32],
        now_s: i64,
        until_s: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes at most `batch` records that expired before `before_s`.
    fn purge_nonces(&self, before_s: i64, batch: u32) -> impl Future<Output = Result<u64>> + Send;
}

impl NonceStore for Store {
    async fn record_nonce(&self, id: &[u8; 32], now_s: i64, until_s: i64) -> Result<bool> {
        // An expired record is taken over (its nonce may be used again: what carried it is expired).
        let n = with_pool!(self, write, p => sqlx::query(
            "INSERT INTO replay_nonces (id, expires_at) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE replay_nonces.expires_at < $3",
        )
        .bind(id.as_slice())
        .bind(until_s)
        .bind(now_s)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    async fn purge_nonces(&self, before_s: i64, batch: u32) -> Result<u64> {
        Ok(with_pool!(self, write, p => sqlx::query(
            "DELETE FROM replay_nonces WHERE id IN \
             (SELECT id FROM replay_nonces WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(before_s)
        .bind(i64::from(batch))
        .execute(p)
        .await?
        .rows_affected()))
    }
}
