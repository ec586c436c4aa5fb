//! User accounts: identity, password hash, roles, and the moment before which their access tokens are
//! no longer honoured (`tokens_valid_after`, set by password change, logout-all and disabling).

use portcullis_core::clock::Millis;
use portcullis_core::ids::UserId;

use crate::{Result, Store, StoreError, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub email_key: String,
    pub name: Option<String>,
    pub password_hash: Option<String>,
    /// Space-separated.
    pub roles: String,
    pub disabled_at: Option<i64>,
    pub tokens_valid_after: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the user proved they receive mail at `email` (a link we sent, or an upstream provider
    /// that vouched for it).
    pub email_verified_at: Option<i64>,
}

impl UserRow {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.split(' ').any(|r| r == role)
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub email: String,
    pub email_key: String,
    pub name: Option<String>,
    pub password_hash: Option<String>,
    pub roles: String,
    pub created_at: Millis,
    /// Set for an account whose email an upstream provider vouched for.
    pub email_verified_at: Option<Millis>,
}

macro_rules! user_columns {
    () => {
        "id, email, email_key, name, password_hash, roles, disabled_at, tokens_valid_after, created_at, updated_at, email_verified_at"
    };
}

pub trait UserStore {
    /// `Conflict("users_email_key_unique")` when the email is taken.
    fn create_user(&self, user: &NewUser) -> impl Future<Output = Result<()>> + Send;
    fn user_by_id(&self, id: &str) -> impl Future<Output = Result<Option<UserRow>>> + Send;
    fn user_by_email_key(
        &self,
        email_key: &str,
    ) -> impl Future<Output = Result<Option<UserRow>>> + Send;
    /// Replaces the hash and, when `revoke_tokens_at` is set, stops honouring access tokens issued
    /// before it.
    fn set_password_hash(
        &self,
        id: &str,
        hash: &str,
        now: Millis,
        revoke_tokens_at: Option<Millis>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Upgrades a hash only if it is still the one that was verified (a concurrent password change wins).
    fn upgrade_password_hash(
        &self,
        id: &str,
        old: &str,
        new: &str,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Stops honouring access tokens issued before `at` (never moving the watermark back).
    fn set_tokens_valid_after(
        &self,
        id: &str,
        at: Millis,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Ids and change times of users changed at or after `since`, at most `limit`, oldest first:
    /// every node polls this to drop stale cached users.
    fn users_changed_since(
        &self,
        since: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// Users whose token watermark is later than `since`: what the in-memory revocation list loads.
    fn token_watermarks_since(
        &self,
        since: Millis,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// Disables (`Some(at)`) or re-enables (`None`) a user. False when there is no such user. The
    /// token watermark is the caller's to move, after it has revoked what the user held.
    fn set_user_disabled(
        &self,
        id: &str,
        at: Option<Millis>,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Page of users ordered by id, after `cursor`.
    fn list_users(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<UserRow>>> + Send;
    fn count_users(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Marks the email verified, if the account still has the address `email_key` (a link sent to
    /// an old address verifies nothing). False when it does not, or was verified already.
    fn set_email_verified(
        &self,
        id: &str,
        email_key: &str,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
}

impl UserStore for Store {
    async fn create_user(&self, u: &NewUser) -> Result<()> {
        with_pool!(self, write, p => {
            sqlx::query(
                "INSERT INTO users (id, email, email_key, name, password_hash, roles, created_at, updated_at, email_verified_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
            )
            .bind(u.id.as_str())
            .bind(&u.email)
            .bind(&u.email_key)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(&u.roles)
            .bind(u.created_at.0)
            .bind(u.email_verified_at.map(|m| m.0))
            .execute(p)
            .await
            .map_err(StoreError::unique("users_email_key_unique"))?;
        });
        Ok(())
    }

    async fn set_user_disabled(&self, id: &str, at: Option<Millis>, now: Millis) -> Result<bool> {
        let done = with_pool!(self, write, p => sqlx::query(
            "UPDATE users SET disabled_at = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(at.map(|a| a.0))
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, UserRow>(sql).bind(id).fetch_optional(p).await?),
        )
    }

    async fn user_by_email_key(&self, email_key: &str) -> Result<Option<UserRow>> {
        let sql = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE email_key = $1"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, UserRow>(sql).bind(email_key).fetch_optional(p).await?),
        )
    }

    async fn set_password_hash(
        &self,
        id: &str,
        hash: &str,
        now: Millis,
        revoke: Option<Millis>,
    ) -> Result<()> {
        let done = with_pool!(self, write, p => {
            sqlx::query(
                "UPDATE users SET password_hash = $2, updated_at = $3, \
                 tokens_valid_after = COALESCE($4, tokens_valid_after) WHERE id = $1",
            )
            .bind(id)
            .bind(hash)
            .bind(now.0)
            .bind(revoke.map(|m| m.0))
            .execute(p)
            .await?
            .rows_affected()
        });
        if done == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn upgrade_password_hash(
        &self,
        id: &str,
        old: &str,
        new: &str,
        now: Millis,
    ) -> Result<bool> {
        let done = with_pool!(self, write, p => {
            sqlx::query("UPDATE users SET password_hash = $3, updated_at = $4 WHERE id = $1 AND password_hash = $2")
                .bind(id)
                .bind(old)
                .bind(new)
                .bind(now.0)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    async fn set_tokens_valid_after(&self, id: &str, at: Millis) -> Result<()> {
        with_pool!(self, write, p => {
            sqlx::query(
                "UPDATE users SET updated_at = $2, tokens_valid_after = $2 \
                 WHERE id = $1 AND (tokens_valid_after IS NULL OR tokens_valid_after < $2)",
            )
                .bind(id)
                .bind(at.0)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    async fn users_changed_since(&self, since: i64, limit: i64) -> Result<Vec<(String, i64)>> {
        Ok(with_pool!(self, read, p => {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT id, updated_at FROM users WHERE updated_at >= $1 ORDER BY updated_at LIMIT $2",
            )
            .bind(since)
            .bind(limit)
            .fetch_all(p)
            .await?
        }))
    }

    async fn token_watermarks_since(&self, since: Millis) -> Result<Vec<(String, i64)>> {
        Ok(with_pool!(self, read, p => {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT id, tokens_valid_after FROM users WHERE tokens_valid_after > $1",
            )
            .bind(since.0)
            .fetch_all(p)
            .await?
        }))
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRow>> {
        let sql = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id > $1 ORDER BY id LIMIT $2"
        );
        Ok(with_pool!(self, read, p => {
            sqlx::query_as::<_, UserRow>(sql)
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?
        }))
    }

    async fn count_users(&self) -> Result<i64> {
        Ok(
            with_pool!(self, read, p => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users").fetch_one(p).await?),
        )
    }

    async fn set_email_verified(&self, id: &str, email_key: &str, now: Millis) -> Result<bool> {
        let done = with_pool!(self, write, p => sqlx::query(
            "UPDATE users SET email_verified_at = $3, updated_at = $3 \
             WHERE id = $1 AND email_key = $2 AND email_verified_at IS NULL",
        )
        .bind(id)
        .bind(email_key)
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(done == 1)
    }
}
