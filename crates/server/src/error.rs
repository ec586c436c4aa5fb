//! The domain's errors: what went wrong, in the words of the capability, with nothing of HTTP in them.
//! Every service returns [`Error`]; each edge renders it its own way — the JSON API as RFC 9457
//! problem JSON (`http::ApiError`), the pages as HTML (`pages`), the OAuth endpoints as RFC 6749 error
//! JSON, forward auth as a bare status and headers. Each variant's doc says what the JSON API makes of it.

use portcullis_core::passwords::WeakReason;
use portcullis_core::ratelimit::RateDecision;

/// One problem with one field of the input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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
pub enum Error {
    /// 400 `validation_failed`, with one entry per bad field.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// 400 `weak_password`, with every reason.
    #[error("the password does not meet the password policy")]
    WeakPassword(Vec<WeakReason>),
    /// 409 `email_taken`.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// 403 `registration_closed`.
    #[error("registration is closed on this server")]
    RegistrationClosed,
    /// 401 `invalid_credentials`: unknown account and wrong password alike.
    #[error("the email or password is wrong")]
    InvalidCredentials,
    /// 403 `email_not_verified`: the server requires a verified email before login
    /// (`require_verified_email`), and this account's is not (a new link has been sent).
    #[error("verify your email address first: we sent you a link")]
    EmailNotVerified,
    /// 400 `invalid_link`: an emailed link (verification, password reset) that is unknown, used,
    /// expired, or for an address the account no longer has.
    #[error("this link is not valid: it may have expired or been used already")]
    InvalidLink,
    /// 401 `unauthenticated`: no credential at all.
    #[error("this endpoint needs a credential: a Bearer access token or an API key")]
    Unauthenticated,
    /// 401 `multiple_credentials`: more than one credential was presented.
    #[error(
        "send exactly one credential: this request carries more than one (an API key, an Authorization header, a session cookie)"
    )]
    MultipleCredentials,
    /// 401 `invalid_token`, with the reason.
    #[error("the access token is not valid: {0}")]
    InvalidToken(&'static str),
    /// 401 `invalid_dpop_proof` (RFC 9449 §7.1), with the reason.
    #[error("the DPoP proof is not valid: {0}")]
    InvalidDpopProof(&'static str),
    /// 401 `signature_invalid`, with the RFC 9421 reason as the problem's top-level `reason`.
    #[error("the request signature is not valid: {}", .0.describe())]
    SignatureInvalid(portcullis_core::httpsig::Reason),
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
    /// 403 with the given code (`forbidden`, `insufficient_scope`, `not_a_user`, `limit_exceeded`,
    /// `usage_exceeded`).
    #[error("{1}")]
    Forbidden(&'static str, String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409 with the given code (e.g. `key_revoked`).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// 429 `rate_limited`, with `Retry-After` and the RateLimit headers.
    #[error("too many attempts; try again later")]
    RateLimited(Throttled),
    /// 503 `overloaded`: the password-hashing queue is full.
    #[error("the server is busy; try again shortly")]
    Overloaded,
    /// 503 `unavailable`: the store cannot be reached now (a restart, a failover, every connection
    /// busy past `db_timeout_ms`). Retry-After says when to try again.
    #[error("the service is briefly unavailable; try again shortly")]
    Unavailable,
    /// 500 `internal`. The cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// A validation error of one field.
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, code, message)])
    }

    /// Ok when `errors` is empty, else all of them at once.
    pub fn check(errors: Vec<FieldError>) -> Result<()> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Self::Validation(errors))
        }
    }
}

impl From<portcullis_store::StoreError> for Error {
    fn from(e: portcullis_store::StoreError) -> Self {
        match e {
            portcullis_store::StoreError::NotFound => Self::NotFound("not found".into()),
            other if other.is_unavailable() => {
                metrics::counter!("portcullis_db_errors_total", "kind" => "unavailable")
                    .increment(1);
                tracing::warn!(error = %other, "the store is unavailable");
                Self::Unavailable
            }
            other => {
                metrics::counter!("portcullis_db_errors_total", "kind" => "other").increment(1);
                Self::Internal(other.to_string())
            }
        }
    }
}
