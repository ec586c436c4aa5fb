//! `TestApp`: the real router on 127.0.0.1:0 over a fresh SQLite file or a fresh PostgreSQL schema,
//! and small HTTP helpers. The same test bodies run on both stores through `on_both_stores!`.

use portcullis_server::{Config, Running};
use portcullis_store::{Store, StoreOptions};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

pub const PASSWORD: &str = "violet tractor umbrella";

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL when `PORTCULLIS_TEST_DATABASE_URL` is set; otherwise the test says it is skipped.
    pub fn postgres() -> Option<Self> {
        portcullis_testkit::database_url().map(Self::Postgres)
    }
}

/// Runs each named `async fn name(backend: Backend)` on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = $crate::support::Backend::postgres() {
                        super::$name(b).await
                    }
                }
            )*
        }
    };
}

/// A request's credential.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Bearer(String),
    Key(String),
}

pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub store: Store,
    running: Option<Running>,
    _dir: tempfile::TempDir,
    schema: Option<portcullis_testkit::PgSchema>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config {
            listen: addr,
            data_dir: dir.path().join("data"),
            issuer: Some(format!("http://{addr}")),
            ..Config::default()
        };
        tweak(&mut config);
        let (store, schema) = match &backend {
            Backend::Sqlite => {
                std::fs::create_dir_all(&config.data_dir).unwrap();
                (
                    Store::open_sqlite(&config.sqlite_path(), &StoreOptions::default())
                        .await
                        .unwrap(),
                    None,
                )
            }
            Backend::Postgres(url) => {
                let schema = portcullis_testkit::PgSchema::create(url, "t").await;
                let store =
                    Store::connect_postgres(url, &StoreOptions::default(), Some(schema.name()))
                        .await
                        .unwrap();
                (store, Some(schema))
            }
        };
        store.migrate().await.unwrap();
        let running = portcullis_server::start(config, store.clone(), listener)
            .await
            .unwrap();
        Self {
            base: format!("http://{addr}"),
            client: Client::builder().build().unwrap(),
            store,
            running: Some(running),
            _dir: dir,
            schema,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn state(&self) -> &portcullis_server::AppState {
        &self.running.as_ref().unwrap().state
    }

    /// The separate metrics address, when the test configured `metrics_listen`.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().unwrap().metrics_addr
    }

    /// The one request helper every other is made of: a method, a path, a credential and perhaps a
    /// JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: &Auth,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        req = match auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Key(k) => req.header("x-api-key", k),
        };
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.call(Method::POST, path, &Auth::None, Some(body)).await
    }

    /// A request authenticated with an API key (`X-API-Key`).
    pub async fn get_with_key(&self, path: &str, key: &str) -> Response {
        self.call(Method::GET, path, &Auth::Key(key.to_owned()), None)
            .await
    }

    pub async fn post_with_key(&self, path: &str, key: &str, body: Option<&Value>) -> Response {
        self.call(Method::POST, path, &Auth::Key(key.to_owned()), body)
            .await
    }

    pub async fn get_bearer(&self, path: &str, token: &str) -> Response {
        self.call(Method::GET, path, &Auth::Bearer(token.to_owned()), None)
            .await
    }

    pub async fn register(&self, email: &str) -> Value {
        let r = self
            .post_json("/v1/users", &json!({"email": email, "password": PASSWORD}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Registers and logs in; returns the token response.
    pub async fn user_with_tokens(&self, email: &str) -> Value {
        self.register(email).await;
        let r = self.login(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    pub async fn root_key(&self) -> String {
        portcullis_server::create_root_key(&self.store, "test root")
            .await
            .unwrap()
    }

    /// Polls the audit log (written asynchronously) until an event of `kind` shows up; checks that
    /// every event the filter returned is of that kind, so a broken filter cannot pass for a working
    /// one.
    pub async fn wait_for_audit(&self, root: &str, kind: &str) -> Value {
        for _ in 0..50 {
            let r = self
                .get_with_key(&format!("/admin/v1/audit?type={kind}"), root)
                .await;
            let body: Value = r.json().await.unwrap();
            let events = body["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                assert_eq!(
                    e["type"], kind,
                    "the type filter returned another kind: {e}"
                );
            }
            if let Some(e) = events.first() {
                return e.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no audit event of type {kind}");
    }

    /// Runs one SQL statement on the test's database, beside the server (to set up states that only
    /// time would otherwise make, such as a signing key a month old).
    /// The one integer a query answers (`SELECT COUNT(*) …`), read straight from the database.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match &self.schema {
            Some(schema) => {
                let mut conn = schema.connect().await;
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.state().config.sqlite_path())
                    .busy_timeout(std::time::Duration::from_secs(5));
                let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts)
                    .await
                    .unwrap();
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    pub async fn execute_sql(&self, sql: &str) {
        match &self.schema {
            Some(schema) => {
                let mut conn = schema.connect().await;
                sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .unwrap();
            }
            None => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.state().config.sqlite_path())
                    .busy_timeout(std::time::Duration::from_secs(5));
                let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts)
                    .await
                    .unwrap();
                sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .unwrap();
            }
        }
    }

    /// A second node over the same store, with its own caches and configuration `tweak`ed from this
    /// one's; returns its base URL and the running server (stop it when done).
    pub async fn second_node(&self, tweak: impl FnOnce(&mut Config)) -> (String, Running) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = self.state().config.clone();
        config.listen = addr;
        tweak(&mut config);
        // A store of its own over the same database, as another process would have: stopping the
        // node closes it and leaves this one's open.
        let store = match &self.schema {
            Some(schema) => {
                Store::connect_postgres(schema.url(), &StoreOptions::default(), Some(schema.name()))
                    .await
                    .unwrap()
            }
            None => Store::open_sqlite(&config.sqlite_path(), &StoreOptions::default())
                .await
                .unwrap(),
        };
        let node = portcullis_server::start(config, store, listener)
            .await
            .unwrap();
        (format!("http://{addr}"), node)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// The claims of a compact JWS, unverified (the server's own tokens, read by the test).
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let payload = token.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

pub fn uuid_hex() -> String {
    let mut b = [0u8; 8];
    portcullis_core::secrets::fill_random(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Asserts a problem+json answer with this status and code; returns the body.
pub async fn assert_problem(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "expected {status} {code}");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    body
}

/// Polls `f` until it holds; fails when that takes longer than `bound`. Returns how long it took.
pub async fn until(
    what: &str,
    bound: std::time::Duration,
    f: impl AsyncFn() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !f().await {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    started.elapsed()
}

/// Sleeps until the wall-clock moment `at` (milliseconds since the epoch), plus `margin_ms`: for
/// tests of expiry, which must wait past a deadline the server computed, however slow the machine.
pub async fn sleep_until_ms(at: i64, margin_ms: i64) {
    let left = at + margin_ms - portcullis_core::clock::Millis::now().0;
    if left > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(left as u64)).await;
    }
}

/// The instant (ms since the epoch) of an RFC 3339 time in a response.
pub fn ms_of(v: &Value) -> i64 {
    portcullis_core::clock::Millis::from_datetime(
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap(),
    )
    .0
}
