//! What every request and response passes through, one layer per concern, outermost first:
//!
//! 1. **metrics and the request log** ([`observe`]): counts and times every answer by route, a
//!    bounded method label and status; logs 500s with their cause and request id;
//! 2. **request id** ([`request_id`]): keeps a short, plain incoming `X-Request-Id` or makes one,
//!    and returns it;
//! 3. **security headers** (tower-http): `nosniff`, `X-Frame-Options`, a default CSP,
//!    `Referrer-Policy` and `Cache-Control: no-store` unless the handler chose otherwise, HSTS when
//!    served over TLS;
//! 4. **CORS** ([`cors`]): answers preflights and credentialed requests only for allowlisted origins;
//! 5. **client and body** ([`client_and_body`]): the client's address (trusted proxies), the body
//!    limit (an announced oversized body is refused before a byte of it is read) and the body
//!    deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::set_header::SetResponseHeaderLayer;

use super::error::{ApiError, InternalCause};
use super::extract::{BodyDeadline, BodyLimit, ClientIp, RequestId};

/// What the layers need to know, worked out once at start.
#[derive(Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    pub body_timeout: std::time::Duration,
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    pub cors_allowed_origins: Arc<Vec<String>>,
    /// The HSTS header, when the issuer is https.
    pub hsts: Option<HeaderValue>,
}

/// Wraps `router` in every layer.
pub fn layers<S: Clone + Send + Sync + 'static>(router: Router<S>, s: Settings) -> Router<S> {
    let hsts = s.hsts.clone();
    let mut router = router
        .layer(DefaultBodyLimit::max(s.max_body_bytes))
        .layer(middleware::from_fn_with_state(s.clone(), client_and_body))
        .layer(middleware::from_fn_with_state(s, cors))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            // Anything that does not say otherwise may carry a secret: never store it.
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            // Pages set `same-origin` themselves (their own form posts must carry a real Origin);
            // every other answer sends no referrer at all.
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    if let Some(hsts) = hsts {
        router = router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            hsts,
        ));
    }
    router
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn(observe))
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An incoming `X-Request-Id` is kept only if it is short and plain, so it cannot inject into logs.
fn incoming_request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = match incoming_request_id(req.headers()) {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::now_v7().simple().to_string(),
    };
    let value = HeaderValue::from_str(&id).ok();
    req.extensions_mut().insert(RequestId(id));
    let mut res = next.run(req).await;
    if let Some(v) = value {
        res.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    res
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Right-most, because every proxy appends
/// what it saw and only our own proxies' entries can be believed; anything left of the first
/// untrusted hop was written by the client. An entry that does not parse ends the walk there.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = peer.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
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
            .parse::<IpAddr>()
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

async fn client_and_body(State(s): State<Settings>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = client_ip(peer, req.headers(), &s.trusted_proxies);
    let ext = req.extensions_mut();
    ext.insert(ClientIp(client));
    ext.insert(BodyLimit(s.max_body_bytes));
    ext.insert(BodyDeadline(tokio::time::Instant::now() + s.body_timeout));
    // An announced oversized body is refused before a byte of it is read; bodies without a length
    // are cut off by the extractors' limit as they stream in.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > s.max_body_bytes as u64) {
        return ApiError::PayloadTooLarge(s.max_body_bytes).into_response();
    }
    next.run(req).await
}

/// CORS: only origins on the allowlist (default none) may read our answers from their pages, and only
/// their preflights are answered; every answer varies by `Origin`.
async fn cors(State(s): State<Settings>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| s.cors_allowed_origins.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = if preflight && origin.is_some() {
        let mut res = StatusCode::NO_CONTENT.into_response();
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
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after, ratelimit, ratelimit-policy"),
        );
    }
    res
}

/// The method as a metrics label: one of the standard methods, else `other`, so that made-up methods
/// cannot grow the number of series without bound.
fn method_label(method: &Method) -> &'static str {
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

/// Metrics and the request log. Paths only, never query strings: a misplaced credential must not
/// reach the log.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let mut res = next.run(req).await;
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    metrics::counter!("portcullis_http_requests_total", "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("portcullis_http_request_duration_seconds", "route" => route.clone())
        .record(elapsed.as_secs_f64());
    let id = res
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if let Some(InternalCause(cause)) = res.extensions_mut().remove::<InternalCause>() {
        tracing::error!(request_id = %id, route = %route, method, status, cause = %cause, "request failed");
    } else {
        tracing::debug!(request_id = %id, route = %route, method, status,
            micros = elapsed.as_micros() as u64, "request");
    }
    res
}
