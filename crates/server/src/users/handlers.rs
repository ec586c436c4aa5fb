//! `/v1/users`, `/v1/me`, `/v1/me/password` and the users' admin endpoints.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::ids::UserId;
use portcullis_core::principal::{AuthMethod, Principal};
use portcullis_store::UserRow;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::{PasswordLogin, parse_email, require_user};
use crate::app::state::AppState;
use crate::auth::Admin;
use crate::error::Error;
use crate::http::cookies::{device_cookie, set_device_cookie};
use crate::http::extract::{AuditCtx, ClientIp, Json, JsonOrForm, Query};
use crate::http::pagination::{PageQuery, PageRequest};
use crate::http::{ApiError, ApiResult, Problem};

/// A password login as posted to `/v1/auth/login` or `/v1/sessions` (JSON or a form): the email
/// checked, with the client's address and the known device its cookie proves; the request's
/// headers for what else the handler reads.
pub struct LoginPost {
    pub login: PasswordLogin,
    pub headers: HeaderMap,
}

impl FromRequest<AppState> for LoginPost {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let ip = ClientIp::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let JsonOrForm(req) =
            JsonOrForm::<LoginRequest>::from_request(Request::from_parts(parts, body), state)
                .await?;
        let login = state.users.password_login(
            parse_email(&req.email)?,
            req.password,
            ip.0,
            device_cookie(&headers),
        );
        Ok(Self { login, headers })
    }
}

/// The known-device cookie a successful login of `user` earns, onto `res` (unless known devices are
/// off).
pub fn remember_device(state: &AppState, user: &UserRow, res: &mut Response) {
    if let Some(cookie) = state
        .users
        .device_cookie(user)
        .and_then(|(v, age)| set_device_cookie(&v, age))
    {
        res.headers_mut().append(header::SET_COOKIE, cookie);
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// The password policy's lengths (`password_min_length`, `password_max_length`); it also refuses
    /// commonly used passwords.
    #[schema(value_type = String, format = Password)]
    password: SecretString,
    #[schema(schema_with = crate::http::openapi::display_name)]
    name: Option<String>,
}

/// Email and password, for every password login (`/v1/auth/login`, `/v1/sessions`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    #[schema(value_type = String, format = Password, max_length = 1024)]
    pub password: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    id: String,
    email: String,
    /// Whether the user proved they receive mail at `email`.
    email_verified: bool,
    name: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        Self {
            id: u.id.clone(),
            email: u.email.clone(),
            email_verified: u.email_verified_at.is_some(),
            name: u.name.clone(),
            created_at: Millis(u.created_at),
        }
    }
}

/// How the caller proved who they are.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethodView {
    Jwt,
    #[serde(rename = "oauth")]
    OAuth,
    ApiKey,
    Session,
    Signature,
}

impl From<AuthMethod> for AuthMethodView {
    fn from(m: AuthMethod) -> Self {
        match m {
            AuthMethod::Jwt => Self::Jwt,
            AuthMethod::OAuth => Self::OAuth,
            AuthMethod::ApiKey => Self::ApiKey,
            AuthMethod::Session => Self::Session,
            AuthMethod::Signature => Self::Signature,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuthView {
    method: AuthMethodView,
    scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MeView {
    id: String,
    email: String,
    /// Whether the user proved they receive mail at `email` (a link we sent, or an upstream provider
    /// that vouched for it).
    email_verified: bool,
    name: Option<String>,
    roles: Vec<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
    auth: AuthView,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, format = Password, max_length = 4096)]
    current_password: SecretString,
    /// Under the same policy as a new account's.
    #[schema(value_type = String, format = Password)]
    new_password: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportUserRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(schema_with = crate::http::openapi::display_name)]
    name: Option<String>,
    /// bcrypt (`$2b$…`) or argon2 PHC string.
    #[schema(value_type = String, pattern = r"^(\$2[aby]\$(0[4-9]|1[0-3])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{30}[.CGKOSWaeimquy26]|\$argon2(id|i|d)\$v=19\$m=[0-9]{1,7},t=[0-9]{1,3},p=[0-9]{1,3}\$[A-Za-z0-9+/]{11,64}\$[A-Za-z0-9+/]{16,128})$")]
    password_hash: SecretString,
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    users: Vec<UserView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(list))
        .routes(routes!(import))
        .routes(routes!(disable))
        .routes(routes!(enable))
}

/// Create an account.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = RegisterRequest,
    responses((status = 201, body = UserView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 429, body = Problem), (status = 503, body = Problem)))]
pub async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .users
        .register(&req.email, req.password, req.name.as_deref(), ip.0, &ctx)
        .await?;
    state.accounts.welcome(&user).await;
    Ok((StatusCode::CREATED, axum::Json(UserView::from(&user))))
}

/// The calling user and how they authenticated.
#[utoipa::path(get, path = "/v1/me", tag = "users",
    responses((status = 200, body = MeView), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn me(State(state): State<AppState>, p: Principal) -> ApiResult<axum::Json<MeView>> {
    let user_id = require_user(&p)?;
    let user = state
        .users
        .active(user_id.as_str())
        .await?
        .ok_or(Error::Unauthenticated)?;
    Ok(axum::Json(MeView {
        id: user.id.clone(),
        email: user.email.clone(),
        email_verified: user.email_verified_at.is_some(),
        name: user.name.clone(),
        roles: user
            .roles
            .split(' ')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: Millis(user.created_at),
        auth: AuthView {
            method: p.method.into(),
            scopes: p.scopes.iter().map(str::to_owned).collect(),
            session_id: p.session_id.map(String::from),
            key_id: p
                .key_id
                .map(String::from)
                .or(p.signature_key_id.map(String::from)),
            client_id: p.client_id,
        },
    }))
}

/// Change the password; ends every other session, every refresh token, and every access token issued
/// before.
#[utoipa::path(post, path = "/v1/me/password", tag = "users", request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = []), ("session" = [])))]
pub async fn change_password(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    Json(req): Json<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    let keep = p.session_id.clone();
    state
        .sessions
        .change_password(
            &p,
            req.current_password,
            req.new_password,
            ip.0,
            device_cookie(&headers),
            keep.as_ref(),
            &ctx,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disable a user (admin): every session, refresh token and access token of theirs ends at once, and
/// their API keys stop working until the user is enabled again.
#[utoipa::path(post, path = "/admin/v1/users/{id}/disable", tag = "admin",
    params(("id" = String, Path, description = "The user's id (usr_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn disable(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    set_disabled(&state, &admin, &ctx, &id, true).await
}

/// Enable a disabled user again (admin). Their old sessions and tokens stay ended.
#[utoipa::path(post, path = "/admin/v1/users/{id}/enable", tag = "admin",
    params(("id" = String, Path, description = "The user's id (usr_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn enable(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    set_disabled(&state, &admin, &ctx, &id, false).await
}

async fn set_disabled(
    state: &AppState,
    admin: &Principal,
    ctx: &crate::audit::AuditContext,
    id: &str,
    disabled: bool,
) -> ApiResult<StatusCode> {
    // An id that is no user's names no user, like an unknown one.
    let id = UserId::parse(id).map_err(|_| Error::NotFound("no such user".into()))?;
    state
        .sessions
        .set_disabled(admin, &id, disabled, ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Import a user with an existing bcrypt or argon2 hash (admin).
#[utoipa::path(post, path = "/admin/v1/users/import", tag = "admin", request_body = ImportUserRequest,
    responses((status = 201, body = UserView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn import(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Json(req): Json<ImportUserRequest>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .users
        .import(
            &admin,
            &req.email,
            req.name.as_deref(),
            &req.password_hash,
            &ctx,
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(UserView::from(&user))))
}

/// List users (admin), oldest first.
#[utoipa::path(get, path = "/admin/v1/users", operation_id = "list_users", tag = "admin", params(PageQuery<UserId>),
    responses((status = 200, body = UserList), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<PageQuery<UserId>>,
) -> ApiResult<axum::Json<UserList>> {
    let page = PageRequest::parse(q, state.config.max_page_size)?;
    let mut rows = state
        .users
        .list(page.cursor.as_ref().map(UserId::as_str), page.fetch())
        .await?;
    let next_cursor = page.cut(&mut rows, |u| u.id.clone());
    Ok(axum::Json(UserList {
        users: rows.iter().map(UserView::from).collect(),
        next_cursor,
    }))
}
