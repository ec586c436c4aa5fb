//! JSON Web Tokens as Portcullis issues and accepts them: RFC 7515 compact JWS, RFC 7519 claims and the
//! RFC 9068 access-token profile, signed with ES256 (default), RS256 or EdDSA (Ed25519) through aws-lc-rs.
//!
//! Verification follows RFC 8725 (JWT best current practices):
//! * the algorithm is pinned to the key; the header's `alg` must merely agree with it (§2.1, §3.1), so
//!   `none` and HS256-with-the-public-key-as-secret can never succeed;
//! * `kid` is required and must name a key we published; no key material is ever taken from the token
//!   (`jku`, `x5u`, `jwk`, `x5c` are refused, §3.10) and `crit` extensions are refused (RFC 7515 §4.1.11);
//! * `typ` must be `at+jwt` so other JWTs (ID tokens, logout tokens) are never accepted as access tokens
//!   (RFC 9068 §4, RFC 8725 §3.11);
//! * `iss`, `aud` and `exp` are required and checked, `nbf` when present, with bounded leeway.
//!
//! Key pairs are parsed once and kept: signing costs one ECDSA operation, not a PKCS#8 parse.

use std::collections::HashMap;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// The JWS algorithms we sign with. The key decides; a token's header only has to agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwsAlg {
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl JwsAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ES256" => Some(Self::Es256),
            "RS256" => Some(Self::Rs256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

/// The `typ` of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Largest token we will even try to parse.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Largest leeway for `exp`/`nbf` that configuration may set (RFC 8725 asks for a small one).
pub const MAX_LEEWAY_S: i64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWS compact serialization")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted")]
    UnsupportedAlg(String),
    #[error("the token has no kid")]
    MissingKid,
    #[error("the token's kid is not one of our published keys")]
    UnknownKid,
    #[error("the token's alg does not match the algorithm of the key it names")]
    AlgMismatch,
    #[error("the token header carries {0:?}, which is never honoured")]
    ForbiddenHeader(String),
    #[error("the token's typ is not at+jwt")]
    WrongType,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token lacks the required claim {0}")]
    MissingClaim(&'static str),
    #[error("key operation failed: {0}")]
    Key(&'static str),
}

impl JwtError {
    /// A short machine-readable reason for logs, metrics and the problem body.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedAlg(_) => "unsupported_alg",
            Self::MissingKid => "missing_kid",
            Self::UnknownKid => "unknown_kid",
            Self::AlgMismatch => "alg_mismatch",
            Self::ForbiddenHeader(_) => "forbidden_header",
            Self::WrongType => "wrong_typ",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::Key(_) => "key_error",
        }
    }
}

/// The claims of an RFC 9068 access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    /// One audience or several (RFC 8707 `resource`s); written as a string when there is one.
    #[serde(with = "audience")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// RFC 9449 §6.1: the DPoP key the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// RFC 8693 §4.1: who acts for `sub` (a token exchange's actor, nested for a chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
}

/// A token's confirmation claim (RFC 7800): here only `jkt`, the RFC 7638 thumbprint of a DPoP key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub jkt: String,
}

impl AccessClaims {
    /// Time checks, repeated on every use of a cached verification.
    pub fn check_time(&self, now_s: i64, leeway_s: i64) -> Result<(), JwtError> {
        if now_s >= self.exp.saturating_add(leeway_s) {
            return Err(JwtError::Expired);
        }
        if self
            .nbf
            .is_some_and(|nbf| now_s.saturating_add(leeway_s) < nbf)
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    /// When the token was issued, in milliseconds: `jti` is a UUIDv7 whose first 48 bits are the
    /// issuance time, which is finer than `iat` and lets revocation cut exactly at a moment.
    pub fn issued_at_ms(&self) -> i64 {
        let from_jti = uuid::Uuid::try_parse(&self.jti).ok().and_then(|u| {
            u.get_timestamp().map(|ts| {
                let (secs, nanos) = ts.to_unix();
                (secs as i64) * 1000 + i64::from(nanos / 1_000_000)
            })
        });
        from_jti.unwrap_or(self.iat.saturating_mul(1000))
    }
}

enum Pair {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A private key we sign with, parsed once.
pub struct SigningKey {
    kid: String,
    alg: JwsAlg,
    pair: Pair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, {:?}, [redacted])", self.kid, self.alg)
    }
}

/// A public key we verify with, and its JWK form.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    alg: JwsAlg,
    public: UnparsedPublicKey<Vec<u8>>,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({}, {:?})", self.kid, self.alg)
    }
}

/// PKCS#8 DER of a private key, wiped from memory when dropped.
pub struct Pkcs8(pub secrecy::SecretSlice<u8>);

impl SigningKey {
    /// A fresh key pair; `kid` is its RFC 7638 JWK thumbprint.
    pub fn generate(alg: JwsAlg) -> Result<(Self, Pkcs8), JwtError> {
        let rng = SystemRandom::new();
        let der: Vec<u8> = match alg {
            JwsAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| JwtError::Key("ES256 key generation failed"))?
                .as_ref()
                .to_vec(),
            JwsAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| JwtError::Key("EdDSA key generation failed"))?
                .as_ref()
                .to_vec(),
            JwsAlg::Rs256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| JwtError::Key("RS256 key generation failed"))?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = pair
                    .as_der()
                    .map_err(|_| JwtError::Key("RS256 key encoding failed"))?;
                der.as_ref().to_vec()
            }
        };
        let key = Self::from_pkcs8(alg, &der)?;
        Ok((key, Pkcs8(secrecy::SecretSlice::from(der))))
    }

    pub fn from_pkcs8(alg: JwsAlg, der: &[u8]) -> Result<Self, JwtError> {
        let pair = match alg {
            JwsAlg::Es256 => Pair::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| JwtError::Key("not an ES256 PKCS#8 key"))?,
            ),
            JwsAlg::Rs256 => Pair::Rs256(
                RsaKeyPair::from_pkcs8(der).map_err(|_| JwtError::Key("not an RSA PKCS#8 key"))?,
            ),
            JwsAlg::EdDsa => Pair::EdDsa(
                Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|_| JwtError::Key("not an Ed25519 PKCS#8 key"))?,
            ),
        };
        let mut key = Self {
            kid: String::new(),
            alg,
            pair,
            rng: SystemRandom::new(),
        };
        key.kid = thumbprint(&key.public_jwk_members()?);
        Ok(key)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> JwsAlg {
        self.alg
    }

    /// The JWK members that define the public key (RFC 7638 §3.2), without `kid`/`alg`/`use`.
    fn public_jwk_members(&self) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
        let mut m = serde_json::Map::new();
        match &self.pair {
            Pair::Es256(p) => {
                let point = p.public_key().as_ref();
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let (x, y) = match point {
                    [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => return Err(JwtError::Key("unexpected EC public key encoding")),
                };
                m.insert("crv".into(), "P-256".into());
                m.insert("kty".into(), "EC".into());
                m.insert("x".into(), B64.encode(x).into());
                m.insert("y".into(), B64.encode(y).into());
            }
            Pair::Rs256(p) => {
                let public = p.public_key();
                m.insert(
                    "e".into(),
                    B64.encode(public.exponent().big_endian_without_leading_zero())
                        .into(),
                );
                m.insert("kty".into(), "RSA".into());
                m.insert(
                    "n".into(),
                    B64.encode(public.modulus().big_endian_without_leading_zero())
                        .into(),
                );
            }
            Pair::EdDsa(p) => {
                m.insert("crv".into(), "Ed25519".into());
                m.insert("kty".into(), "OKP".into());
                m.insert("x".into(), B64.encode(p.public_key().as_ref()).into());
            }
        }
        Ok(m)
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey, JwtError> {
        let (public, bytes): (&'static dyn signature::VerificationAlgorithm, Vec<u8>) =
            match &self.pair {
                Pair::Es256(p) => (&ECDSA_P256_SHA256_FIXED, p.public_key().as_ref().to_vec()),
                Pair::Rs256(p) => (
                    &RSA_PKCS1_2048_8192_SHA256,
                    p.public_key().as_ref().to_vec(),
                ),
                Pair::EdDsa(p) => (&ED25519, p.public_key().as_ref().to_vec()),
            };
        let mut jwk = self.public_jwk_members()?;
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert("alg".into(), self.alg.as_str().into());
        jwk.insert("use".into(), "sig".into());
        Ok(VerifyingKey {
            kid: self.kid.clone(),
            alg: self.alg,
            public: UnparsedPublicKey::new(public, bytes),
            jwk: serde_json::Value::Object(jwk),
        })
    }

    fn sign_bytes(&self, input: &[u8]) -> Result<Vec<u8>, JwtError> {
        match &self.pair {
            Pair::Es256(p) => p
                .sign(&self.rng, input)
                .map(|s| ecdsa_low_s(s.as_ref()))
                .map_err(|_| JwtError::Key("signing failed")),
            Pair::Rs256(p) => {
                let mut sig = vec![0u8; p.public_modulus_len()];
                p.sign(&RSA_PKCS1_SHA256, &self.rng, input, &mut sig)
                    .map_err(|_| JwtError::Key("signing failed"))?;
                Ok(sig)
            }
            Pair::EdDsa(p) => Ok(p.sign(input).as_ref().to_vec()),
        }
    }

    /// Compact JWS of `claims` under `header` (whose `alg` is set to this key's): for proofs that carry
    /// their public key (`jwk`) instead of a `kid`, such as DPoP's.
    pub fn sign_with_header<C: Serialize>(
        &self,
        mut header: serde_json::Map<String, serde_json::Value>,
        claims: &C,
    ) -> Result<String, JwtError> {
        header.insert("alg".into(), self.alg.as_str().into());
        let header =
            serde_json::to_vec(&header).map_err(|_| JwtError::Key("header encoding failed"))?;
        let payload =
            serde_json::to_vec(claims).map_err(|_| JwtError::Key("claims encoding failed"))?;
        let mut token = B64.encode(header);
        token.push('.');
        token.push_str(&B64.encode(payload));
        let sig = self.sign_bytes(token.as_bytes())?;
        token.push('.');
        token.push_str(&B64.encode(sig));
        Ok(token)
    }

    /// The public JWK (`kty`, `crv`/`x`/`y` or `n`/`e`), without `kid`, `alg` or `use`.
    pub fn public_jwk(&self) -> Result<serde_json::Value, JwtError> {
        Ok(serde_json::Value::Object(self.public_jwk_members()?))
    }

    /// Compact JWS of `claims` with header `{alg, typ, kid}`.
    pub fn sign<C: Serialize>(&self, typ: &str, claims: &C) -> Result<String, JwtError> {
        let mut header = serde_json::Map::new();
        header.insert("typ".into(), typ.into());
        header.insert("kid".into(), self.kid.clone().into());
        self.sign_with_header(header, claims)
    }
}

impl VerifyingKey {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> JwsAlg {
        self.alg
    }

    /// The public JWK with `kid`, `alg` and `use`.
    pub fn jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// A key of a published JWKS (what a resource server fetched from `jwks_uri`): `kid` required,
    /// `use` if present `sig`, `alg` if present agreeing with the key type (EC P-256 → ES256, RSA of
    /// 2048 bits or more → RS256, OKP Ed25519 → EdDSA). A JWK with private members is refused: a JWKS
    /// that carries them is misconfigured, and nothing here should hold them.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, JwtError> {
        Self::parse_jwk(jwk, true)
    }

    /// A public key a client presents in a proof (a DPoP header's `jwk`): as [`Self::from_jwk`], but
    /// with no `kid` needed; the key's RFC 7638 thumbprint stands in for it.
    pub fn from_presented_jwk(jwk: &serde_json::Value) -> Result<Self, JwtError> {
        Self::parse_jwk(jwk, false)
    }

    /// RFC 7638 thumbprint of this key (SHA-256, base64url): what `cnf.jkt` binds a token to.
    pub fn thumbprint(&self) -> String {
        let obj = self.jwk.as_object();
        let member = |n: &str| obj.and_then(|o| o.get(n)).cloned().unwrap_or_default();
        let names: &[&str] = match self.alg {
            JwsAlg::Es256 => &["crv", "kty", "x", "y"],
            JwsAlg::Rs256 => &["e", "kty", "n"],
            JwsAlg::EdDsa => &["crv", "kty", "x"],
        };
        let members = names.iter().map(|n| ((*n).to_owned(), member(n))).collect();
        thumbprint(&members)
    }

    /// Does `sig` sign `signed` under this key? Unlike our own tokens, a client's ES256 signature may
    /// be high-S (WebCrypto does not normalise): proofs are replay-checked by `jti`, not by their bytes,
    /// so the malleability costs nothing.
    pub fn verifies(&self, signed: &[u8], sig: &[u8]) -> bool {
        self.public.verify(signed, sig).is_ok()
    }

    fn parse_jwk(jwk: &serde_json::Value, kid_required: bool) -> Result<Self, JwtError> {
        let bad = JwtError::Key;
        let obj = jwk.as_object().ok_or(bad("a JWK is a JSON object"))?;
        let text = |name: &str| obj.get(name).and_then(|v| v.as_str());
        let bytes = |name: &str| -> Result<Vec<u8>, JwtError> {
            text(name)
                .and_then(|v| B64.decode(v).ok())
                .ok_or(bad("a JWK member is missing or not base64url"))
        };
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| obj.contains_key(*m))
        {
            return Err(bad("the JWK carries private key material"));
        }
        if text("use").is_some_and(|u| u != "sig") {
            return Err(bad("the JWK is not for signatures"));
        }
        let kid = match text("kid") {
            Some(kid) => kid.to_owned(),
            None if !kid_required => String::new(),
            None => return Err(JwtError::MissingKid),
        };
        let (alg, public, der): (
            JwsAlg,
            &'static dyn signature::VerificationAlgorithm,
            Vec<u8>,
        ) = match (text("kty"), text("crv")) {
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("a P-256 coordinate is 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (JwsAlg::Es256, &ECDSA_P256_SHA256_FIXED, point)
            }
            (Some("RSA"), _) => {
                let (n, e) = (bytes("n")?, bytes("e")?);
                let n = strip_leading_zeros(&n);
                if n.len() < 256 || n.len() > 1024 {
                    return Err(bad("an RSA modulus is 2048 to 8192 bits"));
                }
                (
                    JwsAlg::Rs256,
                    &RSA_PKCS1_2048_8192_SHA256,
                    rsa_public_key_der(n, strip_leading_zeros(&e)),
                )
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err(bad("an Ed25519 key is 32 bytes"));
                }
                (JwsAlg::EdDsa, &ED25519, x)
            }
            _ => return Err(bad("unsupported key type (EC P-256, RSA, OKP Ed25519)")),
        };
        if let Some(named) = text("alg")
            && JwsAlg::parse(named) != Some(alg)
        {
            return Err(JwtError::AlgMismatch);
        }
        Ok(VerifyingKey {
            kid,
            alg,
            public: UnparsedPublicKey::new(public, der),
            jwk: jwk.clone(),
        })
    }
}

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// DER of PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`, the form
/// aws-lc-rs verifies with.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, l: usize) {
        if l < 0x80 {
            out.push(l as u8);
        } else {
            let be = l.to_be_bytes();
            let be = strip_leading_zeros(&be);
            out.push(0x80 | be.len() as u8);
            out.extend_from_slice(be);
        }
    }
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        out.push(0x02);
        let pad = v.first().is_none_or(|b| b & 0x80 != 0);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.push(0x30);
    len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// The order n of the P-256 group, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// ⌊n / 2⌋ for P-256, big-endian: the largest `s` of a low-S signature.
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Is this fixed-size (r ‖ s) P-256 signature in low-S form (s ≤ n/2)? Anything not 64 bytes is not.
fn ecdsa_is_low_s(sig: &[u8]) -> bool {
    sig.len() == 64 && sig.get(32..).is_some_and(|s| s <= &P256_HALF_ORDER[..])
}

/// The low-S form of a fixed-size (r ‖ s) P-256 signature: s is replaced by n - s when above n/2.
fn ecdsa_low_s(sig: &[u8]) -> Vec<u8> {
    let mut out = sig.to_vec();
    if sig.len() != 64 || ecdsa_is_low_s(sig) {
        return out;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let (Some(n), Some(s), Some(slot)) =
            (P256_ORDER.get(i), sig.get(32 + i), out.get_mut(32 + i))
        else {
            continue;
        };
        let mut d = i16::from(*n) - i16::from(*s) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        *slot = d as u8;
    }
    out
}

/// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order, base64url.
fn thumbprint(members: &serde_json::Map<String, serde_json::Value>) -> String {
    // serde_json's Map is a BTreeMap without the preserve_order feature, so keys serialize sorted.
    let canonical = serde_json::to_string(members).unwrap_or_default();
    B64.encode(crate::secrets::TokenHash::of(canonical.as_bytes()).0)
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    typ: Option<String>,
    kid: Option<String>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

/// Checks access tokens against the keys we published.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: HashMap<String, VerifyingKey>,
    issuer: String,
    audience: String,
    leeway_s: i64,
}

impl Verifier {
    pub fn new(
        keys: impl IntoIterator<Item = VerifyingKey>,
        issuer: String,
        audience: String,
        leeway_s: i64,
    ) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
            issuer,
            audience,
            leeway_s: leeway_s.clamp(0, MAX_LEEWAY_S),
        }
    }

    pub fn leeway_s(&self) -> i64 {
        self.leeway_s
    }

    /// Full verification of an access token: structure, header rules, signature, then claims.
    pub fn verify_access_token(&self, token: &str, now: Millis) -> Result<AccessClaims, JwtError> {
        self.verify_for(token, now, Audience::Ours)
    }

    /// [`Self::verify_access_token`] with the audience rule chosen by the caller.
    pub fn verify_for(
        &self,
        token: &str,
        now: Millis,
        audience: Audience,
    ) -> Result<AccessClaims, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = B64
            .decode(h64)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(JwtError::Malformed)?;
        for forbidden in ["jku", "x5u", "jwk", "x5c", "crit"] {
            if header.rest.contains_key(forbidden) {
                return Err(JwtError::ForbiddenHeader(forbidden.to_owned()));
            }
        }
        let alg = header.alg.ok_or(JwtError::Malformed)?;
        let header_alg = JwsAlg::parse(&alg)
            .ok_or_else(|| JwtError::UnsupportedAlg(alg.chars().take(16).collect()))?;
        let kid = header.kid.ok_or(JwtError::MissingKid)?;
        let key = self.keys.get(&kid).ok_or(JwtError::UnknownKid)?;
        if key.alg != header_alg {
            return Err(JwtError::AlgMismatch);
        }
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(JwtError::WrongType);
        }
        let sig = B64.decode(s64).map_err(|_| JwtError::Malformed)?;
        // ECDSA signatures are malleable: (r, n - s) verifies as well as (r, s). We only ever issue the
        // low-S form, so the high-S twin of a token is a forgery of its identity (a different string,
        // hence a different cache key and jti-less replay) and is refused.
        if key.alg == JwsAlg::Es256 && !ecdsa_is_low_s(&sig) {
            return Err(JwtError::BadSignature);
        }
        let signed_len = h64.len() + 1 + p64.len();
        let signed = token.get(..signed_len).ok_or(JwtError::Malformed)?;
        key.public
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| JwtError::BadSignature)?;

        let payload = B64.decode(p64).map_err(|_| JwtError::Malformed)?;
        let claims = parse_claims(&payload)?;
        if claims.iss != self.issuer {
            return Err(JwtError::WrongIssuer);
        }
        if audience == Audience::Ours && !claims.aud.contains(&self.audience) {
            return Err(JwtError::WrongAudience);
        }
        claims.check_time(now.as_secs(), self.leeway_s)?;
        Ok(claims)
    }
}

impl Verifier {
    /// The claims of a JWT we signed with `typ` (an ID token: `JWT`), signature and issuer checked
    /// and nothing else: what an `id_token_hint` needs, which may have expired (OIDC RP-Initiated
    /// Logout §2).
    pub fn verify_signed(&self, token: &str, typ: &str) -> Result<serde_json::Value, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = B64
            .decode(h64)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(JwtError::Malformed)?;
        let kid = header.kid.ok_or(JwtError::MissingKid)?;
        let key = self.keys.get(&kid).ok_or(JwtError::UnknownKid)?;
        let alg = header.alg.ok_or(JwtError::Malformed)?;
        if JwsAlg::parse(&alg) != Some(key.alg) {
            return Err(JwtError::AlgMismatch);
        }
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(JwtError::WrongType);
        }
        let sig = B64.decode(s64).map_err(|_| JwtError::Malformed)?;
        if key.alg == JwsAlg::Es256 && !ecdsa_is_low_s(&sig) {
            return Err(JwtError::BadSignature);
        }
        let signed = token
            .get(..h64.len() + 1 + p64.len())
            .ok_or(JwtError::Malformed)?;
        key.public
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| JwtError::BadSignature)?;
        let claims: serde_json::Value = B64
            .decode(p64)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(JwtError::Malformed)?;
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
        Ok(claims)
    }
}

/// `at_hash` (OIDC Core §3.1.3.6): the left half of the hash the ID token's algorithm uses (SHA-256
/// for ES256 and RS256, SHA-512 for EdDSA with Ed25519), base64url.
pub fn at_hash(alg: JwsAlg, access_token: &str) -> String {
    let digest = match alg {
        JwsAlg::Es256 | JwsAlg::Rs256 => {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes())
        }
        JwsAlg::EdDsa => {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, access_token.as_bytes())
        }
    };
    let bytes = digest.as_ref();
    B64.encode(bytes.get(..bytes.len() / 2).unwrap_or_default())
}

/// Which audiences a verification accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Ours (the configured `audience`) must be among the token's: the API's own endpoints.
    Ours,
    /// Any: every token this issuer signed, whoever it is meant for (introspection, userinfo).
    Any,
}

/// `aud` as RFC 7519 §4.1.3 has it: a string, or an array of strings.
mod audience {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
        match aud {
            [one] => s.serialize_str(one),
            many => s.collect_seq(many),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(list) => list,
        })
    }
}

/// Claims with RFC 7519's shapes: `aud` may be a string or an array (we require ours to be in it).
fn parse_claims(payload: &[u8]) -> Result<AccessClaims, JwtError> {
    let v: serde_json::Value = serde_json::from_slice(payload).map_err(|_| JwtError::Malformed)?;
    let obj = v.as_object().ok_or(JwtError::Malformed)?;
    let s = |name: &'static str| -> Result<String, JwtError> {
        obj.get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or(JwtError::MissingClaim(name))
    };
    let n = |name: &'static str| -> Result<i64, JwtError> {
        obj.get(name)
            .and_then(|v| v.as_i64())
            .ok_or(JwtError::MissingClaim(name))
    };
    let aud = match obj.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(list)) if !list.is_empty() && list.len() <= 16 => list
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::WrongAudience)?,
        Some(_) => return Err(JwtError::WrongAudience),
        None => return Err(JwtError::MissingClaim("aud")),
    };
    Ok(AccessClaims {
        iss: s("iss")?,
        sub: s("sub")?,
        aud,
        exp: n("exp")?,
        iat: n("iat")?,
        nbf: obj.get("nbf").and_then(|v| v.as_i64()),
        jti: s("jti")?,
        client_id: s("client_id")?,
        scope: obj
            .get("scope")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        sid: obj.get("sid").and_then(|v| v.as_str()).map(str::to_owned),
        cnf: match obj.get("cnf") {
            None => None,
            // A confirmation we cannot read must not be dropped: the token would lose its binding.
            Some(c) => Some(Confirmation {
                jkt: c
                    .get("jkt")
                    .and_then(|v| v.as_str())
                    .filter(|j| !j.is_empty())
                    .ok_or(JwtError::MissingClaim("cnf.jkt"))?
                    .to_owned(),
            }),
        },
        act: obj.get("act").filter(|a| a.is_object()).cloned(),
    })
}

/// One signing key's schedule, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchedule {
    pub kid: String,
    pub alg: JwsAlg,
    pub publish_at: Millis,
    pub activate_at: Millis,
    /// Set when a newer key took over signing.
    pub retire_at: Option<Millis>,
    /// When the key leaves the JWKS: retirement plus the longest lifetime of a token it signed.
    pub expire_at: Option<Millis>,
}

impl KeySchedule {
    pub fn is_published(&self, now: Millis) -> bool {
        self.publish_at <= now && self.expire_at.is_none_or(|e| now < e)
    }

    pub fn can_sign(&self, now: Millis) -> bool {
        self.activate_at <= now && self.retire_at.is_none_or(|r| now < r) && self.is_published(now)
    }
}

/// The key of `alg` to sign with now: the most recently activated key of that algorithm that may
/// sign. Each algorithm the ring holds (the access-token one, RS256 for ID tokens) rotates apart.
pub fn current_signer(schedules: &[KeySchedule], alg: JwsAlg, now: Millis) -> Option<&KeySchedule> {
    schedules
        .iter()
        .filter(|s| s.alg == alg && s.can_sign(now))
        .max_by_key(|s| s.activate_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "http://127.0.0.1:8787";

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            sub: "usr_1".into(),
            aud: vec![ISS.into()],
            exp: now + 900,
            iat: now,
            nbf: None,
            jti: uuid::Uuid::now_v7().to_string(),
            client_id: "portcullis".into(),
            scope: "account".into(),
            sid: None,
            cnf: None,
            act: None,
        }
    }

    fn setup(alg: JwsAlg) -> (SigningKey, Verifier) {
        let (key, _) = SigningKey::generate(alg).unwrap();
        let verifier = Verifier::new([key.verifying_key().unwrap()], ISS.into(), ISS.into(), 30);
        (key, verifier)
    }

    fn forge(header: serde_json::Value, claims: &AccessClaims, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap()),
            B64.encode(sig)
        )
    }

    #[test]
    fn every_algorithm_signs_and_verifies() {
        for alg in [JwsAlg::Es256, JwsAlg::Rs256, JwsAlg::EdDsa] {
            let (key, verifier) = setup(alg);
            let now = Millis::now();
            let c = claims(now.as_secs());
            let token = key.sign(ACCESS_TOKEN_TYP, &c).unwrap();
            assert_eq!(verifier.verify_access_token(&token, now).unwrap(), c);
            let jwk = key.verifying_key().unwrap().jwk().clone();
            assert_eq!(jwk["kid"], key.kid());
            assert_eq!(jwk["alg"], alg.as_str());
        }
    }

    /// A published JWK read back (what a resource server does with our JWKS) verifies what the key
    /// signed, for every algorithm; a key with private members, another use, or an `alg` that
    /// disagrees with its type is refused.
    #[test]
    fn published_jwks_read_back_verify_and_bad_ones_are_refused() {
        for alg in [JwsAlg::Es256, JwsAlg::Rs256, JwsAlg::EdDsa] {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let jwk = key.verifying_key().unwrap().jwk().clone();
            let read = VerifyingKey::from_jwk(&jwk).unwrap();
            assert_eq!((read.kid(), read.alg()), (key.kid(), alg));
            let verifier = Verifier::new([read], ISS.into(), ISS.into(), 30);
            let now = Millis::now();
            let c = claims(now.as_secs());
            let token = key.sign(ACCESS_TOKEN_TYP, &c).unwrap();
            assert_eq!(verifier.verify_access_token(&token, now).unwrap(), c);
            let (other, _) = SigningKey::generate(alg).unwrap();
            let forged = other.sign(ACCESS_TOKEN_TYP, &c).unwrap();
            let forged = format!(
                "{}.{}",
                token.rsplit_once('.').unwrap().0,
                forged.rsplit_once('.').unwrap().1
            );
            assert!(verifier.verify_access_token(&forged, now).is_err());

            let with = |name: &str, v: serde_json::Value| {
                let mut j = jwk.clone();
                j[name] = v;
                VerifyingKey::from_jwk(&j)
            };
            assert!(with("d", "AAAA".into()).is_err());
            assert!(with("use", "enc".into()).is_err());
            let wrong = if alg == JwsAlg::Rs256 {
                "ES256"
            } else {
                "RS256"
            };
            assert!(matches!(
                with("alg", wrong.into()),
                Err(JwtError::AlgMismatch)
            ));
            let mut no_kid = jwk.clone();
            no_kid.as_object_mut().unwrap().remove("kid");
            assert!(matches!(
                VerifyingKey::from_jwk(&no_kid),
                Err(JwtError::MissingKid)
            ));
        }
        assert!(VerifyingKey::from_jwk(&serde_json::json!({"kty": "oct", "kid": "a"})).is_err());
        assert!(VerifyingKey::from_jwk(&serde_json::json!("nope")).is_err());
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_kid() {
        let (key, der) = SigningKey::generate(JwsAlg::Es256).unwrap();
        use secrecy::ExposeSecret;
        let again = SigningKey::from_pkcs8(JwsAlg::Es256, der.0.expose_secret()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert!(SigningKey::from_pkcs8(JwsAlg::Rs256, der.0.expose_secret()).is_err());
    }

    #[test]
    fn alg_none_and_hs256_with_the_public_key_are_refused() {
        let (key, verifier) = setup(JwsAlg::Es256);
        let now = Millis::now();
        let c = claims(now.as_secs());
        let none = forge(
            serde_json::json!({"alg":"none","typ":"at+jwt","kid":key.kid()}),
            &c,
            b"",
        );
        assert!(matches!(
            verifier.verify_access_token(&none, now),
            Err(JwtError::UnsupportedAlg(_))
        ));
        let hs = forge(
            serde_json::json!({"alg":"HS256","typ":"at+jwt","kid":key.kid()}),
            &c,
            b"whatever",
        );
        assert!(matches!(
            verifier.verify_access_token(&hs, now),
            Err(JwtError::UnsupportedAlg(_))
        ));
        let mismatch = forge(
            serde_json::json!({"alg":"RS256","typ":"at+jwt","kid":key.kid()}),
            &c,
            b"x",
        );
        assert_eq!(
            verifier.verify_access_token(&mismatch, now),
            Err(JwtError::AlgMismatch)
        );
    }

    #[test]
    fn header_rules_are_enforced() {
        let (key, verifier) = setup(JwsAlg::Es256);
        let now = Millis::now();
        let c = claims(now.as_secs());
        let cases = [
            (
                serde_json::json!({"alg":"ES256","typ":"at+jwt"}),
                JwtError::MissingKid,
            ),
            (
                serde_json::json!({"alg":"ES256","typ":"at+jwt","kid":"../../etc/passwd"}),
                JwtError::UnknownKid,
            ),
            (
                serde_json::json!({"alg":"ES256","typ":"JWT","kid":key.kid()}),
                JwtError::WrongType,
            ),
            (
                serde_json::json!({"alg":"ES256","typ":"at+jwt","kid":key.kid(),"jku":"https://evil.example/jwks"}),
                JwtError::ForbiddenHeader("jku".into()),
            ),
            (
                serde_json::json!({"alg":"ES256","typ":"at+jwt","kid":key.kid(),"jwk":{"kty":"EC"}}),
                JwtError::ForbiddenHeader("jwk".into()),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(
                verifier.verify_access_token(&forge(header, &c, b"sig"), now),
                Err(want)
            );
        }
    }

    #[test]
    fn claims_are_checked() {
        let (key, verifier) = setup(JwsAlg::Es256);
        let now = Millis::now();
        let t = now.as_secs();
        let mut expired = claims(t);
        expired.exp = t - 31;
        let mut wrong_iss = claims(t);
        wrong_iss.iss = "https://evil.example".into();
        let mut wrong_aud = claims(t);
        wrong_aud.aud = vec!["someone-else".into()];
        let mut future = claims(t);
        future.nbf = Some(t + 120);
        for (c, want) in [
            (expired, JwtError::Expired),
            (wrong_iss, JwtError::WrongIssuer),
            (wrong_aud, JwtError::WrongAudience),
            (future, JwtError::NotYetValid),
        ] {
            let token = key.sign(ACCESS_TOKEN_TYP, &c).unwrap();
            assert_eq!(verifier.verify_access_token(&token, now), Err(want));
        }
        let mut within_leeway = claims(t);
        within_leeway.exp = t - 10;
        assert!(
            verifier
                .verify_access_token(&key.sign(ACCESS_TOKEN_TYP, &within_leeway).unwrap(), now)
                .is_ok()
        );
    }

    #[test]
    fn tampered_and_garbage_tokens_are_refused() {
        let (key, verifier) = setup(JwsAlg::Es256);
        let now = Millis::now();
        let token = key.sign(ACCESS_TOKEN_TYP, &claims(now.as_secs())).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut other = claims(now.as_secs());
        other.sub = "usr_admin".into();
        let forged_payload = B64.encode(serde_json::to_vec(&other).unwrap());
        parts[1] = &forged_payload;
        assert_eq!(
            verifier.verify_access_token(&parts.join("."), now),
            Err(JwtError::BadSignature)
        );
        for garbage in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            &token[..token.len() / 2],
        ] {
            assert!(
                verifier.verify_access_token(garbage, now).is_err(),
                "{garbage}"
            );
        }
        assert_eq!(
            verifier.verify_access_token(&"a".repeat(MAX_TOKEN_LEN + 1), now),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn a_token_signed_by_another_key_with_our_kid_fails() {
        let (key, verifier) = setup(JwsAlg::Es256);
        let (other, _) = SigningKey::generate(JwsAlg::Es256).unwrap();
        let now = Millis::now();
        let token = other
            .sign(ACCESS_TOKEN_TYP, &claims(now.as_secs()))
            .unwrap();
        let header = B64.encode(
            serde_json::to_vec(&serde_json::json!({"alg":"ES256","typ":"at+jwt","kid":key.kid()}))
                .unwrap(),
        );
        let rest = token.split_once('.').unwrap().1;
        assert_eq!(
            verifier.verify_access_token(&format!("{header}.{rest}"), now),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_algorithms_hash() {
        // OIDC Core §A.3's example access token and at_hash (RS256, SHA-256).
        assert_eq!(
            at_hash(JwsAlg::Rs256, "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
        assert_eq!(at_hash(JwsAlg::Es256, "x"), at_hash(JwsAlg::Rs256, "x"));
        // Ed25519 uses SHA-512: half of it is 32 bytes, 43 base64url characters.
        assert_eq!(at_hash(JwsAlg::EdDsa, "x").len(), 43);
    }

    #[test]
    fn the_newest_active_key_signs_and_retired_keys_stay_published_until_expiry() {
        let s = |kid: &str, p, a, r: Option<i64>, e: Option<i64>| KeySchedule {
            kid: kid.into(),
            alg: JwsAlg::Es256,
            publish_at: Millis(p),
            activate_at: Millis(a),
            retire_at: r.map(Millis),
            expire_at: e.map(Millis),
        };
        let keys = [
            s("old", 0, 0, Some(100), Some(200)),
            s("new", 50, 100, None, None),
            s("next", 150, 250, None, None),
        ];
        assert_eq!(
            current_signer(&keys, JwsAlg::Es256, Millis(99))
                .unwrap()
                .kid,
            "old"
        );
        assert_eq!(
            current_signer(&keys, JwsAlg::Es256, Millis(100))
                .unwrap()
                .kid,
            "new"
        );
        assert_eq!(
            current_signer(&keys, JwsAlg::Es256, Millis(260))
                .unwrap()
                .kid,
            "next"
        );
        // Another algorithm's keys neither take over from these nor stand in for their own.
        let mut both = keys.to_vec();
        both.push(KeySchedule {
            alg: JwsAlg::Rs256,
            ..s("rsa", 0, 300, None, None)
        });
        assert_eq!(
            current_signer(&both, JwsAlg::Es256, Millis(400))
                .unwrap()
                .kid,
            "next"
        );
        assert_eq!(
            current_signer(&both, JwsAlg::Rs256, Millis(400))
                .unwrap()
                .kid,
            "rsa"
        );
        assert!(current_signer(&keys, JwsAlg::Rs256, Millis(400)).is_none());
        assert!(keys[0].is_published(Millis(150)) && !keys[0].is_published(Millis(200)));
        assert!(!keys[2].is_published(Millis(149)));
    }

    #[test]
    fn es256_signatures_are_low_s_and_the_high_s_twin_is_refused() {
        let (key, verifier) = setup(JwsAlg::Es256);
        let now = Millis::now();
        for _ in 0..32 {
            let token = key.sign(ACCESS_TOKEN_TYP, &claims(now.as_secs())).unwrap();
            let (signed, s64) = token.rsplit_once('.').unwrap();
            let sig = B64.decode(s64).unwrap();
            assert!(ecdsa_is_low_s(&sig), "we issued a high-S signature");
            verifier.verify_access_token(&token, now).unwrap();
            // n - s: the same signature's malleated twin, which a plain ECDSA verifier accepts.
            let mut twin = sig.clone();
            let mut borrow = 0i16;
            for i in (0..32).rev() {
                let mut d = i16::from(P256_ORDER[i]) - i16::from(sig[32 + i]) - borrow;
                borrow = i16::from(d < 0);
                if d < 0 {
                    d += 256;
                }
                twin[32 + i] = d as u8;
            }
            let forged = format!("{signed}.{}", B64.encode(&twin));
            let public = UnparsedPublicKey::new(
                &ECDSA_P256_SHA256_FIXED,
                key.verifying_key().unwrap().public.as_ref().to_vec(),
            );
            assert!(
                public.verify(signed.as_bytes(), &twin).is_ok(),
                "the twin must be a valid plain ECDSA signature for this test to mean anything"
            );
            assert_eq!(
                verifier.verify_access_token(&forged, now).unwrap_err(),
                JwtError::BadSignature
            );
        }
    }

    #[test]
    fn low_s_normalisation_maps_s_to_n_minus_s() {
        let mut sig = vec![0u8; 64];
        sig[32..].copy_from_slice(&P256_ORDER);
        sig[63] -= 1; // s = n - 1, high
        let low = ecdsa_low_s(&sig);
        assert_eq!(&low[32..63], &[0u8; 31]);
        assert_eq!(low[63], 1);
        assert!(ecdsa_is_low_s(&low));
        let mut half = vec![0u8; 64];
        half[32..].copy_from_slice(&P256_HALF_ORDER);
        assert!(ecdsa_is_low_s(&half));
        assert_eq!(ecdsa_low_s(&half), half);
    }

    /// One EdDSA key and its verifier for all the property tests, so that the strategies can name
    /// its kid.
    fn fixed() -> &'static (SigningKey, Verifier) {
        static FIXED: std::sync::OnceLock<(SigningKey, Verifier)> = std::sync::OnceLock::new();
        FIXED.get_or_init(|| setup(JwsAlg::EdDsa))
    }

    /// Three base64url segments whose header is a JSON object with arbitrary `alg`, `typ`, `kid`
    /// (often our key's) and extra members (the forbidden ones among them), and whose payload and
    /// signature are arbitrary: input that gets past the split and reaches the header rules, the key
    /// lookup, the signature and the claims.
    fn jws_like() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let kid = fixed().0.kid().to_owned();
        let value = prop_oneof![
            Just(serde_json::json!("EdDSA")),
            Just(serde_json::json!("ES256")),
            Just(serde_json::json!("none")),
            Just(serde_json::json!("at+jwt")),
            Just(serde_json::json!(kid.clone())),
            Just(serde_json::json!(7)),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        let alg = proptest::option::weighted(
            0.9,
            prop_oneof![3 => Just(serde_json::json!("EdDSA")), 1 => value.clone()],
        );
        let typ = proptest::option::weighted(
            0.9,
            prop_oneof![3 => Just(serde_json::json!("at+jwt")), 1 => value.clone()],
        );
        let kid = proptest::option::weighted(
            0.9,
            prop_oneof![3 => Just(serde_json::json!(kid)), 1 => value],
        );
        let extra =
            proptest::sample::select(vec!["", "", "", "jku", "jwk", "x5u", "x5c", "crit", "zip"]);
        let payload = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..120),
            Just(br#"{"iss":"x","sub":"y","aud":"z","exp":1,"iat":1,"jti":"j","client_id":"c","scope":""}"#.to_vec()),
        ];
        (
            alg,
            typ,
            kid,
            extra,
            payload,
            proptest::collection::vec(any::<u8>(), 0..80),
        )
            .prop_map(|(alg, typ, kid, extra, payload, sig)| {
                let mut h = serde_json::Map::new();
                for (k, v) in [("alg", alg), ("typ", typ), ("kid", kid)] {
                    if let Some(v) = v {
                        h.insert(k.into(), v);
                    }
                }
                if !extra.is_empty() {
                    h.insert(extra.into(), serde_json::json!("x"));
                }
                format!(
                    "{}.{}.{}",
                    B64.encode(serde_json::Value::Object(h).to_string()),
                    B64.encode(payload),
                    B64.encode(sig)
                )
            })
    }

    #[test]
    fn the_jws_strategy_reaches_every_header_rule_and_the_signature() {
        use proptest::strategy::{Strategy, ValueTree};
        let verifier = &fixed().1;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut reasons = std::collections::BTreeSet::new();
        for _ in 0..3_000 {
            let raw = jws_like().new_tree(&mut runner).unwrap().current();
            if let Err(e) = verifier.verify_access_token(&raw, Millis::now()) {
                reasons.insert(e.reason());
            }
        }
        for wanted in [
            "missing_kid",
            "unknown_kid",
            "unsupported_alg",
            "alg_mismatch",
            "forbidden_header",
            "wrong_typ",
            "bad_signature",
        ] {
            assert!(
                reasons.contains(wanted),
                "{wanted} never reached: {reasons:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn verification_never_panics_on_arbitrary_input(raw in ".{0,400}") {
            let (_, verifier) = setup(JwsAlg::EdDsa);
            let _ = verifier.verify_access_token(&raw, Millis::now());
        }

        #[test]
        fn verification_refuses_every_forged_jws(raw in jws_like()) {
            proptest::prop_assert!(fixed().1.verify_access_token(&raw, Millis::now()).is_err());
        }
    }
}
