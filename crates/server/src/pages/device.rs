//! `/device` (RFC 8628 §3.3): the person types the user code their device shows, logs in, and
//! allows or denies the device's request. Looking a code up changes nothing, so the entry form is a
//! GET (and `verification_uri_complete` lands on the same place); the decision is a checked post.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use serde::Deserialize;

use super::{PageState, message, page, page_session, see_other, to_login, url_escape};
use crate::http::extract::{AuditCtx, ClientIp};
use crate::oauth::service::{DeviceRequest, OAuth, UserCodeRefused};
use crate::sessions::CookieSession;

#[derive(Deserialize)]
pub struct DeviceQuery {
    user_code: Option<String>,
}

fn entry_form(state: &PageState, status: StatusCode, typed: &str, error: Option<&str>) -> Response {
    let typed: String = typed.chars().take(32).collect();
    page(
        state,
        status,
        "device.html",
        context! { typed, error, client_name => None::<String>, user => None::<String> },
    )
}

fn refused(state: &PageState, typed: &str, why: UserCodeRefused) -> Response {
    match why {
        UserCodeRefused::NotFound => entry_form(
            state,
            StatusCode::BAD_REQUEST,
            typed,
            Some("That code is not valid, or it has expired. Check the code on your device."),
        ),
        UserCodeRefused::Throttled(secs) => {
            let mut res = entry_form(
                state,
                StatusCode::TOO_MANY_REQUESTS,
                typed,
                Some(&format!(
                    "Too many wrong codes from your network. Try again in {secs} seconds."
                )),
            );
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            res
        }
    }
}

async fn confirm_page(state: &PageState, s: &CookieSession, req: &DeviceRequest) -> Response {
    let email = match state.users.active(s.row.user_id.as_str()).await {
        Ok(Some(u)) => u.email.clone(),
        _ => return to_login("/device", true),
    };
    let scopes: Vec<minijinja::Value> = req
        .scopes
        .iter()
        .map(|s| context! { name => s, text => OAuth::describe(s) })
        .collect();
    page(
        state,
        StatusCode::OK,
        "device.html",
        context! {
            client_name => req.client.name.clone(),
            user_code => req.user_code.display(),
            email,
            scopes,
            csrf_token => s.csrf_token(),
            user => true,
        },
    )
}

/// `GET /device[?user_code=…]`: the entry form, or (with a code that names a pending request) the
/// login and then the confirmation.
pub async fn device_page(
    State(state): State<PageState>,
    ip: ClientIp,
    headers: HeaderMap,
    Query(q): Query<DeviceQuery>,
) -> Response {
    let Some(typed) = q
        .user_code
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return entry_form(&state, StatusCode::OK, "", None);
    };
    let req = match state.oauth.device_request(typed, Some(ip.0)).await {
        Ok(r) => r,
        Err(why) => return refused(&state, typed, why),
    };
    match page_session(&state, &headers).await {
        Ok(Some(s)) => confirm_page(&state, &s, &req).await,
        Ok(None) => {
            let back = format!("/device?user_code={}", req.user_code.as_str());
            see_other(&format!("/login?return_to={}", url_escape(&back)))
        }
        Err(res) => res,
    }
}

/// `POST /device`: allow or deny, from the confirmation form.
pub async fn device_submit(
    State(state): State<PageState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (s, fields) = match super::account::checked_form(&state, &headers, &body).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let typed = fields
        .get("user_code")
        .map(String::as_str)
        .unwrap_or_default();
    let req = match state.oauth.device_request(typed, Some(ip.0)).await {
        Ok(r) => r,
        Err(why) => return refused(&state, typed, why),
    };
    let approve = match fields.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("deny") => false,
        _ => return confirm_page(&state, &s, &req).await,
    };
    let b = super::authorize::browser_of(&s);
    match state.oauth.decide_device(&req, approve, &b, &ctx).await {
        Ok(true) if approve => message(
            &state,
            StatusCode::OK,
            "Device connected",
            &format!(
                "{} can now use your account. You can go back to your device.",
                req.client.name
            ),
            "/account",
        ),
        Ok(true) => message(
            &state,
            StatusCode::OK,
            "Request denied",
            "The device was not given access. You can close this page.",
            "/account",
        ),
        Ok(false) => refused(&state, typed, UserCodeRefused::NotFound),
        Err(e) => e.into_response(),
    }
}
