//! Health and housekeeping: a readiness probe and the janitor's bounded deletes of expired rows, so
//! tables do not grow forever and no delete holds the (SQLite) writer for long.

use portcullis_core::clock::Millis;

use crate::{Result, Store, with_pool};

/// Rows removed by one janitor pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub refresh_families: u64,
    pub audit_events: u64,
    pub signing_keys: u64,
    pub api_keys: u64,
    /// RFC 9421 signing keys revoked before the keys' cutoff.
    pub signature_keys: u64,
}

impl Purged {
    pub fn total(&self) -> u64 {
        self.refresh_families
            + self.audit_events
            + self.signing_keys
            + self.api_keys
            + self.signature_keys
    }
}

pub trait Maintenance {
    /// A trivial query: is the store reachable?
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
    /// Deletes at most `batch` rows of each kind that are past use: refresh families expired or revoked
    /// before `dead_before` (their tokens go with them), audit events before `audit_before`, signing keys
    /// expired before `dead_before`, API keys expired, revoked or past the grace of a roll before
    /// `keys_before` (kept longer so that a verify can still say REVOKED or EXPIRED instead of NOT_FOUND),
    /// and RFC 9421 signing keys revoked before `keys_before` (listed with `revoked_at` until then).
    fn purge_expired(
        &self,
        dead_before: Millis,
        audit_before: Millis,
        keys_before: Millis,
        batch: u32,
    ) -> impl Future<Output = Result<Purged>> + Send;
}

impl Maintenance for Store {
    async fn ping(&self) -> Result<()> {
        with_pool!(self, read, p => { sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(p).await?; });
        Ok(())
    }

    async fn purge_expired(
        &self,
        dead_before: Millis,
        audit_before: Millis,
        keys_before: Millis,
        batch: u32,
    ) -> Result<Purged> {
        let batch = i64::from(batch.max(1));
        with_pool!(self, write, p => {
            let refresh_families = sqlx::query(
                "DELETE FROM refresh_families WHERE id IN (SELECT id FROM refresh_families \
                 WHERE expires_at < $1 OR revoked_at < $1 LIMIT $2)",
            )
            .bind(dead_before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let audit_events = sqlx::query(
                "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE created_at < $1 LIMIT $2)",
            )
            .bind(audit_before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let signing_keys = sqlx::query(
                "DELETE FROM signing_keys WHERE kid IN (SELECT kid FROM signing_keys WHERE expire_at < $1 LIMIT $2)",
            )
            .bind(dead_before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let api_keys = sqlx::query(
                "DELETE FROM api_keys WHERE id IN (SELECT id FROM api_keys \
                 WHERE expires_at < $1 OR revoked_at < $1 OR grace_until < $1 LIMIT $2)",
            )
            .bind(keys_before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let signature_keys = sqlx::query(
                "DELETE FROM signature_keys WHERE id IN (SELECT id FROM signature_keys \
                 WHERE revoked_at < $1 LIMIT $2)",
            )
            .bind(keys_before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            Ok(Purged { refresh_families, audit_events, signing_keys, api_keys, signature_keys })
        })
    }
}
