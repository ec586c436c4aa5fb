//! DPoP proofs (RFC 9449): a client proves, per request, that it holds the private key a token is
//! bound to. This is the check of one proof (§4.3) with no I/O; remembering `jti`s (single use within
//! the window), issuing server nonces and comparing `jkt` with a token's `cnf.jkt` are the caller's.
//!
//! Refused, each with its own [`DpopError`]: anything but a compact JWS of `typ` `dpop+jwt`; a
//! symmetric or `none` `alg`, or one that disagrees with the key; a `jwk` with private members or of a
//! type we do not verify; a bad signature; a missing `jti`/`htm`/`htu`/`iat`; another method; another
//! URI (scheme, host and port compared normalised, path exactly; an `htu` with a query or fragment is
//! refused, §4.2); an `iat` outside the window; a missing or wrong `ath` when a token is presented,
//! or `nonce` when the server asked for one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::jwt::{JwsAlg, VerifyingKey};

/// The `typ` of a DPoP proof (§4.2).
pub const TYP: &str = "dpop+jwt";
/// The largest proof we parse.
pub const MAX_PROOF_LEN: usize = 4 * 1024;
/// The longest `jti` we remember.
pub const MAX_JTI_LEN: usize = 128;

/// What the proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The request's URI as we are addressed (scheme, authority, path; any query is ignored).
    pub uri: &'a str,
    /// Our clock, Unix seconds.
    pub now: i64,
    /// How old `iat` may be, seconds.
    pub max_age_s: i64,
    /// How far ahead `iat` may be, seconds (clock skew).
    pub max_skew_s: i64,
    /// The access token presented with the proof (at a resource): `ath` must be its hash.
    pub access_token: Option<&'a str>,
    /// When we require server nonces (§8): the key that made them.
    pub nonce: Option<&'a NonceKey>,
}

/// Server nonces (§8) without state: a nonce is a 5-minute window number with a MAC of it, so that
/// every node sharing the master key issues and accepts the same ones. One is good in its window and
/// the next (5 to 10 minutes).
pub struct NonceKey(aws_lc_rs::hmac::Key);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey([redacted])")
    }
}

/// The length of a nonce window, seconds.
pub const NONCE_WINDOW_S: i64 = 300;

impl NonceKey {
    pub fn derive(master: &[u8]) -> Self {
        use aws_lc_rs::hmac;
        let root = hmac::Key::new(hmac::HMAC_SHA256, master);
        let derived = hmac::sign(&root, b"portcullis dpop nonce v1");
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn for_window(&self, window: i64) -> String {
        let w = window.to_be_bytes();
        let tag = aws_lc_rs::hmac::sign(&self.0, &w);
        let mut raw = w.to_vec();
        raw.extend_from_slice(tag.as_ref().get(..16).unwrap_or_default());
        B64.encode(raw)
    }

    /// The nonce to hand out at `now` (Unix seconds).
    pub fn issue(&self, now: i64) -> String {
        self.for_window(now.div_euclid(NONCE_WINDOW_S))
    }

    /// Whether `nonce` is this window's or the previous one's.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let window = now.div_euclid(NONCE_WINDOW_S);
        [window, window - 1].into_iter().any(|w| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                self.for_window(w).as_bytes(),
                nonce.as_bytes(),
            ))
        })
    }
}

/// A proof that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's key: what a token is bound to (`cnf.jkt`).
    pub jkt: String,
    /// To be remembered (per `jkt`) for the window: a proof is good once.
    pub jti: String,
    pub iat: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("the DPoP proof is not a compact JWS with a JSON header and claims")]
    Malformed,
    #[error("the DPoP proof's typ is not dpop+jwt")]
    WrongType,
    #[error("the DPoP proof's alg is not an asymmetric algorithm we verify (ES256, RS256, EdDSA)")]
    UnsupportedAlg,
    #[error("the DPoP proof's jwk is missing, private, or not a key we verify: {0}")]
    BadKey(&'static str),
    #[error("the DPoP proof's signature is invalid")]
    BadSignature,
    #[error("the DPoP proof lacks the claim {0}")]
    MissingClaim(&'static str),
    #[error("the DPoP proof's htm is not this request's method")]
    WrongMethod,
    #[error("the DPoP proof's htu is not this request's URI")]
    WrongUri,
    #[error("the DPoP proof's iat is outside the accepted window")]
    Stale,
    #[error("the DPoP proof's ath does not match the access token")]
    WrongAth,
    #[error("the DPoP proof lacks the nonce the server gave, or carries another")]
    UseNonce,
}

/// `ath` (§4.2): base64url of the SHA-256 of the access token.
pub fn ath(access_token: &str) -> String {
    B64.encode(crate::secrets::TokenHash::of(access_token.as_bytes()).0)
}

/// Checks one proof against the request it came with.
pub fn verify(proof: &str, expected: &Expected<'_>) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(DpopError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DpopError::Malformed);
    };
    let json = |part: &str| -> Result<serde_json::Map<String, serde_json::Value>, DpopError> {
        B64.decode(part)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(DpopError::Malformed)
    };
    let header = json(h64)?;
    let text = |map: &serde_json::Map<String, serde_json::Value>, name: &str| {
        map.get(name).and_then(|v| v.as_str()).map(str::to_owned)
    };
    if !text(&header, "typ").is_some_and(|t| t.eq_ignore_ascii_case(TYP)) {
        return Err(DpopError::WrongType);
    }
    let alg = text(&header, "alg")
        .and_then(|a| JwsAlg::parse(&a))
        .ok_or(DpopError::UnsupportedAlg)?;
    // Key material comes from the proof itself here, by design; nothing else may point elsewhere.
    if ["jku", "x5u", "x5c", "crit"]
        .iter()
        .any(|h| header.contains_key(*h))
    {
        return Err(DpopError::BadKey("jku, x5u, x5c and crit are not accepted"));
    }
    let jwk = header.get("jwk").ok_or(DpopError::BadKey("no jwk"))?;
    let key = VerifyingKey::from_presented_jwk(jwk).map_err(|e| match e {
        crate::jwt::JwtError::AlgMismatch => DpopError::UnsupportedAlg,
        crate::jwt::JwtError::Key(why) => DpopError::BadKey(why),
        _ => DpopError::BadKey("not a public key we verify"),
    })?;
    if key.alg() != alg {
        return Err(DpopError::UnsupportedAlg);
    }
    let sig = B64.decode(s64).map_err(|_| DpopError::Malformed)?;
    let signed = proof
        .get(..h64.len() + 1 + p64.len())
        .ok_or(DpopError::Malformed)?;
    if !key.verifies(signed.as_bytes(), &sig) {
        return Err(DpopError::BadSignature);
    }
    let claims = json(p64)?;
    let jti = text(&claims, "jti")
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(DpopError::MissingClaim("jti"))?;
    let htm = text(&claims, "htm").ok_or(DpopError::MissingClaim("htm"))?;
    let htu = text(&claims, "htu").ok_or(DpopError::MissingClaim("htu"))?;
    let iat = claims
        .get("iat")
        .and_then(serde_json::Value::as_i64)
        .ok_or(DpopError::MissingClaim("iat"))?;
    if htm != expected.method {
        return Err(DpopError::WrongMethod);
    }
    if !same_uri(&htu, expected.uri) {
        return Err(DpopError::WrongUri);
    }
    if iat < expected.now.saturating_sub(expected.max_age_s)
        || iat > expected.now.saturating_add(expected.max_skew_s)
    {
        return Err(DpopError::Stale);
    }
    if let Some(token) = expected.access_token
        && !text(&claims, "ath").is_some_and(|a| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                a.as_bytes(),
                ath(token).as_bytes(),
            ))
        })
    {
        return Err(DpopError::WrongAth);
    }
    if let Some(key) = expected.nonce
        && !text(&claims, "nonce").is_some_and(|n| key.accepts(&n, expected.now))
    {
        return Err(DpopError::UseNonce);
    }
    Ok(Proof {
        jkt: key.thumbprint(),
        jti,
        iat,
    })
}

/// `htu` against the request URI (§4.3 step 9, RFC 3986 §6.2.2–6.2.3): scheme and host compared
/// without case, default ports dropped, the path exactly; `htu` itself may carry no query or fragment.
fn same_uri(htu: &str, ours: &str) -> bool {
    let (Ok(claimed), Ok(ours)) = (url::Url::parse(htu), url::Url::parse(ours)) else {
        return false;
    };
    claimed.query().is_none()
        && claimed.fragment().is_none()
        && claimed.scheme() == ours.scheme()
        && claimed.host_str() == ours.host_str()
        && claimed.port_or_known_default() == ours.port_or_known_default()
        && claimed.path() == ours.path()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::SigningKey;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const URI: &str = "https://server.example.com/token";

    fn expected() -> Expected<'static> {
        Expected {
            method: "POST",
            uri: "https://Server.Example.com:443/token?x=1",
            now: NOW,
            max_age_s: 60,
            max_skew_s: 5,
            access_token: None,
            nonce: None,
        }
    }

    fn proof(key: &SigningKey, header: serde_json::Value, claims: serde_json::Value) -> String {
        let serde_json::Value::Object(header) = header else {
            unreachable!()
        };
        key.sign_with_header(header, &claims).unwrap()
    }

    fn good(key: &SigningKey) -> (serde_json::Value, serde_json::Value) {
        (
            json!({"typ": "dpop+jwt", "jwk": key.public_jwk().unwrap()}),
            json!({"jti": "e1j3V_bKic8-LAEB", "htm": "POST", "htu": URI, "iat": NOW}),
        )
    }

    #[test]
    fn a_proof_of_every_algorithm_verifies_and_names_its_key() {
        for alg in [JwsAlg::Es256, JwsAlg::Rs256, JwsAlg::EdDsa] {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let (h, c) = good(&key);
            let p = verify(&proof(&key, h, c), &expected()).unwrap();
            assert_eq!(p.jti, "e1j3V_bKic8-LAEB");
            let vk = key.verifying_key().unwrap();
            assert_eq!(p.jkt, vk.thumbprint(), "{alg:?}");
        }
    }

    #[test]
    fn the_rfc_9449_example_key_has_the_rfc_thumbprint() {
        // RFC 9449 §6.1 (and the §4.1 example proof's jwk).
        let jwk = json!({"kty": "EC", "crv": "P-256",
            "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"});
        let key = VerifyingKey::from_presented_jwk(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
    }

    #[test]
    fn each_fault_has_its_error() {
        let (key, _) = SigningKey::generate(JwsAlg::Es256).unwrap();
        let (other, _) = SigningKey::generate(JwsAlg::Es256).unwrap();
        let (h, c) = good(&key);
        let with = |f: &dyn Fn(&mut serde_json::Value, &mut serde_json::Value)| {
            let (mut h, mut c) = (h.clone(), c.clone());
            f(&mut h, &mut c);
            verify(&proof(&key, h, c), &expected())
        };
        assert_eq!(
            with(&|h, _| h["typ"] = json!("JWT")),
            Err(DpopError::WrongType)
        );
        assert_eq!(
            with(&|h, _| {
                h.as_object_mut().unwrap().remove("jwk");
            }),
            Err(DpopError::BadKey("no jwk"))
        );
        assert_eq!(
            with(&|h, _| h["jwk"] = other.public_jwk().unwrap()),
            Err(DpopError::BadSignature)
        );
        assert!(matches!(
            with(&|h, _| h["jwk"]["d"] = json!("AAAA")),
            Err(DpopError::BadKey(_))
        ));
        assert!(matches!(
            with(&|h, _| h["jku"] = json!("https://evil/")),
            Err(DpopError::BadKey(_))
        ));
        assert_eq!(
            with(&|_, c| c["htm"] = json!("GET")),
            Err(DpopError::WrongMethod)
        );
        assert_eq!(
            with(&|_, c| c["htu"] = json!("https://evil.example.com/token")),
            Err(DpopError::WrongUri)
        );
        assert_eq!(
            with(&|_, c| c["htu"] = json!("https://server.example.com/token?x=1")),
            Err(DpopError::WrongUri)
        );
        assert_eq!(
            with(&|_, c| c["htu"] = json!("https://server.example.com/other")),
            Err(DpopError::WrongUri)
        );
        assert_eq!(
            with(&|_, c| c["iat"] = json!(NOW - 61)),
            Err(DpopError::Stale)
        );
        assert_eq!(
            with(&|_, c| c["iat"] = json!(NOW + 6)),
            Err(DpopError::Stale)
        );
        assert_eq!(
            with(&|_, c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            Err(DpopError::MissingClaim("jti"))
        );
        assert_eq!(
            with(&|_, c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            Err(DpopError::MissingClaim("iat"))
        );
        // alg none, HS256 and an alg that disagrees with the key.
        for alg in ["none", "HS256", "RS256"] {
            let token = proof(&key, h.clone(), c.clone());
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            let mut header = h.clone();
            header["alg"] = json!(alg);
            parts[0] = B64.encode(serde_json::to_vec(&header).unwrap());
            assert_eq!(
                verify(&parts.join("."), &expected()),
                Err(DpopError::UnsupportedAlg),
                "{alg}"
            );
        }
        for junk in [
            "",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            &"x".repeat(MAX_PROOF_LEN + 1),
        ] {
            assert!(verify(junk, &expected()).is_err(), "{junk}");
        }
    }

    #[test]
    fn ath_and_nonce_are_checked_when_asked_for() {
        let (key, _) = SigningKey::generate(JwsAlg::EdDsa).unwrap();
        let (h, mut c) = good(&key);
        let at = Expected {
            access_token: Some("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            ..expected()
        };
        assert_eq!(
            verify(&proof(&key, h.clone(), c.clone()), &at),
            Err(DpopError::WrongAth)
        );
        c["ath"] = json!(ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"));
        verify(&proof(&key, h.clone(), c.clone()), &at).unwrap();
        // RFC 9449 §7.1's example access token and its ath.
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
        let nonces = NonceKey::derive(b"a master key of thirty-two bytes");
        let nonce = Expected {
            nonce: Some(&nonces),
            ..expected()
        };
        assert_eq!(
            verify(&proof(&key, h.clone(), c.clone()), &nonce),
            Err(DpopError::UseNonce)
        );
        c["nonce"] = json!("eyJ7S_zG.eyJH0-Z.HX4w-7v");
        assert_eq!(
            verify(&proof(&key, h.clone(), c.clone()), &nonce),
            Err(DpopError::UseNonce)
        );
        c["nonce"] = json!(nonces.issue(NOW));
        verify(&proof(&key, h, c), &nonce).unwrap();
    }

    #[test]
    fn nonces_last_two_windows_and_come_from_the_key() {
        let a = NonceKey::derive(b"one master key");
        let b = NonceKey::derive(b"another master key");
        let n = a.issue(NOW);
        assert!(a.accepts(&n, NOW));
        assert!(a.accepts(&n, NOW + NONCE_WINDOW_S));
        assert!(!a.accepts(&n, NOW + 2 * NONCE_WINDOW_S));
        assert!(!a.accepts(&n, NOW - 2 * NONCE_WINDOW_S));
        assert!(!b.accepts(&n, NOW));
        assert!(!a.accepts("", NOW));
        assert_eq!(a.issue(NOW), NonceKey::derive(b"one master key").issue(NOW));
    }

    proptest::proptest! {
        #[test]
        fn any_input_is_answered(raw in "\\PC{0,300}") {
            let _ = verify(&raw, &expected());
        }
    }
}
