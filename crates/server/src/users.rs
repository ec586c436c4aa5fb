//! Users and passwords (API.md "Users and passwords"): registration, `GET /v1/me`, password change,
//! and the admin import of bcrypt/argon2 hashes that are upgraded on first login.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::email::Email;
use portcullis_core::ids::UserId;
use portcullis_core::passwords::{StoredHash, Verification};
use portcullis_store::{NewUser, Store, StoreError, UserRow, UserStore};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::auth::{Admin, AuthMethod, Principal};
use crate::config::Registration;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::extract::{ClientIp, Json, RequestId};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    email: String,
    #[schema(value_type = String, format = Password)]
    password: SecretString,
    name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    id: String,
    email: String,
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
            name: u.name.clone(),
            created_at: Millis(u.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuthView {
    method: AuthMethod,
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
    #[schema(value_type = String, format = Password)]
    current_password: SecretString,
    #[schema(value_type = String, format = Password)]
    new_password: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportUserRequest {
    email: String,
    name: Option<String>,
    /// bcrypt (`$2b$…`) or argon2 PHC string.
    #[schema(value_type = String)]
    password_hash: SecretString,
}

pub(crate) fn parse_email(raw: &str) -> ApiResult<Email> {
    Email::parse(raw).map_err(|e| {
        ApiError::Validation(vec![FieldError::new(
            "email",
            "invalid_email",
            e.to_string(),
        )])
    })
}

fn parse_name(name: Option<String>) -> ApiResult<Option<String>> {
    let Some(name) = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.chars().count() > 200
        || name
            .chars()
            .any(portcullis_core::text::is_forbidden_in_display)
    {
        return Err(ApiError::Validation(vec![FieldError::new(
            "name",
            "invalid_name",
            "name must be at most 200 characters without control, invisible or text-direction characters",
        )]));
    }
    Ok(Some(name))
}

impl AppState {
    /// Creates an account. Each client address may register `registration_ip_limit` accounts per
    /// `registration_ip_period_s`, counted before any hashing (invalid attempts count too).
    ///
    /// An email already in use answers 409 `email_taken`: a documented trade-off. It tells whoever
    /// asks that an account exists, which answering alike would hide only with a verification email
    /// that the user must click before the account is usable; until email verification lands, the
    /// per-address registration limit bounds how fast anyone can ask.
    pub async fn register(
        &self,
        req: RegisterRequest,
        ip: std::net::IpAddr,
        ctx: &AuditContext,
    ) -> ApiResult<UserRow> {
        if self.config.registration == Registration::Closed {
            return Err(ApiError::RegistrationClosed);
        }
        if let Err(e) = self.throttle.register(ip).await {
            self.audit_counts.record(
                "registration.throttled",
                None,
                serde_json::json!({ "ip": crate::listener::client_bucket(ip).to_string() }),
                "emails",
                None,
            );
            return Err(e);
        }
        let email = parse_email(&req.email)?;
        let name = parse_name(req.name)?;
        self.policy
            .check(req.password.expose_secret(), &email)
            .map_err(ApiError::WeakPassword)?;
        let password = req.password;
        let hash = self
            .hashing
            .run(move |h| h.hash(&password))
            .await
            .map_err(|_| ApiError::Overloaded)?
            .map_err(ApiError::internal)?;
        let user = self
            .create_user(&email, name, Some(hash.as_str().to_owned()), "")
            .await?;
        self.audit.record(
            "user.registered",
            Some(&user.id),
            Some(&user.id),
            ctx,
            serde_json::json!({}),
        );
        Ok(user)
    }

    pub(crate) async fn create_user(
        &self,
        email: &Email,
        name: Option<String>,
        hash: Option<String>,
        roles: &str,
    ) -> ApiResult<UserRow> {
        insert_user(&self.store, email, name, hash, roles).await
    }

    /// Changes the password after checking the current one (throttled like a login, the attempt
    /// reserved before hashing), then ends every other way in: all refresh families, every access
    /// token issued before now, and every session but `keep_session`.
    pub async fn change_password(
        &self,
        p: &Principal,
        req: ChangePasswordRequest,
        ip: std::net::IpAddr,
        headers: &axum::http::HeaderMap,
        keep_session: Option<&str>,
        ctx: &AuditContext,
    ) -> ApiResult<()> {
        let user_id = p.require_user()?;
        if !p.first_party {
            return Err(ApiError::Forbidden(
                "insufficient_scope",
                "only the user's own login may change the password".into(),
            ));
        }
        let user = self
            .user(user_id.as_str())
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let email = Email::parse(&user.email).map_err(ApiError::internal)?;
        self.policy
            .check(req.new_password.expose_secret(), &email)
            .map_err(ApiError::WeakPassword)?;
        let device = self.known_device(headers, &user.email_key);
        let attempt = self
            .throttle
            .begin(ip, &user.email_key, device.as_ref())
            .await?;
        let stored = user.password_hash.clone().map(StoredHash::from_stored);
        let (current, new) = (req.current_password, req.new_password);
        let verdict = self
            .hashing
            .run(move |h| match stored {
                Some(stored) => match h.verify(&current, &stored) {
                    Verification::Match { .. } => (true, h.hash(&new).ok()),
                    Verification::Mismatch => (false, None),
                },
                None => {
                    h.verify_dummy(&current);
                    (false, None)
                }
            })
            .await;
        let (verdict, new_hash) = match verdict {
            Ok(v) => v,
            Err(_) => {
                self.throttle.abandon(attempt).await;
                return Err(ApiError::Overloaded);
            }
        };
        if !verdict {
            self.throttle.failed(attempt);
            self.audit.record(
                "password.change_failed",
                Some(&user.id),
                Some(&user.id),
                ctx,
                serde_json::json!({}),
            );
            return Err(ApiError::Validation(vec![FieldError::new(
                "current_password",
                "incorrect",
                "the current password is wrong",
            )]));
        }
        self.throttle.succeeded(attempt).await;
        let new_hash =
            new_hash.ok_or_else(|| ApiError::internal("hashing the new password failed"))?;
        self.store
            .set_password_hash(&user.id, new_hash.as_str(), Millis::now(), None)
            .await?;
        self.invalidate(crate::invalidation::Invalidation::User(user.id.clone()));
        self.end_every_login(&user.id, "password_change", keep_session)
            .await?;
        self.audit.record(
            "password.changed",
            Some(&user.id),
            Some(&user.id),
            ctx,
            serde_json::json!({}),
        );
        Ok(())
    }

    pub async fn import_user(
        &self,
        admin: &Principal,
        req: ImportUserRequest,
        ctx: &AuditContext,
    ) -> ApiResult<UserRow> {
        let email = parse_email(&req.email)?;
        let name = parse_name(req.name)?;
        let hash = StoredHash::parse_import(req.password_hash.expose_secret(), &self.hash_rules)
            .map_err(|e| {
                ApiError::Validation(vec![FieldError::new(
                    "password_hash",
                    "invalid_hash",
                    e.to_string(),
                )])
            })?;
        let user = self
            .create_user(&email, name, Some(hash.as_str().to_owned()), "")
            .await?;
        self.audit.record(
            "user.imported",
            Some(&admin.subject),
            Some(&user.id),
            ctx,
            serde_json::json!({}),
        );
        Ok(user)
    }
}

/// Stores a new user (the API and the CLI both come here); `EmailTaken` when the email is in use.
pub async fn insert_user(
    store: &Store,
    email: &Email,
    name: Option<String>,
    hash: Option<String>,
    roles: &str,
) -> ApiResult<UserRow> {
    let new = NewUser {
        id: UserId::generate(),
        email: email.as_str().to_owned(),
        email_key: email.key(),
        name,
        password_hash: hash,
        roles: roles.to_owned(),
        created_at: Millis::now(),
    };
    match store.create_user(&new).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Err(ApiError::EmailTaken),
        Err(e) => return Err(e.into()),
    }
    store
        .user_by_id(new.id.as_str())
        .await?
        .ok_or_else(|| ApiError::internal("user vanished after insert"))
}

pub(crate) fn audit_context(ip: &ClientIp, request_id: &RequestId) -> AuditContext {
    AuditContext {
        ip: Some(ip.0.to_string()),
        request_id: Some(request_id.0.clone()),
    }
}

/// Create an account.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = RegisterRequest,
    responses((status = 201, body = UserView), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem), (status = 429, body = Problem)))]
pub async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<impl IntoResponse> {
    let user = state.register(req, ip.0, &audit_context(&ip, &rid)).await?;
    Ok((StatusCode::CREATED, axum::Json(UserView::from(&user))))
}

/// The calling user and how they authenticated.
#[utoipa::path(get, path = "/v1/me", tag = "users", responses((status = 200, body = MeView), (status = 401, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn me(State(state): State<AppState>, p: Principal) -> ApiResult<axum::Json<MeView>> {
    let user_id = p.require_user()?;
    let user = state
        .user(user_id.as_str())
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if user.disabled_at.is_some() {
        return Err(ApiError::Unauthenticated);
    }
    Ok(axum::Json(MeView {
        id: user.id.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        roles: user
            .roles
            .split(' ')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: Millis(user.created_at),
        auth: AuthView {
            method: p.method,
            scopes: p.scopes.iter().map(str::to_owned).collect(),
            session_id: p.session_id,
            key_id: p.key_id,
            client_id: p.client_id,
        },
    }))
}

/// Change the password; revokes every refresh token and every access token issued before.
#[utoipa::path(post, path = "/v1/me/password", tag = "users", request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = [])))]
pub async fn change_password(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
    headers: axum::http::HeaderMap,
    Json(req): Json<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    let keep = p.session_id.clone();
    state
        .change_password(
            &p,
            req,
            ip.0,
            &headers,
            keep.as_deref(),
            &audit_context(&ip, &rid),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Disable a user (admin): every session, refresh token and access token of theirs ends at once, and
/// their API keys stop working until the user is enabled again.
#[utoipa::path(post, path = "/admin/v1/users/{id}/disable", tag = "admin",
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn disable(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ip: ClientIp,
    rid: RequestId,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<StatusCode> {
    let now = Millis::now();
    // Disabled first (no new login, refresh or session from here on), then everything it held ends.
    if !state.store.set_user_disabled(&id, Some(now), now).await? {
        return Err(ApiError::NotFound("no such user".into()));
    }
    state.invalidate(crate::invalidation::Invalidation::User(id.clone()));
    state.end_every_login(&id, "disabled", None).await?;
    state.audit.record(
        "user.disabled",
        Some(&admin.subject),
        Some(&id),
        &audit_context(&ip, &rid),
        serde_json::json!({}),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Enable a disabled user again (admin). Their old sessions and tokens stay ended.
#[utoipa::path(post, path = "/admin/v1/users/{id}/enable", tag = "admin",
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn enable(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ip: ClientIp,
    rid: RequestId,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<StatusCode> {
    if !state
        .store
        .set_user_disabled(&id, None, Millis::now())
        .await?
    {
        return Err(ApiError::NotFound("no such user".into()));
    }
    state.invalidate(crate::invalidation::Invalidation::User(id.clone()));
    state.audit.record(
        "user.enabled",
        Some(&admin.subject),
        Some(&id),
        &audit_context(&ip, &rid),
        serde_json::json!({}),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Import a user with an existing bcrypt or argon2 hash (admin).
#[utoipa::path(post, path = "/admin/v1/users/import", tag = "admin", request_body = ImportUserRequest,
    responses((status = 201, body = UserView), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn import(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ip: ClientIp,
    rid: RequestId,
    Json(req): Json<ImportUserRequest>,
) -> ApiResult<impl IntoResponse> {
    let user = state
        .import_user(&admin, req, &audit_context(&ip, &rid))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(UserView::from(&user))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Continue after this id (the `next_cursor` of the previous page).
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    users: Vec<UserView>,
    next_cursor: Option<String>,
}

/// List users (admin), oldest first.
#[utoipa::path(get, path = "/admin/v1/users", tag = "admin", params(Page),
    responses((status = 200, body = UserList), (status = 403, body = Problem)), security(("bearer" = []), ("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<UserList>> {
    let limit = page
        .limit
        .unwrap_or(50)
        .clamp(1, state.config.max_page_size);
    let rows = state
        .store
        .list_users(page.cursor.as_deref(), limit)
        .await?;
    let next_cursor = if rows.len() == limit as usize {
        rows.last().map(|u| u.id.clone())
    } else {
        None
    };
    Ok(axum::Json(UserList {
        users: rows.iter().map(UserView::from).collect(),
        next_cursor,
    }))
}
