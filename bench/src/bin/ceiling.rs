//! The `ceiling` scenario's server: a bare axum hello on the same runtime as Portcullis (tokio's
//! default multi-thread runtime), answering `GET /healthz` with `ok` and nothing else: no
//! middleware, no logging, no state. Whatever rate it reaches on this machine, with this load
//! generator, is the most any axum server could reach here, so Portcullis's `/healthz` is held
//! against it (target ≥ 0.75 × ceiling).
//!
//! `portcullis-bench-ceiling 127.0.0.1:PORT`; the harness picks the port and stops it with SIGTERM.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> Result<()> {
    let addr = listen_addr(std::env::args().nth(1))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).await.context("serve")
}

/// The address to listen on, from the first argument (e.g. `127.0.0.1:8080`).
fn listen_addr(arg: Option<String>) -> Result<SocketAddr> {
    let arg = arg.context("usage: portcullis-bench-ceiling <ip:port>")?;
    arg.parse()
        .with_context(|| format!("`{arg}` is not an ip:port address"))
}
