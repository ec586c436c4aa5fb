//! Token login (API.md "Token login"): password → RFC 9068 access token + rotating refresh token,
//! refresh with reuse detection, logout of one family or of everything, the JWKS and key rotation.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::devices::DeviceId;
use portcullis_core::ids::{FamilyId, RefreshTokenId};
use portcullis_core::jwt::AccessClaims;
use portcullis_core::passwords::{StoredHash, Verification};
use portcullis_core::secrets::OpaqueToken;
use portcullis_store::{
    NewFamily, NextToken, RefreshTokenStore, Rotation, SigningKeyStore, UserRow, UserStore,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::auth::{Admin, Principal};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::extract::{ClientIp, JsonOrForm, RequestId};
use crate::state::AppState;
use crate::users::{audit_context, parse_email};

/// A fresh UUIDv7 whose timestamp is `at`.
fn jti_at(at: Millis) -> String {
    let secs = u64::try_from(at.0.div_euclid(1000)).unwrap_or(0);
    let nanos = u32::try_from(at.0.rem_euclid(1000) * 1_000_000).unwrap_or(0);
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos)).to_string()
}

/// Prefix of refresh tokens: lets secret scanners and humans recognise one.
pub const REFRESH_PREFIX: &str = "prt";

/// Login passwords longer than this are refused before hashing: no policy allows them.
const MAX_LOGIN_PASSWORD_BYTES: usize = 4096;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = String)]
    refresh_token: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    refresh_token: String,
    refresh_expires_in: i64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenPair([redacted])")
    }
}

impl IntoResponse for TokenPair {
    fn into_response(self) -> Response {
        let mut r = axum::Json(self).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r.headers_mut()
            .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        r
    }
}

impl AppState {
    fn sign_access_token(
        &self,
        user_id: &str,
        client_id: &str,
        scope: &str,
        sid: Option<String>,
        now: Millis,
    ) -> ApiResult<(String, i64)> {
        let ttl = self.config.access_token_ttl_s;
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: user_id.to_owned(),
            aud: self.audience.clone(),
            exp: now.as_secs() + ttl,
            iat: now.as_secs(),
            nbf: None,
            // The jti's UUIDv7 time is what revocation watermarks compare, so it is `now` as the caller
            // took it, before the rotation or login that decided this token: a watermark set after
            // that decision (a password change, say) then always covers the token.
            jti: jti_at(now),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            sid,
        };
        let token = self
            .keys
            .sign_access_token(&claims)
            .map_err(ApiError::internal)?;
        metrics::counter!("portcullis_tokens_issued_total", "kind" => "access").increment(1);
        Ok((token, ttl))
    }

    /// A new refresh family and the first access token for `user`.
    pub async fn issue_tokens(
        &self,
        user: &UserRow,
        session_id: Option<String>,
    ) -> ApiResult<TokenPair> {
        let now = Millis::now();
        let client_id = self.config.first_party_client_id.clone();
        let refresh = OpaqueToken::generate(REFRESH_PREFIX).map_err(ApiError::internal)?;
        let family = NewFamily {
            id: FamilyId::generate(),
            user_id: user.id.clone(),
            client_id: client_id.clone(),
            scope: String::new(),
            session_id: session_id.clone(),
            created_at: now,
            expires_at: now.plus_secs(self.config.refresh_family_ttl_s),
        };
        let first = NextToken {
            id: RefreshTokenId::generate(),
            hash: refresh.hash(),
            ttl_ms: self.config.refresh_token_ttl_s * 1000,
        };
        let refresh_expires = self.store.start_family(&family, &first).await?;
        let (access_token, expires_in) =
            self.sign_access_token(&user.id, &client_id, "", session_id, now)?;
        metrics::counter!("portcullis_tokens_issued_total", "kind" => "refresh").increment(1);
        Ok(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token: refresh.expose().to_owned(),
            refresh_expires_in: (refresh_expires.0 - now.0) / 1000,
        })
    }

    /// The known device `headers` prove for the account `email_key`, if any.
    pub fn known_device(&self, headers: &HeaderMap, email_key: &str) -> Option<DeviceId> {
        let devices = self.devices.as_ref()?;
        let raw = crate::sessions::cookie_value(headers, crate::sessions::DEVICE_COOKIE).ok()??;
        devices.verify(
            raw,
            email_key,
            Millis::now(),
            self.config.known_device_ttl_days * 86_400_000,
        )
    }

    /// The `Set-Cookie` that makes this client a known device of `user` (after a successful login).
    pub fn device_cookie(&self, user: &UserRow) -> Option<HeaderValue> {
        let value = self
            .devices
            .as_ref()?
            .issue(&user.email_key, Millis::now())
            .ok()?;
        crate::sessions::set_device_cookie(&value, self.config.known_device_ttl_days * 86_400)
    }

    /// Checks a password login from a client at `ip` sending `headers` (for its known-device
    /// cookie): the attempt is reserved with the throttle before any hashing, then settled by the
    /// verdict. Upgrades old hashes.
    pub async fn login(
        &self,
        req: LoginRequest,
        ip: std::net::IpAddr,
        headers: &HeaderMap,
        ctx: &AuditContext,
    ) -> ApiResult<UserRow> {
        let email = parse_email(&req.email)?;
        if req.password.expose_secret().len() > MAX_LOGIN_PASSWORD_BYTES {
            return Err(ApiError::Validation(vec![FieldError::new(
                "password",
                "too_long",
                "password is too long",
            )]));
        }
        let key = email.key();
        let device = self.known_device(headers, &key);
        let attempt = match self.throttle.begin(ip, &key, device.as_ref()).await {
            Ok(attempt) => attempt,
            Err(e) => {
                metrics::counter!("portcullis_logins_total", "outcome" => "throttled").increment(1);
                // Refused before any work, so counted rather than written one by one.
                self.audit_counts.record(
                    "login.throttled",
                    None,
                    serde_json::json!({ "email": key, "policy": crate::throttle::refused_policy(&e) }),
                    "ips",
                    Some(&crate::listener::client_bucket(ip).to_string()),
                );
                return Err(e);
            }
        };
        let user = self.store.user_by_email_key(&key).await?;
        let stored = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .map(StoredHash::from_stored);
        let password = req.password;
        // Unknown accounts verify against a dummy hash so that both answers cost the same.
        let verdict = self
            .hashing
            .run(move |h| match stored {
                Some(stored) => match h.verify(&password, &stored) {
                    Verification::Match { needs_rehash: true } => {
                        (true, h.hash(&password).ok().map(|n| (stored, n)))
                    }
                    Verification::Match {
                        needs_rehash: false,
                    } => (true, None),
                    Verification::Mismatch => (false, None),
                },
                None => {
                    h.verify_dummy(&password);
                    (false, None)
                }
            })
            .await;
        let (verdict, upgraded) = match verdict {
            Ok(v) => v,
            Err(_) => {
                self.throttle.abandon(attempt).await;
                return Err(ApiError::Overloaded);
            }
        };
        match user {
            Some(user) if verdict && user.disabled_at.is_none() => {
                self.throttle.succeeded(attempt).await;
                if let Some((old, new)) = upgraded {
                    let upgraded = self
                        .store
                        .upgrade_password_hash(&user.id, old.as_str(), new.as_str(), Millis::now())
                        .await?;
                    if upgraded {
                        self.invalidate(crate::invalidation::Invalidation::User(user.id.clone()));
                        self.audit.record(
                            "password.upgraded",
                            Some(&user.id),
                            Some(&user.id),
                            ctx,
                            serde_json::json!({}),
                        );
                    }
                }
                metrics::counter!("portcullis_logins_total", "outcome" => "success").increment(1);
                self.audit.record(
                    "login.succeeded",
                    Some(&user.id),
                    Some(&user.id),
                    ctx,
                    serde_json::json!({ "known_device": device.is_some() }),
                );
                Ok(user)
            }
            user => {
                self.throttle.failed(attempt);
                metrics::counter!("portcullis_logins_total", "outcome" => "failure").increment(1);
                let subject = user.as_ref().map(|u| u.id.as_str());
                self.audit.record(
                    "login.failed",
                    None,
                    subject,
                    ctx,
                    serde_json::json!({ "email": key }),
                );
                Err(ApiError::InvalidCredentials)
            }
        }
    }

    pub async fn refresh(&self, req: RefreshRequest, ctx: &AuditContext) -> ApiResult<TokenPair> {
        let presented = OpaqueToken::parse(REFRESH_PREFIX, req.refresh_token.expose_secret())
            .map_err(|_| ApiError::InvalidRefreshToken)?;
        let now = Millis::now();
        let next_secret = OpaqueToken::generate(REFRESH_PREFIX).map_err(ApiError::internal)?;
        let next = NextToken {
            id: RefreshTokenId::generate(),
            hash: next_secret.hash(),
            ttl_ms: self.config.refresh_token_ttl_s * 1000,
        };
        let grace_ms = self.config.refresh_reuse_grace_s * 1000;
        match self
            .store
            .rotate(&presented.hash(), now, grace_ms, &next)
            .await?
        {
            Rotation::Rotated { family, expires_at } => {
                let user = self.user(&family.user_id).await?;
                if user.is_none_or(|u| u.disabled_at.is_some()) {
                    self.store
                        .revoke_user_families(&family.user_id, now, "user_disabled")
                        .await?;
                    return Err(ApiError::InvalidRefreshToken);
                }
                let (access_token, expires_in) = self.sign_access_token(
                    &family.user_id,
                    &family.client_id,
                    &family.scope,
                    family.session_id.clone(),
                    now,
                )?;
                metrics::counter!("portcullis_tokens_issued_total", "kind" => "refresh")
                    .increment(1);
                self.audit.record(
                    "refresh.rotated",
                    Some(&family.user_id),
                    Some(&family.id),
                    ctx,
                    serde_json::json!({}),
                );
                Ok(TokenPair {
                    access_token,
                    token_type: "Bearer",
                    expires_in,
                    refresh_token: next_secret.expose().to_owned(),
                    refresh_expires_in: (expires_at.0 - now.0) / 1000,
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
                Err(ApiError::RefreshTokenReused)
            }
            Rotation::Invalid => Err(ApiError::InvalidRefreshToken),
        }
    }

    pub async fn logout(&self, req: RefreshRequest, ctx: &AuditContext) -> ApiResult<()> {
        // Unknown and malformed tokens are accepted silently, as RFC 7009 §2.2 does for revocation.
        let Ok(presented) = OpaqueToken::parse(REFRESH_PREFIX, req.refresh_token.expose_secret())
        else {
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

    /// Ends every way the user is signed in: all refresh families, every session, and every access
    /// token issued before the moment they were revoked, in that order. The watermark is written
    /// last, at a time taken after the revocations: a refresh racing this call either found its
    /// family revoked, or rotated before and signed its token with a `jti` time from before the
    /// rotation, so the watermark covers it. (Writing the watermark first, as an earlier release did,
    /// let a refresh in between sign a token that outlived the password change.) This process honours
    /// the watermark at once; other nodes within a second (the store is polled). Returns how many
    /// families were live.
    /// `keep_session`: the session a password change was made from, which stays (API.md: "every
    /// other session").
    pub(crate) async fn end_every_login(
        &self,
        user_id: &str,
        reason: &str,
        keep_session: Option<&str>,
    ) -> ApiResult<u64> {
        let families = self
            .store
            .revoke_user_families(user_id, Millis::now(), reason)
            .await?;
        self.end_user_sessions(user_id, reason, keep_session)
            .await?;
        let watermark = Millis::now();
        self.store
            .set_tokens_valid_after(user_id, watermark)
            .await?;
        self.auth.revoke_tokens_before(user_id, watermark);
        Ok(families)
    }

    pub async fn logout_all(&self, p: &Principal, ctx: &AuditContext) -> ApiResult<()> {
        let user_id = p.require_user()?;
        if !p.first_party {
            return Err(ApiError::Forbidden(
                "insufficient_scope",
                "only the user's own login may log out everywhere".into(),
            ));
        }
        let families = self
            .end_every_login(user_id.as_str(), "logout_all", None)
            .await?;
        self.audit.record(
            "logout.all",
            Some(user_id.as_str()),
            Some(user_id.as_str()),
            ctx,
            serde_json::json!({ "families": families }),
        );
        Ok(())
    }
}

/// Log in with email and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "tokens",
    request_body(content((LoginRequest = "application/json"), (LoginRequest = "application/x-www-form-urlencoded"))),
    responses((status = 200, body = TokenPair), (status = 400, body = Problem), (status = 401, body = Problem), (status = 429, body = Problem), (status = 503, body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    headers: HeaderMap,
    JsonOrForm(req): JsonOrForm<LoginRequest>,
) -> ApiResult<Response> {
    let ctx = audit_context(&ip, &rid);
    let user = state.login(req, ip.0, &headers, &ctx).await?;
    let mut res = state.issue_tokens(&user, None).await?.into_response();
    if let Some(cookie) = state.device_cookie(&user) {
        res.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(res)
}

/// Exchange a refresh token for a new pair; the presented token is spent.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "tokens",
    request_body(content((RefreshRequest = "application/json"), (RefreshRequest = "application/x-www-form-urlencoded"))),
    responses((status = 200, body = TokenPair), (status = 401, body = Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    JsonOrForm(req): JsonOrForm<RefreshRequest>,
) -> ApiResult<TokenPair> {
    state.refresh(req, &audit_context(&ip, &rid)).await
}

/// Revoke the refresh family the token belongs to.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "tokens", request_body = RefreshRequest, responses((status = 204)))]
pub async fn logout(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    JsonOrForm(req): JsonOrForm<RefreshRequest>,
) -> ApiResult<StatusCode> {
    state.logout(req, &audit_context(&ip, &rid)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke every refresh token and access token of the calling user.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "tokens", responses((status = 204), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn logout_all(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
) -> ApiResult<StatusCode> {
    state.logout_all(&p, &audit_context(&ip, &rid)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys access tokens are signed with (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "tokens", responses((status = 200, description = "JWK Set")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let body = state.keys.current().jwks.clone();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[derive(Serialize, ToSchema)]
pub struct SigningKeyView {
    kid: String,
    alg: String,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    publish_at: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    activate_at: Millis,
    #[serde(with = "rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    retire_at: Option<Millis>,
    #[serde(with = "rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expire_at: Option<Millis>,
    /// `next`, `current`, `retiring` or `expired`.
    state: &'static str,
}

impl SigningKeyView {
    pub fn from_row(row: &portcullis_store::SigningKeyRow, now: Millis) -> Self {
        let state = match (row.retire_at, row.expire_at) {
            (_, Some(e)) if e <= now.0 => "expired",
            (Some(r), _) if r <= now.0 => "retiring",
            _ if row.activate_at > now.0 => "next",
            _ => "current",
        };
        Self {
            kid: row.kid.clone(),
            alg: row.alg.clone(),
            publish_at: Millis(row.publish_at),
            activate_at: Millis(row.activate_at),
            retire_at: row.retire_at.map(Millis),
            expire_at: row.expire_at.map(Millis),
            state,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SigningKeyList {
    keys: Vec<SigningKeyView>,
}

/// Create the next signing key: published now, signing after the publish lead time.
#[utoipa::path(post, path = "/admin/v1/signing-keys/rotate", tag = "admin",
    responses((status = 201, body = SigningKeyView), (status = 403, body = Problem)), security(("bearer" = []), ("api_key" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ip: ClientIp,
    rid: RequestId,
) -> ApiResult<impl IntoResponse> {
    let now = Millis::now();
    let row = state
        .keys
        .create_key(now, state.config.signing_key_publish_lead_s)
        .await
        .map_err(ApiError::internal)?;
    state.audit.record(
        "signing_key.rotated",
        Some(&admin.subject),
        Some(&row.kid),
        &audit_context(&ip, &rid),
        serde_json::json!({ "alg": row.alg }),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(SigningKeyView::from_row(&row, now)),
    ))
}

/// The outcome of an emergency revocation.
#[derive(Serialize, ToSchema)]
pub struct RevokedSigningKey {
    kid: String,
    /// The key that signs from now on, when the revoked one was signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced_by: Option<SigningKeyView>,
}

/// Revoke a signing key now (an emergency: it may be compromised). It leaves the JWKS and every token
/// it signed stops working at once, on this node and within a second on every other; when it was the
/// one signing, a new key takes over immediately. Users must log in again or refresh.
#[utoipa::path(post, path = "/admin/v1/signing-keys/{kid}/revoke", tag = "admin",
    responses((status = 200, body = RevokedSigningKey), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn revoke_signing_key(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ip: ClientIp,
    rid: RequestId,
    axum::extract::Path(kid): axum::extract::Path<String>,
) -> ApiResult<axum::Json<RevokedSigningKey>> {
    let (found, replacement) = state.keys.revoke(&kid).await.map_err(ApiError::internal)?;
    if !found {
        return Err(ApiError::NotFound("no such live signing key".into()));
    }
    state.auth.forget_verified();
    state.audit.record(
        "signing_key.revoked",
        Some(&admin.subject),
        Some(&kid),
        &audit_context(&ip, &rid),
        serde_json::json!({ "replaced_by": replacement.as_ref().map(|r| r.kid.clone()) }),
    );
    let now = Millis::now();
    Ok(axum::Json(RevokedSigningKey {
        kid,
        replaced_by: replacement.map(|r| SigningKeyView::from_row(&r, now)),
    }))
}

/// Every signing key and its state.
#[utoipa::path(get, path = "/admin/v1/signing-keys", tag = "admin",
    responses((status = 200, body = SigningKeyList), (status = 403, body = Problem)), security(("bearer" = []), ("api_key" = [])))]
pub async fn list_signing_keys(
    State(state): State<AppState>,
    _: Admin,
) -> ApiResult<axum::Json<SigningKeyList>> {
    let now = Millis::now();
    let rows = state.store.all_signing_keys().await?;
    Ok(axum::Json(SigningKeyList {
        keys: rows
            .iter()
            .map(|r| SigningKeyView::from_row(r, now))
            .collect(),
    }))
}
