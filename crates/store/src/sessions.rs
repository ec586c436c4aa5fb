//! Browser sessions as stored: the SHA-256 of the cookie token, never the token. A session ends when it
//! is revoked, when `expires_at` (the absolute timeout) passes, or when it has not been seen for the
//! idle timeout; the last two are decided by the caller, which knows the configured timeouts.

use portcullis_core::clock::Millis;
use portcullis_core::ids::{SessionId, UserId};
use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, StoreError, column, with_pool};

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: SessionId,
    pub token_hash: TokenHash,
    pub user_id: UserId,
    pub created_at: Millis,
    pub last_seen_at: Millis,
    /// The absolute timeout.
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
    pub revoked_reason: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A row as the database returns it, before it is read into core's types.
#[derive(sqlx::FromRow)]
struct Stored {
    id: String,
    token_hash: Vec<u8>,
    user_id: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    revoked_reason: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
}

impl TryFrom<Stored> for SessionRow {
    type Error = StoreError;
    fn try_from(r: Stored) -> Result<Self> {
        Ok(Self {
            id: column::id(r.id, "session id")?,
            token_hash: column::hash(r.token_hash)?,
            user_id: column::id(r.user_id, "user id")?,
            created_at: Millis(r.created_at),
            last_seen_at: Millis(r.last_seen_at),
            expires_at: Millis(r.expires_at),
            revoked_at: column::opt_millis(r.revoked_at),
            revoked_reason: r.revoked_reason,
            ip: r.ip,
            user_agent: r.user_agent,
        })
    }
}

fn read(rows: Vec<Stored>) -> Result<Vec<SessionRow>> {
    rows.into_iter().map(SessionRow::try_from).collect()
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
    fn session_by_id(
        &self,
        id: &SessionId,
    ) -> impl Future<Output = Result<Option<SessionRow>>> + Send;
    /// The user's live sessions (not revoked, not past `now`, seen after `idle_before`), newest first.
    fn list_user_sessions(
        &self,
        user_id: &UserId,
        now: Millis,
        idle_before: Millis,
    ) -> impl Future<Output = Result<Vec<SessionRow>>> + Send;
    /// Revokes one session of `user_id`; returns its token hash, `None` when there was nothing to revoke.
    fn revoke_session(
        &self,
        id: &SessionId,
        user_id: &UserId,
        now: Millis,
        reason: &str,
    ) -> impl Future<Output = Result<Option<TokenHash>>> + Send;
    /// Revokes every live session of the user but `except` (the one a password change came from),
    /// expired and idle ones too, harmlessly; returns their token hashes.
    fn revoke_user_sessions(
        &self,
        user_id: &UserId,
        now: Millis,
        reason: &str,
        except: Option<&SessionId>,
    ) -> impl Future<Output = Result<Vec<TokenHash>>> + Send;
    /// Records `last_seen_at` for a batch of sessions (never moving it backwards).
    fn touch_sessions(
        &self,
        seen: &[(SessionId, Millis)],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Token hashes of sessions revoked at or after `since` (for other nodes' caches).
    fn sessions_revoked_since(
        &self,
        since: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(TokenHash, Millis)>>> + Send;
    /// Deletes at most `batch` sessions that ended before `dead_before` (revoked or expired) or were
    /// last seen before `idle_before`.
    fn purge_sessions(
        &self,
        dead_before: Millis,
        idle_before: Millis,
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
                .bind(s.id.as_str())
                .bind(s.token_hash.as_bytes())
                .bind(s.user_id.as_str())
                .bind(s.created_at.0)
                .bind(s.last_seen_at.0)
                .bind(s.expires_at.0)
                .bind(s.revoked_at.map(|m| m.0))
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
        let row = with_pool!(self, read, p => sqlx::query_as::<_, Stored>(sql).bind(hash.as_bytes()).fetch_optional(p).await?);
        row.map(SessionRow::try_from).transpose()
    }

    async fn session_by_id(&self, id: &SessionId) -> Result<Option<SessionRow>> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        );
        let row = with_pool!(self, read, p => sqlx::query_as::<_, Stored>(sql).bind(id.as_str()).fetch_optional(p).await?);
        row.map(SessionRow::try_from).transpose()
    }

    async fn list_user_sessions(
        &self,
        user_id: &UserId,
        now: Millis,
        idle_before: Millis,
    ) -> Result<Vec<SessionRow>> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
             AND last_seen_at >= $3 ORDER BY created_at DESC, id DESC"
        );
        read(with_pool!(self, read, p => sqlx::query_as::<_, Stored>(sql)
            .bind(user_id.as_str())
            .bind(now.0)
            .bind(idle_before.0)
            .fetch_all(p)
            .await?))
    }

    async fn revoke_session(
        &self,
        id: &SessionId,
        user_id: &UserId,
        now: Millis,
        reason: &str,
    ) -> Result<Option<TokenHash>> {
        let sql = "UPDATE sessions SET revoked_at = $3, revoked_reason = $4 \
                   WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING token_hash";
        let hash = with_pool!(self, write, p => sqlx::query_scalar::<_, Vec<u8>>(sql)
            .bind(id.as_str())
            .bind(user_id.as_str())
            .bind(now.0)
            .bind(reason)
            .fetch_optional(p)
            .await?);
        hash.map(column::hash).transpose()
    }

    async fn revoke_user_sessions(
        &self,
        user_id: &UserId,
        now: Millis,
        reason: &str,
        except: Option<&SessionId>,
    ) -> Result<Vec<TokenHash>> {
        let sql = "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
                   WHERE user_id = $1 AND revoked_at IS NULL AND ($4 IS NULL OR id <> $4) \
                   RETURNING token_hash";
        column::hashes(
            with_pool!(self, write, p => sqlx::query_scalar::<_, Vec<u8>>(sql)
            .bind(user_id.as_str())
            .bind(now.0)
            .bind(reason)
            .bind(except.map(SessionId::as_str))
            .fetch_all(p)
            .await?),
        )
    }

    async fn touch_sessions(&self, seen: &[(SessionId, Millis)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            for (id, at) in seen {
                sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2")
                    .bind(id.as_str())
                    .bind(at.0)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn sessions_revoked_since(
        &self,
        since: Millis,
        limit: i64,
    ) -> Result<Vec<(TokenHash, Millis)>> {
        let sql = "SELECT token_hash, revoked_at FROM sessions WHERE revoked_at >= $1 \
                   ORDER BY revoked_at LIMIT $2";
        let rows = with_pool!(self, read, p => sqlx::query_as::<_, (Vec<u8>, i64)>(sql)
            .bind(since.0)
            .bind(limit)
            .fetch_all(p)
            .await?);
        rows.into_iter()
            .map(|(hash, at)| Ok((column::hash(hash)?, Millis(at))))
            .collect()
    }

    async fn purge_sessions(
        &self,
        dead_before: Millis,
        idle_before: Millis,
        batch: u32,
    ) -> Result<u64> {
        let sql = "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions \
                   WHERE expires_at < $1 OR revoked_at < $1 OR last_seen_at < $2 LIMIT $3)";
        Ok(with_pool!(self, write, p => sqlx::query(sql)
            .bind(dead_before.0)
            .bind(idle_before.0)
            .bind(i64::from(batch.max(1)))
            .execute(p)
            .await?
            .rows_affected()))
    }
}
