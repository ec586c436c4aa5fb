//! Request extractors with precise errors: bodies as JSON (or form data where the contract allows it),
//! the client's address, the request id, and the two as an audit context.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::audit::AuditContext;
use crate::error::{Error, FieldError};

/// A JSON body (`application/json` or `application/*+json`).
pub struct Json<T>(pub T);

/// A JSON or `application/x-www-form-urlencoded` body, for endpoints marked *form ok*.
pub struct JsonOrForm<T>(pub T);

fn media_type(req: &Request) -> Option<String> {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Reads the whole body, within the size limit and before the body deadline: a body trickled in
/// slower than that is answered 408 instead of holding a connection and a task for ever.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map(|l| l.0)
        .unwrap_or(64 * 1024);
    let deadline = req.extensions().get::<BodyDeadline>().map(|d| d.0);
    let read = Bytes::from_request(req, state);
    let read = match deadline {
        Some(at) => tokio::time::timeout_at(at, read)
            .await
            .map_err(|_| ApiError::RequestTimeout)?,
        None => read.await,
    };
    read.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::MalformedBody("the request body could not be read".into())
        }
    })
}

/// The configured body limit, put in request extensions by the router so errors can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// When the request body must have arrived by (`request_body_timeout_s` after the request began).
#[derive(Clone, Copy)]
pub struct BodyDeadline(pub tokio::time::Instant);

/// Maps a serde error to our codes without echoing input values (a field could hold a password).
/// A JSON body as `T`. A number with a zero fraction (`1.0`) is an integer, as JSON Schema counts
/// it; serde would refuse it for an integer field, so a body that fails for its data is read once
/// more with such numbers made integers (the common body never pays for this).
fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = match serde_json::from_slice(bytes) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    if first.classify() != serde_json::error::Category::Data {
        return Err(json_error(first));
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_error)?;
    if !integral_floats_to_integers(&mut value) {
        return Err(json_error(first));
    }
    serde_json::from_value(value).map_err(json_error)
}

/// Turns every float with a zero fraction into an integer; whether there was one.
fn integral_floats_to_integers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return false };
            // Exactly representable integers only: below 2^53 every integer is an exact f64.
            if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                *value = Value::from(f as i64);
                true
            } else {
                false
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| integral_floats_to_integers(v) | changed),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, v| integral_floats_to_integers(v) | changed),
        _ => false,
    }
}

fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => data_error(&e.to_string(), "body"),
        Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedBody(format!(
            "the body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )),
    }
}

fn data_error(message: &str, what: &str) -> ApiError {
    let quoted = |m: &str| m.split('`').nth(1).unwrap_or_default().to_owned();
    let error = if message.starts_with("unknown field") {
        let field = quoted(message);
        FieldError::new(&field, "unknown_field", format!("unknown field `{field}`"))
    } else if message.starts_with("missing field") {
        let field = quoted(message);
        FieldError::new(&field, "required", format!("`{field}` is required"))
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        // serde names the expected type at the end: "…, expected a string".
        let expected = message
            .rsplit(", expected ")
            .next()
            .unwrap_or("another type");
        let expected = expected.split(" at line").next().unwrap_or(expected);
        FieldError::new(
            "",
            "invalid_type",
            format!("a field has the wrong type: expected {expected}"),
        )
    } else if message.starts_with("duplicate field") {
        let field = quoted(message);
        FieldError::new(
            &field,
            "duplicate_field",
            format!("`{field}` appears twice"),
        )
    } else {
        FieldError::new(
            "",
            "invalid",
            format!("the {what} does not have the expected shape"),
        )
    };
    ApiError::Domain(Error::Validation(vec![error]))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match media_type(&req) {
            Some(m) if is_json(&m) => {}
            _ => {
                return Err(ApiError::UnsupportedMediaType(
                    "send the body as application/json".into(),
                ));
            }
        }
        let bytes = body_bytes(req, state).await?;
        from_json(&bytes).map(Json)
    }
}

/// The query string, refused like a body (problem JSON 400: unknown or repeated parameters, wrong
/// types), where axum's own `Query` would answer plain text.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or_default())
            .map(Query)
            .map_err(|e| data_error(&e.to_string(), "query string"))
    }
}

/// A JSON body that may be left out entirely (an empty body means `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let media = media_type(&req);
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        match media {
            // `null` is no body too, as an empty one is.
            Some(m) if is_json(&m) => {
                from_json::<Option<T>>(&bytes).map(|body| OptionalJson(body.unwrap_or_default()))
            }
            _ => Err(ApiError::UnsupportedMediaType(
                "send the body as application/json".into(),
            )),
        }
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonOrForm<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let media = media_type(&req);
        match media.as_deref() {
            Some(m) if is_json(m) => {
                let bytes = body_bytes(req, state).await?;
                from_json(&bytes).map(JsonOrForm)
            }
            Some("application/x-www-form-urlencoded") => {
                let bytes = body_bytes(req, state).await?;
                serde_urlencoded::from_bytes(&bytes)
                    .map(JsonOrForm)
                    .map_err(|e| {
                        let message = e.to_string();
                        if message.starts_with("unknown field")
                            || message.starts_with("missing field")
                        {
                            data_error(&message, "body")
                        } else {
                            ApiError::MalformedBody("the form body could not be parsed".into())
                        }
                    })
            }
            _ => Err(ApiError::UnsupportedMediaType(
                "send the body as application/json or application/x-www-form-urlencoded".into(),
            )),
        }
    }
}

/// The client's address, as the router's middleware worked it out: the peer's, or from
/// `X-Forwarded-For` when the peer is one of `trusted_proxies` (see [`super::middleware::client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            return Ok(*ip);
        }
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(Self(addr))
    }
}

/// The id of this request (`X-Request-Id`), set by the observing middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(String::new())))
    }
}

/// Where a request came from, for the audit log: the client's address and the request id.
pub struct AuditCtx(pub AuditContext);

impl<S: Send + Sync> FromRequestParts<S> for AuditCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ip = ClientIp::from_request_parts(parts, state).await?;
        let id = RequestId::from_request_parts(parts, state).await?;
        Ok(Self(AuditContext {
            ip: Some(ip.0.to_string()),
            request_id: Some(id.0),
        }))
    }
}
