//! `/register`, `/verify` and `/reset`: the pages of emailed links, in the style of `/login` (plain
//! forms, no script). None of them has a session to carry a CSRF token, so each post is checked like
//! the login form's: it must come from our own pages (`Sec-Fetch-Site` / `Origin`). A link's `GET`
//! changes nothing (mail scanners follow links): the person confirms with a button.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use secrecy::SecretString;
use serde::Deserialize;

use super::{PageState, form_fields, message, page, page_session, safe_return_to, see_other};
use crate::auth::credential::{site_hints, user_agent};
use crate::config::Registration;
use crate::error::Error;
use crate::http::cookies::{session_cookie, set_session_cookie};
use crate::http::error::rate_limit_headers;
use crate::http::extract::{AuditCtx, ClientIp};

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
    return_to: Option<String>,
}

fn cross_site(state: &PageState, headers: &HeaderMap, back: &str) -> Option<Response> {
    state
        .sessions
        .check_same_site(&site_hints(headers))
        .is_err()
        .then(|| {
            message(
                state,
                StatusCode::FORBIDDEN,
                "Request refused",
                "This form was sent from another site, so it was refused.",
                back,
            )
        })
}

fn too_many(
    state: &PageState,
    name: &str,
    ctx: minijinja::Value,
    t: &crate::error::Throttled,
) -> Response {
    let mut res = page(state, StatusCode::TOO_MANY_REQUESTS, name, ctx);
    rate_limit_headers(res.headers_mut(), t);
    res
}

/// A token as a page may put it back in a form: only the characters our links use.
fn clean_token(raw: Option<&str>) -> String {
    raw.unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(128)
        .collect()
}

fn register_context(
    state: &PageState,
    return_to: &str,
    email: &str,
    name: &str,
    error: Option<&str>,
    reasons: Vec<String>,
) -> minijinja::Value {
    context! {
        return_to,
        return_to_q => super::url_escape(return_to),
        email,
        name,
        error,
        reasons,
        min_length => state.config.password_min_length,
        user => None::<String>,
    }
}

/// `GET /register`.
pub async fn register_form(
    State(state): State<PageState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    let return_to = safe_return_to(q.return_to.as_deref());
    if state.config.registration == Registration::Closed {
        return message(
            &state,
            StatusCode::FORBIDDEN,
            "Registration is closed",
            "This server does not create accounts. Ask its administrator for one.",
            "/login",
        );
    }
    match page_session(&state, &headers).await {
        Ok(Some(_)) => see_other(&return_to),
        Ok(None) => page(
            &state,
            StatusCode::OK,
            "register.html",
            register_context(&state, &return_to, "", "", None, Vec::new()),
        ),
        Err(res) => res,
    }
}

/// `POST /register`: the account is made as by `POST /v1/users`, a verification link is mailed, and
/// (unless verified emails are required first) the browser is signed in.
pub async fn register_submit(
    State(state): State<PageState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form_fields(&body).unwrap_or_default();
    let field = |n: &str| {
        fields
            .get(n)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let return_to = safe_return_to(fields.get("return_to").map(String::as_str));
    let (email, name) = (field("email"), field("name"));
    let again = |status: StatusCode, error: Option<&str>, reasons: Vec<String>| {
        page(
            &state,
            status,
            "register.html",
            register_context(&state, &return_to, &email, &name, error, reasons),
        )
    };
    if let Some(res) = cross_site(&state, &headers, "/register") {
        return res;
    }
    let password = fields.get("password").cloned().unwrap_or_default();
    if email.is_empty() || password.is_empty() {
        return again(
            StatusCode::BAD_REQUEST,
            Some("Enter your email and a password."),
            Vec::new(),
        );
    }
    let registered = state
        .users
        .register(
            &email,
            SecretString::from(password),
            Some(&name),
            ip.0,
            &ctx,
        )
        .await;
    let user = match registered {
        Ok(user) => user,
        Err(Error::WeakPassword(reasons)) => {
            return again(
                StatusCode::BAD_REQUEST,
                Some("Choose another password:"),
                reasons.iter().map(|r| r.message()).collect(),
            );
        }
        Err(Error::Validation(errors)) => {
            let text = errors.first().map_or_else(
                || "Check the form.".to_owned(),
                |e| format!("{}.", e.message),
            );
            return again(StatusCode::BAD_REQUEST, Some(&text), Vec::new());
        }
        Err(Error::EmailTaken) => {
            return again(
                StatusCode::CONFLICT,
                Some("An account with this email already exists. Log in, or reset its password."),
                Vec::new(),
            );
        }
        Err(Error::RegistrationClosed) => {
            return again(
                StatusCode::FORBIDDEN,
                Some("This server does not create accounts."),
                Vec::new(),
            );
        }
        Err(Error::RateLimited(t)) => {
            return too_many(
                &state,
                "register.html",
                register_context(
                    &state,
                    &return_to,
                    &email,
                    &name,
                    Some("Too many accounts were made from your network. Try again later."),
                    Vec::new(),
                ),
                &t,
            );
        }
        Err(Error::Overloaded) => {
            return again(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("The server is busy. Try again in a moment."),
                Vec::new(),
            );
        }
        Err(e) => return e.into_response(),
    };
    state.accounts.welcome(&user).await;
    if state.config.require_verified_email {
        return message(
            &state,
            StatusCode::OK,
            "Check your email",
            &format!(
                "We sent a link to {}. Open it to verify your address, then log in.",
                user.email
            ),
            "/login",
        );
    }
    state
        .sessions
        .end_presented(session_cookie(&headers).ok().flatten())
        .await;
    match state
        .sessions
        .start(&user, ip.0, user_agent(&headers))
        .await
    {
        Ok((row, token)) => {
            state.audit.record(
                "session.started",
                Some(&user.id),
                Some(row.id.as_str()),
                &ctx,
                serde_json::json!({ "via": "register_page" }),
            );
            let mut res = see_other(&return_to);
            if let Some(v) = set_session_cookie(token.expose()) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /verify?token=`: a button that confirms (or, without a token, a form for a new link).
pub async fn verify_form(State(state): State<PageState>, Query(q): Query<TokenQuery>) -> Response {
    page(
        &state,
        StatusCode::OK,
        "verify.html",
        context! { token => clean_token(q.token.as_deref()), user => None::<String> },
    )
}

/// `POST /verify`.
pub async fn verify_submit(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(res) = cross_site(&state, &headers, "/verify") {
        return res;
    }
    let fields = form_fields(&body).unwrap_or_default();
    let token = fields.get("token").map(String::as_str).unwrap_or_default();
    match state.accounts.verify(token, &ctx).await {
        Ok(()) => message(
            &state,
            StatusCode::OK,
            "Email verified",
            "Thank you: your email address is verified.",
            "/account",
        ),
        Err(Error::InvalidLink) => page(
            &state,
            StatusCode::BAD_REQUEST,
            "verify.html",
            context! {
                token => "",
                error => "This link is not valid: it may have expired or been used already. Ask for a new one below.",
                user => None::<String>,
            },
        ),
        Err(e) => e.into_response(),
    }
}

/// `POST /verify/resend`: a new link, answered alike for every address.
pub async fn verify_resend(
    State(state): State<PageState>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(res) = cross_site(&state, &headers, "/verify") {
        return res;
    }
    let fields = form_fields(&body).unwrap_or_default();
    let email = fields.get("email").map(|e| e.trim()).unwrap_or_default();
    let form = |status, error: Option<&str>, notice: Option<&str>| {
        let ctx = context! { token => "", error, notice, user => None::<String> };
        page(&state, status, "verify.html", ctx)
    };
    match state.accounts.resend_verification_to(email, ip.0).await {
        Ok(()) => form(
            StatusCode::OK,
            None,
            Some("If an unverified account has this address, a new link is on its way."),
        ),
        Err(Error::Validation(_)) => form(
            StatusCode::BAD_REQUEST,
            Some("Enter a valid email address."),
            None,
        ),
        Err(Error::RateLimited(t)) => too_many(
            &state,
            "verify.html",
            context! { token => "", error => "Too many requests. Try again later.", user => None::<String> },
            &t,
        ),
        Err(e) => e.into_response(),
    }
}

fn reset_context(
    state: &PageState,
    token: &str,
    error: Option<&str>,
    reasons: Vec<String>,
    notice: Option<&str>,
) -> minijinja::Value {
    context! {
        token,
        error,
        reasons,
        notice,
        min_length => state.config.password_min_length,
        user => None::<String>,
    }
}

/// `GET /reset` (ask for a link) and `GET /reset?token=` (choose the new password).
pub async fn reset_form(State(state): State<PageState>, Query(q): Query<TokenQuery>) -> Response {
    let token = clean_token(q.token.as_deref());
    page(
        &state,
        StatusCode::OK,
        "reset.html",
        reset_context(&state, &token, None, Vec::new(), None),
    )
}

/// `POST /reset`: with `email`, asks for a link; with `token` and `new_password`, sets it.
pub async fn reset_submit(
    State(state): State<PageState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(res) = cross_site(&state, &headers, "/reset") {
        return res;
    }
    let fields = form_fields(&body).unwrap_or_default();
    let show =
        |status, token: &str, error: Option<&str>, reasons: Vec<String>, notice: Option<&str>| {
            page(
                &state,
                status,
                "reset.html",
                reset_context(&state, token, error, reasons, notice),
            )
        };
    if let Some(token) = fields.get("token") {
        let token = clean_token(Some(token));
        let new = fields.get("new_password").cloned().unwrap_or_default();
        if new.is_empty() {
            return show(
                StatusCode::BAD_REQUEST,
                &token,
                Some("Enter a new password."),
                Vec::new(),
                None,
            );
        }
        return match state
            .accounts
            .confirm_reset(&token, SecretString::from(new), &ctx)
            .await
        {
            Ok(()) => message(
                &state,
                StatusCode::OK,
                "Password changed",
                "Your new password is set, and you were signed out everywhere. Log in with it now.",
                "/login",
            ),
            Err(Error::WeakPassword(reasons)) => show(
                StatusCode::BAD_REQUEST,
                &token,
                Some("Choose another password:"),
                reasons.iter().map(|r| r.message()).collect(),
                None,
            ),
            Err(Error::InvalidLink) => show(
                StatusCode::BAD_REQUEST,
                "",
                Some(
                    "This link is not valid: it may have expired (links last 30 minutes) or been used already. Ask for a new one below.",
                ),
                Vec::new(),
                None,
            ),
            Err(Error::Overloaded) => show(
                StatusCode::SERVICE_UNAVAILABLE,
                &token,
                Some("The server is busy. Try again in a moment."),
                Vec::new(),
                None,
            ),
            Err(e) => e.into_response(),
        };
    }
    let email = fields.get("email").map(|e| e.trim()).unwrap_or_default();
    match state.accounts.request_reset(email, ip.0, &ctx).await {
        Ok(()) => show(
            StatusCode::OK,
            "",
            None,
            Vec::new(),
            Some(
                "If an account has this address, a link to choose a new password is on its way. It works for 30 minutes.",
            ),
        ),
        Err(Error::Validation(_)) => show(
            StatusCode::BAD_REQUEST,
            "",
            Some("Enter a valid email address."),
            Vec::new(),
            None,
        ),
        Err(Error::RateLimited(t)) => too_many(
            &state,
            "reset.html",
            reset_context(
                &state,
                "",
                Some("Too many requests. Try again later."),
                Vec::new(),
                None,
            ),
            &t,
        ),
        Err(e) => e.into_response(),
    }
}
