//! Test harness: every test body is an `async fn(Ctx)` run once per backend by [`backend_tests!`].
//!
//! * SQLite: a fresh database file in a temporary directory (removed afterwards).
//! * PostgreSQL: only when `PORTCULLIS_TEST_DATABASE_URL` is set. Each test gets its own schema
//!   (`portcullis_testkit::PgSchema`); the store connects with that `search_path`, migrates, and the
//!   schema is dropped when the test ends, whether it passed or panicked.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_core::clock::Millis;
use portcullis_core::ids::{FamilyId, RefreshTokenId, UserId};
use portcullis_core::secrets::{TokenHash, fill_random};
use portcullis_store::{
    NewFamily, NewUser, NextToken, RefreshTokenStore, Store, StoreOptions, UserStore,
};
// Only ever fed SQL written by this suite and schema names it generated (hex).
use sqlx::{AssertSqlSafe, Connection};

use portcullis_testkit::{DATABASE_URL_VAR, PgSchema};

/// A fixed "now" so every expiry in the suite is exact.
pub const T0: Millis = Millis(1_700_000_000_000);

/// Upper bound for one test body: a deadlock fails the test instead of hanging the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a test body receives.
pub struct Ctx {
    pub store: Store,
    /// A side door to the same database, for the few assertions the store's API cannot express.
    pub raw: Raw,
}

/// How to open a plain connection to the test's database.
#[derive(Clone, Debug)]
pub enum Raw {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl Raw {
    /// Runs one statement that changes rows, on a fresh connection (for states the store's own
    /// methods never produce, to show which check decides).
    pub async fn execute(&self, sql: &str) {
        match self {
            Raw::Sqlite(path) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(std::time::Duration::from_secs(5));
                let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                    .await
                    .expect("raw sqlite connection");
                sqlx::query(AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .expect(sql);
                conn.close().await.ok();
            }
            Raw::Postgres { url, schema } => {
                let mut conn = portcullis_testkit::connect_in(url, schema).await;
                sqlx::query(AssertSqlSafe(sql.to_owned()))
                    .execute(&mut conn)
                    .await
                    .expect(sql);
                conn.close().await.ok();
            }
        }
    }

    /// Runs a query returning one BIGINT (e.g. `SELECT COUNT(*) FROM …`) on a fresh connection.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match self {
            Raw::Sqlite(path) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                    .await
                    .expect("raw sqlite connection");
                let v = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .expect(sql);
                conn.close().await.ok();
                v
            }
            Raw::Postgres { url, schema } => {
                let mut conn = portcullis_testkit::connect_in(url, schema).await;
                let v = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .expect(sql);
                conn.close().await.ok();
                v
            }
        }
    }
}

/// Keeps the database of one test alive; `cleanup` removes it.
pub enum Guard {
    Sqlite(tempfile::TempDir),
    Postgres(PgSchema),
}

impl Guard {
    pub async fn cleanup(self) {
        match self {
            Guard::Sqlite(dir) => drop(dir),
            Guard::Postgres(schema) => schema.drop_now().await,
        }
    }
}

fn options() -> StoreOptions {
    // Enough connections for the 16-way races to really run side by side on PostgreSQL (connections are
    // opened lazily, so other tests do not pay for them).
    StoreOptions {
        pool_size: 17,
        acquire_timeout: Duration::from_secs(20),
    }
}

/// The configured URL, with `synchronous_commit = off` for this suite's sessions: commits then do not
/// wait for the WAL flush, which is most of the cost of a test (a fresh schema and its migration)
/// and of the races (hundreds of small transactions). Durability is irrelevant to throw-away schemas,
/// and locking and visibility are unaffected.
fn pg_url(url: &str) -> String {
    portcullis_testkit::with_param(url, "options[synchronous_commit]=off")
}

pub async fn sqlite() -> (Ctx, Guard) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.db");
    let store = Store::open_sqlite(&path, &options())
        .await
        .expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    assert_eq!(store.backend_name(), "sqlite");
    (
        Ctx {
            store,
            raw: Raw::Sqlite(path),
        },
        Guard::Sqlite(dir),
    )
}

/// `None` when no PostgreSQL was configured.
pub async fn postgres() -> Option<(Ctx, Guard)> {
    let url = pg_url(
        &std::env::var(DATABASE_URL_VAR)
            .ok()
            .filter(|u| !u.trim().is_empty())?,
    );
    let schema = PgSchema::create(&url, "t").await;
    let name = schema.name().to_owned();
    let guard = Guard::Postgres(schema);
    let store = match Store::connect_postgres(&url, &options(), Some(&name)).await {
        Ok(s) => s,
        Err(e) => {
            guard.cleanup().await;
            panic!("connect postgres: {e}");
        }
    };
    if let Err(e) = store.migrate().await {
        store.close().await;
        guard.cleanup().await;
        panic!("migrate postgres: {e}");
    }
    assert_eq!(store.backend_name(), "postgres");
    Some((
        Ctx {
            store,
            raw: Raw::Postgres { url, schema: name },
        },
        guard,
    ))
}

/// Runs one test body on one backend, then always tears the database down, then re-raises a panic.
pub async fn run<F, Fut>(backend: &'static str, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (ctx, guard) = match backend {
        "sqlite" => sqlite().await,
        "postgres" => match postgres().await {
            Some(x) => x,
            None => {
                eprintln!("skipped: {DATABASE_URL_VAR} not set");
                return;
            }
        },
        other => panic!("unknown backend {other}"),
    };
    let store = ctx.store.clone();
    let outcome = tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(body(ctx))).await;
    store.close().await;
    guard.cleanup().await;
    match outcome {
        Err(_) => panic!("[{backend}] test timed out after {TEST_TIMEOUT:?}"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("[{backend}] test task failed: {e}"),
        Ok(Ok(())) => {}
    }
}

/// `backend_tests!(a, b)` turns each `async fn a(t: Ctx)` of the calling module into the tests
/// `<module>::sqlite::a` and `<module>::postgres::a`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::support::run("sqlite", super::$name).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::support::run("postgres", super::$name).await
                }
            )*
        }
    };
}
pub(crate) use backend_tests;

// ---------------------------------------------------------------------------------------------------
// Fixtures

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill_random(&mut b).expect("OS random");
    b
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash that no stored row has.
pub fn random_hash() -> TokenHash {
    TokenHash::of(&random_bytes::<32>())
}

pub fn new_user_row(email: &str, at: Millis) -> NewUser {
    NewUser {
        id: UserId::generate(),
        email: email.to_owned(),
        email_key: email.to_lowercase(),
        name: Some("Test User".to_owned()),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned()),
        roles: "user".to_owned(),
        created_at: at,
        email_verified_at: None,
    }
}

/// Creates a user with a unique email; returns its id.
pub async fn user(s: &Store) -> String {
    let email = format!("u{}@example.test", hex(&random_bytes::<6>()));
    let u = new_user_row(&email, T0);
    s.create_user(&u).await.expect("create user");
    u.id.as_str().to_owned()
}

/// Creates a user with a unique email; returns its id, typed.
pub async fn user_id(s: &Store) -> UserId {
    UserId::parse(&user(s).await).expect("a user id")
}

pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 24 * HOUR;

/// A fresh token to issue, with a one-hour lifetime.
pub fn next_token() -> NextToken {
    next_token_ttl(HOUR)
}

pub fn next_token_ttl(ttl_ms: i64) -> NextToken {
    NextToken {
        id: RefreshTokenId::generate(),
        hash: random_hash(),
        ttl_ms,
    }
}

pub fn new_family(user_id: &str, created_at: Millis, lifetime_ms: i64) -> NewFamily {
    NewFamily {
        id: FamilyId::generate(),
        user_id: user_id.to_owned(),
        client_id: "cli_test".to_owned(),
        scope: "openid profile".to_owned(),
        session_id: Some("ses_test".to_owned()),
        created_at,
        expires_at: created_at.plus_millis(lifetime_ms),
        audiences: None,
        auth_time: None,
        dpop_jkt: None,
    }
}

/// Starts a family at `T0` (30 days absolute, first token one hour); returns it and its first token.
pub async fn family(s: &Store, user_id: &str) -> (NewFamily, NextToken) {
    let f = new_family(user_id, T0, 30 * DAY);
    let first = next_token();
    s.start_family(&f, &first).await.expect("start family");
    (f, first)
}

// ---------------------------------------------------------------------------------------------------
// Rotation assertions

use portcullis_store::Rotation;

/// Short name of an outcome, for messages and tallies.
pub fn kind(r: &Rotation) -> &'static str {
    match r {
        Rotation::Rotated { .. } => "Rotated",
        Rotation::Reused { .. } => "Reused",
        Rotation::Invalid => "Invalid",
    }
}

/// Presents `presented`, expects `Rotated`; returns the new token's expiry.
pub async fn expect_rotated(
    s: &Store,
    presented: &TokenHash,
    now: Millis,
    grace_ms: i64,
    next: &NextToken,
) -> Millis {
    match s
        .rotate(presented, now, grace_ms, next)
        .await
        .expect("rotate")
    {
        Rotation::Rotated { expires_at, .. } => expires_at,
        other => panic!("expected Rotated, got {other:?}"),
    }
}

/// Presents `presented`, expects `Reused`; returns `(family_id, user_id)`.
pub async fn expect_reused(
    s: &Store,
    presented: &TokenHash,
    now: Millis,
    grace_ms: i64,
) -> (String, String) {
    match s
        .rotate(presented, now, grace_ms, &next_token())
        .await
        .expect("rotate")
    {
        Rotation::Reused { family_id, user_id } => (family_id, user_id),
        other => panic!("expected Reused, got {other:?}"),
    }
}

/// Presents `presented`, expects `Invalid`.
pub async fn expect_invalid(s: &Store, presented: &TokenHash, now: Millis, grace_ms: i64) {
    match s
        .rotate(presented, now, grace_ms, &next_token())
        .await
        .expect("rotate")
    {
        Rotation::Invalid => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
}
