//! The audit writer. Handlers record events without waiting for the store: events go into a bounded
//! queue and one task writes whatever has accumulated in a single transaction, so a burst of logins
//! becomes a few batched inserts instead of one write per request, at most about 20 flushes a second.

use portcullis_core::clock::Millis;
use portcullis_core::ids::EventId;
use portcullis_store::{AuditEvent, AuditFilter, AuditStore, Store};

/// An event as the store gives it back.
pub type StoredEvent = AuditEvent;
use tokio::sync::mpsc;

const QUEUE: usize = 65_536;
const BATCH: usize = 1_000;
/// Pause between flushes. On SQLite the audit writer shares the single writer connection with every
/// decision (refresh rotations above all); flushing at most ~20 times a second in larger batches keeps
/// it from taking turns with each rotation batch. Events appear in the log within about this long.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Where an event happened.
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub ip: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditEvent>,
    store: Store,
}

impl Audit {
    /// Starts the writer; it stops after every `Audit` handle is dropped and the queue is drained.
    pub fn spawn(store: Store) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(QUEUE);
        let reader = store.clone();
        let handle = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if let Err(e) = store.insert_audit_events(&batch).await {
                    tracing::error!(error = %e, events = batch.len(), "writing audit events failed; retrying once");
                    if let Err(e) = store.insert_audit_events(&batch).await {
                        metrics::counter!("portcullis_audit_events_lost_total")
                            .increment(batch.len() as u64);
                        tracing::error!(error = %e, events = batch.len(), "audit events lost");
                    }
                }
                metrics::counter!("portcullis_audit_events_total").increment(batch.len() as u64);
                batch.clear();
                tokio::time::sleep(FLUSH_EVERY).await;
            }
        });
        (Self { tx, store: reader }, handle)
    }

    /// A page of events, newest first, that match `filter` (whose `limit` is the page size plus one).
    pub async fn list(&self, filter: &AuditFilter) -> crate::error::Result<Vec<StoredEvent>> {
        Ok(self.store.list_audit_events(filter).await?)
    }

    /// Queues one event. `data` must never contain a secret.
    pub fn record(
        &self,
        kind: &str,
        actor: Option<&str>,
        subject: Option<&str>,
        ctx: &AuditContext,
        data: serde_json::Value,
    ) {
        let event = AuditEvent {
            id: EventId::generate().to_string(),
            kind: kind.to_owned(),
            actor: actor.map(str::to_owned),
            subject: subject.map(str::to_owned),
            ip: ctx.ip.clone(),
            request_id: ctx.request_id.clone(),
            data: data.to_string(),
            created_at: Millis::now().0,
        };
        if self.tx.try_send(event).is_err() {
            metrics::counter!("portcullis_audit_events_lost_total").increment(1);
            tracing::error!(kind, "audit queue full; event dropped");
        }
    }
}
