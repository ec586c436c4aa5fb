//! The connection to Redis every shared structure uses: one multiplexed connection manager (it
//! reconnects by itself), every command bounded in time, every key under one prefix.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long one command may take before the caller falls back (a slow Redis never holds a request).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// After a command fails, how long every caller falls back at once instead of trying Redis (then one
/// command tries again): an outage costs each request nothing, not a timeout each.
pub const BREAK_FOR: Duration = Duration::from_secs(1);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    /// Milliseconds since `epoch` until which commands are not tried (the breaker is open).
    open_until_ms: AtomicU64,
    epoch: Instant,
}

/// A `redis_url` that cannot be used, or a Redis that does not answer at start.
#[derive(Debug)]
pub struct RedisUnusable(pub String);

impl std::fmt::Display for RedisUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects (and pings) `url`; keys go under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RedisUnusable> {
        let client = redis::Client::open(url).map_err(|e| {
            RedisUnusable(format!(
                "redis_url is not a Redis URL ({e}); use redis://host:6379"
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| RedisUnusable("Redis at redis_url did not answer in time".into()))?
        .map_err(|e| RedisUnusable(format!("cannot reach Redis at redis_url: {e}")))?;
        let this = Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        this.ping()
            .await
            .map_err(|e| RedisUnusable(format!("Redis at redis_url does not answer PING: {e}")))?;
        Ok(this)
    }

    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `fut` (a command), bounded by [`COMMAND_TIMEOUT`], its round trip recorded. Within
    /// [`BREAK_FOR`] of a failure it is not sent at all: the caller falls back at once.
    pub async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let began = Instant::now();
        let now_ms = self.since_epoch_ms(began);
        if now_ms < self.open_until_ms.load(Ordering::Relaxed) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis failed within the last second; not tried",
            )));
        }
        let out = match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis command timed out",
            ))),
        };
        metrics::histogram!("portcullis_redis_seconds", "op" => op)
            .record(began.elapsed().as_secs_f64());
        if let Err(e) = &out
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal())
        {
            // A connection or time failure, not an answer (a script's own error is an answer).
            let until = self.since_epoch_ms(Instant::now()) + BREAK_FOR.as_millis() as u64;
            self.open_until_ms.store(until, Ordering::Relaxed);
        }
        out
    }

    fn since_epoch_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.conn();
        let pong: String = self
            .timed("ping", redis::cmd("PING").query_async(&mut c))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "unexpected PING answer",
            )))
        }
    }
}
