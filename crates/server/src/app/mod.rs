//! The only place that sees every service: it builds them in order ([`state`]), merges their routes
//! ([`router`]), spawns their background loops ([`background`]), and starts and stops the node.

pub mod background;
pub mod bootstrap;
pub mod router;
pub mod state;

use std::net::SocketAddr;

use portcullis_core::apikeys::{ApiKey, DEFAULT_PREFIX};
use portcullis_core::clock::Millis;
use portcullis_core::ids::KeyId;
use portcullis_core::scopes::{Scope, Scopes};
use portcullis_store::{ApiKeyRow, ApiKeyStore, Store, UserStore};

pub use state::{AppState, Inner};

use crate::config::Config;
use crate::http::listener;
use crate::telemetry;

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
    Keys(#[from] crate::signing_keys::KeyError),
    #[error("{0}")]
    Domain(#[from] crate::error::Error),
    #[error("{0}")]
    Other(String),
}

/// A server accepting connections, and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    audit: tokio::task::JoinHandle<()>,
}

/// Builds the state over an opened, migrated store and serves on `listener` (and `/metrics` on
/// `metrics_listener` when the configuration names one).
pub async fn start(
    config: Config,
    store: Store,
    listener: tokio::net::TcpListener,
) -> Result<Running, StartError> {
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            StartError::Other(format!("cannot listen on {addr} for metrics_listen: {e}"))
        })?),
        None => None,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let limits = listener::Limits::from_config(&config);
    let (state, pages, audit) =
        bootstrap::services(config, store, telemetry::metrics_handle()).await?;
    let mut background = background::spawn(state.clone());
    let router = router::router(state.clone(), pages);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    if let Some(metrics_listener) = metrics_listener {
        let router = router::metrics_router(state.clone());
        let limits = limits.clone();
        let rx = rx.clone();
        background.push(tokio::spawn(async move {
            let _ = listener::serve(
                metrics_listener,
                router,
                limits,
                stopped(rx),
                std::time::Duration::from_secs(1),
            )
            .await;
        }));
    }
    let server = tokio::spawn(listener::serve(
        listener,
        router,
        limits,
        stopped(rx),
        std::time::Duration::from_secs(10),
    ));
    Ok(Running {
        addr,
        metrics_addr,
        state,
        shutdown: Some(tx),
        server,
        background,
        audit,
    })
}

impl Running {
    /// Stops accepting, finishes in-flight requests, flushes the audit queue and closes the store.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(11), &mut self.server).await;
        for task in &self.background {
            task.abort();
        }
        background::flush_usage(&self.state).await;
        self.state.counts.flush(&self.state.audit);
        let store = self.state.store.clone();
        drop(self.state);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.audit).await;
        store.close().await;
    }

    /// Waits until the server task ends (it only ends on `stop` or an accept error).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match (&mut self.server).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Creates a root API key (scope `admin`, no owner) and returns it; it is shown only this once.
pub async fn create_root_key(store: &Store, name: &str) -> Result<String, StartError> {
    let key = ApiKey::generate(DEFAULT_PREFIX).map_err(|e| StartError::Other(e.to_string()))?;
    let now = Millis::now();
    let row = ApiKeyRow {
        id: KeyId::generate(),
        owner_id: None,
        prefix: key.prefix().to_owned(),
        start: key.start(),
        key_hash: key.hash(),
        name: name.to_owned(),
        scopes: Scopes::parse_space_separated(Scope::ADMIN)
            .map_err(|e| StartError::Other(e.to_string()))?,
        meta: None,
        owner_meta: None,
        created_at: now,
        updated_at: now,
        expires_at: None,
        revoked_at: None,
        remaining: None,
        ratelimit_limit: None,
        ratelimit_duration_ms: None,
        last_used_at: None,
        rolled_to: None,
        grace_until: None,
        ratelimit_bucket: None,
    };
    store.insert_api_key(&row).await?;
    Ok(key.expose().to_owned())
}

/// True when the store has neither users nor keys: the first start.
pub async fn store_is_empty(store: &Store) -> Result<bool, StartError> {
    Ok(store.count_users().await? == 0 && store.count_api_keys().await? == 0)
}
