//! Everything a node needs before it can serve: the data folder (kept private), the master key (never
//! readable by others), the store (opened and migrated).

use std::path::Path;

use portcullis_core::seal::MasterKey;
use portcullis_store::{Store, StoreOptions};

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use portcullis_core::clock::Millis;
use portcullis_core::passwords::PasswordHashing;
use portcullis_core::ratelimit::{LoginBackoff, RatePolicy};

use super::StartError;
use super::state::{AppState, Inner};
use crate::apikeys::{ApiKeys, KeySettings};
use crate::audit::{Audit, AuditCounts};
use crate::auth::Auth;
use crate::config::Config;
use crate::invalidation::Bus;
use crate::oauth::OAuth;
use crate::pages::Pages;
use crate::ratelimit::Limiter;
use crate::sessions::{SessionSettings, Sessions};
use crate::signing_keys::KeyRing;
use crate::tokens::{TokenSettings, Tokens};
use crate::users::hashing::HashPool;
use crate::users::throttle::{LoginPolicies, LoginThrottle};
use crate::users::{Users, UsersSettings};

/// Builds every service once, in dependency order
/// (`audit ← users ← signing_keys ← tokens ← sessions ← apikeys ← auth`), and the page templates.
pub async fn services(
    config: Config,
    store: Store,
    metrics: PrometheusHandle,
) -> Result<(AppState, Pages, tokio::task::JoinHandle<()>), StartError> {
    let master = load_master_key(&config)?;
    let redis = match &config.redis_url {
        Some(url) => {
            if config.database_url.is_none() {
                tracing::warn!(
                    "redis_url is set with a SQLite store: SQLite is one node by nature, so Redis only mirrors what this node keeps"
                );
            }
            let r = portcullis_kv::redis::Redis::connect(url, &config.redis_prefix)
                .await
                .map_err(|e| StartError::Other(e.0))?;
            tracing::info!(
                mode = "several nodes",
                "rate limits, replay caches and invalidations are shared through Redis"
            );
            Some(Arc::new(r))
        }
        None => {
            tracing::info!(
                mode = "one node",
                "rate limits, replay caches and invalidations are in this process"
            );
            None
        }
    };
    let nonces =
        |capacity: usize| crate::signatures::replay_cache(redis.as_ref(), &store, capacity);
    let devices = (config.known_device_ttl_days > 0)
        .then(|| portcullis_core::devices::DeviceKey::derive(master.expose_bytes()));
    let dpop = Arc::new(crate::tokens::dpop::Dpop::new(
        nonces(config.signature_nonce_capacity),
        master.expose_bytes(),
        config.oauth_dpop_nonce,
    ));
    let signature_master =
        portcullis_core::seal::MasterKey::from_bytes(master.expose_bytes().to_vec())
            .map_err(|e| StartError::Other(e.to_string()))?;
    let account_links = portcullis_core::links::LinkKey::derive(master.expose_bytes());
    let upstream_links = portcullis_core::links::LinkKey::derive(master.expose_bytes());
    let upstream_seal =
        portcullis_core::seal::MasterKey::from_bytes(master.expose_bytes().to_vec())
            .map_err(|e| StartError::Other(e.to_string()))?;
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
    let limiter = Limiter::new(
        redis.as_ref(),
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
            require_verified_email: config.require_verified_email,
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
        Arc::clone(&bus),
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
    let mailer: Arc<dyn crate::accounts::mailer::Mailer> = match &config.smtp_url {
        Some(url) => Arc::new(
            crate::accounts::mailer::SmtpMailer::new(url.expose(), &config.mail_from())
                .map_err(StartError::Other)?,
        ),
        None => Arc::new(crate::accounts::mailer::LogMailer {
            log_links: config.mail_log_links,
        }),
    };
    tracing::info!(mail = %mailer.describe(), "outgoing mail");
    let accounts = Arc::new(crate::accounts::Accounts::new(
        store.clone(),
        Arc::clone(&users),
        Arc::clone(&sessions),
        crate::accounts::mailer::Outbox::start(mailer),
        account_links,
        audit.clone(),
        crate::accounts::AccountSettings {
            redis: redis.clone(),
            issuer: config.issuer(),
            ip_policy: RatePolicy {
                limit: config.email_link_ip_limit,
                period_ms: config.email_link_ip_period_s * 1000,
            },
        },
    ));
    let upstreams = Arc::new(
        crate::upstream::Upstreams::new(
            &config.upstream,
            store.clone(),
            Arc::clone(&users),
            Arc::clone(&sessions),
            upstream_links,
            upstream_seal,
            audit.clone(),
            crate::upstream::UpstreamSettings {
                issuer: config.issuer(),
                registration: config.registration,
                require_verified_email: config.require_verified_email,
                leeway_s: config.jwt_leeway_s,
            },
        )
        .map_err(StartError::Other)?,
    );
    {
        let upstreams = Arc::clone(&upstreams);
        tokio::spawn(async move { upstreams.warm().await });
    }
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
            redis: redis.clone(),
        },
    ));
    // Denied access-token jtis that have not expired yet (revoked before this node started).
    tokens
        .load_denied_since(Millis(0))
        .await
        .map_err(StartError::Domain)?;
    let oauth = Arc::new(OAuth::new(
        store.clone(),
        Arc::clone(&tokens),
        Arc::clone(&users),
        Arc::clone(&keys),
        Arc::clone(&apikeys),
        audit.clone(),
        Arc::clone(&counts),
        per_client,
        client_rules(&config, keys.algs().to_vec()),
        config
            .route
            .iter()
            .filter_map(|r| r.resource.clone())
            .collect(),
        crate::oauth::service::OAuthSettings {
            device_poll_interval_s: config.oauth_device_poll_interval_s,
            require_par: config.oauth_require_par,
            dynamic_registration: config.oauth_dynamic_registration,
            registration_token_hash: config
                .oauth_registration_token
                .as_ref()
                .map(|t| portcullis_core::secrets::TokenHash::of(t.expose().as_bytes())),
            registration_rate: crate::oauth::service::registration::registration_rate(
                config.oauth_registration_ip_limit,
                config.oauth_registration_ip_period_s,
            ),
            redis: redis.clone(),
        },
    ));
    let auth = Arc::new(Auth::new(
        Arc::clone(&users),
        Arc::clone(&tokens),
        Arc::clone(&sessions),
        Arc::clone(&apikeys),
        Arc::clone(&dpop),
    ));
    let (scheme, authority) = config.issuer_origin();
    let signatures = Arc::new(crate::signatures::Signatures::new(
        store.clone(),
        Arc::clone(&users),
        Arc::clone(&apikeys),
        signature_master,
        audit.clone(),
        Arc::clone(&bus),
        nonces(config.signature_nonce_capacity),
        crate::signatures::SignatureSettings {
            scheme,
            authority,
            cache_ttl,
            trusted_proxies: config.trusted_proxies(),
        },
    ));
    let (rules, warnings) =
        portcullis_core::routes::Rules::compile(&config.route, config.default_policy)
            .map_err(StartError::Other)?;
    for w in &warnings {
        tracing::warn!(warning = %w, "route rules");
    }
    let forward_auth = Arc::new(crate::forward_auth::ForwardAuth::new(
        Arc::clone(&auth),
        Arc::clone(&oauth),
        Arc::clone(&signatures),
        rules,
        config.audience(),
    ));
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
        accounts,
        upstreams,
        apikeys,
        oauth,
        auth,
        signatures,
        forward_auth,
        dpop,
        metrics,
        redis,
        node_id: format!(
            "node-{}",
            portcullis_core::ids::EventId::generate().as_str()
        ),
    }));
    Ok((state, pages, audit_task))
}

/// What the configuration allows of client registrations.
pub fn client_rules(
    config: &Config,
    id_token_algs: Vec<portcullis_core::jwt::JwsAlg>,
) -> crate::oauth::clients::ClientRules {
    crate::oauth::clients::ClientRules {
        allow_loopback_backchannel: config.oauth_allow_loopback_backchannel,
        id_token_algs,
        allow_private_fetch: config.oauth_fetch_allow_private_for_tests,
        metadata_documents: config.oauth_client_metadata_documents,
        metadata_allowed: config.oauth_client_metadata_allowed_domains.clone(),
        metadata_denied: config.oauth_client_metadata_denied_domains.clone(),
        open_scopes: crate::oauth::service::registration::registration_scopes(
            &config.oauth_registration_scopes,
            &config.route,
        ),
    }
}

/// Opens the store named by the configuration (creating the data folder for SQLite) and migrates it.
pub async fn open_store(config: &Config) -> Result<Store, StartError> {
    let opts = StoreOptions {
        pool_size: config.db_pool_size,
        acquire_timeout: std::time::Duration::from_millis(config.db_timeout_ms),
    };
    let store = match &config.database_url {
        Some(url) => Store::connect_postgres(url, &opts, None).await?,
        None => {
            ensure_private_dir(&config.data_dir)?;
            Store::open_sqlite(&config.sqlite_path(), &opts).await?
        }
    };
    store.migrate().await?;
    Ok(store)
}

/// Creates `dir` with mode 0700 if missing, and takes group and other access away from an existing
/// one (it holds the master key and, on SQLite, every hash and sealed key).
pub fn ensure_private_dir(dir: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
            tracing::warn!(path = %dir.display(), was = format!("{:o}", mode & 0o777), "the data folder was readable by others; its mode is now 0700");
        }
    }
    Ok(())
}

/// Refuses a key file that anyone but its owner may read: a key others have read is no secret.
#[cfg(unix)]
fn check_private_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "it is readable by others (mode {:o}); if nobody else has read it, run `chmod 600 {}` \
             and start again, otherwise treat the key as compromised",
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_file(_: &Path) -> Result<(), String> {
    Ok(())
}

/// The master key: from configuration, else `<data_dir>/master.key` (created with mode 0600, 32 random
/// bytes as hex).
pub fn load_master_key(config: &Config) -> Result<MasterKey, StartError> {
    if let Some(hexed) = &config.master_key {
        let raw = hex::decode(hexed.expose()).map_err(|e| StartError::MasterKey {
            path: "master_key".into(),
            reason: e.to_string(),
        })?;
        return MasterKey::from_bytes(raw).map_err(|e| StartError::MasterKey {
            path: "master_key".into(),
            reason: e.to_string(),
        });
    }
    ensure_private_dir(&config.data_dir)?;
    let path = config.data_dir.join("master.key");
    let shown = path.display().to_string();
    let bad = |reason: String| StartError::MasterKey {
        path: shown.clone(),
        reason,
    };
    if path.exists() {
        check_private_file(&path).map_err(bad)?;
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let raw = hex::decode(text.trim()).map_err(|_| bad("expected 64 hex digits".into()))?;
        return MasterKey::from_bytes(raw).map_err(|e| bad(e.to_string()));
    }
    let key = MasterKey::generate().map_err(|e| bad(e.to_string()))?;
    write_private_file(&path, hex::encode(key.expose_bytes()).as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    Ok(key)
}

/// Writes `contents` to a new file only its owner may read (it must not exist yet).
#[cfg(unix)]
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(not(unix))]
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
