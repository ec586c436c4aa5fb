//! Who is making a request, as every credential check concludes it (DESIGN.md "The one idea"): the
//! subject, how it proved itself, with which scopes, and the ids that matter. Our own endpoints,
//! forward auth and introspection all consume a `Principal`; none of them look at credentials.

use crate::ids::{KeyId, SessionId, SignatureKeyId, UserId};
use crate::scopes::Scopes;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// An access token in RFC 9068 JWT form, verified by signature.
    Jwt,
    /// An opaque OAuth access token (`pat_…`), looked up by its hash.
    #[serde(rename = "oauth")]
    OAuth,
    ApiKey,
    Session,
    Signature,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::OAuth => "oauth",
            Self::ApiKey => "api_key",
            Self::Session => "session",
            Self::Signature => "signature",
        }
    }

    /// The method named `name` (`jwt`, `oauth`, `api_key`, `session`, `signature`).
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Jwt,
            Self::OAuth,
            Self::ApiKey,
            Self::Session,
            Self::Signature,
        ]
        .into_iter()
        .find(|m| m.as_str() == name)
    }
}

/// Who is calling, how, and with which rights.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user, or for keys that belong to no user (root keys), the key id.
    pub subject: String,
    pub user_id: Option<UserId>,
    pub method: AuthMethod,
    pub scopes: Scopes,
    pub session_id: Option<SessionId>,
    pub key_id: Option<KeyId>,
    /// The signing key of an RFC 9421 signed request.
    pub signature_key_id: Option<SignatureKeyId>,
    pub client_id: Option<String>,
    /// A credential from our own login (password → token, session): the user's full self-service
    /// rights.
    pub first_party: bool,
}

impl Principal {
    /// May this caller act with `scope`? First-party user credentials may do whatever the user may;
    /// keys and third-party tokens only what their scopes say (`admin` implies everything).
    pub fn may(&self, scope: &str) -> bool {
        self.first_party || self.scopes.is_admin() || self.scopes.contains(scope)
    }
}
