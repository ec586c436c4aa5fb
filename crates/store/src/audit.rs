//! The audit log (OWASP ASVS 5.0 V16): every authentication decision and every change to credentials.
//! Events are written in batches by the server's audit writer, off the request path.

use portcullis_core::clock::Millis;

use crate::{Result, Store, with_pool};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct AuditEvent {
    pub id: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub actor: Option<String>,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    /// JSON object.
    pub data: String,
    pub created_at: i64,
}

/// What `/admin/v1/audit` filters on.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub since: Option<Millis>,
    /// Events with an id below this one (ids sort by time; newest first).
    pub before_id: Option<String>,
    pub limit: u32,
}

pub trait AuditStore {
    fn insert_audit_events(&self, events: &[AuditEvent])
    -> impl Future<Output = Result<()>> + Send;
    /// Newest first.
    fn list_audit_events(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = Result<Vec<AuditEvent>>> + Send;
}

impl AuditStore for Store {
    async fn insert_audit_events(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // One multi-row INSERT per chunk: the audit writer shares SQLite's single writer connection
        // with every request, so it must cost as few statements as possible. 100 rows × 8 parameters
        // stays far below both backends' parameter limits.
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            for chunk in events.chunks(100) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO audit_events (id, type, actor, subject, ip, request_id, data, created_at) ",
                );
                insert.push_values(chunk, |mut row, e| {
                    row.push_bind(&e.id)
                        .push_bind(&e.kind)
                        .push_bind(&e.actor)
                        .push_bind(&e.subject)
                        .push_bind(&e.ip)
                        .push_bind(&e.request_id)
                        .push_bind(&e.data)
                        .push_bind(e.created_at);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn list_audit_events(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
        // Optional filters as `($n IS NULL OR col = $n)` keep one statement text for every combination.
        let sql = "SELECT id, type, actor, subject, ip, request_id, data, created_at FROM audit_events \
                   WHERE ($1 IS NULL OR type = $1) AND ($2 IS NULL OR actor = $2) \
                     AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR id < $4) \
                   ORDER BY id DESC LIMIT $5";
        Ok(with_pool!(self, read, p => {
            sqlx::query_as::<_, AuditEvent>(sql)
                .bind(&f.kind)
                .bind(&f.actor)
                .bind(f.since.map(|m| m.0))
                .bind(&f.before_id)
                .bind(i64::from(f.limit))
                .fetch_all(p)
                .await?
        }))
    }
}
