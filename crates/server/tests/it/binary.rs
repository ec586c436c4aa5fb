//! The real `portcullis` binary: zero-configuration start, the CLI's commands and exit codes, and the
//! guarantee that logs never contain a password, token or key.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::PASSWORD;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A command for our binary that inherits none of the caller's `PORTCULLIS_*` variables (CI sets
/// some for the tests; the binary must see only what each test gives it).
fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("PORTCULLIS_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    stderr_lines: Vec<String>,
}

impl Server {
    /// Starts `portcullis serve` in `dir` with `args` on a port the system picks, waits for it to
    /// print its URL, and takes the port from there (a port found free and handed back could be
    /// taken by someone else before the child binds it).
    pub(crate) fn start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_raw(dir, &all, env)
    }

    /// `portcullis serve` with exactly `args` (no `--listen` of ours).
    pub(crate) fn start_raw(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = command();
        cmd.current_dir(dir).arg("serve").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let done = line.contains("listening on");
                lines.push(line);
                if done {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server exited with {status}: {lines:?}");
            }
        }
        let base = lines
            .iter()
            .find_map(|l| l.split("listening on ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no start line: {lines:?}"))
            .to_owned();
        assert!(
            !base.ends_with(":0"),
            "the start line names the real port: {base}"
        );
        Server {
            child,
            base,
            stderr_lines: lines,
        }
    }

    /// The first start's root key, from the 0600 file the server named on stderr. The key itself
    /// is never on stderr when stderr is not a terminal (supervisors keep it in their logs).
    pub(crate) fn root_key(&self) -> Option<String> {
        assert!(
            !self.stderr_lines.iter().any(|l| l.contains("pk_live_")),
            "a key reached stderr: {:?}",
            self.stderr_lines
        );
        let path = self.stderr_lines.iter().find_map(|l| {
            l.split("root API key (scope admin) written to ")
                .nth(1)?
                .split(" (mode 0600)")
                .next()
                .map(std::path::PathBuf::from)
        })?;
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        Some(std::fs::read_to_string(&path).ok()?.trim().to_owned())
    }

    /// `kill -9`: no shutdown, no flush.
    pub(crate) fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap()
    }

    pub(crate) fn stop(mut self) {
        self.terminate();
    }

    /// SIGTERM, then waits (at most 10 s, then SIGKILL) for the process to exit.
    pub(crate) fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn run(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = command()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_serve_creates_a_private_data_folder_and_prints_a_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let data = dir.path().join("portcullis-data");
    #[cfg(unix)]
    {
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("master.key")), 0o600);
        assert_eq!(mode(&data.join("portcullis.db")), 0o600);
    }
    let root = server.root_key().expect("a root key on first start");
    assert!(root.starts_with("pk_live_"));
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/admin/v1/users", server.base))
        .header("x-api-key", &root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    // A second start on the same store prints no new key.
    let again = Server::start(dir.path(), &[], &[]);
    assert!(again.root_key().is_none());
    again.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_passwords_tokens_or_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[],
        &[("RUST_LOG", "trace,hyper=info,h2=info,tower=info")],
    );
    let root = server.root_key().unwrap();
    let c = reqwest::Client::new();
    let base = server.base.clone();
    // Every step must do what it is for, or its secret would go untested: each status is checked.
    async fn step(r: reqwest::RequestBuilder, want: u16, what: &str) -> Value {
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{what}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
    let register = json!({"email": "leak@example.com", "password": PASSWORD});
    step(
        c.post(format!("{base}/v1/users")).json(&register),
        201,
        "register",
    )
    .await;
    let wrong = "a wrong password 9876";
    step(
        c.post(format!("{base}/v1/auth/login"))
            .json(&json!({"email": "leak@example.com", "password": wrong})),
        401,
        "wrong password",
    )
    .await;
    let login = json!({"email": "leak@example.com", "password": PASSWORD});
    let t = step(
        c.post(format!("{base}/v1/auth/login")).json(&login),
        200,
        "login",
    )
    .await;
    let t2 = step(
        c.post(format!("{base}/v1/auth/refresh"))
            .json(&json!({"refresh_token": t["refresh_token"]})),
        200,
        "refresh",
    )
    .await;
    step(
        c.post(format!("{base}/v1/auth/refresh"))
            .json(&json!({"refresh_token": t["refresh_token"]})),
        401,
        "reuse",
    )
    .await;
    // Reuse ended that login; a fresh one for what follows.
    let t3 = step(
        c.post(format!("{base}/v1/auth/login")).json(&login),
        200,
        "login again",
    )
    .await;
    let access = t3["access_token"].as_str().unwrap().to_owned();
    step(
        c.get(format!("{base}/v1/me")).bearer_auth(&access),
        200,
        "me",
    )
    .await;
    step(
        c.get(format!("{base}/v1/me?api_key={root}")),
        400,
        "key in the URL",
    )
    .await;
    step(
        c.get(format!("{base}/admin/v1/audit"))
            .header("x-api-key", &root),
        200,
        "audit",
    )
    .await;
    // A browser session: its cookie token and its CSRF token.
    let r = c
        .post(format!("{base}/v1/sessions"))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "session");
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let session_token = set_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("__Host-portcullis=")
        .to_owned();
    assert!(session_token.starts_with("pcs_"), "{set_cookie}");
    let session: Value = r.json().await.unwrap();
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    step(
        c.get(format!("{base}/v1/sessions"))
            .header("cookie", format!("__Host-portcullis={session_token}")),
        200,
        "session list",
    )
    .await;
    // An imported hash.
    let imported_hash = bcrypt::hash("an imported passphrase", 4).unwrap();
    step(
        c.post(format!("{base}/admin/v1/users/import"))
            .header("x-api-key", &root)
            .json(&json!({"email": "old@example.com", "password_hash": imported_hash})),
        201,
        "import",
    )
    .await;
    step(
        c.post(format!("{base}/v1/auth/login"))
            .json(&json!({"email": "old@example.com", "password": "an imported passphrase"})),
        200,
        "login with the imported hash (upgrades it)",
    )
    .await;
    // API keys: created, verified, rolled, used in a URL by mistake, revoked.
    let customer = step(
        c.post(format!("{base}/v1/keys"))
            .header("x-api-key", &root)
            .json(&json!({"name": "customer", "scopes": ["orders:read"], "remaining": 5})),
        201,
        "customer key",
    )
    .await;
    let verifier = step(
        c.post(format!("{base}/v1/keys"))
            .header("x-api-key", &root)
            .json(&json!({"name": "verifier", "scopes": ["keys:verify"]})),
        201,
        "verifier key",
    )
    .await;
    let customer_key = customer["key"].as_str().unwrap().to_owned();
    let verifier_key = verifier["key"].as_str().unwrap().to_owned();
    for (key, code) in [
        (customer_key.as_str(), "VALID"),
        ("pk_live_made_up", "MALFORMED"),
    ] {
        let v = step(
            c.post(format!("{base}/v1/keys/verify"))
                .header("x-api-key", &verifier_key)
                .json(&json!({"key": key})),
            200,
            "verify",
        )
        .await;
        assert_eq!(v["code"], code);
    }
    let rolled = step(
        c.post(format!(
            "{base}/v1/keys/{}/roll",
            customer["id"].as_str().unwrap()
        ))
        .header("x-api-key", &root)
        .json(&json!({"grace_period_s": 60})),
        201,
        "roll",
    )
    .await;
    let rolled_key = rolled["key"].as_str().unwrap().to_owned();
    step(
        c.get(format!("{base}/v1/keys?token={rolled_key}")),
        400,
        "key in a query",
    )
    .await;
    step(
        c.delete(format!("{base}/v1/keys/{}", rolled["id"].as_str().unwrap()))
            .header("x-api-key", &root),
        204,
        "revoke",
    )
    .await;
    // OAuth: a client's secret, a code through the login and consent forms, the tokens it redeems
    // for, a refresh, introspection and revocation, a client-credentials token, an opaque token.
    let admin = |path: &str, body: Value| {
        c.post(format!("{base}{path}"))
            .header("x-api-key", &root)
            .json(&body)
    };
    let web = step(
        admin(
            "/admin/v1/clients",
            json!({"name": "leaky app", "type": "confidential", "redirect_uris": [crate::oauth::REDIRECT],
                   "scopes": ["openid", "offline_access", "email"]}),
        ),
        201,
        "register an OAuth client",
    )
    .await;
    let machine = step(
        admin(
            "/admin/v1/clients",
            json!({"name": "leaky machine", "type": "confidential", "grant_types": ["client_credentials"],
                   "scopes": ["reports:read"], "access_token_format": "opaque"}),
        ),
        201,
        "register an opaque-token client",
    )
    .await;
    let (web_id, web_secret) = (
        web["client_id"].as_str().unwrap().to_owned(),
        web["client_secret"].as_str().unwrap().to_owned(),
    );
    let mut browser = crate::oauth::Browser {
        http: crate::oauth::no_redirects(),
        cookie: None,
        base: base.clone(),
    };
    let (verifier, challenge) = crate::oauth::pkce();
    let r = browser
        .get(&crate::oauth::authorize_url(
            &web_id,
            "openid offline_access email",
            &challenge,
            "st",
            "nonce-1",
        ))
        .await;
    let login = reqwest::Url::parse(&format!(
        "{base}{}",
        r.headers()["location"].to_str().unwrap()
    ))
    .unwrap();
    let return_to = login
        .query_pairs()
        .find(|(k, _)| k == "return_to")
        .unwrap()
        .1
        .into_owned();
    let page = browser
        .log_in("leak@example.com", &return_to)
        .await
        .text()
        .await
        .unwrap();
    let field = |name: &str| {
        let at = page.find(&format!("name=\"{name}\" value=\"")).unwrap() + name.len() + 15;
        page[at..at + page[at..].find('"').unwrap()]
            .replace("&#x2f;", "/")
            .replace("&amp;", "&")
    };
    let r = browser
        .post(
            "/consent",
            &[
                ("csrf_token", &field("csrf_token")),
                ("request", &field("request")),
                ("decision", "approve"),
            ],
        )
        .await;
    let back = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let oauth_session = browser.cookie.clone().unwrap();
    let oauth_session = oauth_session.split_once('=').unwrap().1.to_owned();
    let token_at = |form: Vec<(&str, String)>, id: &str, secret: &str| {
        c.post(format!("{base}/oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&form)
    };
    let ot = step(
        token_at(
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", code.clone()),
                ("redirect_uri", crate::oauth::REDIRECT.into()),
                ("code_verifier", verifier.clone()),
            ],
            &web_id,
            &web_secret,
        ),
        200,
        "redeem the code",
    )
    .await;
    let ot2 = step(
        token_at(
            vec![
                ("grant_type", "refresh_token".into()),
                (
                    "refresh_token",
                    ot["refresh_token"].as_str().unwrap().into(),
                ),
            ],
            &web_id,
            &web_secret,
        ),
        200,
        "refresh through OAuth",
    )
    .await;
    step(
        token_at(
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", code.clone()),
            ],
            &web_id,
            "pcs_a_wrong_secret_0123456789",
        ),
        401,
        "a wrong client secret",
    )
    .await;
    step(
        c.post(format!("{base}/oauth2/introspect"))
            .basic_auth(&web_id, Some(&web_secret))
            .form(&[("token", ot2["access_token"].as_str().unwrap())]),
        200,
        "introspect",
    )
    .await;
    step(
        c.post(format!("{base}/oauth2/revoke"))
            .basic_auth(&web_id, Some(&web_secret))
            .form(&[("token", ot2["refresh_token"].as_str().unwrap())]),
        200,
        "revoke",
    )
    .await;
    step(
        token_at(
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", code.clone()),
                ("redirect_uri", crate::oauth::REDIRECT.into()),
                ("code_verifier", verifier.clone()),
            ],
            &web_id,
            &web_secret,
        ),
        400,
        "replay the code",
    )
    .await;
    let (m_id, m_secret) = (
        machine["client_id"].as_str().unwrap().to_owned(),
        machine["client_secret"].as_str().unwrap().to_owned(),
    );
    let opaque = step(
        token_at(
            vec![("grant_type", "client_credentials".into())],
            &m_id,
            &m_secret,
        ),
        200,
        "an opaque client-credentials token",
    )
    .await;
    let rotated = step(
        c.post(format!("{base}/admin/v1/clients/{m_id}/secret"))
            .header("x-api-key", &root),
        201,
        "rotate a client secret",
    )
    .await;
    let oauth_in_clear: Vec<String> = vec![
        web_secret.clone(),
        m_secret.clone(),
        rotated["client_secret"].as_str().unwrap().to_owned(),
        code.clone(),
        verifier.clone(),
        oauth_session,
        ot["refresh_token"].as_str().unwrap().to_owned(),
        ot2["refresh_token"].as_str().unwrap().to_owned(),
        opaque["access_token"].as_str().unwrap().to_owned(),
    ];
    let oauth_logged_only: Vec<String> = vec![
        ot["access_token"].as_str().unwrap().to_owned(),
        ot["id_token"].as_str().unwrap().to_owned(),
        ot2["access_token"].as_str().unwrap().to_owned(),
    ];
    let new_password = "another fine passphrase";
    step(
        c.post(format!("{base}/v1/me/password"))
            .bearer_auth(&access)
            .json(&json!({"current_password": PASSWORD, "new_password": new_password})),
        204,
        "password change",
    )
    .await;
    // With no smtp_url, mail is only logged: never with its link.
    step(
        c.post(format!("{base}/v1/password-reset"))
            .json(&json!({"email": "leak@example.com"})),
        202,
        "password reset",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    let logs = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(
        logs.contains("Reset your password") && logs.contains("Verify your email address"),
        "the log-only mailer logged both messages: {logs}"
    );
    for link in ["pcv_", "pcr_", "?token="] {
        assert!(
            !logs.contains(link),
            "an emailed link reached the logs ({link})"
        );
    }
    assert!(
        logs.lines().count() > 5,
        "trace logging produced lines: {logs}"
    );
    let master = std::fs::read_to_string(dir.path().join("portcullis-data/master.key")).unwrap();
    let refresh_tokens = [
        t["refresh_token"].as_str().unwrap(),
        t2["refresh_token"].as_str().unwrap(),
        t3["refresh_token"].as_str().unwrap(),
    ];
    let api_keys = [root.as_str(), &customer_key, &verifier_key, &rolled_key];
    let mut secrets = vec![
        PASSWORD,
        wrong,
        new_password,
        "an imported passphrase",
        imported_hash.as_str(),
        t["access_token"].as_str().unwrap(),
        t2["access_token"].as_str().unwrap(),
        &access,
        master.trim(),
        &session_token,
        &csrf,
    ];
    secrets.extend(refresh_tokens);
    secrets.extend(api_keys);
    secrets.extend(oauth_in_clear.iter().map(String::as_str));
    secrets.extend(oauth_logged_only.iter().map(String::as_str));
    for secret in &secrets {
        assert!(
            secret.len() >= 16,
            "a secret this short would test little: {secret:?}"
        );
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {}…",
            &secret[..8]
        );
        // Also the distinctive middle of each token and key, in case it was logged cut or escaped
        // (passphrases are words, whose pieces the logs may hold for other reasons).
        if !secret.contains(' ') {
            let mid = &secret[secret.len() / 3..secret.len() / 3 + 8];
            assert!(
                !logs.contains(mid),
                "part of a secret reached the logs: {mid:?}"
            );
        }
    }
    assert!(
        !logs.contains("$argon2id$") && !logs.contains("$2b$"),
        "password hashes are not logged"
    );
    // The store holds hashes only: no token, session or key appears in the database files either.
    // The one copy in clear is the first start's root key, in its own 0600 file, for the operator
    // to take away.
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir.path().join("portcullis-data")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "root-key.txt") {
            assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), root);
            continue;
        }
        if path.file_name().is_some_and(|n| n == "master.key") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        let others = [
            session_token.as_str(),
            csrf.as_str(),
            master.trim(),
            PASSWORD,
        ];
        let oauth: Vec<&str> = oauth_in_clear.iter().map(String::as_str).collect();
        let stored_in_clear = refresh_tokens
            .iter()
            .chain(&api_keys)
            .chain(&others)
            .chain(&oauth);
        for secret in stored_in_clear {
            let tail = &secret.as_bytes()[secret.len() / 2..];
            assert!(
                !bytes.windows(tail.len()).any(|w| w == tail),
                "{} holds a secret in clear ({}…)",
                path.display(),
                &secret[..6]
            );
        }
    }
    assert!(
        scanned > 10_000,
        "the database files were read ({scanned} bytes)"
    );
}

#[test]
fn configuration_errors_exit_2_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "listen = \"127.0.0.1:1\"\nrefresh_token_tll_s = 5\n",
    )
    .unwrap();
    let out = run(dir.path(), &["serve", "--config", "bad.toml"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refresh_token_tll_s"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Route rules are checked at start: a bad one is named by its number, an unknown key in one too.
    for (rules, needle) in [
        (
            "[[route]]\npath = \"/ok/*\"\n[[route]]\npath = \"orders/*\"\n",
            "route #2",
        ),
        (
            "[[route]]\npath = \"/x\"\nscopes = [\"has space\"]\n",
            "route #1",
        ),
        ("[[route]]\npath = \"/x\"\nscope = [\"a\"]\n", "scope"),
        ("default_policy = \"allow\"\n", "default_policy"),
    ] {
        std::fs::write(dir.path().join("routes.toml"), rules).unwrap();
        let out = run(dir.path(), &["serve", "--config", "routes.toml"], None);
        assert_eq!(out.status.code(), Some(2), "{rules}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{rules}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }

    let out = run(dir.path(), &["serve", "--listen", "not-an-address"], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(dir.path(), &["frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = run(dir.path(), &["serve", "--database-url", "mysql://x"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["migrate"])
        .env("PORTCULLIS_JWT_LEEWAY_S", "600")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "environment values are validated too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_users_root_keys_and_rotates_signing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["migrate"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(dir.path(), &["admin", "root-key", "create"], None);
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert_eq!(key.lines().count(), 1);
    assert!(key.trim().starts_with("pk_live_"));
    let out = run(
        dir.path(),
        &["user", "create", "--email", "root@example.com", "--admin"],
        Some("an admin passphrase\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("usr_"));
    let out = run(
        dir.path(),
        &["user", "create", "--email", "weak@example.com"],
        Some("password\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        dir.path(),
        &["user", "create", "--email", "root@example.com"],
        Some("another passphrase\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let out = run(dir.path(), &["signing-keys", "list"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        0,
        "no key before the first start"
    );
    let out = run(dir.path(), &["signing-keys", "rotate"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(dir.path(), &["signing-keys", "rotate"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rotated["state"], "next");
    // The first rotation on an empty store also made the initial keys (ES256 for access tokens,
    // RS256 for ID tokens); each rotation made a next access-token key.
    let out = run(dir.path(), &["signing-keys", "list"], None);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(listed.lines().count(), 4, "{listed}");
    // An emergency revocation of the signing key: a replacement signs at once.
    let keys: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let signing = keys
        .iter()
        .find(|k| k["state"] == "current" && k["alg"] == "ES256")
        .unwrap();
    let kid = signing["kid"].as_str().unwrap();
    let out = run(dir.path(), &["signing-keys", "revoke", kid], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replacement: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replacement["state"], "current");
    assert_ne!(replacement["kid"], kid);
    let out = run(dir.path(), &["signing-keys", "revoke", kid], None);
    assert_eq!(out.status.code(), Some(1), "a revoked key is gone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live signing key"));

    // The root key the CLI made works, with scope admin.
    let server = Server::start(dir.path(), &[], &[]);
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/admin/v1/users", server.base))
        .header("x-api-key", key.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let users: Value = r.json().await.unwrap();
    assert_eq!(users["users"][0]["email"], "root@example.com");
    let r = c
        .get(format!("{}/admin/v1/audit", server.base))
        .header("x-api-key", key.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_user_from_the_cli_can_use_admin_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        run(
            dir.path(),
            &["user", "create", "--email", "boss@example.com", "--admin"],
            Some("chief of the whole place\n")
        )
        .status
        .success()
    );
    let server = Server::start(dir.path(), &[], &[]);
    assert!(
        server.root_key().is_none(),
        "the store is not empty: no root key is printed"
    );
    let c = reqwest::Client::new();
    let t: Value = c
        .post(format!("{}/v1/auth/login", server.base))
        .json(&json!({"email": "boss@example.com", "password": "chief of the whole place"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .get(format!("{}/admin/v1/users", server.base))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = c
        .get(format!("{}/v1/me", server.base))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["roles"], json!(["admin"]));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_binary_serves_from_postgresql() {
    let Some(url) = portcullis_testkit::database_url() else {
        return;
    };
    // A schema of its own (through libpq's `options`), so runs with other master keys never meet.
    let schema = portcullis_testkit::PgSchema::create(&url, "bin").await;
    // A password in the query string (trust auth ignores it) must never reach the log.
    let url = portcullis_testkit::with_param(
        &schema.url_with_search_path(),
        "password=hunter2-never-logged",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["migrate", "--database-url", &url], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(dir.path(), &["--database-url", &url], &[]);
    let c = reqwest::Client::new();
    let email = format!("pg{}@example.com", crate::support::uuid_hex());
    let r = c
        .post(format!("{}/v1/users", server.base))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t: Value = c
        .post(format!("{}/v1/auth/login", server.base))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = c
        .post(format!("{}/v1/auth/refresh", server.base))
        .json(&json!({"refresh_token": t["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    let logs = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(
        logs.contains("password=[redacted]"),
        "the start line names the store"
    );
    assert!(
        !logs.contains("hunter2"),
        "a database password reached the log"
    );
    schema.drop_now().await;
}

#[cfg(unix)]
#[test]
fn an_open_data_folder_is_closed_and_a_readable_master_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("portcullis-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    assert_eq!(mode(&data), 0o700, "the existing folder's mode was fixed");
    server.stop();
    // A master key others can read is no secret: refused, with what to do.
    std::fs::set_permissions(
        data.join("master.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by others") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// Flag over environment over file over default, the file named by `--config` or
/// `PORTCULLIS_CONFIG`, and `--data-dir` / `--issuer` doing what they say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_then_environment_then_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("portcullis.toml"),
        "access_token_ttl_s = 600\nissuer = \"http://from-the-file.example\"\nregistration = \"closed\"\n",
    )
    .unwrap();
    let c = reqwest::Client::new();
    let issuer_of = |server: &Server| {
        server
            .stderr_lines
            .iter()
            .find_map(|l| l.split("(issuer ").nth(1))
            .map(|i| i.trim_end_matches(')').to_owned())
            .unwrap()
    };
    // The file alone, named by PORTCULLIS_CONFIG: its issuer and its closed registration.
    let server = Server::start(
        dir.path(),
        &["--data-dir", "elsewhere"],
        &[("PORTCULLIS_CONFIG", "portcullis.toml")],
    );
    assert_eq!(issuer_of(&server), "http://from-the-file.example");
    let r = c
        .post(format!("{}/v1/users", server.base))
        .json(&json!({"email": "cfg@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "registration closed by the file");
    assert!(
        dir.path().join("elsewhere/portcullis.db").exists(),
        "--data-dir is where the store is"
    );
    assert!(!dir.path().join("portcullis-data").exists());
    server.stop();
    // The environment beats the file; a flag beats the environment.
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            "portcullis.toml",
            "--data-dir",
            "elsewhere",
            "--issuer",
            "http://from-the-flag.example",
        ],
        &[
            ("PORTCULLIS_ISSUER", "http://from-the-env.example"),
            ("PORTCULLIS_REGISTRATION", "open"),
            ("PORTCULLIS_ACCESS_TOKEN_TTL_S", "700"),
        ],
    );
    assert_eq!(issuer_of(&server), "http://from-the-flag.example");
    let r = c
        .post(format!("{}/v1/users", server.base))
        .json(&json!({"email": "cfg@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "registration opened by the environment");
    let t: Value = c
        .post(format!("{}/v1/auth/login", server.base))
        .json(&json!({"email": "cfg@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        t["expires_in"], 700,
        "the environment's lifetime, not the file's"
    );
    server.stop();
    let server = Server::start(
        dir.path(),
        &["--config", "portcullis.toml", "--data-dir", "elsewhere"],
        &[("PORTCULLIS_ISSUER", "http://from-the-env.example")],
    );
    assert_eq!(issuer_of(&server), "http://from-the-env.example");
    server.stop();
}

#[test]
fn the_default_address_is_loopback_8787_and_runtime_failures_exit_1_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    // Hold a port so that serving there must fail at run time (not a configuration error).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let out = run(dir.path(), &["serve", "--listen", &taken], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {taken}")) && err.contains("--listen"),
        "{err}"
    );
    // With no --listen: 127.0.0.1:8787. Whether that port is free here or not, the one line the
    // binary prints names it.
    let mut child = command()
        .current_dir(dir.path())
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut named = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("listening on http://127.0.0.1:8787")
            || line.contains("cannot listen on 127.0.0.1:8787")
        {
            named = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(named, "the default address was not 127.0.0.1:8787");
}

/// `serve` alone, on an empty PostgreSQL schema: it migrates by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_migrates_a_fresh_postgresql_schema_by_itself() {
    let Some(url) = portcullis_testkit::database_url() else {
        return;
    };
    let schema = portcullis_testkit::PgSchema::create(&url, "fresh").await;
    let url_in_schema = schema.url_with_search_path();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--database-url", &url_in_schema], &[]);
    let root = server.root_key().expect("a first start on an empty schema");
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/admin/v1/users", server.base))
        .header("x-api-key", root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    let mut conn = schema.connect().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(tables >= 6, "{tables} tables after serve");
    schema.drop_now().await;
}

/// A kid is base64url, so one in 64 begins with `-`: the CLI takes it as the kid, not as an option.
#[test]
fn a_kid_that_begins_with_a_hyphen_is_a_kid() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["signing-keys", "revoke", "-OnotAKid"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no live signing key -OnotAKid"), "{stderr}");
}
