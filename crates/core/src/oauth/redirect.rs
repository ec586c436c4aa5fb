//! Redirect URIs: what a client may register, and when a presented `redirect_uri` is one of them.
//!
//! * Registered URIs are absolute, carry no fragment (RFC 6749 §3.1.2) and no user info, are at most
//!   [`MAX_LEN`] bytes, and are `https`, or `http` on a loopback IP literal (`127.0.0.1`, `[::1]`:
//!   native apps, RFC 8252 §7.3; `localhost` is refused, §8.3), or a private-use scheme with a dot in
//!   it (`com.example.app:/callback`, §7.1). Anything else (`http` to a host, `javascript:`, `data:`,
//!   `file:`) is refused at registration.
//! * A presented URI matches only by exact string comparison (RFC 9700 §4.1.3), except that a
//!   loopback URI may come with any port (RFC 8252 §7.3): everything but the port must still be
//!   identical, byte for byte.

/// Longest redirect URI accepted, registered or presented.
pub const MAX_LEN: usize = 2048;

const LOOPBACK_HOSTS: [&str; 2] = ["http://127.0.0.1", "http://[::1]"];

/// Why a redirect URI cannot be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    #[error("redirect URIs are at most 2048 bytes")]
    TooLong,
    #[error("a redirect URI must be an absolute URI")]
    NotAbsolute,
    #[error("a redirect URI must not have a fragment")]
    Fragment,
    #[error("a redirect URI must not carry a user name or password")]
    UserInfo,
    #[error(
        "http is allowed only for loopback redirect URIs (http://127.0.0.1 or http://[::1], any port); use https"
    )]
    InsecureHttp,
    #[error(
        "a redirect URI must be https, loopback http, or a private-use scheme with a dot (com.example.app:/callback)"
    )]
    Scheme,
}

/// A redirect URI as registered: checked, and kept exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub struct RedirectUri(String);

impl RedirectUri {
    /// Checks a URI a client wants to register.
    pub fn parse(raw: &str) -> Result<Self, RedirectError> {
        if raw.len() > MAX_LEN {
            return Err(RedirectError::TooLong);
        }
        if raw.contains('#') {
            return Err(RedirectError::Fragment);
        }
        if raw
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(RedirectError::NotAbsolute);
        }
        let url = url::Url::parse(raw).map_err(|_| RedirectError::NotAbsolute)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RedirectError::UserInfo);
        }
        match url.scheme() {
            "https" if url.host_str().is_some_and(|h| !h.is_empty()) => {}
            "https" => return Err(RedirectError::NotAbsolute),
            "http" if loopback(raw).is_some() => {}
            "http" => return Err(RedirectError::InsecureHttp),
            scheme if scheme.contains('.') => {}
            _ => return Err(RedirectError::Scheme),
        }
        Ok(Self(raw.to_owned()))
    }

    /// Is `presented` (a request's `redirect_uri`) this URI? Exact, but for a loopback URI's port.
    pub fn matches(&self, presented: &str) -> bool {
        if presented.len() > MAX_LEN {
            return false;
        }
        match (loopback(&self.0), loopback(presented)) {
            (Some(registered), Some(asked)) => registered == asked,
            _ => self.0 == presented,
        }
    }

    /// Is this a loopback URI (a native app's, whose port varies)?
    pub fn is_loopback(&self) -> bool {
        loopback(&self.0).is_some()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<RedirectUri> for String {
    fn from(r: RedirectUri) -> String {
        r.0
    }
}

/// A loopback `http` URI without its port: the host prefix and what follows the port. `None` when
/// `raw` is not one (another host, or a port that is not 1 to 5 digits of a `u16`).
fn loopback(raw: &str) -> Option<(&'static str, &str)> {
    LOOPBACK_HOSTS.iter().find_map(|host| {
        let after = raw.strip_prefix(host)?;
        let rest = match after.strip_prefix(':') {
            Some(port_and_rest) => {
                let digits = port_and_rest.bytes().take_while(u8::is_ascii_digit).count();
                let (port, rest) = port_and_rest.split_at_checked(digits)?;
                if !(1..=5).contains(&digits) || port.parse::<u16>().is_err() {
                    return None;
                }
                rest
            }
            None => after,
        };
        (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')).then_some((*host, rest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(raw: &str) -> RedirectUri {
        RedirectUri::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn what_may_be_registered() {
        for good in [
            "https://app.example/callback",
            "https://app.example/cb?tenant=a",
            "https://app.example:8443/cb",
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53120/cb",
            "http://[::1]:8080/oauth/callback",
            "com.example.app:/oauth2redirect",
            "com.example.app://callback",
        ] {
            ok(good);
        }
        for (bad, why) in [
            ("/callback", RedirectError::NotAbsolute),
            ("app.example/callback", RedirectError::NotAbsolute),
            ("https://app.example/cb#frag", RedirectError::Fragment),
            ("https://app.example/cb#", RedirectError::Fragment),
            ("https://user:pw@app.example/cb", RedirectError::UserInfo),
            ("https://user@app.example/cb", RedirectError::UserInfo),
            ("http://app.example/cb", RedirectError::InsecureHttp),
            ("http://localhost:8080/cb", RedirectError::InsecureHttp),
            ("http://127.0.0.2/cb", RedirectError::InsecureHttp),
            (
                "http://127.0.0.1.evil.example/cb",
                RedirectError::InsecureHttp,
            ),
            ("http://127.0.0.1:99999/cb", RedirectError::NotAbsolute),
            ("javascript:alert(1)", RedirectError::Scheme),
            ("data:text/html,hi", RedirectError::Scheme),
            ("file:///etc/passwd", RedirectError::Scheme),
            ("myapp:/callback", RedirectError::Scheme),
            ("https://app.example/c b", RedirectError::NotAbsolute),
            ("https://app.example/cb\n", RedirectError::NotAbsolute),
        ] {
            assert_eq!(RedirectUri::parse(bad), Err(why), "{bad}");
        }
        let long = format!("https://app.example/{}", "a".repeat(MAX_LEN));
        assert_eq!(RedirectUri::parse(&long), Err(RedirectError::TooLong));
    }

    #[test]
    fn presented_uris_match_exactly() {
        let r = ok("https://app.example/cb?x=1");
        assert!(r.matches("https://app.example/cb?x=1"));
        for other in [
            "https://app.example/cb?x=1&y=2",
            "https://app.example/cb?x=2",
            "https://app.example/cb",
            "https://app.example/cb/?x=1",
            "https://APP.example/cb?x=1",
            "https://app.example:443/cb?x=1",
            "https://app.example/CB?x=1",
            "https://app.example/cb?x=1#",
            "https://app.example/cb/../cb?x=1",
            "https://app.example.evil.example/cb?x=1",
            "http://app.example/cb?x=1",
        ] {
            assert!(!r.matches(other), "{other}");
        }
    }

    #[test]
    fn loopback_uris_match_on_any_port_and_nothing_else() {
        let r = ok("http://127.0.0.1/cb");
        assert!(r.is_loopback());
        for same in [
            "http://127.0.0.1/cb",
            "http://127.0.0.1:1/cb",
            "http://127.0.0.1:65535/cb",
        ] {
            assert!(r.matches(same), "{same}");
        }
        for other in [
            "http://127.0.0.1:65536/cb",
            "http://127.0.0.1:/cb",
            "http://127.0.0.1:123456/cb",
            "http://127.0.0.1:8080/cb2",
            "http://127.0.0.1:8080/cb?x",
            "http://127.0.0.1:8080@evil.example/cb",
            "http://[::1]:8080/cb",
            "http://localhost:8080/cb",
            "https://127.0.0.1:8080/cb",
        ] {
            assert!(!r.matches(other), "{other}");
        }
        let v6 = ok("http://[::1]:4000/oauth");
        assert!(v6.matches("http://[::1]:5000/oauth"));
        assert!(v6.matches("http://[::1]/oauth"));
        assert!(!v6.matches("http://127.0.0.1:5000/oauth"));
        // A registered https URI never gets the loopback leniency.
        assert!(!ok("https://app.example/cb").is_loopback());
    }

    proptest! {
        /// Whatever is presented, a non-loopback URI matches only itself.
        #[test]
        fn only_the_same_string_matches(path in "[a-z0-9/._~-]{0,30}", presented in ".{0,60}") {
            let r = ok(&format!("https://app.example/{path}"));
            prop_assert_eq!(r.matches(&presented), presented == r.as_str());
        }

        /// A loopback URI matches the same URI with any port, and nothing that differs elsewhere.
        #[test]
        fn loopback_differs_only_in_the_port(
            path in "/[a-z0-9]{0,12}",
            port in proptest::option::of(any::<u16>()),
            tail in "[a-z0-9/?=]{0,6}",
        ) {
            let r = ok(&format!("http://127.0.0.1{path}"));
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let presented = format!("http://127.0.0.1{port}{path}{tail}");
            prop_assert_eq!(r.matches(&presented), tail.is_empty());
        }

        /// The registration parser takes anything without panicking; what it accepts has no fragment,
        /// no whitespace and fits the limit.
        #[test]
        fn the_registration_parser_takes_anything(raw in ".{0,80}") {
            if let Ok(r) = RedirectUri::parse(&raw) {
                prop_assert!(!r.as_str().contains('#'));
                prop_assert!(r.as_str().len() <= MAX_LEN);
                prop_assert!(!r.as_str().bytes().any(|b| b.is_ascii_whitespace()));
            }
        }
    }
}
