//! Signed one-time links (email verification, password reset) and the per-request secrets of an
//! upstream sign-in.
//!
//! A link token is `<purpose>_<43 base64url: 256 random bits>.<22 base64url: 128-bit tag>`, the tag
//! `HMAC-SHA256(link key, purpose | random)` truncated. The server stores only the token's SHA-256,
//! so a copy of the store holds no usable link; the tag lets a forged, garbled or wrong-purpose token
//! be refused before any lookup. Being single use and expiring is the store's part.
//!
//! [`LinkKey::derive_secret`] makes the `nonce` and PKCE `code_verifier` of an upstream sign-in from
//! its `state`, so that neither secret is ever stored.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use secrecy::SecretString;

use crate::secrets::{RandomUnavailable, TokenHash, fill_random};

const LABEL: &[u8] = b"portcullis links v1";
const RANDOM_LEN: usize = 43;
const TAG_BYTES: usize = 16;
const TAG_LEN: usize = 22;

/// The key links are signed with, derived from the master key so that every node agrees.
pub struct LinkKey(hmac::Key);

impl LinkKey {
    pub fn derive(master: &[u8]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, master);
        let derived = hmac::sign(&root, LABEL);
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn tag(&self, purpose: &str, random: &str) -> String {
        let mac = hmac::sign(
            &self.0,
            [purpose.as_bytes(), random.as_bytes()]
                .join(&b'|')
                .as_slice(),
        );
        B64.encode(mac.as_ref().get(..TAG_BYTES).unwrap_or_default())
    }

    /// A new link token for `purpose` (lowercase letters) and the hash to store.
    pub fn issue(&self, purpose: &str) -> Result<(SecretString, TokenHash), RandomUnavailable> {
        let mut raw = [0u8; 32];
        fill_random(&mut raw)?;
        let random = B64.encode(raw);
        let token = format!("{purpose}_{random}.{}", self.tag(purpose, &random));
        let hash = TokenHash::of(token.as_bytes());
        Ok((SecretString::from(token), hash))
    }

    /// The hash to look up, if `raw` is a token this key made for `purpose`. Constant-time in the tag.
    pub fn check(&self, purpose: &str, raw: &str) -> Option<TokenHash> {
        let rest = raw.strip_prefix(purpose)?.strip_prefix('_')?;
        let (random, tag) = rest.split_once('.')?;
        let b64 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if random.len() != RANDOM_LEN || tag.len() != TAG_LEN || !b64(random) || !b64(tag) {
            return None;
        }
        let want = self.tag(purpose, random);
        bool::from(subtle::ConstantTimeEq::ct_eq(
            want.as_bytes(),
            tag.as_bytes(),
        ))
        .then(|| TokenHash::of(raw.as_bytes()))
    }

    /// A 256-bit secret (43 base64url characters) bound to `label` and `input`: the same on every
    /// node, unguessable without the master key.
    pub fn derive_secret(&self, label: &str, input: &str) -> SecretString {
        let mac = hmac::sign(
            &self.0,
            [label.as_bytes(), input.as_bytes()].join(&b'|').as_slice(),
        );
        SecretString::from(B64.encode(mac.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_link_checks_only_for_its_purpose_and_key_and_untouched() {
        let key = LinkKey::derive(&[7; 32]);
        let (token, hash) = key.issue("reset").unwrap();
        let t = token.expose_secret();
        assert!(t.starts_with("reset_") && t.len() == 6 + 43 + 1 + 22, "{t}");
        assert_eq!(key.check("reset", t), Some(hash));
        assert_eq!(key.check("verify", t), None);
        assert_eq!(LinkKey::derive(&[8; 32]).check("reset", t), None);
        let mut flipped = t.to_owned().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            key.check("reset", std::str::from_utf8(&flipped).unwrap()),
            None
        );
        for bad in [
            "",
            "reset_",
            "reset_abc.def",
            &format!("{t}x"),
            &t.replace('.', ""),
        ] {
            assert_eq!(key.check("reset", bad), None, "{bad}");
        }
    }

    #[test]
    fn derived_secrets_are_stable_and_separate() {
        let key = LinkKey::derive(&[7; 32]);
        let a = key.derive_secret("nonce", "state-1");
        assert_eq!(
            a.expose_secret(),
            key.derive_secret("nonce", "state-1").expose_secret()
        );
        assert_ne!(
            a.expose_secret(),
            key.derive_secret("pkce", "state-1").expose_secret()
        );
        assert_ne!(
            a.expose_secret(),
            key.derive_secret("nonce", "state-2").expose_secret()
        );
        assert_eq!(a.expose_secret().len(), 43);
    }
}
