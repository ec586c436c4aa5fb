//! `/account`: who you are, where you are signed in, your API keys, your password. Every form post is
//! checked by [`AccountForm`] (a live session, a same-site origin, the session's CSRF token) and then
//! calls the same service as the JSON API.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use portcullis_core::csrf;
use portcullis_core::ids::SessionId;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{PageState, form_fields, message, page, page_session, see_other, to_login, when};
use crate::apikeys::{KeyDraft, key_id};
use crate::auth::credential::{site_hints, user_agent};
use crate::error::Error;
use crate::http::cookies::{
    clear_session_cookie, device_cookie, session_cookie, set_session_cookie,
};
use crate::http::extract::{AuditCtx, ClientIp, body_bytes};
use crate::sessions::CookieSession;

#[derive(Deserialize)]
pub struct AccountQuery {
    done: Option<String>,
}

fn notice_for(code: Option<&str>) -> Option<&'static str> {
    match code? {
        "session_revoked" => Some("That session was signed out."),
        "key_revoked" => Some("The key was revoked."),
        "consent_withdrawn" => Some("The application's access was withdrawn."),
        "password_changed" => {
            Some("Your password was changed, and every other session was signed out.")
        }
        "identity_linked" => Some("The provider was linked: you can sign in with it now."),
        "identity_unlinked" => Some("The provider was unlinked."),
        "verification_sent" => Some("We sent you a link: open it to verify your email address."),
        _ => None,
    }
}

async fn render_account(
    state: &PageState,
    s: &CookieSession,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<String>,
    new_key: Option<minijinja::Value>,
) -> Response {
    let p = state.auth.session_principal(s);
    let Ok(Some(user)) = state.users.active(s.row.user_id.as_str()).await else {
        return to_login("/account", true);
    };
    let sessions = match state.sessions.list(&s.row.user_id, Some(&s.row.id)).await {
        Ok(list) => list
            .iter()
            .map(|x| {
                context! {
                    id => x.row.id.as_str(),
                    user_agent => x.row.user_agent.clone(),
                    ip => x.row.ip.clone(),
                    last_seen_at => when(Some(x.last_seen_at)),
                    current => x.current,
                }
            })
            .collect::<Vec<_>>(),
        Err(e) => return e.into_response(),
    };
    let keys = match state
        .apikeys
        .list(&p, None, state.config.max_page_size)
        .await
    {
        // Only keys that still work: revoked ones and the old halves of rolls are history.
        Ok(page) => page
            .keys
            .iter()
            .filter(|k| k.revoked_at.is_none() && k.rolled_to.is_none())
            .map(|k| {
                context! {
                    id => k.id.as_str(),
                    name => k.name.clone(),
                    start => k.start.clone(),
                    scopes => k.scopes.iter().collect::<Vec<_>>(),
                    expires_at => when(k.expires_at),
                    last_used_at => when(k.last_used_at),
                }
            })
            .collect::<Vec<_>>(),
        Err(e) => return e.into_response(),
    };
    let consents = match state.oauth.consents(&s.row.user_id).await {
        Ok(list) => list
            .iter()
            .map(|c| {
                context! {
                    client_id => c.client_id.as_str(),
                    name => c.client_name.clone(),
                    scope => c.scope.clone(),
                    updated_at => when(Some(c.updated_at)),
                }
            })
            .collect::<Vec<_>>(),
        Err(e) => return crate::error::Error::internal(e.description).into_response(),
    };
    let identities = match state.upstreams.identities(&user.id).await {
        Ok(rows) => rows,
        Err(e) => return e.into_response(),
    };
    let providers: Vec<minijinja::Value> = state
        .upstreams
        .buttons()
        .into_iter()
        .filter(|b| !identities.iter().any(|i| i.provider == b.id))
        .map(|b| context! { id => b.id, name => b.name })
        .collect();
    let identities: Vec<minijinja::Value> = identities
        .iter()
        .map(|i| {
            context! {
                id => i.id.clone(),
                provider => i.provider.clone(),
                name => state.upstreams.name_of(&i.provider).unwrap_or_else(|| i.provider.clone()),
                email => i.email.clone(),
                last_login_at => when(Some(portcullis_core::clock::Millis(i.last_login_at))),
            }
        })
        .collect();
    page(
        state,
        status,
        "account.html",
        context! {
            consents,
            identities,
            providers,
            user => context! {
                email => user.email.clone(),
                email_verified => user.email_verified_at.is_some(),
                name => user.name.clone(),
                created_at => when(Some(portcullis_core::clock::Millis(user.created_at))),
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
    State(state): State<PageState>,
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

/// A checked form post of our pages (account, consent, logout): a same-site origin, a live session
/// and the session's CSRF token. Anything else is answered by the refusal (or, without a session,
/// by the login page, back to `/account`).
pub(super) async fn checked_form(
    state: &PageState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(CookieSession, HashMap<String, String>), Response> {
    let refused = |state: &PageState| {
        let mut res = message(
            state,
            StatusCode::FORBIDDEN,
            "Request refused",
            "This request did not come from a Portcullis page, so nothing was changed.",
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
    if state
        .sessions
        .check_same_site(&site_hints(headers))
        .is_err()
    {
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

/// An account form post that passed [`checked_form`]; any other request is answered by the rejection.
pub struct AccountForm {
    session: CookieSession,
    fields: HashMap<String, String>,
}

impl AccountForm {
    pub fn session(&self) -> &CookieSession {
        &self.session
    }
}

impl FromRequest<PageState> for AccountForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &PageState) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let body = body_bytes(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let (session, fields) = checked_form(state, &headers, &body).await?;
        Ok(Self { session, fields })
    }
}

/// The account page again, with an error for the form that was posted.
pub(super) async fn account_error(
    state: &PageState,
    s: &CookieSession,
    status: StatusCode,
    error: &str,
) -> Response {
    render_account(state, s, status, None, Some(error.to_owned()), None).await
}

/// `POST /account/logout`.
pub async fn logout(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    if let Err(e) = state
        .sessions
        .revoke(
            &s.row.user_id,
            &s.row.id,
            "logout",
            s.row.user_id.as_str(),
            &ctx,
        )
        .await
    {
        return e.into_response();
    }
    let mut res = see_other("/login");
    res.headers_mut()
        .insert(header::SET_COOKIE, clear_session_cookie());
    res
}

/// `POST /account/sessions/{id}/revoke`.
pub async fn revoke_session(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    // An id that is no session's names nothing to revoke.
    let revoked = match SessionId::parse(&id) {
        Ok(id) => state
            .sessions
            .revoke(&s.row.user_id, &id, "revoked", s.row.user_id.as_str(), &ctx)
            .await
            .map(|done| done.then_some(id)),
        Err(_) => Ok(None),
    };
    match revoked {
        Ok(Some(id)) if id == s.row.id => {
            let mut res = see_other("/login");
            res.headers_mut()
                .insert(header::SET_COOKIE, clear_session_cookie());
            res
        }
        Ok(Some(_)) => see_other("/account?done=session_revoked"),
        Ok(None) => {
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

fn field_errors(e: &Error) -> String {
    match e {
        Error::Validation(errors) => errors
            .iter()
            .map(|f| f.message.clone())
            .collect::<Vec<_>>()
            .join(" "),
        Error::WeakPassword(reasons) => reasons
            .iter()
            .map(|r| r.message().to_owned())
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// `POST /account/keys`: create a key and show it once.
pub async fn create_key(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    AccountForm { session: s, fields }: AccountForm,
) -> Response {
    let Some(name) = fields.get("name").filter(|n| !n.trim().is_empty()) else {
        return account_error(&state, &s, StatusCode::BAD_REQUEST, "Give the key a name.").await;
    };
    let draft = KeyDraft {
        name: name.clone(),
        scopes: fields
            .get("scopes")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        // A date means the end of that day, UTC.
        expires_at: fields
            .get("expires")
            .filter(|d| !d.is_empty())
            .map(|date| format!("{date}T23:59:59Z")),
        ..KeyDraft::default()
    };
    let p = state.auth.session_principal(&s);
    match state.apikeys.create(&p, draft, &ctx).await {
        Ok((key, row)) => {
            let new_key = context! { key => key.expose(), name => row.name, id => row.id };
            render_account(&state, &s, StatusCode::CREATED, None, None, Some(new_key)).await
        }
        Err(e @ (Error::Validation(_) | Error::Forbidden(..))) => {
            let text = match &e {
                Error::Forbidden(_, m) => m.clone(),
                _ => field_errors(&e),
            };
            render_account(&state, &s, StatusCode::BAD_REQUEST, None, Some(text), None).await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /account/keys/{id}/revoke`.
pub async fn revoke_key(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    let p = state.auth.session_principal(&s);
    match async { state.apikeys.revoke(&p, &key_id(&id)?, &ctx).await }.await {
        Ok(()) => see_other("/account?done=key_revoked"),
        Err(Error::NotFound(_)) => {
            account_error(&state, &s, StatusCode::NOT_FOUND, "No such key.").await
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /account/keys/{id}/roll`: a new key with the same settings, shown once; the old one stops.
pub async fn roll_key(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    let p = state.auth.session_principal(&s);
    match async { state.apikeys.roll(&p, &key_id(&id)?, None, &ctx).await }.await {
        Ok((key, row, _)) => {
            let new_key =
                context! { key => key.expose(), name => row.name, id => row.id, rolled_from => id };
            render_account(&state, &s, StatusCode::CREATED, None, None, Some(new_key)).await
        }
        Err(Error::NotFound(_) | Error::Conflict(..)) => {
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
    State(state): State<PageState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
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
    let p = state.auth.session_principal(&s);
    // Every session ends, this one too; the browser gets a fresh one below (a new session id after
    // a change of credentials).
    if let Err(e) = state
        .sessions
        .change_password(
            &p,
            SecretString::from(current.clone()),
            SecretString::from(new.clone()),
            ip.0,
            device_cookie(&headers),
            None,
            &ctx,
        )
        .await
    {
        return match e {
            Error::Validation(_) | Error::WeakPassword(_) => {
                let text = field_errors(&e);
                render_account(&state, &s, StatusCode::BAD_REQUEST, None, Some(text), None).await
            }
            Error::RateLimited(_) => {
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
    let user = match state.users.active(s.row.user_id.as_str()).await {
        Ok(Some(u)) => u,
        _ => return to_login("/account", true),
    };
    let (_, token) = match state
        .sessions
        .start(&user, ip.0, user_agent(&headers))
        .await
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let mut res = see_other("/account?done=password_changed");
    if let Some(v) = set_session_cookie(token.expose()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// `POST /account/consents/{client_id}/withdraw`: the application must ask again; the refresh tokens
/// it holds for this user stop working.
pub async fn withdraw_consent(
    State(state): State<PageState>,
    AuditCtx(ctx): AuditCtx,
    Path(client_id): Path<String>,
    AccountForm { session: s, .. }: AccountForm,
) -> Response {
    match state
        .oauth
        .withdraw_consent(&s.row.user_id, &client_id, &ctx)
        .await
    {
        Ok(_) => see_other("/account?done=consent_withdrawn"),
        Err(e) => crate::error::Error::internal(e.description).into_response(),
    }
}
