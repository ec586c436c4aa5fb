//! PKCE (RFC 7636) as Portcullis requires it of every client: `code_challenge_method=S256`, never
//! `plain` (RFC 9700 §2.1.1), and a challenge that is what S256 makes, the unpadded base64url of a
//! SHA-256 (43 characters). The verifier is checked for its alphabet and length before it is hashed,
//! and the comparison is constant-time.

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// Shortest and longest `code_verifier` (RFC 7636 §4.1).
pub const VERIFIER_LEN: std::ops::RangeInclusive<usize> = 43..=128;
/// Length of an S256 challenge: 32 bytes, base64url without padding.
pub const CHALLENGE_LEN: usize = 43;

/// Why an authorization request's PKCE parameters were refused (each an `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PkceError {
    #[error("code_challenge is required (PKCE with S256)")]
    MissingChallenge,
    #[error("code_challenge_method must be S256")]
    UnsupportedMethod,
    #[error("code_challenge must be the 43-character base64url SHA-256 of the code_verifier")]
    MalformedChallenge,
}

/// A `code_challenge` with method S256, checked for its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeChallenge(String);

impl CodeChallenge {
    /// From an authorization request's `code_challenge` and `code_challenge_method`. A missing method
    /// would mean `plain` (RFC 7636 §4.3), so it is refused like `plain`.
    pub fn parse(challenge: Option<&str>, method: Option<&str>) -> Result<Self, PkceError> {
        let challenge = challenge.ok_or(PkceError::MissingChallenge)?;
        if method != Some("S256") {
            return Err(PkceError::UnsupportedMethod);
        }
        let decodes = URL_SAFE_NO_PAD
            .decode(challenge)
            .is_ok_and(|bytes| bytes.len() == 32);
        if challenge.len() != CHALLENGE_LEN || !decodes {
            return Err(PkceError::MalformedChallenge);
        }
        Ok(Self(challenge.to_owned()))
    }

    /// The challenge S256 makes of `verifier` (what a client sends).
    pub fn of_verifier(verifier: &str) -> Self {
        let hash = digest::digest(&digest::SHA256, verifier.as_bytes());
        Self(URL_SAFE_NO_PAD.encode(hash.as_ref()))
    }

    /// Does the token request's `code_verifier` answer this challenge? A verifier of the wrong length
    /// or alphabet never does. Constant-time in the comparison.
    pub fn is_answered_by(&self, verifier: &str) -> bool {
        if !is_valid_verifier(verifier) {
            return false;
        }
        Self::of_verifier(verifier)
            .0
            .as_bytes()
            .ct_eq(self.0.as_bytes())
            .into()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 43 to 128 characters of `A-Z a-z 0-9 - . _ ~` (RFC 7636 §4.1).
pub fn is_valid_verifier(verifier: &str) -> bool {
    VERIFIER_LEN.contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7636 Appendix B.
    const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn the_rfc_example_verifies() {
        let c = CodeChallenge::parse(Some(RFC_CHALLENGE), Some("S256")).unwrap();
        assert!(c.is_answered_by(RFC_VERIFIER));
        assert_eq!(CodeChallenge::of_verifier(RFC_VERIFIER), c);
        assert!(!c.is_answered_by(&RFC_VERIFIER.replace('d', "e")));
    }

    #[test]
    fn only_s256_with_a_well_formed_challenge_is_accepted() {
        assert_eq!(
            CodeChallenge::parse(None, Some("S256")),
            Err(PkceError::MissingChallenge)
        );
        for method in [None, Some("plain"), Some("s256"), Some("S512"), Some("")] {
            assert_eq!(
                CodeChallenge::parse(Some(RFC_CHALLENGE), method),
                Err(PkceError::UnsupportedMethod),
                "{method:?}"
            );
        }
        for bad in [
            "",
            &RFC_CHALLENGE[..42],
            &format!("{RFC_CHALLENGE}A"),
            &format!("{RFC_CHALLENGE}="),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c=",
            // 43 characters whose last one carries bits past the 32 bytes: no SHA-256 encodes so.
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cN",
        ] {
            assert_eq!(
                CodeChallenge::parse(Some(bad), Some("S256")),
                Err(PkceError::MalformedChallenge),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn verifiers_outside_the_alphabet_or_length_never_answer() {
        // A challenge made of an out-of-spec verifier still refuses that verifier.
        for bad in [
            "a".repeat(42),
            "a".repeat(129),
            format!("{}+", "a".repeat(42)),
            format!("{} ", "a".repeat(42)),
            format!("{}é", "a".repeat(42)),
        ] {
            let c = CodeChallenge::of_verifier(&bad);
            assert!(!c.is_answered_by(&bad), "{bad:?}");
        }
        assert!(is_valid_verifier(&"~._-aZ09".repeat(16)));
    }

    proptest! {
        /// Every valid verifier answers its own challenge and nobody else's.
        #[test]
        fn a_verifier_answers_exactly_its_challenge(
            v in "[A-Za-z0-9._~-]{43,128}",
            w in "[A-Za-z0-9._~-]{43,128}",
        ) {
            let c = CodeChallenge::parse(Some(CodeChallenge::of_verifier(&v).as_str()), Some("S256")).unwrap();
            prop_assert!(c.is_answered_by(&v));
            prop_assert_eq!(c.is_answered_by(&w), v == w);
        }

        /// Whatever arrives as a challenge, parsing never panics, and what it accepts is 43 base64url
        /// characters.
        #[test]
        fn the_challenge_parser_takes_anything(raw in ".{0,64}", method in proptest::option::of(".{0,8}")) {
            if let Ok(c) = CodeChallenge::parse(Some(&raw), method.as_deref()) {
                prop_assert_eq!(c.as_str().len(), CHALLENGE_LEN);
                prop_assert!(c.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
        }
    }
}
