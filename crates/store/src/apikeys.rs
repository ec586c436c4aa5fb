//! API keys as stored: SHA-256 of the key, never the key. The full lifecycle arrives with the API-key
//! issue; the foundation needs creation and lookup for root keys.

use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, StoreError, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    /// `None` for root keys, which belong to no user.
    pub owner_id: Option<String>,
    pub prefix: String,
    pub start: String,
    pub key_hash: Vec<u8>,
    pub name: String,
    /// Space-separated.
    pub scopes: String,
    pub meta: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub remaining: Option<i64>,
    pub ratelimit_limit: Option<i64>,
    pub ratelimit_duration_ms: Option<i64>,
    pub last_used_at: Option<i64>,
    pub rolled_to: Option<String>,
    pub grace_until: Option<i64>,
}

macro_rules! api_key_columns {
    () => {
        "id, owner_id, prefix, start, key_hash, name, scopes, meta, created_at, updated_at, expires_at, \
     revoked_at, remaining, ratelimit_limit, ratelimit_duration_ms, last_used_at, rolled_to, grace_until"
    };
}

pub trait ApiKeyStore {
    fn insert_api_key(&self, key: &ApiKeyRow) -> impl Future<Output = Result<()>> + Send;
    fn api_key_by_hash(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<ApiKeyRow>>> + Send;
    fn count_api_keys(&self) -> impl Future<Output = Result<i64>> + Send;
}

impl ApiKeyStore for Store {
    async fn insert_api_key(&self, k: &ApiKeyRow) -> Result<()> {
        let sql = concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        );
        with_pool!(self, write, p => {
            sqlx::query(sql)
                .bind(&k.id)
                .bind(&k.owner_id)
                .bind(&k.prefix)
                .bind(&k.start)
                .bind(&k.key_hash)
                .bind(&k.name)
                .bind(&k.scopes)
                .bind(&k.meta)
                .bind(k.created_at)
                .bind(k.updated_at)
                .bind(k.expires_at)
                .bind(k.revoked_at)
                .bind(k.remaining)
                .bind(k.ratelimit_limit)
                .bind(k.ratelimit_duration_ms)
                .bind(k.last_used_at)
                .bind(&k.rolled_to)
                .bind(k.grace_until)
                .execute(p)
                .await
                .map_err(StoreError::unique("api_keys_hash_unique"))?;
        });
        Ok(())
    }

    async fn api_key_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiKeyRow>> {
        let sql = concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE key_hash = $1"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, ApiKeyRow>(sql).bind(hash.as_bytes()).fetch_optional(p).await?),
        )
    }

    async fn count_api_keys(&self) -> Result<i64> {
        Ok(
            with_pool!(self, read, p => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM api_keys").fetch_one(p).await?),
        )
    }
}
