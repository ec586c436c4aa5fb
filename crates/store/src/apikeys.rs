//! API keys as stored: the SHA-256 of the key, never the key. Every decision is one conditional
//! statement: spending one use of `remaining`, rolling a key (once), revoking it and the keys rolled
//! into it.
//!
//! Rolling: the old row gets `rolled_to` (the new key's id) and `grace_until`; until then it keeps
//! working, sharing the new key's `remaining` counter (see [`ApiKeyRow::counter_id`]) so a roll never
//! doubles a key's uses. Rolling the new key again re-points older keys still in grace at the newest.

use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, StoreError, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    /// `None` for keys that belong to no user (root and service keys, managed by administrators).
    pub owner_id: Option<String>,
    pub prefix: String,
    pub start: String,
    pub key_hash: Vec<u8>,
    pub name: String,
    /// Space-separated.
    pub scopes: String,
    /// A JSON object, as text, written by administrators only.
    pub meta: Option<String>,
    /// A JSON object, as text, written by the key's owner.
    pub owner_meta: Option<String>,
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
    /// The key whose rate-limit state this one spends (set for keys made by a rate-limited key).
    pub ratelimit_bucket: Option<String>,
}

impl ApiKeyRow {
    /// The row whose `remaining` this key spends: its own, or while it is in the grace period of a
    /// roll, the key it was rolled to.
    pub fn counter_id(&self) -> &str {
        self.rolled_to.as_deref().unwrap_or(&self.id)
    }

    /// Whose rate-limit state this key spends: the shared bucket it was given, else its counter's.
    pub fn bucket_id(&self) -> &str {
        self.ratelimit_bucket
            .as_deref()
            .unwrap_or_else(|| self.counter_id())
    }
}

/// Which keys a listing covers.
#[derive(Debug, Clone, Copy)]
pub enum KeyOwner<'a> {
    /// Every key (administrators).
    All,
    /// Keys that belong to no user.
    Nobody,
    User(&'a str),
}

/// A change to a key. `None` leaves a field alone; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyPatch {
    pub name: Option<String>,
    pub scopes: Option<String>,
    pub meta: Option<Option<String>>,
    pub owner_meta: Option<Option<String>>,
    pub expires_at: Option<Option<i64>>,
    pub remaining: Option<Option<i64>>,
    /// `(limit, duration_ms)`.
    pub ratelimit: Option<Option<(i64, i64)>>,
}

/// The new key of a roll: what the server generated. Everything else is copied from the old row by
/// the database, in the same transaction, so a concurrent verify or patch cannot be lost.
#[derive(Debug, Clone)]
pub struct RolledKey {
    pub id: String,
    pub start: String,
    pub key_hash: Vec<u8>,
}

/// The outcome of spending one use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Spent; the uses left (`None`: the key is unlimited).
    Spent(Option<i64>),
    /// No uses left, or the key was revoked meanwhile.
    Exhausted,
}

macro_rules! api_key_columns {
    () => {
        "id, owner_id, prefix, start, key_hash, name, scopes, meta, owner_meta, created_at, updated_at, \
     expires_at, revoked_at, remaining, ratelimit_limit, ratelimit_duration_ms, last_used_at, rolled_to, \
     grace_until, ratelimit_bucket"
    };
}

pub trait ApiKeyStore {
    fn insert_api_key(&self, key: &ApiKeyRow) -> impl Future<Output = Result<()>> + Send;
    fn api_key_by_hash(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<ApiKeyRow>>> + Send;
    fn api_key_by_id(&self, id: &str) -> impl Future<Output = Result<Option<ApiKeyRow>>> + Send;
    /// Keys in creation order, `limit` at most, after the key id `after`.
    fn list_api_keys(
        &self,
        owner: KeyOwner<'_>,
        after: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ApiKeyRow>>> + Send;
    fn count_api_keys(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Applies `patch` to a key that is not revoked; `None` when there is no such key. Older keys
    /// still in the grace period of a roll into it take the same scopes, meta and limits (a key in
    /// grace is never broader than its successor); the hashes of those returned with the row.
    fn update_api_key(
        &self,
        id: &str,
        patch: &ApiKeyPatch,
        now: i64,
    ) -> impl Future<Output = Result<Option<(ApiKeyRow, Vec<Vec<u8>>)>>> + Send;
    /// Spends `uses` of `remaining` of the key `id` (a counter id), atomically: all of them or none.
    fn spend_api_key(&self, id: &str, uses: i64) -> impl Future<Output = Result<Spend>> + Send;
    /// Revokes the key and any key still rolled into it; returns the hashes of the keys revoked.
    fn revoke_api_key(
        &self,
        id: &str,
        now: i64,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;
    /// Rolls `old_id` (not revoked, not rolled before) into `new`, which copies its settings. The old
    /// key keeps working until `grace_until`. Returns the new row and the hashes of every older key
    /// whose row changed. `StoreError::NotFound` when the old key is unknown, revoked or already rolled.
    fn roll_api_key(
        &self,
        old_id: &str,
        new: &RolledKey,
        grace_until: i64,
        now: i64,
    ) -> impl Future<Output = Result<(ApiKeyRow, Vec<Vec<u8>>)>> + Send;
    /// Hashes and change times of the keys changed (patched, revoked, rolled) at or after `since`, at
    /// most `limit`, oldest change first. Every node polls this to drop stale cached keys.
    fn api_keys_changed_since(
        &self,
        since: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(Vec<u8>, i64)>>> + Send;
    /// Records `last_used_at` for a batch of keys (never moving it backwards).
    fn touch_api_keys(&self, used: &[(String, i64)]) -> impl Future<Output = Result<()>> + Send;
}

impl ApiKeyStore for Store {
    async fn insert_api_key(&self, k: &ApiKeyRow) -> Result<()> {
        let sql = concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
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
                .bind(&k.owner_meta)
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
                .bind(&k.ratelimit_bucket)
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

    async fn api_key_by_id(&self, id: &str) -> Result<Option<ApiKeyRow>> {
        let sql = concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE id = $1"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, ApiKeyRow>(sql).bind(id).fetch_optional(p).await?),
        )
    }

    async fn list_api_keys(
        &self,
        owner: KeyOwner<'_>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApiKeyRow>> {
        // Ids are UUIDv7: ordering by id is ordering by creation.
        let (sql, owner_id) = match owner {
            KeyOwner::All => (
                concat!(
                    "SELECT ",
                    api_key_columns!(),
                    " FROM api_keys WHERE id > $1 AND $2 IS NULL ORDER BY id LIMIT $3"
                ),
                None,
            ),
            KeyOwner::Nobody => (
                concat!(
                    "SELECT ",
                    api_key_columns!(),
                    " FROM api_keys WHERE id > $1 AND owner_id IS NULL AND $2 IS NULL ORDER BY id LIMIT $3"
                ),
                None,
            ),
            KeyOwner::User(u) => (
                concat!(
                    "SELECT ",
                    api_key_columns!(),
                    " FROM api_keys WHERE id > $1 AND owner_id = $2 ORDER BY id LIMIT $3"
                ),
                Some(u),
            ),
        };
        let after = after.unwrap_or("");
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, ApiKeyRow>(sql)
            .bind(after)
            .bind(owner_id)
            .bind(limit)
            .fetch_all(p)
            .await?),
        )
    }

    async fn count_api_keys(&self) -> Result<i64> {
        Ok(
            with_pool!(self, read, p => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM api_keys").fetch_one(p).await?),
        )
    }

    async fn update_api_key(
        &self,
        id: &str,
        patch: &ApiKeyPatch,
        now: i64,
    ) -> Result<Option<(ApiKeyRow, Vec<Vec<u8>>)>> {
        // One statement with a flag per field: only the fields named change, so a concurrent spend of
        // `remaining` is never overwritten by a patch of something else.
        let own = concat!(
            "UPDATE api_keys SET updated_at = $2, \
             name = CASE WHEN $3 THEN $4 ELSE name END, \
             scopes = CASE WHEN $5 THEN $6 ELSE scopes END, \
             meta = CASE WHEN $7 THEN $8 ELSE meta END, \
             expires_at = CASE WHEN $9 THEN $10 ELSE expires_at END, \
             remaining = CASE WHEN $11 THEN $12 ELSE remaining END, \
             ratelimit_limit = CASE WHEN $13 THEN $14 ELSE ratelimit_limit END, \
             ratelimit_duration_ms = CASE WHEN $15 THEN $16 ELSE ratelimit_duration_ms END, \
             owner_meta = CASE WHEN $17 THEN $18 ELSE owner_meta END \
             WHERE id = $1 AND revoked_at IS NULL RETURNING ",
            api_key_columns!()
        );
        // The keys rolled into this one take the same scopes, meta and limits (not its name, and not
        // `remaining`: a key in grace spends its successor's counter already).
        let predecessors = "UPDATE api_keys SET updated_at = $2, \
             scopes = CASE WHEN $3 THEN $4 ELSE scopes END, \
             meta = CASE WHEN $5 THEN $6 ELSE meta END, \
             expires_at = CASE WHEN $7 THEN $8 ELSE expires_at END, \
             ratelimit_limit = CASE WHEN $9 THEN $10 ELSE ratelimit_limit END, \
             ratelimit_duration_ms = CASE WHEN $11 THEN $12 ELSE ratelimit_duration_ms END, \
             owner_meta = CASE WHEN $13 THEN $14 ELSE owner_meta END \
             WHERE rolled_to = $1 AND revoked_at IS NULL RETURNING key_hash";
        let rl = patch.ratelimit.map(|r| r.map(|(l, _)| l));
        let rd = patch.ratelimit.map(|r| r.map(|(_, d)| d));
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query_as::<_, ApiKeyRow>(own)
                .bind(id)
                .bind(now)
                .bind(patch.name.is_some())
                .bind(patch.name.as_deref())
                .bind(patch.scopes.is_some())
                .bind(patch.scopes.as_deref())
                .bind(patch.meta.is_some())
                .bind(patch.meta.clone().flatten())
                .bind(patch.expires_at.is_some())
                .bind(patch.expires_at.flatten())
                .bind(patch.remaining.is_some())
                .bind(patch.remaining.flatten())
                .bind(rl.is_some())
                .bind(rl.flatten())
                .bind(rd.is_some())
                .bind(rd.flatten())
                .bind(patch.owner_meta.is_some())
                .bind(patch.owner_meta.clone().flatten())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let hashes = sqlx::query_scalar::<_, Vec<u8>>(predecessors)
                .bind(id)
                .bind(now)
                .bind(patch.scopes.is_some())
                .bind(patch.scopes.as_deref())
                .bind(patch.meta.is_some())
                .bind(patch.meta.clone().flatten())
                .bind(patch.expires_at.is_some())
                .bind(patch.expires_at.flatten())
                .bind(rl.is_some())
                .bind(rl.flatten())
                .bind(rd.is_some())
                .bind(rd.flatten())
                .bind(patch.owner_meta.is_some())
                .bind(patch.owner_meta.clone().flatten())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some((row, hashes)))
        })
    }

    async fn spend_api_key(&self, id: &str, uses: i64) -> Result<Spend> {
        // The decision is the WHERE clause: of N concurrent spends of one use of a key with k uses
        // left, exactly min(N, k) find `remaining >= 1`.
        let sql = "UPDATE api_keys SET remaining = remaining - $2 \
                   WHERE id = $1 AND revoked_at IS NULL AND (remaining IS NULL OR remaining >= $2) \
                   RETURNING remaining";
        let left = with_pool!(self, write, p => sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(id)
            .bind(uses.max(1))
            .fetch_optional(p)
            .await?);
        Ok(match left {
            Some(left) => Spend::Spent(left),
            None => Spend::Exhausted,
        })
    }

    async fn revoke_api_key(&self, id: &str, now: i64) -> Result<Vec<Vec<u8>>> {
        let sql = "UPDATE api_keys SET revoked_at = $2, updated_at = $2 \
                   WHERE (id = $1 OR rolled_to = $1) AND revoked_at IS NULL RETURNING key_hash";
        Ok(
            with_pool!(self, write, p => sqlx::query_scalar::<_, Vec<u8>>(sql)
            .bind(id)
            .bind(now)
            .fetch_all(p)
            .await?),
        )
    }

    async fn roll_api_key(
        &self,
        old_id: &str,
        new: &RolledKey,
        grace_until: i64,
        now: i64,
    ) -> Result<(ApiKeyRow, Vec<Vec<u8>>)> {
        let insert = concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") SELECT $2, owner_id, prefix, $3, $4, name, scopes, meta, owner_meta, $5, $5, expires_at, \
             NULL, remaining, ratelimit_limit, ratelimit_duration_ms, NULL, NULL, NULL, ratelimit_bucket \
             FROM api_keys WHERE id = $1 RETURNING ",
            api_key_columns!()
        );
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            // The decision: a key is rolled once. A second roll of the same key finds rolled_to set.
            let old_hash = sqlx::query_scalar::<_, Vec<u8>>(
                "UPDATE api_keys SET rolled_to = $2, grace_until = $3, updated_at = $4 \
                 WHERE id = $1 AND revoked_at IS NULL AND rolled_to IS NULL RETURNING key_hash",
            )
            .bind(old_id)
            .bind(&new.id)
            .bind(grace_until)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(old_hash) = old_hash else {
                return Err(StoreError::NotFound);
            };
            let row = sqlx::query_as::<_, ApiKeyRow>(insert)
                .bind(old_id)
                .bind(&new.id)
                .bind(&new.start)
                .bind(&new.key_hash)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::unique("api_keys_hash_unique"))?;
            // Keys still in grace from earlier rolls now spend the newest key's counter.
            let mut changed = sqlx::query_scalar::<_, Vec<u8>>(
                "UPDATE api_keys SET rolled_to = $2, updated_at = $3 \
                 WHERE rolled_to = $1 AND revoked_at IS NULL RETURNING key_hash",
            )
            .bind(old_id)
            .bind(&new.id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            changed.push(old_hash);
            Ok((row, changed))
        })
    }

    async fn api_keys_changed_since(&self, since: i64, limit: i64) -> Result<Vec<(Vec<u8>, i64)>> {
        let sql = "SELECT key_hash, updated_at FROM api_keys WHERE updated_at >= $1 \
                   ORDER BY updated_at LIMIT $2";
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, (Vec<u8>, i64)>(sql)
            .bind(since)
            .bind(limit)
            .fetch_all(p)
            .await?),
        )
    }

    async fn touch_api_keys(&self, used: &[(String, i64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            for (id, at) in used {
                sqlx::query(
                    "UPDATE api_keys SET last_used_at = $2 \
                     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
                )
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
