//! Replay protection lives in `portcullis_kv` (in-process, or shared on Redis); the signature, DPoP and
//! client-assertion checks use it through these names.

pub use portcullis_kv::nonces::{FirstUse, FirstUseFuture, MemoryNonces, NonceCache, RedisNonces};

use std::sync::Arc;

use portcullis_kv::nonces::{FirstUseFuture as Pending, pair_id};
use portcullis_store::{NonceStore, Store};

/// The replay cache in the database: what several nodes share while Redis cannot be reached. A
/// store that cannot answer either refuses the request (`Unavailable`) rather than let a replay in.
pub struct StoreNonces {
    store: Store,
}

impl StoreNonces {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl NonceCache for StoreNonces {
    fn first_use<'a>(
        &'a self,
        keyid: &'a str,
        replay: &'a [u8],
        now: i64,
        until: i64,
    ) -> Pending<'a> {
        Box::pin(async move {
            match self
                .store
                .record_nonce(&pair_id(keyid, replay), now, until)
                .await
            {
                Ok(true) => FirstUse::Yes,
                Ok(false) => FirstUse::Replayed,
                Err(e) => {
                    tracing::warn!(error = %e, "recording a nonce in the store failed");
                    FirstUse::Unavailable
                }
            }
        })
    }
}

/// The replay cache a node uses: Redis when configured, falling back to the database when the nodes
/// share PostgreSQL and to this process otherwise; without Redis, this process's own.
pub fn replay_cache(
    redis: Option<&Arc<portcullis_kv::redis::Redis>>,
    store: &Store,
    capacity: usize,
) -> Arc<dyn NonceCache> {
    let memory = Arc::new(MemoryNonces::new(capacity));
    match redis {
        None => memory,
        Some(r) => {
            let fallback: Arc<dyn NonceCache> = if store.is_postgres() {
                Arc::new(StoreNonces::new(store.clone()))
            } else {
                memory
            };
            Arc::new(RedisNonces::new(Arc::clone(r), fallback))
        }
    }
}
