//! Refresh tokens, grouped in families (every token descended from one login).
//!
//! Rotation is decided by one conditional `UPDATE … RETURNING` that marks the presented token spent
//! only if it is live: of any number of concurrent uses, exactly one gets the row back. Presenting a
//! spent token afterwards is reuse (OAuth 2.0 Security BCP, RFC 9700 §4.14.2): the whole family is
//! revoked, its newest token included. An optional grace period lets a client that lost the response
//! retry with the token it just spent: it gets a fresh token and the unused sibling is revoked, so a
//! family never holds two live tokens.

use portcullis_core::clock::Millis;
use portcullis_core::ids::{FamilyId, RefreshTokenId};
use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, with_pool};

/// Revokes a family and every token in it, inside the caller's transaction (a macro because the
/// transaction's type differs per backend).
macro_rules! revoke_family {
    ($tx:expr, $family_id:expr, $now:expr, $reason:expr) => {{
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind($family_id)
        .bind($now.0)
        .bind($reason)
        .execute(&mut *$tx)
        .await?;
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL")
            .bind($family_id)
            .bind($now.0)
            .execute(&mut *$tx)
            .await?;
    }};
}

#[derive(Debug, Clone)]
pub struct NewFamily {
    pub id: FamilyId,
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub session_id: Option<String>,
    pub created_at: Millis,
    /// Absolute end of the family: no token of it outlives this.
    pub expires_at: Millis,
}

/// The token to issue next.
#[derive(Debug, Clone)]
pub struct NextToken {
    pub id: RefreshTokenId,
    pub hash: TokenHash,
    /// Lifetime of one token; capped by the family's absolute expiry.
    pub ttl_ms: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FamilyRow {
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub session_id: Option<String>,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub enum Rotation {
    /// The presented token is now spent and `next` was stored, expiring at `expires_at`.
    Rotated {
        family: FamilyRow,
        expires_at: Millis,
    },
    /// A spent token was presented again: the family has been revoked.
    Reused { family_id: String, user_id: String },
    /// Unknown, revoked or expired.
    Invalid,
}

#[derive(sqlx::FromRow)]
struct TokenState {
    id: String,
    family_id: String,
    user_id: String,
    spent_at: Option<i64>,
    revoked_at: Option<i64>,
    expires_at: i64,
    family_revoked_at: Option<i64>,
    family_expires_at: i64,
}

macro_rules! family_columns {
    () => {
        "id, user_id, client_id, scope, session_id, expires_at"
    };
}

pub trait RefreshTokenStore {
    /// Stores a new family and its first token; returns the token's expiry.
    fn start_family(
        &self,
        family: &NewFamily,
        first: &NextToken,
    ) -> impl Future<Output = Result<Millis>> + Send;
    fn rotate(
        &self,
        presented: &TokenHash,
        now: Millis,
        grace_ms: i64,
        next: &NextToken,
    ) -> impl Future<Output = Result<Rotation>> + Send;
    /// Revokes the family of any token of it (logout). Returns `(family_id, user_id)` when one was found.
    fn revoke_family_of(
        &self,
        presented: &TokenHash,
        now: Millis,
        reason: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    /// Revokes every family of a user; returns how many were live.
    fn revoke_user_families(
        &self,
        user_id: &str,
        now: Millis,
        reason: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
}

impl RefreshTokenStore for Store {
    async fn start_family(&self, f: &NewFamily, first: &NextToken) -> Result<Millis> {
        let expires_at = Millis(
            f.created_at
                .0
                .saturating_add(first.ttl_ms)
                .min(f.expires_at.0),
        );
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO refresh_families (id, user_id, client_id, scope, session_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(f.id.as_str())
            .bind(&f.user_id)
            .bind(&f.client_id)
            .bind(&f.scope)
            .bind(&f.session_id)
            .bind(f.created_at.0)
            .bind(f.expires_at.0)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (id, family_id, parent_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, NULL, $3, $4, $5)",
            )
            .bind(first.id.as_str())
            .bind(f.id.as_str())
            .bind(first.hash.as_bytes())
            .bind(f.created_at.0)
            .bind(expires_at.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(expires_at)
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        now: Millis,
        grace_ms: i64,
        next: &NextToken,
    ) -> Result<Rotation> {
        let family_sql = concat!(
            "SELECT ",
            family_columns!(),
            " FROM refresh_families WHERE id = $1"
        );
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            // Lock order (PostgreSQL): the family row first, then its tokens, as every revocation does.
            // Without it PostgreSQL deadlocks (40P01) under concurrent presentations of one family's
            // tokens: a conditional UPDATE that waited on a row and then found it no longer matching
            // still keeps that row locked, so the reuse and grace paths below (and revocations, which
            // update every token of the family in one statement) would take token rows in conflicting
            // orders. SQLite needs no lock: its single writer already serialises rotations, and the
            // statement would cost every refresh a write.
            if self.is_postgres() {
                sqlx::query(
                    "UPDATE refresh_families SET revoked_reason = revoked_reason \
                     WHERE id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
                )
                .bind(presented.as_bytes())
                .execute(&mut *tx)
                .await?;
            }
            // The decision: only a live token of a live family is spent, and only once.
            let spent = sqlx::query_as::<_, (String, String)>(
                "UPDATE refresh_tokens SET spent_at = $2 \
                 WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
                   AND family_id IN (SELECT id FROM refresh_families WHERE revoked_at IS NULL AND expires_at > $2) \
                 RETURNING id, family_id",
            )
            .bind(presented.as_bytes())
            .bind(now.0)
            .fetch_optional(&mut *tx)
            .await?;

            let (parent_id, family_id) = match spent {
                Some(ids) => ids,
                None => {
                    let state = sqlx::query_as::<_, TokenState>(
                        "SELECT t.id, t.family_id, f.user_id, t.spent_at, t.revoked_at, t.expires_at, \
                                f.revoked_at AS family_revoked_at, f.expires_at AS family_expires_at \
                         FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
                         WHERE t.token_hash = $1",
                    )
                    .bind(presented.as_bytes())
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(state) = state else {
                        return Ok(Rotation::Invalid);
                    };
                    let Some(spent_at) = state.spent_at else {
                        // Revoked or expired, never used: nothing to detect.
                        return Ok(Rotation::Invalid);
                    };
                    let family_live = state.family_revoked_at.is_none() && state.family_expires_at > now.0;
                    let in_grace = grace_ms > 0
                        && now.0.saturating_sub(spent_at) <= grace_ms
                        && state.revoked_at.is_none()
                        && state.expires_at > now.0;
                    if family_live && in_grace {
                        // A retry after a lost response: valid only while the child issued for this
                        // token is still unused; revoking that child is itself the decision.
                        let sibling = sqlx::query_scalar::<_, String>(
                            "UPDATE refresh_tokens SET revoked_at = $2 \
                             WHERE parent_id = $1 AND spent_at IS NULL AND revoked_at IS NULL RETURNING id",
                        )
                        .bind(&state.id)
                        .bind(now.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if sibling.is_some() {
                            (state.id, state.family_id)
                        } else {
                            revoke_family!(tx, &state.family_id, now, "reuse");
                            tx.commit().await?;
                            return Ok(Rotation::Reused { family_id: state.family_id, user_id: state.user_id });
                        }
                    } else {
                        revoke_family!(tx, &state.family_id, now, "reuse");
                        tx.commit().await?;
                        return Ok(Rotation::Reused { family_id: state.family_id, user_id: state.user_id });
                    }
                }
            };

            let family = sqlx::query_as::<_, FamilyRow>(family_sql).bind(&family_id).fetch_one(&mut *tx).await?;
            let expires_at = Millis(now.0.saturating_add(next.ttl_ms).min(family.expires_at));
            sqlx::query(
                "INSERT INTO refresh_tokens (id, family_id, parent_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(next.id.as_str())
            .bind(&family_id)
            .bind(&parent_id)
            .bind(next.hash.as_bytes())
            .bind(now.0)
            .bind(expires_at.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Rotation::Rotated { family, expires_at })
        })
    }

    async fn revoke_family_of(
        &self,
        presented: &TokenHash,
        now: Millis,
        reason: &str,
    ) -> Result<Option<(String, String)>> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let found = sqlx::query_as::<_, (String, String)>(
                "SELECT f.id, f.user_id FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
                 WHERE t.token_hash = $1",
            )
            .bind(presented.as_bytes())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((family_id, _)) = &found {
                revoke_family!(tx, family_id, now, reason);
            }
            tx.commit().await?;
            Ok(found)
        })
    }

    async fn revoke_user_families(&self, user_id: &str, now: Millis, reason: &str) -> Result<u64> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let families = sqlx::query(
                "UPDATE refresh_families SET revoked_at = $2, revoked_reason = $3 \
                 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user_id)
            .bind(now.0)
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL \
                 AND family_id IN (SELECT id FROM refresh_families WHERE user_id = $1)",
            )
            .bind(user_id)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(families)
        })
    }
}
