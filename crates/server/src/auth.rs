//! The verification pipeline: any credential → [`Principal`]. Every `/v1` and `/admin/v1` handler takes
//! a `Principal` (or [`Admin`]) and never looks at headers itself.
//!
//! * `Authorization: Bearer <JWT>`: verified once, then served from a cache keyed by the SHA-256 of the
//!   whole token and expiring with it; `exp`/`nbf` and revocation are re-checked on every hit.
//! * `X-API-Key: <key>`, or `Authorization: Bearer <key>` when the value has our key shape: format and
//!   checksum first, then a cache keyed by the key's hash, then the store.
//!
//! Revocation of access tokens works by watermark: password change, logout-all and disabling set the
//! user's `tokens_valid_after`; tokens issued before it (by the millisecond in their UUIDv7 `jti`) fail.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use moka::Expiry;
use moka::sync::Cache;
use portcullis_core::apikeys::{ApiKey, VerifyCode, lifetime_code};
use portcullis_core::clock::Millis;
use portcullis_core::ids::UserId;
use portcullis_core::jwt::AccessClaims;
use portcullis_core::ratelimit::{RateDecision, RatePolicy};
use portcullis_core::scopes::{Scope, Scopes};
use portcullis_core::secrets::TokenHash;
use portcullis_store::{ApiKeyRow, ApiKeyStore, Spend, UserRow, UserStore};
use serde::Serialize;

use crate::error::{ApiError, Throttled};
use crate::invalidation::Invalidation;
use crate::state::AppState;
use crate::throttle::RateLimiter;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    Session,
    Signature,
}

/// Who is calling, how, and with which rights.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user, or for keys that belong to no user (root keys), the key id.
    pub subject: String,
    pub user_id: Option<UserId>,
    pub method: AuthMethod,
    pub scopes: Scopes,
    pub session_id: Option<String>,
    pub key_id: Option<String>,
    pub client_id: Option<String>,
    /// A credential from our own login (password → token, session): the user's full self-service rights.
    pub first_party: bool,
}

impl Principal {
    /// May this caller act with `scope`? First-party user credentials may do whatever the user may;
    /// keys and third-party tokens only what their scopes say (`admin` implies everything).
    pub fn may(&self, scope: &str) -> bool {
        self.first_party || self.scopes.is_admin() || self.scopes.contains(scope)
    }

    pub fn require_user(&self) -> Result<&UserId, ApiError> {
        self.user_id.as_ref().ok_or_else(|| {
            ApiError::Forbidden(
                "not_a_user",
                "this credential does not belong to a user".into(),
            )
        })
    }
}

struct UntilExp;

impl Expiry<[u8; 32], Arc<AccessClaims>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        claims: &Arc<AccessClaims>,
        _: Instant,
    ) -> Option<Duration> {
        let left = claims.exp.saturating_sub(Millis::now().as_secs()).max(0);
        Some(Duration::from_secs(left as u64 + 1))
    }
}

/// Caches and the revocation list behind credential checks.
pub struct Authenticator {
    verified: Cache<[u8; 32], Arc<AccessClaims>>,
    users: Cache<String, Arc<UserRow>>,
    api_keys: Cache<[u8; 32], Arc<ApiKeyRow>>,
    /// Well-formed keys that do not exist, so that guessing costs no store reads. Safe to cache: a new
    /// key has 196 random bits, so nobody presents it before it exists.
    unknown_keys: Cache<[u8; 32], ()>,
    sessions: Cache<[u8; 32], Arc<portcullis_store::SessionRow>>,
    watermarks: RwLock<HashMap<String, i64>>,
}

impl Authenticator {
    /// `key_ttl`: how long a looked-up API key (or a miss) or session is kept.
    pub fn new(key_ttl: Duration) -> Self {
        Self {
            verified: Cache::builder()
                .max_capacity(200_000)
                .expire_after(UntilExp)
                .build(),
            users: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            api_keys: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(key_ttl)
                .build(),
            unknown_keys: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(key_ttl)
                .build(),
            sessions: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(key_ttl)
                .build(),
            watermarks: RwLock::new(HashMap::new()),
        }
    }

    /// Stop honouring access tokens of `user_id` issued before `at`.
    pub fn revoke_tokens_before(&self, user_id: &str, at: Millis) {
        if let Ok(mut w) = self.watermarks.write() {
            let entry = w.entry(user_id.to_owned()).or_insert(at.0);
            *entry = (*entry).max(at.0);
        }
        self.users.invalidate(user_id);
    }

    /// Loads watermarks young enough to matter (tokens issued before them may still be unexpired) and
    /// forgets older ones.
    pub fn load_watermarks(&self, rows: Vec<(String, i64)>, forget_before: Millis) {
        if let Ok(mut w) = self.watermarks.write() {
            w.retain(|_, at| *at >= forget_before.0);
            for (user, at) in rows {
                let entry = w.entry(user).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
    }

    /// Forgets every verified token, so that each is verified against the key ring again (after a
    /// signing key was revoked: a token it signed must stop working at once, cached or not).
    pub fn forget_verified(&self) {
        self.verified.invalidate_all();
    }

    fn revoked(&self, claims: &AccessClaims) -> bool {
        let Ok(w) = self.watermarks.read() else {
            return true;
        };
        w.get(&claims.sub)
            .is_some_and(|at| claims.issued_at_ms() < *at)
    }

    /// Drops whatever `event` makes stale.
    pub fn apply(&self, event: &Invalidation) {
        match event {
            Invalidation::ApiKey(hash) => {
                self.api_keys.invalidate(hash);
                self.unknown_keys.invalidate(hash);
            }
            Invalidation::Session(hash) => self.sessions.invalidate(hash),
            Invalidation::User(id) => self.users.invalidate(id),
        }
    }

    pub fn session(&self, hash: &TokenHash) -> Option<Arc<portcullis_store::SessionRow>> {
        self.sessions.get(&hash.0)
    }

    pub fn remember_session(&self, hash: TokenHash, row: Arc<portcullis_store::SessionRow>) {
        self.sessions.insert(hash.0, row);
    }
}

/// The outcome of [`AppState::check_api_key`].
#[derive(Debug)]
pub struct KeyCheck {
    pub code: VerifyCode,
    /// The stored key, when it exists.
    pub row: Option<Arc<ApiKeyRow>>,
    /// Uses left after this one (`None`: unlimited).
    pub remaining: Option<i64>,
    /// The key's rate limit and this request's decision, when the key has one and got that far.
    pub ratelimit: Option<(RatePolicy, RateDecision)>,
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::InvalidToken("malformed"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(ApiError::InvalidToken("malformed"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::InvalidToken("unsupported_scheme"));
    }
    Ok(Some(token.trim()))
}

impl AppState {
    /// A user by id, cached briefly; invalidated on every change this node makes.
    pub async fn user(&self, id: &str) -> Result<Option<Arc<UserRow>>, ApiError> {
        if let Some(u) = self.auth.users.get(id) {
            return Ok(Some(u));
        }
        let Some(row) = self.store.user_by_id(id).await? else {
            return Ok(None);
        };
        let row = Arc::new(row);
        self.auth.users.insert(id.to_owned(), Arc::clone(&row));
        Ok(Some(row))
    }

    /// Turns the credential the request carries into a principal: an API key (`X-API-Key`, or a
    /// Bearer value with our key shape), a Bearer access token, or the session cookie (with the CSRF
    /// checks for unsafe methods).
    ///
    /// A request is decided on every credential it presents, never on the first that checks out: one
    /// that carries more than one (a valid key beside a garbage `Authorization` header, a Bearer
    /// token beside a session cookie) is refused before any of them is checked, so no credential is
    /// spent and no bad one is ignored.
    pub async fn authenticate(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Principal, ApiError> {
        let api_key = headers.get("x-api-key");
        let authorization = headers.get(header::AUTHORIZATION);
        let cookie = crate::sessions::session_cookie(headers)?;
        let presented = usize::from(api_key.is_some())
            + usize::from(authorization.is_some())
            + usize::from(cookie.is_some());
        if presented > 1 || headers.get_all("x-api-key").iter().count() > 1 {
            return Err(ApiError::MultipleCredentials);
        }
        if let Some(key) = api_key {
            let key = key.to_str().map_err(|_| ApiError::InvalidApiKey)?;
            return self.authenticate_api_key(key).await;
        }
        match bearer(headers)? {
            Some(token) if ApiKey::looks_like_key(token) => self.authenticate_api_key(token).await,
            Some(token) => self.authenticate_jwt(token).await,
            None => match cookie {
                Some(raw) => self.authenticate_session(raw, method, headers).await,
                None => Err(ApiError::Unauthenticated),
            },
        }
    }

    /// Applies an invalidation to this node's caches (see [`crate::invalidation`]).
    pub fn invalidate(&self, event: Invalidation) {
        self.auth.apply(&event);
        self.bus.send(event);
    }

    /// Invalidates the cached rows of these stored hashes (keys or sessions).
    pub fn invalidate_hashes(&self, hashes: &[Vec<u8>], kind: fn([u8; 32]) -> Invalidation) {
        for event in Invalidation::of_hashes(hashes.iter().map(Vec::as_slice), kind) {
            self.invalidate(event);
        }
    }

    async fn authenticate_jwt(&self, token: &str) -> Result<Principal, ApiError> {
        let now = Millis::now();
        let hash = TokenHash::of(token.as_bytes());
        let ring = self.keys.current();
        let claims = match self.auth.verified.get(&hash.0) {
            Some(claims) => {
                claims
                    .check_time(now.as_secs(), ring.verifier.leeway_s())
                    .map_err(|e| ApiError::InvalidToken(e.reason()))?;
                claims
            }
            None => {
                let claims = ring.verifier.verify_access_token(token, now).map_err(|e| {
                    metrics::counter!("portcullis_token_verifications_total", "outcome" => e.reason()).increment(1);
                    ApiError::InvalidToken(e.reason())
                })?;
                let claims = Arc::new(claims);
                self.auth.verified.insert(hash.0, Arc::clone(&claims));
                claims
            }
        };
        if self.auth.revoked(&claims) {
            return Err(ApiError::InvalidToken("revoked"));
        }
        let user_id = UserId::parse(&claims.sub).ok();
        // A disabled (or deleted) user's tokens stop at once here, whatever their watermark says.
        if let Some(id) = &user_id
            && self
                .user(id.as_str())
                .await?
                .is_none_or(|u| u.disabled_at.is_some())
        {
            return Err(ApiError::InvalidToken("revoked"));
        }
        let scopes = Scopes::parse_space_separated(&claims.scope).unwrap_or_default();
        Ok(Principal {
            subject: claims.sub.clone(),
            user_id,
            method: AuthMethod::Jwt,
            scopes,
            session_id: claims.sid.clone(),
            key_id: None,
            first_party: claims.client_id == self.config.first_party_client_id,
            client_id: Some(claims.client_id.clone()),
        })
    }

    async fn authenticate_api_key(&self, raw: &str) -> Result<Principal, ApiError> {
        let check = self.check_api_key(raw, &[], None).await?;
        let row = match check.code {
            VerifyCode::Valid => check.row.ok_or(ApiError::InvalidApiKey)?,
            VerifyCode::UsageExceeded => {
                return Err(ApiError::Forbidden(
                    "usage_exceeded",
                    "this API key has no uses left".into(),
                ));
            }
            VerifyCode::RateLimited => {
                let (policy, decision) = check.ratelimit.ok_or(ApiError::InvalidApiKey)?;
                return Err(ApiError::RateLimited(Throttled {
                    policy: "api-key",
                    limit: policy.limit,
                    window_s: policy.period_ms.div_ceil(1000),
                    decision,
                }));
            }
            _ => return Err(ApiError::InvalidApiKey),
        };
        let scopes = Scopes::parse_space_separated(&row.scopes).unwrap_or_default();
        let user_id = row.owner_id.as_deref().and_then(|o| UserId::parse(o).ok());
        Ok(Principal {
            subject: row.owner_id.clone().unwrap_or_else(|| row.id.clone()),
            user_id,
            method: AuthMethod::ApiKey,
            scopes,
            session_id: None,
            key_id: Some(row.id.clone()),
            client_id: None,
            first_party: false,
        })
    }

    /// A stored key by hash: from memory when it was looked up recently (misses too), else the store.
    async fn api_key_row(&self, hash: &TokenHash) -> Result<Option<Arc<ApiKeyRow>>, ApiError> {
        if let Some(row) = self.auth.api_keys.get(&hash.0) {
            return Ok(Some(row));
        }
        if self.auth.unknown_keys.contains_key(&hash.0) {
            return Ok(None);
        }
        match self.store.api_key_by_hash(hash).await? {
            Some(row) => {
                let row = Arc::new(row);
                self.auth.api_keys.insert(hash.0, Arc::clone(&row));
                Ok(Some(row))
            }
            None => {
                self.auth.unknown_keys.insert(hash.0, ());
                Ok(None)
            }
        }
    }

    /// Every check of an API key, in the documented order: format → exists → revoked (or its owner
    /// disabled) → expired → scopes → remaining → rate limit. The first that fails is the answer.
    ///
    /// Format and checksum come first, so a made-up key costs no lookup at all. A key in use is served
    /// from memory; only a key with `remaining` set costs a store write (one conditional UPDATE). The
    /// rate limit is taken before `remaining` is spent, so a request refused for its rate does not use
    /// up one of the key's uses; a key whose cached `remaining` is already 0 answers USAGE_EXCEEDED
    /// without touching either.
    ///
    /// `owner`: `Some(None)` accepts only keys that belong to no user, `Some(Some(id))` only that
    /// user's; a key of anyone else is NOT_FOUND, as if it did not exist, and nothing is spent.
    pub async fn check_api_key(
        &self,
        raw: &str,
        required_scopes: &[Scope],
        owner: Option<Option<&str>>,
    ) -> Result<KeyCheck, ApiError> {
        let mut check = KeyCheck {
            code: VerifyCode::Malformed,
            row: None,
            remaining: None,
            ratelimit: None,
        };
        let Ok(key) = ApiKey::parse(raw) else {
            return Ok(check);
        };
        let Some(row) = self.api_key_row(&key.hash()).await? else {
            check.code = VerifyCode::NotFound;
            return Ok(check);
        };
        if owner.is_some_and(|o| o != row.owner_id.as_deref()) {
            check.code = VerifyCode::NotFound;
            return Ok(check);
        }
        check.row = Some(Arc::clone(&row));
        check.remaining = row.remaining;
        let now = Millis::now().0;
        if let Some(code) = lifetime_code(row.revoked_at, row.expires_at, row.grace_until, now) {
            check.code = code;
            return Ok(check);
        }
        if let Some(owner) = &row.owner_id
            && self
                .user(owner)
                .await?
                .is_none_or(|u| u.disabled_at.is_some())
        {
            check.code = VerifyCode::Revoked;
            return Ok(check);
        }
        if !required_scopes.is_empty() {
            let held = Scopes::parse_space_separated(&row.scopes).unwrap_or_default();
            if !required_scopes.iter().all(|s| held.contains(s.as_str())) {
                check.code = VerifyCode::InsufficientScope;
                return Ok(check);
            }
        }
        if row.remaining == Some(0) && row.rolled_to.is_none() {
            check.code = VerifyCode::UsageExceeded;
            return Ok(check);
        }
        if let (Some(limit), Some(period)) = (row.ratelimit_limit, row.ratelimit_duration_ms) {
            let policy = RatePolicy {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                period_ms: u64::try_from(period).unwrap_or(1000),
            };
            let decision = self
                .key_limits
                .check(&format!("key:{}", row.bucket_id()), policy, 1)
                .await;
            check.ratelimit = Some((policy, decision));
            if !decision.allowed {
                // The cached `remaining` is as of the lookup; USAGE_EXCEEDED comes first in the order,
                // so a metered key refused for its rate asks the store how many uses are left.
                if row.remaining.is_some()
                    && let Some(counter) = self.store.api_key_by_id(row.counter_id()).await?
                {
                    check.remaining = counter.remaining;
                    if counter.remaining == Some(0) {
                        check.code = VerifyCode::UsageExceeded;
                        return Ok(check);
                    }
                }
                check.code = VerifyCode::RateLimited;
                return Ok(check);
            }
        }
        if row.remaining.is_some() {
            match self.store.spend_api_key(row.counter_id(), 1).await? {
                Spend::Spent(left) => check.remaining = left,
                Spend::Exhausted => {
                    check.remaining = Some(0);
                    check.code = VerifyCode::UsageExceeded;
                    return Ok(check);
                }
            }
        }
        self.key_usage.used(&row.id);
        check.code = VerifyCode::Valid;
        Ok(check)
    }

    /// Admins: users with role `admin`, or credentials holding scope `admin`.
    pub async fn is_admin(&self, p: &Principal) -> Result<bool, ApiError> {
        if p.scopes.is_admin() {
            return Ok(true);
        }
        if !p.first_party {
            return Ok(false);
        }
        match &p.user_id {
            Some(id) => Ok(self
                .user(id.as_str())
                .await?
                .is_some_and(|u| u.has_role("admin") && u.disabled_at.is_none())),
            None => Ok(false),
        }
    }
}

/// Query parameters that carry credentials in other products' APIs.
const CREDENTIAL_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "x_api_key",
    "key",
    "access_token",
    "token",
];

/// True when the query string carries a credential: a parameter named like one, or any value that is
/// one of our API keys. URLs end up in proxy and server logs, browser history and `Referer` headers, so
/// such requests are refused rather than served (OWASP ASVS 5.0 V14.2.1).
pub fn credential_in_query(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.to_ascii_lowercase();
        CREDENTIAL_PARAMS.contains(&name.as_str())
            || (value.len() <= 128
                && ApiKey::parse(&value.replace("%5F", "_").replace("%5f", "_")).is_ok())
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        if credential_in_query(parts.uri.query()) {
            return Err(ApiError::BadRequest(
                "credential_in_query",
                "credentials belong in a header (X-API-Key or Authorization), never in the URL, \
                 where proxies, logs and browser history keep them; this request was refused"
                    .into(),
            ));
        }
        let principal = state.authenticate(&parts.method, &parts.headers).await?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// A principal that passed the admin check.
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = Principal::from_request_parts(parts, state).await?;
        if state.is_admin(&p).await? {
            Ok(Admin(p))
        } else {
            Err(ApiError::Forbidden(
                "forbidden",
                "this endpoint is for administrators".into(),
            ))
        }
    }
}
