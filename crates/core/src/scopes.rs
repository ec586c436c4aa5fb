//! OAuth-style scopes (RFC 6749 §3.3): case-sensitive tokens without spaces, carried space-separated in
//! the `scope` claim. We restrict the alphabet further (`[A-Za-z0-9_:.\-/]`, 1..=64 bytes) so that a scope
//! can be logged and put in a header without escaping.

use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(into = "String")]
pub struct Scope(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}: 1 to 64 characters of A-Z a-z 0-9 _ : . - /")]
pub struct InvalidScope(pub String);

/// Scopes only administrators may grant.
pub const RESERVED: &[&str] = &[Scope::ADMIN, Scope::KEYS_VERIFY, Scope::SIGNATURES_VERIFY];
/// Scopes a user may always grant their own keys.
pub const SELF_SERVICE: &[&str] = &[Scope::KEYS_READ, Scope::KEYS_WRITE];
/// Portcullis's own scopes: no other scope may equal one of them in another letter case.
pub const OWN: &[&str] = &[
    Scope::ADMIN,
    Scope::KEYS_VERIFY,
    Scope::SIGNATURES_VERIFY,
    Scope::KEYS_READ,
    Scope::KEYS_WRITE,
];

/// Portcullis's own scope this one imitates in another letter case (`Admin`, `KEYS:VERIFY`).
pub fn confusable_with(scope: &str) -> Option<&'static str> {
    OWN.iter()
        .find(|own| **own != scope && own.eq_ignore_ascii_case(scope))
        .copied()
}

/// Scopes nobody may open to users (`self_service_scopes`): the administrators' own, and look-alikes
/// of Portcullis's scopes.
pub fn is_reserved(scope: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(scope)) || confusable_with(scope).is_some()
}

impl Scope {
    /// Full administrative access.
    pub const ADMIN: &'static str = "admin";
    /// Verifying API keys (`/v1/keys/verify`).
    pub const KEYS_VERIFY: &'static str = "keys:verify";
    /// Verifying RFC 9421 signed requests for others (`/v1/signatures/verify`).
    pub const SIGNATURES_VERIFY: &'static str = "signatures:verify";
    /// Listing and reading one's keys.
    pub const KEYS_READ: &'static str = "keys:read";
    /// Managing one's keys.
    pub const KEYS_WRITE: &'static str = "keys:write";

    pub fn parse(raw: &str) -> Result<Self, InvalidScope> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-' | b'/')
            });
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidScope(raw.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.0
    }
}

/// A set of scopes, ordered so that its string form is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    /// Parses a space-separated scope string (the `scope` claim, a stored column).
    pub fn parse_space_separated(raw: &str) -> Result<Self, InvalidScope> {
        raw.split(' ')
            .filter(|s| !s.is_empty())
            .map(Scope::parse)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| s.0 == scope)
    }

    pub fn is_admin(&self) -> bool {
        self.contains(Scope::ADMIN)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(s.as_str())?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_in_stable_order() {
        let s = Scopes::parse_space_separated("keys:write  admin openid").unwrap();
        assert_eq!(s.to_string(), "admin keys:write openid");
        assert!(s.is_admin());
        assert!(Scopes::parse_space_separated("bad\"scope").is_err());
        assert!(Scope::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn our_scopes_are_reserved_in_every_letter_case() {
        for s in ["admin", "Admin", "ADMIN", "keys:Verify", "KEYS:WRITE"] {
            assert!(is_reserved(s) || confusable_with(s).is_some(), "{s}");
        }
        assert_eq!(confusable_with("Keys:Read"), Some("keys:read"));
        assert_eq!(confusable_with("keys:read"), None);
        assert!(!is_reserved("keys:read") && !is_reserved("orders:read"));
    }
}
