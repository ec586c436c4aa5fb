//! `GET /admin/v1/audit`: the audit log for administrators, newest first, filtered by type, actor and
//! time, in pages.

use axum::extract::State;
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::ids::EventId;
use portcullis_store::AuditFilter;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::state::AppState;
use crate::auth::Admin;
use crate::error::Error;
use crate::http::extract::Query;
use crate::http::pagination::{PageQuery, PageRequest};
use crate::http::{ApiResult, Problem};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Event type, e.g. `login.failed`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    /// User or key that acted.
    actor: Option<String>,
    /// RFC 3339 time; only events at or after it.
    #[param(format = DateTime)]
    since: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^evt_[0-9a-f]{32}$")]
    cursor: Option<String>,
    /// At most this many events (1 to the server's `max_page_size`, default 50).
    #[param(minimum = 1)]
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
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(audit))
}

/// Audit events, newest first.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = []), ("session" = [])))]
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
                    Error::field("since", "invalid_time", "since must be an RFC 3339 time")
                })?,
        ),
        None => None,
    };
    let page = PageRequest::parse(
        PageQuery::<EventId>::new(q.limit, q.cursor),
        state.config.max_page_size,
    )?;
    let filter = AuditFilter {
        kind: q.kind,
        actor: q.actor,
        since,
        before_id: page.cursor.as_ref().map(|c| c.as_str().to_owned()),
        limit: page.fetch(),
    };
    let mut rows = state.audit.list(&filter).await?;
    let next_cursor = page.cut(&mut rows, |e| e.id.clone());
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
