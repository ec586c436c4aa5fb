//! `--nodes 2`: the same scenarios against one node and against two nodes of one store (PostgreSQL
//! and Redis), in the same run. The harness spreads its connections over the nodes itself (half
//! each), so no balancer's cost is in the figures. Reported per scenario: requests/s and the servers'
//! CPU-seconds per 1,000 requests, one node against two; with no cross-node contention the cost per
//! request stays the same (target: within 15 %).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::Settings;
use crate::load::{self, Stats};
use crate::scenario::{Ctx, Kind, Scenario};
use crate::server::{Proc, ServerGuard};

pub const BEGIN: &str = "<!-- bench:nodes:begin -->";
pub const END: &str = "<!-- bench:nodes:end -->";

/// The scenarios `--nodes` runs unless `--only` names others.
pub const DEFAULT: &[&str] = &[
    "me_jwt",
    "verify_cached",
    "refresh",
    "oauth_client_credentials",
];

pub struct Measured {
    pub name: &'static str,
    pub one: Stats,
    pub two: Stats,
}

pub fn random_hex(bytes: usize) -> Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| anyhow!("random: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Starts `nodes` servers on `database_url` and `redis_url` (the database should be empty: the first
/// node's first start makes the root key), seeds users through the first, and measures each scenario
/// on the first node alone, then on all of them at once.
pub async fn run(
    bin: &Path,
    nodes: usize,
    database_url: &str,
    redis_url: &str,
    scenarios: Vec<Scenario>,
    settings: &Settings,
    users: usize,
) -> Result<Vec<Measured>> {
    if nodes != 2 {
        bail!("--nodes measures one node against two: give --nodes 2");
    }
    let master = random_hex(32)?;
    let prefix = format!("bench-{}", random_hex(8)?);
    let env = [
        ("PORTCULLIS_MASTER_KEY", master.as_str()),
        ("PORTCULLIS_REDIS_PREFIX", prefix.as_str()),
        // Each connection of the harness is one client address: the per-address limits would
        // measure the throttles (which the server's suite tests), not the paths.
        ("PORTCULLIS_MAX_CONNECTIONS_PER_IP", "4096"),
    ];
    let args = ["--database-url", database_url, "--redis-url", redis_url];
    let mut guards: Vec<ServerGuard> = Vec::new();
    let mut issuer = None::<String>;
    for i in 0..nodes {
        let mut g = ServerGuard::start_with(bin, &args, &env, issuer.as_deref())
            .with_context(|| format!("start node {i}"))?;
        g.wait_healthy(Duration::from_secs(30)).await?;
        eprintln!(
            "[bench] node {i}: pid {} on {}",
            g.http.pid,
            g.http.target.base_url()
        );
        issuer.get_or_insert_with(|| g.http.target.base_url());
        guards.push(g);
    }
    let first = guards.first().ok_or_else(|| anyhow!("no node"))?;
    let root = first.root_key(Duration::from_secs(2)).await;
    let seeded = Ctx::seed(first.http.target.clone(), users, root)
        .await
        .map_err(|e| anyhow!("seeding failed: {e:#}"))?;
    let [a, b] = guards.as_slice() else {
        bail!("two nodes were started");
    };
    let (ctx_a, ctx_b) = (
        Arc::new(seeded.on(a.http.target.clone())),
        Arc::new(seeded.on(b.http.target.clone())),
    );
    let (pid_a, pid_b) = (a.http.pid, b.http.pid);
    let mut out = Vec::new();
    for sc in scenarios {
        let Kind::Loop { connections, setup } = &sc.kind else {
            eprintln!(
                "[bench] {}: not a closed-loop scenario; skipped with --nodes",
                sc.name
            );
            continue;
        };
        eprintln!("[bench] {} on one node: {connections} connections", sc.name);
        let one = load::run_loop(&ctx_a, *connections, setup, settings, Proc::Pid(pid_a)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!(
            "[bench] {} on {nodes} nodes: {connections} connections spread over them",
            sc.name
        );
        // Both nodes in the same window.
        let per = (*connections / 2).max(1);
        let (a, b) = tokio::join!(
            load::run_loop(&ctx_a, per, setup, settings, Proc::Pid(pid_a)),
            load::run_loop(&ctx_b, per, setup, settings, Proc::Pid(pid_b)),
        );
        let mut two = a?;
        two.add_parallel(b?)?;
        for g in &mut guards {
            g.ensure_alive()?;
        }
        eprintln!(
            "[bench] {}: one node {:.0}/s, {nodes} nodes {:.0}/s",
            sc.name,
            one.per_sec(),
            two.per_sec()
        );
        out.push(Measured {
            name: sc.name,
            one,
            two,
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(guards);
    Ok(out)
}

/// CPU-seconds of the servers per 1,000 answered requests.
fn cpu_per_1000(s: &Stats) -> Option<f64> {
    let rate = s.per_sec();
    s.server_cpu
        .filter(|_| rate > 0.0)
        .map(|cores| cores / rate * 1000.0)
}

pub fn render(measured: &[Measured], nodes: usize, settings: &Settings, machine: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "### Several nodes (`--nodes {nodes}`, PostgreSQL + Redis, {} s per scenario, {})\n",
        settings.duration.as_secs(),
        machine
    );
    let _ = writeln!(
        t,
        "| scenario | 1 node req/s | {nodes} nodes req/s | 1 node CPU-s / 1k req | {nodes} nodes CPU-s / 1k req | cost ratio | non-2xx (1 / {nodes}) |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|");
    for m in measured {
        let (c1, c2) = (cpu_per_1000(&m.one), cpu_per_1000(&m.two));
        let fmt = |c: Option<f64>| c.map_or("n/a".to_owned(), |c| format!("{c:.3}"));
        let ratio = match (c1, c2) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
            _ => "n/a".to_owned(),
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {} | {} | {ratio} | {} / {} |",
            m.name,
            m.one.per_sec(),
            m.two.per_sec(),
            fmt(c1),
            fmt(c2),
            m.one.non_success() + m.one.transport,
            m.two.non_success() + m.two.transport,
        );
    }
    t
}

/// Replaces the section between [`BEGIN`] and [`END`] of `path` (appending one if missing).
pub fn write(path: &Path, section: &str) -> Result<()> {
    replace_section(path, BEGIN, END, "Several nodes", section)
}

/// Replaces what stands between `begin` and `end` in `path` with `section`, or appends it under a
/// `## heading` when the markers are missing.
pub fn replace_section(
    path: &Path,
    begin: &str,
    end: &str,
    heading: &str,
    section: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{section}{end}");
    let new = match (text.find(begin), text.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n\n## {heading}\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("write {}", path.display()))
}
