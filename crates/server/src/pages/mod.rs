//! The pages a person uses: `/login` and `/account`. Server-rendered (minijinja, autoescaped), plain
//! HTML forms and one stylesheet, no script: they work without JavaScript and under a CSP that allows
//! nothing inline. Templates are built in; an operator may override any of them by putting a file of
//! the same name in `templates_dir`.
//!
//! Every form post is cookie-authenticated, so each one is checked like the API's unsafe requests: the
//! session's CSRF token (a hidden `csrf_token` field) and a same-site origin. A missing or dead session
//! sends the browser to `/login`, which brings it back (`return_to`, same-origin paths only).

mod account;
pub(crate) mod authorize;
mod device;
mod email;
mod login;
mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Environment, context};
use portcullis_core::clock::Millis;

use crate::app::state::AppState;
use crate::error::Error;
use crate::http::cookies::{clear_session_cookie, session_cookie};
use crate::sessions::CookieSession;

/// Pages allow our stylesheet and nothing else; forms post only to us; nobody may frame them.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                        frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("login.html", include_str!("../../templates/login.html")),
    ("account.html", include_str!("../../templates/account.html")),
    ("message.html", include_str!("../../templates/message.html")),
    ("consent.html", include_str!("../../templates/consent.html")),
    (
        "form_post.html",
        include_str!("../../templates/form_post.html"),
    ),
    ("logout.html", include_str!("../../templates/logout.html")),
    ("device.html", include_str!("../../templates/device.html")),
    (
        "register.html",
        include_str!("../../templates/register.html"),
    ),
    ("verify.html", include_str!("../../templates/verify.html")),
    ("reset.html", include_str!("../../templates/reset.html")),
];
const STYLESHEET: &str = include_str!("../../assets/portcullis.css");

/// What a page handler sees: the services, and the templates.
#[derive(Clone)]
pub struct PageState {
    app: AppState,
    pages: Arc<Pages>,
}

impl std::ops::Deref for PageState {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

/// The page templates, with the operator's overrides.
pub struct Pages {
    env: Environment<'static>,
    stylesheet: String,
}

impl Pages {
    /// Loads the templates; a file in `dir` with a built-in template's name replaces it. Other files
    /// in `dir` are never read.
    pub fn new(dir: Option<PathBuf>) -> Result<Self, String> {
        let mut env = Environment::new();
        for (name, builtin) in TEMPLATES {
            let source = match &dir {
                Some(d) if d.join(name).is_file() => std::fs::read_to_string(d.join(name))
                    .map_err(|e| format!("cannot read template {}: {e}", d.join(name).display()))?,
                _ => (*builtin).to_owned(),
            };
            env.add_template_owned(*name, source)
                .map_err(|e| format!("template {name} does not parse: {e}"))?;
        }
        let stylesheet = match &dir {
            Some(d) if d.join("portcullis.css").is_file() => {
                std::fs::read_to_string(d.join("portcullis.css"))
                    .map_err(|e| format!("cannot read portcullis.css: {e}"))?
            }
            _ => STYLESHEET.to_owned(),
        };
        Ok(Self { env, stylesheet })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, Error> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(Error::internal)
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    // Browsers send `Origin: null` on our own form posts under `no-referrer`, which a browser without
    // Fetch Metadata would fail the CSRF check with; `same-origin` keeps the origin on our posts and
    // still tells no other site where the user came from.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

pub(crate) fn page(
    state: &PageState,
    status: StatusCode,
    name: &str,
    ctx: minijinja::Value,
) -> Response {
    match state.pages.render(name, ctx) {
        Ok(body) => html(status, body),
        Err(e) => e.into_response(),
    }
}

/// [`page`] for a form whose post may end, after our redirects, at `targets` (an OAuth client's
/// redirect URI): browsers hold every redirect of a form submission to `form-action`, so those
/// origins are allowed beside ours, and nothing else is.
pub(crate) fn page_posting_to(
    state: &PageState,
    status: StatusCode,
    name: &str,
    ctx: minijinja::Value,
    targets: &[String],
) -> Response {
    let mut res = page(state, status, name, ctx);
    if !targets.is_empty() && res.status() == status {
        let csp = PAGE_CSP.replace(
            "form-action 'self'",
            &format!("form-action 'self' {}", targets.join(" ")),
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    res
}

/// The CSP source of a redirect URI: its origin, or `scheme:` for a private-use scheme.
pub(crate) fn csp_source(uri: &str) -> Option<String> {
    let u = url::Url::parse(uri).ok()?;
    let source = match u.origin() {
        o @ url::Origin::Tuple(..) => o.ascii_serialization(),
        url::Origin::Opaque(_) => format!("{}:", u.scheme()),
    };
    // Only what a CSP source may hold; anything odd is left out rather than escaped.
    source
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '-' | '[' | ']' | '+'))
        .then_some(source)
}

fn message(
    state: &PageState,
    status: StatusCode,
    heading: &str,
    text: &str,
    next: &str,
) -> Response {
    page(
        state,
        status,
        "message.html",
        context! { heading, message => text, next },
    )
}

/// The longest `return_to`: room for an authorization request (a 2048-byte redirect URI, state,
/// nonce, scopes) coming back after the login.
pub const MAX_RETURN_TO: usize = 8192;

/// `return_to` is honoured only for a path on this origin: `/…`, not `//host` or `/\host` (which
/// browsers read as another host), without control characters. Anything else goes to `/account`.
pub fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(r)
            if r.starts_with('/')
                && !r.starts_with("//")
                && !r.starts_with("/\\")
                && r.len() <= MAX_RETURN_TO
                && !r.chars().any(|c| c.is_control() || c == '\\') =>
        {
            r.to_owned()
        }
        _ => "/account".to_owned(),
    }
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn to_login(return_to: &str, clear: bool) -> Response {
    let target = format!("/login?return_to={}", url_escape(return_to));
    let mut res = see_other(&target);
    if clear {
        res.headers_mut()
            .insert(header::SET_COOKIE, clear_session_cookie());
    }
    res
}

pub(crate) fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn when(at: Option<Millis>) -> Option<String> {
    at.map(|at| {
        let t = at.to_datetime();
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        )
    })
}

fn form_fields(body: &Bytes) -> Option<HashMap<String, String>> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()
        .map(|pairs| pairs.into_iter().collect())
}

/// The session of a page request, if it has a live one.
async fn page_session(
    state: &PageState,
    headers: &HeaderMap,
) -> Result<Option<CookieSession>, Response> {
    match session_cookie(headers) {
        Ok(Some(raw)) => match state.sessions.cookie_session(raw).await {
            Ok(s) => Ok(Some(s)),
            Err(Error::InvalidSession(_)) => Ok(None),
            Err(e) => Err(e.into_response()),
        },
        Ok(None) => Ok(None),
        Err(_) => Ok(None),
    }
}

/// The pages' routes (not part of the JSON API's document).
pub fn routes<S>(app: AppState, pages: Pages) -> Router<S> {
    Router::new()
        .route("/login", get(login::login_form).post(login::login_submit))
        .route("/account", get(account::account))
        .route(
            "/register",
            get(email::register_form).post(email::register_submit),
        )
        .route(
            "/verify",
            get(email::verify_form).post(email::verify_submit),
        )
        .route("/verify/resend", post(email::verify_resend))
        .route("/reset", get(email::reset_form).post(email::reset_submit))
        .route("/v1/upstream/{id}/start", get(upstream::start))
        .route("/v1/upstream/{id}/callback", get(upstream::callback))
        .route("/account/identities/link/{provider}", post(upstream::link))
        .route("/account/identities/{id}/unlink", post(upstream::unlink))
        .route("/account/email/verify", post(upstream::send_verification))
        .route("/account/logout", post(account::logout))
        .route(
            "/account/sessions/{id}/revoke",
            post(account::revoke_session),
        )
        .route("/account/keys", post(account::create_key))
        .route("/account/keys/{id}/revoke", post(account::revoke_key))
        .route("/account/keys/{id}/roll", post(account::roll_key))
        .route("/account/password", post(account::change_password))
        .route(
            "/account/consents/{client_id}/withdraw",
            post(account::withdraw_consent),
        )
        .route(
            "/oauth2/authorize",
            get(authorize::authorize).post(authorize::authorize),
        )
        .route("/consent", post(authorize::consent_submit))
        .route(
            "/device",
            get(device::device_page).post(device::device_submit),
        )
        .route(
            "/oauth2/logout",
            get(authorize::logout).post(authorize::logout),
        )
        .route("/oauth2/logout/confirm", post(authorize::logout_confirm))
        .route("/assets/portcullis.css", get(stylesheet))
        .with_state(PageState {
            app,
            pages: Arc::new(pages),
        })
}

/// `GET /assets/portcullis.css`.
pub async fn stylesheet(State(state): State<PageState>) -> Response {
    let mut res = state.pages.stylesheet.clone().into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_a_same_origin_path_or_the_account_page() {
        for ok in ["/account", "/account?x=1", "/v1/keys"] {
            assert_eq!(safe_return_to(Some(ok)), ok);
        }
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "/ok\\..",
            "javascript:alert(1)",
            "",
            "account",
            "/line\nbreak",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/account", "{bad:?}");
        }
        assert_eq!(safe_return_to(None), "/account");
    }

    mod return_to {
        use super::super::{MAX_RETURN_TO, safe_return_to};
        use proptest::prelude::*;

        /// Where a browser goes when it follows `Location: <to>` from a page of ours.
        fn followed(to: &str) -> Option<reqwest::Url> {
            reqwest::Url::parse("https://auth.example/login")
                .ok()?
                .join(to)
                .ok()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever is asked for, the answer is a path on our own origin: a browser following it
            /// never leaves `auth.example` and never meets a scheme, a backslash or a control character.
            #[test]
            fn anything_becomes_a_path_on_our_origin(raw in prop_oneof![
                ".{0,600}",
                "/[a-z]{8200,8300}",
                "[/\\\\:.a-z@%\t\n ]{0,20}",
                "(https?:|javascript:|//|/\\\\|/%2f|/\t/)[a-z.@/]{0,30}",
            ]) {
                let to = safe_return_to(Some(&raw));
                prop_assert!(to.starts_with('/') && !to.starts_with("//"), "{to:?}");
                prop_assert!(to.len() <= MAX_RETURN_TO);
                prop_assert!(!to.chars().any(|c| c.is_control() || c == '\\'), "{to:?}");
                let url = followed(&to);
                prop_assert!(url.as_ref().is_some_and(|u| u.scheme() == "https"
                    && u.host_str() == Some("auth.example") && u.port().is_none()), "{raw:?} -> {to:?} -> {url:?}");
                prop_assert!(to == raw || to == "/account", "{raw:?} became {to:?}");
            }

            /// A plain path of our own is kept as it is, query and all.
            #[test]
            fn our_own_paths_are_kept(path in "/[a-z0-9_-]{1,20}(/[a-z0-9_-]{1,20}){0,3}(\\?[a-z]{1,5}=[a-z0-9%]{0,10})?") {
                prop_assert_eq!(safe_return_to(Some(&path)), path);
            }
        }
    }

    #[test]
    fn built_in_templates_render_what_they_are_given_and_escape_it() {
        let pages = Pages::new(None).unwrap();
        let login = pages
            .render(
                "login.html",
                context! { return_to => "/account?x=1", email => "<b>a@b.co</b>", error => "Wrong.", user => None::<String> },
            )
            .unwrap();
        assert!(login.contains("<form method=\"post\" action=\"/login\""));
        assert!(login.contains("value=\"&#x2f;account?x=1\""), "{login}");
        assert!(
            login.contains("&lt;b&gt;a@b.co&lt;&#x2f;b&gt;"),
            "autoescaped: {login}"
        );
        assert!(login.contains("id=\"login-error\">Wrong.</p>"));
        assert!(login.contains("<meta name=\"referrer\" content=\"same-origin\">"));
        let account = pages
            .render(
                "account.html",
                context! {
                    user => context! { email => "al@example.com", name => "Al", created_at => "2026-01-01 00:00 UTC" },
                    csrf_token => "tok-123",
                    sessions => vec![context! { id => "ses_1", user_agent => "Firefox", ip => "10.0.0.1", last_seen_at => "now", current => true }],
                    keys => vec![context! { id => "key_1", name => "ci", start => "pk_live_abcd", scopes => vec!["keys:read"], expires_at => None::<String>, last_used_at => None::<String> }],
                    notice => "Done.",
                    error => None::<String>,
                    new_key => context! { key => "pk_live_SECRET", name => "ci", id => "key_1" },
                },
            )
            .unwrap();
        for want in [
            "id=\"account-email\">al@example.com</dd>",
            "data-session-id=\"ses_1\"",
            "This device",
            "action=\"/account/keys/key_1/roll\"",
            "<code>pk_live_abcd…</code>",
            "<code id=\"new-key\">pk_live_SECRET</code>",
            "name=\"csrf_token\" value=\"tok-123\"",
            "Done.",
        ] {
            assert!(
                account.contains(want),
                "{want} missing from the account page"
            );
        }
        let message = pages
            .render(
                "message.html",
                context! { heading => "Refused", message => "Nope.", next => "/login" },
            )
            .unwrap();
        assert!(message.contains("<h1>Refused</h1>") && message.contains("href=\"&#x2f;login\""));
    }
}
