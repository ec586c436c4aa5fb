//! The accept loop: HTTP/1.1 connections served by hyper with the limits that keep one client from
//! starving the rest.
//!
//! * A **header-read timeout** (hyper's, on a tokio timer): a request's headers must arrive within
//!   `header_read_timeout_s` of the connection opening or of the previous response ending, so a
//!   slowloris connection trickling its headers, and an idle keep-alive connection, are both closed.
//! * A **global connection cap** below the open-file limit (which is raised to its hard maximum at
//!   start): when it is reached we stop accepting until a connection closes, so file descriptors are
//!   never exhausted and the database and log files always have room.
//! * A **per-client cap** (`max_connections_per_ip`, an IPv6 /64 counting as one client; trusted
//!   proxies exempt): one host cannot take every slot. Its extra connections are closed at once.
//!
//! The request-body deadline is enforced where bodies are read (`extract::body_bytes`), as 408.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::Config;
use crate::ratelimit::client_bucket;

/// The limits one listener enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers exempt from the per-client cap.
    pub trusted: Arc<Vec<ipnet::IpNet>>,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        let max_connections = match config.max_connections {
            0 => derived_max_connections(open_file_limit()),
            n => n,
        };
        Self {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_s),
            max_connections,
            max_connections_per_ip: config.max_connections_per_ip.min(max_connections),
            trusted: Arc::new(config.trusted_proxies()),
        }
    }
}

/// Connections we may hold with `nofile` descriptors: an eighth plus 128 kept for the store, files and
/// outgoing connections, at most 100,000.
pub fn derived_max_connections(nofile: u64) -> usize {
    let spare = nofile / 8 + 128;
    usize::try_from(nofile.saturating_sub(spare).clamp(64, 100_000)).unwrap_or(64)
}

/// Raises the soft open-file limit to the hard one (many systems start processes at 1024 with a
/// hard limit far higher); returns the soft limit in force afterwards.
#[cfg(unix)]
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max.min(1 << 20),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = wanted.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> u64 {
    1024
}

fn open_file_limit() -> u64 {
    raise_open_file_limit()
}

/// Open connections per client, released when a connection ends.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

struct ClientSlot {
    counts: Arc<PerClient>,
    bucket: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, bucket: IpAddr, cap: usize) -> Option<ClientSlot> {
        let mut map = self.0.lock().ok()?;
        let n = map.entry(bucket).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            counts: Arc::clone(self),
            bucket,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.0.lock()
            && let Some(n) = map.get_mut(&self.bucket)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.bucket);
            }
        }
    }
}

/// How long a stopping server keeps connections it accepted open for their first request.
const SETTLE: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` until `shutdown` resolves, then lets connections in flight finish
/// (for at most `drain`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before we took it: wait a moment
                    // rather than spin, as axum::serve does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let exempt = limits.trusted.iter().any(|n| n.contains(&peer.ip()));
        let slot = if exempt {
            None
        } else {
            match per_client.take(client_bucket(peer.ip()), limits.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!("portcullis_connections_refused_total", "reason" => "per_ip")
                        .increment(1);
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
            drop(permit);
        });
    }
    // Closed first: from now on a new connection is refused, which a balancer retries on another
    // node (nothing was sent). A connection accepted just before may not have delivered its request
    // yet; closing it now would drop a request that was sent, which no balancer may resend (a POST).
    // So its request gets a moment to arrive and be served, then idle connections are closed.
    drop(listener);
    tokio::time::sleep(SETTLE.min(drain)).await;
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_room_below_the_file_limit() {
        assert_eq!(derived_max_connections(1024), 768);
        assert_eq!(derived_max_connections(65_536), 57_216);
        assert_eq!(derived_max_connections(1 << 20), 100_000);
        assert_eq!(derived_max_connections(100), 64);
    }
}
