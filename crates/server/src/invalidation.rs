//! Cache invalidation as a stream of events. Whatever changes a cached credential (a key patched,
//! revoked or rolled; a user changed) publishes an [`Invalidation`]: this node applies it to its own
//! caches before the change is acknowledged, so the next request here already sees it, and the event
//! then goes onto the bus for whoever else listens. Today nobody else does; with several nodes a Redis
//! forwarder subscribes, publishes each event to the other nodes, and applies theirs through
//! `AppState::apply` — the same path as a local change.

use portcullis_core::secrets::TokenHash;
use tokio::sync::broadcast;

/// One change that makes cached data stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The API key with this SHA-256 changed: drop its cached row.
    ApiKey([u8; 32]),
    /// The session whose token has this SHA-256 ended: drop its cached row.
    Session([u8; 32]),
    /// The user with this id changed: drop the cached row.
    User(String),
    /// The signing key (RFC 9421) with this id was revoked: drop it.
    SignatureKey(String),
}

impl Invalidation {
    /// One event of `kind` per hash.
    pub fn of_hashes<'a>(
        hashes: impl IntoIterator<Item = &'a TokenHash>,
        kind: fn([u8; 32]) -> Invalidation,
    ) -> impl Iterator<Item = Invalidation> {
        hashes.into_iter().map(move |h| kind(h.0))
    }
}

/// The in-process bus. Sending never blocks; a subscriber that falls behind loses old events and is
/// told so (`RecvError::Lagged`), and must then drop its whole cache.
pub struct Bus {
    tx: broadcast::Sender<Invalidation>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self { tx }
    }

    /// Hands `event` to every subscriber (none is fine).
    pub fn send(&self, event: Invalidation) {
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.tx.subscribe()
    }
}
