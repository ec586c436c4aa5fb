//! What the workspace's test suites share: a PostgreSQL schema of its own per test.
//!
//! Tests that need PostgreSQL read `PORTCULLIS_TEST_DATABASE_URL` ([`database_url`]); without it they
//! say they are skipped, so a laptop without PostgreSQL still passes. Each test creates a
//! [`PgSchema`] (`<prefix>_<random hex>`), points its store or its server at it, and the schema is
//! dropped with everything in it when the test ends, whether it passed or panicked.
#![allow(clippy::expect_used, clippy::panic)]

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The variable that names the test database.
pub const DATABASE_URL_VAR: &str = "PORTCULLIS_TEST_DATABASE_URL";

/// The configured test database, or `None` after saying on stderr that the test is skipped.
pub fn database_url() -> Option<String> {
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            eprintln!("skipped: {DATABASE_URL_VAR} not set");
            None
        }
    }
}

/// `url` with one more query parameter.
pub fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// One test's schema. Dropped (with `CASCADE`) by [`PgSchema::drop_now`], or failing that when the
/// value is dropped (also during a panic).
#[derive(Debug)]
pub struct PgSchema {
    url: String,
    name: String,
    dropped: bool,
}

impl PgSchema {
    /// Creates `<prefix>_<32 hex digits>` in the database at `url`.
    pub async fn create(url: &str, prefix: &str) -> Self {
        assert!(
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "a schema prefix is lowercase letters"
        );
        let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(url)
            .await
            .expect("a plain PostgreSQL connection");
        // Only ever names this function generated (letters, `_` and hex).
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test's schema");
        conn.close().await.ok();
        Self {
            url: url.to_owned(),
            name,
            dropped: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database URL the schema was made in.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with this schema as the `search_path`, for a process that takes only a URL (libpq's
    /// `options`).
    pub fn url_with_search_path(&self) -> String {
        with_param(
            &self.url,
            &format!("options=-c%20search_path%3D{}", self.name),
        )
    }

    /// A plain connection whose `search_path` is this schema.
    pub async fn connect(&self) -> PgConnection {
        connect_in(&self.url, &self.name).await
    }

    /// Drops the schema now. Best effort: a failure is reported but never hides the test's result.
    pub async fn drop_now(mut self) {
        self.dropped = true;
        drop_schema(&self.url, &self.name).await;
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await: a thread of its own with a small runtime.
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_schema(&url, &name));
            }
        })
        .join();
    }
}

/// A plain connection to `url` whose `search_path` is `schema` (a name [`PgSchema`] made).
pub async fn connect_in(url: &str, schema: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url)
        .await
        .expect("a plain PostgreSQL connection");
    sqlx::query(AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut conn)
        .await
        .expect("search_path");
    conn
}

async fn drop_schema(url: &str, name: &str) {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        eprintln!("warning: could not connect to drop schema {name}");
        return;
    };
    let _ = sqlx::query("SET lock_timeout = '10s'")
        .execute(&mut conn)
        .await;
    if let Err(e) = sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {name} CASCADE"
    )))
    .execute(&mut conn)
    .await
    {
        eprintln!("warning: could not drop schema {name}: {e}");
    }
    conn.close().await.ok();
}
