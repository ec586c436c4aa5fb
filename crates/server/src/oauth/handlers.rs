//! The OAuth endpoints that answer JSON (token, introspection, revocation, userinfo, discovery) and
//! the admin API of clients (`/admin/v1/clients`). Each handler extracts, makes one service call and
//! renders: OAuth errors as RFC 6749 JSON, admin errors as problem JSON.

use axum::Router;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::ids::ClientId;
use portcullis_core::oauth::client::GrantType;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::clients::{Client, ClientSettings};
use super::error::{OAuthError, no_store};
use super::params::Params;
use super::service::{INTROSPECT_SCOPE, Introspector, TokenResponse};
use crate::app::state::AppState;
use crate::auth::{Admin, credential};
use crate::error::Error;
use crate::http::extract::{AuditCtx, ClientIp, Json, Query, body_bytes};
use crate::http::pagination::{PageQuery, PageRequest};
use crate::http::{ApiResult, Problem};

/// A form-encoded body (RFC 6749 §3.2: the token endpoint takes nothing else), as parameters.
pub struct OAuthForm(pub Params);

impl<S: Send + Sync> FromRequest<S> for OAuthForm {
    type Rejection = OAuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthError> {
        let media = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        if media.as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request(
                "send the parameters as application/x-www-form-urlencoded",
            ));
        }
        let body = body_bytes(req, state).await.map_err(|e| {
            let mut err = OAuthError::invalid_request(e.to_string());
            if let crate::http::ApiError::PayloadTooLarge(_) = e {
                err.status = 413;
            }
            err
        })?;
        Params::parse(&body).map(OAuthForm)
    }
}

/// `Authorization: Basic` as RFC 6749 §2.3.1 has it: both halves form-encoded before base64.
/// `Ok(None)` without an Authorization header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, SecretString)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(OAuthError::invalid_request("one Authorization header"));
    }
    let bad = || OAuthError::invalid_client(true);
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_request(
            "authenticate the client with HTTP Basic or in the body, not another scheme",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> Result<String, OAuthError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&format!("v={s}")).map_err(|_| bad())?;
        pairs.into_iter().next().map(|(_, v)| v).ok_or_else(bad)
    };
    Ok(Some((unescape(id)?, SecretString::from(unescape(secret)?))))
}

fn json_no_store(status: StatusCode, body: Value) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    no_store(&mut res);
    res
}

fn token_json(t: TokenResponse) -> Response {
    let mut body = json!({
        "access_token": t.access_token,
        "token_type": t.token_type,
        "expires_in": t.expires_in,
        "scope": t.scope,
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(r) = &t.refresh_token {
            obj.insert("refresh_token".into(), r.expose_secret().into());
        }
        if let Some(id) = t.id_token {
            obj.insert("id_token".into(), id.into());
        }
        if let Some(issued) = t.issued_token_type {
            obj.insert("issued_token_type".into(), issued.into());
        }
    }
    json_no_store(StatusCode::OK, body)
}

/// Client-based CORS (node-oidc-provider's rule): a browser may call the token, revocation and
/// userinfo endpoints cross-origin only for a public client, and only from the origin of one of its
/// registered redirect URIs. `Ok(None)`: not a cross-origin request; `Ok(Some(origin))`: allowed,
/// answer with `Access-Control-Allow-Origin: origin`; `Err`: refused before anything is done.
fn cors_for(
    state: &AppState,
    headers: &HeaderMap,
    client: &Client,
) -> Result<Option<HeaderValue>, OAuthError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let Ok(raw) = origin.to_str() else {
        return Err(OAuthError::invalid_request(
            "the Origin header is not valid",
        ));
    };
    if raw == state.config.origin() || state.config.cors_allowed_origins.iter().any(|o| o == raw) {
        return Ok(None);
    }
    let allowed = client.client_type == portcullis_core::oauth::client::ClientType::Public
        && client
            .redirect_uris
            .iter()
            .filter_map(|r| url::Url::parse(r.as_str()).ok())
            .any(|u| u.origin().ascii_serialization() == raw);
    if allowed {
        Ok(Some(origin.clone()))
    } else {
        Err(OAuthError::invalid_request(
            "cross-origin requests are for public clients, from the origins of their redirect URIs",
        ))
    }
}

fn with_cors(mut res: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

/// `OPTIONS` on the token, revocation and userinfo endpoints: any origin's preflight is answered
/// (it carries no client), and the request itself is judged by [`cors_for`].
pub async fn preflight(headers: HeaderMap) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Some(origin) = headers.get(header::ORIGIN).cloned() {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, dpop"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

/// The client a request authenticates as.
async fn client_of(
    state: &AppState,
    headers: &HeaderMap,
    p: &Params,
    ip: ClientIp,
    ctx: &crate::audit::AuditContext,
) -> Result<std::sync::Arc<Client>, OAuthError> {
    let basic = basic_credentials(headers)?;
    state
        .oauth
        .authenticate_client(basic, p, Some(ip.0), ctx)
        .await
}

/// `POST /oauth2/token`.
pub async fn token(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    OAuthForm(p): OAuthForm,
) -> Result<Response, OAuthError> {
    let client = client_of(&state, &headers, &p, ip, &ctx).await?;
    let cors = cors_for(&state, &headers, &client)?;
    let jkt = match dpop_proof(&state, &headers, "/oauth2/token").await {
        Ok(jkt) => jkt,
        Err(res) => return Ok(with_cors(res, cors)),
    };
    let mut res = match state.oauth.token(&client, &p, &ctx, jkt.as_deref()).await {
        Ok(t) => token_json(t),
        Err(e) => e.into_response(),
    };
    if jkt.is_some() {
        with_dpop_nonce(&state, &mut res, None);
    }
    Ok(with_cors(res, cors))
}

/// The `DPoP` proof of a request to one of our OAuth endpoints (`path`), checked: the key's
/// thumbprint, `None` without a proof, or the refusal to answer with (RFC 9449 §7.1, §8).
async fn dpop_proof(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<String>, Response> {
    let proof = match credential::dpop_proof(headers) {
        Ok(None) => return Ok(None),
        Ok(Some(p)) => p,
        Err(e) => return Err(OAuthError::new("invalid_dpop_proof", e.to_string()).into_response()),
    };
    let uri = format!("{}{path}", state.oauth.issuer());
    match state.dpop.check(proof, "POST", &uri, None).await {
        Ok(jkt) => Ok(Some(jkt)),
        Err(refused) => {
            let mut e = OAuthError::new(refused.code(), refused.description());
            if matches!(refused, crate::tokens::dpop::Refused::Unavailable) {
                e.status = 503;
            }
            let mut res = e.into_response();
            with_dpop_nonce(state, &mut res, refused.nonce());
            Err(res)
        }
    }
}

/// `DPoP-Nonce` (RFC 9449 §8): `nonce`, or a fresh one when the server requires them.
fn with_dpop_nonce(state: &AppState, res: &mut Response, nonce: Option<&str>) {
    let nonce = nonce
        .map(str::to_owned)
        .or_else(|| state.dpop.fresh_nonce());
    if let Some(n) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
        res.headers_mut().insert("dpop-nonce", n);
        res.headers_mut().append(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("DPoP-Nonce"),
        );
    }
}

/// A registration endpoint's answer (RFC 7591 §3.2, RFC 7592 §2).
fn registration_answer(
    r: Result<(StatusCode, Option<Value>), crate::oauth::service::registration::RegistrationError>,
) -> Response {
    use crate::oauth::service::registration::RegistrationError as E;
    let (status, body) = match r {
        Ok((status, body)) => (status, body),
        Err(E::Disabled) => (
            StatusCode::NOT_FOUND,
            Some(
                json!({"error": "not_found", "error_description": "dynamic client registration is off (oauth_dynamic_registration)"}),
            ),
        ),
        Err(E::InvalidToken) => {
            let mut res = json_no_store(
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_token", "error_description": "the access token is missing or not valid for this registration"}),
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return res;
        }
        Err(E::Throttled(secs)) => {
            let mut res = json_no_store(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "temporarily_unavailable", "error_description": format!("too many registrations from this address; try again in {secs} s")}),
            );
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return res;
        }
        Err(E::RedirectUri(d)) => (
            StatusCode::BAD_REQUEST,
            Some(json!({"error": "invalid_redirect_uri", "error_description": d})),
        ),
        Err(E::Metadata(d)) => (
            StatusCode::BAD_REQUEST,
            Some(json!({"error": "invalid_client_metadata", "error_description": d})),
        ),
        Err(E::Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(
                json!({"error": "server_error", "error_description": "the server could not complete the registration"}),
            ),
        ),
    };
    match body {
        Some(b) => json_no_store(status, b),
        None => {
            let mut res = status.into_response();
            no_store(&mut res);
            res
        }
    }
}

/// A registration body: a JSON object, bounded.
async fn registration_body(
    req: Request,
    state: &AppState,
) -> Result<serde_json::Map<String, Value>, Response> {
    use crate::oauth::service::registration::{MAX_METADATA_BYTES, RegistrationError};
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    if !is_json {
        return Err(registration_answer(Err(RegistrationError::Metadata(
            "send the metadata as application/json".into(),
        ))));
    }
    let bytes = body_bytes(req, state)
        .await
        .map_err(|e| registration_answer(Err(RegistrationError::Metadata(e.to_string()))))?;
    if bytes.len() > MAX_METADATA_BYTES {
        return Err(registration_answer(Err(RegistrationError::Metadata(
            format!("the metadata is at most {MAX_METADATA_BYTES} bytes"),
        ))));
    }
    serde_json::from_slice(&bytes).map_err(|_| {
        registration_answer(Err(RegistrationError::Metadata(
            "the metadata is a JSON object".into(),
        )))
    })
}

fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// `POST /oauth2/register` (RFC 7591).
pub async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    req: Request,
) -> Response {
    if !state.oauth.registration_enabled() {
        return registration_answer(Err(
            crate::oauth::service::registration::RegistrationError::Disabled,
        ));
    }
    let headers = req.headers().clone();
    let metadata = match registration_body(req, &state).await {
        Ok(m) => m,
        Err(res) => return res,
    };
    let r = state
        .oauth
        .register_client(&metadata, bearer_of(&headers), Some(ip.0), &ctx)
        .await
        .map(|r| (StatusCode::CREATED, Some(r.body)));
    let mut res = registration_answer(r);
    // Browser-based clients (an MCP inspector) register too; the endpoint takes no cookies.
    if headers.contains_key(header::ORIGIN) {
        res.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    res
}

/// `GET`, `PUT` and `DELETE /oauth2/register/{client_id}` (RFC 7592).
pub async fn manage_registration(
    State(state): State<AppState>,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let token = bearer_of(&headers);
    let r = match *req.method() {
        Method::GET => state
            .oauth
            .read_registration(&id, token)
            .await
            .map(|r| (StatusCode::OK, Some(r.body))),
        Method::PUT => {
            let metadata = match registration_body(req, &state).await {
                Ok(m) => m,
                Err(res) => return res,
            };
            state
                .oauth
                .replace_registration(&id, token, &metadata, &ctx)
                .await
                .map(|r| (StatusCode::OK, Some(r.body)))
        }
        _ => state
            .oauth
            .delete_registration(&id, token, &ctx)
            .await
            .map(|()| (StatusCode::NO_CONTENT, None)),
    };
    registration_answer(r)
}

/// `POST /oauth2/par` (RFC 9126 §2): the client authenticates as at the token endpoint and pushes
/// its authorization request; 201 with the `request_uri` to send the browser with.
pub async fn par(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    OAuthForm(p): OAuthForm,
) -> Result<Response, OAuthError> {
    let client = client_of(&state, &headers, &p, ip, &ctx).await?;
    let cors = cors_for(&state, &headers, &client)?;
    let jkt = match dpop_proof(&state, &headers, "/oauth2/par").await {
        Ok(jkt) => jkt,
        Err(res) => return Ok(with_cors(res, cors)),
    };
    let res = match state
        .oauth
        .push_authorization_request(&client, &p, &ctx, jkt.as_deref())
        .await
    {
        Ok((request_uri, expires_in)) => json_no_store(
            StatusCode::CREATED,
            json!({ "request_uri": request_uri, "expires_in": expires_in }),
        ),
        Err(e) => e.into_response(),
    };
    Ok(with_cors(res, cors))
}

/// `POST /oauth2/device_authorization` (RFC 8628 §3.1): the client authenticates as at the token
/// endpoint; the answer carries the device code, the user code and where to enter it.
pub async fn device_authorization(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    OAuthForm(p): OAuthForm,
) -> Result<Response, OAuthError> {
    let client = client_of(&state, &headers, &p, ip, &ctx).await?;
    let cors = cors_for(&state, &headers, &client)?;
    let res = match state.oauth.device_authorization(&client, &p, &ctx).await {
        Ok(d) => json_no_store(
            StatusCode::OK,
            json!({
                "device_code": d.device_code,
                "user_code": d.user_code,
                "verification_uri": d.verification_uri,
                "verification_uri_complete": d.verification_uri_complete,
                "expires_in": d.expires_in,
                "interval": d.interval,
            }),
        ),
        Err(e) => e.into_response(),
    };
    Ok(with_cors(res, cors))
}

/// `POST /oauth2/introspect`: a confidential client (about its own tokens), or a Bearer token or
/// API key with scope `oauth:introspect` (about any).
pub async fn introspect(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    OAuthForm(p): OAuthForm,
) -> Result<Response, OAuthError> {
    p.once()?;
    let is_basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..6))
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "));
    let caller = if is_basic || p.get("client_id").is_some() {
        let c = client_of(&state, &headers, &p, ip, &ctx).await?;
        if !c.auth_method.uses_secret() {
            return Err(OAuthError::unauthorized_client(
                "introspection is for confidential clients",
            ));
        }
        Introspector::Client(c)
    } else {
        let uri = format!("{}/oauth2/introspect", state.oauth.issuer());
        let target = crate::auth::Target {
            method: "POST",
            uri: &uri,
        };
        let principal = match credential::from_headers(&Method::POST, &headers) {
            Ok(c) => state.auth.authenticate_at(c, target).await,
            Err(e) => Err(e),
        };
        match principal {
            Ok(p) if p.scopes.is_admin() || p.scopes.contains(INTROSPECT_SCOPE) => {
                Introspector::Principal(p)
            }
            Ok(_) => {
                return Err(OAuthError::bearer(
                    403,
                    "insufficient_scope",
                    "introspection needs the oauth:introspect scope",
                ));
            }
            Err(_) => return Err(OAuthError::invalid_client(false)),
        }
    };
    let token = p
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let v = state.oauth.introspect(&caller, token).await?;
    Ok(json_no_store(StatusCode::OK, v))
}

/// `POST /oauth2/revoke` (RFC 7009).
pub async fn revoke(
    State(state): State<AppState>,
    ip: ClientIp,
    AuditCtx(ctx): AuditCtx,
    headers: HeaderMap,
    OAuthForm(p): OAuthForm,
) -> Result<Response, OAuthError> {
    p.once()?;
    let client = client_of(&state, &headers, &p, ip, &ctx).await?;
    let cors = cors_for(&state, &headers, &client)?;
    let res = match p.get("token") {
        None => OAuthError::invalid_request("token is required").into_response(),
        Some(token) => match state.oauth.revoke(&client, token, &ctx).await {
            Ok(()) => json_no_store(StatusCode::OK, json!({})),
            Err(e) => e.into_response(),
        },
    };
    Ok(with_cors(res, cors))
}

/// `GET` and `POST /oauth2/userinfo` with a Bearer token.
pub async fn userinfo(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop")
        })
        .map(|(scheme, t)| (scheme.eq_ignore_ascii_case("dpop"), t.trim()));
    let Some((is_dpop, token)) = presented.filter(|(_, t)| !t.is_empty()) else {
        return OAuthError::bearer(401, "", "an access token is required").into_response();
    };
    let uri = format!("{}/oauth2/userinfo", state.oauth.issuer());
    let target = crate::auth::Target {
        method: method.as_str(),
        uri: &uri,
    };
    let dpop = if is_dpop {
        match credential::dpop_proof(&headers) {
            Ok(Some(proof)) => Some((proof, state.auth.as_ref(), target)),
            _ => {
                let mut e = OAuthError::new("invalid_dpop_proof", "send one DPoP proof");
                e.status = 401;
                e.challenge = Some(crate::tokens::dpop::INVALID_CHALLENGE.into());
                return e.into_response();
            }
        }
    } else {
        None
    };
    match state.oauth.userinfo(token, dpop).await {
        Ok((v, client_id)) => {
            // The token names its client; a browser may read this from that client's origins.
            let cors = match state.oauth.clients.get(&client_id).await {
                Ok(Some(c)) => match cors_for(&state, &headers, &c) {
                    Ok(c) => c,
                    Err(e) => return e.into_response(),
                },
                _ => None,
            };
            with_cors(json_no_store(StatusCode::OK, v), cors)
        }
        Err(e) => e.into_response(),
    }
}

/// OpenID Provider metadata (OIDC Discovery 1.0) and RFC 8414 authorization server metadata: one
/// document, advertising exactly what is served.
pub async fn discovery(State(state): State<AppState>) -> Response {
    let iss = state.oauth.issuer().to_owned();
    let at = |path: &str| format!("{iss}{path}");
    let doc = json!({
        "issuer": iss,
        "authorization_endpoint": at("/oauth2/authorize"),
        "token_endpoint": at("/oauth2/token"),
        "jwks_uri": at("/.well-known/jwks.json"),
        "userinfo_endpoint": at("/oauth2/userinfo"),
        "introspection_endpoint": at("/oauth2/introspect"),
        "revocation_endpoint": at("/oauth2/revoke"),
        "end_session_endpoint": at("/oauth2/logout"),
        "device_authorization_endpoint": at("/oauth2/device_authorization"),
        "pushed_authorization_request_endpoint": at("/oauth2/par"),
        "require_pushed_authorization_requests": state.config.oauth_require_par,
        "dpop_signing_alg_values_supported": crate::tokens::dpop::ALGS,
        "registration_endpoint": state.oauth.registration_enabled().then(|| at("/oauth2/register")),
        "client_id_metadata_document_supported": state.oauth.clients.metadata_documents(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": [
            GrantType::AuthorizationCode.as_str(),
            GrantType::RefreshToken.as_str(),
            GrantType::ClientCredentials.as_str(),
            GrantType::DeviceCode.as_str(),
            GrantType::TokenExchange.as_str(),
        ],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": state.keys.algs().iter().rev().map(|a| a.as_str()).collect::<Vec<_>>(),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": crate::tokens::dpop::ALGS,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "bearer"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid", "at_hash", "amr", "azp", "email", "email_verified", "name"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
        "frontchannel_logout_supported": false,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    });
    let mut doc = doc;
    if let Some(o) = doc.as_object_mut() {
        // What is off is not advertised at all.
        o.retain(|_, v| !v.is_null());
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        doc.to_string(),
    )
        .into_response()
}

/// Discovery at a path-inserted well-known URL: served when the path is the issuer's own, else 404.
pub async fn discovery_for_path(
    State(state): State<AppState>,
    Path(issuer_path): Path<String>,
) -> Response {
    let own = url::Url::parse(state.oauth.issuer())
        .map(|u| u.path().trim_matches('/').to_owned())
        .unwrap_or_default();
    if own.is_empty() || issuer_path.trim_matches('/') != own {
        return crate::http::ApiError::NoRoute.into_response();
    }
    discovery(State(state)).await
}

/// The OAuth protocol's own routes (described by the discovery document, not the OpenAPI one).
pub fn protocol_routes() -> Router<AppState> {
    Router::new()
        .route("/oauth2/token", post(token).options(preflight))
        .route("/oauth2/par", post(par).options(preflight))
        .route("/oauth2/register", post(register).options(preflight))
        .route(
            "/oauth2/register/{client_id}",
            get(manage_registration)
                .put(manage_registration)
                .delete(manage_registration),
        )
        .route(
            "/oauth2/device_authorization",
            post(device_authorization).options(preflight),
        )
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke).options(preflight))
        .route(
            "/oauth2/userinfo",
            get(userinfo).post(userinfo).options(preflight),
        )
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        // RFC 8414 §3.1: an issuer with a path has its metadata at the path-inserted URL (MCP
        // clients try these first), and OIDC Discovery's appended form is served too.
        .route(
            "/.well-known/oauth-authorization-server/{*issuer_path}",
            get(discovery_for_path),
        )
        .route(
            "/.well-known/openid-configuration/{*issuer_path}",
            get(discovery_for_path),
        )
}

// ---- /admin/v1/clients ---------------------------------------------------------------------------

/// A client as the admin API shows it; `client_secret` only in the answer that made it.
#[derive(Serialize, ToSchema)]
pub struct ClientView {
    client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(flatten)]
    settings: ClientSettings,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: Millis,
}

impl std::fmt::Debug for ClientView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientView({})", self.client_id)
    }
}

fn view(c: &Client, secret: Option<SecretString>) -> ClientView {
    ClientView {
        client_id: c.id.to_string(),
        client_secret: secret.map(|s| s.expose_secret().to_owned()),
        settings: c.settings.clone(),
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    clients: Vec<ClientView>,
    next_cursor: Option<String>,
}

fn created(v: ClientView) -> Response {
    let mut res = (StatusCode::CREATED, axum::Json(v)).into_response();
    no_store(&mut res);
    res
}

/// Register an OAuth client (admin). A confidential client's secret is in this answer only.
#[utoipa::path(post, path = "/admin/v1/clients", operation_id = "create_client", tag = "admin",
    request_body = ClientSettings,
    responses((status = 201, body = ClientView), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Json(body): Json<ClientSettings>,
) -> ApiResult<Response> {
    let (client, secret) = state
        .oauth
        .clients
        .create(&admin.subject, &body, &ctx)
        .await?;
    Ok(created(view(&client, secret)))
}

/// List OAuth clients (admin), oldest first.
#[utoipa::path(get, path = "/admin/v1/clients", operation_id = "list_clients", tag = "admin", params(PageQuery<ClientId>),
    responses((status = 200, body = ClientList), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<PageQuery<ClientId>>,
) -> ApiResult<axum::Json<ClientList>> {
    let page = PageRequest::parse(q, state.config.max_page_size)?;
    let mut rows = state
        .oauth
        .clients
        .list(page.cursor.as_ref(), page.fetch())
        .await?;
    let next_cursor = page.cut(&mut rows, |c| c.id.to_string());
    Ok(axum::Json(ClientList {
        clients: rows.into_iter().map(|c| view(&c, None)).collect(),
        next_cursor,
    }))
}

/// One OAuth client (admin).
#[utoipa::path(get, path = "/admin/v1/clients/{client_id}", operation_id = "get_client", tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses((status = 200, body = ClientView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn read(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ClientView>> {
    let client = state
        .oauth
        .clients
        .get(&id)
        .await?
        .ok_or_else(|| Error::NotFound("no such client".into()))?;
    Ok(axum::Json(view(&client, None)))
}

/// Change an OAuth client (admin): the fields given replace the registered ones; the type and
/// authentication method cannot change.
#[utoipa::path(patch, path = "/admin/v1/clients/{client_id}", operation_id = "update_client", tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    request_body = Object,
    responses((status = 200, body = ClientView), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
    Json(patch): Json<serde_json::Map<String, Value>>,
) -> ApiResult<axum::Json<ClientView>> {
    let current = state
        .oauth
        .clients
        .get(&id)
        .await?
        .ok_or_else(|| Error::NotFound("no such client".into()))?;
    let mut merged = serde_json::to_value(&current.settings).map_err(Error::internal)?;
    if let Some(obj) = merged.as_object_mut() {
        for (k, v) in patch {
            obj.insert(k, v);
        }
    }
    let settings: ClientSettings = serde_json::from_value(merged)
        .map_err(|e| Error::field("body", "invalid", e.to_string()))?;
    let client = state
        .oauth
        .clients
        .update(&admin.subject, &id, &settings, &ctx)
        .await?;
    Ok(axum::Json(view(&client, None)))
}

/// Delete an OAuth client (admin): its refresh tokens stop working, its codes and consents go.
#[utoipa::path(delete, path = "/admin/v1/clients/{client_id}", operation_id = "delete_client", tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .oauth
        .clients
        .delete(&admin.subject, &id, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate a confidential client's secret (admin): the new one is in this answer only, the old one
/// stops working at once.
#[utoipa::path(post, path = "/admin/v1/clients/{client_id}/secret", operation_id = "rotate_client_secret", tag = "admin",
    params(("client_id" = String, Path, description = "The client's id")),
    responses((status = 201, body = ClientView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (client, secret) = state
        .oauth
        .clients
        .rotate_secret(&admin.subject, &id, &ctx)
        .await?;
    Ok(created(view(&client, Some(secret))))
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, update, delete))
        .routes(routes!(rotate_secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded_halves() {
        let mut h = HeaderMap::new();
        let raw = STANDARD.encode("cli_x%3Ay:s%2Bc%20r");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {raw}").parse().unwrap(),
        );
        let (id, secret) = basic_credentials(&h).unwrap().unwrap();
        assert_eq!(id, "cli_x:y");
        assert_eq!(secret.expose_secret(), "s+c r");
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&h).unwrap_err().code, "invalid_client");
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(basic_credentials(&h).unwrap_err().code, "invalid_request");
    }
}
