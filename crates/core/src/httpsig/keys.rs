//! The two algorithms (RFC 9421 §3.3.4 `hmac-sha256`, §3.3.6 `ed25519`). A key knows its algorithm and
//! the request's `alg` parameter can only agree with it (§3.2 step 6, §7.3.6): a verifier that let the
//! header choose could be told to treat an Ed25519 public key as an HMAC secret.

use std::fmt;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use aws_lc_rs::{hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretSlice};

/// Bytes of a secret we generate for `hmac-sha256` (RFC 9421 §3.3.4 wants at least the hash length).
pub const HMAC_SECRET_BYTES: usize = 32;
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HmacSha256,
    Ed25519,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "hmac-sha256" => Some(Self::HmacSha256),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("an hmac-sha256 secret must be at least {HMAC_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error(
        "an ed25519 public key is the base64 of its 32 raw bytes, or a PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----)"
    )]
    BadPublicKey,
    #[error("an ed25519 private key is a 32-byte seed or PKCS#8")]
    BadPrivateKey,
    #[error("the system random generator failed")]
    Random,
}

/// What verifies a signature: an HMAC secret (kept secret, `Debug` redacted) or an Ed25519 public key.
#[derive(Clone)]
pub enum VerifyingKey {
    Hmac(Box<hmac::Key>),
    Ed25519([u8; 32]),
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hmac(_) => f.write_str("VerifyingKey::Hmac([redacted])"),
            Self::Ed25519(pk) => write!(f, "VerifyingKey::Ed25519({})", STANDARD.encode(pk)),
        }
    }
}

impl VerifyingKey {
    pub fn hmac(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < HMAC_SECRET_BYTES {
            return Err(KeyError::ShortSecret);
        }
        Ok(Self::Hmac(Box::new(hmac::Key::new(
            hmac::HMAC_SHA256,
            secret,
        ))))
    }

    pub fn ed25519(public_key: [u8; 32]) -> Self {
        Self::Ed25519(public_key)
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hmac(_) => Algorithm::HmacSha256,
            Self::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Does `signature` sign `base`? HMACs are compared in constant time (`hmac::verify`).
    pub fn verify(&self, base: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Hmac(key) => hmac::verify(key, base, signature).is_ok(),
            Self::Ed25519(pk) => UnparsedPublicKey::new(&ED25519, pk)
                .verify(base, signature)
                .is_ok(),
        }
    }
}

/// An Ed25519 public key as people hand it over: base64 (standard or URL-safe, padded or not) of the
/// raw 32 bytes, or PEM `PUBLIC KEY` (SPKI). Anything else, including a valid-looking length of random
/// the wrong number of bytes, is refused. (A 32-byte string that is no curve point is
/// stored, and simply never verifies anything.)
pub fn parse_ed25519_public_key(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    let der_or_raw = if let Some(body) = text
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|rest| rest.trim_end().strip_suffix("-----END PUBLIC KEY-----"))
    {
        let b64: String = body.split_whitespace().collect();
        let der = STANDARD.decode(b64).map_err(|_| KeyError::BadPublicKey)?;
        der.strip_prefix(&ED25519_SPKI_PREFIX[..])
            .map(<[u8]>::to_vec)
            .ok_or(KeyError::BadPublicKey)?
    } else {
        decode_base64_any(text).ok_or(KeyError::BadPublicKey)?
    };
    let key: [u8; 32] = der_or_raw.try_into().map_err(|_| KeyError::BadPublicKey)?;
    Ok(key)
}

/// Base64 in any of the common alphabets and paddings.
pub fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
}

/// What signs: an HMAC secret or an Ed25519 key pair. For the client and tests; the server never signs.
pub enum SigningKey {
    Hmac(SecretSlice<u8>),
    Ed25519(Box<Ed25519KeyPair>),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hmac(_) => "SigningKey::Hmac([redacted])",
            Self::Ed25519(_) => "SigningKey::Ed25519([redacted])",
        })
    }
}

impl SigningKey {
    pub fn hmac(secret: Vec<u8>) -> Result<Self, KeyError> {
        if secret.len() < HMAC_SECRET_BYTES {
            return Err(KeyError::ShortSecret);
        }
        Ok(Self::Hmac(secret.into()))
    }

    /// From the 32-byte seed (as `jose`, Python `cryptography` raw export and RFC 8032 call it) or
    /// PKCS#8 DER.
    pub fn ed25519(private_key: &[u8]) -> Result<Self, KeyError> {
        let pair = if private_key.len() == 32 {
            Ed25519KeyPair::from_seed_unchecked(private_key)
        } else {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(private_key)
        }
        .map_err(|_| KeyError::BadPrivateKey)?;
        Ok(Self::Ed25519(Box::new(pair)))
    }

    /// A new Ed25519 key pair.
    pub fn generate_ed25519() -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::generate().map_err(|_| KeyError::Random)?;
        Ok(Self::Ed25519(Box::new(pair)))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hmac(_) => Algorithm::HmacSha256,
            Self::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The raw 32-byte public key of an Ed25519 pair.
    pub fn ed25519_public_key(&self) -> Option<[u8; 32]> {
        match self {
            Self::Ed25519(pair) => pair.public_key().as_ref().try_into().ok(),
            Self::Hmac(_) => None,
        }
    }

    pub fn sign(&self, base: &[u8]) -> Vec<u8> {
        match self {
            Self::Hmac(secret) => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret());
                hmac::sign(&key, base).as_ref().to_vec()
            }
            Self::Ed25519(pair) => pair.sign(base).as_ref().to_vec(),
        }
    }
}

/// A fresh `hmac-sha256` secret of [`HMAC_SECRET_BYTES`].
pub fn generate_hmac_secret() -> Result<Vec<u8>, KeyError> {
    let mut secret = vec![0u8; HMAC_SECRET_BYTES];
    rand::fill(&mut secret).map_err(|_| KeyError::Random)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn public_keys_are_read_as_pem_or_raw_base64() {
        let from_pem = parse_ed25519_public_key(RFC_PUBLIC_PEM).unwrap();
        let raw = STANDARD.encode(from_pem);
        assert_eq!(parse_ed25519_public_key(&raw).unwrap(), from_pem);
        for bad in [
            "",
            "abc",
            &STANDARD.encode([1u8; 31]),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----",
        ] {
            assert_eq!(
                parse_ed25519_public_key(bad),
                Err(KeyError::BadPublicKey),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let pair = SigningKey::generate_ed25519().unwrap();
        let pk = pair.ed25519_public_key().unwrap();
        let sig = pair.sign(b"base");
        assert!(VerifyingKey::ed25519(pk).verify(b"base", &sig));
        assert!(!VerifyingKey::ed25519(pk).verify(b"other", &sig));
        // The public key used as an HMAC secret signs nothing the Ed25519 key accepts.
        let forged = SigningKey::hmac(pk.to_vec()).unwrap().sign(b"base");
        assert!(!VerifyingKey::ed25519(pk).verify(b"base", &forged));
        assert!(matches!(
            SigningKey::hmac(vec![1; 31]),
            Err(KeyError::ShortSecret)
        ));
    }
}
