//! `/v1/me/identities`: the upstream identities linked to the caller.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::principal::Principal;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::state::AppState;
use crate::http::extract::AuditCtx;
use crate::http::{ApiResult, Problem};
use crate::users::service::{require_own_login, require_user};

#[derive(Serialize, ToSchema)]
pub struct IdentityView {
    /// `idn_…`
    id: String,
    /// The `[[upstream]]` id.
    provider: String,
    /// Its button text, when the provider is still configured.
    provider_name: Option<String>,
    /// The upstream's email for the person, as it said at linking.
    email: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    last_login_at: Millis,
}

#[derive(Serialize, ToSchema)]
pub struct IdentityList {
    identities: Vec<IdentityView>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(unlink))
}

/// The upstream identities ("Sign in with …") linked to the caller.
#[utoipa::path(get, path = "/v1/me/identities", tag = "users",
    responses((status = 200, body = IdentityList), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn list(
    State(state): State<AppState>,
    p: Principal,
) -> ApiResult<axum::Json<IdentityList>> {
    let user_id = require_user(&p)?;
    let rows = state.upstreams.identities(user_id.as_str()).await?;
    Ok(axum::Json(IdentityList {
        identities: rows
            .into_iter()
            .map(|r| IdentityView {
                provider_name: state.upstreams.name_of(&r.provider),
                id: r.id,
                provider: r.provider,
                email: r.email,
                created_at: Millis(r.created_at),
                last_login_at: Millis(r.last_login_at),
            })
            .collect(),
    }))
}

/// Unlink an identity. The account's last way to sign in (no password, no other identity) is never
/// unlinked: 409 `last_sign_in_method`.
#[utoipa::path(delete, path = "/v1/me/identities/{id}", tag = "users",
    params(("id" = String, Path, description = "The identity's id (idn_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []), ("session" = [])))]
pub async fn unlink(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let user_id = require_user(&p)?;
    require_own_login(&p, "unlink a sign-in provider")?;
    state.upstreams.unlink(user_id.as_str(), &id, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}
