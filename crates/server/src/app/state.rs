//! `AppState`: one field per service, built once at start in dependency order
//! (`audit ← users ← signing_keys ← tokens ← sessions ← apikeys ← auth`).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use portcullis_core::clock::Millis;
use portcullis_core::passwords::PasswordHashing;
use portcullis_core::ratelimit::{LoginBackoff, RatePolicy};
use portcullis_store::Store;

use super::StartError;
use super::bootstrap::load_master_key;
use crate::apikeys::{ApiKeys, KeySettings};
use crate::audit::{Audit, AuditCounts};
use crate::auth::Auth;
use crate::config::Config;
use crate::invalidation::{Bus, Invalidation};
use crate::pages::Pages;
use crate::ratelimit::MemoryLimiter;
use crate::sessions::{SessionSettings, Sessions};
use crate::signing_keys::KeyRing;
use crate::tokens::{TokenSettings, Tokens};
use crate::users::hashing::HashPool;
use crate::users::throttle::{LoginPolicies, LoginThrottle};
use crate::users::{Users, UsersSettings};

pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub audit: Audit,
    pub counts: Arc<AuditCounts>,
    /// Cache invalidations, for other nodes (see [`crate::invalidation`]).
    pub bus: Arc<Bus>,
    pub keys: Arc<KeyRing>,
    pub users: Arc<Users>,
    pub tokens: Arc<Tokens>,
    pub sessions: Arc<Sessions>,
    pub apikeys: Arc<ApiKeys>,
    pub auth: Auth,
    pub pages: Pages,
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
    }

    pub async fn build(
        config: Config,
        store: Store,
        metrics: PrometheusHandle,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StartError> {
        let master = load_master_key(&config)?;
        let devices = (config.known_device_ttl_days > 0)
            .then(|| portcullis_core::devices::DeviceKey::derive(master.expose_bytes()));
        let keys = Arc::new(KeyRing::from_config(store.clone(), master, &config).await?);
        let rules =
            PasswordHashing::new(config.argon2()).map_err(|e| StartError::Other(e.to_string()))?;
        let threads = match config.hash_concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let hashing = HashPool::new(rules.clone(), threads, config.hash_queue_limit)
            .map_err(|e| StartError::Other(e.to_string()))?;
        let per_client = LoginBackoff {
            free_failures: config.login_free_failures,
            max_wait_ms: config.login_max_wait_s * 1000,
            ..LoginBackoff::default()
        };
        let policies = LoginPolicies {
            ip: RatePolicy {
                limit: config.login_ip_limit,
                period_ms: config.login_ip_period_s * 1000,
            },
            per_client,
            per_account: LoginBackoff {
                free_failures: config.login_account_free_failures,
                ..per_client
            },
            registration_ip: RatePolicy {
                limit: config.registration_ip_limit,
                period_ms: config.registration_ip_period_s * 1000,
            },
        };
        let limiter = MemoryLimiter::new(
            Duration::from_millis(
                policies
                    .ip
                    .period_ms
                    .max(policies.registration_ip.period_ms)
                    .max(1000),
            ),
            Duration::from_millis(per_client.forget_after_ms),
        );
        let (audit, audit_task) = Audit::spawn(store.clone());
        let counts = Arc::new(AuditCounts::default());
        let bus = Arc::new(Bus::new());
        let cache_ttl = Duration::from_secs(config.api_key_cache_ttl_s);
        let users = Arc::new(Users::new(
            store.clone(),
            hashing,
            rules,
            LoginThrottle::new(limiter, policies),
            audit.clone(),
            Arc::clone(&counts),
            Arc::clone(&bus),
            UsersSettings {
                registration: config.registration,
                policy: config.password_policy(),
                devices,
                device_ttl_days: config.known_device_ttl_days,
                cache_ttl: Duration::from_secs(60),
            },
        ));
        let tokens = Arc::new(Tokens::new(
            store.clone(),
            Arc::clone(&keys),
            Arc::clone(&users),
            audit.clone(),
            TokenSettings {
                issuer: config.issuer(),
                audience: config.audience(),
                access_ttl_s: config.access_token_ttl_s,
                refresh_ttl_s: config.refresh_token_ttl_s,
                family_ttl_s: config.refresh_family_ttl_s,
                reuse_grace_s: config.refresh_reuse_grace_s,
                first_party_client_id: config.first_party_client_id.clone(),
                login_scope: config.login_scopes.join(" "),
            },
        ));
        let forget_before =
            Millis::now().plus_secs(-(config.access_token_ttl_s + config.jwt_leeway_s + 60));
        tokens.load_watermarks(tokens.watermarks_since(forget_before).await?, forget_before);
        let sessions = Arc::new(Sessions::new(
            store.clone(),
            Arc::clone(&users),
            Arc::clone(&tokens),
            Arc::clone(&bus),
            audit.clone(),
            SessionSettings {
                idle_timeout_s: config.session_idle_timeout_s,
                absolute_timeout_s: config.session_absolute_timeout_s,
                origin: config.origin(),
                cors_allowed_origins: config.cors_allowed_origins.clone(),
                cache_ttl,
            },
        ));
        let apikeys = Arc::new(ApiKeys::new(
            store.clone(),
            Arc::clone(&users),
            Arc::clone(&counts),
            audit.clone(),
            Arc::clone(&bus),
            KeySettings {
                api_key_prefix: config.api_key_prefix.clone(),
                api_key_meta_max_bytes: config.api_key_meta_max_bytes,
                api_key_max_grace_s: config.api_key_max_grace_s,
                self_service_scopes: config.self_service_scopes.clone(),
                cache_ttl,
            },
        ));
        let auth = Auth::new(
            Arc::clone(&users),
            Arc::clone(&tokens),
            Arc::clone(&sessions),
            Arc::clone(&apikeys),
        );
        // Load the bundled password list now rather than on the first registration.
        let _ = portcullis_core::passwords::CommonPasswords::bundled().len();
        let pages = Pages::new(config.templates_dir.clone()).map_err(StartError::Other)?;
        let state = AppState(Arc::new(Inner {
            metrics_allowed: config.metrics_allowed(),
            config,
            store,
            audit,
            counts,
            bus,
            keys,
            users,
            tokens,
            sessions,
            apikeys,
            auth,
            pages,
            metrics,
        }));
        Ok((state, audit_task))
    }
}
