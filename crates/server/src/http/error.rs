//! Errors as JSON clients see them: RFC 9457 `application/problem+json` with a stable snake_case
//! `code`. [`ApiError`] is a domain [`Error`] or one of the few things only HTTP can get wrong (a body
//! that is not JSON, too large, too slow, a method or route that does not exist). 5xx bodies never
//! carry internals; the cause is logged with the request id, which the response also carries.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Error, FieldError, Throttled};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] Error),
    /// 400 `malformed_body`: the body is not valid JSON / form data.
    #[error("{0}")]
    MalformedBody(String),
    /// 400 with the given code (e.g. `credential_in_query`).
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 413 `payload_too_large`.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 408 `request_timeout`: the body did not arrive within `request_body_timeout_s`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 404 `not_found`: no such route.
    #[error("no such endpoint")]
    NoRoute,
    /// 405 `method_not_allowed`.
    #[error("this method is not allowed here")]
    MethodNotAllowed,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<portcullis_store::StoreError> for ApiError {
    fn from(e: portcullis_store::StoreError) -> Self {
        Self::Domain(e.into())
    }
}

/// Status and code of a domain error on the JSON API.
pub fn status_and_code(e: &Error) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        Error::Validation(_) => (S::BAD_REQUEST, "validation_failed"),
        Error::WeakPassword(_) => (S::BAD_REQUEST, "weak_password"),
        Error::EmailTaken => (S::CONFLICT, "email_taken"),
        Error::RegistrationClosed => (S::FORBIDDEN, "registration_closed"),
        Error::InvalidCredentials => (S::UNAUTHORIZED, "invalid_credentials"),
        Error::EmailNotVerified => (S::FORBIDDEN, "email_not_verified"),
        Error::InvalidLink => (S::BAD_REQUEST, "invalid_link"),
        Error::Unauthenticated => (S::UNAUTHORIZED, "unauthenticated"),
        Error::MultipleCredentials => (S::UNAUTHORIZED, "multiple_credentials"),
        Error::InvalidToken(_) => (S::UNAUTHORIZED, "invalid_token"),
        Error::InvalidDpopProof(_) => (S::UNAUTHORIZED, "invalid_dpop_proof"),
        Error::InvalidApiKey => (S::UNAUTHORIZED, "invalid_api_key"),
        Error::SignatureInvalid(_) => (S::UNAUTHORIZED, "signature_invalid"),
        Error::InvalidSession(_) => (S::UNAUTHORIZED, "invalid_session"),
        Error::CsrfFailed(_) => (S::FORBIDDEN, "csrf_failed"),
        Error::InvalidRefreshToken => (S::UNAUTHORIZED, "invalid_refresh_token"),
        Error::RefreshTokenReused => (S::UNAUTHORIZED, "refresh_token_reused"),
        Error::Forbidden(code, _) => (S::FORBIDDEN, code),
        Error::NotFound(_) => (S::NOT_FOUND, "not_found"),
        Error::Conflict(code, _) => (S::CONFLICT, code),
        Error::RateLimited(_) => (S::TOO_MANY_REQUESTS, "rate_limited"),
        Error::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded"),
        Error::Unavailable => (S::SERVICE_UNAVAILABLE, "unavailable"),
        Error::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::Domain(e) => status_and_code(e),
            Self::MalformedBody(_) => (S::BAD_REQUEST, "malformed_body"),
            Self::BadRequest(code, _) => (S::BAD_REQUEST, code),
            Self::UnsupportedMediaType(_) => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::PayloadTooLarge(_) => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::RequestTimeout => (S::REQUEST_TIMEOUT, "request_timeout"),
            Self::NoRoute => (S::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }
}

/// The problem document (RFC 9457).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Why a credential was refused (`expired`, `bad_signature`, `unknown_kid`…), for `invalid_token`
    /// and `invalid_session`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Carried in response extensions so the logging middleware can record a 500's cause next to the
/// request id without the body ever containing it.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        ApiError::Domain(self).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (errors, reason) = match &self {
            Self::Domain(Error::Validation(errors)) => (errors.clone(), None),
            Self::Domain(Error::WeakPassword(reasons)) => (
                reasons
                    .iter()
                    .map(|r| FieldError::new("password", r.code(), r.message()))
                    .collect(),
                None,
            ),
            Self::Domain(
                Error::InvalidToken(r) | Error::InvalidSession(r) | Error::InvalidDpopProof(r),
            ) => (Vec::new(), Some((*r).to_owned())),
            Self::Domain(Error::SignatureInvalid(r)) => (Vec::new(), Some(r.to_string())),
            _ => (Vec::new(), None),
        };
        let problem = Problem {
            kind: format!("https://portcullis.dev/problems/{}", code.replace('_', "-")),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_owned(),
            errors,
            reason,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            Self::Domain(Error::Unauthenticated) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Domain(Error::MultipleCredentials) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_request\""),
                );
            }
            Self::Domain(Error::InvalidToken(r)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                if *r == "dpop_bound" {
                    headers.append(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(crate::tokens::dpop::CHALLENGE),
                    );
                }
            }
            Self::Domain(Error::InvalidApiKey) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::Domain(Error::InvalidDpopProof(_)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(crate::tokens::dpop::INVALID_CHALLENGE),
                );
            }
            Self::Domain(Error::InvalidSession(_)) => {
                // A dead session cookie is of no further use to the browser.
                headers.insert(header::SET_COOKIE, super::cookies::clear_session_cookie());
            }
            Self::Domain(Error::RateLimited(t)) => rate_limit_headers(&mut headers, t),
            Self::Domain(Error::Overloaded | Error::Unavailable) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        let mut response = (status, headers, body).into_response();
        if let Self::Domain(Error::Internal(cause)) = self {
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
