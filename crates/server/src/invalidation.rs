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
    /// The access token with this `jti` was revoked; deny it until `exp` (Unix seconds).
    AccessToken { jti: String, exp: i64 },
    /// The JWT signing keys changed (a rotation or a revocation): read them again.
    SigningKeys,
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

impl Invalidation {
    /// The event as the bus between nodes carries it.
    pub fn encode(&self) -> String {
        let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match self {
            Self::ApiKey(h) => format!("k:{}", hex(h)),
            Self::Session(h) => format!("s:{}", hex(h)),
            Self::User(id) => format!("u:{id}"),
            Self::SignatureKey(id) => format!("g:{id}"),
            Self::SigningKeys => "r:".to_owned(),
            Self::AccessToken { jti, exp } => format!("j:{exp}:{jti}"),
        }
    }

    /// An event another node sent; `None` for anything else.
    pub fn decode(raw: &str) -> Option<Self> {
        let hash = |h: &str| -> Option<[u8; 32]> {
            if h.len() != 64 {
                return None;
            }
            let mut out = [0u8; 32];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(h.get(i * 2..i * 2 + 2)?, 16).ok()?;
            }
            Some(out)
        };
        let (kind, rest) = raw.split_once(':')?;
        match kind {
            "k" => hash(rest).map(Self::ApiKey),
            "s" => hash(rest).map(Self::Session),
            "u" if !rest.is_empty() && rest.len() <= 64 => Some(Self::User(rest.to_owned())),
            "g" if !rest.is_empty() && rest.len() <= 64 => {
                Some(Self::SignatureKey(rest.to_owned()))
            }
            "r" if rest.is_empty() => Some(Self::SigningKeys),
            "j" => {
                let (exp, jti) = rest.split_once(':')?;
                let exp = exp.parse().ok()?;
                (!jti.is_empty() && jti.len() <= 128).then(|| Self::AccessToken {
                    jti: jti.to_owned(),
                    exp,
                })
            }
            _ => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_cross_the_bus_unchanged_and_nothing_else_does() {
        for e in [
            Invalidation::ApiKey([7; 32]),
            Invalidation::Session([0xab; 32]),
            Invalidation::User("usr_01".into()),
            Invalidation::SignatureKey("sig_01".into()),
            Invalidation::SigningKeys,
            Invalidation::AccessToken {
                jti: "at_01:x".into(),
                exp: 1_700_000_000,
            },
        ] {
            assert_eq!(Invalidation::decode(&e.encode()), Some(e));
        }
        for bad in [
            "",
            "k:00",
            "x:1",
            "u:",
            "r:x",
            "j:1",
            "j:x:jti",
            "j:1:",
            "s:zz",
            &format!("k:{}", "0".repeat(66)),
        ] {
            assert_eq!(Invalidation::decode(bad), None, "{bad}");
        }
    }
}
