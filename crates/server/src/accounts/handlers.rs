//! `/v1/me/email/verify`, `/v1/email/verify`, `/v1/password-reset` and its confirmation.

use axum::extract::State;
use axum::http::StatusCode;
use portcullis_core::principal::Principal;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::state::AppState;
use crate::http::extract::{AuditCtx, ClientIp, JsonOrForm};
use crate::http::{ApiResult, Problem};
use crate::users::service::require_user;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    /// The `token` of the emailed link (`/verify?token=…`).
    #[schema(value_type = String, max_length = 128)]
    token: SecretString,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmResetRequest {
    /// The `token` of the emailed link (`/reset?token=…`).
    #[schema(value_type = String, max_length = 128)]
    token: SecretString,
    /// Under the same policy as a new account's.
    #[schema(value_type = String, format = Password)]
    new_password: SecretString,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_verification))
        .routes(routes!(verify))
        .routes(routes!(resend_verification))
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
}

/// Send the caller another verification link (at most one a minute and five an hour).
#[utoipa::path(post, path = "/v1/me/email/verify", tag = "users",
    responses((status = 202), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn send_verification(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
) -> ApiResult<StatusCode> {
    let user_id = require_user(&p)?;
    state
        .accounts
        .resend_verification(user_id.as_str(), ip.0, &ctx)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Verify the email address with the token of an emailed link (single use, 24 hours).
#[utoipa::path(post, path = "/v1/email/verify", tag = "users", request_body = VerifyEmailRequest,
    responses((status = 204), (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn verify(
    State(state): State<AppState>,
    AuditCtx(ctx): AuditCtx,
    JsonOrForm(req): JsonOrForm<VerifyEmailRequest>,
) -> ApiResult<StatusCode> {
    state
        .accounts
        .verify(secrecy::ExposeSecret::expose_secret(&req.token), &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a new verification link to an address, if an unverified account has it: for a login that
/// `require_verified_email` refused. The answer is the same whether or not it does.
#[utoipa::path(post, path = "/v1/email/verify/resend", tag = "users", request_body = EmailRequest,
    responses((status = 202), (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 429, body = Problem)))]
pub async fn resend_verification(
    State(state): State<AppState>,
    ip: ClientIp,
    JsonOrForm(req): JsonOrForm<EmailRequest>,
) -> ApiResult<StatusCode> {
    state
        .accounts
        .resend_verification_to(&req.email, ip.0)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Ask for a password-reset link. The answer is the same for every address; the link (valid 30
/// minutes, single use) is mailed only if an account has it.
#[utoipa::path(post, path = "/v1/password-reset", tag = "users", request_body = EmailRequest,
    responses((status = 202), (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 429, body = Problem)))]
pub async fn request_reset(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    JsonOrForm(req): JsonOrForm<EmailRequest>,
) -> ApiResult<StatusCode> {
    state.accounts.request_reset(&req.email, ip.0, &ctx).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Set a new password with the token of a reset link. Every session, refresh token and access token
/// of the user ends.
#[utoipa::path(post, path = "/v1/password-reset/confirm", tag = "users", request_body = ConfirmResetRequest,
    responses((status = 204), (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 503, body = Problem)))]
pub async fn confirm_reset(
    State(state): State<AppState>,
    AuditCtx(ctx): AuditCtx,
    JsonOrForm(req): JsonOrForm<ConfirmResetRequest>,
) -> ApiResult<StatusCode> {
    state
        .accounts
        .confirm_reset(
            secrecy::ExposeSecret::expose_secret(&req.token),
            req.new_password,
            &ctx,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
