//! RFC 6750 Bearer credentials, both ways: reading `Authorization: Bearer <token>` (§2.1), and
//! writing the `WWW-Authenticate` challenge of a refusal (§3, with RFC 9728 §5.1
//! `resource_metadata`). The server's endpoints, forward auth and the client crate's layer all speak
//! through these two, so they read and answer alike.

/// Why an `Authorization` value is not a Bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `<scheme> <token>` shape.
    Malformed,
    /// Another scheme (`Basic`, `DPoP`…).
    UnsupportedScheme,
}

impl BearerError {
    /// The reason as our errors name it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedScheme => "unsupported_scheme",
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any letter case).
pub fn token(authorization: &str) -> Result<&str, BearerError> {
    let (scheme, token) = authorization
        .split_once(' ')
        .ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::UnsupportedScheme);
    }
    Ok(token.trim())
}

/// A `WWW-Authenticate: Bearer …` challenge. Without an `error` it is the bare challenge of a
/// request that sent no credential (§3.1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Challenge<'a> {
    pub realm: Option<&'a str>,
    /// The error code and its description.
    pub error: Option<(&'a str, &'a str)>,
    /// The scopes needed (`insufficient_scope`).
    pub scope: Option<&'a str>,
    /// The URL of the protected resource's RFC 9728 metadata.
    pub resource_metadata: Option<&'a str>,
}

impl Challenge<'_> {
    /// The header value. Quotes and backslashes in values become `'`, so a value can never end its
    /// quoted string early.
    pub fn render(&self) -> String {
        let quote = |s: &str| s.replace(['"', '\\'], "'");
        let mut params = Vec::new();
        if let Some(realm) = self.realm {
            params.push(format!("realm=\"{}\"", quote(realm)));
        }
        if let Some((code, description)) = self.error {
            params.push(format!("error=\"{}\"", quote(code)));
            params.push(format!("error_description=\"{}\"", quote(description)));
        }
        if let Some(scope) = self.scope {
            params.push(format!("scope=\"{}\"", quote(scope)));
        }
        if let Some(url) = self.resource_metadata {
            params.push(format!("resource_metadata=\"{}\"", quote(url)));
        }
        if params.is_empty() {
            "Bearer".to_owned()
        } else {
            format!("Bearer {}", params.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_bearer_values_only() {
        assert_eq!(token("Bearer abc"), Ok("abc"));
        assert_eq!(token("bEaReR  abc "), Ok("abc"));
        assert_eq!(token("Basic eDp5"), Err(BearerError::UnsupportedScheme));
        assert_eq!(token("Bearer"), Err(BearerError::Malformed));
    }

    #[test]
    fn challenges_render_in_rfc_order_and_quote_safely() {
        assert_eq!(Challenge::default().render(), "Bearer");
        let c = Challenge {
            realm: Some("portcullis"),
            error: Some(("insufficient_scope", "needs \"orders:write\"")),
            scope: Some("orders:write"),
            resource_metadata: Some("https://api.example/.well-known/oauth-protected-resource"),
        };
        assert_eq!(
            c.render(),
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"needs 'orders:write'\", \
             scope=\"orders:write\", resource_metadata=\"https://api.example/.well-known/oauth-protected-resource\""
        );
    }
}
