//! Keys for HTTP message signatures (RFC 9421), looked up by the `keyid` a signer sends. An
//! `hmac-sha256` secret is stored sealed under the master key (this module never sees it in clear); an
//! `ed25519` key is its public half. Revocation is one conditional `UPDATE`, and every node polls
//! [`SignatureKeyStore::signature_keys_revoked_since`] to drop a revoked key from its cache.

use portcullis_core::clock::Millis;
use portcullis_core::ids::SignatureKeyId;

use crate::apikeys::KeyOwner;
use crate::{Result, Store, StoreError, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SignatureKeyRow {
    pub id: String,
    pub owner_id: Option<String>,
    pub name: String,
    /// `hmac-sha256` or `ed25519`.
    pub alg: String,
    /// The sealed HMAC secret, or the raw Ed25519 public key.
    pub key_material: Vec<u8>,
    /// Space-separated scopes the key's signatures carry.
    pub scopes: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

macro_rules! columns {
    () => {
        "id, owner_id, name, alg, key_material, scopes, created_at, revoked_at"
    };
}

pub trait SignatureKeyStore {
    fn insert_signature_key(
        &self,
        key: &SignatureKeyRow,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The key with this id, revoked or not.
    fn signature_key(
        &self,
        id: &SignatureKeyId,
    ) -> impl Future<Output = Result<Option<SignatureKeyRow>>> + Send;
    /// Keys of `owner` (all for administrators), oldest first, after the cursor.
    fn list_signature_keys(
        &self,
        owner: KeyOwner<'_>,
        after: Option<&SignatureKeyId>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<SignatureKeyRow>>> + Send;
    /// Revokes a live key of `owner` (`KeyOwner::All`: any); the revoked row, or `None` when there is
    /// no such live key (already revoked, another user's, or absent: the caller cannot tell which).
    fn revoke_signature_key(
        &self,
        id: &SignatureKeyId,
        owner: KeyOwner<'_>,
        now: Millis,
    ) -> impl Future<Output = Result<Option<SignatureKeyRow>>> + Send;
    /// Ids of keys revoked at or after `since`, oldest first: what other nodes poll.
    fn signature_keys_revoked_since(
        &self,
        since: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(String, Millis)>>> + Send;
}

/// The owner filter as one bound text: `all`, `nobody`, or a user id (which is never either word), so
/// each statement stays one static string.
fn owner_filter(owner: KeyOwner<'_>) -> &str {
    match owner {
        KeyOwner::All => "all",
        KeyOwner::Nobody => "nobody",
        KeyOwner::User(u) => u.as_str(),
    }
}

impl SignatureKeyStore for Store {
    async fn insert_signature_key(&self, k: &SignatureKeyRow) -> Result<()> {
        let sql = concat!(
            "INSERT INTO signature_keys (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        with_pool!(self, write, p => {
            sqlx::query(sql)
                .bind(&k.id)
                .bind(&k.owner_id)
                .bind(&k.name)
                .bind(&k.alg)
                .bind(&k.key_material)
                .bind(&k.scopes)
                .bind(k.created_at)
                .bind(k.revoked_at)
                .execute(p)
                .await
                .map_err(StoreError::unique("signature_keys_pkey"))?;
        });
        Ok(())
    }

    async fn signature_key(&self, id: &SignatureKeyId) -> Result<Option<SignatureKeyRow>> {
        let sql = concat!("SELECT ", columns!(), " FROM signature_keys WHERE id = $1");
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, SignatureKeyRow>(sql)
            .bind(id.as_str())
            .fetch_optional(p)
            .await?),
        )
    }

    async fn list_signature_keys(
        &self,
        owner: KeyOwner<'_>,
        after: Option<&SignatureKeyId>,
        limit: i64,
    ) -> Result<Vec<SignatureKeyRow>> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM signature_keys WHERE id > $1 AND ($3 = 'all' OR ($3 = 'nobody' AND owner_id IS NULL) OR owner_id = $3) ORDER BY id LIMIT $2"
        );
        let after = after.map_or("", SignatureKeyId::as_str);
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, SignatureKeyRow>(sql)
            .bind(after)
            .bind(limit)
            .bind(owner_filter(owner))
            .fetch_all(p)
            .await?),
        )
    }

    async fn revoke_signature_key(
        &self,
        id: &SignatureKeyId,
        owner: KeyOwner<'_>,
        now: Millis,
    ) -> Result<Option<SignatureKeyRow>> {
        let sql = concat!(
            "UPDATE signature_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
             AND ($3 = 'all' OR ($3 = 'nobody' AND owner_id IS NULL) OR owner_id = $3) RETURNING ",
            columns!()
        );
        Ok(
            with_pool!(self, write, p => sqlx::query_as::<_, SignatureKeyRow>(sql)
            .bind(id.as_str())
            .bind(now.0)
            .bind(owner_filter(owner))
            .fetch_optional(p)
            .await?),
        )
    }

    async fn signature_keys_revoked_since(
        &self,
        since: Millis,
        limit: i64,
    ) -> Result<Vec<(String, Millis)>> {
        let rows = with_pool!(self, read, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT id, revoked_at FROM signature_keys WHERE revoked_at >= $1 ORDER BY revoked_at LIMIT $2",
        )
        .bind(since.0)
        .bind(limit)
        .fetch_all(p)
        .await?);
        Ok(rows.into_iter().map(|(id, at)| (id, Millis(at))).collect())
    }
}
