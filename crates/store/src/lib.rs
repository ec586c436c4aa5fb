//! Portcullis persistence. One trait per capability ([`UserStore`], [`RefreshTokenStore`],
//! [`SigningKeyStore`], [`ApiKeyStore`], [`SessionStore`], [`SignatureKeyStore`], [`OAuthStore`], [`AuditStore`], [`Maintenance`]), implemented by [`Store`] over
//! either backend, chosen at start-up: SQLite (an embedded file, zero configuration) or PostgreSQL
//! (shared by several nodes).
//!
//! Each backend has its own migrations (`migrations/sqlite`, `migrations/postgres`). The query text is
//! shared: both speak `$N` parameters, `RETURNING` and the same column types as we use them (TEXT,
//! BIGINT milliseconds, BLOB/BYTEA hashes), so [`with_pool!`] expands each method body once per backend
//! with the pool of that backend. Races are settled by one conditional `UPDATE … RETURNING` per
//! decision, never by read-then-write.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::await_holding_lock,
    clippy::todo
)]

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod accounts;
mod apikeys;
mod audit;
pub mod bulk;
mod device;
mod maintenance;
mod nonces;
mod oauth;
mod par;
mod refresh;
mod registrations;
mod sessions;
mod signature_keys;
mod signing_keys;
mod users;

pub use accounts::{AccountStore, EmailLinkRow, IdentityRow, LinkPurpose, UpstreamLoginRow};
pub use apikeys::{ApiKeyPatch, ApiKeyRow, ApiKeyStore, KeyOwner, RolledKey, Spend};
pub use audit::{AuditEvent, AuditFilter, AuditStore};
pub use device::{DeviceCodeRow, DeviceCodeStore, DeviceDecision, DevicePoll};
pub use maintenance::{Job, JobLock, Maintenance, Purged};
pub use nonces::NonceStore;
pub use oauth::{
    ClientRow, CodeRow, ConsentRow, OAuthStore, OpaqueAccessRow, Produced, Redemption, Replayed,
};
pub use par::{ParRow, ParStore};
pub use refresh::{FamilyRow, NewFamily, NextToken, RefreshTokenStore, Rotation};
pub use registrations::{RegistrationRow, RegistrationStore};
pub use sessions::{SessionRow, SessionStore};
pub use signature_keys::{SignatureKeyRow, SignatureKeyStore};
pub use signing_keys::{SigningKeyRow, SigningKeyStore};
pub use users::{NewUser, UserRow, UserStore};

/// Store failures. Only `Conflict` and `NotFound` carry meaning for callers; `Database` is logged and
/// becomes a 500 without details.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken; the string names the rule (e.g. `users_email_key_unique`).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot prepare the database file: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value is not what this version writes (an id of the wrong kind, a hash of the wrong
    /// length): the row is refused rather than guessed at.
    #[error("a stored {0} does not parse")]
    Corrupt(&'static str),
    /// A request the store refuses before touching the database (a bulk load of a table it does
    /// not load).
    #[error("invalid request to the store: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Turns a unique violation into `Conflict(rule)`, leaving other errors alone. Backends report the
    /// violated constraint differently (PostgreSQL by name, SQLite by table and column), so the caller
    /// names the only unique rule its statement can break besides the random primary key.
    /// The database cannot be reached now: no connection within the timeout, a connection lost, the
    /// server shutting down or not yet accepting (SQLSTATE classes 08 and 57P). Worth a retry; the
    /// caller answers 503, not 500.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }

    pub(crate) fn unique(rule: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(rule),
            _ => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Reading stored columns back into core's types: a value that does not parse is
/// [`StoreError::Corrupt`], named by `what`.
pub(crate) mod column {
    use portcullis_core::clock::Millis;
    use portcullis_core::scopes::Scopes;
    use portcullis_core::secrets::TokenHash;

    use super::{Result, StoreError};

    pub fn id<T: TryFrom<String>>(raw: String, what: &'static str) -> Result<T> {
        T::try_from(raw).map_err(|_| StoreError::Corrupt(what))
    }

    pub fn opt_id<T: TryFrom<String>>(
        raw: Option<String>,
        what: &'static str,
    ) -> Result<Option<T>> {
        raw.map(|r| id(r, what)).transpose()
    }

    pub fn hash(raw: Vec<u8>) -> Result<TokenHash> {
        <[u8; 32]>::try_from(raw)
            .map(TokenHash)
            .map_err(|_| StoreError::Corrupt("token hash"))
    }

    pub fn hashes(raw: Vec<Vec<u8>>) -> Result<Vec<TokenHash>> {
        raw.into_iter().map(hash).collect()
    }

    pub fn scopes(raw: &str) -> Result<Scopes> {
        Scopes::parse_space_separated(raw).map_err(|_| StoreError::Corrupt("scope"))
    }

    pub fn opt_millis(raw: Option<i64>) -> Option<Millis> {
        raw.map(Millis)
    }
}

/// Which database, and its pools.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    /// SQLite allows one writer at a time: writes go through a single connection (so they queue in
    /// our process instead of failing with SQLITE_BUSY), reads through a pool.
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
        /// Refresh-token rotations, settled in batches by one task (group commit); see `refresh`.
        rotations: Option<refresh::RotationQueue>,
        /// Authorization-code writes, committed in batches by one task; see `oauth`.
        codes: Option<oauth::CodeQueue>,
        /// One connection that only checkpoints the WAL, so that the writer never does (see
        /// [`Store::open_sqlite`]).
        checkpoint: Option<SqlitePool>,
    },
    Postgres(PgPool),
}

/// The store the server talks to.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) backend: Backend,
}

/// Expands `$body` with `$p` bound to the read or write pool of whichever backend is in use.
macro_rules! with_pool {
    ($self:expr, read, $p:ident => $body:expr) => {
        match &$self.backend {
            $crate::Backend::Sqlite { read, .. } => {
                let $p = read;
                $body
            }
            $crate::Backend::Postgres(pool) => {
                let $p = pool;
                $body
            }
        }
    };
    ($self:expr, write, $p:ident => $body:expr) => {
        match &$self.backend {
            $crate::Backend::Sqlite { write, .. } => {
                let $p = write;
                $body
            }
            $crate::Backend::Postgres(pool) => {
                let $p = pool;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// Page cache of each SQLite reader (`cache_size`; negative = KiB): 8 MiB.
const READER_CACHE: &str = "-8192";
/// Page cache of the SQLite writer: 64 MiB. Every decision goes through this one connection, and
/// once its working set (the refresh-token table and its indexes above all) outgrows the cache,
/// each miss is a `pread` on the serial path.
const WRITER_CACHE: &str = "-65536";
/// The writer's own automatic checkpoint, a backstop behind the checkpointer (pages of 4 KiB: ~64 MiB
/// of WAL).
const WRITER_AUTOCHECKPOINT: u32 = 16_384;
/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints the WAL until the store is closed. A passive checkpoint copies what no reader still
/// needs and never blocks the writer; the next write transaction after a complete one starts the
/// WAL over from its beginning, so the file stays small.
async fn checkpoint_wal(pool: SqlitePool) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
            && !pool.is_closed()
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; the writer's automatic checkpoint remains");
        }
    }
}

/// Runs one of SQLite's serial queues (rotations, authorization codes) on a thread of its own, with a
/// single-threaded runtime. Each statement of a batch is a hand-off to the writer's thread and back;
/// on the server's runtime every "back" is a wake-up that waits in the injection queue behind
/// whatever the workers are busy with (under load, most of a batch's time: measured 3.0–3.7 ms per
/// batch of ~27 rotations there). On an idle thread of its own it resumes at once.
pub(crate) fn spawn_serial<F>(name: &str, queue: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || runtime.block_on(queue))?;
    Ok(())
}

/// Settings for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Maximum connections (PostgreSQL) or readers (SQLite).
    pub pool_size: u32,
    /// How long a query waits for a connection or a lock before failing.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pool_size: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl Store {
    /// Opens (creating if needed) a SQLite file: WAL, `synchronous = NORMAL`, foreign keys on, a busy
    /// timeout, one writer connection and a pool of readers. A new file is created with mode 0600.
    ///
    /// The writer never checkpoints in the normal course: a checkpoint copies the WAL into the
    /// database file and syncs both (measured: ~3 ms of `fsync` per checkpoint on this VM, once every
    /// few hundred commits under refresh load), and on the single writer that stall lands on every
    /// queued decision. A third connection runs a `PASSIVE` checkpoint every
    /// [`CHECKPOINT_EVERY`] instead, beside the writer (a passive checkpoint takes no write lock).
    /// The writer keeps SQLite's automatic checkpoint as a backstop, at [`WRITER_AUTOCHECKPOINT`]
    /// pages, should the checkpointer fall behind.
    pub async fn open_sqlite(path: &Path, opts: &StoreOptions) -> Result<Self> {
        create_private_file(path)?;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(opts.acquire_timeout)
            .pragma("temp_store", "memory")
            .pragma("cache_size", READER_CACHE);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(
                base.clone()
                    .pragma("cache_size", WRITER_CACHE)
                    .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT.to_string()),
            )
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.pool_size.max(1))
            .min_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.clone().read_only(true))
            .await?;
        let checkpoint = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.pragma("cache_size", "-256"))
            .await?;
        tokio::spawn(checkpoint_wal(checkpoint.clone()));
        let direct = Self {
            backend: Backend::Sqlite {
                read: read.clone(),
                write: write.clone(),
                rotations: None,
                codes: None,
                checkpoint: None,
            },
        };
        let rotations = Some(refresh::RotationQueue::spawn(direct)?);
        let codes = Some(oauth::CodeQueue::spawn(write.clone())?);
        Ok(Self {
            backend: Backend::Sqlite {
                read,
                write,
                rotations,
                codes,
                checkpoint: Some(checkpoint),
            },
        })
    }

    /// Connects to PostgreSQL. `search_path`, when given, confines every table to one schema (the
    /// test suite gives each test its own).
    pub async fn connect_postgres(
        url: &str,
        opts: &StoreOptions,
        search_path: Option<&str>,
    ) -> Result<Self> {
        let mut connect = PgConnectOptions::from_str(url)?;
        if let Some(schema) = search_path {
            connect = connect.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.pool_size.max(2))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect)
            .await?;
        Ok(Self {
            backend: Backend::Postgres(pool),
        })
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite { write, .. } => sqlx::migrate!("migrations/sqlite").run(write).await?,
            Backend::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection, flushing SQLite's WAL.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite {
                read,
                write,
                checkpoint,
                ..
            } => {
                if let Some(checkpoint) = checkpoint {
                    checkpoint.close().await;
                }
                read.close().await;
                write.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
