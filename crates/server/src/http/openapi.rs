//! The OpenAPI 3.1 document of everything the server serves: the paths each capability's router
//! lists with its handlers, merged with the security schemes and shared schemas here.

use serde_json::{Value, json};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa::{Modify, OpenApi};

/// What the document says of itself; the paths come from the routers (`app::router`).
#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis", description = "Authentication for APIs: JWT access tokens, refresh tokens, API keys, sessions, request signatures."),
    components(schemas(crate::http::error::Problem, crate::error::FieldError)),
    modifiers(&Security),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("__Host-portcullis"))),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// What the document takes from the configuration, so that it states this server's limits.
pub struct Limits {
    pub max_page_size: u32,
    pub password_min_length: usize,
    pub password_max_length: usize,
}

/// The document as JSON, from the routers' paths and [`ApiDoc`], built once.
pub fn document(paths: utoipa::openapi::OpenApi, limits: &Limits) -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(paths);
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    complete(&mut doc);
    apply(&mut doc, limits);
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The schema of a display name (a user's, a key's): what `core::text::display_name` accepts.
pub fn display_name() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(portcullis_core::text::MAX_DISPLAY_NAME_CHARS))
        .pattern(Some(portcullis_core::text::display_name_pattern()))
        .build()
}

/// The configured limits, where the schemas state them: every list's `limit`, and the password
/// policy on every new password.
fn apply(doc: &mut Value, limits: &Limits) {
    for op in operations(doc) {
        let params = op.get_mut("parameters").and_then(Value::as_array_mut);
        for param in params.into_iter().flatten() {
            if param.get("name") == Some(&json!("limit"))
                && param.get("in") == Some(&json!("query"))
                && let Some(schema) = param.get_mut("schema").and_then(Value::as_object_mut)
            {
                schema.insert("maximum".into(), json!(limits.max_page_size));
            }
        }
    }
    for (schema, field) in [
        ("RegisterRequest", "password"),
        ("ChangePasswordRequest", "new_password"),
    ] {
        let path = format!("/components/schemas/{schema}/properties/{field}");
        if let Some(field) = doc.pointer_mut(&path).and_then(Value::as_object_mut) {
            field.insert("minLength".into(), json!(limits.password_min_length));
            field.insert("maxLength".into(), json!(limits.password_max_length));
        }
    }
}

fn operations(doc: &mut Value) -> impl Iterator<Item = &mut serde_json::Map<String, Value>> {
    doc.get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(Value::as_object_mut)
}

/// What the edge answers for any operation, whatever its handler: a credential refused (401) or
/// rate-limited (429) wherever one is taken; a body malformed (400), too slow (408), too large (413)
/// or of another media type (415) wherever one is read; a query string refused (400). Every error is problem JSON (RFC 9457), and
/// every response has the description OpenAPI requires.
fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let Some(op) = op.as_object_mut() else {
            continue;
        };
        let secured = op
            .get("security")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty());
        let has_body = op.contains_key("requestBody");
        let has_query = op
            .get("parameters")
            .and_then(Value::as_array)
            .is_some_and(|params| params.iter().any(|p| p["in"] == "query"));
        let responses = op.entry("responses").or_insert_with(|| json!({}));
        let Some(responses) = responses.as_object_mut() else {
            continue;
        };
        let mut implied: Vec<u16> = Vec::new();
        if secured {
            implied.extend([401, 429]);
        }
        if has_body {
            implied.extend([400, 408, 413, 415]);
        }
        if has_query {
            implied.push(400);
        }
        for status in implied {
            responses
                .entry(status.to_string())
                .or_insert_with(|| json!({}));
        }
        for (status, response) in responses.iter_mut() {
            let code: u16 = status.parse().unwrap_or(0);
            let Some(response) = response.as_object_mut() else {
                continue;
            };
            response.entry("description").or_insert_with(|| {
                let reason = axum::http::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("response");
                json!(reason)
            });
            if code >= 400 && !is_documented_non_problem(response) {
                response.insert(
                    "content".into(),
                    json!({ PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } }),
                );
            }
        }
    }
}

const PROBLEM_JSON: &str = "application/problem+json";

/// An error response that says what it is other than problem JSON (`/readyz`'s 503 is JSON).
fn is_documented_non_problem(response: &serde_json::Map<String, Value>) -> bool {
    response
        .get("content")
        .and_then(Value::as_object)
        .is_some_and(|content| {
            content.keys().any(|media| media != "application/json")
                || content.values().any(|media| {
                    media.pointer("/schema/$ref").and_then(Value::as_str)
                        != Some("#/components/schemas/Problem")
                })
        })
}
