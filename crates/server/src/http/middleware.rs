//! What every request and response passes through, outermost first, each concern its own function:
//!
//! 1. **metrics and the request log** ([`observe`]): counts and times every answer by route, a
//!    bounded method label and status; logs 500s with their cause and request id;
//! 2. **request id** ([`request_id`]): keeps a short, plain incoming `X-Request-Id` or makes one,
//!    and returns it;
//! 3. **security headers** ([`security_headers`]): `nosniff`, `X-Frame-Options`, a default CSP,
//!    `Referrer-Policy` and `Cache-Control: no-store` unless the handler chose otherwise, HSTS when
//!    served over TLS;
//! 4. **CORS** ([`cors_preflight`], [`cors_headers`]): answers preflights and credentialed requests
//!    only for allowlisted origins;
//! 5. **client and body** ([`client_and_body`]): the client's address (trusted proxies), the body
//!    limit (an announced oversized body is refused before a byte of it is read) and the body
//!    deadline.
//!
//! They run in one tower service, [`Edge`], rather than one layer each: axum clones a route's whole
//! layer stack for every request and boxes a future per `from_fn` layer, and with nine layers that
//! was the largest part of the per-request cost (bench/RESULTS.md, "The per-request tax").

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service, ServiceExt};

use super::error::{ApiError, InternalCause};
use super::extract::{BodyDeadline, BodyLimit, ClientIp, RequestId};

/// What the edge needs to know, worked out once at start.
pub struct Settings {
    pub max_body_bytes: usize,
    pub body_timeout: std::time::Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub cors_allowed_origins: Vec<String>,
    /// The HSTS header, when the issuer is https.
    pub hsts: Option<HeaderValue>,
}

/// Wraps every route of `router`, and its fallback, in the [`Edge`].
pub fn layers<S: Clone + Send + Sync + 'static>(router: Router<S>, s: Settings) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(s.max_body_bytes))
        .layer(EdgeLayer(Arc::new(s)))
}

#[derive(Clone)]
struct EdgeLayer(Arc<Settings>);

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            settings: Arc::clone(&self.0),
        }
    }
}

/// The edge around one route: cloning it per request is one reference count and the route's own
/// clone.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The instance that was polled ready serves this request; a clone stays for the next.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let settings = Arc::clone(&self.settings);
        Box::pin(async move { Ok(edge(&settings, inner, req).await) })
    }
}

async fn edge<S>(s: &Settings, inner: S, mut req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let id = request_id(&mut req);
    let origin = allowed_origin(s, req.headers());
    let mut res = if let Some(res) = cors_preflight(&req, origin.as_ref()) {
        res
    } else if let Some(refused) = client_and_body(s, &mut req) {
        refused
    } else {
        match inner.oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    };
    cors_headers(res.headers_mut(), origin);
    security_headers(s, res.headers_mut());
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    observe(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        method,
        &id,
        started,
        &mut res,
    );
    res
}

/// Security headers: some always, some unless the handler set its own.
fn security_headers(s: &Settings, h: &mut HeaderMap) {
    if let Some(hsts) = &s.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let defaults = [
        // Pages set `same-origin` themselves (their own form posts must carry a real Origin);
        // every other answer sends no referrer at all.
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        // Anything that does not say otherwise may carry a secret: never store it.
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
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

/// This request's id, also put in its extensions for the handlers and the audit log.
fn request_id(req: &mut Request) -> String {
    let id = match incoming_request_id(req.headers()) {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::now_v7().simple().to_string(),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    id
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

/// The client's address, the body limit and deadline, into the request's extensions; the refusal of
/// an announced oversized body, if it is one (bodies without a length are cut off by the extractors'
/// limit as they stream in).
fn client_and_body(s: &Settings, req: &mut Request) -> Option<Response> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = client_ip(peer, req.headers(), &s.trusted_proxies);
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let ext = req.extensions_mut();
    ext.insert(ClientIp(client));
    ext.insert(BodyLimit(s.max_body_bytes));
    ext.insert(BodyDeadline(tokio::time::Instant::now() + s.body_timeout));
    announced
        .is_some_and(|len| len > s.max_body_bytes as u64)
        .then(|| ApiError::PayloadTooLarge(s.max_body_bytes).into_response())
}

/// CORS: only origins on the allowlist (default none) may read our answers from their pages, and only
/// their preflights are answered; every answer varies by `Origin`.
fn allowed_origin(s: &Settings, headers: &HeaderMap) -> Option<HeaderValue> {
    if s.cors_allowed_origins.is_empty() {
        return None;
    }
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| s.cors_allowed_origins.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok())
}

/// The answer to a preflight from an allowed origin; other requests go on.
fn cors_preflight(req: &Request, origin: Option<&HeaderValue>) -> Option<Response> {
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !preflight || origin.is_none() {
        return None;
    }
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
    Some(res)
}

fn cors_headers(h: &mut HeaderMap, origin: Option<HeaderValue>) {
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
fn observe(route: &str, method: &'static str, id: &str, started: Instant, res: &mut Response) {
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    SERIES.with_borrow_mut(|series| series.record(route, method, status, elapsed.as_secs_f64()));
    if let Some(InternalCause(cause)) = res.extensions_mut().remove::<InternalCause>() {
        tracing::error!(request_id = %id, route = %route, method, status, cause = %cause, "request failed");
    } else {
        tracing::debug!(request_id = %id, route = %route, method, status,
            micros = elapsed.as_micros() as u64, "request");
    }
}

thread_local! {
    static SERIES: RefCell<Series> = RefCell::new(Series::default());
}

/// This thread's handles of the request series, by route, then method and status: looking one up
/// allocates nothing once it exists. Bounded, as the labels are: the router's routes (and
/// `unmatched`), [`method_label`]'s methods, status codes.
#[derive(Default)]
struct Series(HashMap<String, RouteSeries>);

struct RouteSeries {
    duration: metrics::Histogram,
    requests: HashMap<(&'static str, u16), metrics::Counter>,
}

impl Series {
    fn record(&mut self, route: &str, method: &'static str, status: u16, seconds: f64) {
        if !self.0.contains_key(route) {
            let duration = metrics::histogram!("portcullis_http_request_duration_seconds", "route" => route.to_owned());
            self.0.insert(
                route.to_owned(),
                RouteSeries {
                    duration,
                    requests: HashMap::new(),
                },
            );
        }
        let Some(series) = self.0.get_mut(route) else {
            return;
        };
        series.duration.record(seconds);
        series
            .requests
            .entry((method, status))
            .or_insert_with(|| {
                metrics::counter!("portcullis_http_requests_total", "route" => route.to_owned(), "method" => method, "status" => status.to_string())
            })
            .increment(1);
    }
}
