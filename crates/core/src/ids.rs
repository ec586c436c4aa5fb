//! Opaque identifiers with a type prefix (`usr_…`, `key_…`), as the API contract asks. The prefix makes
//! an id self-describing in logs and stops one kind of id from being accepted where another is expected.
//! The body is a UUIDv7 in lowercase hex, so ids sort by creation time.

use std::fmt;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new id, ordered by creation time.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Accepts only `<prefix><32 lowercase hex digits>`.
            pub fn parse(raw: &str) -> Result<Self, InvalidId> {
                match raw.strip_prefix($prefix) {
                    Some(body)
                        if body.len() == 32
                            && body.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
                    {
                        Ok(Self(raw.to_owned()))
                    }
                    _ => Err(InvalidId { expected: $prefix }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(raw: String) -> Result<Self, InvalidId> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

/// The id was not of the expected kind or shape.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a valid id: expected `{expected}` followed by 32 hex digits")]
pub struct InvalidId {
    pub expected: &'static str,
}

prefixed_id!(
    /// A user account.
    UserId, "usr_"
);
prefixed_id!(
    /// An API key (the record, not the secret).
    KeyId, "key_"
);
prefixed_id!(
    /// A browser session (the record, not the cookie value).
    SessionId, "ses_"
);
prefixed_id!(
    /// An audit event.
    EventId, "evt_"
);
prefixed_id!(
    /// One refresh token of a family.
    RefreshTokenId, "rt_"
);
prefixed_id!(
    /// A refresh-token family: every token descended from one login.
    FamilyId, "fam_"
);
prefixed_id!(
    /// An OAuth client.
    ClientId, "cli_"
);
prefixed_id!(
    /// An upstream identity (provider, subject) linked to a user.
    IdentityId, "idn_"
);
prefixed_id!(
    /// A key for HTTP message signatures (RFC 9421): the `keyid` a signer sends.
    SignatureKeyId, "sig_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_round_trip_and_sort_by_time() {
        let a = UserId::generate();
        let b = UserId::generate();
        assert!(a < b);
        assert_eq!(UserId::parse(a.as_str()).ok(), Some(a));
    }

    #[test]
    fn an_id_of_another_kind_is_refused() {
        let k = KeyId::generate();
        assert!(UserId::parse(k.as_str()).is_err());
        assert!(UserId::parse("usr_../../etc/passwd").is_err());
        assert!(UserId::parse("usr_0193ABCDEF").is_err());
    }
}
