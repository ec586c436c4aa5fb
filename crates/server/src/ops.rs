//! Operations endpoints: liveness, readiness, Prometheus metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_store::Maintenance;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::state::AppState;
use crate::http::ApiError;
use crate::http::extract::ClientIp;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "alive", content_type = "application/json", body = Object)))]
pub async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

/// Ready: the store answers.
///
/// With Redis configured, `"redis": "degraded"` says that it does not (the node still serves, with
/// per-node rate limits and replay caches) and `"redis": "ok"` that it does.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "ready", content_type = "application/json", body = Object),
        (status = 503, description = "store unreachable", content_type = "application/json", body = Object)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let redis = match &state.redis {
        None => "",
        Some(r) => match r.ping().await {
            Ok(()) => ",\"redis\":\"ok\"",
            Err(_) => ",\"redis\":\"degraded\"",
        },
    };
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"status\":\"ready\"{redis}}}"),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"status\":\"unavailable\"{redis}}}"),
            )
        }
    }
}

/// Prometheus text exposition, to clients in `metrics_allowed_ips` (loopback by default) only; when
/// `metrics_listen` is set, only there. The counts it shows (logins, reuse detections) are for the
/// operator, not the public.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus metrics", content_type = "text/plain", body = String),
        (status = 404, description = "not served to this client", content_type = "application/problem+json", body = crate::http::Problem)))]
pub async fn metrics(State(state): State<AppState>, ip: ClientIp) -> Response {
    let allowed = state.config.metrics_listen.is_none()
        && state.metrics_allowed.iter().any(|n| n.contains(&ip.0));
    if !allowed {
        return ApiError::NoRoute.into_response();
    }
    metrics_unrestricted(State(state)).await.into_response()
}

/// `/metrics` on the separate `metrics_listen` address.
pub async fn metrics_unrestricted(State(state): State<AppState>) -> impl IntoResponse {
    metrics::gauge!("portcullis_password_hashes_in_flight")
        .set(state.users.hashes_in_flight() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
