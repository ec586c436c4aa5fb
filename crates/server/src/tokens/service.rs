//! Token login (API.md "Token login"): RFC 9068 access tokens and rotating refresh tokens with reuse
//! detection, logout of one family, the revocation of everything a user holds, and the check of an
//! access token that every request carrying one goes through.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::ids::{FamilyId, RefreshTokenId, UserId};
use portcullis_core::jwt::{AccessClaims, Audience};
use portcullis_core::principal::Principal;
use portcullis_core::secrets::{OpaqueToken, TokenHash};
use portcullis_store::{
    FamilyRow, NewFamily, NextToken, OAuthStore, RefreshTokenStore, Rotation, SigningKeyRow, Store,
    UserRow, UserStore,
};
use secrecy::{ExposeSecret, SecretString};

use super::access::AccessTokens;
use crate::audit::{Audit, AuditContext};
use crate::error::{Error, Result};
use crate::signing_keys::KeyRing;
use crate::users::{PasswordLogin, Users};

/// Prefix of refresh tokens: lets secret scanners and humans recognise one.
pub const REFRESH_PREFIX: &str = "prt";

/// A fresh UUIDv7 whose timestamp is `at`.
fn jti_at(at: Millis) -> String {
    let secs = u64::try_from(at.0.div_euclid(1000)).unwrap_or(0);
    let nanos = u32::try_from(at.0.rem_euclid(1000) * 1_000_000).unwrap_or(0);
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos)).to_string()
}

/// An access token and the refresh token that renews it.
/// The longest refresh token a request may present (ours are far shorter).
pub const MAX_PRESENTED_TOKEN_LEN: usize = 256;

/// What an access token says, before it is signed.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub subject: String,
    pub client_id: String,
    pub scope: String,
    pub sid: Option<String>,
    /// Empty: the configured audience.
    pub audiences: Vec<String>,
    /// The DPoP key the token is bound to (`cnf.jkt`).
    pub jkt: Option<String>,
    /// RFC 8693 `act`: who acts for the subject.
    pub act: Option<serde_json::Value>,
}

/// A refresh token spent and its successor issued, with the family it belongs to.
pub struct Rotated {
    pub family: FamilyRow,
    pub refresh_token: SecretString,
    /// Seconds.
    pub refresh_expires_in: i64,
    pub now: Millis,
}

pub struct TokenPair {
    pub access_token: String,
    /// Seconds.
    pub expires_in: i64,
    pub refresh_token: SecretString,
    /// Seconds.
    pub refresh_expires_in: i64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenPair([redacted])")
    }
}

/// What [`Tokens`] is built from.
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_s: i64,
    pub refresh_ttl_s: i64,
    pub family_ttl_s: i64,
    pub reuse_grace_s: i64,
    /// `client_id` of tokens from password login.
    pub first_party_client_id: String,
    /// The `scope` claim of tokens from password login (space-separated).
    pub login_scope: String,
}

pub struct Tokens {
    store: Store,
    keys: Arc<KeyRing>,
    users: Arc<Users>,
    access: AccessTokens,
    audit: Audit,
    settings: TokenSettings,
    bus: Arc<crate::invalidation::Bus>,
}

impl Tokens {
    pub fn new(
        store: Store,
        keys: Arc<KeyRing>,
        users: Arc<Users>,
        audit: Audit,
        settings: TokenSettings,
        bus: Arc<crate::invalidation::Bus>,
    ) -> Self {
        Self {
            store,
            keys,
            users,
            access: AccessTokens::default(),
            audit,
            settings,
            bus,
        }
    }

    /// Applies an access token denied on another node.
    pub fn apply(&self, event: &crate::invalidation::Invalidation) {
        if let crate::invalidation::Invalidation::AccessToken { jti, exp } = event {
            self.access.deny(jti, *exp);
        }
    }

    pub fn first_party_client_id(&self) -> &str {
        &self.settings.first_party_client_id
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    pub fn audience(&self) -> &str {
        &self.settings.audience
    }

    pub fn access_ttl_s(&self) -> i64 {
        self.settings.access_ttl_s
    }

    pub fn family_ttl_s(&self) -> i64 {
        self.settings.family_ttl_s
    }

    /// A fresh `jti` for a token issued at `now` (a UUIDv7 of that moment).
    pub fn new_jti(now: Millis) -> String {
        jti_at(now)
    }

    /// Signs an RFC 9068 access token for `grant`, with `jti` (see [`Self::new_jti`]); returns the
    /// token and its claims.
    pub fn sign_access(
        &self,
        grant: AccessGrant,
        jti: String,
        now: Millis,
    ) -> Result<(String, AccessClaims)> {
        let aud = if grant.audiences.is_empty() {
            vec![self.settings.audience.clone()]
        } else {
            grant.audiences
        };
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            sub: grant.subject,
            aud,
            exp: now.as_secs() + self.settings.access_ttl_s,
            iat: now.as_secs(),
            nbf: None,
            jti,
            client_id: grant.client_id,
            scope: grant.scope,
            sid: grant.sid,
            cnf: grant
                .jkt
                .map(|jkt| portcullis_core::jwt::Confirmation { jkt }),
            act: grant.act,
        };
        let token = self
            .keys
            .sign_access_token(&claims)
            .map_err(Error::internal)?;
        metrics::counter!("portcullis_tokens_issued_total", "kind" => "access").increment(1);
        Ok((token, claims))
    }

    /// A first-party access token (configured audience), with a `jti` of `now`: the UUIDv7 time is
    /// what revocation watermarks compare, so it is `now` as the caller took it, before the rotation
    /// or login that decided this token, and a watermark set after that decision (a password
    /// change, say) then always covers the token.
    fn sign(
        &self,
        user_id: &str,
        client_id: &str,
        scope: &str,
        sid: Option<String>,
        now: Millis,
    ) -> Result<(String, i64)> {
        let grant = AccessGrant {
            subject: user_id.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            sid,
            audiences: Vec::new(),
            jkt: None,
            act: None,
        };
        let (token, _) = self.sign_access(grant, jti_at(now), now)?;
        Ok((token, self.settings.access_ttl_s))
    }

    /// A new refresh family and the first access token for `user`, as password login grants them.
    pub async fn issue(&self, user: &UserRow, session_id: Option<String>) -> Result<TokenPair> {
        let now = Millis::now();
        let client_id = self.settings.first_party_client_id.clone();
        let refresh = OpaqueToken::generate(REFRESH_PREFIX).map_err(Error::internal)?;
        let family = NewFamily {
            id: FamilyId::generate(),
            user_id: user.id.clone(),
            client_id: client_id.clone(),
            scope: self.settings.login_scope.clone(),
            session_id: session_id.clone(),
            created_at: now,
            expires_at: now.plus_secs(self.settings.family_ttl_s),
            audiences: None,
            auth_time: None,
            dpop_jkt: None,
        };
        let first = NextToken {
            id: RefreshTokenId::generate(),
            hash: refresh.hash(),
            ttl_ms: self.settings.refresh_ttl_s * 1000,
        };
        let refresh_expires = self.store.start_family(&family, &first).await?;
        let (access_token, expires_in) =
            self.sign(&user.id, &client_id, &family.scope, session_id, now)?;
        metrics::counter!("portcullis_tokens_issued_total", "kind" => "refresh").increment(1);
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token: SecretString::from(refresh.expose().to_owned()),
            refresh_expires_in: (refresh_expires.0 - now.0) / 1000,
        })
    }

    /// Password login → a token pair (and the user, for the caller's known-device cookie).
    pub async fn login(
        &self,
        login: PasswordLogin,
        ctx: &AuditContext,
    ) -> Result<(TokenPair, UserRow)> {
        let user = self.users.login(login, ctx).await?;
        let pair = self.issue(&user, None).await?;
        Ok((pair, user))
    }

    /// Starts a refresh family (an OAuth grant's); returns its first token and that token's lifetime
    /// in seconds.
    pub async fn start_family(&self, family: &NewFamily) -> Result<(SecretString, i64)> {
        let refresh = OpaqueToken::generate(REFRESH_PREFIX).map_err(Error::internal)?;
        let first = NextToken {
            id: RefreshTokenId::generate(),
            hash: refresh.hash(),
            ttl_ms: self.settings.refresh_ttl_s * 1000,
        };
        let expires = self.store.start_family(family, &first).await?;
        metrics::counter!("portcullis_tokens_issued_total", "kind" => "refresh").increment(1);
        Ok((
            SecretString::from(refresh.expose().to_owned()),
            (expires.0 - family.created_at.0) / 1000,
        ))
    }

    /// Spends `presented` and stores its successor: the rotation, reuse detection and grace of every
    /// refresh, for whichever edge asked (first-party refresh, the OAuth token endpoint). A spent token
    /// is reuse and ends its family; a disabled user's families end.
    pub async fn rotate(&self, presented: &SecretString, ctx: &AuditContext) -> Result<Rotated> {
        let presented = OpaqueToken::parse(REFRESH_PREFIX, presented.expose_secret())
            .map_err(|_| Error::InvalidRefreshToken)?;
        let now = Millis::now();
        let next_secret = OpaqueToken::generate(REFRESH_PREFIX).map_err(Error::internal)?;
        let next = NextToken {
            id: RefreshTokenId::generate(),
            hash: next_secret.hash(),
            ttl_ms: self.settings.refresh_ttl_s * 1000,
        };
        let grace_ms = self.settings.reuse_grace_s * 1000;
        match self
            .store
            .rotate(&presented.hash(), now, grace_ms, &next)
            .await?
        {
            Rotation::Rotated { family, expires_at } => {
                if self.users.active(&family.user_id).await?.is_none() {
                    self.store
                        .revoke_user_families(&family.user_id, now, "user_disabled")
                        .await?;
                    return Err(Error::InvalidRefreshToken);
                }
                metrics::counter!("portcullis_tokens_issued_total", "kind" => "refresh")
                    .increment(1);
                self.audit.record(
                    "refresh.rotated",
                    Some(&family.user_id),
                    Some(&family.id),
                    ctx,
                    serde_json::json!({ "client_id": family.client_id }),
                );
                Ok(Rotated {
                    family,
                    refresh_token: SecretString::from(next_secret.expose().to_owned()),
                    refresh_expires_in: (expires_at.0 - now.0) / 1000,
                    now,
                })
            }
            Rotation::Reused { family_id, user_id } => {
                metrics::counter!("portcullis_refresh_reuse_detected_total").increment(1);
                tracing::warn!(family = %family_id, user = %user_id, "refresh token reuse detected; family revoked");
                self.audit.record(
                    "refresh.reuse_detected",
                    Some(&user_id),
                    Some(&family_id),
                    ctx,
                    serde_json::json!({}),
                );
                Err(Error::RefreshTokenReused)
            }
            Rotation::Invalid => Err(Error::InvalidRefreshToken),
        }
    }

    /// Spends `presented` and issues the next pair (first-party refresh). A token of an OAuth client's
    /// family is not for this endpoint: it is refused, and its family ends, since it has leaked out
    /// of the client it was issued to.
    pub async fn refresh(&self, presented: &SecretString, ctx: &AuditContext) -> Result<TokenPair> {
        let r = self.rotate(presented, ctx).await?;
        if r.family.client_id != self.settings.first_party_client_id {
            self.store
                .revoke_family(&r.family.id, r.now, "wrong_client")
                .await?;
            return Err(Error::InvalidRefreshToken);
        }
        let (access_token, expires_in) = self.sign(
            &r.family.user_id,
            &r.family.client_id,
            &r.family.scope,
            r.family.session_id.clone(),
            r.now,
        )?;
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token: r.refresh_token,
            refresh_expires_in: r.refresh_expires_in,
        })
    }

    /// Revokes one access token by `jti` until its `exp`: here at once, on other nodes through the
    /// bus (or, without Redis, when they next poll the store).
    pub async fn deny_access(&self, jti: &str, exp: i64) -> Result<()> {
        self.store.deny_jti(jti, exp, Millis::now()).await?;
        self.access.deny(jti, exp);
        self.bus
            .send(crate::invalidation::Invalidation::AccessToken {
                jti: jti.to_owned(),
                exp,
            });
        Ok(())
    }

    /// Is this `jti` on the deny list?
    pub fn is_denied(&self, jti: &str) -> bool {
        self.access.is_denied(jti)
    }

    /// `jti`s denied since `since` (what other nodes wrote), loaded into this node's deny list.
    pub async fn load_denied_since(&self, since: Millis) -> Result<()> {
        let now = Millis::now();
        let rows = self.store.jtis_denied_since(since, now).await?;
        self.access.load_denied(rows, now.as_secs());
        Ok(())
    }

    /// Revokes the family of `presented`. Unknown and malformed tokens are accepted silently, as
    /// RFC 7009 §2.2 does for revocation.
    pub async fn logout(&self, presented: &SecretString, ctx: &AuditContext) -> Result<()> {
        // Any token ends in 204, ours or not, but one longer than any we issue is a malformed request.
        if presented.expose_secret().len() > MAX_PRESENTED_TOKEN_LEN {
            return Err(Error::field(
                "refresh_token",
                "too_long",
                format!("refresh_token is at most {MAX_PRESENTED_TOKEN_LEN} characters"),
            ));
        }
        let Ok(presented) = OpaqueToken::parse(REFRESH_PREFIX, presented.expose_secret()) else {
            return Ok(());
        };
        if let Some((family, user)) = self
            .store
            .revoke_family_of(&presented.hash(), Millis::now(), "logout")
            .await?
        {
            self.audit.record(
                "logout",
                Some(&user),
                Some(&family),
                ctx,
                serde_json::json!({}),
            );
        }
        Ok(())
    }

    /// Revokes every refresh family of the user; returns how many were live.
    pub async fn revoke_families(&self, user_id: &str, reason: &str) -> Result<u64> {
        Ok(self
            .store
            .revoke_user_families(user_id, Millis::now(), reason)
            .await?)
    }

    /// Stops honouring the user's access tokens issued before `at`: here at once, on other nodes
    /// when they next poll the store (twice a second).
    pub async fn revoke_access_before(&self, user_id: &str, at: Millis) -> Result<()> {
        self.store.set_tokens_valid_after(user_id, at).await?;
        self.access.revoke_before(user_id, at);
        Ok(())
    }

    /// Loads watermarks read from the store (other nodes' revocations).
    pub fn load_watermarks(&self, rows: Vec<(String, i64)>, forget_before: Millis) {
        self.access.load_watermarks(rows, forget_before);
    }

    /// Forgets every verified token (a signing key went away).
    pub fn forget_verified(&self) {
        self.access.forget_verified();
    }

    /// Ends a signing key now and drops every cached verification, so that tokens it signed stop
    /// working at once; the replacement signing key when one was made. `NotFound` when there is no
    /// such live key.
    pub async fn revoke_signing_key(
        &self,
        admin: &Principal,
        kid: &str,
        ctx: &AuditContext,
    ) -> Result<Option<SigningKeyRow>> {
        let (found, replacement) = self.keys.revoke(kid).await.map_err(Error::internal)?;
        if !found {
            return Err(Error::NotFound("no such live signing key".into()));
        }
        self.access.forget_verified();
        self.audit.record(
            "signing_key.revoked",
            Some(&admin.subject),
            Some(kid),
            ctx,
            serde_json::json!({ "replaced_by": replacement.as_ref().map(|r| r.kid.clone()) }),
        );
        Ok(replacement)
    }

    /// The claims of a valid access token: verified once, then served from the cache until it
    /// expires, with expiry, the user's watermark and the user's state checked on every use.
    pub async fn verify(&self, token: &str) -> Result<Arc<AccessClaims>> {
        self.verify_for(token, Audience::Ours).await
    }

    /// [`Self::verify`] of a token meant for any audience (introspection, userinfo): every token we
    /// issued, still valid.
    pub async fn verify_for(&self, token: &str, audience: Audience) -> Result<Arc<AccessClaims>> {
        let now = Millis::now();
        let hash = TokenHash::of(token.as_bytes());
        let ring = self.keys.current();
        let claims = match self.access.cached(&hash.0) {
            Some(claims) => {
                claims
                    .check_time(now.as_secs(), ring.verifier.leeway_s())
                    .map_err(|e| Error::InvalidToken(e.reason()))?;
                claims
            }
            None => {
                let claims = ring.verifier.verify_for(token, now, Audience::Any).map_err(|e| {
                    metrics::counter!("portcullis_token_verifications_total", "outcome" => e.reason()).increment(1);
                    Error::InvalidToken(e.reason())
                })?;
                let claims = Arc::new(claims);
                self.access.remember(hash.0, Arc::clone(&claims));
                claims
            }
        };
        if audience == Audience::Ours && !claims.aud.iter().any(|a| a == self.audience()) {
            return Err(Error::InvalidToken("wrong_audience"));
        }
        if self.access.revoked(&claims) || self.access.is_denied(&claims.jti) {
            return Err(Error::InvalidToken("revoked"));
        }
        // A disabled (or deleted) user's tokens stop at once here, whatever their watermark says.
        if UserId::parse(&claims.sub).is_ok() && self.users.active(&claims.sub).await?.is_none() {
            return Err(Error::InvalidToken("revoked"));
        }
        Ok(claims)
    }

    /// The users' watermarks younger than `since` (what other nodes wrote).
    pub async fn watermarks_since(&self, since: Millis) -> Result<Vec<(String, i64)>> {
        Ok(self.store.token_watermarks_since(since).await?)
    }
}
