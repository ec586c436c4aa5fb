//! API keys as stored: the SHA-256 of the key, never the key. Every decision is one conditional
//! statement: spending one use of `remaining`, rolling a key (once), revoking it and the keys rolled
//! into it.
//!
//! Rolling: the old row gets `rolled_to` (the new key's id) and `grace_until`; until then it keeps
//! working, sharing the new key's `remaining` counter (see [`ApiKeyRow::counter_id`]) so a roll never
//! doubles a key's uses. Rolling the new key again re-points older keys still in grace at the newest.

use portcullis_core::clock::Millis;
use portcullis_core::ids::{KeyId, UserId};
use portcullis_core::scopes::Scopes;
use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, StoreError, column, with_pool};

#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub id: KeyId,
    /// `None` for keys that belong to no user (root and service keys, managed by administrators).
    pub owner_id: Option<UserId>,
    pub prefix: String,
    pub start: String,
    pub key_hash: TokenHash,
    pub name: String,
    pub scopes: Scopes,
    /// A JSON object, as text, written by administrators only.
    pub meta: Option<String>,
    /// A JSON object, as text, written by the key's owner.
    pub owner_meta: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    pub remaining: Option<i64>,
    pub ratelimit_limit: Option<i64>,
    pub ratelimit_duration_ms: Option<i64>,
    pub last_used_at: Option<Millis>,
    pub rolled_to: Option<KeyId>,
    pub grace_until: Option<Millis>,
    /// The key whose rate-limit state this one spends (set for keys made by a rate-limited key).
    pub ratelimit_bucket: Option<KeyId>,
}

impl ApiKeyRow {
    /// The row whose `remaining` this key spends: its own, or while it is in the grace period of a
    /// roll, the key it was rolled to.
    pub fn counter_id(&self) -> &KeyId {
        self.rolled_to.as_ref().unwrap_or(&self.id)
    }

    /// Whose rate-limit state this key spends: the shared bucket it was given, else its counter's.
    pub fn bucket_id(&self) -> &KeyId {
        self.ratelimit_bucket
            .as_ref()
            .unwrap_or_else(|| self.counter_id())
    }
}

/// A row as the database returns it, before it is read into core's types.
#[derive(sqlx::FromRow)]
struct Stored {
    id: String,
    owner_id: Option<String>,
    prefix: String,
    start: String,
    key_hash: Vec<u8>,
    name: String,
    scopes: String,
    meta: Option<String>,
    owner_meta: Option<String>,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    remaining: Option<i64>,
    ratelimit_limit: Option<i64>,
    ratelimit_duration_ms: Option<i64>,
    last_used_at: Option<i64>,
    rolled_to: Option<String>,
    grace_until: Option<i64>,
    ratelimit_bucket: Option<String>,
}

impl TryFrom<Stored> for ApiKeyRow {
    type Error = StoreError;
    fn try_from(r: Stored) -> Result<Self> {
        Ok(Self {
            id: column::id(r.id, "key id")?,
            owner_id: column::opt_id(r.owner_id, "user id")?,
            prefix: r.prefix,
            start: r.start,
            key_hash: column::hash(r.key_hash)?,
            name: r.name,
            scopes: column::scopes(&r.scopes)?,
            meta: r.meta,
            owner_meta: r.owner_meta,
            created_at: Millis(r.created_at),
            updated_at: Millis(r.updated_at),
            expires_at: column::opt_millis(r.expires_at),
            revoked_at: column::opt_millis(r.revoked_at),
            remaining: r.remaining,
            ratelimit_limit: r.ratelimit_limit,
            ratelimit_duration_ms: r.ratelimit_duration_ms,
            last_used_at: column::opt_millis(r.last_used_at),
            rolled_to: column::opt_id(r.rolled_to, "key id")?,
            grace_until: column::opt_millis(r.grace_until),
            ratelimit_bucket: column::opt_id(r.ratelimit_bucket, "key id")?,
        })
    }
}

fn read(rows: Vec<Stored>) -> Result<Vec<ApiKeyRow>> {
    rows.into_iter().map(ApiKeyRow::try_from).collect()
}

/// Which keys a listing covers.
#[derive(Debug, Clone, Copy)]
pub enum KeyOwner<'a> {
    /// Every key (administrators).
    All,
    /// Keys that belong to no user.
    Nobody,
    User(&'a UserId),
}

/// A change to a key. `None` leaves a field alone; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyPatch {
    pub name: Option<String>,
    pub scopes: Option<Scopes>,
    pub meta: Option<Option<String>>,
    pub owner_meta: Option<Option<String>>,
    pub expires_at: Option<Option<Millis>>,
    pub remaining: Option<Option<i64>>,
    /// `(limit, duration_ms)`.
    pub ratelimit: Option<Option<(i64, i64)>>,
}

/// The new key of a roll: what the server generated. Everything else is copied from the old row by
/// the database, in the same transaction, so a concurrent verify or patch cannot be lost.
#[derive(Debug, Clone)]
pub struct RolledKey {
    pub id: KeyId,
    pub start: String,
    pub key_hash: TokenHash,
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
    fn api_key_by_id(&self, id: &KeyId) -> impl Future<Output = Result<Option<ApiKeyRow>>> + Send;
    /// Keys in creation order, `limit` at most, after the key id `after`.
    fn list_api_keys(
        &self,
        owner: KeyOwner<'_>,
        after: Option<&KeyId>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ApiKeyRow>>> + Send;
    fn count_api_keys(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Applies `patch` to a key that is not revoked; `None` when there is no such key. Older keys
    /// still in the grace period of a roll into it take the same scopes, meta and limits (a key in
    /// grace is never broader than its successor); the hashes of those returned with the row.
    fn update_api_key(
        &self,
        id: &KeyId,
        patch: &ApiKeyPatch,
        now: Millis,
    ) -> impl Future<Output = Result<Option<(ApiKeyRow, Vec<TokenHash>)>>> + Send;
    /// Spends `uses` of `remaining` of the key `id` (a counter id), atomically: all of them or none.
    fn spend_api_key(&self, id: &KeyId, uses: i64) -> impl Future<Output = Result<Spend>> + Send;
    /// Revokes the key and any key still rolled into it; returns the hashes of the keys revoked.
    fn revoke_api_key(
        &self,
        id: &KeyId,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<TokenHash>>> + Send;
    /// Rolls `old_id` (not revoked, not rolled before) into `new`, which copies its settings. The old
    /// key keeps working until `grace_until`. Returns the new row and the hashes of every older key
    /// whose row changed. `StoreError::NotFound` when the old key is unknown, revoked or already rolled.
    fn roll_api_key(
        &self,
        old_id: &KeyId,
        new: &RolledKey,
        grace_until: Millis,
        now: Millis,
    ) -> impl Future<Output = Result<(ApiKeyRow, Vec<TokenHash>)>> + Send;
    /// Hashes and change times of the keys changed (patched, revoked, rolled) at or after `since`, at
    /// most `limit`, oldest change first. Every node polls this to drop stale cached keys.
    fn api_keys_changed_since(
        &self,
        since: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(TokenHash, Millis)>>> + Send;
    /// Records `last_used_at` for a batch of keys (never moving it backwards).
    fn touch_api_keys(&self, used: &[(KeyId, Millis)]) -> impl Future<Output = Result<()>> + Send;
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
                .bind(k.id.as_str())
                .bind(k.owner_id.as_ref().map(UserId::as_str))
                .bind(&k.prefix)
                .bind(&k.start)
                .bind(k.key_hash.as_bytes())
                .bind(&k.name)
                .bind(k.scopes.to_string())
                .bind(&k.meta)
                .bind(&k.owner_meta)
                .bind(k.created_at.0)
                .bind(k.updated_at.0)
                .bind(k.expires_at.map(|m| m.0))
                .bind(k.revoked_at.map(|m| m.0))
                .bind(k.remaining)
                .bind(k.ratelimit_limit)
                .bind(k.ratelimit_duration_ms)
                .bind(k.last_used_at.map(|m| m.0))
                .bind(k.rolled_to.as_ref().map(KeyId::as_str))
                .bind(k.grace_until.map(|m| m.0))
                .bind(k.ratelimit_bucket.as_ref().map(KeyId::as_str))
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
        let row = with_pool!(self, read, p => sqlx::query_as::<_, Stored>(sql).bind(hash.as_bytes()).fetch_optional(p).await?);
        row.map(ApiKeyRow::try_from).transpose()
    }

    async fn api_key_by_id(&self, id: &KeyId) -> Result<Option<ApiKeyRow>> {
        let sql = concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE id = $1"
        );
        let row = with_pool!(self, read, p => sqlx::query_as::<_, Stored>(sql).bind(id.as_str()).fetch_optional(p).await?);
        row.map(ApiKeyRow::try_from).transpose()
    }

    async fn list_api_keys(
        &self,
        owner: KeyOwner<'_>,
        after: Option<&KeyId>,
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
                Some(u.as_str()),
            ),
        };
        let after = after.map_or("", KeyId::as_str);
        read(with_pool!(self, read, p => sqlx::query_as::<_, Stored>(sql)
            .bind(after)
            .bind(owner_id)
            .bind(limit)
            .fetch_all(p)
            .await?))
    }

    async fn count_api_keys(&self) -> Result<i64> {
        Ok(
            with_pool!(self, read, p => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM api_keys").fetch_one(p).await?),
        )
    }

    async fn update_api_key(
        &self,
        id: &KeyId,
        patch: &ApiKeyPatch,
        now: Millis,
    ) -> Result<Option<(ApiKeyRow, Vec<TokenHash>)>> {
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
        let (id, now) = (id.as_str(), now.0);
        let scopes = patch.scopes.as_ref().map(Scopes::to_string);
        let expires_at = patch.expires_at.map(|e| e.map(|m| m.0));
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query_as::<_, Stored>(own)
                .bind(id)
                .bind(now)
                .bind(patch.name.is_some())
                .bind(patch.name.as_deref())
                .bind(scopes.is_some())
                .bind(scopes.as_deref())
                .bind(patch.meta.is_some())
                .bind(patch.meta.clone().flatten())
                .bind(expires_at.is_some())
                .bind(expires_at.flatten())
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
                .bind(scopes.is_some())
                .bind(scopes.as_deref())
                .bind(patch.meta.is_some())
                .bind(patch.meta.clone().flatten())
                .bind(expires_at.is_some())
                .bind(expires_at.flatten())
                .bind(rl.is_some())
                .bind(rl.flatten())
                .bind(rd.is_some())
                .bind(rd.flatten())
                .bind(patch.owner_meta.is_some())
                .bind(patch.owner_meta.clone().flatten())
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some((ApiKeyRow::try_from(row)?, column::hashes(hashes)?)))
        })
    }

    async fn spend_api_key(&self, id: &KeyId, uses: i64) -> Result<Spend> {
        // The decision is the WHERE clause: of N concurrent spends of one use of a key with k uses
        // left, exactly min(N, k) find `remaining >= 1`.
        let sql = "UPDATE api_keys SET remaining = remaining - $2 \
                   WHERE id = $1 AND revoked_at IS NULL AND (remaining IS NULL OR remaining >= $2) \
                   RETURNING remaining";
        let left = with_pool!(self, write, p => sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(id.as_str())
            .bind(uses.max(1))
            .fetch_optional(p)
            .await?);
        Ok(match left {
            Some(left) => Spend::Spent(left),
            None => Spend::Exhausted,
        })
    }

    async fn revoke_api_key(&self, id: &KeyId, now: Millis) -> Result<Vec<TokenHash>> {
        let sql = "UPDATE api_keys SET revoked_at = $2, updated_at = $2 \
                   WHERE (id = $1 OR rolled_to = $1) AND revoked_at IS NULL RETURNING key_hash";
        column::hashes(
            with_pool!(self, write, p => sqlx::query_scalar::<_, Vec<u8>>(sql)
            .bind(id.as_str())
            .bind(now.0)
            .fetch_all(p)
            .await?),
        )
    }

    async fn roll_api_key(
        &self,
        old_id: &KeyId,
        new: &RolledKey,
        grace_until: Millis,
        now: Millis,
    ) -> Result<(ApiKeyRow, Vec<TokenHash>)> {
        let (old_id, new_id, grace_until, now) =
            (old_id.as_str(), new.id.as_str(), grace_until.0, now.0);
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
            .bind(new_id)
            .bind(grace_until)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(old_hash) = old_hash else {
                return Err(StoreError::NotFound);
            };
            let row = sqlx::query_as::<_, Stored>(insert)
                .bind(old_id)
                .bind(new_id)
                .bind(&new.start)
                .bind(new.key_hash.as_bytes())
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
            .bind(new_id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            changed.push(old_hash);
            Ok((ApiKeyRow::try_from(row)?, column::hashes(changed)?))
        })
    }

    async fn api_keys_changed_since(
        &self,
        since: Millis,
        limit: i64,
    ) -> Result<Vec<(TokenHash, Millis)>> {
        let sql = "SELECT key_hash, updated_at FROM api_keys WHERE updated_at >= $1 \
                   ORDER BY updated_at LIMIT $2";
        let rows = with_pool!(self, read, p => sqlx::query_as::<_, (Vec<u8>, i64)>(sql)
            .bind(since.0)
            .bind(limit)
            .fetch_all(p)
            .await?);
        rows.into_iter()
            .map(|(hash, at)| Ok((column::hash(hash)?, Millis(at))))
            .collect()
    }

    async fn touch_api_keys(&self, used: &[(KeyId, Millis)]) -> Result<()> {
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
                .bind(id.as_str())
                .bind(at.0)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
