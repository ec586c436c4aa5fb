//! `/v1/auth/login`, `/v1/auth/refresh`, `/v1/auth/logout`, `/v1/auth/logout-all`.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::principal::Principal;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::TokenPair;
use crate::app::state::AppState;
use crate::http::extract::{AuditCtx, JsonOrForm};
use crate::http::{ApiResult, Problem};
use crate::users::handlers::{LoginPost, LoginRequest, remember_device};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = String, max_length = 256)]
    refresh_token: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct TokenPairView {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds.
    expires_in: i64,
    refresh_token: String,
    /// Seconds.
    refresh_expires_in: i64,
}

impl std::fmt::Debug for TokenPairView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenPairView([redacted])")
    }
}

/// The pair as JSON, never stored by a cache.
fn pair_response(pair: TokenPair) -> Response {
    let view = TokenPairView {
        access_token: pair.access_token,
        token_type: "Bearer",
        expires_in: pair.expires_in,
        refresh_token: pair.refresh_token.expose_secret().to_owned(),
        refresh_expires_in: pair.refresh_expires_in,
    };
    let mut r = axum::Json(view).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "tokens",
    request_body(content((LoginRequest = "application/json"), (LoginRequest = "application/x-www-form-urlencoded"))),
    responses((status = 200, body = TokenPairView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem), (status = 503, body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    AuditCtx(ctx): AuditCtx,
    LoginPost { login, .. }: LoginPost,
) -> ApiResult<Response> {
    let (pair, user) = state.tokens.login(login, &ctx).await?;
    let mut res = pair_response(pair);
    remember_device(&state, &user, &mut res);
    Ok(res)
}

/// Exchange a refresh token for a new pair; the presented token is spent.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "tokens",
    request_body(content((RefreshRequest = "application/json"), (RefreshRequest = "application/x-www-form-urlencoded"))),
    responses((status = 200, body = TokenPairView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    AuditCtx(ctx): AuditCtx,
    JsonOrForm(req): JsonOrForm<RefreshRequest>,
) -> ApiResult<Response> {
    Ok(pair_response(
        state.tokens.refresh(&req.refresh_token, &ctx).await?,
    ))
}

/// Revoke the refresh family the token belongs to.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "tokens",
    request_body(content((RefreshRequest = "application/json"), (RefreshRequest = "application/x-www-form-urlencoded"))),
    responses((status = 204), (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn logout(
    State(state): State<AppState>,
    AuditCtx(ctx): AuditCtx,
    JsonOrForm(req): JsonOrForm<RefreshRequest>,
) -> ApiResult<StatusCode> {
    state.tokens.logout(&req.refresh_token, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke every refresh token, session and access token of the calling user.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "tokens",
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("session" = [])))]
pub async fn logout_all(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
) -> ApiResult<StatusCode> {
    state.sessions.logout_all(&p, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}
