//! Several nodes: two real `portcullis` processes on one PostgreSQL database and one Redis
//! (`PORTCULLIS_TEST_DATABASE_URL` and `PORTCULLIS_TEST_REDIS_URL`; without them each test says it is
//! skipped). What one node changes, the other refuses within a second (measured and printed); limits
//! hold for the nodes together, not for each.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::binary::Server;
use crate::support::PASSWORD;

struct Nodes {
    a: Server,
    b: Server,
    root: String,
    /// What each node was started with, to start one again.
    args: Vec<String>,
    env: Vec<(String, String)>,
    _schema: portcullis_testkit::PgSchema,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn two_nodes() -> Option<Nodes> {
    let Ok(redis) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: several nodes need PORTCULLIS_TEST_REDIS_URL");
        return None;
    };
    two_nodes_on(&redis, &[]).await
}

/// Two nodes on a fresh PostgreSQL schema and `redis`, with `extra` settings (environment).
async fn two_nodes_on(redis: &str, extra: &[(&str, &str)]) -> Option<Nodes> {
    let Some(db) = portcullis_testkit::database_url() else {
        eprintln!("skipped: several nodes need PORTCULLIS_TEST_DATABASE_URL");
        return None;
    };
    Some(nodes_on(&db, redis, extra).await)
}

/// Two nodes on a fresh schema of the PostgreSQL at `db` and on `redis`.
async fn nodes_on(db: &str, redis: &str, extra: &[(&str, &str)]) -> Nodes {
    let schema = portcullis_testkit::PgSchema::create(db, "nodes").await;
    let url = schema.url_with_search_path();
    let master = crate::support::uuid_hex().repeat(8);
    let master = &master[..64];
    // Keys of their own in the shared Redis: limits counted by earlier runs must not count here.
    let prefix = format!("test-{}", crate::support::uuid_hex());
    let mut env = vec![
        ("PORTCULLIS_MASTER_KEY", master),
        ("PORTCULLIS_REDIS_PREFIX", prefix.as_str()),
    ];
    env.extend_from_slice(extra);
    let args = ["--database-url", url.as_str(), "--redis-url", redis];
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(da.path(), &args, &env);
    let root = a.root_key().expect("the first node made the root key");
    let b = Server::start(db_.path(), &args, &env);
    Nodes {
        a,
        b,
        root,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        _schema: schema,
        _dirs: (da, db_),
    }
}

impl Nodes {
    /// Stops node A or B (SIGTERM: it finishes what it has, then exits) and starts it again on its
    /// port, in its folder.
    fn restart(&mut self, second: bool) {
        let listen = {
            let node = if second { &mut self.b } else { &mut self.a };
            let port = node.port();
            node.terminate();
            format!("127.0.0.1:{port}")
        };
        let mut args = vec!["--listen", listen.as_str()];
        args.extend(self.args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let dir = if second { &self._dirs.1 } else { &self._dirs.0 };
        let started = Server::start_raw(dir.path(), &args, &env);
        if second {
            self.b = started;
        } else {
            self.a = started;
        }
    }

    fn stop(self) {
        self.a.stop();
        self.b.stop();
    }
}

/// `GET /v1/me` on `base` with one credential header.
async fn me_with(c: &Client, base: &str, header: &str, value: &str) -> StatusCode {
    c.get(format!("{base}/v1/me"))
        .header(header, value)
        .send()
        .await
        .unwrap()
        .status()
}

async fn user_token(c: &Client, base: &str, email: &str) -> String {
    let r = c
        .post(format!("{base}/v1/users"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    access_token(c, base, email).await
}

/// A fresh access token of `email` from `base`.
async fn access_token(c: &Client, base: &str, email: &str) -> String {
    login(c, base, email).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `POST /v1/auth/login` on `base`: the tokens.
async fn login(c: &Client, base: &str, email: &str) -> Value {
    let r = c
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Polls `check` every 2 ms until it is true; how long that took.
async fn until_true<F: std::future::Future<Output = bool>>(
    mut check: impl FnMut() -> F,
) -> Duration {
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(3) {
        if check().await {
            return began.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("not seen within 3 s");
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_node_revokes_the_other_refuses_within_a_second() {
    let Some(n) = two_nodes().await else { return };
    let c = Client::new();
    let token = user_token(&c, &n.a.base, "nodes-revoke@example.com").await;
    let mut keys = Vec::new();
    for i in 0..12 {
        let r = c
            .post(format!("{}/v1/keys", n.a.base))
            .bearer_auth(&token)
            .json(&json!({"name": format!("k{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let k: Value = r.json().await.unwrap();
        // Used once on B, so that B has it cached.
        let r = c
            .get(format!("{}/v1/me", n.b.base))
            .header("x-api-key", k["key"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        keys.push(k);
    }
    let mut took = Vec::new();
    for k in &keys {
        let r = c
            .delete(format!(
                "{}/v1/keys/{}",
                n.a.base,
                k["id"].as_str().unwrap()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let key = k["key"].as_str().unwrap().to_owned();
        let (c, b) = (c.clone(), n.b.base.clone());
        took.push(
            until_true(|| {
                let (c, b, key) = (c.clone(), b.clone(), key.clone());
                async move { me_with(&c, &b, "x-api-key", &key).await == StatusCode::UNAUTHORIZED }
            })
            .await,
        );
    }
    // A session ended on A.
    let r = c
        .post(format!("{}/v1/sessions", n.a.base))
        .json(&json!({"email": "nodes-revoke@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = r.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        me_with(&c, &n.b.base, "cookie", &cookie).await,
        StatusCode::OK
    );
    let r = c
        .delete(format!("{}/v1/sessions/current", n.a.base))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", &n.a.base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (cc, b, ck) = (c.clone(), n.b.base.clone(), cookie.clone());
    let session = until_true(|| {
        let (c, b, ck) = (cc.clone(), b.clone(), ck.clone());
        async move { me_with(&c, &b, "cookie", &ck).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    let (p50, p99) = (
        percentile(took.clone(), 0.5),
        percentile(took.clone(), 0.99),
    );
    println!(
        "API key revoked on A, refused on B after: p50 {p50:?}, p99 {p99:?} (n = {}); a session: {session:?}",
        took.len()
    );
    assert!(
        p99 < Duration::from_secs(1) && session < Duration::from_secs(1),
        "{took:?} {session:?}"
    );
    n.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_k_allows_exactly_k_through_both_nodes_together() {
    let Some(n) = two_nodes().await else { return };
    let c = Client::new();
    let token = user_token(&c, &n.a.base, "nodes-limit@example.com").await;
    let r = c
        .post(format!("{}/v1/keys", n.a.base))
        .bearer_auth(&token)
        .json(&json!({"name": "limited", "ratelimit": {"limit": 20, "duration_ms": 600_000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tasks = Vec::new();
    for i in 0..80 {
        let base = if i % 2 == 0 {
            n.a.base.clone()
        } else {
            n.b.base.clone()
        };
        let (c, key) = (c.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            me_with(&c, &base, "x-api-key", &key).await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    println!(
        "80 concurrent requests through two nodes on a limit of 20: {ok} allowed, {limited} refused"
    );
    assert_eq!((ok, limited), (20, 60));
    n.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_count_across_nodes() {
    let Some(n) = two_nodes().await else { return };
    let c = Client::new();
    let email = "nodes-guess@example.com";
    user_token(&c, &n.a.base, email).await;
    // Five free failures (login_free_failures) from this client, spread over both nodes…
    for i in 0..5 {
        let base = if i % 2 == 0 { &n.a.base } else { &n.b.base };
        let r = c
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({"email": email, "password": "not the password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // …and both nodes now make the next guess wait.
    for base in [&n.a.base, &n.b.base] {
        let r = c
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({"email": email, "password": "still not it"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{base}");
    }
    n.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_redis_is_shared_and_a_wrong_redis_url_stops_the_start() {
    let Some(n) = two_nodes().await else { return };
    let ready: Value = Client::new()
        .get(format!("{}/readyz", n.b.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"status": "ready", "redis": "ok"}));
    n.stop();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .env_remove("PORTCULLIS_TEST_REDIS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("redis_url"),
        "{stderr}"
    );
}

/// A Redis of the test's own, on a free port, that the test can stop and start again.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self {
                    port,
                    child: Some(child),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a Redis that hangs, and one that resumes.
    fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let ok = std::process::Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load_degrades_to_per_node_and_comes_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(mut redis) = OwnRedis::start(port) else {
        eprintln!("skipped: no redis-server to start");
        return;
    };
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let Some(Nodes {
        a,
        b,
        _schema,
        _dirs,
        ..
    }) = two_nodes_on(&redis_url, &[PUBLIC]).await
    else {
        return;
    };
    let c = Client::new();
    let token = user_token(&c, &a.base, "nodes-fault@example.com").await;
    let (keyid, sig_key) = hmac_key(&c, &a.base, &token).await;
    let k: Value = c
        .post(format!("{}/v1/keys", a.base))
        .bearer_auth(&token)
        .json(&json!({"name": "load", "ratelimit": {"limit": 600_000, "duration_ms": 600_000}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = k["key"].as_str().unwrap().to_owned();

    // Load on both nodes while Redis goes away and comes back; the key's rate limit puts Redis on the
    // path of every request.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for base in [a.base.clone(), b.base.clone()] {
        let (c, key, stop) = (c.clone(), key.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut bad, mut slowest) = (0u32, Vec::new(), Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let began = Instant::now();
                let r = c
                    .get(format!("{base}/v1/me"))
                    .header("x-api-key", &key)
                    .send()
                    .await;
                slowest = slowest.max(began.elapsed());
                match r.map(|r| r.status()) {
                    Ok(StatusCode::OK) => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
            }
            (ok, bad, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // First a Redis that answers nothing (SIGSTOP: connections open, no replies) for 1.5 s: every
    // command is bounded, so no request waits on it past the bound (checked with the load below).
    redis.freeze(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.freeze(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.stop();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready: Value = c
        .get(format!("{}/readyz", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"status": "ready", "redis": "degraded"}));
    // Replay protection falls back to the database: a nonce used on A is still refused on B.
    let mut replays = 0;
    for i in 0..10 {
        let (first, second) = if i % 2 == 0 {
            (&a.base, &b.base)
        } else {
            (&b.base, &a.base)
        };
        let s = signed_me(&keyid, &sig_key);
        let (status, body) = send_signed(c.clone(), first.clone(), s.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = send_signed(c.clone(), second.clone(), s).await;
        assert_eq!(body["reason"], "replayed", "{status} {body}");
        replays += 1;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut redis = OwnRedis::start(port).expect("Redis starts again");
    let up_at = Instant::now();
    let back = until_true(|| {
        let (c, base) = (c.clone(), b.base.clone());
        async move {
            let r: Value = c
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["redis"] == "ok"
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        let (ok, bad, slowest) = t.await.unwrap();
        println!(
            "one node under load: {ok} answered 200, {} failed, slowest {slowest:?}",
            bad.len()
        );
        assert!(bad.is_empty(), "{bad:?}");
        // The breaker: after a failure, a second of falling back at once, not a 250 ms timeout each.
        assert!(slowest < Duration::from_millis(500), "{slowest:?}");
        total += ok;
    }
    assert!(total > 50, "{total}");
    // Shared again: a revocation on A reaches B through pub/sub, not the poll.
    let k2: Value = c
        .post(format!("{}/v1/keys", a.base))
        .bearer_auth(&token)
        .json(&json!({"name": "after"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key2 = k2["key"].as_str().unwrap().to_owned();
    assert_eq!(
        me_with(&c, &b.base, "x-api-key", &key2).await,
        StatusCode::OK
    );
    // The subscription comes back within a second or two of Redis.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.delete(format!("{}/v1/keys/{}", a.base, k2["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let refused = until_true(|| {
        let (c, base, key) = (c.clone(), b.base.clone(), key2.clone());
        async move { me_with(&c, &base, "x-api-key", &key).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    println!(
        "Redis hung 1.5 s, then down for {:?}: {replays} nonces replayed on the other node all refused (the database's replay cache); /readyz said ok again {back:?} after it came back; a revocation then took {refused:?} to reach the other node",
        up_at - down_at
    );
    assert!(refused < Duration::from_secs(1));
    redis.stop();
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_token_presented_to_both_nodes_at_once_has_exactly_one_winner() {
    let Some(n) = two_nodes().await else { return };
    let c = Client::new();
    let email = "nodes-refresh@example.com";
    user_token(&c, &n.a.base, email).await;
    let mut winners_total = 0;
    for round in 0..5 {
        let t = login(&c, &n.a.base, email).await;
        let rt = t["refresh_token"].as_str().unwrap().to_owned();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let base = if i % 2 == 0 {
                n.a.base.clone()
            } else {
                n.b.base.clone()
            };
            let (c, rt) = (c.clone(), rt.clone());
            tasks.push(tokio::spawn(async move {
                let r = c
                    .post(format!("{base}/v1/auth/refresh"))
                    .json(&json!({"refresh_token": rt}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            match status {
                StatusCode::OK => winners.push(body),
                StatusCode::UNAUTHORIZED => {}
                other => panic!("round {round}: unexpected {other} {body}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: one rotation wins");
        winners_total += 1;
        // The others presented a spent token: the family is revoked, the winner's child with it.
        let child = winners[0]["refresh_token"].as_str().unwrap();
        let r = c
            .post(format!("{}/v1/auth/refresh", n.b.base))
            .json(&json!({"refresh_token": child}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "round {round}: the family is revoked"
        );
    }
    println!(
        "5 rounds of 8 concurrent refreshes of one token over two nodes: {winners_total} winners, one per round"
    );
    n.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_master_key_refuses_to_start_and_says_why() {
    let Some(db) = portcullis_testkit::database_url() else {
        eprintln!("skipped: needs PORTCULLIS_TEST_DATABASE_URL");
        return;
    };
    let schema = portcullis_testkit::PgSchema::create(&db, "mkey").await;
    let url = schema.url_with_search_path();
    let first = crate::support::uuid_hex().repeat(8);
    let other = crate::support::uuid_hex().repeat(8);
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(
        dir.path(),
        &["--database-url", &url],
        &[("PORTCULLIS_MASTER_KEY", &first[..64])],
    );
    let dir2 = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(dir2.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env("PORTCULLIS_MASTER_KEY", &other[..64])
        .env_remove("PORTCULLIS_TEST_DATABASE_URL")
        .env_remove("PORTCULLIS_TEST_REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let began = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if began.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("a node with another master key started against the store");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    println!("{}", stderr.trim());
    assert!(!status.success());
    assert!(stderr.to_lowercase().contains("master key"), "{stderr}");
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_refresh_load_loses_no_answered_rotation() {
    let Ok(redis) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: needs PORTCULLIS_TEST_REDIS_URL");
        return;
    };
    // A client whose request died with the node may retry its token once (its child is unused).
    let grace = [("PORTCULLIS_REFRESH_REUSE_GRACE_S", "30")];
    let Some(Nodes {
        a,
        b,
        _schema,
        _dirs,
        ..
    }) = two_nodes_on(&redis, &grace).await
    else {
        return;
    };
    let c = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let email = "nodes-kill@example.com";
    user_token(&c, &b.base, email).await;
    let mut chains = Vec::new();
    for _ in 0..6 {
        let t = login(&c, &b.base, email).await;
        let (c, base) = (c.clone(), a.base.clone());
        let mut held = t["refresh_token"].as_str().unwrap().to_owned();
        chains.push(tokio::spawn(async move {
            let mut rotations = 0u32;
            loop {
                match c
                    .post(format!("{base}/v1/auth/refresh"))
                    .json(&json!({"refresh_token": held}))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => {
                        held = r.json::<Value>().await.unwrap()["refresh_token"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        rotations += 1;
                    }
                    Ok(r) => panic!("refresh answered {} before the kill", r.status()),
                    // The node is gone: keep the last token it answered with.
                    Err(_) => return (held, rotations),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill9();
    let mut total = 0;
    for chain in chains {
        let (held, rotations) = chain.await.unwrap();
        total += rotations;
        let r = c
            .post(format!("{}/v1/auth/refresh", b.base))
            .json(&json!({"refresh_token": held}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "the last token A answered with works on B"
        );
        let next = r.json::<Value>().await.unwrap()["refresh_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = c
            .post(format!("{}/v1/auth/refresh", b.base))
            .json(&json!({"refresh_token": next}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "and its family goes on");
    }
    println!(
        "{total} rotations answered by A over 6 chains before kill -9; every last answered token worked on B"
    );
    assert!(total > 6, "{total}");
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authorization_code_redeemed_on_both_nodes_at_once_is_redeemed_once() {
    let Some(n) = two_nodes().await else { return };
    let c = Client::new();
    let email = "nodes-code@example.com";
    user_token(&c, &n.a.base, email).await;
    let r = c
        .post(format!("{}/admin/v1/clients", n.a.base))
        .header("x-api-key", &n.root)
        .json(&json!({"name": "Two nodes", "type": "confidential", "redirect_uris": [crate::oauth::REDIRECT], "scopes": ["openid"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let client: Value = r.json().await.unwrap();
    let (id, secret) = (
        client["client_id"].as_str().unwrap(),
        client["client_secret"].as_str().unwrap(),
    );
    let (verifier, challenge) = crate::oauth::pkce();
    let url = format!(
        "{}{}",
        n.a.base,
        crate::oauth::authorize_url(id, "openid", &challenge, "st", "nn")
    );
    let mut agent = crate::upstream::Agent::new();
    let (at, _) = agent.open(&url).await;
    let return_to = crate::oauth::param(&crate::oauth::query_of(&at), "return_to")
        .unwrap()
        .to_owned();
    let r = agent
        .post_form(
            &format!("{}/login", n.a.base),
            &[
                ("email", email),
                ("password", PASSWORD),
                ("return_to", &return_to),
            ],
        )
        .await;
    let (_, page) = agent.follow(format!("{}/login", n.a.base), r).await;
    let html = page.text().await.unwrap();
    let r = agent
        .post_form(
            &format!("{}/consent", n.a.base),
            &[
                ("csrf_token", &crate::oauth::form_value(&html, "csrf_token")),
                ("request", &crate::oauth::form_value(&html, "request")),
                ("decision", "approve"),
            ],
        )
        .await;
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    let code = crate::oauth::param(&crate::oauth::query_of(&to), "code")
        .expect("a code")
        .to_owned();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let base = if i % 2 == 0 {
            n.a.base.clone()
        } else {
            n.b.base.clone()
        };
        let (c, code, verifier, auth) = (
            c.clone(),
            code.clone(),
            verifier.clone(),
            crate::oauth::basic(id, secret),
        );
        tasks.push(tokio::spawn(async move {
            c.post(format!("{base}/oauth2/token"))
                .header("authorization", auth)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", crate::oauth::REDIRECT),
                    ("code_verifier", &verifier),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    println!(
        "one code redeemed 8 times at once over two nodes: {won} success, the rest {:?}",
        statuses
            .iter()
            .filter(|s| **s != StatusCode::OK)
            .collect::<Vec<_>>()
    );
    assert_eq!(won, 1, "{statuses:?}");
    // The losers get invalid_grant (400), or, once their failures pass the client's free allowance (the
    // failure backoff is shared by both nodes too), temporarily_unavailable (429).
    let refusals = [
        StatusCode::OK,
        StatusCode::BAD_REQUEST,
        StatusCode::TOO_MANY_REQUESTS,
    ];
    assert!(
        statuses.iter().all(|s| refusals.contains(s)),
        "{statuses:?}"
    );
    n.stop();
}

/// Behind a balancer the nodes answer for one public address, the issuer of every token they sign
/// (each node would otherwise name its own listen address, and refuse the other's tokens).
const PUBLIC: (&str, &str) = ("PORTCULLIS_ISSUER", "http://portcullis.test");

/// `/v1/authorize` at `url` as a gateway asks it, about a request carrying `authorization`.
async fn forward(c: &Client, url: &str, authorization: &str) -> reqwest::Response {
    c.get(url)
        .header("authorization", authorization)
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/orders")
        .send()
        .await
        .unwrap()
}

/// A JWT's header, decoded.
fn jwt_header(token: &str) -> Value {
    use base64::Engine;
    let head = token.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_family_an_oauth_token_and_a_signing_key_ended_on_one_node_are_refused_by_the_other()
 {
    let Ok(redis) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: needs PORTCULLIS_TEST_REDIS_URL");
        return;
    };
    let Some(n) = two_nodes_on(&redis, &[PUBLIC]).await else {
        return;
    };
    let c = Client::new();
    let email = "nodes-ended@example.com";
    let access = user_token(&c, &n.a.base, email).await;

    // A refresh family: logged out on A, refused on B (the store decides: no cache in between).
    let t = login(&c, &n.a.base, email).await;
    let rt = t["refresh_token"].as_str().unwrap();
    let r = c
        .post(format!("{}/v1/auth/logout", n.a.base))
        .json(&json!({"refresh_token": rt}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let began = Instant::now();
    let r = c
        .post(format!("{}/v1/auth/refresh", n.b.base))
        .json(&json!({"refresh_token": rt}))
        .send()
        .await
        .unwrap();
    let family = began.elapsed();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // An OAuth access token (a JWT, denied by its jti): revoked through RFC 7009 on A.
    let r = c
        .post(format!("{}/admin/v1/clients", n.a.base))
        .header("x-api-key", &n.root)
        .json(
            &json!({"name": "svc", "type": "confidential", "grant_types": ["client_credentials"],
            "scopes": ["orders:read"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let svc: Value = r.json().await.unwrap();
    let auth = crate::oauth::basic(
        svc["client_id"].as_str().unwrap(),
        svc["client_secret"].as_str().unwrap(),
    );
    let mut oauth = Vec::new();
    for _ in 0..10 {
        let t: Value = c
            .post(format!("{}/oauth2/token", n.a.base))
            .header("authorization", &auth)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = format!("Bearer {}", t["access_token"].as_str().unwrap());
        let at_b = format!("{}/v1/authorize", n.b.base);
        let r = forward(&c, &at_b, &token).await;
        assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
        let r = c
            .post(format!("{}/oauth2/revoke", n.a.base))
            .header("authorization", &auth)
            .form(&[("token", &token[7..])])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let (c, at_b) = (c.clone(), at_b.clone());
        oauth.push(
            until_true(|| {
                let (c, at_b, token) = (c.clone(), at_b.clone(), token.clone());
                async move { forward(&c, &at_b, &token).await.status() == StatusCode::UNAUTHORIZED }
            })
            .await,
        );
    }

    // The signing key: revoked on A (an emergency); B refuses what it signed and signs with the
    // replacement, which A accepts.
    assert_eq!(
        me_with(&c, &n.b.base, "authorization", &format!("Bearer {access}")).await,
        StatusCode::OK
    );
    let kid = jwt_header(&access)["kid"].as_str().unwrap().to_owned();
    let r = c
        .post(format!("{}/admin/v1/signing-keys/{kid}/revoke", n.a.base))
        .header("x-api-key", &n.root)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let bearer = format!("Bearer {access}");
    let (cc, b) = (c.clone(), n.b.base.clone());
    let signing = until_true(|| {
        let (c, b, bearer) = (cc.clone(), b.clone(), bearer.clone());
        async move { me_with(&c, &b, "authorization", &bearer).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    let fresh = &access_token(&c, &n.b.base, email).await;
    assert_ne!(
        jwt_header(fresh)["kid"],
        kid.as_str(),
        "B signs with the replacement"
    );
    assert_eq!(
        me_with(&c, &n.a.base, "authorization", &format!("Bearer {fresh}")).await,
        StatusCode::OK
    );
    let (p50, p99) = (
        percentile(oauth.clone(), 0.5),
        percentile(oauth.clone(), 0.99),
    );
    println!(
        "ended on A, refused on B after: a refresh family {family:?} (at once, the store decides); an OAuth access token p50 {p50:?}, p99 {p99:?} (n = 10); a signing key {signing:?}"
    );
    assert!(p99 < Duration::from_secs(1) && signing < Duration::from_secs(1));
    n.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_is_known_to_every_node_before_any_signs_with_it() {
    let Ok(redis) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: needs PORTCULLIS_TEST_REDIS_URL");
        return;
    };
    let lead = [("PORTCULLIS_SIGNING_KEY_PUBLISH_LEAD_S", "3"), PUBLIC];
    let Some(n) = two_nodes_on(&redis, &lead).await else {
        return;
    };
    let c = Client::new();
    let email = "nodes-rotate@example.com";
    let before = user_token(&c, &n.a.base, email).await;
    let r = c
        .post(format!("{}/admin/v1/signing-keys/rotate", n.a.base))
        .header("x-api-key", &n.root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let rotated = Instant::now();
    let new: Value = r.json().await.unwrap();
    let kid = new["kid"].as_str().unwrap().to_owned();
    let (cc, b, k) = (c.clone(), n.b.base.clone(), kid.clone());
    let known = until_true(|| {
        let (c, b, k) = (cc.clone(), b.clone(), k.clone());
        async move {
            let jwks: Value = c
                .get(format!("{b}/.well-known/jwks.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["kid"] == k.as_str())
        }
    })
    .await;
    assert!(
        known < Duration::from_secs(2),
        "B published it {known:?} after, before it signs"
    );
    // Until it activates, both nodes sign with the old key; afterwards, with the new one, and each
    // accepts what the other signed.
    assert_ne!(
        jwt_header(&access_token(&c, &n.b.base, email).await)["kid"],
        kid.as_str()
    );
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(rotated.elapsed())).await;
    for (signer, checker) in [(&n.a.base, &n.b.base), (&n.b.base, &n.a.base)] {
        let t = access_token(&c, signer, email).await;
        assert_eq!(
            jwt_header(&t)["kid"],
            kid.as_str(),
            "{signer} signs with the new key"
        );
        let r = c
            .get(format!("{checker}/v1/me"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "{signer} signed, {checker} refused: {:?}",
            r.text().await
        );
    }
    // What the old key signed still verifies on both.
    for base in [&n.a.base, &n.b.base] {
        assert_eq!(
            me_with(&c, base, "authorization", &format!("Bearer {before}")).await,
            StatusCode::OK
        );
    }
    println!(
        "a key rotated on A was in B's JWKS {known:?} later, 3 s before either signed with it"
    );
    n.stop();
}

/// A new HMAC signing key (RFC 9421) of the user behind `token`: its keyid and key.
async fn hmac_key(
    c: &Client,
    base: &str,
    token: &str,
) -> (String, portcullis_core::httpsig::keys::SigningKey) {
    use base64::Engine;
    let r = c
        .post(format!("{base}/v1/signing-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "ci", "alg": "hmac-sha256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    let secret = base64::engine::general_purpose::STANDARD
        .decode(v["secret"].as_str().unwrap())
        .unwrap();
    (
        v["keyid"].as_str().unwrap().to_owned(),
        portcullis_core::httpsig::keys::SigningKey::hmac(secret).unwrap(),
    )
}

/// Signature-Input and Signature of `GET <PUBLIC>/v1/me`, with a fresh nonce.
fn signed_me(keyid: &str, key: &portcullis_core::httpsig::keys::SigningKey) -> (String, String) {
    use portcullis_core::httpsig::Message;
    use portcullis_core::httpsig::sign::{Signing, sign};
    let headers = http::HeaderMap::new();
    let nonce = crate::support::uuid_hex();
    let msg = Message {
        method: "GET",
        scheme: "http",
        authority: "portcullis.test",
        path: "/v1/me",
        query: None,
        headers: &headers,
    };
    sign(
        key,
        &Signing {
            label: "sig1",
            components: &["@method", "@target-uri"],
            keyid,
            created: portcullis_core::clock::Millis::now().0 / 1000,
            expires: None,
            nonce: Some(&nonce),
            with_alg: true,
        },
        &msg,
    )
    .unwrap()
}

/// A signed `GET /v1/me` at `base`: its status and body.
async fn send_signed(
    c: Client,
    base: String,
    (input, signature): (String, String),
) -> (StatusCode, Value) {
    let r = c
        .get(format!("{base}/v1/me"))
        .header("signature-input", input)
        .header("signature", signature)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_nonce_used_on_one_node_is_refused_on_the_other() {
    let Ok(redis) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: needs PORTCULLIS_TEST_REDIS_URL");
        return;
    };
    // Requests are signed for the nodes' one public address.
    let Some(n) = two_nodes_on(&redis, &[PUBLIC]).await else {
        return;
    };
    let c = Client::new();
    let token = user_token(&c, &n.a.base, "nodes-nonce@example.com").await;
    let (keyid, key) = hmac_key(&c, &n.a.base, &token).await;
    let signed = || signed_me(&keyid, &key);
    let send = |base: String, s: (String, String)| send_signed(c.clone(), base, s);
    for i in 0..20 {
        let (first, second) = if i % 2 == 0 {
            (&n.a.base, &n.b.base)
        } else {
            (&n.b.base, &n.a.base)
        };
        let s = signed();
        let (status, body) = send(first.clone(), s.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = send(second.clone(), s).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["reason"], "replayed", "{body}");
    }
    // At once on both: one of them takes it.
    let mut won = 0;
    for _ in 0..10 {
        let s = signed();
        let (x, y) = tokio::join!(send(n.a.base.clone(), s.clone()), send(n.b.base.clone(), s));
        won += [x.0, y.0].iter().filter(|s| **s == StatusCode::OK).count();
        assert!(
            [x.0, y.0].contains(&StatusCode::UNAUTHORIZED),
            "{x:?} {y:?}"
        );
    }
    assert_eq!(won, 10);
    println!(
        "20 signed requests replayed on the other node: all refused as replayed; 10 sent to both at once: one use each"
    );
    n.stop();
}

/// A PostgreSQL cluster of the test's own (initdb, pg_ctl), so that it can be restarted without
/// touching the one every other test uses. As root, its programs run as `postgres` (PostgreSQL
/// refuses to run as root).
struct OwnPostgres {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl OwnPostgres {
    fn bindir() -> Option<std::path::PathBuf> {
        let from_config = std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let mut candidates: Vec<std::path::PathBuf> = from_config.into_iter().collect();
        if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut found: Vec<_> = versions.flatten().map(|v| v.path().join("bin")).collect();
            found.sort();
            candidates.extend(found.into_iter().rev());
        }
        candidates
            .into_iter()
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    }

    fn run(&self, program: &str, args: &[&str]) -> std::process::ExitStatus {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        cmd.args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    }

    fn start() -> Option<Self> {
        let bin = Self::bindir()?;
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let dir = tempfile::tempdir().ok()?;
        if root {
            let owned = std::process::Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .ok()?;
            if !owned.success() {
                return None;
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let this = Self {
            bin,
            dir,
            port,
            as_postgres: root,
        };
        let data = this.data();
        if !this
            .run(
                "initdb",
                &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
            )
            .success()
        {
            return None;
        }
        this.up().then_some(this)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn up(&self) -> bool {
        let d = self.dir.path().display();
        let options = format!(
            "-p {} -k {d} -c listen_addresses=127.0.0.1 -c max_connections=50",
            self.port
        );
        let log = format!("{d}/log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
        .success()
    }

    /// `pg_ctl stop -m fast`: sessions are ended (their transactions rolled back), then it exits.
    fn down(&self) -> bool {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .success()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_fails_fast_recovers_and_loses_no_answered_write() {
    let Ok(redis) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: needs PORTCULLIS_TEST_REDIS_URL");
        return;
    };
    if portcullis_testkit::database_url().is_none() {
        return;
    }
    let Some(pg) = OwnPostgres::start() else {
        eprintln!("skipped: no initdb/pg_ctl to run a PostgreSQL of this test's own");
        return;
    };
    let n = nodes_on(
        &pg.url(),
        &redis,
        &[("PORTCULLIS_DB_TIMEOUT_MS", "1000"), PUBLIC],
    )
    .await;
    let c = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = user_token(&c, &n.a.base, "nodes-pg@example.com").await;

    // Writers on both nodes: each answered 201 is a key that must exist afterwards.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (w, base) in [
        n.a.base.clone(),
        n.b.base.clone(),
        n.a.base.clone(),
        n.b.base.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        let (c, token, stop) = (c.clone(), token.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut made, mut unavailable, mut bad, mut slowest) =
                (Vec::new(), 0u32, Vec::new(), Duration::ZERO);
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let began = Instant::now();
                let r = c
                    .post(format!("{base}/v1/keys"))
                    .bearer_auth(&token)
                    .json(&json!({"name": format!("w{w}-{i}")}))
                    .send()
                    .await;
                slowest = slowest.max(began.elapsed());
                match r {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let k: Value = r.json().await.unwrap();
                        made.push(k["key"].as_str().unwrap().to_owned());
                    }
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                        assert_eq!(r.headers()["retry-after"], "1");
                        let p: Value = r.json().await.unwrap();
                        assert_eq!(p["code"], "unavailable", "{p}");
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(r) => bad.push(format!("{} {:?}", r.status(), r.text().await)),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (made, unavailable, bad, slowest)
        }));
    }
    let ready = |base: String| {
        let c = c.clone();
        async move {
            c.get(format!("{base}/readyz"))
                .send()
                .await
                .map(|r| r.status())
                .unwrap_or(StatusCode::BAD_GATEWAY)
        }
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let began = Instant::now();
    assert!(pg.down(), "pg_ctl stop");
    let stopped = began.elapsed();
    let (ra, rb) = tokio::join!(ready(n.a.base.clone()), ready(n.b.base.clone()));
    assert_eq!(
        (ra, rb),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE
        )
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(pg.up(), "pg_ctl start");
    let restarted = Instant::now();
    let mut recovered = Duration::ZERO;
    for base in [n.a.base.clone(), n.b.base.clone()] {
        let took = until_true(|| {
            let base = base.clone();
            async move { ready(base).await == StatusCode::OK }
        })
        .await;
        recovered = recovered.max(took);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut made, mut unavailable, mut slowest) = (Vec::new(), 0, Duration::ZERO);
    for t in load {
        let (m, u, bad, s) = t.await.unwrap();
        assert!(
            bad.is_empty(),
            "only 201 or 503; {} others, first {:?}",
            bad.len(),
            bad.first()
        );
        made.extend(m);
        unavailable += u;
        slowest = slowest.max(s);
    }
    let down_for = restarted.duration_since(began);
    // Every key answered 201 is there, on either node.
    for (i, key) in made.iter().enumerate() {
        let base = if i % 2 == 0 { &n.a.base } else { &n.b.base };
        assert_eq!(
            me_with(&c, base, "x-api-key", key).await,
            StatusCode::OK,
            "key {i} of {} was answered 201 and is gone",
            made.len()
        );
    }
    println!(
        "PostgreSQL stopped ({stopped:?}) and started again under 4 writers on 2 nodes: {} keys answered 201, all there after; {unavailable} answered 503 unavailable; slowest answer {slowest:?} (db_timeout_ms 1000); /readyz ok again {recovered:?} after the restart (down about {down_for:?})",
        made.len()
    );
    assert!(unavailable > 0, "the restart was seen");
    assert!(slowest < Duration::from_millis(2500), "{slowest:?}");
    assert!(recovered < Duration::from_secs(3), "{recovered:?}");
    n.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_nginx_fails_no_request() {
    let Ok(redis) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: needs PORTCULLIS_TEST_REDIS_URL");
        return;
    };
    let Some(mut n) = two_nodes_on(&redis, &[PUBLIC]).await else {
        return;
    };
    // The shipped example, pointed at this test's nodes.
    let conf = std::fs::read_to_string(crate::gateways::examples().join("nginx/two-nodes.conf"))
        .unwrap()
        .replace("127.0.0.1:8787", &format!("127.0.0.1:{}", n.a.port()))
        .replace("127.0.0.1:8788", &format!("127.0.0.1:{}", n.b.port()));
    let Some(gw) = crate::gateways::nginx_serving(crate::gateways::free_port(), &conf).await else {
        return;
    };
    // A connection per request to nginx: a reload closes nginx's idle keep-alive connections, and a
    // request sent on one at that instant fails in any HTTP/1.1 client (the gateway's race, not
    // the nodes'; clients retry such idempotent requests).
    let c = Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let email = "nodes-rolling@example.com";
    let access = user_token(&c, &gw.base, email).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..4 {
        let (c, base, stop, access) = (c.clone(), gw.base.clone(), stop.clone(), access.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Half read with a JWT; half rotate a refresh chain (POST, not idempotent).
            let mut held = if i % 2 == 1 {
                let t = login(&c, &base, email).await;
                Some(t["refresh_token"].as_str().unwrap().to_owned())
            } else {
                None
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = match &held {
                    None => {
                        c.get(format!("{base}/v1/me"))
                            .bearer_auth(&access)
                            .send()
                            .await
                    }
                    Some(rt) => {
                        c.post(format!("{base}/v1/auth/refresh"))
                            .json(&json!({"refresh_token": rt}))
                            .send()
                            .await
                    }
                };
                match r {
                    Ok(r) if r.status() == StatusCode::OK => {
                        if held.is_some() {
                            let t: Value = r.json().await.unwrap();
                            held = Some(t["refresh_token"].as_str().unwrap().to_owned());
                        }
                        ok += 1;
                    }
                    Ok(r) => {
                        let status = r.status();
                        failed.push(format!("{status} {}", r.text().await.unwrap_or_default()));
                        // A refused rotation leaves the chain unusable: stop this one.
                        if held.is_some() {
                            break;
                        }
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let began = Instant::now();
    // The runbook of examples/nginx/two-nodes.conf, one node at a time: mark it `down` and reload
    // nginx (new requests go to the other node; what it has in flight finishes), stop it (SIGTERM),
    // start it again, put it back. Restarting is blocking (it waits for the process): off the
    // runtime's worker, so the load goes on.
    for second in [false, true] {
        let port = if second { n.b.port() } else { n.a.port() };
        let line = format!("server 127.0.0.1:{port} max_fails=0;");
        assert!(conf.contains(&line), "{conf}");
        gw.reload_nginx(
            &conf.replace(&line, &format!("server 127.0.0.1:{port} max_fails=0 down;")),
        )
        .await;
        tokio::task::block_in_place(|| n.restart(second));
        gw.reload_nginx(&conf).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rolled = began.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in load {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    println!(
        "rolling restart of 2 nodes behind nginx ({rolled:?}) under 4 clients (JWT reads and refresh rotations): {ok} answered 200, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, first {:?}; nginx says: {}",
        failed.len(),
        failed.first(),
        gw.log_tail()
    );
    assert!(ok > 100, "{ok}");
    drop(gw);
    n.stop();
}
