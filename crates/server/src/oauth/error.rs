//! The OAuth edge's errors: RFC 6749 §5.2 JSON from the token, introspection and revocation
//! endpoints (401 and `WWW-Authenticate: Basic` for a failed Basic client authentication), RFC 6750
//! §3 `WWW-Authenticate: Bearer` from userinfo, always `Cache-Control: no-store`. Authorization
//! errors are redirects or pages, built in `pages::authorize`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct OAuthError {
    /// The HTTP status (kept as a number so that the service, which builds these, stays HTTP-free).
    pub status: u16,
    /// The RFC 6749 / 6750 / 8707 error code.
    pub code: &'static str,
    pub description: String,
    /// `WWW-Authenticate` to send, if any.
    pub challenge: Option<String>,
}

impl OAuthError {
    pub fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: 400,
            code,
            description: description.into(),
            challenge: None,
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new("invalid_request", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }

    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new("invalid_scope", description)
    }

    pub fn invalid_target(description: impl Into<String>) -> Self {
        Self::new("invalid_target", description)
    }

    pub fn unauthorized_client(description: impl Into<String>) -> Self {
        Self::new("unauthorized_client", description)
    }

    /// 401 `invalid_client`, with `WWW-Authenticate: Basic` when Basic was tried (§5.2).
    pub fn invalid_client(basic: bool) -> Self {
        Self {
            status: 401,
            code: "invalid_client",
            description: "client authentication failed".into(),
            challenge: basic.then(|| "Basic realm=\"portcullis\", charset=\"UTF-8\"".to_owned()),
        }
    }

    /// RFC 6750 §3.1 errors of a protected resource (userinfo).
    pub fn bearer(status: u16, code: &'static str, description: &str) -> Self {
        let challenge = portcullis_core::bearer::Challenge {
            realm: Some("portcullis"),
            error: (!code.is_empty()).then_some((code, description)),
            ..Default::default()
        }
        .render();
        Self {
            status,
            code,
            description: description.to_owned(),
            challenge: Some(challenge),
        }
    }

    pub fn server_error() -> Self {
        Self {
            status: 500,
            code: "server_error",
            description: "the server could not answer; try again".into(),
            challenge: None,
        }
    }

    pub fn temporarily_unavailable(status: u16) -> Self {
        Self {
            status,
            code: "temporarily_unavailable",
            description: "too many requests; try again later".into(),
            challenge: None,
        }
    }
}

/// Domain errors met on the OAuth edge (store failures, an overloaded server).
impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRefreshToken | Error::RefreshTokenReused => {
                Self::invalid_grant("the refresh token is not valid")
            }
            Error::RateLimited(_) => Self::temporarily_unavailable(429),
            Error::Overloaded | Error::Unavailable => Self::temporarily_unavailable(503),
            Error::Validation(errors) => Self::invalid_request(
                errors
                    .first()
                    .map_or_else(|| "invalid request".to_owned(), |e| e.message.clone()),
            ),
            other => {
                tracing::error!(error = %other, "OAuth request failed");
                Self::server_error()
            }
        }
    }
}

impl From<portcullis_store::StoreError> for OAuthError {
    fn from(e: portcullis_store::StoreError) -> Self {
        Error::from(e).into()
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1), on every OAuth answer.
pub fn no_store(res: &mut Response) {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "error_description": self.description });
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut res = (status, axum::Json(body)).into_response();
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        no_store(&mut res);
        res
    }
}

pub type OAuthResult<T> = std::result::Result<T, OAuthError>;
