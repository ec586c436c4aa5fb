//! Browser sessions as stored: the SHA-256 of the cookie token, never the token. A session ends when it
//! is revoked, when `expires_at` (the absolute timeout) passes, or when it has not been seen for the
//! idle timeout; the last two are decided by the caller, which knows the configured timeouts.

use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, StoreError, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub token_hash: Vec<u8>,
    pub user_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// The absolute timeout.
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

macro_rules! session_columns {
    () => {
        "id, token_hash, user_id, created_at, last_seen_at, expires_at, revoked_at, revoked_reason, ip, user_agent"
    };
}

pub trait SessionStore {
    fn insert_session(&self, s: &SessionRow) -> impl Future<Output = Result<()>> + Send;
    fn session_by_hash(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<SessionRow>>> + Send;
    fn session_by_id(&self, id: &str) -> impl Future<Output = Result<Option<SessionRow>>> + Send;
    /// The user's live sessions (not revoked, not past `now`, seen after `idle_before`), newest first.
    fn list_user_sessions(
        &self,
        user_id: &str,
        now: i64,
        idle_before: i64,
    ) -> impl Future<Output = Result<Vec<SessionRow>>> + Send;
    /// Revokes one session of `user_id`; returns its token hash, `None` when there was nothing to revoke.
    fn revoke_session(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
        reason: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// Revokes every session of the user not revoked yet (expired and idle ones too, harmlessly);
    /// returns their token hashes.
    /// Revokes every live session of the user but `except` (the one a password change came from).
    fn revoke_user_sessions(
        &self,
        user_id: &str,
        now: i64,
        reason: &str,
        except: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;
    /// Records `last_seen_at` for a batch of sessions (never moving it backwards).
    fn touch_sessions(&self, seen: &[(String, i64)]) -> impl Future<Output = Result<()>> + Send;
    /// Token hashes of sessions revoked at or after `since` (for other nodes' caches).
    fn sessions_revoked_since(
        &self,
        since: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(Vec<u8>, i64)>>> + Send;
    /// Deletes at most `batch` sessions that ended before `dead_before` (revoked or expired) or were
    /// last seen before `idle_before`.
    fn purge_sessions(
        &self,
        dead_before: i64,
        idle_before: i64,
        batch: u32,
    ) -> impl Future<Output = Result<u64>> + Send;
}

impl SessionStore for Store {
    async fn insert_session(&self, s: &SessionRow) -> Result<()> {
        let sql = concat!(
            "INSERT INTO sessions (",
            session_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        with_pool!(self, write, p => {
            sqlx::query(sql)
                .bind(&s.id)
                .bind(&s.token_hash)
                .bind(&s.user_id)
                .bind(s.created_at)
                .bind(s.last_seen_at)
                .bind(s.expires_at)
                .bind(s.revoked_at)
                .bind(&s.revoked_reason)
                .bind(&s.ip)
                .bind(&s.user_agent)
                .execute(p)
                .await
                .map_err(StoreError::unique("sessions_token_hash_unique"))?;
        });
        Ok(())
    }

    async fn session_by_hash(&self, hash: &TokenHash) -> Result<Option<SessionRow>> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE token_hash = $1"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, SessionRow>(sql).bind(hash.as_bytes()).fetch_optional(p).await?),
        )
    }

    async fn session_by_id(&self, id: &str) -> Result<Option<SessionRow>> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, SessionRow>(sql).bind(id).fetch_optional(p).await?),
        )
    }

    async fn list_user_sessions(
        &self,
        user_id: &str,
        now: i64,
        idle_before: i64,
    ) -> Result<Vec<SessionRow>> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
             AND last_seen_at >= $3 ORDER BY created_at DESC, id DESC"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, SessionRow>(sql)
            .bind(user_id)
            .bind(now)
            .bind(idle_before)
            .fetch_all(p)
            .await?),
        )
    }

    async fn revoke_session(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
        reason: &str,
    ) -> Result<Option<Vec<u8>>> {
        let sql = "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
                   WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING token_hash";
        Ok(
            with_pool!(self, write, p => sqlx::query_scalar::<_, Vec<u8>>(sql)
            .bind(id)
            .bind(user_id)
            .bind(now)
            .bind(reason)
            .fetch_optional(p)
            .await?),
        )
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &str,
        now: i64,
        reason: &str,
        except: Option<&str>,
    ) -> Result<Vec<Vec<u8>>> {
        let sql = "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                   WHERE user_id = $1 AND revoked_at IS NULL AND ($4 IS NULL OR id <> $4) \
                   RETURNING token_hash";
        Ok(
            with_pool!(self, write, p => sqlx::query_scalar::<_, Vec<u8>>(sql)
            .bind(user_id)
            .bind(now)
            .bind(reason)
            .bind(except)
            .fetch_all(p)
            .await?),
        )
    }

    async fn touch_sessions(&self, seen: &[(String, i64)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            for (id, at) in seen {
                sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2")
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn sessions_revoked_since(&self, since: i64, limit: i64) -> Result<Vec<(Vec<u8>, i64)>> {
        let sql = "SELECT token_hash, revoked_at FROM sessions WHERE revoked_at >= $1 \
                   ORDER BY revoked_at LIMIT $2";
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, (Vec<u8>, i64)>(sql)
            .bind(since)
            .bind(limit)
            .fetch_all(p)
            .await?),
        )
    }

    async fn purge_sessions(&self, dead_before: i64, idle_before: i64, batch: u32) -> Result<u64> {
        let sql = "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
                   WHERE expires_at < $1 OR revoked_at < $1 OR last_seen_at < $2 LIMIT $3)";
        Ok(with_pool!(self, write, p => sqlx::query(sql)
            .bind(dead_before)
            .bind(idle_before)
            .bind(i64::from(batch.max(1)))
            .execute(p)
            .await?
            .rows_affected()))
    }
}
