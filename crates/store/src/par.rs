//! RFC 9126 pushed authorization requests: what a client pushed to `/oauth2/par`, read back when the
//! browser arrives with the `request_uri`, and spent once by the code it leads to (or the denial).

use portcullis_core::clock::Millis;
use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, with_pool};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParRow {
    pub request_hash: TokenHash,
    pub client_id: String,
    /// The pushed parameters, form-encoded.
    pub params: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

pub trait ParStore {
    fn insert_par(&self, row: &ParRow) -> impl Future<Output = Result<()>> + Send;
    /// The parameters of `client_id`'s unspent, unexpired request. The first read moves its expiry to
    /// `open_until` (time to log in and consent); later reads (a reload, the way back from the login)
    /// keep it.
    fn open_par(
        &self,
        hash: &TokenHash,
        client_id: &str,
        now: Millis,
        open_until: Millis,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Spends the request; false when it was spent already (or is gone).
    fn spend_par(&self, hash: &TokenHash, now: Millis)
    -> impl Future<Output = Result<bool>> + Send;
}

impl ParStore for Store {
    async fn insert_par(&self, r: &ParRow) -> Result<()> {
        with_pool!(self, write, p => sqlx::query(
            "INSERT INTO oauth_par_requests (request_hash, client_id, params, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(r.request_hash.as_bytes())
        .bind(&r.client_id)
        .bind(&r.params)
        .bind(r.created_at.0)
        .bind(r.expires_at.0)
        .execute(p)
        .await
        .map(|_| ())?);
        Ok(())
    }

    async fn open_par(
        &self,
        hash: &TokenHash,
        client_id: &str,
        now: Millis,
        open_until: Millis,
    ) -> Result<Option<String>> {
        Ok(
            with_pool!(self, write, p => sqlx::query_scalar::<_, String>(
            "UPDATE oauth_par_requests SET \
             expires_at = CASE WHEN opened_at IS NULL THEN $4 ELSE expires_at END, \
             opened_at = COALESCE(opened_at, $3) \
             WHERE request_hash = $1 AND client_id = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING params",
        )
        .bind(hash.as_bytes())
        .bind(client_id)
        .bind(now.0)
        .bind(open_until.0)
        .fetch_optional(p)
        .await?),
        )
    }

    async fn spend_par(&self, hash: &TokenHash, now: Millis) -> Result<bool> {
        let n = with_pool!(self, write, p => sqlx::query(
            "UPDATE oauth_par_requests SET used_at = $2 WHERE request_hash = $1 AND used_at IS NULL",
        )
        .bind(hash.as_bytes())
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }
}
