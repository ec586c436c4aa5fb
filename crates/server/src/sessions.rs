//! Browser sessions (API.md "Sessions and CSRF"): a server-side session per login, carried in the
//! cookie `__Host-portcullis` (`Path=/; HttpOnly; Secure; SameSite=Lax`, no `Domain`).
//!
//! * The cookie holds a 256-bit random token from the OS CSPRNG; the store keeps only its SHA-256.
//! * Every login makes a new session; a session presented at login is revoked, never adopted.
//! * A session ends when revoked, after the idle timeout without use, or at the absolute timeout.
//! * Cookie-authenticated unsafe requests need `X-CSRF-Token` (see `portcullis_core::csrf`) and must
//!   not come from another site; a login posted from another site is refused the same way.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::csrf;
use portcullis_core::ids::SessionId;
use portcullis_core::secrets::OpaqueToken;
use portcullis_store::{SessionRow, SessionStore, UserRow};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::auth::{Admin, AuthMethod, Principal};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ClientIp, JsonOrForm, RequestId};
use crate::invalidation::Invalidation;
use crate::state::AppState;
use crate::tokens::LoginRequest;
use crate::users::audit_context;

/// The session cookie. `__Host-` makes browsers insist on `Secure`, `Path=/` and no `Domain`, so a
/// sibling subdomain cannot set or overwrite it.
pub const COOKIE: &str = "__Host-portcullis";
/// Prefix of session tokens (inside the cookie).
pub const TOKEN_PREFIX: &str = "pcs";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
const MAX_USER_AGENT: usize = 256;

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    id: String,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    last_seen_at: Millis,
    /// The absolute timeout; the idle timeout may end the session earlier.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: Millis,
    ip: Option<String>,
    user_agent: Option<String>,
    /// The session this request came with.
    current: bool,
}

impl SessionView {
    fn of(row: &SessionRow, current: Option<&str>, last_seen: i64) -> Self {
        Self {
            id: row.id.clone(),
            created_at: Millis(row.created_at),
            last_seen_at: Millis(last_seen.max(row.last_seen_at)),
            expires_at: Millis(row.expires_at),
            ip: row.ip.clone(),
            user_agent: row.user_agent.clone(),
            current: current == Some(row.id.as_str()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CurrentSession {
    session: SessionView,
    /// Send as `X-CSRF-Token` (or the `csrf_token` form field) with every unsafe cookie request.
    csrf_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<SessionView>,
}

/// A session found from the cookie, before the CSRF check.
pub struct CookieSession {
    pub row: Arc<SessionRow>,
    pub token: SecretString,
}

impl CookieSession {
    pub fn csrf_token(&self) -> String {
        csrf::token_for(self.token.expose_secret())
    }
}

/// The value of our session cookie. Two cookies of that name (one planted by a sibling site, say) are
/// refused rather than guessed between.
pub fn session_cookie(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    cookie_value(headers, COOKIE).map_err(|Duplicate| ApiError::InvalidSession("duplicate_cookie"))
}

/// The cookie `name` appears more than once.
#[derive(Debug)]
pub struct Duplicate;

/// The value of the cookie `name`, if the request carries it exactly once.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Duplicate> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for pair in value.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n == name {
                if found.is_some() {
                    return Err(Duplicate);
                }
                found = Some(v.trim_matches('"'));
            }
        }
    }
    Ok(found)
}

/// The known-device cookie (see `portcullis_core::devices`); `__Host-` for the same reasons.
pub const DEVICE_COOKIE: &str = "__Host-portcullis-device";

/// The `Set-Cookie` value that remembers this device for `max_age_s`.
pub fn set_device_cookie(value: &str, max_age_s: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age_s}"
    ))
    .ok()
}

/// The `Set-Cookie` value that starts a session in the browser.
pub fn set_cookie(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Lax"
    ))
    .ok()
}

/// Tells the browser to drop the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-portcullis=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0",
    )
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl AppState {
    /// The origin browsers use for us: the issuer's.
    pub fn origin(&self) -> String {
        csrf::origin_of(&self.issuer).unwrap_or_else(|| self.issuer.clone())
    }

    /// Refuses requests that the browser says come from another site.
    pub fn check_same_site(&self, headers: &HeaderMap) -> ApiResult<()> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // Pages of an origin the operator allowed for CORS count as ours (the token is still needed).
        if get("origin").is_some_and(|o| self.config.cors_allowed_origins.iter().any(|a| a == o)) {
            return Ok(());
        }
        if csrf::is_cross_site(
            get("sec-fetch-site"),
            get("origin"),
            get("referer"),
            &self.origin(),
        ) {
            return Err(ApiError::CsrfFailed(
                "this request came from another site; cookie-authenticated changes must come from our own pages",
            ));
        }
        Ok(())
    }

    /// The live session the cookie value names, or why not.
    pub async fn cookie_session(&self, raw: &str) -> ApiResult<CookieSession> {
        let token = OpaqueToken::parse(TOKEN_PREFIX, raw)
            .map_err(|_| ApiError::InvalidSession("malformed"))?;
        let hash = token.hash();
        let row = match self.auth.session(&hash) {
            Some(row) => row,
            None => {
                let row = self
                    .store
                    .session_by_hash(&hash)
                    .await?
                    .ok_or(ApiError::InvalidSession("unknown"))?;
                let row = Arc::new(row);
                self.auth.remember_session(hash, Arc::clone(&row));
                row
            }
        };
        let now = Millis::now().0;
        if row.revoked_at.is_some() {
            return Err(ApiError::InvalidSession("revoked"));
        }
        if row.expires_at <= now {
            return Err(ApiError::InvalidSession("expired"));
        }
        let last_seen = self
            .session_activity
            .last_seen(&row.id)
            .max(row.last_seen_at);
        if now - last_seen > self.config.session_idle_timeout_s * 1000 {
            return Err(ApiError::InvalidSession("idle"));
        }
        if self
            .user(&row.user_id)
            .await?
            .is_none_or(|u| u.disabled_at.is_some())
        {
            return Err(ApiError::InvalidSession("revoked"));
        }
        Ok(CookieSession {
            row,
            token: SecretString::from(token.expose().to_owned()),
        })
    }

    /// Authenticates by the session cookie; unsafe methods also need the CSRF token in the header and
    /// a same-site origin.
    pub async fn authenticate_session(
        &self,
        raw: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> ApiResult<Principal> {
        let s = self.cookie_session(raw).await?;
        if is_unsafe(method) {
            self.check_same_site(headers)?;
            let presented = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !csrf::token_matches(s.token.expose_secret(), presented) {
                return Err(ApiError::CsrfFailed(
                    "a cookie-authenticated change needs this session's X-CSRF-Token",
                ));
            }
        }
        Ok(self.session_principal(&s))
    }

    /// The principal of a checked session; notes its use.
    pub fn session_principal(&self, s: &CookieSession) -> Principal {
        self.session_activity.seen(&s.row.id);
        Principal {
            subject: s.row.user_id.clone(),
            user_id: portcullis_core::ids::UserId::parse(&s.row.user_id).ok(),
            method: AuthMethod::Session,
            scopes: Default::default(),
            session_id: Some(s.row.id.clone()),
            key_id: None,
            client_id: None,
            first_party: true,
        }
    }

    /// Starts a session for `user` and returns it with its cookie token.
    pub async fn start_session(
        &self,
        user: &UserRow,
        ip: &ClientIp,
        headers: &HeaderMap,
    ) -> ApiResult<(SessionRow, OpaqueToken)> {
        let token = OpaqueToken::generate(TOKEN_PREFIX).map_err(ApiError::internal)?;
        let now = Millis::now();
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect::<String>());
        let row = SessionRow {
            id: SessionId::generate().to_string(),
            token_hash: token.hash().0.to_vec(),
            user_id: user.id.clone(),
            created_at: now.0,
            last_seen_at: now.0,
            expires_at: now.plus_secs(self.config.session_absolute_timeout_s).0,
            revoked_at: None,
            revoked_reason: None,
            ip: Some(ip.0.to_string()),
            user_agent,
        };
        self.store.insert_session(&row).await?;
        metrics::counter!("portcullis_sessions_started_total").increment(1);
        Ok((row, token))
    }

    /// A session presented at login is ended: a new login always gets a new session (fixation).
    pub async fn end_presented_session(&self, headers: &HeaderMap) {
        let Ok(Some(raw)) = session_cookie(headers) else {
            return;
        };
        let Ok(token) = OpaqueToken::parse(TOKEN_PREFIX, raw) else {
            return;
        };
        let hash = token.hash();
        if let Ok(Some(row)) = self.store.session_by_hash(&hash).await {
            let _ = self
                .store
                .revoke_session(&row.id, &row.user_id, Millis::now().0, "replaced")
                .await;
            self.invalidate(Invalidation::Session(hash.0));
        }
    }

    /// Revokes every session of the user but `except`, here at once (other nodes within a second).
    pub async fn end_user_sessions(
        &self,
        user_id: &str,
        reason: &str,
        except: Option<&str>,
    ) -> ApiResult<usize> {
        let hashes = self
            .store
            .revoke_user_sessions(user_id, Millis::now().0, reason, except)
            .await?;
        self.invalidate_hashes(&hashes, Invalidation::Session);
        Ok(hashes.len())
    }

    pub(crate) async fn list_sessions(
        &self,
        user_id: &str,
        current: Option<&str>,
    ) -> ApiResult<SessionList> {
        let now = Millis::now().0;
        let idle_before = now - self.config.session_idle_timeout_s * 1000;
        let rows = self
            .store
            .list_user_sessions(user_id, now, idle_before - 60_000)
            .await?;
        Ok(SessionList {
            sessions: rows
                .iter()
                .map(|r| {
                    (
                        r,
                        self.session_activity.last_seen(&r.id).max(r.last_seen_at),
                    )
                })
                .filter(|(_, seen)| *seen >= idle_before)
                .map(|(r, seen)| SessionView::of(r, current, seen))
                .collect(),
        })
    }

    pub(crate) async fn revoke_one(
        &self,
        user_id: &str,
        id: &str,
        reason: &str,
        ctx: &AuditContext,
        actor: &str,
    ) -> ApiResult<bool> {
        if SessionId::parse(id).is_err() {
            return Ok(false);
        }
        let Some(hash) = self
            .store
            .revoke_session(id, user_id, Millis::now().0, reason)
            .await?
        else {
            return Ok(false);
        };
        self.invalidate_hashes(&[hash], Invalidation::Session);
        self.audit.record(
            "session.revoked",
            Some(actor),
            Some(id),
            ctx,
            serde_json::json!({ "reason": reason }),
        );
        Ok(true)
    }
}

/// Session responses carry the cookie; they are never stored by caches.
fn with_cookie(status: StatusCode, cookie: Option<HeaderValue>, body: impl Serialize) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    if let Some(c) = cookie {
        res.headers_mut().insert(header::SET_COOKIE, c);
    }
    res
}

/// Log in with email and password; the session is carried in the `__Host-portcullis` cookie.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = LoginRequest,
    responses((status = 201, body = CurrentSession), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    headers: HeaderMap,
    JsonOrForm(req): JsonOrForm<LoginRequest>,
) -> ApiResult<Response> {
    // Login CSRF: nobody else's page may sign this browser in (to the attacker's account, say).
    state.check_same_site(&headers)?;
    let ctx = audit_context(&ip, &rid);
    let user = state.login(req, ip.0, &headers, &ctx).await?;
    state.end_presented_session(&headers).await;
    let (row, token) = state.start_session(&user, &ip, &headers).await?;
    state.audit.record(
        "session.started",
        Some(&user.id),
        Some(&row.id),
        &ctx,
        serde_json::json!({}),
    );
    let body = CurrentSession {
        csrf_token: csrf::token_for(token.expose()),
        session: SessionView::of(&row, Some(&row.id), row.last_seen_at),
    };
    let mut res = with_cookie(StatusCode::CREATED, set_cookie(token.expose()), body);
    if let Some(device) = state.device_cookie(&user) {
        res.headers_mut().append(header::SET_COOKIE, device);
    }
    Ok(res)
}

/// The session of this request, and its CSRF token.
#[utoipa::path(get, path = "/v1/sessions/current", tag = "sessions",
    responses((status = 200, body = CurrentSession), (status = 401, body = Problem)))]
pub async fn current(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let raw = session_cookie(&headers)?.ok_or(ApiError::InvalidSession("missing"))?;
    let s = state.cookie_session(raw).await?;
    state.session_activity.seen(&s.row.id);
    let seen = state.session_activity.last_seen(&s.row.id);
    Ok(with_cookie(
        StatusCode::OK,
        None,
        CurrentSession {
            csrf_token: s.csrf_token(),
            session: SessionView::of(&s.row, Some(&s.row.id), seen),
        },
    ))
}

/// The caller's live sessions.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    responses((status = 200, body = SessionList), (status = 401, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    p: Principal,
) -> ApiResult<axum::Json<SessionList>> {
    let user_id = p.require_user()?;
    require_own_login(&p)?;
    Ok(axum::Json(
        state
            .list_sessions(user_id.as_str(), p.session_id.as_deref())
            .await?,
    ))
}

fn require_own_login(p: &Principal) -> ApiResult<()> {
    if p.first_party {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "insufficient_scope",
            "sessions are managed by the user's own login".into(),
        ))
    }
}

/// End one of the caller's sessions (`current` for this one, which also clears the cookie).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    end_session(&state, &p, &audit_context(&ip, &rid), id).await
}

/// Log out: end this request's session and clear the cookie.
#[utoipa::path(delete, path = "/v1/sessions/current", tag = "sessions",
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("session" = [])))]
pub async fn revoke_current(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
) -> ApiResult<Response> {
    end_session(&state, &p, &audit_context(&ip, &rid), "current".to_owned()).await
}

async fn end_session(
    state: &AppState,
    p: &Principal,
    ctx: &AuditContext,
    id: String,
) -> ApiResult<Response> {
    let user_id = p.require_user()?;
    require_own_login(p)?;
    let (id, reason) = if id == "current" {
        let id = p
            .session_id
            .clone()
            .ok_or_else(|| ApiError::NotFound("this request was not made with a session".into()))?;
        (id, "logout")
    } else {
        (id, "revoked")
    };
    let is_current = p.session_id.as_deref() == Some(id.as_str());
    let done = state
        .revoke_one(user_id.as_str(), &id, reason, ctx, &p.subject)
        .await?;
    if !done {
        return Err(ApiError::NotFound("no such session".into()));
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    if is_current {
        res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    }
    Ok(res)
}

/// A user's live sessions (administrators).
#[utoipa::path(get, path = "/admin/v1/users/{id}/sessions", tag = "admin",
    responses((status = 200, body = SessionList), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<axum::Json<SessionList>> {
    Ok(axum::Json(state.list_sessions(&user_id, None).await?))
}

/// End every session of a user (administrators).
#[utoipa::path(delete, path = "/admin/v1/users/{id}/sessions", tag = "admin",
    responses((status = 204), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn admin_revoke_all(
    State(state): State<AppState>,
    Admin(p): Admin,
    ip: ClientIp,
    rid: RequestId,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    let n = state.end_user_sessions(&user_id, "admin", None).await?;
    state.audit.record(
        "session.revoked_all",
        Some(&p.subject),
        Some(&user_id),
        &audit_context(&ip, &rid),
        serde_json::json!({ "sessions": n }),
    );
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(values: &[String]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append(header::COOKIE, v);
            }
        }
        h
    }

    proptest! {
        /// Arbitrary Cookie headers never panic the parser.
        #[test]
        fn the_cookie_parser_takes_anything(values in proptest::collection::vec(".{0,200}", 0..4)) {
            let _ = session_cookie(&headers(&values));
        }

        /// Among other cookies, in any order and over several headers, ours is found once, and two of
        /// ours are refused rather than guessed between.
        #[test]
        fn our_cookie_is_found_exactly_once(
            others in proptest::collection::vec(("[A-Za-z_-]{1,20}", "[A-Za-z0-9%_.-]{0,30}"), 0..6),
            value in "pcs_[A-Za-z0-9_-]{43}",
            at in 0usize..6,
            split in any::<bool>(),
            twice in any::<bool>(),
        ) {
            let mut pairs: Vec<String> = others
                .iter()
                .filter(|(n, _)| n != COOKIE)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let at = at.min(pairs.len());
            pairs.insert(at, format!("{COOKIE}={value}"));
            if twice {
                pairs.push(format!("{COOKIE}={value}"));
            }
            let values = if split {
                pairs.clone()
            } else {
                vec![pairs.join("; ")]
            };
            let h = headers(&values);
            match session_cookie(&h) {
                Ok(found) => {
                    prop_assert!(!twice);
                    prop_assert_eq!(found, Some(value.as_str()));
                }
                Err(e) => {
                    prop_assert!(twice);
                    prop_assert_eq!(e.code(), "invalid_session");
                }
            }
        }
    }
}
