//! `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): a client authenticates with a JWT it
//! signed with a key of its registered `jwks` (or the JWK Set at its `jwks_uri`, fetched by the
//! SSRF-guarded fetcher and cached). `iss` and `sub` are the client, `aud` this server (the issuer or
//! one of its endpoints), the lifetime at most five minutes, and the `jti` good once until `exp`.

use portcullis_core::clock::Millis;
use portcullis_core::oauth::client::AuthMethod;
use serde_json::Value;

use super::OAuth;
use crate::oauth::clients::{Client, ClientAuthFailed, client_keys};
use crate::signatures::FirstUse;

/// RFC 7523 §2.2's `client_assertion_type`.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The longest lifetime an assertion may have (s).
pub const MAX_LIFETIME_S: i64 = 300;
/// Clock skew allowed on `iat`, `nbf` and `exp` (s).
const SKEW_S: i64 = 30;
/// The largest assertion parsed.
const MAX_ASSERTION_LEN: usize = 8 * 1024;

type Claims = serde_json::Map<String, Value>;

/// The client id an assertion names (its `sub`, which must equal `iss`), unverified: only to find
/// the client whose keys then verify it.
pub fn asserted_client(assertion: &str) -> Option<String> {
    let (_, claims) = decode(assertion)?;
    let iss = claims.get("iss")?.as_str()?;
    let sub = claims.get("sub")?.as_str()?;
    (iss == sub && !sub.is_empty() && sub.len() <= 256).then(|| sub.to_owned())
}

fn decode(assertion: &str) -> Option<(Claims, Claims)> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    if assertion.len() > MAX_ASSERTION_LEN {
        return None;
    }
    let mut parts = assertion.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let json =
        |part: &str| -> Option<Claims> { serde_json::from_slice(&B64.decode(part).ok()?).ok() };
    Some((json(h)?, json(p)?))
}

impl OAuth {
    /// The audiences an assertion may name: the issuer and the endpoints that take client
    /// authentication.
    fn assertion_audiences(&self) -> [String; 6] {
        let at = |p: &str| format!("{}{p}", self.issuer);
        [
            self.issuer.clone(),
            at("/oauth2/token"),
            at("/oauth2/par"),
            at("/oauth2/introspect"),
            at("/oauth2/revoke"),
            at("/oauth2/device_authorization"),
        ]
    }

    /// Checks `assertion` as `client`'s authentication.
    pub(super) async fn verify_assertion(
        &self,
        client: &Client,
        assertion: &str,
    ) -> Result<(), &'static str> {
        if client.auth_method != AuthMethod::PrivateKeyJwt {
            return Err("wrong_auth_method");
        }
        let (header, claims) = decode(assertion).ok_or("malformed_assertion")?;
        let signed = assertion
            .rsplit_once('.')
            .map(|(s, _)| s)
            .ok_or("malformed_assertion")?;
        let sig = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(assertion.rsplit('.').next().unwrap_or_default())
                .map_err(|_| "malformed_assertion")?
        };
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(portcullis_core::jwt::JwsAlg::parse)
            .ok_or("unsupported_alg")?;
        let kid = header.get("kid").and_then(Value::as_str);
        let verified = |jwks: &Value| -> Result<bool, &'static str> {
            let keys = client_keys(jwks).map_err(|_| "bad_jwks")?;
            Ok(keys
                .iter()
                .filter(|k| k.alg() == alg && kid.is_none_or(|kid| k.kid() == kid))
                .any(|k| k.verifies(signed.as_bytes(), &sig)))
        };
        let ok = match (&client.settings.jwks, &client.settings.jwks_uri) {
            (Some(jwks), _) => verified(jwks)?,
            (None, Some(uri)) => {
                let jwks = self
                    .clients
                    .fetcher()
                    .json(uri)
                    .await
                    .map_err(|_| "jwks_uri_unavailable")?;
                if verified(&jwks)? {
                    true
                } else {
                    // The client may have rotated its keys since we cached them: look once more.
                    self.clients.fetcher().forget(uri);
                    let jwks = self
                        .clients
                        .fetcher()
                        .json(uri)
                        .await
                        .map_err(|_| "jwks_uri_unavailable")?;
                    verified(&jwks)?
                }
            }
            (None, None) => return Err("no_keys"),
        };
        if !ok {
            return Err("bad_assertion_signature");
        }
        let id = client.public_id.as_str();
        let text = |n: &str| claims.get(n).and_then(Value::as_str);
        if text("iss") != Some(id) || text("sub") != Some(id) {
            return Err("assertion_not_by_client");
        }
        let audiences = self.assertion_audiences();
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err("assertion_wrong_audience");
        }
        let now = Millis::now().as_secs();
        let num = |n: &str| claims.get(n).and_then(Value::as_i64);
        let exp = num("exp").ok_or("assertion_without_exp")?;
        if exp + SKEW_S <= now {
            return Err("assertion_expired");
        }
        let start = num("iat").unwrap_or(now).min(now);
        if exp - start > MAX_LIFETIME_S + SKEW_S
            || num("iat").is_some_and(|iat| iat > now + SKEW_S)
            || num("nbf").is_some_and(|nbf| nbf > now + SKEW_S)
        {
            return Err("assertion_lifetime");
        }
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or("assertion_without_jti")?;
        match self
            .assertion_jtis
            .first_use(
                &format!("client-assertion:{id}"),
                jti.as_bytes(),
                now,
                exp + SKEW_S,
            )
            .await
        {
            FirstUse::Yes => Ok(()),
            FirstUse::Replayed => Err("assertion_replayed"),
            FirstUse::Unavailable => Err("assertion_cache_full"),
        }
    }

    /// A client authenticating with an assertion: found by the `sub` it names, then verified.
    pub(super) async fn assertion_client(
        &self,
        id: &str,
        assertion: &str,
    ) -> Result<std::sync::Arc<Client>, ClientAuthFailed> {
        let failed = |reason| ClientAuthFailed {
            basic: false,
            client_id: Some(id.chars().take(64).collect()),
            reason,
        };
        let client = match self.clients.get(id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(failed("unknown_client")),
            Err(_) => return Err(failed("store_error")),
        };
        self.verify_assertion(&client, assertion)
            .await
            .map_err(failed)?;
        Ok(client)
    }
}
