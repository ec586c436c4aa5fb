//! The load loops: closed-loop keep-alive connections (`run_loop`) and a one-shot burst
//! (`run_burst`). Both measure latency of successful requests in microseconds, count non-success
//! statuses and transport errors separately, and read the server's peak RSS for the scenario.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Settings;
use crate::http::Conn;
use crate::scenario::{ConnDriver, Ctx, Setup};
use crate::server::Proc;

/// How long past the end of the window an in-flight request may take before it counts as a
/// transport error (timeout).
const GRACE: Duration = Duration::from_secs(10);
/// Pause after a transport error, so a dead server does not turn the loop into a busy spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(5);

pub fn new_histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).context("create histogram")
}

/// What one scenario measured.
pub struct Stats {
    /// Latency of successful requests (or hashes), microseconds.
    pub hist: Histogram<u64>,
    pub ok: u64,
    /// Responses that did not count as success, by status code.
    pub bad_status: BTreeMap<u16, u64>,
    /// Connect/IO/protocol errors and timeouts.
    pub transport: u64,
    pub first_transport_error: Option<String>,
    /// Failures to re-establish a connection's state after an error (e.g. re-login).
    pub recover_errors: u64,
    /// Measurement window (or, for a burst, the time until every request finished).
    pub elapsed: Duration,
    /// Connections (or threads) that actually took part.
    pub active: usize,
    pub setup_failures: usize,
    pub first_setup_error: Option<String>,
    /// VmHWM during the scenario, KiB.
    pub peak_kib: Option<u64>,
    /// Whose peak RSS that is.
    pub peak_of: &'static str,
    /// Whether the peak counter could be reset before the scenario (else it covers more).
    pub peak_reset: bool,
    /// CPU used during the measurement, in cores (1.0 = one core busy all the time).
    pub server_cpu: Option<f64>,
    pub harness_cpu: Option<f64>,
    /// What the rate counts when it is not HTTP requests (e.g. "hashes/s").
    pub unit: Option<&'static str>,
    /// One-shot burst: the rate is over the time until all answered; no ratio to healthz.
    pub is_burst: bool,
}

/// CPU time of the server and of the harness at one instant.
pub struct CpuMark {
    server: Option<Duration>,
    harness: Option<Duration>,
    at: std::time::Instant,
}

impl CpuMark {
    pub fn now(server: Option<Proc>) -> Self {
        Self {
            server: server.and_then(Proc::cpu_time),
            harness: Proc::SelfProc.cpu_time(),
            at: std::time::Instant::now(),
        }
    }

    /// Cores used by (server, harness) between `self` and `later`.
    pub fn cores_until(&self, later: &CpuMark) -> (Option<f64>, Option<f64>) {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let share = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => Some(b.saturating_sub(a).as_secs_f64() / wall),
            _ => None,
        };
        (
            share(self.server, later.server),
            share(self.harness, later.harness),
        )
    }
}

impl Stats {
    pub fn new(peak_of: &'static str) -> Result<Self> {
        Ok(Self {
            hist: new_histogram()?,
            ok: 0,
            bad_status: BTreeMap::new(),
            transport: 0,
            first_transport_error: None,
            recover_errors: 0,
            elapsed: Duration::ZERO,
            active: 0,
            setup_failures: 0,
            first_setup_error: None,
            peak_kib: None,
            peak_of,
            peak_reset: false,
            server_cpu: None,
            harness_cpu: None,
            unit: None,
            is_burst: false,
        })
    }

    pub fn per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    pub fn non_success(&self) -> u64 {
        self.bad_status.values().sum()
    }

    /// Adds another window of the same scenario: counts and latencies add up, the window lengthens,
    /// the peak is the larger and CPU the time-weighted mean.
    pub fn absorb(&mut self, other: Stats) -> Result<()> {
        let (a, b) = (self.elapsed.as_secs_f64(), other.elapsed.as_secs_f64());
        let mean = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if a + b > 0.0 => Some((x * a + y * b) / (a + b)),
            (x, y) => x.or(y),
        };
        self.server_cpu = mean(self.server_cpu, other.server_cpu);
        self.harness_cpu = mean(self.harness_cpu, other.harness_cpu);
        self.hist.add(&other.hist).context("merge histograms")?;
        self.ok += other.ok;
        for (code, n) in other.bad_status {
            *self.bad_status.entry(code).or_default() += n;
        }
        self.transport += other.transport;
        self.recover_errors += other.recover_errors;
        self.first_transport_error = self
            .first_transport_error
            .take()
            .or(other.first_transport_error);
        self.elapsed += other.elapsed;
        self.active = self.active.max(other.active);
        self.setup_failures += other.setup_failures;
        self.first_setup_error = self.first_setup_error.take().or(other.first_setup_error);
        self.peak_kib = self.peak_kib.max(other.peak_kib);
        self.peak_reset &= other.peak_reset;
        Ok(())
    }

    /// Adds the same scenario measured at the same time against another process (another node):
    /// counts and latencies add up, the window is the longer, CPU adds up (both servers worked).
    pub fn add_parallel(&mut self, other: Stats) -> Result<()> {
        self.server_cpu = match (self.server_cpu, other.server_cpu) {
            (Some(x), Some(y)) => Some(x + y),
            _ => None,
        };
        // One harness process: both runs read its whole CPU over the same window.
        self.harness_cpu = self.harness_cpu.or(other.harness_cpu);
        let elapsed = self.elapsed.max(other.elapsed);
        let (cpu, harness, peak) = (self.server_cpu, self.harness_cpu, self.peak_kib);
        self.absorb(other)?;
        (self.server_cpu, self.harness_cpu, self.elapsed) = (cpu, harness, elapsed);
        self.peak_kib = peak.max(self.peak_kib);
        Ok(())
    }

    fn merge(&mut self, other: ConnStats) -> Result<()> {
        self.hist.add(&other.hist).context("merge histograms")?;
        self.ok += other.ok;
        for (code, n) in other.bad_status {
            *self.bad_status.entry(code).or_default() += n;
        }
        self.transport += other.transport;
        self.recover_errors += other.recover_errors;
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
        Ok(())
    }
}

struct ConnStats {
    hist: Histogram<u64>,
    ok: u64,
    bad_status: BTreeMap<u16, u64>,
    transport: u64,
    first_transport_error: Option<String>,
    recover_errors: u64,
}

impl ConnStats {
    fn new() -> Result<Self> {
        Ok(Self {
            hist: new_histogram()?,
            ok: 0,
            bad_status: BTreeMap::new(),
            transport: 0,
            first_transport_error: None,
            recover_errors: 0,
        })
    }

    fn transport_error(&mut self, msg: impl FnOnce() -> String) {
        self.transport += 1;
        if self.first_transport_error.is_none() {
            self.first_transport_error = Some(msg());
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Builds every connection's driver and connects it, concurrently. Not timed.
async fn prepare(
    ctx: &Arc<Ctx>,
    connections: usize,
    setup: &Setup,
    stats: &mut Stats,
) -> Result<Vec<(Box<dyn ConnDriver>, Conn)>> {
    let mut set = JoinSet::new();
    for i in 0..connections {
        let ctx = Arc::clone(ctx);
        let setup = Arc::clone(setup);
        set.spawn(async move {
            let driver = setup(Arc::clone(&ctx), i).await?;
            let conn = Conn::connect(ctx.target.addr).await?;
            Ok::<_, anyhow::Error>((driver, conn))
        });
    }
    let mut ready = Vec::with_capacity(connections);
    while let Some(res) = set.join_next().await {
        match res
            .map_err(|e| anyhow!("setup task failed: {e}"))
            .and_then(|r| r)
        {
            Ok(pair) => ready.push(pair),
            Err(e) => {
                stats.setup_failures += 1;
                if stats.first_setup_error.is_none() {
                    stats.first_setup_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    if ready.is_empty() {
        bail!(
            "all {connections} connections failed to set up: {}",
            stats.first_setup_error.as_deref().unwrap_or("?")
        );
    }
    stats.active = ready.len();
    Ok(ready)
}

/// Closed loop: every connection sends its next request as soon as the previous answer is in,
/// for `warmup + duration`; only requests sent after the warm-up and answered before the end of the
/// window are recorded.
pub async fn run_loop(
    ctx: &Arc<Ctx>,
    connections: usize,
    setup: &Setup,
    s: &Settings,
    server: Proc,
) -> Result<Stats> {
    let mut stats = Stats::new("server")?;
    let ready = prepare(ctx, connections, setup, &mut stats).await?;
    stats.peak_reset = server.reset_peak();
    let start = Instant::now();
    let measure_start = start + s.warmup;
    let end = measure_start + s.duration;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_start).await;
        let first = CpuMark::now(Some(server));
        tokio::time::sleep_until(end).await;
        first.cores_until(&CpuMark::now(Some(server)))
    });
    let mut set = JoinSet::new();
    for (driver, conn) in ready {
        set.spawn(conn_loop(driver, conn, measure_start, end));
    }
    while let Some(res) = set.join_next().await {
        let conn_stats = res.map_err(|e| anyhow!("load task failed: {e}"))??;
        stats.merge(conn_stats)?;
    }
    (stats.server_cpu, stats.harness_cpu) = sampler
        .await
        .map_err(|e| anyhow!("CPU sampler failed: {e}"))?;
    stats.peak_kib = server.peak_kib();
    stats.elapsed = s.duration;
    Ok(stats)
}

async fn conn_loop(
    mut driver: Box<dyn ConnDriver>,
    mut conn: Conn,
    measure_start: Instant,
    end: Instant,
) -> Result<ConnStats> {
    let mut st = ConnStats::new()?;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let req = driver.request().context("build request")?;
        let measured = sent >= measure_start;
        let failed = match tokio::time::timeout_at(end + GRACE, conn.send_full(req)).await {
            Ok(Ok((status, headers, body))) => {
                let done = Instant::now();
                let ok = driver.check_full(status, &headers, &body);
                if measured && done <= end {
                    if ok {
                        st.ok += 1;
                        st.hist.saturating_record(micros(done - sent));
                    } else {
                        *st.bad_status.entry(status.as_u16()).or_default() += 1;
                    }
                }
                !ok
            }
            Ok(Err(e)) => {
                if measured {
                    st.transport_error(|| format!("{e:#}"));
                }
                tokio::time::sleep(ERROR_BACKOFF).await;
                true
            }
            Err(_) => {
                conn.reset();
                if measured {
                    st.transport_error(|| format!("request timed out (> {GRACE:?} past the end)"));
                }
                true
            }
        };
        if failed
            && Instant::now() < end
            && let Err(_e) = driver.recover().await
        {
            st.recover_errors += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(st)
}

/// Every connection sends one request at the same moment; `elapsed` is the time until the last
/// answer. Latency of each successful request is recorded.
pub async fn run_burst(
    ctx: &Arc<Ctx>,
    connections: usize,
    setup: &Setup,
    server: Proc,
) -> Result<Stats> {
    const BURST_TIMEOUT: Duration = Duration::from_secs(120);
    let mut stats = Stats::new("server")?;
    stats.is_burst = true;
    let ready = prepare(ctx, connections, setup, &mut stats).await?;
    stats.peak_reset = server.reset_peak();
    let first = CpuMark::now(Some(server));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (mut driver, mut conn) in ready {
        set.spawn(async move {
            let mut st = ConnStats::new()?;
            let req = driver.request().context("build request")?;
            match tokio::time::timeout_at(start + BURST_TIMEOUT, conn.send(req)).await {
                Ok(Ok((status, body))) => {
                    if driver.check(status, &body) {
                        st.ok += 1;
                        st.hist.saturating_record(micros(start.elapsed()));
                    } else {
                        *st.bad_status.entry(status.as_u16()).or_default() += 1;
                    }
                }
                Ok(Err(e)) => st.transport_error(|| format!("{e:#}")),
                Err(_) => st.transport_error(|| format!("no answer within {BURST_TIMEOUT:?}")),
            }
            Ok::<_, anyhow::Error>(st)
        });
    }
    while let Some(res) = set.join_next().await {
        let conn_stats = res.map_err(|e| anyhow!("burst task failed: {e}"))??;
        stats.merge(conn_stats)?;
    }
    stats.elapsed = start.elapsed();
    stats.peak_kib = server.peak_kib();
    (stats.server_cpu, stats.harness_cpu) = first.cores_until(&CpuMark::now(Some(server)));
    Ok(stats)
}

/// An in-process scenario: `work(measure_start, end)` on one thread per core for warm-up +
/// duration, each returning what it counted inside the window and its latencies; peak RSS and CPU
/// are the harness's own.
pub fn in_process<F>(s: &Settings, unit: &'static str, work: F) -> Result<Stats>
where
    F: Fn(std::time::Instant, std::time::Instant) -> Result<(u64, Histogram<u64>)> + Sync,
{
    let n = crate::argon::threads();
    let me = Proc::SelfProc;
    let peak_reset = me.reset_peak();
    let start = std::time::Instant::now();
    let measure_start = start + s.warmup;
    let end = measure_start + s.duration;
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(measure_start.saturating_duration_since(std::time::Instant::now()));
        let first = CpuMark::now(None);
        std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
        first.cores_until(&CpuMark::now(None)).1
    });
    let per_thread: Vec<Result<(u64, Histogram<u64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| work(measure_start, end)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a worker thread panicked"))?)
            .collect()
    });
    let mut stats = Stats::new("harness")?;
    for res in per_thread {
        let (ok, hist) = res?;
        stats.ok += ok;
        stats.hist.add(&hist).context("merge histograms")?;
    }
    stats.active = n;
    stats.unit = Some(unit);
    stats.elapsed = s.duration;
    stats.peak_kib = me.peak_kib();
    stats.peak_reset = peak_reset;
    stats.harness_cpu = sampler
        .join()
        .map_err(|_| anyhow!("CPU sampler panicked"))?;
    Ok(stats)
}
