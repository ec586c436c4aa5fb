//! `/login`: the sign-in form and its post, which is the same browser login as `POST /v1/sessions`.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use secrecy::SecretString;
use serde::Deserialize;

use super::{PageState, form_fields, message, page_session, safe_return_to, see_other};
use crate::auth::credential::{site_hints, user_agent};
use crate::error::Error;
use crate::http::cookies::{device_cookie, session_cookie, set_device_cookie, set_session_cookie};
use crate::http::error::rate_limit_headers;
use crate::http::extract::{AuditCtx, ClientIp};
use crate::users::parse_email;

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
    /// `login`: show the form even to a browser that is logged in (an OAuth client asked for a
    /// fresh login).
    prompt: Option<String>,
    /// An OAuth client's `login_hint`: the email to fill in.
    login_hint: Option<String>,
}

/// `GET /login`.
pub async fn login_form(
    State(state): State<PageState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let return_to = safe_return_to(q.return_to.as_deref());
    let email: String = q
        .login_hint
        .as_deref()
        .filter(|h| h.contains('@'))
        .unwrap_or_default()
        .chars()
        .take(256)
        .collect();
    let again = q.prompt.as_deref() == Some("login");
    match page_session(&state, &headers).await {
        Ok(Some(_)) if !again => see_other(&return_to),
        Ok(_) => {
            let targets = super::authorize::login_targets(&state, &return_to).await;
            super::page_posting_to(
                &state,
                StatusCode::OK,
                "login.html",
                login_context(&state, &return_to, &email, None, false),
                &targets,
            )
        }
        Err(res) => res,
    }
}

/// What the login page shows: the form, the providers' buttons, the links to `/register` and
/// `/reset`.
fn login_context(
    state: &PageState,
    return_to: &str,
    email: &str,
    error: Option<&str>,
    unverified: bool,
) -> minijinja::Value {
    let providers: Vec<minijinja::Value> = state
        .upstreams
        .buttons()
        .into_iter()
        .map(|b| context! { id => b.id, name => b.name })
        .collect();
    context! {
        return_to,
        return_to_q => super::url_escape(return_to),
        email,
        error,
        unverified,
        providers,
        registration_open => state.config.registration == crate::config::Registration::Open,
        user => None::<String>,
    }
}

/// `POST /login` (a form).
pub async fn login_submit(
    State(state): State<PageState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form_fields(&body).unwrap_or_default();
    let return_to = safe_return_to(fields.get("return_to").map(String::as_str));
    let email = fields
        .get("email")
        .map(|e| e.trim().to_owned())
        .unwrap_or_default();
    let password = fields.get("password").cloned().unwrap_or_default();
    let targets = super::authorize::login_targets(&state, &return_to).await;
    let again_with = |status: StatusCode, error: &str, unverified: bool| {
        super::page_posting_to(
            &state,
            status,
            "login.html",
            login_context(&state, &return_to, &email, Some(error), unverified),
            &targets,
        )
    };
    let again = |status: StatusCode, error: &str| again_with(status, error, false);
    let hints = site_hints(&headers);
    if state.sessions.check_same_site(&hints).is_err() {
        return message(
            &state,
            StatusCode::FORBIDDEN,
            "Request refused",
            "This sign-in came from another site, so it was refused.",
            "/login",
        );
    }
    if email.is_empty() || password.is_empty() {
        return again(
            StatusCode::BAD_REQUEST,
            "Enter your email and your password.",
        );
    }
    let Ok(parsed) = parse_email(&email) else {
        return again(StatusCode::BAD_REQUEST, "Enter a valid email address.");
    };
    let login = state.users.password_login(
        parsed,
        SecretString::from(password),
        ip.0,
        device_cookie(&headers),
    );
    let presented = session_cookie(&headers).ok().flatten();
    let started = state
        .sessions
        .login(
            &hints,
            login,
            presented,
            user_agent(&headers),
            "login_page",
            &ctx,
        )
        .await;
    let s = match started {
        Ok(s) => s,
        // An over-long password is simply not the password.
        Err(Error::InvalidCredentials | Error::Validation(_)) => {
            return again(StatusCode::UNAUTHORIZED, "The email or password is wrong.");
        }
        Err(Error::EmailNotVerified) => {
            return again_with(
                StatusCode::FORBIDDEN,
                "Verify your email address first: open the link we sent you.",
                true,
            );
        }
        Err(Error::RateLimited(t)) => {
            let wait = t.decision.retry_after_ms.div_ceil(1000).max(1);
            let mut res = again(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many attempts. Try again in {wait} seconds."),
            );
            rate_limit_headers(res.headers_mut(), &t);
            return res;
        }
        Err(Error::Overloaded | Error::Unavailable) => {
            return again(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is busy. Try again in a moment.",
            );
        }
        Err(e) => return e.into_response(),
    };
    let mut res = see_other(&return_to);
    if let Some(v) = set_session_cookie(s.token.expose()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    if let Some(device) = state
        .users
        .device_cookie(&s.user)
        .and_then(|(v, age)| set_device_cookie(&v, age))
    {
        res.headers_mut().append(header::SET_COOKIE, device);
    }
    res
}
