//! The router and the middleware every response passes through: request id, security headers,
//! `Cache-Control`, metrics and the request log.

use std::time::Instant;

use axum::Router;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::{ApiError, InternalCause};
use crate::extract::{BodyDeadline, BodyLimit, ClientIp, RequestId};
use crate::state::AppState;
use crate::{admin, apikeys, ops, pages, sessions, tokens, users};

pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/users", post(users::register))
        .route("/v1/me", get(users::me))
        .route("/v1/me/password", post(users::change_password))
        .route("/v1/auth/login", post(tokens::login))
        .route("/v1/auth/refresh", post(tokens::refresh))
        .route("/v1/auth/logout", post(tokens::logout))
        .route("/v1/auth/logout-all", post(tokens::logout_all))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/current",
            get(sessions::current).delete(sessions::revoke_current),
        )
        .route("/v1/sessions/{id}", axum::routing::delete(sessions::revoke))
        .route(
            "/admin/v1/users/{id}/sessions",
            get(sessions::admin_list).delete(sessions::admin_revoke_all),
        )
        .route("/v1/keys", post(apikeys::create).get(apikeys::list))
        .route("/v1/keys/verify", post(apikeys::verify))
        .route(
            "/v1/keys/{id}",
            get(apikeys::get)
                .patch(apikeys::patch)
                .delete(apikeys::revoke),
        )
        .route("/v1/keys/{id}/roll", post(apikeys::roll))
        .route("/.well-known/jwks.json", get(tokens::jwks))
        .route("/admin/v1/users", get(users::list))
        .route("/admin/v1/users/import", post(users::import))
        .route("/admin/v1/users/{id}/disable", post(users::disable))
        .route("/admin/v1/users/{id}/enable", post(users::enable))
        .route("/admin/v1/signing-keys", get(tokens::list_signing_keys))
        .route("/admin/v1/signing-keys/rotate", post(tokens::rotate))
        .route(
            "/admin/v1/signing-keys/{kid}/revoke",
            post(tokens::revoke_signing_key),
        )
        .route("/admin/v1/audit", get(admin::audit))
        .route("/admin/v1/keys", get(apikeys::admin_list))
        .route(
            "/admin/v1/keys/{id}",
            get(apikeys::admin_get).delete(apikeys::admin_revoke),
        )
        .route("/login", get(pages::login_form).post(pages::login_submit))
        .route("/account", get(pages::account))
        .route("/account/logout", post(pages::logout))
        .route("/account/sessions/{id}/revoke", post(pages::revoke_session))
        .route("/account/keys", post(pages::create_key))
        .route("/account/keys/{id}/revoke", post(pages::revoke_key))
        .route("/account/keys/{id}/roll", post(pages::roll_key))
        .route("/account/password", post(pages::change_password))
        .route("/assets/portcullis.css", get(pages::stylesheet))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The router of the separate `metrics_listen` address: `/metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics_unrestricted))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// An incoming `X-Request-Id` is kept only if it is short and plain, so it cannot inject into logs.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

/// The method as a metrics label: one of the standard methods, else `other`, so that made-up methods
/// cannot grow the number of series without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Right-most, because every proxy appends
/// what it saw and only our own proxies' entries can be believed; anything left of the first
/// untrusted hop was written by the client. An entry that does not parse ends the walk there.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let peer = peer.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let parsed = hop
            .parse::<std::net::IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
        let Ok(ip) = parsed else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let client = client_ip(
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip()),
        req.headers(),
        &state.trusted_proxies,
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(ClientIp(client));
    req.extensions_mut()
        .insert(BodyLimit(state.config.max_body_bytes));
    req.extensions_mut().insert(BodyDeadline(
        tokio::time::Instant::now()
            + std::time::Duration::from_secs(state.config.request_body_timeout_s),
    ));

    // An announced oversized body is refused before a byte of it is read; bodies without a length
    // are cut off by the extractors' limit as they stream in.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let cors_origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| state.config.cors_allowed_origins.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = method == axum::http::Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = match announced {
        Some(len) if len > state.config.max_body_bytes as u64 => {
            ApiError::PayloadTooLarge(state.config.max_body_bytes).into_response()
        }
        _ if preflight && cors_origin.is_some() => {
            let mut res = axum::http::StatusCode::NO_CONTENT.into_response();
            let h = res.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PATCH, DELETE"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, x-api-key, x-csrf-token"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            res
        }
        _ => next.run(req).await,
    };

    let status = res.status();
    let elapsed = started.elapsed();
    let headers = res.headers_mut();
    // CORS: only origins on the allowlist (default none) may read our answers from their pages.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = cors_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after, ratelimit, ratelimit-policy"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages set `same-origin` themselves (their own form posts must carry a real Origin); every
    // other answer sends no referrer at all.
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    // Anything that does not say otherwise may carry a secret: never store it.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if let Some(hsts) = &state.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }

    let route_label = route.unwrap_or_else(|| "unmatched".to_owned());
    let status_label = status.as_u16().to_string();
    metrics::counter!("portcullis_http_requests_total", "route" => route_label.clone(), "method" => method_label(&method), "status" => status_label)
        .increment(1);
    metrics::histogram!("portcullis_http_request_duration_seconds", "route" => route_label.clone())
        .record(elapsed.as_secs_f64());

    if let Some(InternalCause(cause)) = res.extensions_mut().remove::<InternalCause>() {
        tracing::error!(request_id = %id, route = %route_label, %method, status = status.as_u16(), cause = %cause, "request failed");
    } else {
        // Paths only, never query strings: a misplaced credential must not reach the log.
        tracing::debug!(request_id = %id, route = %route_label, %method, status = status.as_u16(),
            micros = elapsed.as_micros() as u64, "request");
    }
    res
}
