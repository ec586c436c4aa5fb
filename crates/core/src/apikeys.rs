//! API key format: `<prefix>_<body>`, where the prefix is `[a-z0-9_]{2,20}` (`pk_live` by default) and
//! the body is 39 base62 characters: 33 random (≈ 196 bits from the OS CSPRNG) followed by a 6-character
//! base62 CRC32 of everything before it. Like GitHub's token format, the checksum lets us — and secret
//! scanners — reject a mistyped or made-up key offline, before any store lookup. Scanner regex:
//! `\b[a-z0-9_]{2,20}_[0-9A-Za-z]{39}\b`.
//!
//! Keys are stored only as SHA-256 ([`ApiKey::hash`]); `Debug` never shows one.

use secrecy::{ExposeSecret, SecretString};

use crate::clock::Millis;
use crate::secrets::{RandomUnavailable, TokenHash, fill_random};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_CHARS: usize = 33;
const CHECKSUM_CHARS: usize = 6;
const BODY_CHARS: usize = RANDOM_CHARS + CHECKSUM_CHARS;

/// The default prefix of keys we issue.
pub const DEFAULT_PREFIX: &str = "pk_live";

/// How many leading characters of a key are kept in clear for display.
pub const START_CHARS: usize = 12;

/// A well-formed API key (checksum verified). Not yet known to exist.
pub struct ApiKey(SecretString);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("an API key looks like <prefix>_<39 base62 characters>")]
    Shape,
    #[error(
        "the key prefix must be 2 to 20 characters of a-z, 0-9 and _, and not begin with pat, prt, pcs or pac (our other tokens)"
    )]
    Prefix,
    #[error("the key's checksum does not match: it was mistyped or made up")]
    Checksum,
}

/// Prefixes of the other opaque tokens Portcullis issues (OAuth access tokens, refresh tokens,
/// session tokens and client secrets, authorization codes). Their bodies are base64url and may hold
/// `_`, so one can end in what looks like a key's body: a key never starts with one of them, and a
/// credential that does is never taken for a key.
pub const RESERVED_PREFIXES: [&str; 4] = ["pat", "prt", "pcs", "pac"];

/// Does `raw` start with a reserved prefix and its `_`?
fn has_reserved_prefix(raw: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| {
        raw.strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('_'))
    })
}

/// Checks a prefix for new keys.
pub fn validate_prefix(prefix: &str) -> Result<(), KeyFormatError> {
    let ok = (2..=20).contains(&prefix.len())
        && !RESERVED_PREFIXES.contains(&prefix)
        && !has_reserved_prefix(prefix)
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !prefix.starts_with('_')
        && !prefix.ends_with('_');
    if ok {
        Ok(())
    } else {
        Err(KeyFormatError::Prefix)
    }
}

fn base62_checksum(data: &[u8]) -> [u8; CHECKSUM_CHARS] {
    let mut n = crc32fast::hash(data);
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62.get((n % 62) as usize).copied().unwrap_or(b'0');
        n /= 62;
    }
    out
}

impl ApiKey {
    pub fn generate(prefix: &str) -> Result<Self, GenerateError> {
        validate_prefix(prefix)?;
        let mut key = String::with_capacity(prefix.len() + 1 + BODY_CHARS);
        key.push_str(prefix);
        key.push('_');
        // Rejection sampling keeps every character uniform over the 62 symbols (248 = 4 × 62).
        let mut produced = 0;
        let mut buf = [0u8; 64];
        while produced < RANDOM_CHARS {
            fill_random(&mut buf)?;
            for b in buf {
                if b < 248 && produced < RANDOM_CHARS {
                    key.push(char::from(
                        BASE62.get(usize::from(b % 62)).copied().unwrap_or(b'0'),
                    ));
                    produced += 1;
                }
            }
        }
        let checksum = base62_checksum(key.as_bytes());
        key.extend(checksum.iter().map(|b| char::from(*b)));
        Ok(Self(SecretString::from(key)))
    }

    /// Checks prefix, alphabet, length and checksum. Cheap and allocation-light: it runs before any
    /// cache or store lookup, so made-up keys cost almost nothing.
    pub fn parse(raw: &str) -> Result<Self, KeyFormatError> {
        let (prefix, body) = raw.rsplit_once('_').ok_or(KeyFormatError::Shape)?;
        if body.len() != BODY_CHARS || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyFormatError::Shape);
        }
        validate_prefix(prefix)?;
        let split = raw.len() - CHECKSUM_CHARS;
        let (signed, checksum) = (
            raw.get(..split).unwrap_or_default(),
            raw.get(split..).unwrap_or_default(),
        );
        if base62_checksum(signed.as_bytes()) != checksum.as_bytes() {
            return Err(KeyFormatError::Checksum);
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    /// True when the string has the shape of one of our keys (used to tell a key from a JWT in an
    /// `Authorization: Bearer` header).
    pub fn looks_like_key(raw: &str) -> bool {
        !raw.contains('.')
            && !has_reserved_prefix(raw)
            && raw
                .rsplit_once('_')
                .is_some_and(|(_, body)| body.len() == BODY_CHARS)
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.0.expose_secret().as_bytes())
    }

    pub fn prefix(&self) -> &str {
        self.0
            .expose_secret()
            .rsplit_once('_')
            .map(|(p, _)| p)
            .unwrap_or_default()
    }

    /// The first characters, safe to show in lists.
    pub fn start(&self) -> String {
        self.0.expose_secret().chars().take(START_CHARS).collect()
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// The answer of a key verification. Checks run in this order and the first that fails is the answer:
/// format → exists → revoked → expired → scopes → remaining → rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerifyCode {
    Valid,
    /// Bad prefix, alphabet, length or checksum: decided without any lookup.
    Malformed,
    NotFound,
    Revoked,
    /// Past `expires_at`, or past the grace period of a roll.
    Expired,
    InsufficientScope,
    /// `remaining` reached zero.
    UsageExceeded,
    RateLimited,
}

impl VerifyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Malformed => "MALFORMED",
            Self::NotFound => "NOT_FOUND",
            Self::Revoked => "REVOKED",
            Self::Expired => "EXPIRED",
            Self::InsufficientScope => "INSUFFICIENT_SCOPE",
            Self::UsageExceeded => "USAGE_EXCEEDED",
            Self::RateLimited => "RATE_LIMITED",
        }
    }
}

/// The lifetime checks of a stored key at `now` (ms): revoked first, then expired (by `expires_at`
/// or by the end of a roll's grace period).
pub fn lifetime_code(
    revoked_at: Option<Millis>,
    expires_at: Option<Millis>,
    grace_until: Option<Millis>,
    now: Millis,
) -> Option<VerifyCode> {
    if revoked_at.is_some_and(|at| at <= now) {
        Some(VerifyCode::Revoked)
    } else if expires_at.is_some_and(|at| at <= now) || grace_until.is_some_and(|at| at <= now) {
        Some(VerifyCode::Expired)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Format(#[from] KeyFormatError),
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_parse_and_keep_their_prefix() {
        for prefix in ["pk_live", "sk_test_2", "ab"] {
            let k = ApiKey::generate(prefix).unwrap();
            let parsed = ApiKey::parse(k.expose()).unwrap();
            assert_eq!(parsed.prefix(), prefix);
            assert_eq!(parsed.hash(), k.hash());
            assert_eq!(k.start().len(), START_CHARS);
            assert!(ApiKey::looks_like_key(k.expose()));
        }
    }

    /// An opaque token whose base64url body holds a `_` 39 characters from its end has a key's shape;
    /// it is still not a key (this once sent ~1% of opaque OAuth tokens down the API-key path), and
    /// no key may take a prefix of our other tokens.
    #[test]
    fn our_other_tokens_are_never_keys() {
        for prefix in RESERVED_PREFIXES {
            let token = format!("{prefix}_abc_{}", "A".repeat(BODY_CHARS));
            assert!(!ApiKey::looks_like_key(&token), "{token}");
            assert!(validate_prefix(prefix).is_err());
            assert!(validate_prefix(&format!("{prefix}_live")).is_err());
            assert!(ApiKey::generate(prefix).is_err());
        }
        assert!(
            validate_prefix("patx").is_ok(),
            "only the exact prefixes are reserved"
        );
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let k = ApiKey::generate("pk_live").unwrap();
        let mut raw = k.expose().to_owned().into_bytes();
        let i = 10;
        raw[i] = if raw[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            ApiKey::parse(std::str::from_utf8(&raw).unwrap()).unwrap_err(),
            KeyFormatError::Checksum
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["A_B", "x", "with-dash", &"a".repeat(21), "_lead", "trail_"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revoked_wins_over_expired_and_grace_ends_a_rolled_key() {
        assert_eq!(lifetime_code(None, None, None, Millis(10)), None);
        assert_eq!(
            lifetime_code(Some(Millis(5)), Some(Millis(5)), None, Millis(10)),
            Some(VerifyCode::Revoked)
        );
        assert_eq!(
            lifetime_code(Some(Millis(11)), None, None, Millis(10)),
            None
        );
        assert_eq!(
            lifetime_code(None, Some(Millis(10)), None, Millis(10)),
            Some(VerifyCode::Expired)
        );
        assert_eq!(
            lifetime_code(None, Some(Millis(11)), Some(Millis(10)), Millis(10)),
            Some(VerifyCode::Expired)
        );
        assert_eq!(
            lifetime_code(None, None, Some(Millis(11)), Millis(10)),
            None
        );
        assert_eq!(
            serde_json::to_string(&VerifyCode::InsufficientScope).unwrap(),
            r#""INSUFFICIENT_SCOPE""#
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in ".{0,80}") {
            let _ = ApiKey::parse(&raw);
        }

        /// Key-shaped input (a prefix, `_`, 30 to 45 characters of nearly the right alphabet): it
        /// reaches the length, alphabet and checksum checks, and only a real key passes.
        #[test]
        fn key_shaped_input_passes_only_with_its_checksum(
            prefix in "[a-z0-9_]{1,22}",
            body in "[0-9A-Za-z!_\\-]{30,45}",
        ) {
            let raw = format!("{prefix}_{body}");
            if let Ok(key) = ApiKey::parse(&raw) {
                prop_assert_eq!(key.expose(), raw.as_str());
                prop_assert!(validate_prefix(key.prefix()).is_ok());
            }
            // A generated key with one character of its body changed never passes.
            if let Ok(real) = ApiKey::generate("pk_live") {
                let mut bytes = real.expose().as_bytes().to_vec();
                let at = 8 + body.len() % 39;
                bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
                let changed = String::from_utf8(bytes).unwrap();
                prop_assert!(ApiKey::parse(&changed).is_err(), "{} passed", changed);
            }
        }

        #[test]
        fn random_bodies_almost_never_pass_the_checksum(body in "[0-9A-Za-z]{39}") {
            // One chance in 62^6 for an arbitrary body; a hit here would mean a broken checksum.
            let raw = format!("pk_live_{body}");
            prop_assert!(ApiKey::parse(&raw).is_err());
        }
    }
}
