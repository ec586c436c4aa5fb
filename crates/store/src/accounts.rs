//! Accounts people can trust: the emailed links that verify an address or reset a password (kept as
//! SHA-256, single use, each spent by one conditional `UPDATE … RETURNING`), the upstream identities
//! (provider, subject) linked to users, and upstream sign-ins in flight (their `state`, likewise
//! spent once).

use portcullis_core::clock::Millis;
use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, StoreError, with_pool};

/// What an emailed link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPurpose {
    Verify,
    Reset,
}

impl LinkPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Reset => "reset",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmailLinkRow {
    pub token_hash: TokenHash,
    pub user_id: String,
    pub purpose: LinkPurpose,
    pub email_key: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdentityRow {
    pub id: String,
    pub user_id: String,
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub sealed_tokens: Option<Vec<u8>>,
    pub created_at: i64,
    pub last_login_at: i64,
}

#[derive(Debug, Clone)]
pub struct UpstreamLoginRow {
    pub state_hash: TokenHash,
    pub provider: String,
    pub browser_hash: TokenHash,
    pub return_to: String,
    pub link_user_id: Option<String>,
    pub created_at: Millis,
    pub expires_at: Millis,
}

type LoginTuple = (Vec<u8>, String, Vec<u8>, String, Option<String>, i64, i64);

fn login_row(t: LoginTuple) -> Result<UpstreamLoginRow> {
    let hash = |v: Vec<u8>| {
        <[u8; 32]>::try_from(v.as_slice())
            .map(TokenHash)
            .map_err(|_| StoreError::Corrupt("upstream_logins hash is not 32 bytes"))
    };
    Ok(UpstreamLoginRow {
        state_hash: hash(t.0)?,
        provider: t.1,
        browser_hash: hash(t.2)?,
        return_to: t.3,
        link_user_id: t.4,
        created_at: Millis(t.5),
        expires_at: Millis(t.6),
    })
}

pub trait AccountStore {
    fn insert_email_link(&self, link: &EmailLinkRow) -> impl Future<Output = Result<()>> + Send;
    /// Links of `purpose` made for the user at or after `since` (what resends are limited by).
    fn count_email_links_since(
        &self,
        user_id: &str,
        purpose: LinkPurpose,
        since: Millis,
    ) -> impl Future<Output = Result<i64>> + Send;
    /// The live (unused, unexpired) link, without spending it: `(user_id, email_key)`.
    fn email_link(
        &self,
        hash: &TokenHash,
        purpose: LinkPurpose,
        now: Millis,
    ) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    /// Spends a live link once: `(user_id, email_key)`, or `None` when it is unknown, used or expired.
    fn spend_email_link(
        &self,
        hash: &TokenHash,
        purpose: LinkPurpose,
        now: Millis,
    ) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    /// Spends every live link of `purpose` the user has (a reset done ends the others).
    fn spend_user_email_links(
        &self,
        user_id: &str,
        purpose: LinkPurpose,
        now: Millis,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// `Conflict("user_identities_subject_unique")` when the upstream subject is linked already.
    fn insert_identity(&self, row: &IdentityRow) -> impl Future<Output = Result<()>> + Send;
    fn identity_by_subject(
        &self,
        provider: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Option<IdentityRow>>> + Send;
    fn user_identities(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<IdentityRow>>> + Send;
    /// Notes a sign-in through the identity (and replaces its sealed tokens when given).
    fn identity_used(
        &self,
        id: &str,
        now: Millis,
        sealed_tokens: Option<&[u8]>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Unlinks the identity unless it is the user's last way to sign in (no password and no other
    /// identity), decided in one transaction that holds the user's row, so two unlinks at once cannot
    /// both pass. `Ok(None)`: no such identity of the user; `Ok(Some(false))`: it is the last way in.
    fn unlink_identity(
        &self,
        user_id: &str,
        id: &str,
        now: Millis,
    ) -> impl Future<Output = Result<Option<bool>>> + Send;

    fn insert_upstream_login(
        &self,
        row: &UpstreamLoginRow,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Spends the sign-in `state` names, once, if it is live.
    fn take_upstream_login(
        &self,
        state_hash: &TokenHash,
        now: Millis,
    ) -> impl Future<Output = Result<Option<UpstreamLoginRow>>> + Send;
    /// Deletes links and sign-ins that expired before `before`, at most `batch` of each.
    fn purge_accounts(
        &self,
        before: Millis,
        batch: u32,
    ) -> impl Future<Output = Result<u64>> + Send;
}

macro_rules! identity_columns {
    () => {
        "id, user_id, provider, subject, email, sealed_tokens, created_at, last_login_at"
    };
}

impl AccountStore for Store {
    async fn insert_email_link(&self, l: &EmailLinkRow) -> Result<()> {
        with_pool!(self, write, p => sqlx::query(
            "INSERT INTO email_tokens (token_hash, user_id, purpose, email_key, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(l.token_hash.as_bytes())
        .bind(&l.user_id)
        .bind(l.purpose.as_str())
        .bind(&l.email_key)
        .bind(l.created_at.0)
        .bind(l.expires_at.0)
        .execute(p)
        .await
        .map(|_| ())?);
        Ok(())
    }

    async fn count_email_links_since(
        &self,
        user_id: &str,
        purpose: LinkPurpose,
        since: Millis,
    ) -> Result<i64> {
        Ok(with_pool!(self, read, p => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM email_tokens WHERE user_id = $1 AND purpose = $2 AND created_at >= $3",
        )
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(since.0)
        .fetch_one(p)
        .await?))
    }

    async fn email_link(
        &self,
        hash: &TokenHash,
        purpose: LinkPurpose,
        now: Millis,
    ) -> Result<Option<(String, String)>> {
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, (String, String)>(
            "SELECT user_id, email_key FROM email_tokens \
             WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(hash.as_bytes())
        .bind(purpose.as_str())
        .bind(now.0)
        .fetch_optional(p)
        .await?),
        )
    }

    async fn spend_email_link(
        &self,
        hash: &TokenHash,
        purpose: LinkPurpose,
        now: Millis,
    ) -> Result<Option<(String, String)>> {
        Ok(
            with_pool!(self, write, p => sqlx::query_as::<_, (String, String)>(
            "UPDATE email_tokens SET used_at = $3 \
             WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING user_id, email_key",
        )
        .bind(hash.as_bytes())
        .bind(purpose.as_str())
        .bind(now.0)
        .fetch_optional(p)
        .await?),
        )
    }

    async fn spend_user_email_links(
        &self,
        user_id: &str,
        purpose: LinkPurpose,
        now: Millis,
    ) -> Result<u64> {
        Ok(with_pool!(self, write, p => sqlx::query(
            "UPDATE email_tokens SET used_at = $3 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected()))
    }

    async fn insert_identity(&self, r: &IdentityRow) -> Result<()> {
        with_pool!(self, write, p => sqlx::query(
            "INSERT INTO user_identities (id, user_id, provider, subject, email, sealed_tokens, created_at, last_login_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&r.id)
        .bind(&r.user_id)
        .bind(&r.provider)
        .bind(&r.subject)
        .bind(&r.email)
        .bind(&r.sealed_tokens)
        .bind(r.created_at)
        .bind(r.last_login_at)
        .execute(p)
        .await
        .map(|_| ())
        .map_err(StoreError::unique("user_identities_subject_unique"))?);
        Ok(())
    }

    async fn identity_by_subject(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<IdentityRow>> {
        let sql = concat!(
            "SELECT ",
            identity_columns!(),
            " FROM user_identities WHERE provider = $1 AND subject = $2"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, IdentityRow>(sql)
            .bind(provider)
            .bind(subject)
            .fetch_optional(p)
            .await?),
        )
    }

    async fn user_identities(&self, user_id: &str) -> Result<Vec<IdentityRow>> {
        let sql = concat!(
            "SELECT ",
            identity_columns!(),
            " FROM user_identities WHERE user_id = $1 ORDER BY created_at, id"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, IdentityRow>(sql)
            .bind(user_id)
            .fetch_all(p)
            .await?),
        )
    }

    async fn identity_used(&self, id: &str, now: Millis, sealed: Option<&[u8]>) -> Result<()> {
        with_pool!(self, write, p => sqlx::query(
            "UPDATE user_identities SET last_login_at = $2, sealed_tokens = COALESCE($3, sealed_tokens) WHERE id = $1",
        )
        .bind(id)
        .bind(now.0)
        .bind(sealed)
        .execute(p)
        .await
        .map(|_| ())?);
        Ok(())
    }

    async fn unlink_identity(&self, user_id: &str, id: &str, now: Millis) -> Result<Option<bool>> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            // Holds the user's row (PostgreSQL) so that a concurrent unlink waits for this one.
            let has_password = sqlx::query_scalar::<_, bool>(
                "UPDATE users SET updated_at = $2 WHERE id = $1 RETURNING password_hash IS NOT NULL",
            )
            .bind(user_id)
            .bind(now.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(has_password) = has_password else {
                return Ok(None);
            };
            let identities = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM user_identities WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            let exists = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM user_identities WHERE user_id = $1 AND id = $2",
            )
            .bind(user_id)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if exists == 0 {
                return Ok(None);
            }
            if !has_password && identities <= 1 {
                return Ok(Some(false));
            }
            sqlx::query("DELETE FROM user_identities WHERE user_id = $1 AND id = $2")
                .bind(user_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(true))
        })
    }

    async fn insert_upstream_login(&self, r: &UpstreamLoginRow) -> Result<()> {
        with_pool!(self, write, p => sqlx::query(
            "INSERT INTO upstream_logins (state_hash, provider, browser_hash, return_to, link_user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(r.state_hash.as_bytes())
        .bind(&r.provider)
        .bind(r.browser_hash.as_bytes())
        .bind(&r.return_to)
        .bind(&r.link_user_id)
        .bind(r.created_at.0)
        .bind(r.expires_at.0)
        .execute(p)
        .await
        .map(|_| ())?);
        Ok(())
    }

    async fn take_upstream_login(
        &self,
        state_hash: &TokenHash,
        now: Millis,
    ) -> Result<Option<UpstreamLoginRow>> {
        let row = with_pool!(self, write, p => sqlx::query_as::<_, LoginTuple>(
            "UPDATE upstream_logins SET used_at = $2 \
             WHERE state_hash = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING state_hash, provider, browser_hash, return_to, link_user_id, created_at, expires_at",
        )
        .bind(state_hash.as_bytes())
        .bind(now.0)
        .fetch_optional(p)
        .await?);
        row.map(login_row).transpose()
    }

    async fn purge_accounts(&self, before: Millis, batch: u32) -> Result<u64> {
        let batch = i64::from(batch.max(1));
        with_pool!(self, write, p => {
            let links = sqlx::query(
                "DELETE FROM email_tokens WHERE token_hash IN \
                 (SELECT token_hash FROM email_tokens WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let logins = sqlx::query(
                "DELETE FROM upstream_logins WHERE state_hash IN \
                 (SELECT state_hash FROM upstream_logins WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            Ok(links + logins)
        })
    }
}
