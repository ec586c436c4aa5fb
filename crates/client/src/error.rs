//! Why a request was not let through.

/// Why a token or request was refused, or could not be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No `Authorization` header: 401 with a bare challenge.
    Missing,
    /// The request is malformed (two Authorization headers): 400-ish, answered 401
    /// `invalid_request`.
    InvalidRequest(&'static str),
    /// The token is not valid, with the reason (`expired`, `bad_signature`, `wrong_audience`,
    /// `unknown_kid`, `inactive`…): 401 `invalid_token`.
    InvalidToken(&'static str),
    /// The token is valid but lacks these scopes: 403 `insufficient_scope`.
    InsufficientScope(String),
    /// The issuer could not be reached and no keys were ever fetched (or introspection failed):
    /// 503.
    Unavailable(String),
    /// The configuration cannot work.
    Config(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("no access token: send Authorization: Bearer <token>"),
            Self::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Self::InvalidToken(why) => write!(f, "the access token is not valid: {why}"),
            Self::InsufficientScope(s) => write!(f, "the access token lacks the scopes {s:?}"),
            Self::Unavailable(why) => write!(f, "the issuer cannot be reached: {why}"),
            Self::Config(why) => write!(f, "configuration: {why}"),
        }
    }
}

impl std::error::Error for Error {}
