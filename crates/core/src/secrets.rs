//! Secrets we issue (refresh tokens, session ids) and the one form in which they are stored: SHA-256.
//! Randomness comes from the OS CSPRNG via aws-lc-rs. Secret values live in `secrecy` wrappers so that
//! `Debug` never prints them, and hashes are compared in constant time.

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Fills `buf` from the OS CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomUnavailable> {
    SystemRandom::new().fill(buf).map_err(|_| RandomUnavailable)
}

/// The OS random source failed; nothing safe can be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomUnavailable;

/// SHA-256 of a secret: the only form a secret we issue is stored or looked up in.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(secret: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, secret);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time equality, for the rare place where two hashes are compared outside the store.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first four bytes identify a hash in a log line without helping anyone guess the secret.
        write!(
            f,
            "TokenHash({}…)",
            hex::encode(self.0.get(..4).unwrap_or_default())
        )
    }
}

/// An opaque bearer secret: `<prefix>_<43 base64url chars>` carrying 256 random bits.
pub struct OpaqueToken(SecretString);

/// The presented value is not one of our opaque tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed token")]
pub struct MalformedToken;

impl OpaqueToken {
    const RANDOM_BYTES: usize = 32;
    const ENCODED_LEN: usize = 43;

    pub fn generate(prefix: &str) -> Result<Self, RandomUnavailable> {
        let mut raw = [0u8; Self::RANDOM_BYTES];
        fill_random(&mut raw)?;
        Ok(Self(SecretString::from(format!(
            "{prefix}_{}",
            URL_SAFE_NO_PAD.encode(raw)
        ))))
    }

    /// Checks prefix and shape so that garbage never reaches the store.
    pub fn parse(prefix: &str, raw: &str) -> Result<Self, MalformedToken> {
        let body = raw
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or(MalformedToken)?;
        if body.len() != Self::ENCODED_LEN
            || !body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(MalformedToken);
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.0.expose_secret().as_bytes())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for OpaqueToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpaqueToken([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back_and_hash_identically() {
        let t = OpaqueToken::generate("prt").unwrap();
        let again = OpaqueToken::parse("prt", t.expose()).unwrap();
        assert!(t.hash().ct_eq(&again.hash()));
        assert_eq!(format!("{t:?}"), "OpaqueToken([redacted])");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = OpaqueToken::generate("prt").unwrap();
        assert!(OpaqueToken::parse("ses", t.expose()).is_err());
        assert!(OpaqueToken::parse("prt", &t.expose()[..40]).is_err());
        assert!(OpaqueToken::parse("prt", "prt_").is_err());
        assert!(OpaqueToken::parse("prt", &format!("prt_{}", "!".repeat(43))).is_err());
    }
}
