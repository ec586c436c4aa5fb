//! `/v1/authorize` (any method) and RFC 9728 `/.well-known/oauth-protected-resource[/path]`.
//!
//! Forward auth answers gateways, so its edge is a bare status and headers: 200 with `X-Auth-*`,
//! 401 with an RFC 6750 §3 challenge (and RFC 9728 §5.1 `resource_metadata`), 403, 429 with the
//! RateLimit headers, or 302 to the login page; each non-200 also carries a short problem JSON body,
//! which Caddy and Traefik hand to the client.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use portcullis_core::bearer::Challenge;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::{BadOriginal, Original, Verdict};
use crate::app::state::AppState;
use crate::auth::credential;
use crate::auth::extract::credential_in_query;
use crate::error::Error;
use crate::http::ApiError;
use crate::http::error::{Problem, rate_limit_headers};

/// The documented routes: `/v1/authorize` for every method a gateway may forward, and the RFC 9728
/// metadata of a resource at the root path.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            authorize_get,
            authorize_post,
            authorize_put,
            authorize_patch,
            authorize_delete,
            authorize_options
        ))
        .routes(routes!(metadata_root))
}

/// Routes with a path of any depth, which OpenAPI cannot state: Envoy's ext_authz form
/// (`/v1/authorize/<original path>`) and the metadata of resources with a path.
pub fn wildcard_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/authorize/{*rest}", any(authorize))
        .route(
            "/.well-known/oauth-protected-resource/{*path}",
            get(metadata_path),
        )
}

/// One documented operation per method, all answered by [`authorize`].
macro_rules! authorize_method {
    ($($name:ident: $method:ident),* $(,)?) => {$(
        /// Forward auth: is the request the gateway describes (`X-Forwarded-*` or nginx's
        /// `X-Original-*`) allowed, and who is making it? Its credential (Bearer JWT or opaque
        /// token, API key, session cookie) is checked as on our own API and against the route rules.
        #[utoipa::path($method, path = "/v1/authorize", tag = "forward-auth",
            params(
                ("x-forwarded-method" = Option<String>, Header, description = "The original method (else X-Original-Method, else this request's)"),
                ("x-forwarded-uri" = Option<String>, Header, description = "The original path and query (else X-Original-URI)"),
                ("x-forwarded-host" = Option<String>, Header, description = "The original host (else Host)"),
            ),
            responses(
                (status = 200, description = "Allowed; X-Auth-Subject, X-Auth-Method, X-Auth-Scopes, X-Auth-Key-Id, X-Auth-Client-Id, X-Auth-Session-Id say who (empty where they do not apply)"),
                (status = 302, description = "A login_redirect route without a session: to /login?return_to=…"),
                (status = 400, body = Problem, description = "The gateway did not describe the request"),
                (status = 401, body = Problem, description = "No valid credential; WWW-Authenticate says why"),
                (status = 403, body = Problem, description = "Refused: insufficient_scope, no_route, csrf_failed, usage_exceeded, credential_in_query, bad_path, uri_too_long"),
                (status = 429, body = Problem, description = "The credential's rate limit is spent"),
            ))]
        pub async fn $name(state: State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
            authorize(state, method, uri, headers).await
        }
    )*};
}

authorize_method!(
    authorize_get: get,
    authorize_post: post,
    authorize_put: put,
    authorize_patch: patch,
    authorize_delete: delete,
    authorize_options: options,
);

/// The one value of header `name`; `Err` when it is sent twice (which one the gateway meant cannot
/// be known) or is not text.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, BadOriginal> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadOriginal {
            status: 400,
            code: "bad_forwarded_request",
            detail: format!("{name} was sent more than once"),
        });
    }
    first.to_str().map(Some).map_err(|_| BadOriginal {
        status: 400,
        code: "bad_forwarded_request",
        detail: format!("{name} is not visible ASCII"),
    })
}

/// The original request from `X-Forwarded-*`, else nginx's `X-Original-*` with `Host`, else (Envoy)
/// this request's own method and the path after `/v1/authorize`.
fn original(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Original, BadOriginal> {
    let forwarded_method =
        single(headers, "x-forwarded-method")?.or(single(headers, "x-original-method")?);
    let forwarded_uri = single(headers, "x-forwarded-uri")?.or(single(headers, "x-original-uri")?);
    let host = single(headers, "x-forwarded-host")?
        .or(single(headers, "host")?)
        .unwrap_or_default();
    let own_path;
    let target = match (forwarded_uri, uri.path().strip_prefix("/v1/authorize")) {
        (Some(u), _) => u,
        (None, Some(rest)) if rest.starts_with('/') => {
            own_path = match uri.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            &own_path
        }
        _ => {
            return Err(BadOriginal {
                status: 400,
                code: "bad_forwarded_request",
                detail: "the gateway must say which request it asks about: send X-Forwarded-Uri \
                         (or nginx's X-Original-URI) with X-Forwarded-Method"
                    .into(),
            });
        }
    };
    let mut original = Original::parse(forwarded_method.unwrap_or(method.as_str()), target, host)?;
    original.scheme = match single(headers, "x-forwarded-proto")? {
        Some(p) if p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https") => {
            Some(p.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(BadOriginal {
                status: 400,
                code: "bad_forwarded_request",
                detail: "X-Forwarded-Proto must be http or https".into(),
            });
        }
        None => None,
    };
    Ok(original)
}

async fn authorize(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let original = match original(&method, &uri, &headers) {
        Ok(o) => o,
        Err(bad) => {
            count("bad_request");
            let status = StatusCode::from_u16(bad.status).unwrap_or(StatusCode::BAD_REQUEST);
            return problem(status, bad.code, &bad.detail, HeaderMap::new());
        }
    };
    if credential_in_query(original.query()) {
        count("bad_request");
        return problem(
            StatusCode::FORBIDDEN,
            "credential_in_query",
            "credentials belong in a header (X-API-Key or Authorization), never in the URL, where \
             proxies, logs and browser history keep them; this request was refused",
            HeaderMap::new(),
        );
    }
    let method = Method::from_bytes(original.method.as_bytes()).unwrap_or(Method::GET);
    let credential = credential::from_headers(&method, &headers);
    let verdict = match state.forward_auth.decide(&original, credential).await {
        Ok(v) => v,
        Err(e) => {
            count("error");
            return ApiError::from(e).into_response();
        }
    };
    count(verdict.outcome());
    render(verdict)
}

/// Counts an answer; the counters are registered once, not looked up per request.
fn count(outcome: &'static str) {
    const OUTCOMES: [&str; 8] = [
        "allowed",
        "anonymous",
        "unauthenticated",
        "login",
        "forbidden",
        "rate_limited",
        "bad_request",
        "error",
    ];
    static COUNTERS: std::sync::OnceLock<Vec<metrics::Counter>> = std::sync::OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        OUTCOMES
            .iter()
            .map(|o| metrics::counter!("portcullis_forward_auth_total", "outcome" => *o))
            .collect()
    });
    if let Some(c) = OUTCOMES
        .iter()
        .position(|o| *o == outcome)
        .and_then(|i| counters.get(i))
    {
        c.increment(1);
    }
}

/// A `WWW-Authenticate` Bearer challenge (RFC 6750 §3, RFC 9728 §5.1).
fn challenge(
    error: Option<(&str, &str)>,
    scope: Option<&str>,
    resource_metadata: Option<&str>,
) -> Option<HeaderValue> {
    let value = Challenge {
        realm: None,
        error,
        scope,
        resource_metadata,
    }
    .render();
    HeaderValue::try_from(value).ok()
}

fn render(verdict: Verdict) -> Response {
    // Room for the identity headers and what the middleware adds, without growing.
    let mut headers = HeaderMap::with_capacity(16);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match verdict {
        Verdict::Allow(p, digest) => {
            // Every identity header, empty where it does not apply (an anonymous pass, a key's
            // client id): gateways that copy named headers (Caddy's copy_headers, Traefik's
            // authResponseHeaders) then overwrite whatever the client sent under those names, and
            // some Caddy releases would otherwise pass on a placeholder's text.
            let scopes = p.as_ref().map(|p| p.scopes.to_string()).unwrap_or_default();
            let pairs = [
                ("x-auth-subject", p.as_ref().map(|p| p.subject.as_str())),
                ("x-auth-method", p.as_ref().map(|p| p.method.as_str())),
                ("x-auth-scopes", p.as_ref().map(|_| scopes.as_str())),
                (
                    "x-auth-key-id",
                    p.as_ref().and_then(|p| {
                        p.key_id
                            .as_ref()
                            .map(|k| k.as_str())
                            .or(p.signature_key_id.as_ref().map(|k| k.as_str()))
                    }),
                ),
                (
                    "x-auth-client-id",
                    p.as_ref().and_then(|p| p.client_id.as_deref()),
                ),
                (
                    "x-auth-session-id",
                    p.as_ref()
                        .and_then(|p| p.session_id.as_ref())
                        .map(|s| s.as_str()),
                ),
                // A signed request's covered Content-Digest, for the upstream to check the body.
                ("x-auth-content-digest", digest.as_deref()),
            ];
            for (name, value) in pairs {
                let value = HeaderValue::from_str(value.unwrap_or_default())
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                headers.insert(HeaderName::from_static(name), value);
            }
            (StatusCode::OK, headers).into_response()
        }
        Verdict::Challenge { error, resource } => {
            let detail = error.as_ref().map_or(
                "this request needs a credential: a Bearer access token, an API key or a session",
                |(_, d)| d.as_str(),
            );
            let code = error.as_ref().map_or("unauthenticated", |(c, _)| c);
            if code == "invalid_dpop_proof" {
                // RFC 9449 §7.1: a refused proof is answered in the DPoP scheme.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(crate::tokens::dpop::INVALID_CHALLENGE),
                );
            } else if let Some(v) = challenge(
                error.as_ref().map(|(c, d)| (*c, d.as_str())),
                None,
                resource.as_deref(),
            ) {
                headers.insert(header::WWW_AUTHENTICATE, v);
                if error
                    .as_ref()
                    .is_some_and(|(_, d)| d.ends_with(": dpop_bound"))
                {
                    headers.append(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(crate::tokens::dpop::CHALLENGE),
                    );
                }
            }
            problem(StatusCode::UNAUTHORIZED, code, detail, headers)
        }
        Verdict::Login { return_to } => {
            let escaped: String =
                url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
            if let Ok(v) = HeaderValue::try_from(format!("/login?return_to={escaped}")) {
                headers.insert(header::LOCATION, v);
            }
            (StatusCode::FOUND, headers).into_response()
        }
        Verdict::Refuse {
            code,
            detail,
            scope,
            resource,
        } => {
            if code == "insufficient_scope"
                && let Some(v) = challenge(
                    Some((code, "the credential lacks a scope this request needs")),
                    scope.as_deref(),
                    resource.as_deref(),
                )
            {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
            problem(StatusCode::FORBIDDEN, code, &detail, headers)
        }
        Verdict::Unsigned(reason) => {
            let mut response = problem_with_reason(
                StatusCode::UNAUTHORIZED,
                "signature_invalid",
                &Error::SignatureInvalid(reason.clone()).to_string(),
                Some(reason.to_string()),
                headers,
            );
            // The reason also as a header: nginx's auth_request drops the body.
            if let Ok(v) = HeaderValue::from_str(&reason.to_string()) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static("x-auth-signature-reason"), v);
            }
            response
        }
        Verdict::Throttled(t) => {
            rate_limit_headers(&mut headers, &t);
            problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &Error::RateLimited(t).to_string(),
                headers,
            )
        }
    }
}

fn problem(status: StatusCode, code: &str, detail: &str, headers: HeaderMap) -> Response {
    problem_with_reason(status, code, detail, None, headers)
}

fn problem_with_reason(
    status: StatusCode,
    code: &str,
    detail: &str,
    reason: Option<String>,
    mut headers: HeaderMap,
) -> Response {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    let body = Problem {
        kind: format!("https://portcullis.dev/problems/{}", code.replace('_', "-")),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        code: code.to_owned(),
        errors: Vec::new(),
        reason,
    };
    (
        status,
        headers,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

/// RFC 9728 protected resource metadata.
#[derive(Serialize, ToSchema)]
pub struct ResourceMetadata {
    resource: String,
    authorization_servers: Vec<String>,
    scopes_supported: Vec<String>,
    bearer_methods_supported: Vec<String>,
}

/// RFC 9728 metadata of the protected resource (a route rule's `resource`) whose URL has no path;
/// those with a path are at `/.well-known/oauth-protected-resource/<path>`.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource", tag = "forward-auth",
    responses((status = 200, body = ResourceMetadata), (status = 404, body = Problem)))]
pub async fn metadata_root(State(state): State<AppState>, headers: HeaderMap) -> Response {
    metadata(&state, "", &headers)
}

async fn metadata_path(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata(&state, &format!("/{path}"), &headers)
}

/// RFC 9728 §3: the metadata of the protected resource at this well-known suffix.
fn metadata(state: &AppState, suffix: &str, headers: &HeaderMap) -> Response {
    let host = ["x-forwarded-host", "host"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()));
    let Some(r) = state.forward_auth.resource_at(suffix, host) else {
        return ApiError::from(Error::NotFound(
            "no route rule names a protected resource at this address".into(),
        ))
        .into_response();
    };
    let doc = ResourceMetadata {
        resource: r.resource.clone(),
        authorization_servers: vec![state.config.issuer()],
        scopes_supported: r.scopes.clone(),
        bearer_methods_supported: vec!["header".into()],
    };
    let doc = serde_json::to_string(&doc).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        doc,
    )
        .into_response()
}
