//! The browser half of OAuth: `/oauth2/authorize` (GET and POST), the `/consent` page and its post,
//! and RP-initiated logout (`/oauth2/logout`). The decisions are the OAuth service's; this renders
//! them: the error page for a bad client or redirect URI, the login redirect, the consent form, and
//! the way back to the client (a 303, or an auto-submitted form for `response_mode=form_post`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use minijinja::context;
use portcullis_core::clock::Millis;
use portcullis_core::secrets::TokenHash;

use super::{
    PageState, csp_source, message, page, page_posting_to, page_session, see_other, url_escape,
};
use crate::http::cookies::clear_session_cookie;
use crate::http::extract::AuditCtx;
use crate::oauth::params::Params;
use crate::oauth::service::{AuthzError, AuthzReply, Browser, Next, OAuth, ResponseMode};
use crate::sessions::CookieSession;

/// The script of the form-post page, allowed by its hash and nothing else.
const FORM_POST_SCRIPT: &str = "document.getElementById(\"form-post\").submit();";

pub(super) fn browser_of(s: &CookieSession) -> Browser {
    Browser {
        user_id: s.row.user_id.clone(),
        session_id: s.row.id.clone(),
        logged_in_at: s.row.created_at,
    }
}

/// The way back to the client.
fn reply(state: &PageState, r: AuthzReply) -> Response {
    match r.mode {
        ResponseMode::Query => {
            let query = serde_urlencoded::to_string(&r.params).unwrap_or_default();
            let sep = if r.redirect_uri.contains('?') {
                '&'
            } else {
                '?'
            };
            let mut res = see_other(&format!("{}{sep}{query}", r.redirect_uri));
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        ResponseMode::FormPost => {
            let params: Vec<(String, String)> = r
                .params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            let mut res = page(
                state,
                StatusCode::OK,
                "form_post.html",
                context! { action => r.redirect_uri.clone(), params },
            );
            let hash = STANDARD.encode(TokenHash::of(FORM_POST_SCRIPT.as_bytes()).0);
            let target = csp_source(&r.redirect_uri).unwrap_or_else(|| "'none'".into());
            let csp = format!(
                "default-src 'none'; script-src 'sha256-{hash}'; form-action {target}; frame-ancestors 'none'; base-uri 'none'"
            );
            if let Ok(v) = HeaderValue::from_str(&csp) {
                res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
            }
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
    }
}

fn error_page(state: &PageState, text: &str) -> Response {
    message(
        state,
        StatusCode::BAD_REQUEST,
        "This request cannot be completed",
        text,
        "/account",
    )
}

/// The parameters of an authorization request: the query of a GET, the form of a POST.
fn request_params(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Params, String> {
    let raw: &[u8] = if method == Method::POST {
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return Err("An authorization request is posted as a form.".into());
        }
        body
    } else {
        uri.query().unwrap_or_default().as_bytes()
    };
    Params::parse(raw).map_err(|e| e.description)
}

/// `GET` and `POST /oauth2/authorize`.
pub async fn authorize(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match request_params(&method, &uri, &headers, &body) {
        Ok(p) => p,
        Err(text) => return error_page(&state, &text),
    };
    let req = match state.oauth.authorization_request(&p).await {
        Ok(r) => r,
        Err(AuthzError::Page(text)) => return error_page(&state, &text),
        Err(AuthzError::Redirect(r)) => return reply(&state, r),
    };
    let session = match page_session(&state, &headers).await {
        Ok(s) => s,
        Err(res) => return res,
    };
    let browser = session.as_ref().map(browser_of);
    match state.oauth.next_step(&req, browser.as_ref()).await {
        Err(r) => reply(&state, r),
        Ok(Next::Login { force }) => {
            // Back here after logging in, as a GET; a login newer than now satisfies prompt=login
            // and max_age, so that the request does not send the browser round again.
            let extra = if force {
                vec![("_auth_after", Millis::now().0.to_string())]
            } else {
                Vec::new()
            };
            let back = format!(
                "/oauth2/authorize?{}",
                p.encode_without(&["_auth_after"], &extra)
            );
            let mut to = format!("/login?return_to={}", url_escape(&back));
            if force {
                to.push_str("&prompt=login");
            }
            if let Some(hint) = &req.login_hint {
                to.push_str(&format!("&login_hint={}", url_escape(hint)));
            }
            see_other(&to)
        }
        Ok(Next::Consent) => {
            let Some(s) = session else {
                return error_page(&state, "Log in first.");
            };
            consent_page(&state, &s, &req, &p).await
        }
        Ok(Next::Issue) => {
            let Some(b) = browser else {
                return error_page(&state, "Log in first.");
            };
            match state.oauth.issue_code(&req, &b, &ctx).await {
                Ok(r) => reply(&state, r),
                Err(e) => reply(&state, state.oauth.refuse(&req, e.code, &e.description)),
            }
        }
    }
}

async fn consent_page(
    state: &PageState,
    s: &CookieSession,
    req: &crate::oauth::service::AuthzRequest,
    p: &Params,
) -> Response {
    let email = match state.users.active(s.row.user_id.as_str()).await {
        Ok(Some(u)) => u.email.clone(),
        _ => return error_page(state, "Log in first."),
    };
    let host = url::Url::parse(&req.redirect_uri)
        .ok()
        .map(|u| match u.host_str() {
            Some(h) => match u.port() {
                Some(port) => format!("{h}:{port}"),
                None => h.to_owned(),
            },
            None => format!("{}:", u.scheme()),
        })
        .unwrap_or_default();
    let scopes: Vec<minijinja::Value> = req
        .scopes
        .iter()
        .map(|s| context! { name => s, text => OAuth::describe(s) })
        .collect();
    let targets: Vec<String> = csp_source(&req.redirect_uri).into_iter().collect();
    page_posting_to(
        state,
        StatusCode::OK,
        "consent.html",
        context! {
            client_name => req.client.name.clone(),
            redirect_host => host,
            email,
            scopes,
            request => p.encode_without(&["_auth_after"], &[]),
            csrf_token => s.csrf_token(),
            user => true,
            unverified => req.client.metadata_document,
            client_host => url::Url::parse(&req.client.public_id)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default(),
        },
        &targets,
    )
}

/// Where a login that returns to `return_to` may be redirected in the end: the redirect URI of the
/// OAuth authorization request it returns to, when that request names a registered one.
pub async fn login_targets(state: &PageState, return_to: &str) -> Vec<String> {
    let Some(query) = return_to.strip_prefix("/oauth2/authorize?") else {
        return Vec::new();
    };
    let Ok(p) = Params::parse(query.as_bytes()) else {
        return Vec::new();
    };
    let uri = match state.oauth.authorization_request(&p).await {
        Ok(req) => req.redirect_uri,
        Err(AuthzError::Redirect(r)) => r.redirect_uri,
        Err(AuthzError::Page(_)) => return Vec::new(),
    };
    csp_source(&uri).into_iter().collect()
}

/// `POST /consent`: allow or deny.
pub async fn consent_submit(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (s, fields) = match super::account::checked_form(&state, &headers, &body).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let raw = fields.get("request").cloned().unwrap_or_default();
    let p = match Params::parse(raw.as_bytes()) {
        Ok(p) => p,
        Err(e) => return error_page(&state, &e.description),
    };
    let req = match state.oauth.authorization_request(&p).await {
        Ok(r) => r,
        Err(AuthzError::Page(text)) => return error_page(&state, &text),
        Err(AuthzError::Redirect(r)) => return reply(&state, r),
    };
    let b = browser_of(&s);
    match fields.get("decision").map(String::as_str) {
        Some("approve") => match state.oauth.approve(&req, &b, &ctx).await {
            Ok(r) => reply(&state, r),
            Err(e) => reply(&state, state.oauth.refuse(&req, e.code, &e.description)),
        },
        Some("deny") => reply(&state, state.oauth.deny(&req, &b, &ctx).await),
        _ => error_page(&state, "Choose Allow or Deny."),
    }
}

/// What a logout request asks, checked: the client (from `client_id` or the hint's audience), where
/// to go afterwards (one of its registered `post_logout_redirect_uris`, exactly), and whether the
/// hint names the browser's own session.
struct LogoutRequest {
    client_name: Option<String>,
    redirect: Option<String>,
    state_param: Option<String>,
    hint_sid: Option<String>,
}

async fn logout_request(state: &PageState, p: &Params) -> Result<LogoutRequest, String> {
    if let Some(name) = p.duplicated() {
        return Err(format!("The request names {name} more than once."));
    }
    let hint = match p
        .bounded("id_token_hint", 8192)
        .map_err(|e| e.description)?
    {
        Some(h) => Some(
            state
                .oauth
                .id_token_hint(h)
                .ok_or("The id_token_hint is not an ID token of this server.")?,
        ),
        None => None,
    };
    let hint_aud = hint
        .as_ref()
        .and_then(|h| h.get("aud"))
        .and_then(|a| a.as_str().map(str::to_owned));
    let client_id = match (p.get("client_id"), hint_aud) {
        (Some(a), Some(b)) if a != b => {
            return Err("client_id is not the audience of the id_token_hint.".into());
        }
        (Some(a), _) => Some(a.to_owned()),
        (None, b) => b,
    };
    let client = match &client_id {
        Some(id) => Some(
            state
                .oauth
                .clients
                .get(id)
                .await
                .map_err(|_| "The server could not read the request; try again.".to_owned())?
                .ok_or("The application that sent you here is not registered with this server.")?,
        ),
        None => None,
    };
    let redirect = match p.get("post_logout_redirect_uri") {
        None => None,
        Some(uri) => {
            let c = client
                .as_ref()
                .ok_or("post_logout_redirect_uri needs client_id or id_token_hint.")?;
            if !c
                .post_logout_redirect_uris
                .iter()
                .any(|r| r.as_str() == uri)
            {
                return Err("The address to return to after logging out is not one this application registered.".into());
            }
            Some(uri.to_owned())
        }
    };
    Ok(LogoutRequest {
        client_name: client.map(|c| c.name.clone()),
        redirect,
        state_param: p
            .bounded("state", 1024)
            .map_err(|e| e.description)?
            .map(str::to_owned),
        hint_sid: hint
            .as_ref()
            .and_then(|h| h.get("sid"))
            .and_then(|s| s.as_str().map(str::to_owned)),
    })
}

/// Ends the session and the OAuth grants bound to it, then goes where the request asked.
async fn finish_logout(
    state: &PageState,
    s: Option<&CookieSession>,
    req: &LogoutRequest,
    ctx: &crate::audit::AuditContext,
) -> Response {
    if let Some(s) = s {
        let user = s.row.user_id.clone();
        if let Err(e) = state
            .sessions
            .revoke(&user, &s.row.id, "logout", user.as_str(), ctx)
            .await
        {
            return e.into_response();
        }
        if let Err(e) = state
            .oauth
            .end_session_grants(s.row.id.as_str(), user.as_str(), ctx)
            .await
        {
            return e.into_response();
        }
    }
    let mut res = match &req.redirect {
        Some(uri) => {
            let mut to = uri.clone();
            if let Some(st) = &req.state_param {
                let sep = if to.contains('?') { '&' } else { '?' };
                to.push(sep);
                to.push_str(&serde_urlencoded::to_string([("state", st)]).unwrap_or_default());
            }
            see_other(&to)
        }
        None => message(
            state,
            StatusCode::OK,
            "You are logged out",
            "You have been logged out of Portcullis.",
            "/login",
        ),
    };
    if s.is_some() {
        res.headers_mut()
            .insert(header::SET_COOKIE, clear_session_cookie());
    }
    res
}

/// `GET` and `POST /oauth2/logout` (OpenID Connect RP-Initiated Logout 1.0). With a hint that names
/// this browser's session, the user is logged out at once; otherwise they are asked.
pub async fn logout(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match request_params(&method, &uri, &headers, &body) {
        Ok(p) => p,
        Err(text) => return error_page(&state, &text),
    };
    let req = match logout_request(&state, &p).await {
        Ok(r) => r,
        Err(text) => return error_page(&state, &text),
    };
    let session = match page_session(&state, &headers).await {
        Ok(s) => s,
        Err(res) => return res,
    };
    match &session {
        Some(s) if req.hint_sid.as_deref() != Some(s.row.id.as_str()) => page_posting_to(
            &state,
            StatusCode::OK,
            "logout.html",
            context! {
                client_name => req.client_name.clone(),
                request => p.encode_without(&[], &[]),
                csrf_token => s.csrf_token(),
                user => true,
            },
            &req.redirect
                .as_deref()
                .and_then(csp_source)
                .into_iter()
                .collect::<Vec<_>>(),
        ),
        _ => finish_logout(&state, session.as_ref(), &req, &ctx).await,
    }
}

/// `POST /oauth2/logout/confirm`: the user said yes.
pub async fn logout_confirm(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (s, fields) = match super::account::checked_form(&state, &headers, &body).await {
        Ok(x) => x,
        Err(res) => return res,
    };
    let raw = fields.get("request").cloned().unwrap_or_default();
    let req = match Params::parse(raw.as_bytes()) {
        Ok(p) => match logout_request(&state, &p).await {
            Ok(r) => r,
            Err(text) => return error_page(&state, &text),
        },
        Err(e) => return error_page(&state, &e.description),
    };
    finish_logout(&state, Some(&s), &req, &ctx).await
}
