//! `AppState`: one field per service, built once at start by [`super::bootstrap::services`]. Handlers
//! read it; it names no handler.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use portcullis_store::Store;

use crate::accounts::Accounts;
use crate::apikeys::ApiKeys;
use crate::audit::{Audit, AuditCounts};
use crate::auth::Auth;
use crate::config::Config;
use crate::forward_auth::ForwardAuth;
use crate::invalidation::{Bus, Invalidation};
use crate::oauth::OAuth;
use crate::sessions::Sessions;
use crate::signatures::Signatures;
use crate::signing_keys::KeyRing;
use crate::tokens::Tokens;
use crate::users::Users;

pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub audit: Audit,
    pub counts: Arc<AuditCounts>,
    /// Cache invalidations, for other nodes (see [`crate::invalidation`]).
    pub bus: Arc<Bus>,
    /// Redis, when `redis_url` is set: shared rate limits, replay caches and the bus between nodes.
    pub redis: Option<Arc<portcullis_kv::redis::Redis>>,
    /// This process, as the bus between nodes names it.
    pub node_id: String,
    pub keys: Arc<KeyRing>,
    pub users: Arc<Users>,
    pub tokens: Arc<Tokens>,
    pub sessions: Arc<Sessions>,
    pub accounts: Arc<Accounts>,
    pub upstreams: Arc<crate::upstream::Upstreams>,
    pub apikeys: Arc<ApiKeys>,
    pub oauth: Arc<OAuth>,
    pub auth: Arc<Auth>,
    pub signatures: Arc<Signatures>,
    pub forward_auth: Arc<ForwardAuth>,
    pub dpop: Arc<crate::tokens::dpop::Dpop>,
    pub metrics: PrometheusHandle,
    /// `metrics_allowed_ips`, parsed.
    pub metrics_allowed: Vec<ipnet::IpNet>,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Applies a change made elsewhere (another node, the CLI) to this node's caches.
    pub fn apply(&self, event: &Invalidation) {
        self.users.apply(event);
        self.sessions.apply(event);
        self.apikeys.apply(event);
        self.signatures.apply(event);
        self.tokens.apply(event);
    }
}
