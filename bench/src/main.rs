//! Portcullis load harness. One run starts the release server on a temporary data directory, seeds
//! users, measures a bare axum hello (`portcullis-bench-ceiling`, the `ceiling` scenario) and the
//! server's `/healthz` in alternating windows, runs every other scenario (see `scenario.rs`), and
//! prints/writes a markdown table of requests/s, p50, p99, peak RSS and errors, relative to the
//! ceiling and to the server's `/healthz`.
//!
//! `cargo run --release -p portcullis-bench -- --help` lists the flags.

mod argon;
mod client;
mod http;
mod load;
mod nodes;
mod report;
mod scale;
mod scenario;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;

use crate::report::{Machine, Report, Row};
use crate::scenario::{Ctx, Kind, Scenario};
use crate::server::{Proc, ServerGuard};

/// The `ceiling` scenario's binary (`src/bin/ceiling.rs`), built next to the harness.
const CEILING_BIN: &str = "portcullis-bench-ceiling";

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-bench",
    about = "Load harness for the Portcullis server"
)]
struct Args {
    /// Measured seconds per scenario (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unrecorded warm-up seconds before each scenario's measurement.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Connections for the closed-loop scenarios (ceiling, healthz, me_jwt, refresh); login uses 8,
    /// verify_cached, verify_unknown, me_api_key and me_session 64, and login_inflight_rss 200
    /// whatever this says.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Tokio worker threads of the load generator (the rest of the cores are the server's).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Server binary [default: $CARGO_TARGET_DIR/release/portcullis, else next to this binary,
    /// else ./target/release/portcullis].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Bare axum hello of the `ceiling` scenario [default: portcullis-bench-ceiling next to this
    /// binary; `cargo build --release -p portcullis-bench` builds both].
    #[arg(long)]
    ceiling_bin: Option<PathBuf>,
    /// Results file; the section between its bench markers is replaced
    /// [default: bench/RESULTS.md in the source tree].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Users to create before the scenarios (logins spread over them).
    #[arg(long, default_value_t = 8)]
    users: usize,
    /// Measure one node against 2 nodes of one PostgreSQL (`--database-url`, an empty database)
    /// and Redis (`--redis-url`); runs me_jwt, verify_cached, refresh and oauth_client_credentials
    /// unless --only names others, and writes its own section of the results file.
    #[arg(long)]
    nodes: Option<usize>,
    /// Measure the hot paths on an empty store against the same store filled with 1M users, 1M API
    /// keys, 10M refresh-token rows, 1M sessions and 5M audit events (times `--scale-factor`), plus
    /// cold key and session lookups; on SQLite, and on PostgreSQL too when `--database-url` names an
    /// empty database. Writes its own section of the results file.
    #[arg(long)]
    scale: bool,
    /// Which stores `--scale` measures: `both` (SQLite, and PostgreSQL when `--database-url` is
    /// given), `sqlite` or `postgres`.
    #[arg(long, default_value = "both")]
    scale_backend: String,
    /// Multiplies the row counts of `--scale` (0.01 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    scale_factor: f64,
    /// PostgreSQL of `--nodes` and `--scale` [default: $PORTCULLIS_BENCH_DATABASE_URL].
    #[arg(long)]
    database_url: Option<String>,
    /// Redis of `--nodes` [default: $PORTCULLIS_BENCH_REDIS_URL, else redis://127.0.0.1:6379].
    #[arg(long)]
    redis_url: Option<String>,
}

/// What the scenarios need to know about the run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
}

impl Settings {
    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self {
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            connections: 4,
        }
    }
}

const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than the server's hashing threads keep their argon2 buffer after the last hash (5 s), so
/// this is the RSS of a server with nothing to do.
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(7);
const PAUSE_BETWEEN_SCENARIOS: Duration = Duration::from_millis(500);
/// `ceiling` and `healthz` are measured in this many alternating windows each (see [`run_pair`]).
const PAIR_WINDOWS: u32 = 5;
/// Warm-up before each window after the first (fresh connections).
const PAIR_REWARM: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_server_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("release").join("portcullis");
    }
    // `cargo run --release` puts this binary in <target>/release, next to the server's.
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("portcullis")))
        .filter(|p| p.exists())
    {
        return sibling;
    }
    PathBuf::from("target/release/portcullis")
}

/// `cargo build` puts both binaries of this package in the same directory.
fn default_ceiling_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(CEILING_BIN)))
        .unwrap_or_else(|| Path::new("target/release").join(CEILING_BIN))
}

fn real_main(args: Args) -> Result<ExitCode> {
    let settings = Settings {
        duration: Duration::from_secs(args.duration_secs.max(1)),
        warmup: Duration::from_secs(args.warmup_secs),
        connections: args.connections.max(1),
    };
    let mut scenarios = scenario::all(&settings);
    if args.nodes.is_some() && args.only.is_empty() {
        scenarios.retain(|s| nodes::DEFAULT.contains(&s.name));
    }
    if !args.only.is_empty() {
        let known: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
        let unknown: Vec<&String> = args
            .only
            .iter()
            .filter(|n| !known.contains(&n.as_str()))
            .collect();
        if !unknown.is_empty() {
            eprintln!(
                "portcullis-bench: unknown scenario(s) {unknown:?}; known: {}",
                known.join(", ")
            );
            return Ok(ExitCode::from(2));
        }
        scenarios.retain(|s| args.only.iter().any(|n| n == s.name));
    }
    let needs_server = scenarios.iter().any(Scenario::needs_server);
    let server_bin = args.server_bin.clone().unwrap_or_else(default_server_bin);
    if needs_server && !server_bin.is_file() {
        eprintln!(
            "portcullis-bench: server binary {} not found: run `cargo build --release -p portcullis-server` first",
            server_bin.display()
        );
        return Ok(ExitCode::from(2));
    }
    if let Some(n) = args.nodes {
        return run_nodes(&args, n, &server_bin, scenarios, &settings);
    }
    if args.scale {
        return run_scale(&args, &server_bin, &settings);
    }
    let ceiling_bin = args.ceiling_bin.clone().unwrap_or_else(default_ceiling_bin);
    let runs_ceiling = scenarios
        .iter()
        .any(|s| matches!(s.kind, Kind::Ceiling { .. }));
    let client_threads = args.client_threads.max(1);
    eprintln!(
        "[bench] load generator: {client_threads} tokio worker thread(s); {} cores on this machine \
         (the server gets the rest)",
        argon::threads()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .enable_all()
        .build()
        .context("build tokio runtime")?;
    let outcome = runtime.block_on(async {
        tokio::select! {
            res = run(
                scenarios,
                &settings,
                needs_server.then_some(server_bin.as_path()),
                &ceiling_bin,
                args.users,
            ) => res,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C); server stopped")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (rows, idle_rss_kib) = outcome?;

    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let report = Report {
        rows,
        machine: Machine::detect(&manifest_dir),
        duration_secs: settings.duration.as_secs(),
        warmup_secs: settings.warmup.as_secs(),
        client_threads,
        server_bin: needs_server.then(|| server_bin.display().to_string()),
        ceiling_bin: runs_ceiling.then(|| ceiling_bin.display().to_string()),
        idle_rss_kib,
        users: args.users.max(1),
    };
    let section = report.render();
    println!("{section}");
    let out = args.out.unwrap_or_else(|| manifest_dir.join("RESULTS.md"));
    report::write(&out, &section)?;
    eprintln!("[bench] wrote {}", out.display());
    let failed = report.rows.iter().filter(|r| r.result.is_err()).count();
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The server under test, once started and seeded.
struct Server {
    guard: ServerGuard,
    ctx: Arc<Ctx>,
}

/// Starts the server, waits until it is healthy, seeds the users, and returns it with its idle RSS.
async fn start_server(bin: &Path, users: usize) -> Result<(Server, Option<u64>)> {
    eprintln!("[bench] starting {}", bin.display());
    let mut guard = ServerGuard::start(bin)?;
    let took = guard.wait_healthy(HEALTH_TIMEOUT).await?;
    eprintln!(
        "[bench] server pid {} healthy on {} after {:.2} s (logs in {})",
        guard.http.pid,
        guard.http.target.base_url(),
        took.as_secs_f64(),
        guard.dir().display()
    );
    let root_key = guard.root_key(Duration::from_secs(2)).await;
    if root_key.is_none() {
        eprintln!("[bench] note: no `root API key: pk_live_…` line in the server's stderr");
    }
    eprintln!("[bench] seeding {} users", users.max(1));
    let seeded = Ctx::seed(guard.http.target.clone(), users, root_key)
        .await
        .map_err(|e| {
            anyhow!(
                "seeding failed: {e:#}\nlast server stderr lines:\n{}",
                guard.stderr_tail(20)
            )
        })?;
    tokio::time::sleep(IDLE_BEFORE_RSS).await;
    let idle_rss = Proc::Pid(guard.http.pid).rss_kib();
    let server = Server {
        guard,
        ctx: Arc::new(seeded),
    };
    Ok((server, idle_rss))
}

async fn run(
    scenarios: Vec<Scenario>,
    settings: &Settings,
    server_bin: Option<&Path>,
    ceiling_bin: &Path,
    users: usize,
) -> Result<(Vec<Row>, Option<u64>)> {
    let mut server = None;
    let mut idle_rss = None;
    let mut rows = Vec::new();
    // With both `ceiling` and `healthz` (and a server), the ceiling waits for healthz: they are
    // measured together.
    let paired = server_bin.is_some()
        && scenarios.iter().any(|s| s.name == "ceiling")
        && scenarios.iter().any(|s| s.name == "healthz");
    let mut ceiling = None;
    for sc in scenarios {
        if paired && sc.name == "ceiling" {
            ceiling = Some(sc);
            continue;
        }
        // Started before the first scenario that needs it (an unpaired `ceiling` runs alone).
        if sc.needs_server()
            && server.is_none()
            && let Some(bin) = server_bin
        {
            let (started, rss) = start_server(bin, users).await?;
            server = Some(started);
            idle_rss = rss;
        }
        if let (Some(c), true, Some(srv)) = (ceiling.take(), sc.name == "healthz", server.as_mut())
        {
            eprintln!(
                "[bench] ceiling and healthz: {} connections, {PAIR_WINDOWS} alternating windows of {:.1} s each (+{} s warm-up)",
                settings.connections,
                (settings.duration / PAIR_WINDOWS).as_secs_f64(),
                settings.warmup.as_secs()
            );
            let (c_res, h_res) = match run_pair(&c, &sc, settings, srv, ceiling_bin).await {
                Ok((c_stats, h_stats)) => (Ok(c_stats), Ok(h_stats)),
                Err(e) => (Err(anyhow!("{e:#}")), Err(e)),
            };
            for (s, res) in [(&c, c_res), (&sc, h_res)] {
                rows.push(Row {
                    name: s.name,
                    concurrency: s.concurrency_label(),
                    result: res,
                });
            }
            tokio::time::sleep(PAUSE_BETWEEN_SCENARIOS).await;
            continue;
        }
        let concurrency = sc.concurrency_label();
        if matches!(sc.kind, Kind::Burst { .. }) {
            eprintln!("[bench] {}: {concurrency} requests at once", sc.name);
        } else {
            eprintln!(
                "[bench] {}: {concurrency} for {} s (+{} s warm-up)",
                sc.name,
                settings.duration.as_secs(),
                settings.warmup.as_secs()
            );
        }
        let result = run_one(&sc, settings, server.as_mut(), ceiling_bin).await;
        match &result {
            Ok(s) => eprintln!(
                "[bench] {}: {:.1}/s ok, {} non-success, {} transport errors",
                sc.name,
                s.per_sec(),
                s.non_success(),
                s.transport
            ),
            Err(e) => eprintln!("[bench] {}: failed: {e:#}", sc.name),
        }
        rows.push(Row {
            name: sc.name,
            concurrency,
            result,
        });
        tokio::time::sleep(PAUSE_BETWEEN_SCENARIOS).await;
    }
    drop(server);
    Ok((rows, idle_rss))
}

async fn run_one(
    sc: &Scenario,
    settings: &Settings,
    server: Option<&mut Server>,
    ceiling_bin: &Path,
) -> Result<load::Stats> {
    let (connections, setup, burst) = match &sc.kind {
        Kind::InProcess { run, .. } => {
            let run = *run;
            let settings = settings.clone();
            return tokio::task::spawn_blocking(move || run(&settings))
                .await
                .map_err(|e| anyhow!("in-process scenario panicked: {e}"))?;
        }
        Kind::Ceiling { connections, setup } => {
            return run_ceiling(ceiling_bin, *connections, setup, settings).await;
        }
        Kind::OidcProvider { connections, setup } => {
            return run_oidc_provider(*connections, setup, settings).await;
        }
        Kind::Loop { connections, setup } => (*connections, setup, false),
        Kind::Burst { connections, setup } => (*connections, setup, true),
    };
    let Some(server) = server else {
        bail!("scenario needs the server, which was not started");
    };
    server.guard.ensure_alive()?;
    let proc = Proc::Pid(server.guard.http.pid);
    let res = if burst {
        load::run_burst(&server.ctx, connections, setup, proc).await
    } else {
        load::run_loop(&server.ctx, connections, setup, settings, proc).await
    };
    // If the server died during the scenario, say so rather than report a wall of errors.
    server.guard.ensure_alive()?;
    res
}

/// The hello and the server's `/healthz` in [`PAIR_WINDOWS`] alternating windows, a fifth of the
/// duration each (the warm-up before the first of each, [`PAIR_REWARM`] before the others), so
/// that what the host does meanwhile (other tenants) falls on both alike and their ratio is the
/// per-request tax, not the drift between two runs. Each idles while the other is measured; the
/// hello stops when this returns. Each row's rate, latencies, peak RSS and CPU are over its own
/// windows.
async fn run_pair(
    ceiling: &Scenario,
    healthz: &Scenario,
    settings: &Settings,
    server: &mut Server,
    ceiling_bin: &Path,
) -> Result<(load::Stats, load::Stats)> {
    let (Kind::Ceiling { setup: c_setup, .. }, Kind::Loop { setup: h_setup, .. }) =
        (&ceiling.kind, &healthz.kind)
    else {
        bail!("ceiling and healthz are not the scenarios this pairs");
    };
    let mut hello = start_hello(ceiling_bin).await?;
    let hello_ctx = Arc::new(Ctx::bare(hello.target.clone()));
    let mut totals: Option<(load::Stats, load::Stats)> = None;
    for i in 0..PAIR_WINDOWS {
        let window = Settings {
            duration: settings.duration / PAIR_WINDOWS,
            warmup: if i == 0 { settings.warmup } else { PAIR_REWARM },
            connections: settings.connections,
        };
        let c = load::run_loop(
            &hello_ctx,
            settings.connections,
            c_setup,
            &window,
            Proc::Pid(hello.pid),
        )
        .await?;
        hello
            .ensure_alive()
            .map_err(|e| anyhow!("{CEILING_BIN} {e:#}"))?;
        server.guard.ensure_alive()?;
        let h = load::run_loop(
            &server.ctx,
            settings.connections,
            h_setup,
            &window,
            Proc::Pid(server.guard.http.pid),
        )
        .await?;
        server.guard.ensure_alive()?;
        eprintln!(
            "[bench]   window {}: ceiling {:.0}/s, healthz {:.0}/s",
            i + 1,
            c.per_sec(),
            h.per_sec()
        );
        totals = Some(match totals {
            None => (c, h),
            Some((mut tc, mut th)) => {
                tc.absorb(c)?;
                th.absorb(h)?;
                (tc, th)
            }
        });
    }
    drop(hello);
    totals.ok_or_else(|| anyhow!("no window was measured"))
}

async fn start_hello(bin: &Path) -> Result<server::HttpChild> {
    if !bin.is_file() {
        bail!(
            "ceiling binary {} not found: run `cargo build --release -p portcullis-bench` first \
             (or pass --ceiling-bin)",
            bin.display()
        );
    }
    let mut hello = server::start_ceiling(bin)?;
    hello
        .wait_healthy(HEALTH_TIMEOUT)
        .await
        .map_err(|e| anyhow!("{CEILING_BIN} {e:#}"))?;
    Ok(hello)
}

/// Starts the bare axum hello, runs the closed loop against it, and stops it again (SIGTERM, and
/// waits) when it goes out of scope, so it never shares the machine with the server's scenarios.
/// Its peak RSS and CPU are the hello's own.
/// node-oidc-provider on a free port (Node 22 from `bench/oidc-provider/node_modules` when
/// installed, else `node`), measured like the ceiling, stopped after.
async fn run_oidc_provider(
    connections: usize,
    setup: &scenario::Setup,
    settings: &Settings,
) -> Result<load::Stats> {
    let mut op = server::start_oidc_provider()?;
    op.wait_healthy(HEALTH_TIMEOUT)
        .await
        .map_err(|e| anyhow!("node-oidc-provider {e:#}"))?;
    let ctx = Arc::new(Ctx::bare(op.target.clone()));
    let res = load::run_loop(&ctx, connections, setup, settings, Proc::Pid(op.pid)).await;
    op.ensure_alive()
        .map_err(|e| anyhow!("node-oidc-provider {e:#}"))?;
    res
}

async fn run_ceiling(
    bin: &Path,
    connections: usize,
    setup: &scenario::Setup,
    settings: &Settings,
) -> Result<load::Stats> {
    let mut hello = start_hello(bin).await?;
    let ctx = Arc::new(Ctx::bare(hello.target.clone()));
    let res = load::run_loop(&ctx, connections, setup, settings, Proc::Pid(hello.pid)).await;
    hello
        .ensure_alive()
        .map_err(|e| anyhow!("{CEILING_BIN} {e:#}"))?;
    res
}

/// `--nodes`: one node against two on PostgreSQL and Redis, in one run.
fn run_scale(args: &Args, server_bin: &Path, settings: &Settings) -> Result<ExitCode> {
    if !(args.scale_factor > 0.0 && args.scale_factor <= 10.0) {
        eprintln!("portcullis-bench: --scale-factor is above 0 and at most 10");
        return Ok(ExitCode::from(2));
    }
    let names: Vec<String> = if args.only.is_empty() {
        scale::DEFAULT.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.only.clone()
    };
    let database = args
        .database_url
        .clone()
        .or_else(|| std::env::var("PORTCULLIS_BENCH_DATABASE_URL").ok());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .context("build tokio runtime")?;
    let mut outcomes = Vec::new();
    let mut backends = Vec::new();
    if matches!(args.scale_backend.as_str(), "both" | "sqlite") {
        backends.push(scale::Backend::Sqlite);
    }
    if matches!(args.scale_backend.as_str(), "both" | "postgres") {
        match database.as_deref() {
            Some(url) => backends.push(scale::Backend::Postgres(url)),
            None if args.scale_backend == "postgres" => {
                eprintln!("portcullis-bench: --scale-backend postgres needs --database-url");
                return Ok(ExitCode::from(2));
            }
            None => {}
        }
    }
    if backends.is_empty() {
        eprintln!("portcullis-bench: --scale-backend is both, sqlite or postgres");
        return Ok(ExitCode::from(2));
    }
    for backend in backends {
        let mut scenarios = scenario::all(settings);
        scenarios.retain(|s| names.iter().any(|n| n == s.name));
        outcomes.push(runtime.block_on(scale::run(
            server_bin,
            backend,
            scenarios,
            settings,
            args.users.max(1),
            args.scale_factor,
        ))?);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let machine = Machine::detect(&manifest_dir);
    let summary = format!(
        "{} cores ({}), {}, commit {}",
        machine.nproc, machine.cpu, machine.date_utc, machine.commit
    );
    let section = scale::render(&outcomes, settings, &summary, args.scale_factor);
    println!("{section}");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| manifest_dir.join("RESULTS.md"));
    scale::write(&out, &section)?;
    eprintln!("[bench] wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn run_nodes(
    args: &Args,
    n: usize,
    server_bin: &Path,
    scenarios: Vec<Scenario>,
    settings: &Settings,
) -> Result<ExitCode> {
    let Some(db) = args
        .database_url
        .clone()
        .or_else(|| std::env::var("PORTCULLIS_BENCH_DATABASE_URL").ok())
    else {
        eprintln!(
            "portcullis-bench: --nodes needs --database-url (an empty PostgreSQL database) or PORTCULLIS_BENCH_DATABASE_URL"
        );
        return Ok(ExitCode::from(2));
    };
    let redis = args
        .redis_url
        .clone()
        .or_else(|| std::env::var("PORTCULLIS_BENCH_REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .context("build tokio runtime")?;
    let measured = runtime.block_on(nodes::run(
        server_bin,
        n,
        &db,
        &redis,
        scenarios,
        settings,
        args.users.max(1),
    ))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let machine = Machine::detect(&manifest_dir);
    let summary = format!(
        "{} cores ({}), {}, commit {}",
        machine.nproc, machine.cpu, machine.date_utc, machine.commit
    );
    let section = nodes::render(&measured, n, settings, &summary);
    println!("{section}");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| manifest_dir.join("RESULTS.md"));
    nodes::write(&out, &section)?;
    eprintln!("[bench] wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
