//! Sealing of the few secrets that must be recoverable (JWT private keys, later HMAC signing secrets):
//! AES-256-GCM under the master key, a fresh 96-bit random nonce per seal, and the record's identity as
//! associated data so that a sealed blob cannot be moved to another row and opened there.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretSlice};

use crate::secrets::{RandomUnavailable, fill_random};

/// The 256-bit key every recoverable secret is sealed under.
pub struct MasterKey(SecretSlice<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be exactly 32 bytes")]
    BadKeyLength,
    #[error("a sealed value could not be opened: wrong master key or tampered data")]
    Open,
    #[error("sealing failed")]
    Seal,
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
}

impl MasterKey {
    pub const LEN: usize = 32;

    pub fn generate() -> Result<Self, RandomUnavailable> {
        let mut raw = vec![0u8; Self::LEN];
        fill_random(&mut raw)?;
        Ok(Self(SecretSlice::from(raw)))
    }

    pub fn from_bytes(raw: Vec<u8>) -> Result<Self, SealError> {
        if raw.len() != Self::LEN {
            return Err(SealError::BadKeyLength);
        }
        Ok(Self(SecretSlice::from(raw)))
    }

    pub fn expose_bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }

    fn key(&self) -> Result<LessSafeKey, SealError> {
        UnboundKey::new(&AES_256_GCM, self.0.expose_secret())
            .map(LessSafeKey::new)
            .map_err(|_| SealError::BadKeyLength)
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self.key()?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut buf,
        )
        .map_err(|_| SealError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self.key()?;
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_context() {
        let k = MasterKey::generate().unwrap();
        let sealed = k.seal("signing_key:abc", b"private").unwrap();
        assert_eq!(k.open("signing_key:abc", &sealed).unwrap(), b"private");
        assert_eq!(k.open("signing_key:other", &sealed), Err(SealError::Open));
        let other = MasterKey::generate().unwrap();
        assert_eq!(other.open("signing_key:abc", &sealed), Err(SealError::Open));
        let mut tampered = sealed.clone();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        assert_eq!(k.open("signing_key:abc", &tampered), Err(SealError::Open));
        assert_eq!(
            k.open("signing_key:abc", &sealed[..10]),
            Err(SealError::Open)
        );
    }
}
