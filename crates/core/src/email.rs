//! Email addresses. We check shape, not deliverability: one `@`, a non-empty local part, a domain of
//! dot-separated labels, no whitespace or control characters, at most 254 bytes (RFC 5321 §4.5.3.1.3).
//! The domain is lowercased; the local part keeps its case for display, but uniqueness is decided on the
//! fully lowercased form ([`Email::key`]) because almost every real mail system treats it that way and
//! two accounts differing only in case are an account-takeover aid.

use std::fmt;

/// A syntactically valid email address.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(into = "String")]
pub struct Email {
    address: String,
    local_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEmail {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than 254 bytes")]
    TooLong,
    #[error("email must contain exactly one @ with text on both sides")]
    Shape,
    #[error("email contains whitespace or control characters")]
    BadCharacter,
    #[error("email domain is not a valid host name")]
    BadDomain,
}

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(InvalidEmail::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(InvalidEmail::TooLong);
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidEmail::BadCharacter);
        }
        let (local, domain) = raw.split_once('@').ok_or(InvalidEmail::Shape)?;
        if local.is_empty() || domain.is_empty() || domain.contains('@') || local.len() > 64 {
            return Err(InvalidEmail::Shape);
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(InvalidEmail::Shape);
        }
        if local.chars().any(|c| {
            matches!(
                c,
                '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '\\' | '"'
            )
        }) {
            return Err(InvalidEmail::BadCharacter);
        }
        let domain = domain.to_lowercase();
        let labels_ok = domain.split('.').count() >= 2
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !labels_ok {
            return Err(InvalidEmail::BadDomain);
        }
        Ok(Self {
            local_len: local.len(),
            address: format!("{local}@{domain}"),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The part before the `@`, used by the password policy.
    pub fn local_part(&self) -> &str {
        self.address.get(..self.local_len).unwrap_or_default()
    }

    /// The form uniqueness and throttling are keyed on.
    pub fn key(&self) -> String {
        self.address.to_lowercase()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.address)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.address
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_addresses_parse_and_domains_are_lowercased() {
        let e = Email::parse(" Alice.Smith+tag@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "Alice.Smith+tag@example.com");
        assert_eq!(e.local_part(), "Alice.Smith+tag");
        assert_eq!(e.key(), "alice.smith+tag@example.com");
    }

    #[test]
    fn things_that_are_not_emails_are_refused() {
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "a@b@c.com",
            "a b@c.com",
            "alice@localhost",
            "alice@-x.com",
            "alice@x..com",
            ".a@x.com",
            "a..b@x.com",
            "a\u{0}@x.com",
            "<a>@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            Email::parse(&format!("{}@x.com", "a".repeat(300))),
            Err(InvalidEmail::TooLong)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepted_input_round_trips(raw in ".{0,300}") {
            if let Ok(e) = Email::parse(&raw) {
                prop_assert_eq!(Email::parse(e.as_str()).ok(), Some(e.clone()));
                prop_assert!(e.as_str().len() <= Email::MAX_LEN);
            }
        }
    }
}
