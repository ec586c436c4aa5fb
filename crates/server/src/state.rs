//! Everything a request may need, built once at start-up.

use std::path::Path;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use portcullis_core::clock::Millis;
use portcullis_core::passwords::{PasswordHashing, PasswordPolicy};
use portcullis_core::ratelimit::{LoginBackoff, RatePolicy};

use portcullis_core::seal::MasterKey;
use portcullis_store::{Store, StoreOptions, UserStore};

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::hashing::HashPool;
use crate::invalidation::Bus;
use crate::keys::KeyRing;
use crate::throttle::{LoginPolicies, LoginThrottle, MemoryLimiter};
use crate::usage::{AuditCounts, KeyUsage, SessionActivity};

pub struct Inner {
    pub config: Config,
    /// `config.issuer()` and `config.audience()`, worked out once: every token carries them.
    pub issuer: String,
    pub audience: String,
    /// The HSTS header, when served over TLS (the issuer is https).
    pub hsts: Option<axum::http::HeaderValue>,
    /// `trusted_proxies` and `metrics_allowed_ips`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub metrics_allowed: Vec<ipnet::IpNet>,
    /// Signs known-device cookies; `None` when `known_device_ttl_days` is 0.
    pub devices: Option<portcullis_core::devices::DeviceKey>,
    pub store: Store,
    pub keys: KeyRing,
    pub auth: Authenticator,
    pub hashing: HashPool,
    /// The hashing parameters, for checks that run no hash (the cost cap of imported hashes).
    pub hash_rules: PasswordHashing,
    pub policy: PasswordPolicy,
    pub throttle: LoginThrottle<MemoryLimiter>,
    /// Per-key rate limits of API keys.
    pub key_limits: MemoryLimiter,
    pub key_usage: KeyUsage,
    pub audit_counts: AuditCounts,
    pub session_activity: SessionActivity,
    pub pages: crate::pages::Pages,
    /// Cache invalidations, for other nodes (see [`crate::invalidation`]).
    pub bus: Bus,
    pub audit: Audit,
    pub metrics: PrometheusHandle,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Start-up failures, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare the data folder {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the master key {path}: {reason}")]
    MasterKey { path: String, reason: String },
    #[error("cannot open the store: {0}")]
    Store(#[from] portcullis_store::StoreError),
    #[error("cannot load signing keys: {0}")]
    Keys(#[from] crate::keys::KeyError),
    #[error("{0}")]
    Other(String),
}

/// Opens the store named by the configuration (creating the data folder for SQLite) and migrates it.
pub async fn open_store(config: &Config) -> Result<Store, StartError> {
    let opts = StoreOptions {
        pool_size: config.db_pool_size,
        ..StoreOptions::default()
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
        let raw = hex::decode(hexed).map_err(|e| StartError::MasterKey {
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

impl AppState {
    pub async fn build(
        config: Config,
        store: Store,
        metrics: PrometheusHandle,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StartError> {
        let master = load_master_key(&config)?;
        let devices = (config.known_device_ttl_days > 0)
            .then(|| portcullis_core::devices::DeviceKey::derive(master.expose_bytes()));
        let keys = KeyRing::from_config(store.clone(), master, &config).await?;
        let hashing =
            PasswordHashing::new(config.argon2()).map_err(|e| StartError::Other(e.to_string()))?;
        let threads = match config.hash_concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let hash_rules = hashing.clone();
        let hashing = HashPool::new(hashing, threads, config.hash_queue_limit)
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
            std::time::Duration::from_millis(
                policies
                    .ip
                    .period_ms
                    .max(policies.registration_ip.period_ms)
                    .max(1000),
            ),
            std::time::Duration::from_millis(per_client.forget_after_ms),
        );
        let (audit, audit_task) = Audit::spawn(store.clone());
        let auth = Authenticator::new(std::time::Duration::from_secs(config.api_key_cache_ttl_s));
        // A key's limiter state is forgotten after a day idle: the longest period a key may have.
        let key_limits = MemoryLimiter::new(
            std::time::Duration::from_millis(crate::apikeys::MAX_RATELIMIT_DURATION_MS as u64),
            std::time::Duration::from_secs(60),
        );
        let forget_before =
            Millis::now().plus_secs(-(config.access_token_ttl_s + config.jwt_leeway_s + 60));
        auth.load_watermarks(
            store.token_watermarks_since(forget_before).await?,
            forget_before,
        );
        // Load the bundled password list now rather than on the first registration.
        let _ = portcullis_core::passwords::CommonPasswords::bundled().len();
        let pages =
            crate::pages::Pages::new(config.templates_dir.clone()).map_err(StartError::Other)?;
        let state = AppState(Arc::new(Inner {
            pages,
            policy: config.password_policy(),
            issuer: config.issuer(),
            audience: config.audience(),
            hsts: config.issuer().starts_with("https://").then(|| {
                axum::http::HeaderValue::from_static(if config.hsts_include_subdomains {
                    "max-age=31536000; includeSubDomains"
                } else {
                    "max-age=31536000"
                })
            }),
            trusted_proxies: config.trusted_proxies(),
            metrics_allowed: config.metrics_allowed(),
            devices,
            throttle: LoginThrottle::new(limiter, policies),
            key_limits,
            key_usage: KeyUsage::default(),
            audit_counts: AuditCounts::default(),
            session_activity: SessionActivity::new(std::time::Duration::from_secs(
                config.session_idle_timeout_s.unsigned_abs(),
            )),
            bus: Bus::new(),
            config,
            store,
            keys,
            auth,
            hashing,
            hash_rules,
            audit,
            metrics,
        }));
        Ok((state, audit_task))
    }
}
