//! The one router: every capability lists its routes once (utoipa-axum's `routes!`, which also gives
//! their OpenAPI paths), merged here with the pages, the operations endpoints and the document.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use crate::config::Config;
use crate::http::ApiError;
use crate::http::middleware::{self, Settings};
use crate::http::openapi::Limits;
use crate::{
    accounts, apikeys, audit, forward_auth, oauth, ops, pages, sessions, signatures, signing_keys,
    tokens, upstream, users,
};

/// Every documented route, with its OpenAPI paths.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(users::handlers::routes())
        .merge(accounts::handlers::routes())
        .merge(upstream::handlers::routes())
        .merge(tokens::handlers::routes())
        .merge(signing_keys::handlers::routes())
        .merge(sessions::handlers::routes())
        .merge(apikeys::handlers::routes())
        .merge(signatures::handlers::routes())
        .merge(audit::handlers::routes())
        .merge(oauth::handlers::routes())
        .merge(forward_auth::handlers::routes())
        .merge(ops::routes())
}

/// The OpenAPI document of everything [`api`] serves, with the limits of `config`.
pub fn document(config: &Config) -> String {
    let (_, paths) = api().split_for_parts();
    crate::http::openapi::document(paths, &limits(config))
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_page_size: config.max_page_size,
        password_min_length: config.password_min_length,
        password_max_length: config.password_max_length,
    }
}

pub fn router(state: AppState, pages: pages::Pages) -> Router {
    let (api, paths) = api().split_for_parts();
    let doc: Arc<str> = crate::http::openapi::document(paths, &limits(&state.config)).into();
    let router = api
        .merge(pages::routes(state.clone(), pages))
        .merge(oauth::handlers::protocol_routes())
        .merge(forward_auth::handlers::wildcard_routes())
        .route(
            "/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                        .into_response()
                }
            }),
        )
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Inside the edge (which sets the body limit and deadline), around every route.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            signatures::handlers::signed_requests,
        ));
    let settings = Settings {
        max_body_bytes: state.config.max_body_bytes,
        body_timeout: std::time::Duration::from_secs(state.config.request_body_timeout_s),
        trusted_proxies: state.config.trusted_proxies(),
        cors_allowed_origins: state.config.cors_allowed_origins.clone(),
        hsts: state.config.hsts(),
    };
    middleware::layers(router, settings).with_state(state)
}

/// The router of the separate `metrics_listen` address: `/metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics_unrestricted))
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
}
