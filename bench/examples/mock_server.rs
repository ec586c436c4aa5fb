//! A stand-in for the Portcullis server, used only to check the harness itself (load loop,
//! histograms, RSS reading, refresh chains, 429 counting) while the real server is being written.
//! It speaks just enough of the API: same CLI, same root-key line, same endpoints and JSON shapes,
//! and it really does argon2id (same parameters as the harness) on a pool sized to the cores.
//!
//! ```text
//! cargo build --release -p portcullis-bench --example mock_server
//! cargo run --release -p portcullis-bench -- --server-bin $CARGO_TARGET_DIR/release/examples/mock_server
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow, bail};
use argon2::{Algorithm, Argon2, Params, Version};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Logins waiting for the hashing pool beyond this many get 429.
const MAX_QUEUED_HASHES: usize = 64;

#[derive(Deserialize)]
struct Creds {
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshReq {
    refresh_token: String,
}

/// (salt, hash) of a user's password.
type Stored = ([u8; 16], [u8; 32]);

struct State {
    users: Mutex<HashMap<String, Stored>>,
    /// access token -> email
    access: Mutex<HashMap<String, String>>,
    /// refresh token -> email
    refresh: Mutex<HashMap<String, String>>,
    pool: Semaphore,
    queued: AtomicUsize,
}

fn random_hex(n: usize) -> Result<String> {
    let mut raw = vec![0u8; n];
    getrandom::fill(&mut raw).map_err(|e| anyhow!("getrandom: {e}"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

fn hash(password: &str, salt: [u8; 16]) -> Result<[u8; 32]> {
    let params = Params::new(19_456, 2, 1, Some(32)).map_err(|e| anyhow!("{e}"))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(out)
}

impl State {
    /// Runs one argon2 hash on the blocking pool, at most `cores` at a time; None = shed (429).
    async fn pooled_hash(&self, password: String, salt: [u8; 16]) -> Result<Option<[u8; 32]>> {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_HASHES {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Ok(None);
        }
        let permit = self.pool.acquire().await;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let _permit = permit.context("pool closed")?;
        let out = tokio::task::spawn_blocking(move || hash(&password, salt))
            .await
            .context("hash task")??;
        Ok(Some(out))
    }

    fn issue(&self, email: &str) -> Result<serde_json::Value> {
        let access = format!("at_{}", random_hex(16)?);
        let refresh = format!("rt_{}", random_hex(16)?);
        lock(&self.access)?.insert(access.clone(), email.to_owned());
        lock(&self.refresh)?.insert(refresh.clone(), email.to_owned());
        Ok(json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 900,
            "refresh_token": refresh,
            "refresh_expires_in": 2_592_000,
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| anyhow!("poisoned lock"))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .context("read body")?
        .to_bytes();
    let bad = || reply(StatusCode::BAD_REQUEST, json!({"error": "bad_request"}));
    Ok(match (method, path.as_str()) {
        (Method::GET, "/healthz") => reply(StatusCode::OK, json!({"status": "ok"})),
        (Method::GET, "/v1/me") => {
            let email = bearer.and_then(|t| lock(&state.access).ok()?.get(&t).cloned());
            match email {
                Some(email) => reply(StatusCode::OK, json!({ "email": email })),
                None => reply(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"})),
            }
        }
        (Method::POST, "/v1/users") => {
            let Ok(c) = serde_json::from_slice::<Creds>(&body) else {
                return Ok(bad());
            };
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| anyhow!("getrandom: {e}"))?;
            let Some(h) = state.pooled_hash(c.password, salt).await? else {
                return Ok(reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "busy"}),
                ));
            };
            lock(&state.users)?.insert(c.email.clone(), (salt, h));
            reply(StatusCode::CREATED, json!({ "email": c.email }))
        }
        (Method::POST, "/v1/auth/login") => {
            let Ok(c) = serde_json::from_slice::<Creds>(&body) else {
                return Ok(bad());
            };
            let stored = lock(&state.users)?.get(&c.email).copied();
            let Some((salt, want)) = stored else {
                return Ok(reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "invalid_credentials"}),
                ));
            };
            match state.pooled_hash(c.password, salt).await? {
                None => reply(StatusCode::TOO_MANY_REQUESTS, json!({"error": "busy"})),
                Some(got) if got == want => reply(StatusCode::OK, state.issue(&c.email)?),
                Some(_) => reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "invalid_credentials"}),
                ),
            }
        }
        (Method::POST, "/v1/auth/refresh") => {
            let Ok(r) = serde_json::from_slice::<RefreshReq>(&body) else {
                return Ok(bad());
            };
            // Rotation: a refresh token is good exactly once.
            let email = lock(&state.refresh)?.remove(&r.refresh_token);
            match email {
                Some(email) => reply(StatusCode::OK, state.issue(&email)?),
                None => reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_grant"})),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    })
}

fn parse_args() -> Result<SocketAddr> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        bail!("usage: mock_server serve --data-dir D --listen ADDR --issuer URL");
    }
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .context("--listen missing")?;
    listen.parse().context("bad --listen")
}

fn main() -> Result<()> {
    let addr = parse_args()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(cores)
        .build()
        .context("runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.context("bind")?;
        eprintln!("root API key: pk_live_{}", random_hex(16)?);
        let state = Arc::new(State {
            users: Mutex::default(),
            access: Mutex::default(),
            refresh: Mutex::default(),
            pool: Semaphore::new(cores),
            queued: AtomicUsize::new(0),
        });
        loop {
            let (stream, _) = listener.accept().await.context("accept")?;
            stream.set_nodelay(true).context("nodelay")?;
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move {
                        Ok::<_, Infallible>(handle(state, req).await.unwrap_or_else(|e| {
                            reply(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                json!({"error": e.to_string()}),
                            )
                        }))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
