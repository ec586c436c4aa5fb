//! `/v1/sessions` and the sessions' admin endpoints.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::csrf;
use portcullis_core::ids::{SessionId, UserId};
use portcullis_core::principal::Principal;
use portcullis_store::SessionRow;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::SessionSummary;
use crate::app::state::AppState;
use crate::auth::Admin;
use crate::auth::credential::{site_hints, user_agent};
use crate::error::Error;
use crate::http::cookies::{clear_session_cookie, session_cookie, set_session_cookie};
use crate::http::extract::AuditCtx;
use crate::http::{ApiResult, Problem};
use crate::users::handlers::{LoginPost, LoginRequest, remember_device};
use crate::users::service::{require_own_login, require_user};

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    #[schema(value_type = String)]
    id: SessionId,
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
    fn of(row: &SessionRow, current: bool, last_seen: Millis) -> Self {
        Self {
            id: row.id.clone(),
            created_at: row.created_at,
            last_seen_at: last_seen.max(row.last_seen_at),
            expires_at: row.expires_at,
            ip: row.ip.clone(),
            user_agent: row.user_agent.clone(),
            current,
        }
    }
}

impl From<&SessionSummary> for SessionView {
    fn from(s: &SessionSummary) -> Self {
        Self::of(&s.row, s.current, s.last_seen_at)
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

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(current, revoke_current))
        .routes(routes!(revoke))
        .routes(routes!(admin_list, admin_revoke_all))
}

/// Session answers carry the cookie; they are never stored by caches (the middleware's default).
fn with_cookie(status: StatusCode, cookie: Option<HeaderValue>, body: impl Serialize) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    if let Some(c) = cookie {
        res.headers_mut().insert(header::SET_COOKIE, c);
    }
    res
}

/// Log in with email and password; the session is carried in the `__Host-portcullis` cookie.
#[utoipa::path(post, path = "/v1/sessions", operation_id = "create_session", tag = "sessions",
    request_body(content((LoginRequest = "application/json"), (LoginRequest = "application/x-www-form-urlencoded"))),
    responses((status = 201, body = CurrentSession), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 429, body = Problem), (status = 503, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    AuditCtx(ctx): AuditCtx,
    LoginPost { login, headers }: LoginPost,
) -> ApiResult<Response> {
    let presented = session_cookie(&headers).ok().flatten();
    let s = state
        .sessions
        .login(
            &site_hints(&headers),
            login,
            presented,
            user_agent(&headers),
            "api",
            &ctx,
        )
        .await?;
    let body = CurrentSession {
        csrf_token: csrf::token_for(s.token.expose()),
        session: SessionView::of(&s.row, true, s.row.last_seen_at),
    };
    let mut res = with_cookie(
        StatusCode::CREATED,
        set_session_cookie(s.token.expose()),
        body,
    );
    remember_device(&state, &s.user, &mut res);
    Ok(res)
}

/// The session of this request, and its CSRF token.
#[utoipa::path(get, path = "/v1/sessions/current", operation_id = "current_session", tag = "sessions",
    responses((status = 200, body = CurrentSession), (status = 401, body = Problem)),
    security(("session" = [])))]
pub async fn current(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let raw = session_cookie(&headers)?.ok_or(Error::InvalidSession("missing"))?;
    let s = state.sessions.cookie_session(raw).await?;
    state.sessions.seen(&s);
    let seen = state.sessions.last_seen(&s);
    Ok(with_cookie(
        StatusCode::OK,
        None,
        CurrentSession {
            csrf_token: s.csrf_token(),
            session: SessionView::of(&s.row, true, seen),
        },
    ))
}

/// The caller's live sessions.
#[utoipa::path(get, path = "/v1/sessions", operation_id = "list_sessions", tag = "sessions",
    responses((status = 200, body = SessionList), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    p: Principal,
) -> ApiResult<axum::Json<SessionList>> {
    let user_id = require_user(&p)?;
    require_own_login(&p, "manage sessions")?;
    let sessions = state.sessions.list(user_id, p.session_id.as_ref()).await?;
    Ok(axum::Json(SessionList {
        sessions: sessions.iter().map(SessionView::from).collect(),
    }))
}

/// End one of the caller's sessions (`current` for this one, which also clears the cookie).
#[utoipa::path(delete, path = "/v1/sessions/{id}", operation_id = "revoke_session", tag = "sessions",
    params(("id" = String, Path, description = "A session id (ses_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("session" = []), ("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    end_session(&state, &p, &ctx, id).await
}

/// Log out: end this request's session and clear the cookie.
#[utoipa::path(delete, path = "/v1/sessions/current", operation_id = "revoke_current_session", tag = "sessions",
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("session" = [])))]
pub async fn revoke_current(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
) -> ApiResult<Response> {
    end_session(&state, &p, &ctx, "current".to_owned()).await
}

async fn end_session(
    state: &AppState,
    p: &Principal,
    ctx: &crate::audit::AuditContext,
    id: String,
) -> ApiResult<Response> {
    let user_id = require_user(p)?;
    require_own_login(p, "manage sessions")?;
    let no_such_session = || Error::NotFound("no such session".into());
    let (id, reason) = if id == "current" {
        let id = p
            .session_id
            .clone()
            .ok_or_else(|| Error::NotFound("this request was not made with a session".into()))?;
        (id, "logout")
    } else {
        (
            SessionId::parse(&id).map_err(|_| no_such_session())?,
            "revoked",
        )
    };
    let is_current = p.session_id.as_ref() == Some(&id);
    if !state
        .sessions
        .revoke(user_id, &id, reason, &p.subject, ctx)
        .await?
    {
        return Err(no_such_session().into());
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    if is_current {
        res.headers_mut()
            .insert(header::SET_COOKIE, clear_session_cookie());
    }
    Ok(res)
}

/// A user's live sessions (administrators).
#[utoipa::path(get, path = "/admin/v1/users/{id}/sessions", operation_id = "admin_list_sessions", tag = "admin",
    params(("id" = String, Path, description = "The user's id (usr_…)")),
    responses((status = 200, body = SessionList), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> ApiResult<axum::Json<SessionList>> {
    // An id that is no user's has no sessions.
    let sessions = match UserId::parse(&user_id) {
        Ok(user_id) => state.sessions.list(&user_id, None).await?,
        Err(_) => Vec::new(),
    };
    Ok(axum::Json(SessionList {
        sessions: sessions.iter().map(SessionView::from).collect(),
    }))
}

/// End every session of a user (administrators).
#[utoipa::path(delete, path = "/admin/v1/users/{id}/sessions", operation_id = "admin_revoke_sessions", tag = "admin",
    params(("id" = String, Path, description = "The user's id (usr_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_revoke_all(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    // An id that is no user's has no sessions to end.
    if let Ok(user_id) = UserId::parse(&user_id) {
        state.sessions.revoke_all(&admin, &user_id, &ctx).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
