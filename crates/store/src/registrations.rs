//! RFC 7591 / 7592 registrations: which registration access token manages which dynamically
//! registered client, and the metadata it registered.

use portcullis_core::clock::Millis;
use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, with_pool};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRow {
    pub client_id: String,
    pub token_hash: TokenHash,
    /// The registered metadata (JSON object).
    pub metadata: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

pub trait RegistrationStore {
    fn insert_registration(&self, r: &RegistrationRow) -> impl Future<Output = Result<()>> + Send;
    /// The registration the token manages, if it manages `client_id`.
    fn registration(
        &self,
        client_id: &str,
        token: &TokenHash,
    ) -> impl Future<Output = Result<Option<RegistrationRow>>> + Send;
    fn update_registration(
        &self,
        client_id: &str,
        metadata: &str,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
}

impl RegistrationStore for Store {
    async fn insert_registration(&self, r: &RegistrationRow) -> Result<()> {
        with_pool!(self, write, p => sqlx::query(
            "INSERT INTO oauth_client_registrations (client_id, token_hash, metadata, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&r.client_id)
        .bind(r.token_hash.as_bytes())
        .bind(&r.metadata)
        .bind(r.created_at.0)
        .bind(r.updated_at.0)
        .execute(p)
        .await
        .map(|_| ())?);
        Ok(())
    }

    async fn registration(
        &self,
        client_id: &str,
        token: &TokenHash,
    ) -> Result<Option<RegistrationRow>> {
        let row = with_pool!(self, read, p => sqlx::query_as::<_, (String, Vec<u8>, String, i64, i64)>(
            "SELECT client_id, token_hash, metadata, created_at, updated_at FROM oauth_client_registrations \
             WHERE client_id = $1 AND token_hash = $2",
        )
        .bind(client_id)
        .bind(token.as_bytes())
        .fetch_optional(p)
        .await?);
        row.map(|(client_id, hash, metadata, created_at, updated_at)| {
            Ok(RegistrationRow {
                client_id,
                token_hash: crate::column::hash(hash)?,
                metadata,
                created_at: Millis(created_at),
                updated_at: Millis(updated_at),
            })
        })
        .transpose()
    }

    async fn update_registration(
        &self,
        client_id: &str,
        metadata: &str,
        now: Millis,
    ) -> Result<bool> {
        let n = with_pool!(self, write, p => sqlx::query(
            "UPDATE oauth_client_registrations SET metadata = $2, updated_at = $3 WHERE client_id = $1",
        )
        .bind(client_id)
        .bind(metadata)
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }
}
