//! Errors as clients see them: RFC 9457 `application/problem+json` with a stable snake_case `code`.
//! Each variant's doc says its status and code. 5xx bodies never carry internals; the cause is logged
//! with the request id, which the response also carries.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::passwords::WeakReason;
use portcullis_core::ratelimit::RateDecision;
use serde::Serialize;

/// One problem with one field of the input.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// The limit that refused a request, for the IETF RateLimit headers.
#[derive(Debug, Clone)]
pub struct Throttled {
    pub policy: &'static str,
    pub limit: u32,
    pub window_s: u64,
    pub decision: RateDecision,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_body`: the body is not valid JSON / form data.
    #[error("{0}")]
    MalformedBody(String),
    /// 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 408 `request_timeout`: the body did not arrive within `request_body_timeout_s`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 401 `multiple_credentials`: more than one credential was presented.
    #[error(
        "send exactly one credential: this request carries more than one (an API key, an Authorization header, a session cookie)"
    )]
    MultipleCredentials,
    /// 413 `payload_too_large`.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 400 `validation_failed`, with one entry per bad field.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// 400 `weak_password`, with every reason.
    #[error("the password does not meet the password policy")]
    WeakPassword(Vec<WeakReason>),
    /// 400 with the given code (e.g. `credential_in_query`).
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 409 with the given code (e.g. `key_revoked`).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// 409 `email_taken`.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// 403 `registration_closed`.
    #[error("registration is closed on this server")]
    RegistrationClosed,
    /// 401 `invalid_credentials`: unknown account and wrong password alike.
    #[error("the email or password is wrong")]
    InvalidCredentials,
    /// 401 `unauthenticated`: no credential at all.
    #[error("this endpoint needs a credential: a Bearer access token or an API key")]
    Unauthenticated,
    /// 401 `invalid_token`, with the reason.
    #[error("the access token is not valid: {0}")]
    InvalidToken(&'static str),
    /// 401 `invalid_api_key`.
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// 401 `invalid_session`, with the reason (`malformed`, `unknown`, `revoked`, `expired`, `idle`,
    /// `duplicate_cookie`, `missing`).
    #[error("the session is not valid: {0}")]
    InvalidSession(&'static str),
    /// 403 `csrf_failed`.
    #[error("{0}")]
    CsrfFailed(&'static str),
    /// 401 `invalid_refresh_token`.
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    /// 401 `refresh_token_reused`: a spent refresh token was presented; its family is now revoked.
    #[error("this refresh token was already used; every token of its login has been revoked")]
    RefreshTokenReused,
    /// 403 with the given code (`forbidden`, `insufficient_scope`, `not_a_user`).
    #[error("{1}")]
    Forbidden(&'static str, String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`.
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// 429 `rate_limited`, with `Retry-After` and the RateLimit headers.
    #[error("too many attempts; try again later")]
    RateLimited(Throttled),
    /// 503 `overloaded`: the password-hashing queue is full.
    #[error("the server is busy; try again shortly")]
    Overloaded,
    /// 500 `internal`. The cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedBody(_)
            | Self::Validation(_)
            | Self::WeakPassword(_)
            | Self::BadRequest(..) => StatusCode::BAD_REQUEST,
            Self::Conflict(..) => StatusCode::CONFLICT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::EmailTaken => StatusCode::CONFLICT,
            Self::RegistrationClosed | Self::Forbidden(..) | Self::CsrfFailed(_) => {
                StatusCode::FORBIDDEN
            }
            Self::InvalidCredentials
            | Self::Unauthenticated
            | Self::InvalidToken(_)
            | Self::InvalidApiKey
            | Self::InvalidSession(_)
            | Self::InvalidRefreshToken
            | Self::MultipleCredentials
            | Self::RefreshTokenReused => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedBody(_) => "malformed_body",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::MultipleCredentials => "multiple_credentials",
            Self::Validation(_) => "validation_failed",
            Self::WeakPassword(_) => "weak_password",
            Self::BadRequest(code, _) | Self::Conflict(code, _) => code,
            Self::EmailTaken => "email_taken",
            Self::RegistrationClosed => "registration_closed",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken(_) => "invalid_token",
            Self::InvalidApiKey => "invalid_api_key",
            Self::InvalidSession(_) => "invalid_session",
            Self::CsrfFailed(_) => "csrf_failed",
            Self::InvalidRefreshToken => "invalid_refresh_token",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::Forbidden(code, _) => code,
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RateLimited(_) => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Internal(_) => "internal",
        }
    }
}

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Why a credential was refused (`expired`, `bad_signature`, `unknown_kid`…), for `invalid_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Carried in response extensions so the logging middleware can record a 500's cause next to the
/// request id without the body ever containing it.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let errors = match &self {
            Self::Validation(errors) => errors.clone(),
            Self::WeakPassword(reasons) => reasons
                .iter()
                .map(|r| FieldError::new("password", r.code(), r.message()))
                .collect(),
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: format!(
                "https://portcullis.dev/problems/{}",
                self.code().replace('_', "-")
            ),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code().to_owned(),
            errors,
            reason: match &self {
                Self::InvalidToken(reason) | Self::InvalidSession(reason) => {
                    Some((*reason).to_owned())
                }
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            Self::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::MultipleCredentials => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_request\""),
                );
            }
            Self::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::InvalidToken(_) | Self::InvalidApiKey => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::InvalidSession(_) => {
                // A dead session cookie is of no further use to the browser.
                headers.insert(header::SET_COOKIE, crate::sessions::clear_cookie());
            }
            Self::RateLimited(t) => rate_limit_headers(&mut headers, t),
            Self::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        let mut response = (status, headers, body).into_response();
        if let Self::Internal(cause) = self {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

/// `Retry-After` plus the IETF httpapi RateLimit headers (draft-ietf-httpapi-ratelimit-headers):
/// `RateLimit-Policy: "<name>";q=<limit>;w=<window>` and `RateLimit: "<name>";r=<remaining>;t=<reset>`.
pub fn rate_limit_headers(headers: &mut HeaderMap, t: &Throttled) {
    let retry = t.decision.retry_after_ms.div_ceil(1000).max(1);
    let reset = t.decision.reset_ms.div_ceil(1000);
    let pairs = [
        (header::RETRY_AFTER.as_str(), retry.to_string()),
        (
            "ratelimit-policy",
            format!("\"{}\";q={};w={}", t.policy, t.limit, t.window_s),
        ),
        (
            "ratelimit",
            format!("\"{}\";r={};t={}", t.policy, t.decision.remaining, reset),
        ),
    ];
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            headers.insert(name, value);
        }
    }
}

impl From<portcullis_store::StoreError> for ApiError {
    fn from(e: portcullis_store::StoreError) -> Self {
        match e {
            portcullis_store::StoreError::NotFound => Self::NotFound("not found".into()),
            other => Self::Internal(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
