//! The cookies we set, and the one strict parser that reads them. Both are `__Host-` cookies: browsers
//! insist on `Secure`, `Path=/` and no `Domain`, so a sibling subdomain cannot set or overwrite them.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::error::Error;

/// The browser session (`sessions`).
pub const SESSION_COOKIE: &str = "__Host-portcullis";
/// The known device (see `portcullis_core::devices`).
pub const DEVICE_COOKIE: &str = "__Host-portcullis-device";

/// The cookie `name` appears more than once.
#[derive(Debug)]
pub struct Duplicate;

/// The value of the cookie `name`, if the request carries it exactly once. Two cookies of one name
/// (one planted by a sibling site, say) are refused rather than guessed between.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Duplicate> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for pair in value.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n == name {
                if found.is_some() {
                    return Err(Duplicate);
                }
                found = Some(v.trim_matches('"'));
            }
        }
    }
    Ok(found)
}

/// The value of our session cookie.
pub fn session_cookie(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    cookie_value(headers, SESSION_COOKIE)
        .map_err(|Duplicate| Error::InvalidSession("duplicate_cookie"))
}

/// The `Set-Cookie` value that starts a session in the browser.
pub fn set_session_cookie(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Lax"
    ))
    .ok()
}

/// Tells the browser to drop the session cookie.
pub fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-portcullis=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0",
    )
}

/// The `Set-Cookie` value that remembers this device for `max_age_s`.
pub fn set_device_cookie(value: &str, max_age_s: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age_s}"
    ))
    .ok()
}

/// The known-device cookie of the request, if it carries exactly one.
pub fn device_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_value(headers, DEVICE_COOKIE).ok().flatten()
}

/// Binds an upstream sign-in to the browser that started it: `SameSite=Lax`, so that the
/// provider's top-level redirect back carries it; ten minutes, like the sign-in.
pub const UPSTREAM_COOKIE: &str = "__Host-portcullis-upstream";

pub fn set_upstream_cookie(value: &str, max_age_s: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{UPSTREAM_COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age_s}"
    ))
    .ok()
}

pub fn clear_upstream_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-portcullis-upstream=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0",
    )
}

/// The upstream binding cookie of the request, if it carries exactly one.
pub fn upstream_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie_value(headers, UPSTREAM_COOKIE).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(values: &[String]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append(header::COOKIE, v);
            }
        }
        h
    }

    proptest! {
        /// Arbitrary Cookie headers never panic the parser.
        #[test]
        fn the_cookie_parser_takes_anything(values in proptest::collection::vec(".{0,200}", 0..4)) {
            let _ = session_cookie(&headers(&values));
        }

        /// Among other cookies, in any order and over several headers, ours is found once, and two of
        /// ours are refused rather than guessed between.
        #[test]
        fn our_cookie_is_found_exactly_once(
            others in proptest::collection::vec(("[A-Za-z_-]{1,20}", "[A-Za-z0-9%_.-]{0,30}"), 0..6),
            value in "pcs_[A-Za-z0-9_-]{43}",
            at in 0usize..6,
            split in any::<bool>(),
            twice in any::<bool>(),
        ) {
            let mut pairs: Vec<String> = others
                .iter()
                .filter(|(n, _)| n != SESSION_COOKIE)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let at = at.min(pairs.len());
            pairs.insert(at, format!("{SESSION_COOKIE}={value}"));
            if twice {
                pairs.push(format!("{SESSION_COOKIE}={value}"));
            }
            let values = if split { pairs.clone() } else { vec![pairs.join("; ")] };
            match session_cookie(&headers(&values)) {
                Ok(found) => {
                    prop_assert!(!twice);
                    prop_assert_eq!(found, Some(value.as_str()));
                }
                Err(e) => {
                    prop_assert!(twice);
                    prop_assert!(matches!(e, Error::InvalidSession("duplicate_cookie")));
                }
            }
        }
    }
}
