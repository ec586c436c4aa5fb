//! Checking an ID token from an upstream OpenID provider, as its client (OIDC Core §3.1.3.7): the
//! signature by a key of the provider's JWKS under an allowed algorithm (never `none`, never HMAC,
//! never the one the token's header merely claims), then `iss`, `aud`, `azp`, `exp`, `iat` and
//! `nonce`. Pure: the caller brings the keys and the clock.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::jwt::{JwsAlg, MAX_TOKEN_LEN, VerifyingKey};

/// What the token must say.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    /// The algorithms we accept (of RS256, ES256, EdDSA).
    pub algs: &'a [JwsAlg],
    pub now_s: i64,
    pub leeway_s: i64,
}

/// Why an ID token was refused (the audit's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenError {
    Malformed,
    /// `alg` is `none`, HMAC, or not one we accept.
    Algorithm,
    /// No key of the provider's JWKS has this `kid` (and algorithm): the caller may refetch once.
    UnknownKey,
    Signature,
    Issuer,
    Audience,
    Expired,
    IssuedInFuture,
    Nonce,
    NoSubject,
}

impl IdTokenError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "id_token_malformed",
            Self::Algorithm => "id_token_algorithm",
            Self::UnknownKey => "id_token_unknown_key",
            Self::Signature => "id_token_signature",
            Self::Issuer => "id_token_issuer",
            Self::Audience => "id_token_audience",
            Self::Expired => "id_token_expired",
            Self::IssuedInFuture => "id_token_iat",
            Self::Nonce => "id_token_nonce",
            Self::NoSubject => "id_token_sub",
        }
    }
}

/// The claims of `token` once everything checks out.
pub fn verify(
    token: &str,
    keys: &[VerifyingKey],
    want: &Expected<'_>,
) -> Result<serde_json::Map<String, Value>, IdTokenError> {
    use IdTokenError as E;
    if token.len() > MAX_TOKEN_LEN {
        return Err(E::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(E::Malformed);
    };
    let json = |part: &str| -> Result<serde_json::Map<String, Value>, IdTokenError> {
        B64.decode(part)
            .ok()
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .ok_or(E::Malformed)
    };
    let header = json(h64)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(JwsAlg::parse)
        .filter(|a| want.algs.contains(a))
        .ok_or(E::Algorithm)?;
    if header.contains_key("crit") {
        return Err(E::Malformed);
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&VerifyingKey> = keys
        .iter()
        .filter(|k| k.alg() == alg && (kid.is_none() || k.kid().is_empty() || Some(k.kid()) == kid))
        .collect();
    if candidates.is_empty() {
        return Err(E::UnknownKey);
    }
    let sig = B64.decode(s64).map_err(|_| E::Malformed)?;
    let signed = token
        .get(..h64.len() + 1 + p64.len())
        .ok_or(E::Malformed)?
        .as_bytes();
    if !candidates.iter().any(|k| k.verifies(signed, &sig)) {
        return Err(E::Signature);
    }
    let claims = json(p64)?;
    let text = |n: &str| claims.get(n).and_then(Value::as_str);
    if text("iss") != Some(want.issuer) {
        return Err(E::Issuer);
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(E::Audience),
    };
    if !audiences.contains(&want.client_id) {
        return Err(E::Audience);
    }
    // §3.1.3.7 (4, 5): with several audiences, or an azp at all, azp must be us.
    match text("azp") {
        Some(azp) if azp != want.client_id => return Err(E::Audience),
        None if audiences.len() > 1 => return Err(E::Audience),
        _ => {}
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(E::Expired)?;
    if exp + want.leeway_s <= want.now_s {
        return Err(E::Expired);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(E::Malformed)?;
    if iat > want.now_s + want.leeway_s {
        return Err(E::IssuedInFuture);
    }
    let nonce = text("nonce").ok_or(E::Nonce)?;
    if !bool::from(nonce.as_bytes().ct_eq(want.nonce.as_bytes())) {
        return Err(E::Nonce);
    }
    if text("sub").is_none_or(|s| s.is_empty() || s.len() > 255) {
        return Err(E::NoSubject);
    }
    Ok(claims)
}
