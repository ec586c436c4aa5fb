//! The results table (markdown, printed and written between markers in RESULTS.md) and the
//! machine details that go with it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::load::Stats;

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

pub struct Row {
    pub name: &'static str,
    pub concurrency: String,
    pub result: Result<Stats>,
}

pub struct Report {
    pub rows: Vec<Row>,
    pub machine: Machine,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub client_threads: usize,
    pub server_bin: Option<String>,
    /// The `ceiling` scenario's bare axum hello, when that scenario ran.
    pub ceiling_bin: Option<String>,
    /// Server VmRSS after seeding and 7 s idle, KiB.
    pub idle_rss_kib: Option<u64>,
    pub users: usize,
}

pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub mem_total: String,
    pub kernel: String,
    pub rustc: String,
    pub date_utc: String,
    pub commit: String,
}

impl Machine {
    pub fn detect(repo_dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let kernel = command_line("uname", &["-r"], None).unwrap_or_else(|| "unknown".into());
        let rustc = command_line("rustc", &["--version"], None).unwrap_or_else(|| "unknown".into());
        let date_utc = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "unknown".into());
        let commit = match command_line("git", &["rev-parse", "--short", "HEAD"], Some(repo_dir)) {
            Some(hash) => {
                let dirty = command_line("git", &["status", "--porcelain"], Some(repo_dir))
                    .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{hash} (uncommitted changes)")
                } else {
                    hash
                }
            }
            None => "none".into(),
        };
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        Self {
            nproc,
            cpu,
            mem_total,
            kernel,
            rustc,
            date_utc,
            commit,
        }
    }
}

/// First line of a command's stdout, if it ran and succeeded.
fn command_line(cmd: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(dir) = dir {
        c.current_dir(dir);
    }
    let out = c.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or("").trim().to_owned())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn thousands(x: f64) -> String {
    if x >= 100.0 {
        let n = x.round() as u64;
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{x:.1}")
    }
}

/// Three significant digits (ratios span 1.0 down to ~0.0005).
fn sig3(x: f64) -> String {
    if !x.is_finite() || x <= 0.0 {
        return format!("{x:.3}");
    }
    let magnitude = x.log10().floor() as i32;
    let decimals = usize::try_from((2 - magnitude).max(0)).unwrap_or(0);
    format!("{x:.decimals$}")
}

fn errors_cell(s: &Stats) -> String {
    let mut parts = Vec::new();
    if s.non_success() > 0 {
        let codes: Vec<String> = s
            .bad_status
            .iter()
            .map(|(code, n)| format!("{code}×{n}"))
            .collect();
        parts.push(format!("HTTP {}", codes.join(" ")));
    }
    if s.transport > 0 {
        parts.push(format!("transport {}", s.transport));
    }
    if s.setup_failures > 0 {
        parts.push(format!("setup {}", s.setup_failures));
    }
    if s.recover_errors > 0 {
        parts.push(format!("re-login {}", s.recover_errors));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

fn stats_of<'a>(rows: &'a [Row], name: &str) -> Option<&'a Stats> {
    rows.iter()
        .find(|r| r.name == name)
        .and_then(|r| r.result.as_ref().ok())
}

/// A row's requests/s to hold other rows against (`ceiling`, `healthz`), if it ran and got any.
fn base_rate(rows: &[Row], name: &str) -> Option<f64> {
    stats_of(rows, name)
        .map(Stats::per_sec)
        .filter(|r| *r > 0.0)
}

/// A `× <base>` cell: the row's requests/s over the base row's; `—` without a base, or for rows
/// that are not HTTP requests in a closed loop (hashes, the burst).
fn ratio_cell(s: &Stats, base: Option<f64>) -> String {
    match base {
        Some(b) if s.unit.is_none() && !s.is_burst => sig3(s.per_sec() / b),
        _ => "—".into(),
    }
}

impl Report {
    /// The markdown that goes between the markers (and to stdout).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(o, "### Latest run\n");
        let _ = writeln!(o, "- Date (UTC): {}; commit: {}", m.date_utc, m.commit);
        let _ = writeln!(
            o,
            "- Machine: nproc {}; CPU: {}; memory: {}; kernel: {}; {}",
            m.nproc, m.cpu, m.mem_total, m.kernel, m.rustc
        );
        let _ = writeln!(
            o,
            "- Each scenario: {} s warm-up (not recorded), then {} s measured; HTTP/1.1 keep-alive, \
             closed loop. The load generator runs on {} tokio worker thread(s) in the same machine, \
             leaving the other core(s) to the server.",
            self.warmup_secs, self.duration_secs, self.client_threads
        );
        if let Some(bin) = &self.ceiling_bin {
            let _ = writeln!(
                o,
                "- Ceiling: `{bin}` (bare axum hello: `GET /healthz` → `ok`, tokio's default \
                 multi-thread runtime, no middleware); with `healthz`, both are measured in 5 \
                 alternating windows (the other idle), so the host's drift falls on both alike"
            );
        }
        if let Some(bin) = &self.server_bin {
            let _ = writeln!(
                o,
                "- Server: `{bin}` (RUST_LOG=warn; login throttles opened: PORTCULLIS_LOGIN_IP_LIMIT, _FREE_FAILURES, _ACCOUNT_FREE_FAILURES=100000), {} seeded users",
                self.users
            );
        }
        if self.server_bin.is_some() {
            let _ = writeln!(
                o,
                "- Idle server RSS (after seeding and 7 s idle): {} MB",
                mib(self.idle_rss_kib)
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "| scenario | connections | requests/s | p50 ms | p99 ms | peak RSS MB | errors | × healthz \
             | × ceiling |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|---:|---:|");
        let healthz = base_rate(&self.rows, "healthz");
        let ceiling = base_rate(&self.rows, "ceiling");
        for row in &self.rows {
            match &row.result {
                Ok(s) => {
                    let rate = s.per_sec();
                    let rate_cell = match s.unit {
                        Some(unit) => format!("{} {unit}", thousands(rate)),
                        None => thousands(rate),
                    };
                    let (p50, p99) = if s.hist.is_empty() {
                        ("—".into(), "—".into())
                    } else {
                        (
                            ms(s.hist.value_at_quantile(0.50)),
                            ms(s.hist.value_at_quantile(0.99)),
                        )
                    };
                    let mut peak = mib(s.peak_kib);
                    if s.peak_of != "server" {
                        peak = format!("{peak} ({})", s.peak_of);
                    }
                    if !s.peak_reset {
                        peak.push_str(" (since start: reset refused)");
                    }
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        row.name,
                        row.concurrency,
                        rate_cell,
                        p50,
                        p99,
                        peak,
                        errors_cell(s),
                        ratio_cell(s, healthz),
                        ratio_cell(s, ceiling)
                    );
                }
                Err(e) => {
                    let msg = format!("{e:#}").replace('|', "\\|").replace('\n', " ");
                    let _ = writeln!(
                        o,
                        "| {} | {} | failed: {} | | | | | | |",
                        row.name, row.concurrency, msg
                    );
                }
            }
        }
        let _ = writeln!(o);
        if let Some(h) = stats_of(&self.rows, "healthz") {
            let _ = writeln!(o, "{}", healthz_target(h, ceiling));
        }
        if let (Some(login), Some(raw)) = (
            stats_of(&self.rows, "login"),
            stats_of(&self.rows, "argon2_raw"),
        ) && raw.per_sec() > 0.0
        {
            let _ = writeln!(
                o,
                "- login / argon2_raw = {:.2} (1.00 = logins are as fast as bare hashing on all cores)",
                login.per_sec() / raw.per_sec()
            );
        }
        if let Some(v) = stats_of(&self.rows, "verify_cached") {
            let _ = writeln!(o, "{}", verify_targets(v, healthz));
        }
        if let Some(s) = stats_of(&self.rows, "me_session") {
            let _ = writeln!(o, "{}", me_session_target(s, healthz));
        }
        if let Some(r) = stats_of(&self.rows, "refresh") {
            let _ = writeln!(
                o,
                "- refresh target: {}",
                ratio_target(r, "healthz", healthz, REFRESH_MIN_RATIO)
            );
            if let Some(grant) = stats_of(&self.rows, "oauth_refresh") {
                let _ = writeln!(
                    o,
                    "- oauth_refresh target (the `refresh_token` grant within 15 % of refresh): {}",
                    ratio_target(grant, "refresh", Some(r.per_sec()), OAUTH_REFRESH_MIN_RATIO)
                );
            }
        }
        for name in ["oauth_code_flow", "oauth_code_flow_es256"] {
            if let Some(flow) = stats_of(&self.rows, name) {
                let _ = writeln!(o, "{}", code_redemption_target(name, flow, healthz));
            }
        }
        for name in ["authorize_jwt", "authorize_api_key"] {
            if let Some(s) = stats_of(&self.rows, name) {
                let _ = writeln!(
                    o,
                    "- {name} target: {}",
                    ratio_target(s, "healthz", healthz, AUTHORIZE_MIN_RATIO)
                );
            }
        }
        for (name, min) in [
            ("me_signed_hmac", SIGNED_HMAC_MIN_RATIO),
            ("me_signed_ed25519", SIGNED_ED25519_MIN_RATIO),
        ] {
            if let Some(s) = stats_of(&self.rows, name) {
                let _ = writeln!(
                    o,
                    "- {name} target: {}",
                    ratio_target(s, "healthz", healthz, min)
                );
            }
        }
        if let (Some(b), Some(alone)) = (
            stats_of(&self.rows, "me_jwt_beside_polls"),
            stats_of(&self.rows, "me_jwt"),
        ) {
            let secs = (self.warmup_secs + self.duration_secs) as f64;
            let connections: usize = self
                .rows
                .iter()
                .find(|r| r.name == "me_jwt_beside_polls")
                .and_then(|r| r.concurrency.parse().ok())
                .unwrap_or(1);
            let polls = crate::scenario::DEVICE_POLLS.load(std::sync::atomic::Ordering::Relaxed)
                as f64
                / secs.max(1.0);
            let me = (b.per_sec() - polls).max(0.0);
            let share = connections.saturating_sub(crate::scenario::DEVICE_POLLERS) as f64
                / connections.max(1) as f64;
            let _ = writeln!(
                o,
                "- me_jwt_beside_polls: {} device-code pollers answered ~{polls:.0} polls/s while the other connections got {me:.0} /v1/me/s = {:.2} of me_jwt's rate for their share of the connections",
                crate::scenario::DEVICE_POLLERS,
                if alone.per_sec() > 0.0 {
                    me / (alone.per_sec() * share)
                } else {
                    0.0
                }
            );
        }
        if let (Some(s), Some(h)) = (stats_of(&self.rows, "me_dpop"), healthz) {
            let _ = writeln!(
                o,
                "- me_dpop / healthz = {:.2} (a DPoP proof checked in full on every request; issue 14 asks for the figure, not a bound)",
                s.per_sec() / h
            );
        }
        let per_core = |s: &Stats| s.per_sec() / (s.active.max(1) as f64);
        if let Some(c) = stats_of(&self.rows, "client_verify_cached") {
            let mut line = format!(
                "- portcullis-client verify per core: cached token {:.0}/s",
                per_core(c)
            );
            if let Some(u) = stats_of(&self.rows, "client_verify_uncached") {
                let _ = write!(line, ", signature every time {:.0}/s", per_core(u));
            }
            if let Some(j) = stats_of(&self.rows, "jsonwebtoken_verify") {
                let _ = write!(line, "; bare jsonwebtoken {:.0}/s", per_core(j));
                if j.per_sec() > 0.0 {
                    let _ = write!(line, " (cached = {:.1}×)", c.per_sec() / j.per_sec());
                }
            }
            let _ = writeln!(o, "{line}");
        }
        if let Some(b) = stats_of(&self.rows, "login_inflight_rss") {
            let n429 = b.bad_status.get(&429).copied().unwrap_or(0);
            let n503 = b.bad_status.get(&503).copied().unwrap_or(0);
            let other = b.non_success() - n429 - n503;
            let _ = writeln!(
                o,
                "- login_inflight_rss: {} logins at once → 200: {}, 429: {}, 503: {}, other status: {}, \
                 transport errors: {}; all finished in {:.2} s; server peak RSS {} MB",
                b.active + b.setup_failures,
                b.ok,
                n429,
                n503,
                other,
                b.transport,
                b.elapsed.as_secs_f64(),
                mib(b.peak_kib)
            );
        }
        let cpu: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| {
                let s = r.result.as_ref().ok()?;
                let fmt = |c: Option<f64>| c.map_or_else(|| "?".into(), |c| format!("{c:.2}"));
                Some(match s.server_cpu {
                    Some(_) => format!("{} {}/{}", r.name, fmt(s.server_cpu), fmt(s.harness_cpu)),
                    None => format!("{} –/{}", r.name, fmt(s.harness_cpu)),
                })
            })
            .collect();
        if !cpu.is_empty() {
            let _ = writeln!(
                o,
                "- CPU used while measuring, in cores, server/harness: {}",
                cpu.join("; ")
            );
        }
        for row in &self.rows {
            if let Ok(s) = &row.result {
                if let Some(e) = &s.first_transport_error {
                    let _ = writeln!(o, "- {}: first transport error: {e}", row.name);
                }
                if let Some(e) = &s.first_setup_error {
                    let _ = writeln!(o, "- {}: first setup error: {e}", row.name);
                }
            }
        }
        let _ = writeln!(
            o,
            "- requests/s counts successes only (expected status, 200) answered inside the window; \
             p50/p99 are of successes. Peak RSS is the server's VmHWM during the scenario (reset \
             through /proc/PID/clear_refs first); for ceiling it is the bare hello's, for argon2_raw the \
             harness's own. MB = 2^20 bytes."
        );
        o
    }
}

/// Cached `POST /v1/keys/verify` must keep ≥ 40% of the `/healthz` ceiling.
pub const VERIFY_MIN_RATIO: f64 = 0.40;
/// … with p99 below this, at 64 connections.
pub const VERIFY_MAX_P99_US: u64 = 5_000;
/// `GET /v1/me` with a session cookie must keep ≥ 40% of the `/healthz` ceiling (at 64 connections).
pub const ME_SESSION_MIN_RATIO: f64 = 0.40;
/// `/v1/authorize` with a cached JWT, and with an API key, must keep ≥ 60% of `/healthz`.
pub const AUTHORIZE_MIN_RATIO: f64 = 0.60;
/// `GET /v1/me` signed (RFC 9421, fresh nonce each) with hmac-sha256 must keep ≥ 40% of `/healthz`.
pub const SIGNED_HMAC_MIN_RATIO: f64 = 0.40;
/// … with ed25519 ≥ 25% (an Ed25519 verification is ~50 µs of one core here).
pub const SIGNED_ED25519_MIN_RATIO: f64 = 0.25;
/// The server's `/healthz` must reach ≥ 75% of a bare axum hello's, measured in the same run.
pub const HEALTHZ_MIN_RATIO: f64 = 0.75;
/// `POST /v1/auth/refresh` over `/healthz`.
pub const REFRESH_MIN_RATIO: f64 = 0.20;
/// OAuth's `refresh_token` grant over `POST /v1/auth/refresh`.
pub const OAUTH_REFRESH_MIN_RATIO: f64 = 0.85;
/// Code redemptions (one per two requests of `oauth_code_flow`) over `/healthz`.
pub const CODE_REDEMPTION_MIN_RATIO: f64 = 0.10;

/// The line under the table that holds code redemptions against their target: a code-flow row
/// (`name`) counts both requests of a flow, so redemptions are half its rate.
fn code_redemption_target(name: &str, flow: &Stats, healthz: Option<f64>) -> String {
    let redemptions = flow.per_sec() / 2.0;
    let ratio = healthz.filter(|h| *h > 0.0).map(|h| redemptions / h);
    let verdict = match ratio {
        Some(r) => verdict(Some(r >= CODE_REDEMPTION_MIN_RATIO)).to_owned(),
        None => "needs the healthz row".to_owned(),
    };
    format!(
        "- code redemption target: {} redemptions/s (half of {name}) = {} × healthz (target ≥ {CODE_REDEMPTION_MIN_RATIO:.2}: {verdict})",
        thousands(redemptions),
        ratio.map_or_else(|| "?".into(), sig3),
    )
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// `0.500 × healthz (target ≥ 0.40: met)`: a row's rate over the rate of the row named `base`
/// (`base_rate`, `None` when that row did not run), against a minimum.
fn ratio_target(s: &Stats, base: &str, base_rate: Option<f64>, min: f64) -> String {
    let ratio = base_rate.map(|b| s.per_sec() / b);
    let verdict = match ratio {
        Some(r) => verdict(Some(r >= min)).to_owned(),
        None => format!("needs the {base} row"),
    };
    format!(
        "{} × {base} (target ≥ {min:.2}: {verdict})",
        ratio.map_or_else(|| "?".into(), sig3),
    )
}

/// The line under the table that holds the server's `healthz` against the bare axum hello.
fn healthz_target(h: &Stats, ceiling: Option<f64>) -> String {
    format!(
        "- healthz target: {}",
        ratio_target(h, "ceiling", ceiling, HEALTHZ_MIN_RATIO)
    )
}

/// The line under the table that holds `verify_cached` against its targets.
fn verify_targets(v: &Stats, healthz: Option<f64>) -> String {
    let p99 = (!v.hist.is_empty()).then(|| v.hist.value_at_quantile(0.99));
    format!(
        "- verify_cached targets: {}; p99 {} ms (target < {} ms at 64 connections: {})",
        ratio_target(v, "healthz", healthz, VERIFY_MIN_RATIO),
        p99.map_or_else(|| "?".into(), ms),
        VERIFY_MAX_P99_US / 1000,
        verdict(p99.map(|p| p < VERIFY_MAX_P99_US)),
    )
}

/// The line under the table that holds `me_session` against its target.
fn me_session_target(s: &Stats, healthz: Option<f64>) -> String {
    format!(
        "- me_session target: {} at 64 connections",
        ratio_target(s, "healthz", healthz, ME_SESSION_MIN_RATIO)
    )
}

/// Puts `section` between the markers of an existing results file, or makes a new file.
pub fn merge_into(existing: Option<&str>, section: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", section.trim_end());
    match existing {
        Some(text) => match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if b < e => {
                let before = text.get(..b).unwrap_or("");
                let after = text.get(e + END.len()..).unwrap_or("");
                format!("{before}{block}{after}")
            }
            _ => format!("{}\n\n{block}\n", text.trim_end()),
        },
        None => format!(
            "# Portcullis benchmark results\n\n\
             Written by `cargo run --release -p portcullis-bench`; everything between the markers is \
             replaced on each run. See `bench/README.md` for what each row means.\n\n\
             {block}\n\n\
             ## Targets\n\n\
             _For humans to fill in: the numbers each row should reach, and why._\n"
        ),
    }
}

pub fn write(path: &Path, section: &str) -> Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let text = merge_into(existing.as_deref(), section);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_has_markers_and_targets() {
        let out = merge_into(None, "table\n");
        assert!(out.starts_with("# Portcullis benchmark results"));
        assert!(out.contains(&format!("{BEGIN}\ntable\n{END}")));
        assert!(out.contains("## Targets"));
    }

    #[test]
    fn existing_section_is_replaced_and_rest_kept() {
        let old = format!("# Title\nintro\n{BEGIN}\nold table\n{END}\n\n## Targets\nkeep me\n");
        let out = merge_into(Some(&old), "new table");
        assert_eq!(
            out,
            format!("# Title\nintro\n{BEGIN}\nnew table\n{END}\n\n## Targets\nkeep me\n")
        );
        // And it is stable when run again.
        assert_eq!(merge_into(Some(&out), "new table"), out);
    }

    #[test]
    fn file_without_markers_gets_section_appended() {
        let out = merge_into(Some("# Mine\n"), "t");
        assert_eq!(out, format!("# Mine\n\n{BEGIN}\nt\n{END}\n"));
    }

    #[test]
    fn verify_targets_line() -> Result<()> {
        let mut v = Stats::new("server")?;
        v.ok = 20_000;
        v.elapsed = std::time::Duration::from_secs(1);
        v.hist.record(1_000)?;
        assert_eq!(
            verify_targets(&v, Some(40_000.0)),
            "- verify_cached targets: 0.500 × healthz (target ≥ 0.40: met); p99 1.00 ms \
             (target < 5 ms at 64 connections: met)"
        );
        v.hist.record(8_000)?;
        v.hist.record(8_000)?;
        let line = verify_targets(&v, Some(100_000.0));
        assert!(
            line.contains("0.200 × healthz (target ≥ 0.40: **missed**)"),
            "{line}"
        );
        assert!(
            line.contains("p99 8.00 ms (target < 5 ms at 64 connections: **missed**)"),
            "{line}"
        );
        let line = verify_targets(&Stats::new("server")?, None);
        assert!(
            line.contains("? × healthz (target ≥ 0.40: needs the healthz row)"),
            "{line}"
        );
        assert!(line.contains("p99 ? ms"), "{line}");
        Ok(())
    }

    #[test]
    fn me_session_target_line() -> Result<()> {
        let mut s = Stats::new("server")?;
        s.ok = 20_000;
        s.elapsed = std::time::Duration::from_secs(1);
        s.hist.record(1_000)?;
        assert_eq!(
            me_session_target(&s, Some(40_000.0)),
            "- me_session target: 0.500 × healthz (target ≥ 0.40: met) at 64 connections"
        );
        assert_eq!(
            me_session_target(&s, Some(100_000.0)),
            "- me_session target: 0.200 × healthz (target ≥ 0.40: **missed**) at 64 connections"
        );
        assert_eq!(
            me_session_target(&Stats::new("server")?, None),
            "- me_session target: ? × healthz (target ≥ 0.40: needs the healthz row) at 64 \
             connections"
        );
        Ok(())
    }

    #[test]
    fn healthz_target_line() -> Result<()> {
        let mut h = Stats::new("server")?;
        h.ok = 30_000;
        h.elapsed = std::time::Duration::from_secs(1);
        assert_eq!(
            healthz_target(&h, Some(40_000.0)),
            "- healthz target: 0.750 × ceiling (target ≥ 0.75: met)"
        );
        assert_eq!(
            healthz_target(&h, Some(50_000.0)),
            "- healthz target: 0.600 × ceiling (target ≥ 0.75: **missed**)"
        );
        assert_eq!(
            healthz_target(&h, None),
            "- healthz target: ? × ceiling (target ≥ 0.75: needs the ceiling row)"
        );
        Ok(())
    }

    /// A successful closed-loop row of `ok` requests in 1 s, all taking 1 ms.
    fn row(name: &'static str, ok: u64) -> Result<Row> {
        let mut s = Stats::new("server")?;
        s.ok = ok;
        s.elapsed = std::time::Duration::from_secs(1);
        s.hist.record(1_000)?;
        s.peak_kib = Some(10 << 10);
        s.peak_reset = true;
        Ok(Row {
            name,
            concurrency: "64".into(),
            result: Ok(s),
        })
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            rows,
            machine: Machine {
                nproc: 2,
                cpu: "cpu".into(),
                mem_total: "1 GiB".into(),
                kernel: "k".into(),
                rustc: "rustc".into(),
                date_utc: "now".into(),
                commit: "c".into(),
            },
            duration_secs: 1,
            warmup_secs: 0,
            client_threads: 1,
            server_bin: None,
            ceiling_bin: None,
            idle_rss_kib: None,
            users: 1,
        }
    }

    /// The table line of the row `name`.
    fn table_line<'a>(out: &'a str, name: &str) -> &'a str {
        let start = format!("| {name} |");
        out.lines().find(|l| l.starts_with(&start)).unwrap_or("")
    }

    #[test]
    fn ceiling_column_holds_rows_against_the_ceiling() -> Result<()> {
        let mut raw = row("argon2_raw", 80)?;
        if let Ok(s) = &mut raw.result {
            s.unit = Some("hashes/s");
        }
        let out = report(vec![
            row("ceiling", 50_000)?,
            row("healthz", 40_000)?,
            row("me_jwt", 20_000)?,
            raw,
        ])
        .render();
        assert!(
            out.contains(
                "| errors | × healthz | × ceiling |\n|---|---:|---:|---:|---:|---:|---|---:|---:|"
            ),
            "{out}"
        );
        assert_eq!(
            table_line(&out, "ceiling"),
            "| ceiling | 64 | 50,000 | 1.00 | 1.00 | 10.0 | 0 | 1.25 | 1.00 |"
        );
        assert!(
            table_line(&out, "healthz").ends_with("| 1.00 | 0.800 |"),
            "{out}"
        );
        assert!(
            table_line(&out, "me_jwt").ends_with("| 0.500 | 0.400 |"),
            "{out}"
        );
        assert!(
            table_line(&out, "argon2_raw").ends_with("| — | — |"),
            "{out}"
        );
        assert!(
            out.contains("- healthz target: 0.800 × ceiling (target ≥ 0.75: met)\n"),
            "{out}"
        );

        let out = report(vec![row("healthz", 40_000)?]).render();
        assert!(
            table_line(&out, "healthz").ends_with("| 1.00 | — |"),
            "{out}"
        );
        assert!(
            out.contains("- healthz target: ? × ceiling (target ≥ 0.75: needs the ceiling row)"),
            "{out}"
        );
        let out = report(vec![row("ceiling", 50_000)?]).render();
        assert!(!out.contains("healthz target"), "{out}");
        Ok(())
    }

    #[test]
    fn failed_rows_fill_every_column() {
        let failed = Row {
            name: "ceiling",
            concurrency: "64".into(),
            result: Err(anyhow::anyhow!("binary not found")),
        };
        let out = report(vec![failed]).render();
        assert_eq!(
            table_line(&out, "ceiling"),
            "| ceiling | 64 | failed: binary not found | | | | | | |"
        );
    }

    #[test]
    fn target_lines_are_under_the_table() -> Result<()> {
        let out = report(vec![
            row("healthz", 40_000)?,
            row("verify_cached", 30_000)?,
            row("me_session", 10_000)?,
        ])
        .render();
        assert!(
            out.contains("- verify_cached targets: 0.750 × healthz (target ≥ 0.40: met);"),
            "{out}"
        );
        assert!(
            out.contains(
                "- me_session target: 0.250 × healthz (target ≥ 0.40: **missed**) at 64 connections"
            ),
            "{out}"
        );
        let out = report(vec![row("healthz", 40_000)?]).render();
        assert!(!out.contains("me_session target"), "{out}");
        Ok(())
    }

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(35.31), "35.3");
        assert_eq!(ms(1500), "1.50");
        assert_eq!(sig3(1.0), "1.00");
        assert_eq!(sig3(0.72214), "0.722");
        assert_eq!(sig3(0.000476), "0.000476");
        assert_eq!(sig3(12.345), "12.3");
    }
}
