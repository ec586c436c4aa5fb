//! OAuth as stored: clients (their registration as JSON, checked by the server on every read and
//! write, and the SHA-256 of their secret), authorization codes (by SHA-256, redeemed once by one
//! conditional UPDATE), remembered consents, the deny list of revoked access-token `jti`s, and opaque
//! access tokens (by SHA-256).

use portcullis_core::clock::Millis;
use portcullis_core::ids::{ClientId, UserId};
use portcullis_core::secrets::TokenHash;

use crate::{Backend, Result, Store, StoreError, column, with_pool};

#[derive(Debug, Clone)]
pub struct ClientRow {
    pub id: ClientId,
    pub name: String,
    /// The registration (redirect URIs, grants, …) as JSON; the server owns its shape.
    pub settings: String,
    pub secret_hash: Option<TokenHash>,
    pub secret_changed_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(sqlx::FromRow)]
struct StoredClient {
    id: String,
    name: String,
    settings: String,
    secret_hash: Option<Vec<u8>>,
    secret_changed_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<StoredClient> for ClientRow {
    type Error = StoreError;
    fn try_from(r: StoredClient) -> Result<Self> {
        Ok(Self {
            id: column::id(r.id, "client id")?,
            name: r.name,
            settings: r.settings,
            secret_hash: r.secret_hash.map(column::hash).transpose()?,
            secret_changed_at: column::opt_millis(r.secret_changed_at),
            created_at: Millis(r.created_at),
            updated_at: Millis(r.updated_at),
        })
    }
}

macro_rules! client_columns {
    () => {
        "id, name, settings, secret_hash, secret_changed_at, created_at, updated_at"
    };
}

/// An authorization code as issued: everything the token endpoint binds it to.
#[derive(Debug, Clone)]
pub struct CodeRow {
    pub code_hash: TokenHash,
    pub client_id: ClientId,
    pub user_id: UserId,
    pub session_id: Option<String>,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    /// RFC 8707 resources, JSON array.
    pub resources: String,
    pub nonce: Option<String>,
    /// Seconds.
    pub auth_time: i64,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub redeemed_at: Option<Millis>,
    /// The DPoP key its redemption must prove (RFC 9449 §10).
    pub dpop_jkt: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StoredCode {
    code_hash: Vec<u8>,
    client_id: String,
    user_id: String,
    session_id: Option<String>,
    redirect_uri: String,
    code_challenge: String,
    scope: String,
    resources: String,
    nonce: Option<String>,
    auth_time: i64,
    created_at: i64,
    expires_at: i64,
    redeemed_at: Option<i64>,
    dpop_jkt: Option<String>,
}

impl TryFrom<StoredCode> for CodeRow {
    type Error = StoreError;
    fn try_from(r: StoredCode) -> Result<Self> {
        Ok(Self {
            code_hash: column::hash(r.code_hash)?,
            client_id: column::id(r.client_id, "client id")?,
            user_id: column::id(r.user_id, "user id")?,
            session_id: r.session_id,
            redirect_uri: r.redirect_uri,
            code_challenge: r.code_challenge,
            scope: r.scope,
            resources: r.resources,
            nonce: r.nonce,
            auth_time: r.auth_time,
            created_at: Millis(r.created_at),
            expires_at: Millis(r.expires_at),
            redeemed_at: column::opt_millis(r.redeemed_at),
            dpop_jkt: r.dpop_jkt,
        })
    }
}

macro_rules! code_columns {
    () => {
        "code_hash, client_id, user_id, session_id, redirect_uri, code_challenge, scope, resources, nonce, auth_time, created_at, expires_at, redeemed_at, dpop_jkt"
    };
}

/// The statement that stores a code, and its binding: one text for the direct path and the batch.
macro_rules! insert_code_sql {
    () => {
        concat!(
            "INSERT INTO oauth_codes (",
            code_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )
    };
}

macro_rules! bind_code {
    ($q:expr, $c:expr) => {
        $q.bind($c.code_hash.as_bytes())
            .bind($c.client_id.as_str())
            .bind($c.user_id.as_str())
            .bind(&$c.session_id)
            .bind(&$c.redirect_uri)
            .bind(&$c.code_challenge)
            .bind(&$c.scope)
            .bind(&$c.resources)
            .bind(&$c.nonce)
            .bind($c.auth_time)
            .bind($c.created_at.0)
            .bind($c.expires_at.0)
            .bind($c.redeemed_at.map(|m| m.0))
            .bind(&$c.dpop_jkt)
    };
}

/// The statement that redeems a code (see [`OAuthStore::redeem_code`]), and its binding.
macro_rules! redeem_code_sql {
    () => {
        concat!(
            "UPDATE oauth_codes SET redeemed_at = $2, family_id = $3, access_jti = $4, access_exp = $5 \
             WHERE code_hash = $1 AND redeemed_at IS NULL AND expires_at > $2 \
               AND client_id = $6 AND redirect_uri = $7 AND code_challenge = $8 RETURNING ",
            code_columns!()
        )
    };
}

/// Records that a session's code was redeemed by its client (for back-channel logout).
const SESSION_CLIENT_SQL: &str = "INSERT INTO oauth_session_clients (session_id, client_id, created_at) \
     VALUES ($1, $2, $3) ON CONFLICT (session_id, client_id) DO NOTHING";

macro_rules! bind_redemption {
    ($q:expr, $hash:expr, $now:expr, $client_id:expr, $redirect_uri:expr, $challenge:expr, $produced:expr) => {
        $q.bind($hash.as_bytes())
            .bind($now.0)
            .bind(&$produced.family_id)
            .bind(&$produced.access_jti)
            .bind($produced.access_exp)
            .bind($client_id.as_str())
            .bind($redirect_uri)
            .bind($challenge)
    };
}

/// What a redemption will produce, named before it happens so that a replay racing it can revoke it.
#[derive(Debug, Clone)]
pub struct Produced {
    pub family_id: Option<String>,
    pub access_jti: String,
    pub access_exp: i64,
}

/// What a redemption must match.
#[derive(Debug, Clone)]
pub struct Redemption<'a> {
    pub client_id: &'a ClientId,
    pub redirect_uri: &'a str,
    pub code_challenge: &'a str,
}

/// What a replayed code had produced.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub user_id: String,
    pub family_id: Option<String>,
    pub access_jti: Option<String>,
    pub access_exp: Option<i64>,
}

/// A remembered consent, with its client's name (for `/account`).
#[derive(Debug, Clone)]
pub struct ConsentRow {
    pub client_id: ClientId,
    pub client_name: String,
    pub scope: String,
    pub updated_at: Millis,
}

/// An opaque access token (`pat_…`) as stored.
#[derive(Debug, Clone)]
pub struct OpaqueAccessRow {
    pub token_hash: TokenHash,
    pub jti: String,
    pub client_id: ClientId,
    /// A user id, or the client id for client credentials.
    pub subject: String,
    pub scope: String,
    /// JSON array.
    pub audiences: String,
    pub session_id: Option<String>,
    pub family_id: Option<String>,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
    /// The DPoP key thumbprint it is bound to (RFC 9449).
    pub dpop_jkt: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StoredOpaque {
    token_hash: Vec<u8>,
    jti: String,
    client_id: String,
    subject: String,
    scope: String,
    audiences: String,
    session_id: Option<String>,
    family_id: Option<String>,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    dpop_jkt: Option<String>,
}

impl TryFrom<StoredOpaque> for OpaqueAccessRow {
    type Error = StoreError;
    fn try_from(r: StoredOpaque) -> Result<Self> {
        Ok(Self {
            token_hash: column::hash(r.token_hash)?,
            jti: r.jti,
            client_id: column::id(r.client_id, "client id")?,
            subject: r.subject,
            scope: r.scope,
            audiences: r.audiences,
            session_id: r.session_id,
            family_id: r.family_id,
            created_at: Millis(r.created_at),
            expires_at: Millis(r.expires_at),
            revoked_at: column::opt_millis(r.revoked_at),
            dpop_jkt: r.dpop_jkt,
        })
    }
}

macro_rules! opaque_columns {
    () => {
        "token_hash, jti, client_id, subject, scope, audiences, session_id, family_id, created_at, expires_at, revoked_at, dpop_jkt"
    };
}

pub trait OAuthStore {
    fn insert_client(&self, c: &ClientRow) -> impl Future<Output = Result<()>> + Send;
    fn client(&self, id: &ClientId) -> impl Future<Output = Result<Option<ClientRow>>> + Send;
    /// Clients in id order (creation order), after `after`, at most `limit`.
    fn list_clients(
        &self,
        after: Option<&ClientId>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ClientRow>>> + Send;
    /// Replaces name and settings; false when there is no such client.
    fn update_client(
        &self,
        id: &ClientId,
        name: &str,
        settings: &str,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Replaces the secret's hash; false when there is no such client.
    fn set_client_secret(
        &self,
        id: &ClientId,
        hash: &TokenHash,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes a client with its codes, consents and opaque tokens, and revokes its refresh families.
    fn delete_client(
        &self,
        id: &ClientId,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;

    fn insert_code(&self, c: &CodeRow) -> impl Future<Output = Result<()>> + Send;
    fn code(&self, hash: &TokenHash) -> impl Future<Output = Result<Option<CodeRow>>> + Send;
    /// Redeems a live code once, if it was issued to `expect.client_id` for `expect.redirect_uri`
    /// with `expect.code_challenge` (the S256 of the presented verifier), recording what it
    /// produces: one conditional UPDATE, so that of N concurrent calls exactly one gets the row, and
    /// a call that fails any condition writes nothing (the caller then reads the code to say why).
    fn redeem_code(
        &self,
        hash: &TokenHash,
        now: Millis,
        expect: &Redemption<'_>,
        produced: &Produced,
    ) -> impl Future<Output = Result<Option<CodeRow>>> + Send;
    /// Marks a redeemed code replayed and returns what it produced (to revoke); `None` when the code
    /// was never redeemed.
    fn replay_code(
        &self,
        hash: &TokenHash,
        now: Millis,
    ) -> impl Future<Output = Result<Option<Replayed>>> + Send;
    /// The clients that redeemed a code issued in browser session `session_id`.
    fn session_clients(&self, session_id: &str)
    -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Was this code replayed (checked by the redemption once it has stored what it produced)?
    fn code_replayed(&self, hash: &TokenHash) -> impl Future<Output = Result<bool>> + Send;

    fn consent(
        &self,
        user_id: &UserId,
        client_id: &ClientId,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    fn grant_consent(
        &self,
        user_id: &UserId,
        client_id: &ClientId,
        scope: &str,
        now: Millis,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Forgets a consent and ends the refresh families the client holds for the user.
    fn withdraw_consent(
        &self,
        user_id: &UserId,
        client_id: &ClientId,
    ) -> impl Future<Output = Result<bool>> + Send;
    fn list_consents(
        &self,
        user_id: &UserId,
    ) -> impl Future<Output = Result<Vec<ConsentRow>>> + Send;

    /// Denies an access token's `jti` until `expires_at`; true when it was not denied yet.
    fn deny_jti(
        &self,
        jti: &str,
        expires_at: i64,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Denied `jti`s (with their expiry) revoked at or after `since`, unexpired at `now`.
    fn jtis_denied_since(
        &self,
        since: Millis,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;

    fn insert_opaque_access(&self, t: &OpaqueAccessRow) -> impl Future<Output = Result<()>> + Send;
    fn opaque_access(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<OpaqueAccessRow>>> + Send;
    /// Revokes an opaque token; true when it was live.
    fn revoke_opaque_access(
        &self,
        hash: &TokenHash,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes at most `batch` codes, denied jtis, opaque tokens and device codes that ended before
    /// `before`.
    fn purge_oauth(&self, before: Millis, batch: u32) -> impl Future<Output = Result<u64>> + Send;
}

impl OAuthStore for Store {
    async fn insert_client(&self, c: &ClientRow) -> Result<()> {
        let sql = concat!(
            "INSERT INTO oauth_clients (",
            client_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        with_pool!(self, write, p => {
            sqlx::query(sql)
                .bind(c.id.as_str())
                .bind(&c.name)
                .bind(&c.settings)
                .bind(c.secret_hash.as_ref().map(|h| h.as_bytes().to_vec()))
                .bind(c.secret_changed_at.map(|m| m.0))
                .bind(c.created_at.0)
                .bind(c.updated_at.0)
                .execute(p)
                .await
                .map_err(StoreError::unique("oauth_clients_pkey"))?;
        });
        Ok(())
    }

    async fn client(&self, id: &ClientId) -> Result<Option<ClientRow>> {
        let sql = concat!(
            "SELECT ",
            client_columns!(),
            " FROM oauth_clients WHERE id = $1"
        );
        let row = with_pool!(self, read, p => sqlx::query_as::<_, StoredClient>(sql)
            .bind(id.as_str())
            .fetch_optional(p)
            .await?);
        row.map(ClientRow::try_from).transpose()
    }

    async fn list_clients(&self, after: Option<&ClientId>, limit: u32) -> Result<Vec<ClientRow>> {
        let sql = concat!(
            "SELECT ",
            client_columns!(),
            " FROM oauth_clients WHERE id > $1 ORDER BY id LIMIT $2"
        );
        let rows = with_pool!(self, read, p => sqlx::query_as::<_, StoredClient>(sql)
            .bind(after.map(ClientId::as_str).unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?);
        rows.into_iter().map(ClientRow::try_from).collect()
    }

    async fn update_client(
        &self,
        id: &ClientId,
        name: &str,
        settings: &str,
        now: Millis,
    ) -> Result<bool> {
        let n = with_pool!(self, write, p => sqlx::query(
            "UPDATE oauth_clients SET name = $2, settings = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(settings)
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    async fn set_client_secret(
        &self,
        id: &ClientId,
        hash: &TokenHash,
        now: Millis,
    ) -> Result<bool> {
        let n = with_pool!(self, write, p => sqlx::query(
            "UPDATE oauth_clients SET secret_hash = $2, secret_changed_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(hash.as_bytes())
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    async fn delete_client(&self, id: &ClientId, now: Millis) -> Result<bool> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL \
                 AND family_id IN (SELECT id FROM refresh_families WHERE client_id = $1)",
            )
            .bind(id.as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE refresh_families SET revoked_at = $2, revoked_reason = 'client_deleted' \
                 WHERE client_id = $1 AND revoked_at IS NULL",
            )
            .bind(id.as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query("DELETE FROM oauth_clients WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    async fn insert_code(&self, c: &CodeRow) -> Result<()> {
        if let Backend::Sqlite {
            codes: Some(queue), ..
        } = &self.backend
        {
            return match queue.run(CodeOp::Insert(Box::new(c.clone()))).await? {
                CodeOutcome::Inserted => Ok(()),
                CodeOutcome::Redeemed(_) => Err(closed()),
            };
        }
        with_pool!(self, write, p => {
            bind_code!(sqlx::query(insert_code_sql!()), c).execute(p).await?;
        });
        Ok(())
    }

    async fn code(&self, hash: &TokenHash) -> Result<Option<CodeRow>> {
        let sql = concat!(
            "SELECT ",
            code_columns!(),
            " FROM oauth_codes WHERE code_hash = $1"
        );
        // From the writer on SQLite: a code is read moments after it was written, and readers of a
        // WAL file see the commit at once, but one pool for the whole exchange keeps it obvious.
        let row = with_pool!(self, write, p => sqlx::query_as::<_, StoredCode>(sql)
            .bind(hash.as_bytes())
            .fetch_optional(p)
            .await?);
        row.map(CodeRow::try_from).transpose()
    }

    async fn redeem_code(
        &self,
        hash: &TokenHash,
        now: Millis,
        expect: &Redemption<'_>,
        produced: &Produced,
    ) -> Result<Option<CodeRow>> {
        if let Backend::Sqlite {
            codes: Some(queue), ..
        } = &self.backend
        {
            let op = CodeOp::Redeem {
                hash: hash.clone(),
                now,
                client_id: expect.client_id.clone(),
                redirect_uri: expect.redirect_uri.to_owned(),
                code_challenge: expect.code_challenge.to_owned(),
                produced: produced.clone(),
            };
            return match queue.run(op).await? {
                CodeOutcome::Redeemed(row) => Ok(row.map(|r| *r)),
                CodeOutcome::Inserted => Err(closed()),
            };
        }
        let row = with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let row = bind_redemption!(
                sqlx::query_as::<_, StoredCode>(redeem_code_sql!()),
                hash, now, expect.client_id, expect.redirect_uri, expect.code_challenge, produced
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(session) = row.as_ref().and_then(|r| r.session_id.as_deref()) {
                sqlx::query(SESSION_CLIENT_SQL)
                    .bind(session)
                    .bind(expect.client_id.as_str())
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            row
        });
        row.map(CodeRow::try_from).transpose()
    }

    async fn replay_code(&self, hash: &TokenHash, now: Millis) -> Result<Option<Replayed>> {
        let row = with_pool!(self, write, p => sqlx::query_as::<_, (String, Option<String>, Option<String>, Option<i64>)>(
            "UPDATE oauth_codes SET replayed_at = COALESCE(replayed_at, $2) \
             WHERE code_hash = $1 AND redeemed_at IS NOT NULL \
             RETURNING user_id, family_id, access_jti, access_exp",
        )
        .bind(hash.as_bytes())
        .bind(now.0)
        .fetch_optional(p)
        .await?);
        Ok(
            row.map(|(user_id, family_id, access_jti, access_exp)| Replayed {
                user_id,
                family_id,
                access_jti,
                access_exp,
            }),
        )
    }

    async fn session_clients(&self, session_id: &str) -> Result<Vec<String>> {
        Ok(with_pool!(self, read, p => sqlx::query_scalar::<_, String>(
            "SELECT client_id FROM oauth_session_clients WHERE session_id = $1 ORDER BY client_id",
        )
        .bind(session_id)
        .fetch_all(p)
        .await?))
    }

    async fn code_replayed(&self, hash: &TokenHash) -> Result<bool> {
        let at = with_pool!(self, write, p => sqlx::query_scalar::<_, Option<i64>>(
            "SELECT replayed_at FROM oauth_codes WHERE code_hash = $1",
        )
        .bind(hash.as_bytes())
        .fetch_optional(p)
        .await?);
        Ok(at.flatten().is_some())
    }

    async fn consent(&self, user_id: &UserId, client_id: &ClientId) -> Result<Option<String>> {
        Ok(with_pool!(self, read, p => sqlx::query_scalar::<_, String>(
            "SELECT scope FROM oauth_consents WHERE user_id = $1 AND client_id = $2",
        )
        .bind(user_id.as_str())
        .bind(client_id.as_str())
        .fetch_optional(p)
        .await?))
    }

    async fn grant_consent(
        &self,
        user_id: &UserId,
        client_id: &ClientId,
        scope: &str,
        now: Millis,
    ) -> Result<()> {
        with_pool!(self, write, p => {
            sqlx::query(
                "INSERT INTO oauth_consents (user_id, client_id, scope, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $4) \
                 ON CONFLICT (user_id, client_id) DO UPDATE SET scope = excluded.scope, updated_at = excluded.updated_at",
            )
            .bind(user_id.as_str())
            .bind(client_id.as_str())
            .bind(scope)
            .bind(now.0)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    async fn withdraw_consent(&self, user_id: &UserId, client_id: &ClientId) -> Result<bool> {
        let now = Millis::now();
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
                .bind(user_id.as_str())
                .bind(client_id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $3 WHERE revoked_at IS NULL AND family_id IN \
                 (SELECT id FROM refresh_families WHERE user_id = $1 AND client_id = $2)",
            )
            .bind(user_id.as_str())
            .bind(client_id.as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE refresh_families SET revoked_at = $3, revoked_reason = 'consent_withdrawn' \
                 WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL",
            )
            .bind(user_id.as_str())
            .bind(client_id.as_str())
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    async fn list_consents(&self, user_id: &UserId) -> Result<Vec<ConsentRow>> {
        let rows = with_pool!(self, read, p => sqlx::query_as::<_, (String, String, String, i64)>(
            "SELECT c.client_id, k.name, c.scope, c.updated_at FROM oauth_consents c \
             JOIN oauth_clients k ON k.id = c.client_id WHERE c.user_id = $1 ORDER BY k.name, c.client_id",
        )
        .bind(user_id.as_str())
        .fetch_all(p)
        .await?);
        rows.into_iter()
            .map(|(client_id, client_name, scope, updated_at)| {
                Ok(ConsentRow {
                    client_id: column::id(client_id, "client id")?,
                    client_name,
                    scope,
                    updated_at: Millis(updated_at),
                })
            })
            .collect()
    }

    async fn deny_jti(&self, jti: &str, expires_at: i64, now: Millis) -> Result<bool> {
        let n = with_pool!(self, write, p => sqlx::query(
            "INSERT INTO revoked_jtis (jti, expires_at, revoked_at) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    async fn jtis_denied_since(&self, since: Millis, now: Millis) -> Result<Vec<(String, i64)>> {
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT jti, expires_at FROM revoked_jtis WHERE revoked_at >= $1 AND expires_at > $2",
        )
        .bind(since.0)
        .bind(now.as_secs())
        .fetch_all(p)
        .await?),
        )
    }

    async fn insert_opaque_access(&self, t: &OpaqueAccessRow) -> Result<()> {
        let sql = concat!(
            "INSERT INTO oauth_access_tokens (",
            opaque_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        with_pool!(self, write, p => {
            sqlx::query(sql)
                .bind(t.token_hash.as_bytes())
                .bind(&t.jti)
                .bind(t.client_id.as_str())
                .bind(&t.subject)
                .bind(&t.scope)
                .bind(&t.audiences)
                .bind(&t.session_id)
                .bind(&t.family_id)
                .bind(t.created_at.0)
                .bind(t.expires_at.0)
                .bind(t.revoked_at.map(|m| m.0))
                .bind(&t.dpop_jkt)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    async fn opaque_access(&self, hash: &TokenHash) -> Result<Option<OpaqueAccessRow>> {
        let sql = concat!(
            "SELECT ",
            opaque_columns!(),
            " FROM oauth_access_tokens WHERE token_hash = $1"
        );
        let row = with_pool!(self, read, p => sqlx::query_as::<_, StoredOpaque>(sql)
            .bind(hash.as_bytes())
            .fetch_optional(p)
            .await?);
        row.map(OpaqueAccessRow::try_from).transpose()
    }

    async fn revoke_opaque_access(&self, hash: &TokenHash, now: Millis) -> Result<bool> {
        let n = with_pool!(self, write, p => sqlx::query(
            "UPDATE oauth_access_tokens SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash.as_bytes())
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    async fn purge_oauth(&self, before: Millis, batch: u32) -> Result<u64> {
        let batch = i64::from(batch);
        with_pool!(self, write, p => {
            let codes = sqlx::query(
                "DELETE FROM oauth_codes WHERE code_hash IN \
                 (SELECT code_hash FROM oauth_codes WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let jtis = sqlx::query(
                "DELETE FROM revoked_jtis WHERE jti IN \
                 (SELECT jti FROM revoked_jtis WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(before.as_secs())
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let opaque = sqlx::query(
                "DELETE FROM oauth_access_tokens WHERE token_hash IN \
                 (SELECT token_hash FROM oauth_access_tokens WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let sessions = sqlx::query(
                "DELETE FROM oauth_session_clients WHERE session_id IN \
                 (SELECT c.session_id FROM oauth_session_clients c LEFT JOIN sessions s ON s.id = c.session_id \
                  WHERE s.id IS NULL LIMIT $1)",
            )
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let devices = sqlx::query(
                "DELETE FROM oauth_device_codes WHERE device_code_hash IN \
                 (SELECT device_code_hash FROM oauth_device_codes WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            let pars = sqlx::query(
                "DELETE FROM oauth_par_requests WHERE request_hash IN \
                 (SELECT request_hash FROM oauth_par_requests WHERE expires_at < $1 LIMIT $2)",
            )
            .bind(before.0)
            .bind(batch)
            .execute(p)
            .await?
            .rows_affected();
            Ok(codes + jtis + opaque + sessions + devices + pars)
        })
    }
}

/// Group commit of code writes on SQLite, whose single writer makes each statement's commit a turn
/// in one queue: a code flow writes twice (the code issued, the code redeemed), and committing each
/// alone made the writer the flow's bottleneck. Concurrent writes queue here; one task runs a batch
/// in one transaction, each statement as it would run alone (a redemption is still one conditional
/// UPDATE, so of two redemptions of one code in a batch only the first matches), and answers each
/// once the batch has committed. A failed batch answers every request in it with the error.
#[derive(Clone, Debug)]
pub(crate) struct CodeQueue {
    tx: tokio::sync::mpsc::Sender<(CodeOp, tokio::sync::oneshot::Sender<Result<CodeOutcome>>)>,
}

#[derive(Debug)]
enum CodeOp {
    Insert(Box<CodeRow>),
    Redeem {
        hash: TokenHash,
        now: Millis,
        client_id: ClientId,
        redirect_uri: String,
        code_challenge: String,
        produced: Produced,
    },
}

#[derive(Debug)]
enum CodeOutcome {
    Inserted,
    Redeemed(Option<Box<CodeRow>>),
}

const CODE_BATCH: usize = 64;

fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

impl CodeQueue {
    pub(crate) fn spawn(write: sqlx::SqlitePool) -> std::io::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * CODE_BATCH);
        crate::spawn_serial("pc-codes", run_codes(write, rx))?;
        Ok(Self { tx })
    }

    async fn run(&self, op: CodeOp) -> Result<CodeOutcome> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send((op, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

type CodeRequest = (CodeOp, tokio::sync::oneshot::Sender<Result<CodeOutcome>>);

async fn run_codes(pool: sqlx::SqlitePool, mut rx: tokio::sync::mpsc::Receiver<CodeRequest>) {
    let mut batch = Vec::with_capacity(CODE_BATCH);
    while rx.recv_many(&mut batch, CODE_BATCH).await > 0 {
        let requests = std::mem::take(&mut batch);
        match code_batch(&pool, &requests).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in requests.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in requests {
                    let _ = reply.send(Err(StoreError::Database(sqlx::Error::Protocol(
                        message.clone(),
                    ))));
                }
            }
        }
    }
}

/// A redeemed code as the batch's `UPDATE … RETURNING` gives it back, with the access token id of
/// the redemption that won it (which names the request, since each request brings its own).
#[derive(sqlx::FromRow)]
struct BatchRedeemed {
    #[sqlx(flatten)]
    code: StoredCode,
    access_jti: Option<String>,
}

/// One transaction of three statements whatever the batch holds: every code issued by one
/// multi-row `INSERT`, every redemption by one `UPDATE … FROM` a list of what each request presented
/// (its conditions are those of the single redemption, per request), and the sessions' clients by
/// one `INSERT`. Each statement is a round trip to the driver's thread, and one per operation made
/// those hand-offs, not SQLite, the serial step of a code flow (measured: the writer 33 % busy at
/// 2.7k flows/s). A row matches at most one request of the list, so of several redemptions of one
/// code in a batch exactly one wins, as when they ran one after another.
async fn code_batch(pool: &sqlx::SqlitePool, requests: &[CodeRequest]) -> Result<Vec<CodeOutcome>> {
    let inserts: Vec<&CodeRow> = requests
        .iter()
        .filter_map(|(op, _)| match op {
            CodeOp::Insert(c) => Some(&**c),
            CodeOp::Redeem { .. } => None,
        })
        .collect();
    let redeems: Vec<&CodeOp> = requests
        .iter()
        .map(|(op, _)| op)
        .filter(|op| matches!(op, CodeOp::Redeem { .. }))
        .collect();
    let mut tx = pool.begin().await?;
    if !inserts.is_empty() {
        let mut insert =
            sqlx::QueryBuilder::new(concat!("INSERT INTO oauth_codes (", code_columns!(), ") "));
        insert.push_values(&inserts, |mut row, c| {
            row.push_bind(c.code_hash.as_bytes().to_vec())
                .push_bind(c.client_id.as_str().to_owned())
                .push_bind(c.user_id.as_str().to_owned())
                .push_bind(c.session_id.clone())
                .push_bind(c.redirect_uri.clone())
                .push_bind(c.code_challenge.clone())
                .push_bind(c.scope.clone())
                .push_bind(c.resources.clone())
                .push_bind(c.nonce.clone())
                .push_bind(c.auth_time)
                .push_bind(c.created_at.0)
                .push_bind(c.expires_at.0)
                .push_bind(c.redeemed_at.map(|m| m.0))
                .push_bind(c.dpop_jkt.clone());
        });
        insert.build().execute(&mut *tx).await?;
    }
    let mut won: std::collections::HashMap<String, StoredCode> = Default::default();
    if !redeems.is_empty() {
        // The list's columns are named apart from the table's, so nothing below is ambiguous.
        let mut update = sqlx::QueryBuilder::new(
            "WITH presented (hash, at, family, jti, exp, client, redirect, challenge) AS (",
        );
        update.push_values(&redeems, |mut row, op| {
            if let CodeOp::Redeem {
                hash,
                now,
                client_id,
                redirect_uri,
                code_challenge,
                produced,
            } = op
            {
                row.push_bind(hash.as_bytes().to_vec())
                    .push_bind(now.0)
                    .push_bind(produced.family_id.clone())
                    .push_bind(produced.access_jti.clone())
                    .push_bind(produced.access_exp)
                    .push_bind(client_id.as_str().to_owned())
                    .push_bind(redirect_uri.clone())
                    .push_bind(code_challenge.clone());
            }
        });
        update.push(concat!(
            ") UPDATE oauth_codes SET redeemed_at = presented.at, family_id = presented.family, \
             access_jti = presented.jti, access_exp = presented.exp FROM presented \
             WHERE oauth_codes.code_hash = presented.hash AND oauth_codes.redeemed_at IS NULL \
               AND oauth_codes.expires_at > presented.at AND oauth_codes.client_id = presented.client \
               AND oauth_codes.redirect_uri = presented.redirect \
               AND oauth_codes.code_challenge = presented.challenge RETURNING ",
            code_columns!(),
            ", access_jti"
        ));
        let rows: Vec<BatchRedeemed> = update.build_query_as().fetch_all(&mut *tx).await?;
        won = rows
            .into_iter()
            .filter_map(|r| Some((r.access_jti?, r.code)))
            .collect();
        let sessions: Vec<(&str, &str, i64)> = redeems
            .iter()
            .filter_map(|op| match op {
                CodeOp::Redeem {
                    now,
                    client_id,
                    produced,
                    ..
                } => {
                    let code = won.get(&produced.access_jti)?;
                    Some((code.session_id.as_deref()?, client_id.as_str(), now.0))
                }
                CodeOp::Insert(_) => None,
            })
            .collect();
        if !sessions.is_empty() {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO oauth_session_clients (session_id, client_id, created_at) ",
            );
            insert.push_values(&sessions, |mut row, (session, client, at)| {
                row.push_bind(session.to_string())
                    .push_bind(client.to_string())
                    .push_bind(*at);
            });
            insert.push(" ON CONFLICT (session_id, client_id) DO NOTHING");
            insert.build().execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    requests
        .iter()
        .map(|(op, _)| match op {
            CodeOp::Insert(_) => Ok(CodeOutcome::Inserted),
            CodeOp::Redeem { produced, .. } => Ok(CodeOutcome::Redeemed(
                won.remove(&produced.access_jti)
                    .map(CodeRow::try_from)
                    .transpose()?
                    .map(Box::new),
            )),
        })
        .collect()
}
