//! The pages a person uses: `/login` and `/account`. Server-rendered (minijinja, autoescaped), plain
//! HTML forms and one stylesheet, no script: they work without JavaScript and under a CSP that allows
//! nothing inline. Templates are built in; an operator may override any of them by putting a file of
//! the same name in `templates_dir`.
//!
//! Every form post is cookie-authenticated, so each one is checked like the API's unsafe requests: the
//! session's CSRF token (a hidden `csrf_token` field) and a same-site origin. A missing or dead session
//! sends the browser to `/login`, which brings it back (`return_to`, same-origin paths only).

use std::collections::HashMap;
use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{Environment, context};
use portcullis_core::clock::Millis;
use portcullis_core::csrf;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{ClientIp, RequestId};
use crate::sessions::{CookieSession, clear_cookie, session_cookie, set_cookie};
use crate::state::AppState;
use crate::users::audit_context;

/// Pages allow our stylesheet and nothing else; forms post only to us; nobody may frame them.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                        frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("account.html", include_str!("../templates/account.html")),
    ("message.html", include_str!("../templates/message.html")),
];
const STYLESHEET: &str = include_str!("../assets/portcullis.css");

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

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, ApiError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(ApiError::internal)
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

fn page(state: &AppState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match state.pages.render(name, ctx) {
        Ok(body) => html(status, body),
        Err(e) => e.into_response(),
    }
}

fn message(
    state: &AppState,
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

/// `return_to` is honoured only for a path on this origin: `/…`, not `//host` or `/\host` (which
/// browsers read as another host), without control characters. Anything else goes to `/account`.
pub fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(r)
            if r.starts_with('/')
                && !r.starts_with("//")
                && !r.starts_with("/\\")
                && r.len() <= 512
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
        res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    }
    res
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn when(ms: Option<i64>) -> Option<String> {
    ms.map(|ms| {
        let t = Millis(ms).to_datetime();
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

/// The list `field` of an API view, with its RFC 3339 `times` rewritten for people.
fn for_display(
    view: Result<serde_json::Value, serde_json::Error>,
    field: &str,
    times: &[&str],
) -> Vec<serde_json::Value> {
    let mut items = match view {
        Ok(serde_json::Value::Object(mut o)) => match o.remove(field) {
            Some(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    for item in &mut items {
        if let Some(o) = item.as_object_mut() {
            for t in times {
                let ms = o
                    .get(*t)
                    .and_then(|v| v.as_str())
                    .and_then(|v| {
                        time::OffsetDateTime::parse(
                            v,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .map(|at| Millis::from_datetime(at).0);
                o.insert((*t).to_owned(), json!(when(ms)));
            }
        }
    }
    items
}

fn form_fields(body: &Bytes) -> Option<HashMap<String, String>> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()
        .map(|pairs| pairs.into_iter().collect())
}

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// The session of a page request, if it has a live one.
async fn page_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<CookieSession>, Response> {
    match session_cookie(headers) {
        Ok(Some(raw)) => match state.cookie_session(raw).await {
            Ok(s) => Ok(Some(s)),
            Err(ApiError::InvalidSession(_)) => Ok(None),
            Err(e) => Err(e.into_response()),
        },
        Ok(None) => Ok(None),
        Err(_) => Ok(None),
    }
}

/// `GET /login`.
pub async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let return_to = safe_return_to(q.return_to.as_deref());
    match page_session(&state, &headers).await {
        Ok(Some(_)) => see_other(&return_to),
        Ok(None) => page(
            &state,
            StatusCode::OK,
            "login.html",
            context! { return_to, email => "", error => None::<String>, user => None::<String> },
        ),
        Err(res) => res,
    }
}

/// `POST /login` (a form).
pub async fn login_submit(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state.check_same_site(&headers).is_err() {
        return message(
            &state,
            StatusCode::FORBIDDEN,
            "Request refused",
            "This sign-in came from another site, so it was refused.",
            "/login",
        );
    }
    let fields = form_fields(&body).unwrap_or_default();
    let return_to = safe_return_to(fields.get("return_to").map(String::as_str));
    let email = fields
        .get("email")
        .map(|e| e.trim().to_owned())
        .unwrap_or_default();
    let password = fields.get("password").cloned().unwrap_or_default();
    let again = |status: StatusCode, error: &str| {
        page(
            &state,
            status,
            "login.html",
            context! { return_to => return_to.clone(), email => email.clone(), error, user => None::<String> },
        )
    };
    if email.is_empty() || password.is_empty() {
        return again(
            StatusCode::BAD_REQUEST,
            "Enter your email and your password.",
        );
    }
    let req = match serde_json::from_value(json!({"email": email, "password": password})) {
        Ok(req) => req,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let ctx = audit_context(&ip, &rid);
    let user = match state.login(req, ip.0, &headers, &ctx).await {
        Ok(user) => user,
        Err(ApiError::InvalidCredentials) => {
            return again(StatusCode::UNAUTHORIZED, "The email or password is wrong.");
        }
        Err(ApiError::Validation(errors)) => {
            // A malformed email can be said so; an over-long password is simply not the password.
            return if errors.iter().any(|e| e.field == "email") {
                again(StatusCode::BAD_REQUEST, "Enter a valid email address.")
            } else {
                again(StatusCode::UNAUTHORIZED, "The email or password is wrong.")
            };
        }
        Err(ApiError::RateLimited(t)) => {
            let wait = t.decision.retry_after_ms.div_ceil(1000).max(1);
            let mut res = again(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many attempts. Try again in {wait} seconds."),
            );
            crate::error::rate_limit_headers(res.headers_mut(), &t);
            return res;
        }
        Err(ApiError::Overloaded) => {
            return again(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is busy. Try again in a moment.",
            );
        }
        Err(e) => return e.into_response(),
    };
    state.end_presented_session(&headers).await;
    let (row, token) = match state.start_session(&user, &ip, &headers).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    state.audit.record(
        "session.started",
        Some(&user.id),
        Some(&row.id),
        &ctx,
        serde_json::json!({ "via": "login_page" }),
    );
    let mut res = see_other(&return_to);
    if let Some(v) = set_cookie(token.expose()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    if let Some(device) = state.device_cookie(&user) {
        res.headers_mut().append(header::SET_COOKIE, device);
    }
    res
}

#[derive(Deserialize)]
pub struct AccountQuery {
    done: Option<String>,
}

fn notice_for(code: Option<&str>) -> Option<&'static str> {
    match code? {
        "session_revoked" => Some("That session was signed out."),
        "key_revoked" => Some("The key was revoked."),
        "password_changed" => {
            Some("Your password was changed, and every other session was signed out.")
        }
        _ => None,
    }
}

async fn render_account(
    state: &AppState,
    s: &CookieSession,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<String>,
    new_key: Option<serde_json::Value>,
) -> Response {
    let p = state.session_principal(s);
    let Ok(Some(user)) = state.user(&s.row.user_id).await else {
        return to_login("/account", true);
    };
    let sessions = match state.list_sessions(&s.row.user_id, Some(&s.row.id)).await {
        Ok(list) => for_display(serde_json::to_value(list), "sessions", &["last_seen_at"]),
        Err(e) => return e.into_response(),
    };
    let keys = match state.own_keys(&p).await {
        Ok(keys) => for_display(
            serde_json::to_value(json!({ "keys": keys })),
            "keys",
            &["expires_at", "last_used_at"],
        ),
        Err(e) => return e.into_response(),
    };
    // Only keys that still work: revoked ones and the old halves of rolls are history.
    let keys: Vec<serde_json::Value> = keys
        .into_iter()
        .filter(|k| {
            k.get("revoked_at").is_none_or(|v| v.is_null())
                && k.get("rolled_to").is_none_or(|v| v.is_null())
        })
        .collect();
    page(
        state,
        status,
        "account.html",
        context! {
            user => context! {
                email => user.email.clone(),
                name => user.name.clone(),
                created_at => when(Some(user.created_at)),
            },
            csrf_token => s.csrf_token(),
            sessions,
            keys,
            notice,
            error,
            new_key,
        },
    )
}

/// `GET /account`.
pub async fn account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AccountQuery>,
) -> Response {
    match page_session(&state, &headers).await {
        Ok(Some(s)) => {
            render_account(
                &state,
                &s,
                StatusCode::OK,
                notice_for(q.done.as_deref()),
                None,
                None,
            )
            .await
        }
        Ok(None) => to_login(
            "/account",
            session_cookie(&headers).ok().flatten().is_some(),
        ),
        Err(res) => res,
    }
}

/// A checked account form post: a live session, a same-site origin and the session's CSRF token.
async fn account_post(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(CookieSession, HashMap<String, String>), Response> {
    let refused = |state: &AppState| {
        let mut res = message(
            state,
            StatusCode::FORBIDDEN,
            "Request refused",
            "This request did not come from your account page, so nothing was changed.",
            "/account",
        );
        // The same stable code as the API, for anyone scripting against the pages.
        res.headers_mut().insert(
            "x-portcullis-error",
            HeaderValue::from_static("csrf_failed"),
        );
        res
    };
    // Another site's post is refused before anything else, so that it cannot even clear the cookie
    // (a cross-site post arrives without it, SameSite=Lax, and must not look like a dead session).
    if state.check_same_site(headers).is_err() {
        return Err(refused(state));
    }
    let Some(s) = page_session(state, headers).await? else {
        let had_cookie = session_cookie(headers).ok().flatten().is_some();
        return Err(to_login("/account", had_cookie));
    };
    let fields = form_fields(body).unwrap_or_default();
    let token_ok = fields
        .get("csrf_token")
        .is_some_and(|t| csrf::token_matches(s.token.expose_secret(), t));
    if !token_ok {
        return Err(refused(state));
    }
    Ok((s, fields))
}

/// An account form post that passed [`account_post`]; any other request is answered by the rejection.
pub struct AccountForm {
    session: CookieSession,
    fields: HashMap<String, String>,
}

impl FromRequest<AppState> for AccountForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let (session, fields) = account_post(state, &headers, &body).await?;
        Ok(Self { session, fields })
    }
}

/// The account page again, with an error for the form that was posted.
async fn account_error(
    state: &AppState,
    s: &CookieSession,
    status: StatusCode,
    error: &str,
) -> Response {
    render_account(state, s, status, None, Some(error.to_owned()), None).await
}

/// `POST /account/logout`.
pub async fn logout(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    let ctx = audit_context(&ip, &rid);
    if let Err(e) = state
        .revoke_one(&s.row.user_id, &s.row.id, "logout", &ctx, &s.row.user_id)
        .await
    {
        return e.into_response();
    }
    let mut res = see_other("/login");
    res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    res
}

/// `POST /account/sessions/{id}/revoke`.
pub async fn revoke_session(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    let ctx = audit_context(&ip, &rid);
    match state
        .revoke_one(&s.row.user_id, &id, "revoked", &ctx, &s.row.user_id)
        .await
    {
        Ok(true) if id == s.row.id => {
            let mut res = see_other("/login");
            res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
            res
        }
        Ok(true) => see_other("/account?done=session_revoked"),
        Ok(false) => {
            account_error(
                &state,
                &s,
                StatusCode::NOT_FOUND,
                "That session does not exist or has already ended.",
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

fn field_errors(e: &ApiError) -> String {
    match e {
        ApiError::Validation(errors) => errors
            .iter()
            .map(|f| f.message.clone())
            .collect::<Vec<_>>()
            .join(" "),
        ApiError::WeakPassword(reasons) => reasons
            .iter()
            .map(|r| r.message().to_owned())
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// `POST /account/keys`: create a key and show it once.
pub async fn create_key(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    AccountForm { session: s, fields }: AccountForm,
) -> Response {
    let Some(name) = fields.get("name").filter(|n| !n.trim().is_empty()) else {
        return account_error(&state, &s, StatusCode::BAD_REQUEST, "Give the key a name.").await;
    };
    let scopes: Vec<&str> = fields
        .get("scopes")
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    // A date means the end of that day, UTC.
    let expires_at = fields
        .get("expires")
        .filter(|d| !d.is_empty())
        .map(|date| format!("{date}T23:59:59Z"));
    let req = json!({"name": name, "scopes": scopes, "expires_at": expires_at});
    let req = match serde_json::from_value(req) {
        Ok(r) => r,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let p = state.session_principal(&s);
    match state.create_key(&p, req, &audit_context(&ip, &rid)).await {
        Ok((key, row)) => {
            let new_key = json!({"key": key.expose(), "name": row.name, "id": row.id});
            render_account(&state, &s, StatusCode::CREATED, None, None, Some(new_key)).await
        }
        Err(e @ (ApiError::Validation(_) | ApiError::Forbidden(..))) => {
            let text = match &e {
                ApiError::Forbidden(_, m) => m.clone(),
                _ => field_errors(&e),
            };
            render_account(&state, &s, StatusCode::BAD_REQUEST, None, Some(text), None).await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /account/keys/{id}/revoke`.
pub async fn revoke_key(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    let p = state.session_principal(&s);
    match state
        .revoke_own_key(&p, &id, &audit_context(&ip, &rid))
        .await
    {
        Ok(()) => see_other("/account?done=key_revoked"),
        Err(ApiError::NotFound(_)) => {
            account_error(&state, &s, StatusCode::NOT_FOUND, "No such key.").await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /account/keys/{id}/roll`: a new key with the same settings, shown once; the old one stops.
pub async fn roll_key(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    let p = state.session_principal(&s);
    match state
        .roll_key(&p, &id, Default::default(), &audit_context(&ip, &rid))
        .await
    {
        Ok((key, row, _)) => {
            let new_key =
                json!({"key": key.expose(), "name": row.name, "id": row.id, "rolled_from": id});
            render_account(&state, &s, StatusCode::CREATED, None, None, Some(new_key)).await
        }
        Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => {
            account_error(
                &state,
                &s,
                StatusCode::NOT_FOUND,
                "That key cannot be rolled.",
            )
            .await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /account/password`: every session ends; this browser gets a fresh one.
pub async fn change_password(
    State(state): State<AppState>,
    ip: ClientIp,
    rid: RequestId,
    headers: HeaderMap,
    AccountForm { session: s, fields }: AccountForm,
) -> Response {
    let (Some(current), Some(new)) = (
        fields.get("current_password").filter(|v| !v.is_empty()),
        fields.get("new_password").filter(|v| !v.is_empty()),
    ) else {
        return account_error(
            &state,
            &s,
            StatusCode::BAD_REQUEST,
            "Enter your current password and a new one.",
        )
        .await;
    };
    let req =
        match serde_json::from_value(json!({"current_password": current, "new_password": new})) {
            Ok(r) => r,
            Err(e) => return ApiError::internal(e).into_response(),
        };
    let p = state.session_principal(&s);
    let ctx = audit_context(&ip, &rid);
    // Every session ends, this one too; the browser gets a fresh one below (a new session id after
    // a change of credentials).
    if let Err(e) = state
        .change_password(&p, req, ip.0, &headers, None, &ctx)
        .await
    {
        return match e {
            ApiError::Validation(_) | ApiError::WeakPassword(_) => {
                render_account(
                    &state,
                    &s,
                    StatusCode::BAD_REQUEST,
                    None,
                    Some(field_errors(&e)),
                    None,
                )
                .await
            }
            ApiError::RateLimited(_) => {
                account_error(
                    &state,
                    &s,
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many attempts. Try again later.",
                )
                .await
            }
            other => other.into_response(),
        };
    }
    let user = match state.user(&s.row.user_id).await {
        Ok(Some(u)) => u,
        _ => return to_login("/account", true),
    };
    let (_, token) = match state.start_session(&user, &ip, &headers).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let mut res = see_other("/account?done=password_changed");
    if let Some(v) = set_cookie(token.expose()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// `GET /assets/portcullis.css`.
pub async fn stylesheet(State(state): State<AppState>) -> Response {
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
