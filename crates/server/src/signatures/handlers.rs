//! `/v1/signing-keys`, `/admin/v1/signature-keys`, `/v1/signatures/verify`, and the middleware that
//! turns a signed request to our own API into its `Principal` before any handler runs (a signature
//! covers the body, which extractors of request parts never see).

use axum::body::{Body as AxumBody, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use portcullis_core::clock::Millis;
use portcullis_core::httpsig::Message;
use portcullis_core::httpsig::verify::Body;
use portcullis_core::ids::SignatureKeyId;
use portcullis_core::principal::Principal;
use portcullis_core::scopes::Scope;
use portcullis_store::SignatureKeyRow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::{NewSignatureKey, SignatureKeyPage, SignedRequest};
use crate::apikeys::parse_owner;
use crate::app::state::AppState;
use crate::auth::{Admin, credential};
use crate::error::Error;
use crate::http::extract::{AuditCtx, BodyDeadline, BodyLimit, Json, Query};
use crate::http::pagination::{PageQuery, PageRequest};
use crate::http::{ApiError, ApiResult, Problem};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
        .routes(routes!(verify))
        .routes(routes!(admin_create, admin_list))
        .routes(routes!(admin_revoke))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSignatureKeyRequest {
    #[schema(schema_with = crate::http::openapi::display_name)]
    name: String,
    /// `hmac-sha256` (we generate the secret and show it once) or `ed25519` (send `public_key`).
    #[schema(pattern = "^(hmac-sha256|ed25519)$")]
    alg: String,
    /// ed25519 only: base64 of the raw 32 bytes, or PEM SubjectPublicKeyInfo.
    #[schema(max_length = 1024)]
    public_key: Option<String>,
    /// Scopes the key's signed requests carry (as for API keys: your own keys may carry keys:read,
    /// keys:write and the operator's self_service_scopes).
    #[schema(max_items = 64)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateSignatureKeyRequest {
    #[schema(schema_with = crate::http::openapi::display_name)]
    name: String,
    #[schema(pattern = "^(hmac-sha256|ed25519)$")]
    alg: String,
    #[schema(max_length = 1024)]
    public_key: Option<String>,
    #[schema(max_items = 64)]
    scopes: Option<Vec<String>>,
    /// The owner (`usr_…`), or `none` (the default) for a key that belongs to no user.
    owner_id: Option<String>,
}

/// A signing key, without its secret.
#[derive(Serialize, ToSchema)]
pub struct SignatureKeyView {
    /// What a signer sends as `keyid`.
    keyid: String,
    name: String,
    /// `hmac-sha256` or `ed25519`.
    alg: String,
    /// ed25519: the public key, base64 of the raw 32 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    scopes: Vec<String>,
    owner_id: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
}

impl From<&SignatureKeyRow> for SignatureKeyView {
    fn from(r: &SignatureKeyRow) -> Self {
        Self {
            keyid: r.id.clone(),
            name: r.name.clone(),
            alg: r.alg.clone(),
            public_key: (r.alg == "ed25519").then(|| STANDARD.encode(&r.key_material)),
            scopes: r
                .scopes
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            owner_id: r.owner_id.clone(),
            created_at: Millis(r.created_at).rfc3339(),
            revoked_at: r.revoked_at.map(|at| Millis(at).rfc3339()),
        }
    }
}

/// A new key; `secret` only for hmac-sha256, only in this response.
#[derive(Serialize, ToSchema)]
pub struct CreatedSignatureKeyView {
    #[serde(flatten)]
    view: SignatureKeyView,
    /// hmac-sha256: the secret, base64 (32 bytes). Shown once; we keep it only sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SignatureKeyList {
    items: Vec<SignatureKeyView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

impl SignatureKeyList {
    fn of(page: SignatureKeyPage) -> Self {
        Self {
            items: page.keys.iter().map(SignatureKeyView::from).collect(),
            next_cursor: page.next_cursor,
        }
    }
}

fn created(row: &SignatureKeyRow, secret: Option<String>) -> Response {
    (
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(CreatedSignatureKeyView {
            view: SignatureKeyView::from(row),
            secret,
        }),
    )
        .into_response()
}

fn keyid(raw: &str) -> Result<SignatureKeyId, Error> {
    SignatureKeyId::parse(raw)
        .map_err(|_| Error::NotFound("no live signing key with this id".into()))
}

/// Make a key for RFC 9421 request signatures. An hmac-sha256 secret is in this response only.
#[utoipa::path(post, path = "/v1/signing-keys", operation_id = "create_signing_key", tag = "signatures",
    request_body = CreateSignatureKeyRequest,
    responses((status = 201, body = CreatedSignatureKeyView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn create(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Json(req): Json<CreateSignatureKeyRequest>,
) -> ApiResult<Response> {
    let (row, secret) = state
        .signatures
        .create(
            &p,
            NewSignatureKey {
                name: req.name,
                alg: req.alg,
                public_key: req.public_key,
                scopes: req.scopes.unwrap_or_default(),
                owner: None,
            },
            &ctx,
        )
        .await?;
    Ok(created(&row, secret))
}

/// The caller's signing keys, oldest first (revoked ones too, with `revoked_at`).
#[utoipa::path(get, path = "/v1/signing-keys", operation_id = "list_signing_keys_rfc9421", tag = "signatures",
    params(PageQuery<SignatureKeyId>),
    responses((status = 200, body = SignatureKeyList), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn list(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<PageQuery<SignatureKeyId>>,
) -> ApiResult<axum::Json<SignatureKeyList>> {
    let page = PageRequest::parse(q, state.config.max_page_size)?;
    let keys = state
        .signatures
        .list(&p, page.cursor.as_ref(), page.limit)
        .await?;
    Ok(axum::Json(SignatureKeyList::of(keys)))
}

/// Revoke one of the caller's signing keys: its signatures are refused (`unknown_key`) at once here
/// and within a second on every node.
#[utoipa::path(delete, path = "/v1/signing-keys/{keyid}", operation_id = "revoke_signing_key_rfc9421", tag = "signatures",
    params(("keyid" = String, Path, description = "A signing key id (sig_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    p: Principal,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .signatures
        .revoke(&p, &keyid(&id)?, false, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Make a signing key for any user, or for none (administrators).
#[utoipa::path(post, path = "/admin/v1/signature-keys", operation_id = "admin_create_signature_key", tag = "admin",
    request_body = AdminCreateSignatureKeyRequest,
    responses((status = 201, body = CreatedSignatureKeyView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_create(
    State(state): State<AppState>,
    Admin(p): Admin,
    AuditCtx(ctx): AuditCtx,
    Json(req): Json<AdminCreateSignatureKeyRequest>,
) -> ApiResult<Response> {
    let owner = parse_owner(req.owner_id.as_deref(), "invalid_id")?.unwrap_or(None);
    if let Some(u) = &owner
        && state.users.user(u.as_str()).await?.is_none()
    {
        return Err(Error::field("owner_id", "unknown_user", "no user has this id").into());
    }
    let (row, secret) = state
        .signatures
        .create(
            &p,
            NewSignatureKey {
                name: req.name,
                alg: req.alg,
                public_key: req.public_key,
                scopes: req.scopes.unwrap_or_default(),
                owner: Some(owner),
            },
            &ctx,
        )
        .await?;
    Ok(created(&row, secret))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminSignatureKeyQuery {
    /// Only this user's keys (`usr_…`), or `none` for keys of no user.
    #[param(pattern = "^(none|usr_[0-9a-f]{32})$")]
    owner: Option<String>,
    /// At most this many items (1 to the server's `max_page_size`, default 50).
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^sig_[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// Every signing key, or one owner's (administrators).
#[utoipa::path(get, path = "/admin/v1/signature-keys", operation_id = "admin_list_signature_keys", tag = "admin",
    params(AdminSignatureKeyQuery),
    responses((status = 200, body = SignatureKeyList), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<AdminSignatureKeyQuery>,
) -> ApiResult<axum::Json<SignatureKeyList>> {
    let owner = parse_owner(q.owner.as_deref(), "invalid_id")?;
    let page = PageRequest::parse(
        PageQuery::<SignatureKeyId>::new(q.limit, q.cursor),
        state.config.max_page_size,
    )?;
    let keys = state
        .signatures
        .list_all(
            owner.as_ref().map(Option::as_ref),
            page.cursor.as_ref(),
            page.limit,
        )
        .await?;
    Ok(axum::Json(SignatureKeyList::of(keys)))
}

/// Revoke any signing key (administrators).
#[utoipa::path(delete, path = "/admin/v1/signature-keys/{keyid}", operation_id = "admin_revoke_signature_key", tag = "admin",
    params(("keyid" = String, Path, description = "A signing key id (sig_…)")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn admin_revoke(
    State(state): State<AppState>,
    Admin(p): Admin,
    AuditCtx(ctx): AuditCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .signatures
        .revoke(&p, &keyid(&id)?, true, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifySignatureRequest {
    /// The signed request's method.
    #[schema(pattern = "^[A-Za-z-]{1,32}$")]
    method: String,
    /// Its full target URI (`https://api.example.com/orders?id=1`).
    #[schema(max_length = 8192)]
    target_uri: String,
    /// Its header fields (names in any case); one value each, joined with ", " if it had several.
    headers: BTreeMap<String, String>,
    /// Its body, base64. Leave out when you check the body against `content_digest` yourself.
    body_base64: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VerifySignatureResponse {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    keyid: Option<String>,
    /// The key's owner; `null` for a key of no user.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_id: Option<Option<String>>,
    /// The key's scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
    /// When `body_base64` was left out: the covered `Content-Digest` to check the body against.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_digest: Option<String>,
    /// Why it is not valid (`bad_signature`, `replayed`, `missing_component:@method`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Verify a signed request for a service that verifies itself. Needs scope `signatures:verify`; a
/// valid answer spends the signature's nonce, like any use.
#[utoipa::path(post, path = "/v1/signatures/verify", operation_id = "verify_signature", tag = "signatures",
    request_body = VerifySignatureRequest,
    responses((status = 200, body = VerifySignatureResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem), (status = 429, body = Problem)),
    security(("api_key" = []), ("bearer" = []), ("session" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<VerifySignatureRequest>,
) -> ApiResult<axum::Json<VerifySignatureResponse>> {
    if !(p.scopes.contains(Scope::SIGNATURES_VERIFY) || state.auth.is_admin(&p).await?) {
        return Err(Error::Forbidden(
            "insufficient_scope",
            format!(
                "verifying signatures needs scope {}",
                Scope::SIGNATURES_VERIFY
            ),
        )
        .into());
    }
    let target = url::Url::parse(&req.target_uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            Error::field(
                "target_uri",
                "invalid_uri",
                "target_uri must be an absolute http(s) URI",
            )
        })?;
    if req.method.is_empty()
        || req.method.len() > 32
        || !req
            .method
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'-')
    {
        return Err(
            Error::field("method", "invalid_method", "method must be an HTTP method").into(),
        );
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            Error::field(
                "headers",
                "invalid_header",
                "a header name is not a valid field name",
            )
        })?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            Error::field(
                "headers",
                "invalid_header",
                format!("the value of {name} is not a valid field value"),
            )
        })?;
        headers.append(name, value);
    }
    let body = match &req.body_base64 {
        Some(b) => Some(STANDARD.decode(b).map_err(|_| {
            Error::field(
                "body_base64",
                "invalid_base64",
                "body_base64 must be standard base64",
            )
        })?),
        None => None,
    };
    let authority = match target.port() {
        Some(port) => format!("{}:{port}", target.host_str().unwrap_or_default()),
        None => target.host_str().unwrap_or_default().to_owned(),
    };
    let msg = Message {
        method: &req.method,
        scheme: target.scheme(),
        authority: &authority,
        path: target.path(),
        query: target.query(),
        headers: &headers,
    };
    let body = match &body {
        Some(b) => Body::Received(b),
        None => Body::NotSeen {
            expected: !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "DELETE"),
        },
    };
    Ok(axum::Json(
        match state.signatures.verify(&SignedRequest { msg, body }).await {
            Ok(auth) => VerifySignatureResponse {
                valid: true,
                keyid: Some(auth.key_id.to_string()),
                owner_id: Some(auth.owner_id.map(|o| o.to_string())),
                scopes: Some(auth.principal.scopes.iter().map(str::to_owned).collect()),
                content_digest: auth.content_digest,
                reason: None,
            },
            Err(Error::SignatureInvalid(reason)) => VerifySignatureResponse {
                valid: false,
                keyid: None,
                owner_id: None,
                scopes: None,
                content_digest: None,
                reason: Some(reason.to_string()),
            },
            Err(e) => return Err(e.into()),
        },
    ))
}

/// Paths where a signed request is the caller's own credential: our API, except forward auth, where
/// the signed request is the one the gateway asks about.
fn signs_for_itself(path: &str) -> bool {
    (path.starts_with("/v1/") || path.starts_with("/admin/v1/"))
        && path != "/v1/authorize"
        && !path.starts_with("/v1/authorize/")
}

/// Verifies a signed request to our own API (RFC 9421, with the body against `Content-Digest`) and
/// hands its `Principal` to the handler; refuses it with 401 `signature_invalid` and the `reason`.
/// `@scheme`/`@authority` come from the configured issuer, or `X-Forwarded-Proto`/`-Host` when the
/// peer is one of `trusted_proxies`.
pub async fn signed_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !credential::is_signed(req.headers()) || !signs_for_itself(req.uri().path()) {
        return next.run(req).await;
    }
    if let Err(e) = credential::from_headers(req.method(), req.headers()) {
        return ApiError::from(e).into_response();
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match read_body(&parts.extensions, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (scheme, authority) = state.signatures.direct_origin(peer, &parts.headers);
    let msg = Message {
        method: parts.method.as_str(),
        scheme: &scheme,
        authority: &authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let signed = SignedRequest {
        msg,
        body: Body::Received(&bytes),
    };
    match state.signatures.verify(&signed).await {
        Ok(auth) => {
            parts.extensions.insert(auth.principal);
            next.run(Request::from_parts(parts, AxumBody::from(bytes)))
                .await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The body within the configured limit and deadline (the edge's own rules for every body).
async fn read_body(ext: &axum::http::Extensions, body: AxumBody) -> Result<Bytes, ApiError> {
    let limit = ext.get::<BodyLimit>().map_or(64 * 1024, |l| l.0);
    let read = axum::body::to_bytes(body, limit);
    let read = match ext.get::<BodyDeadline>() {
        Some(at) => tokio::time::timeout_at(at.0, read)
            .await
            .map_err(|_| ApiError::RequestTimeout)?,
        None => read.await,
    };
    read.map_err(|e| {
        if e.to_string().contains("length limit") {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::MalformedBody("the request body could not be read".into())
        }
    })
}
