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

/// A background job that one node at a time may run (the janitor, scheduled key rotation).
#[derive(Debug, Clone, Copy)]
pub enum Job {
    Janitor = 1,
    KeyRotation = 2,
}

/// Held while this node runs a [`Job`]: on PostgreSQL a session advisory lock on a connection of its
/// own (released by [`JobLock::release`], or by the database when the node dies and the connection
/// closes); on SQLite nothing, since one file has one node.
pub struct JobLock(Option<(sqlx::pool::PoolConnection<sqlx::Postgres>, i64)>);

/// The advisory-lock key space of Portcullis jobs (an arbitrary constant, then the job).
const JOB_LOCK_BASE: i64 = 0x5043_4a42_0000_0000;

impl Store {
    /// The lock of `job` if no other node holds it now; `None` when one does.
    pub async fn try_job_lock(&self, job: Job) -> Result<Option<JobLock>> {
        match &self.backend {
            crate::Backend::Sqlite { .. } => Ok(Some(JobLock(None))),
            crate::Backend::Postgres(pool) => {
                let key = JOB_LOCK_BASE + job as i64;
                let mut conn = pool.acquire().await?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(got.then_some(JobLock(Some((conn, key)))))
            }
        }
    }
}

impl JobLock {
    pub async fn release(self) {
        if let Some((mut conn, key)) = self.0
            && sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut *conn)
                .await
                .is_err()
        {
            // Not back to the pool still holding the lock: closing the connection frees it.
            drop(conn.detach());
        }
    }
}
