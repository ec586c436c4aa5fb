//! The JWKS (RFC 7517) and the signing keys' admin endpoints: list, rotate, revoke now.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_store::SigningKeyRow;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::state::AppState;
use crate::auth::Admin;
use crate::error::Error;
use crate::http::extract::AuditCtx;
use crate::http::{ApiResult, Problem};
use crate::invalidation::Invalidation;

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
    pub fn from_row(row: &SigningKeyRow, now: Millis) -> Self {
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

/// The outcome of an emergency revocation.
#[derive(Serialize, ToSchema)]
pub struct RevokedSigningKey {
    kid: String,
    /// The key that signs from now on, when the revoked one was signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced_by: Option<SigningKeyView>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(jwks))
        .routes(routes!(list))
        .routes(routes!(rotate))
        .routes(routes!(revoke))
}

/// The public keys access tokens are signed with (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "tokens",
    responses((status = 200, description = "JWK Set", content_type = "application/json", body = Object)))]
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

/// Every signing key and its state.
#[utoipa::path(get, path = "/admin/v1/signing-keys", operation_id = "list_signing_keys", tag = "admin",
    responses((status = 200, body = SigningKeyList), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
) -> ApiResult<axum::Json<SigningKeyList>> {
    let now = Millis::now();
    let rows = state.keys.all().await.map_err(Error::internal)?;
    Ok(axum::Json(SigningKeyList {
        keys: rows
            .iter()
            .map(|r| SigningKeyView::from_row(r, now))
            .collect(),
    }))
}

/// Create the next signing key: published now, signing after the publish lead time.
#[utoipa::path(post, path = "/admin/v1/signing-keys/rotate", operation_id = "rotate_signing_key", tag = "admin",
    responses((status = 201, body = SigningKeyView), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
) -> ApiResult<impl IntoResponse> {
    let now = Millis::now();
    let row = state
        .keys
        .create_key(now, state.config.signing_key_publish_lead_s)
        .await
        .map_err(Error::internal)?;
    state.bus.send(Invalidation::SigningKeys);
    state.audit.record(
        "signing_key.rotated",
        Some(&admin.subject),
        Some(&row.kid),
        &ctx,
        serde_json::json!({ "alg": row.alg }),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(SigningKeyView::from_row(&row, now)),
    ))
}

/// Revoke a signing key now (an emergency: it may be compromised). It leaves the JWKS and every token
/// it signed stops working at once, on this node and within a second on every other; when it was the
/// one signing, a new key takes over immediately. Users must log in again or refresh.
#[utoipa::path(post, path = "/admin/v1/signing-keys/{kid}/revoke", operation_id = "revoke_signing_key", tag = "admin",
    params(("kid" = String, Path, description = "The key's id")),
    responses((status = 200, body = RevokedSigningKey), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(kid): Path<String>,
) -> ApiResult<axum::Json<RevokedSigningKey>> {
    let replacement = state.tokens.revoke_signing_key(&admin, &kid, &ctx).await?;
    state.bus.send(Invalidation::SigningKeys);
    let now = Millis::now();
    Ok(axum::Json(RevokedSigningKey {
        kid,
        replaced_by: replacement.map(|r| SigningKeyView::from_row(&r, now)),
    }))
}
