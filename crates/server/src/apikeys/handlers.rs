//! `/v1/keys` and `/admin/v1/keys`: the request and response shapes, and the handlers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use portcullis_core::apikeys::VerifyCode;
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::ids::{KeyId, UserId};
use portcullis_core::principal::Principal;
use portcullis_core::scopes::Scopes;
use portcullis_store::ApiKeyRow;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::{KeyChanges, KeyDraft, KeyPage, key_id, parse_owner};
use super::verify::KeyCheck;
use crate::app::state::AppState;
use crate::auth::Admin;
use crate::http::extract::{AuditCtx, Json, OptionalJson, Query};
use crate::http::pagination::{PageQuery, PageRequest};
use crate::http::{ApiResult, Problem};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatelimitSettings {
    /// Requests allowed per window (bursts up to this many; at most one per millisecond of it).
    #[schema(minimum = 1, maximum = 1_000_000)]
    limit: i64,
    /// The window, in milliseconds (1 000 to 86 400 000).
    #[schema(minimum = 1000, maximum = 86_400_000)]
    duration_ms: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[schema(schema_with = crate::http::openapi::display_name)]
    name: String,
    #[schema(max_items = 64, inline = false)]
    scopes: Option<Vec<ScopeName>>,
    /// RFC 3339, in the future.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    ratelimit: Option<RatelimitSettings>,
    /// Uses allowed; each successful verification (or request made with the key) spends one.
    #[schema(minimum = 0)]
    remaining: Option<i64>,
    /// A JSON object returned by verify as the operator's word: administrators only.
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
    /// A JSON object of the owner's own notes, returned by verify apart from `meta`.
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Value>,
    /// `[a-z0-9_]{2,20}`, not starting or ending with `_`; the server's default (`pk_live`) when
    /// left out.
    #[schema(pattern = "^[a-z0-9][a-z0-9_]{0,18}[a-z0-9]$")]
    prefix: Option<String>,
}

/// A scope: 1 to 64 of `A-Z a-z 0-9 _ : . - /`.
#[derive(Deserialize, ToSchema)]
#[schema(value_type = String, pattern = "^[A-Za-z0-9_:./-]{1,64}$")]
#[serde(transparent)]
pub struct ScopeName(String);

/// `null` clears a field; leaving a field out leaves it alone.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct PatchKeyRequest {
    #[schema(schema_with = crate::http::openapi::display_name)]
    name: Option<String>,
    #[schema(max_items = 64)]
    scopes: Option<Vec<ScopeName>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    meta: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<RatelimitSettings>)]
    ratelimit: Option<Option<RatelimitSettings>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    remaining: Option<Option<i64>>,
}

/// Tells "absent" (`None`, by `#[serde(default)]`) from "null" (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RollRequest {
    /// How long the old key keeps working (seconds, default 0: it stops at once; at most the
    /// server's `api_key_max_grace_s`).
    #[schema(minimum = 0, maximum = 31_536_000)]
    grace_period_s: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[schema(max_length = 4096)]
    key: String,
    /// Scopes the key must hold, all of them.
    required_scopes: Option<Vec<ScopeName>>,
    /// Accept only keys of this owner: a user id (`usr_…`), or `none` for keys that belong to no
    /// user (the ones administrators issue). A key of anyone else answers NOT_FOUND.
    #[schema(pattern = "^(none|usr_[0-9a-f]{32})$")]
    owner: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminListQuery {
    /// Only this user's keys; `none` for keys that belong to nobody.
    #[param(pattern = "^(none|usr_[0-9a-f]{32})$")]
    owner: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^key_[0-9a-f]{32}$")]
    cursor: Option<String>,
    /// At most this many keys (1 to the server's `max_page_size`, default 50).
    #[param(minimum = 1)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    id: String,
    /// The first 12 characters of the key, for display.
    start: String,
    name: String,
    scopes: Vec<String>,
    /// Written by administrators.
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
    /// Written by the key's owner.
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Value>,
    /// `null` for keys that belong to no user.
    owner_id: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: Millis,
    #[serde(with = "rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_used_at: Option<Millis>,
    #[serde(with = "rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Millis>,
    #[serde(with = "rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    revoked_at: Option<Millis>,
    remaining: Option<i64>,
    ratelimit: Option<RatelimitSettings>,
    /// Set once the key was rolled: the id of its successor.
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_to: Option<String>,
    /// When a rolled key stops working.
    #[serde(
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    grace_until: Option<Millis>,
}

impl From<&ApiKeyRow> for KeyView {
    fn from(r: &ApiKeyRow) -> Self {
        Self {
            id: r.id.to_string(),
            start: r.start.clone(),
            name: r.name.clone(),
            scopes: scope_list(&r.scopes),
            meta: parse_meta(r.meta.as_deref()),
            owner_meta: parse_meta(r.owner_meta.as_deref()),
            owner_id: r.owner_id.as_ref().map(UserId::to_string),
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            remaining: r.remaining,
            ratelimit: ratelimit_of(r),
            rolled_to: r.rolled_to.as_ref().map(KeyId::to_string),
            grace_until: r.grace_until,
        }
    }
}

/// A new key: the secret, shown only in this response, and its settings.
#[derive(Serialize, ToSchema)]
pub struct CreatedKeyView {
    /// The key itself. Store it now: it is never shown again.
    key: String,
    #[serde(flatten)]
    view: KeyView,
}

#[derive(Serialize, ToSchema)]
pub struct RolledKeyView {
    key: String,
    #[serde(flatten)]
    view: KeyView,
    /// The key this one replaces.
    rolled_from: String,
    /// When the old key stops working.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    old_key_expires_at: Millis,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RatelimitState {
    limit: i64,
    /// Requests still allowed now.
    remaining: i64,
    /// Milliseconds until the full limit is available again.
    reset_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    valid: bool,
    /// One of VALID, MALFORMED, NOT_FOUND, REVOKED, EXPIRED, INSUFFICIENT_SCOPE, USAGE_EXCEEDED,
    /// RATE_LIMITED — the first check that failed, in that order.
    #[schema(value_type = String)]
    code: VerifyCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    /// Always present: the owner's user id, or `null` for a key that belongs to no user (or when no
    /// key was found). A gateway that accepts only its operator's keys checks this, or passes
    /// `owner`.
    owner_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
    /// Written by administrators only: the operator's word about the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
    /// Written by the key's owner: never to be taken as the operator's.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Value>,
    #[serde(
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<RatelimitState>,
}

pub(crate) fn scope_list(scopes: &Scopes) -> Vec<String> {
    scopes.iter().map(str::to_owned).collect()
}

fn parse_meta(raw: Option<&str>) -> Option<Value> {
    raw.and_then(|m| serde_json::from_str(m).ok())
}

pub(crate) fn ratelimit_of(r: &ApiKeyRow) -> Option<RatelimitSettings> {
    match (r.ratelimit_limit, r.ratelimit_duration_ms) {
        (Some(limit), Some(duration_ms)) => Some(RatelimitSettings { limit, duration_ms }),
        _ => None,
    }
}

fn names(scopes: Option<Vec<ScopeName>>) -> Option<Vec<String>> {
    scopes.map(|s| s.into_iter().map(|s| s.0).collect())
}

impl From<CreateKeyRequest> for KeyDraft {
    fn from(r: CreateKeyRequest) -> Self {
        Self {
            name: r.name,
            scopes: names(r.scopes).unwrap_or_default(),
            expires_at: r.expires_at,
            ratelimit: r.ratelimit.map(|r| (r.limit, r.duration_ms)),
            remaining: r.remaining,
            meta: r.meta,
            owner_meta: r.owner_meta,
            prefix: r.prefix,
        }
    }
}

impl From<PatchKeyRequest> for KeyChanges {
    fn from(r: PatchKeyRequest) -> Self {
        Self {
            name: r.name,
            scopes: names(r.scopes),
            meta: r.meta,
            owner_meta: r.owner_meta,
            expires_at: r.expires_at,
            ratelimit: r.ratelimit.map(|r| r.map(|r| (r.limit, r.duration_ms))),
            remaining: r.remaining,
        }
    }
}

impl KeyList {
    fn of(page: KeyPage) -> Self {
        Self {
            keys: page.keys.iter().map(KeyView::from).collect(),
            next_cursor: page.next_cursor,
        }
    }
}

impl From<KeyCheck> for VerifyResponse {
    fn from(check: KeyCheck) -> Self {
        let code = check.code;
        let mut res = VerifyResponse {
            valid: code == VerifyCode::Valid,
            code,
            key_id: None,
            owner_id: None,
            name: None,
            scopes: None,
            meta: None,
            owner_meta: None,
            expires_at: None,
            remaining: None,
            ratelimit: None,
        };
        if let Some(row) = &check.row {
            res.key_id = Some(row.id.to_string());
            res.owner_id = row.owner_id.as_ref().map(UserId::to_string);
            res.name = Some(row.name.clone());
            res.scopes = Some(scope_list(&row.scopes));
            res.meta = parse_meta(row.meta.as_deref());
            res.owner_meta = parse_meta(row.owner_meta.as_deref());
            res.expires_at = row.expires_at;
            res.remaining = check.remaining;
            res.ratelimit = check.ratelimit.map(|(policy, d)| RatelimitState {
                limit: i64::from(policy.limit),
                remaining: i64::from(d.remaining),
                reset_ms: i64::try_from(d.reset_ms).unwrap_or(i64::MAX),
            });
        }
        res
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(verify))
        .routes(routes!(get, patch, revoke))
        .routes(routes!(roll))
        .routes(routes!(admin_list))
        .routes(routes!(admin_get, admin_revoke))
}

/// Create a key. The key is in this response only.
#[utoipa::path(post, path = "/v1/keys", operation_id = "create_key", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKeyView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn create(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Json(req): Json<CreateKeyRequest>,
) -> ApiResult<impl IntoResponse> {
    let (key, row) = state.apikeys.create(&p, req.into(), &ctx).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKeyView {
            key: key.expose().to_owned(),
            view: KeyView::from(&row),
        }),
    ))
}

/// The caller's keys, oldest first.
#[utoipa::path(get, path = "/v1/keys", operation_id = "list_keys", tag = "keys", params(PageQuery<KeyId>),
    responses((status = 200, body = KeyList), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn list(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<PageQuery<KeyId>>,
) -> ApiResult<axum::Json<KeyList>> {
    let page = PageRequest::parse(q, state.config.max_page_size)?;
    let keys = state
        .apikeys
        .list(&p, page.cursor.as_ref(), page.limit)
        .await?;
    Ok(axum::Json(KeyList::of(keys)))
}

/// One of the caller's keys.
#[utoipa::path(get, path = "/v1/keys/{id}", operation_id = "get_key", tag = "keys",
    params(("id" = String, Path, description = "A key id (key_…)")),
    responses((status = 200, body = KeyView), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn get(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<KeyView>> {
    Ok(axum::Json(KeyView::from(
        &state.apikeys.get(&p, &key_id(&id)?).await?,
    )))
}

/// Change a key's name, scopes, meta, expiry, rate limit or remaining uses.
#[utoipa::path(patch, path = "/v1/keys/{id}", operation_id = "patch_key", tag = "keys", request_body = PatchKeyRequest,
    params(("id" = String, Path, description = "A key id (key_…)")),
    responses((status = 200, body = KeyView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    Json(req): Json<PatchKeyRequest>,
) -> ApiResult<axum::Json<KeyView>> {
    let row = state
        .apikeys
        .patch(&p, &key_id(&id)?, req.into(), &ctx)
        .await?;
    Ok(axum::Json(KeyView::from(&row)))
}

/// Revoke a key (and any older key still in the grace period of a roll into it).
#[utoipa::path(delete, path = "/v1/keys/{id}", operation_id = "revoke_key", tag = "keys",
    params(("id" = String, Path, description = "A key id (key_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.apikeys.revoke(&p, &key_id(&id)?, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a key with a new one with the same settings; the old one works until the grace period ends.
#[utoipa::path(post, path = "/v1/keys/{id}/roll", operation_id = "roll_key", tag = "keys", request_body(content = Option<RollRequest>, description = "optional"),
    params(("id" = String, Path, description = "A key id (key_…)")),
    responses((status = 201, body = RolledKeyView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn roll(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<RollRequest>,
) -> ApiResult<impl IntoResponse> {
    let (key, row, grace_until) = state
        .apikeys
        .roll(&p, &key_id(&id)?, req.grace_period_s, &ctx)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(RolledKeyView {
            key: key.expose().to_owned(),
            view: KeyView::from(&row),
            rolled_from: id,
            old_key_expires_at: grace_until,
        }),
    ))
}

/// Verify a key (for services holding scope `keys:verify`). Always 200: `valid` and `code` say how it
/// went. Checks run in this order: format → exists → revoked → expired → scopes → remaining → rate
/// limit; a valid key with `remaining` set spends one use.
#[utoipa::path(post, path = "/v1/keys/verify", operation_id = "verify_key", tag = "keys", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<VerifyRequest>,
) -> ApiResult<axum::Json<VerifyResponse>> {
    let required = names(req.required_scopes).unwrap_or_default();
    let check = state
        .apikeys
        .verify(&p, &req.key, &required, req.owner.as_deref())
        .await?;
    Ok(axum::Json(check.into()))
}

/// Every key (administrators).
#[utoipa::path(get, path = "/admin/v1/keys", operation_id = "admin_list_keys", tag = "admin", params(AdminListQuery),
    responses((status = 200, body = KeyList), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<AdminListQuery>,
) -> ApiResult<axum::Json<KeyList>> {
    let owner = parse_owner(q.owner.as_deref(), "invalid_id")?;
    let page = PageRequest::parse(
        PageQuery::<KeyId>::new(q.limit, q.cursor),
        state.config.max_page_size,
    )?;
    let keys = state
        .apikeys
        .list_all(
            owner.as_ref().map(Option::as_ref),
            page.cursor.as_ref(),
            page.limit,
        )
        .await?;
    Ok(axum::Json(KeyList::of(keys)))
}

/// Any key (administrators).
#[utoipa::path(get, path = "/admin/v1/keys/{id}", operation_id = "admin_get_key", tag = "admin",
    params(("id" = String, Path, description = "A key id (key_…)")),
    responses((status = 200, body = KeyView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_get(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<KeyView>> {
    Ok(axum::Json(KeyView::from(
        &state.apikeys.get_any(&key_id(&id)?).await?,
    )))
}

/// Revoke any key (administrators).
#[utoipa::path(delete, path = "/admin/v1/keys/{id}", operation_id = "admin_revoke_key", tag = "admin",
    params(("id" = String, Path, description = "A key id (key_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_revoke(
    State(state): State<AppState>,
    Admin(p): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.apikeys.revoke_any(&p, &key_id(&id)?, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}
