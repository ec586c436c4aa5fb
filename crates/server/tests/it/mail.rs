//! A real SMTP server for the tests: `interop/python/smtp_sink.py` (aiosmtpd) on a free loopback port,
//! writing every message it receives to a folder, where the tests read it and follow its link.

use std::time::Duration;

use serde_json::Value;

use crate::interop::{interop_dir, skip_or_fail};

pub struct SmtpSink {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl SmtpSink {
    /// Starts the server; `None` (the test skipped) when python3 or aiosmtpd is missing, unless
    /// `PORTCULLIS_REQUIRE_INTEROP=1` makes that a failure.
    pub async fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = match tokio::process::Command::new("python3")
            .arg(interop_dir().join("python/smtp_sink.py"))
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                skip_or_fail(
                    "SMTP server (aiosmtpd)",
                    &format!("cannot run python3: {e}"),
                );
                return None;
            }
        };
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
            Ok(Ok(Some(line))) if line == "ready" => {}
            _ => {
                let _ = child.start_kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut err))
                            .await;
                }
                skip_or_fail("SMTP server (aiosmtpd)", &err);
                return None;
            }
        }
        Some(Self {
            _child: child,
            dir,
            port,
        })
    }

    /// Where the messages are written (`<n>.json`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far (`to`, `from`, `subject`, `text`), in order.
    pub fn messages(&self) -> Vec<Value> {
        let mut found: Vec<(u64, Value)> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| {
                let path = e.ok()?.path();
                if path.extension()? != "json" {
                    return None;
                }
                let n = path.file_stem()?.to_str()?.parse().ok()?;
                Some((
                    n,
                    serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?,
                ))
            })
            .collect();
        found.sort_by_key(|(n, _)| *n);
        found.into_iter().map(|(_, v)| v).collect()
    }

    pub fn messages_to(&self, to: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| {
                m["to"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|t| t == to))
            })
            .collect()
    }

    /// Waits (up to 15 s) for the `n`-th message (1-based) to `to`.
    pub async fn wait_for(&self, to: &str, n: usize) -> Value {
        for _ in 0..150 {
            if let Some(m) = self.messages_to(to).into_iter().nth(n - 1) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no message #{n} to {to} arrived; got {:?}", self.messages());
    }
}

/// The link to `path` (`/verify`, `/reset`) in a message's text, and its token.
pub fn link_in(message: &Value, path: &str) -> (String, String) {
    let text = message["text"].as_str().unwrap();
    let link = text
        .split_whitespace()
        .find(|w| w.starts_with("http") && w.contains(&format!("{path}?token=")))
        .unwrap_or_else(|| panic!("no {path} link in {text:?}"))
        .to_owned();
    let token = link.split_once("?token=").unwrap().1.to_owned();
    (link, token)
}
