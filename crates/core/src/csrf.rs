//! CSRF defence for cookie-authenticated requests (OWASP CSRF cheat sheet; ASVS 5.0 V3.5), in two
//! independent layers:
//!
//! * **A token bound to the session**: `HMAC-SHA256(key = the session's cookie token, "portcullis csrf
//!   v1")`, base64url. Only a page that can read our responses (same origin) learns it; a token from
//!   another session never matches; nothing extra is stored, and it changes when the session does.
//! * **Fetch Metadata / Origin**: a request that the browser marks as coming from another site is
//!   refused whatever it carries. `Sec-Fetch-Site` decides when present; else `Origin`; else `Referer`.
//!   Requests with none of them (non-browser clients) still need the token.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const LABEL: &[u8] = b"portcullis csrf v1";

/// The CSRF token of the session whose cookie token is `session_token`.
pub fn token_for(session_token: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, LABEL).as_ref())
}

/// Does `presented` belong to the session? Constant-time.
pub fn token_matches(session_token: &str, presented: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(presented.trim()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, session_token.as_bytes());
    hmac::verify(&key, LABEL, &tag).is_ok()
}

/// The origin (`scheme://host[:port]`) of an absolute URL, lowercased; `None` when it has none.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // No userinfo in an origin.
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return None;
    }
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    ))
}

/// Is this request, by the headers the browser sets, from another site than `ours` (an origin)?
/// `same-site` counts as cross-site: a sibling subdomain is not us.
pub fn is_cross_site(
    sec_fetch_site: Option<&str>,
    origin: Option<&str>,
    referer: Option<&str>,
    ours: &str,
) -> bool {
    if let Some(site) = sec_fetch_site {
        return !matches!(site.trim(), "same-origin" | "none");
    }
    if let Some(origin) = origin {
        return origin_of(origin).as_deref() != Some(ours);
    }
    if let Some(referer) = referer {
        return origin_of(referer).as_deref() != Some(ours);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "https://auth.example.com";

    #[test]
    fn tokens_are_bound_to_their_session() {
        let t = token_for("pcs_session-one");
        assert!(token_matches("pcs_session-one", &t));
        assert!(!token_matches("pcs_session-two", &t));
        assert!(!token_matches("pcs_session-one", ""));
        assert!(!token_matches("pcs_session-one", "not base64 !"));
        assert!(!token_matches("pcs_session-one", &t[..t.len() - 2]));
        assert_eq!(t, token_for("pcs_session-one"));
    }

    #[test]
    fn fetch_metadata_decides_first() {
        assert!(!is_cross_site(
            Some("same-origin"),
            Some("https://evil.example"),
            None,
            OURS
        ));
        assert!(!is_cross_site(Some("none"), None, None, OURS));
        assert!(is_cross_site(Some("cross-site"), Some(OURS), None, OURS));
        assert!(is_cross_site(Some("same-site"), None, None, OURS));
    }

    #[test]
    fn origin_then_referer_when_fetch_metadata_is_missing() {
        assert!(!is_cross_site(
            None,
            Some("https://AUTH.example.com"),
            None,
            OURS
        ));
        assert!(is_cross_site(
            None,
            Some("https://auth.example.com:8443"),
            None,
            OURS
        ));
        assert!(is_cross_site(None, Some("null"), None, OURS));
        assert!(is_cross_site(
            None,
            Some("http://auth.example.com"),
            None,
            OURS
        ));
        assert!(!is_cross_site(
            None,
            None,
            Some("https://auth.example.com/account?x=1"),
            OURS
        ));
        assert!(is_cross_site(
            None,
            None,
            Some("https://evil.example/auth.example.com"),
            OURS
        ));
        assert!(is_cross_site(
            None,
            None,
            Some("https://auth.example.com@evil.example/"),
            OURS
        ));
        assert!(
            !is_cross_site(None, None, None, OURS),
            "non-browser clients rely on the token"
        );
    }
}
