//! Administration beyond users and keys: the audit log.

use axum::extract::{Query, State};
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_store::{AuditFilter, AuditStore};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Event type, e.g. `login.failed`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    /// User or key that acted.
    actor: Option<String>,
    /// RFC 3339 time; only events at or after it.
    since: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEventView {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    actor: Option<String>,
    subject: Option<String>,
    ip: Option<String>,
    request_id: Option<String>,
    #[schema(value_type = Object)]
    data: serde_json::Value,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    events: Vec<AuditEventView>,
    next_cursor: Option<String>,
}

/// Audit events, newest first.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    _: Admin,
    Query(q): Query<AuditQuery>,
) -> ApiResult<axum::Json<AuditPage>> {
    let since = match q.since.as_deref() {
        Some(raw) => Some(
            time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                .map(Millis::from_datetime)
                .map_err(|_| {
                    ApiError::Validation(vec![FieldError::new(
                        "since",
                        "invalid_time",
                        "since must be an RFC 3339 time",
                    )])
                })?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, state.config.max_page_size);
    let filter = AuditFilter {
        kind: q.kind,
        actor: q.actor,
        since,
        before_id: q.cursor,
        limit,
    };
    let rows = state.store.list_audit_events(&filter).await?;
    let next_cursor = if rows.len() == limit as usize {
        rows.last().map(|e| e.id.clone())
    } else {
        None
    };
    let events = rows
        .into_iter()
        .map(|e| AuditEventView {
            data: serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null),
            id: e.id,
            kind: e.kind,
            actor: e.actor,
            subject: e.subject,
            ip: e.ip,
            request_id: e.request_id,
            created_at: Millis(e.created_at),
        })
        .collect();
    Ok(axum::Json(AuditPage {
        events,
        next_cursor,
    }))
}
