//! JWT signing keys and their schedule: published (in the JWKS) → active (signing) → retired (no longer
//! signing, still published) → expired (gone from the JWKS once every token it signed has expired).
//! Private keys are stored sealed under the master key; this module never sees them in clear.

use portcullis_core::clock::Millis;

use crate::{Result, Store, StoreError, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    /// AES-256-GCM sealed PKCS#8.
    pub private_key: Vec<u8>,
    pub public_jwk: String,
    pub created_at: i64,
    pub publish_at: i64,
    pub activate_at: i64,
    pub retire_at: Option<i64>,
    pub expire_at: Option<i64>,
}

macro_rules! signing_key_columns {
    () => {
        "kid, alg, private_key, public_jwk, created_at, publish_at, activate_at, retire_at, expire_at"
    };
}

pub trait SigningKeyStore {
    /// Stores a new key and schedules every older, unretired key of its algorithm to retire when it
    /// activates and to leave the JWKS `overlap_ms` later (the longest lifetime of a token they signed).
    /// Keys of other algorithms (the ring holds one per use) are left alone.
    fn add_signing_key(
        &self,
        key: &SigningKeyRow,
        overlap_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every key not yet expired at `now`, oldest first.
    fn live_signing_keys(
        &self,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<SigningKeyRow>>> + Send;
    /// Every key, newest first (for `signing-keys list`).
    fn all_signing_keys(&self) -> impl Future<Output = Result<Vec<SigningKeyRow>>> + Send;
    /// Ends a key at once (an emergency: it may be compromised): retired and expired at `now`, so it
    /// neither signs nor verifies anywhere. False when there is no such live key.
    fn revoke_signing_key(
        &self,
        kid: &str,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Kids of keys whose expiry fell in `(after, until]`: what every node polls to drop, within a
    /// second, a key revoked elsewhere.
    fn signing_keys_expired_between(
        &self,
        after: Millis,
        until: Millis,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
}

impl SigningKeyStore for Store {
    async fn add_signing_key(&self, k: &SigningKeyRow, overlap_ms: i64) -> Result<()> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE signing_keys SET retire_at = $1, expire_at = $2 \
                 WHERE retire_at IS NULL AND activate_at < $1 AND alg = $3",
            )
            .bind(k.activate_at)
            .bind(k.activate_at.saturating_add(overlap_ms))
            .bind(&k.alg)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO signing_keys (kid, alg, private_key, public_jwk, created_at, publish_at, activate_at, retire_at, expire_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&k.kid)
            .bind(&k.alg)
            .bind(&k.private_key)
            .bind(&k.public_jwk)
            .bind(k.created_at)
            .bind(k.publish_at)
            .bind(k.activate_at)
            .bind(k.retire_at)
            .bind(k.expire_at)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::unique("signing_keys_pkey"))?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn live_signing_keys(&self, now: Millis) -> Result<Vec<SigningKeyRow>> {
        let sql = concat!(
            "SELECT ",
            signing_key_columns!(),
            " FROM signing_keys WHERE expire_at IS NULL OR expire_at > $1 ORDER BY activate_at, kid"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, SigningKeyRow>(sql).bind(now.0).fetch_all(p).await?),
        )
    }

    async fn revoke_signing_key(&self, kid: &str, now: Millis) -> Result<bool> {
        let done = with_pool!(self, write, p => sqlx::query(
            "UPDATE signing_keys SET retire_at = CASE WHEN retire_at IS NULL OR retire_at > $2 THEN $2 ELSE retire_at END, \
             expire_at = $2 WHERE kid = $1 AND (expire_at IS NULL OR expire_at > $2)",
        )
        .bind(kid)
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    async fn signing_keys_expired_between(
        &self,
        after: Millis,
        until: Millis,
    ) -> Result<Vec<String>> {
        Ok(with_pool!(self, read, p => sqlx::query_scalar::<_, String>(
            "SELECT kid FROM signing_keys WHERE expire_at > $1 AND expire_at <= $2",
        )
        .bind(after.0)
        .bind(until.0)
        .fetch_all(p)
        .await?))
    }

    async fn all_signing_keys(&self) -> Result<Vec<SigningKeyRow>> {
        let sql = concat!(
            "SELECT ",
            signing_key_columns!(),
            " FROM signing_keys ORDER BY activate_at DESC, kid"
        );
        Ok(with_pool!(self, read, p => sqlx::query_as::<_, SigningKeyRow>(sql).fetch_all(p).await?))
    }
}
