//! The OpenAPI 3.1 document of everything the server serves, generated from the handlers.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis", description = "Authentication for APIs: JWT access tokens, refresh tokens, API keys, sessions, request signatures."),
    paths(
        crate::users::register, crate::users::me, crate::users::change_password, crate::users::import, crate::users::list,
        crate::users::disable, crate::users::enable,
        crate::tokens::login, crate::tokens::refresh, crate::tokens::logout, crate::tokens::logout_all, crate::tokens::jwks,
        crate::tokens::rotate, crate::tokens::revoke_signing_key, crate::tokens::list_signing_keys, crate::admin::audit,
        crate::apikeys::create, crate::apikeys::list, crate::apikeys::get, crate::apikeys::patch,
        crate::apikeys::revoke, crate::apikeys::roll, crate::apikeys::verify,
        crate::apikeys::admin_list, crate::apikeys::admin_get, crate::apikeys::admin_revoke,
        crate::sessions::create, crate::sessions::current, crate::sessions::list, crate::sessions::revoke, crate::sessions::revoke_current,
        crate::sessions::admin_list, crate::sessions::admin_revoke_all,
        crate::ops::healthz, crate::ops::readyz, crate::ops::metrics,
    ),
    components(schemas(crate::error::Problem, crate::error::FieldError)),
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

/// The document as JSON, built once.
pub fn document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}
