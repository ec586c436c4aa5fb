//! The OpenAPI 3.1 document of everything the server serves: the paths each capability's router
//! lists with its handlers, merged with the security schemes and shared schemas here.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
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

/// The document as JSON, from the routers' paths and [`ApiDoc`], built once.
pub fn document(paths: utoipa::openapi::OpenApi) -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(paths);
    doc.to_pretty_json().unwrap_or_default()
}
