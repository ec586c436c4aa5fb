//! The browser's side of upstream sign-in: `GET /v1/upstream/{id}/start` and `/callback`, and the
//! account page's link, unlink and verification-link forms. Every refusal is a page that says what
//! happened and where to go next.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::ids::UserId;
use serde::Deserialize;

use super::account::AccountForm;
use super::{PageState, message, safe_return_to, see_other};
use crate::auth::credential::user_agent;
use crate::error::Error;
use crate::http::cookies::{
    clear_upstream_cookie, session_cookie, set_session_cookie, set_upstream_cookie, upstream_cookie,
};
use crate::http::extract::{AuditCtx, ClientIp};
use crate::upstream::service::{
    CallbackBrowser, CallbackQuery, Fault, LOGIN_TTL_S, Outcome, Refused, Started,
};

#[derive(Deserialize)]
pub struct StartQuery {
    return_to: Option<String>,
}

fn found(to: &str) -> Response {
    let mut res = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn to_provider(started: Started) -> Response {
    let mut res = found(&started.location);
    if let Some(cookie) = set_upstream_cookie(&started.browser, LOGIN_TTL_S) {
        res.headers_mut().append(header::SET_COOKIE, cookie);
    }
    res
}

fn refused(state: &PageState, r: &Refused) -> Response {
    let status = match r.fault {
        Fault::Request => StatusCode::BAD_REQUEST,
        Fault::UnknownProvider => StatusCode::NOT_FOUND,
        Fault::Upstream => StatusCode::BAD_GATEWAY,
        Fault::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut res = message(state, status, "Sign-in refused", &r.message, "/login");
    res.headers_mut()
        .append(header::SET_COOKIE, clear_upstream_cookie());
    if let Ok(v) = HeaderValue::from_str(r.reason) {
        res.headers_mut().insert("x-portcullis-error", v);
    }
    res
}

/// `GET /v1/upstream/{id}/start?return_to=`.
pub async fn start(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    Query(q): Query<StartQuery>,
) -> Response {
    let return_to = safe_return_to(q.return_to.as_deref());
    match state.upstreams.start(&id, &return_to, None, &ctx).await {
        Ok(started) => to_provider(started),
        Err(r) => refused(&state, &r),
    }
}

/// `GET /v1/upstream/{id}/callback`.
pub async fn callback(
    State(state): State<PageState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let browser = CallbackBrowser {
        binding: upstream_cookie(&headers),
        session: session_cookie(&headers).ok().flatten(),
        ip: ip.0,
        user_agent: user_agent(&headers),
    };
    match state.upstreams.callback(&id, &q, browser, &ctx).await {
        Ok(Outcome::SignedIn {
            token, return_to, ..
        }) => {
            let mut res = see_other(&return_to);
            let h = res.headers_mut();
            if let Some(v) = set_session_cookie(token.expose()) {
                h.append(header::SET_COOKIE, v);
            }
            h.append(header::SET_COOKIE, clear_upstream_cookie());
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Ok(Outcome::Linked { .. }) => {
            let mut res = see_other("/account?done=identity_linked");
            res.headers_mut()
                .append(header::SET_COOKIE, clear_upstream_cookie());
            res
        }
        Err(r) => refused(&state, &r),
    }
}

/// `POST /account/identities/link/{provider}`: links another provider to the signed-in user.
pub async fn link(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    Path(provider): Path<String>,
    form: AccountForm,
) -> Response {
    let Ok(user) = UserId::parse(form.session().row.user_id.as_str()) else {
        return Error::internal("session user id").into_response();
    };
    match state
        .upstreams
        .start(
            &provider,
            "/account?done=identity_linked",
            Some(&user),
            &ctx,
        )
        .await
    {
        Ok(started) => to_provider(started),
        Err(r) => refused(&state, &r),
    }
}

/// `POST /account/identities/{id}/unlink`.
pub async fn unlink(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    form: AccountForm,
) -> Response {
    let s = form.session();
    match state
        .upstreams
        .unlink(s.row.user_id.as_str(), &id, &ctx)
        .await
    {
        Ok(()) => see_other("/account?done=identity_unlinked"),
        Err(Error::Conflict(_, _)) => {
            super::account::account_error(
                &state,
                s,
                StatusCode::CONFLICT,
                "This is your only way to sign in: set a password (Forgot your password? on the login page) or link another provider first.",
            )
            .await
        }
        Err(Error::NotFound(_)) => {
            super::account::account_error(&state, s, StatusCode::NOT_FOUND, "That provider is not linked.").await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /account/email/verify`: another verification link.
pub async fn send_verification(
    State(state): State<PageState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    form: AccountForm,
) -> Response {
    let s = form.session();
    match state
        .accounts
        .resend_verification(s.row.user_id.as_str(), ip.0, &ctx)
        .await
    {
        Ok(()) => see_other("/account?done=verification_sent"),
        Err(Error::RateLimited(_)) => {
            super::account::account_error(
                &state,
                s,
                StatusCode::TOO_MANY_REQUESTS,
                "A link was sent a moment ago. Wait a minute before asking for another.",
            )
            .await
        }
        Err(Error::Conflict(_, _)) => see_other("/account"),
        Err(e) => e.into_response(),
    }
}
