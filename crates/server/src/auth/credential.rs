//! The credential a request carries, read from its headers. Exactly one: a request that presents more
//! than one (a valid key beside a garbage `Authorization` header, a Bearer token beside a session
//! cookie) is refused before any of them is checked, so no credential is spent and no bad one is
//! ignored (API.md "Conventions").

use axum::http::{HeaderMap, Method, header};
use portcullis_core::apikeys::ApiKey;

use crate::error::{Error, Result};
use crate::http::cookies::session_cookie;
use crate::sessions::SiteHints;

/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What the request's headers say about where it came from.
pub fn site_hints(headers: &HeaderMap) -> SiteHints<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    SiteHints {
        sec_fetch_site: get("sec-fetch-site"),
        origin: get("origin"),
        referer: get("referer"),
    }
}

pub fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

/// One credential, as presented.
pub enum Credential<'a> {
    /// `X-API-Key`, or `Authorization: Bearer` with our key shape.
    ApiKey(&'a str),
    /// `Authorization: Bearer <access token>`.
    Bearer(&'a str),
    /// `Authorization: DPoP <access token>` with its `DPoP` proof (RFC 9449 §7.1): checked against
    /// the request's method and URI (`Auth::authenticate_at`).
    Dpop { token: &'a str, proof: &'a str },
    /// An RFC 9421 signed request (`Signature-Input` / `Signature`): verified with the whole request
    /// (its target, and its body against `Content-Digest`), so by the signature middleware on our own
    /// API and by forward auth, never from the headers alone.
    Signature(&'a HeaderMap),
    /// The session cookie; unsafe methods also need the CSRF token and a same-site origin.
    Session {
        cookie: &'a str,
        unsafe_method: bool,
        csrf: Option<&'a str>,
        site: SiteHints<'a>,
    },
}

/// Does the request carry an RFC 9421 signature (either of its two fields)?
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers.contains_key("signature-input") || headers.contains_key("signature")
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn bearer(value: &axum::http::HeaderValue) -> Result<&str> {
    let value = value
        .to_str()
        .map_err(|_| Error::InvalidToken("malformed"))?;
    portcullis_core::bearer::token(value).map_err(|e| Error::InvalidToken(e.reason()))
}

/// The request's `DPoP` proof: `None` without one; refused when there are several or it is not text.
pub fn dpop_proof(headers: &HeaderMap) -> Result<Option<&str>> {
    let mut proofs = headers.get_all("dpop").iter();
    match (proofs.next(), proofs.next()) {
        (None, _) => Ok(None),
        (Some(p), None) => p
            .to_str()
            .map(Some)
            .map_err(|_| Error::InvalidDpopProof("malformed")),
        (Some(_), Some(_)) => Err(Error::InvalidDpopProof("one_dpop_header")),
    }
}

/// The token of `Authorization: DPoP <token>`; `None` for another scheme.
fn dpop_scheme(value: &axum::http::HeaderValue) -> Result<Option<&str>> {
    let value = value
        .to_str()
        .map_err(|_| Error::InvalidToken("malformed"))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("dpop") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > 8 * 1024 || token.contains(' ') {
        return Err(Error::InvalidToken("malformed"));
    }
    Ok(Some(token))
}

/// The one credential of a request; `Unauthenticated` when it carries none.
pub fn from_headers<'a>(method: &Method, headers: &'a HeaderMap) -> Result<Credential<'a>> {
    let api_key = headers.get("x-api-key");
    let authorization = headers.get(header::AUTHORIZATION);
    let cookie = session_cookie(headers)?;
    let signed = is_signed(headers);
    let presented = usize::from(api_key.is_some())
        + usize::from(authorization.is_some())
        + usize::from(cookie.is_some())
        + usize::from(signed);
    if presented > 1
        || headers.get_all("x-api-key").iter().count() > 1
        || headers.get_all(header::AUTHORIZATION).iter().count() > 1
    {
        return Err(Error::MultipleCredentials);
    }
    if signed {
        return Ok(Credential::Signature(headers));
    }
    if let Some(key) = api_key {
        return key
            .to_str()
            .map(Credential::ApiKey)
            .map_err(|_| Error::InvalidApiKey);
    }
    if let Some(value) = authorization {
        if let Some(token) = dpop_scheme(value)? {
            let proof = dpop_proof(headers)?.ok_or(Error::InvalidDpopProof("one_dpop_header"))?;
            return Ok(Credential::Dpop { token, proof });
        }
        let token = bearer(value)?;
        return Ok(if ApiKey::looks_like_key(token) {
            Credential::ApiKey(token)
        } else {
            Credential::Bearer(token)
        });
    }
    match cookie {
        Some(cookie) => Ok(Credential::Session {
            cookie,
            unsafe_method: is_unsafe(method),
            csrf: headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()),
            site: site_hints(headers),
        }),
        None => Err(Error::Unauthenticated),
    }
}
