//! Bulk loading: many rows of one table in few statements and few transactions. For filling a store
//! with test data at scale (`portcullis-bench --scale`) and for imports; nothing in the server uses
//! it. Rows go in exactly as given: the caller makes them valid (ids, hashes of real secrets,
//! references to rows that exist), as the store's own writes would.

use sqlx::QueryBuilder;

use crate::{Backend, Result, Store, StoreError};

/// One value of a bulk row. The type is carried even for `NULL`, which PostgreSQL needs.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Blob(Option<Vec<u8>>),
}

/// Tables a bulk load may fill, and the columns it may name (the SQL is built from these, never
/// from caller text).
const TABLES: &[(&str, &[&str])] = &[
    (
        "users",
        &[
            "id",
            "email",
            "email_key",
            "name",
            "password_hash",
            "roles",
            "created_at",
            "updated_at",
            "email_verified_at",
        ],
    ),
    (
        "api_keys",
        &[
            "id",
            "owner_id",
            "prefix",
            "start",
            "key_hash",
            "name",
            "scopes",
            "created_at",
            "updated_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ],
    ),
    (
        "refresh_families",
        &[
            "id",
            "user_id",
            "client_id",
            "scope",
            "session_id",
            "created_at",
            "expires_at",
            "revoked_at",
            "revoked_reason",
            "auth_time",
        ],
    ),
    (
        "refresh_tokens",
        &[
            "id",
            "family_id",
            "parent_id",
            "token_hash",
            "created_at",
            "expires_at",
            "spent_at",
            "revoked_at",
        ],
    ),
    (
        "sessions",
        &[
            "id",
            "token_hash",
            "user_id",
            "created_at",
            "last_seen_at",
            "expires_at",
            "revoked_at",
            "revoked_reason",
            "ip",
            "user_agent",
        ],
    ),
    (
        "audit_events",
        &[
            "id",
            "type",
            "actor",
            "subject",
            "ip",
            "request_id",
            "data",
            "created_at",
        ],
    ),
];

/// Every column a bulk load may name for `table`, in the order of [`TABLES`]; `None` for a table it
/// does not load.
pub fn columns(table: &str) -> Option<&'static [&'static str]> {
    TABLES.iter().find(|(t, _)| *t == table).map(|(_, c)| *c)
}

/// Binds one [`Cell`] with `$bind` (a query's `bind` or a builder's `push_bind`), keeping its type.
macro_rules! bind_cell {
    ($target:expr, $bind:ident, $cell:expr) => {
        match $cell.clone() {
            Cell::Text(v) => $target.$bind(v),
            Cell::Int(v) => $target.$bind(v),
            Cell::Blob(v) => $target.$bind(v),
        }
    };
}

/// Inserts `group` in one transaction of `pool`, `per_statement` rows a statement.
macro_rules! insert_group {
    ($db:ty, $pool:expr, $head:expr, $group:expr, $per_statement:expr) => {{
        let mut tx = $pool.begin().await?;
        let mut n = 0;
        for chunk in $group.chunks($per_statement) {
            let mut q = QueryBuilder::<$db>::new($head);
            q.push_values(chunk, |mut b, row| {
                for cell in row {
                    bind_cell!(b, push_bind, cell);
                }
            });
            n += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        n
    }};
}

/// Bound values per statement: under SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_BINDS: usize = 30_000;
/// Statements per transaction.
const STATEMENTS_PER_TX: usize = 8;

impl Store {
    /// Prepares this handle for bulk loading: on SQLite the writer's page cache grows to 1 GiB, so
    /// that the indexes of a large load stay in memory. Use a handle of its own for the load (the
    /// setting lasts as long as the handle).
    pub async fn bulk_loading(&self) -> Result<()> {
        if let Backend::Sqlite { write, .. } = &self.backend {
            sqlx::query("PRAGMA cache_size = -1048576")
                .execute(write)
                .await?;
        }
        Ok(())
    }

    /// Ends a bulk load: on PostgreSQL the tables are analyzed, so that the planner's statistics
    /// describe what was loaded (autovacuum would get there too, later); SQLite keeps no statistics
    /// unless asked (the server never does), so nothing is done there.
    pub async fn bulk_done(&self) -> Result<()> {
        if let Backend::Postgres(pool) = &self.backend {
            sqlx::query("ANALYZE").execute(pool).await?;
        }
        Ok(())
    }

    /// Inserts `rows` into `table`, each holding a value for every one of `columns` in order. Returns
    /// the rows inserted. Fails before writing anything if the table, a column or a row's width is
    /// wrong; a database error part-way leaves the transactions already committed in place.
    pub async fn bulk_insert(
        &self,
        table: &str,
        columns: &[&str],
        rows: &[Vec<Cell>],
    ) -> Result<u64> {
        let Some((table, allowed)) = TABLES.iter().find(|(t, _)| *t == table) else {
            return Err(StoreError::Invalid(format!("no bulk load into {table}")));
        };
        if columns.is_empty() {
            return Err(StoreError::Invalid("a bulk load names its columns".into()));
        }
        if let Some(c) = columns.iter().find(|c| !allowed.contains(c)) {
            return Err(StoreError::Invalid(format!(
                "{table} has no bulk column {c}"
            )));
        }
        if rows.iter().any(|r| r.len() != columns.len()) {
            return Err(StoreError::Invalid(format!(
                "every row of a bulk load into {table} has {} values",
                columns.len()
            )));
        }
        let per_statement = (MAX_BINDS / columns.len()).max(1);
        let head = format!("INSERT INTO {table} ({}) ", columns.join(", "));
        let mut inserted = 0;
        for group in rows.chunks(per_statement * STATEMENTS_PER_TX) {
            inserted += match &self.backend {
                Backend::Sqlite { write, .. } => {
                    insert_group!(sqlx::Sqlite, write, &head, group, per_statement)
                }
                Backend::Postgres(pool) => {
                    insert_group!(sqlx::Postgres, pool, &head, group, per_statement)
                }
            };
        }
        Ok(inserted)
    }

    /// Rows in each table a bulk load fills, and the size of the database on disk in bytes (SQLite:
    /// the file and its WAL; PostgreSQL: `pg_database_size`).
    pub async fn bulk_counts(&self) -> Result<(Vec<(&'static str, i64)>, i64)> {
        let mut counts = Vec::with_capacity(TABLES.len());
        for (table, _) in TABLES {
            // `table` is one of TABLES, never caller text.
            let sql = format!("SELECT COUNT(*) FROM {table}");
            let n: i64 = crate::with_pool!(self, read, p => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone())).fetch_one(p).await?
            });
            counts.push((*table, n));
        }
        let size: i64 =
            match &self.backend {
                Backend::Sqlite { read, .. } => sqlx::query_scalar(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )
                .fetch_one(read)
                .await?,
                Backend::Postgres(pool) => {
                    sqlx::query_scalar("SELECT pg_database_size(current_database())")
                        .fetch_one(pool)
                        .await?
                }
            };
        Ok((counts, size))
    }

    /// The query plan of `sql` (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL, neither of
    /// which runs it) with `binds` as its parameters, one line per step. `sql` is one statement
    /// written in the program (`'static`, no `;`).
    pub async fn explain(&self, sql: &'static str, binds: &[Cell]) -> Result<Vec<String>> {
        if sql.contains(';') {
            return Err(StoreError::Invalid("EXPLAIN takes one statement".into()));
        }
        match &self.backend {
            Backend::Sqlite { read, .. } => {
                let text = format!("EXPLAIN QUERY PLAN {sql}");
                let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(text));
                for b in binds {
                    q = bind_cell!(q, bind, b);
                }
                let rows = q.fetch_all(read).await?;
                Ok(rows.into_iter().map(|(_, _, _, detail)| detail).collect())
            }
            Backend::Postgres(pool) => {
                let text = format!("EXPLAIN {sql}");
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(text));
                for b in binds {
                    q = bind_cell!(q, bind, b);
                }
                Ok(q.fetch_all(pool).await?)
            }
        }
    }
}
