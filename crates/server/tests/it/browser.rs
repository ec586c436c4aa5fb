//! A real browser on the real pages: `interop/node/browser.mjs` drives the system's Chromium
//! (`/usr/bin/chromium`) through npm `playwright-core` against a fresh server: log in through the form,
//! create an API key and use it, sign another device out, refuse cross-origin form posts, log out.
//! `.ci/run` installs both; without them the test says it is skipped, unless
//! `PORTCULLIS_REQUIRE_INTEROP=1` makes that a failure. Screenshots go to
//! `$CARGO_TARGET_DIR/browser-tests/` (`target/browser-tests/` when it is unset).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{self, Backend, TestApp};

const CHROMIUM: &str = "/usr/bin/chromium";
const EMAIL: &str = "browser@example.com";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn screenshot_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            // A relative target directory is relative to where cargo ran, most likely the root.
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    };
    target.join("browser-tests")
}

fn skip_or_fail(why: &str) {
    if std::env::var("PORTCULLIS_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!(
            "browser tests are required (PORTCULLIS_REQUIRE_INTEROP=1) but cannot run: {}",
            why.trim()
        );
    }
    eprintln!(
        "skipped: browser tests ({}); .ci/run installs chromium and playwright-core",
        why.trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_creates_a_key_signs_out_a_device_refuses_csrf_and_logs_out() {
    let node_dir = repo_root().join("interop/node");
    if !Path::new(CHROMIUM).exists() {
        return skip_or_fail(&format!("no Chromium at {CHROMIUM}"));
    }
    if !node_dir.join("node_modules/playwright-core").is_dir() {
        return skip_or_fail("playwright-core is not installed in interop/node/node_modules");
    }
    let out_dir = screenshot_dir();
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();

    // The operator lets users put `orders:read` on their own keys (the form creates one with it).
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.self_service_scopes = vec!["orders:read".into()];
    })
    .await;
    app.register(EMAIL).await;
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("browser.mjs"))
        .args(["--base-url", &app.base, "--email", EMAIL])
        .args(["--password", support::PASSWORD, "--chromium", CHROMIUM])
        .arg("--out-dir")
        .arg(&out_dir)
        .current_dir(&node_dir)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(180), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            app.stop().await;
            return skip_or_fail(&format!("cannot run node: {e}"));
        }
        Err(_) => panic!("browser.mjs did not finish within 180 s"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        app.stop().await;
        return skip_or_fail(&stderr);
    }
    eprint!("{stdout}");
    eprintln!("browser screenshots: {}", out_dir.display());
    assert!(
        out.status.success(),
        "browser.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.contains("every check passed")),
        "browser.mjs exited 0 without finishing its scenario:\n{stdout}\n{stderr}"
    );
    let login_png = out_dir.join("login.png");
    let size = std::fs::metadata(&login_png).map_or(0, |m| m.len());
    assert!(size > 0, "{} is missing or empty", login_png.display());
    app.stop().await;
}

/// The OAuth code flow in Chromium (`interop/node/browser_oauth.mjs`): the authorization request
/// lands on the login form, the consent page names the client, host and scopes, the browser comes
/// back to the application with the code, which redeems; a second request finds the consent
/// remembered. Screenshots `oauth-login.png`, `oauth-consent.png`, `oauth-callback.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_walks_the_oauth_code_flow_through_login_and_consent() {
    let node_dir = repo_root().join("interop/node");
    if !Path::new(CHROMIUM).exists() {
        return skip_or_fail(&format!("no Chromium at {CHROMIUM}"));
    }
    if !node_dir.join("node_modules/playwright-core").is_dir() {
        return skip_or_fail("playwright-core is not installed in interop/node/node_modules");
    }
    let out_dir = screenshot_dir().join("oauth");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.root_key().await;
    let c = crate::oauth::client(
        &app,
        &root,
        &serde_json::json!({
            "name": "Browser app", "type": "confidential",
            "redirect_uris": [crate::oauth::REDIRECT],
            "scopes": ["openid", "email", "orders:read"],
        }),
    )
    .await;
    app.register("oauth-browser@example.com").await;
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("browser_oauth.mjs"))
        .args([
            "--base-url",
            &app.base,
            "--email",
            "oauth-browser@example.com",
        ])
        .args(["--password", support::PASSWORD, "--chromium", CHROMIUM])
        .args(["--client-id", c["client_id"].as_str().unwrap()])
        .args(["--client-secret", c["client_secret"].as_str().unwrap()])
        .arg("--out-dir")
        .arg(&out_dir)
        .current_dir(&node_dir)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(180), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            app.stop().await;
            return skip_or_fail(&format!("cannot run node: {e}"));
        }
        Err(_) => panic!("browser_oauth.mjs did not finish within 180 s"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        app.stop().await;
        return skip_or_fail(&stderr);
    }
    eprint!("{stdout}");
    assert!(
        out.status.success(),
        "browser_oauth.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("every check passed"), "{stdout}\n{stderr}");
    for png in ["oauth-login.png", "oauth-consent.png", "oauth-callback.png"] {
        let size = std::fs::metadata(out_dir.join(png)).map_or(0, |m| m.len());
        assert!(size > 0, "{png} is missing or empty");
    }
    app.stop().await;
}

/// "Continue with …" in Chromium (`interop/node/browser_upstream.mjs`) with node-oidc-provider as
/// the upstream (`interop/node/upstream_op.mjs`): the login page's button, the provider's login and
/// consent, and /account signed in; then the same from an OAuth client's authorization request,
/// whose code redeems for an ID token naming the user. Screenshots `upstream-provider.png`,
/// `upstream-account.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_continues_with_an_upstream_provider_to_the_account_and_to_an_oauth_client() {
    let node_dir = repo_root().join("interop/node");
    if !Path::new(CHROMIUM).exists() {
        return skip_or_fail(&format!("no Chromium at {CHROMIUM}"));
    }
    if !node_dir.join("node_modules/playwright-core").is_dir()
        || !node_dir.join("node_modules/oidc-provider").is_dir()
    {
        return skip_or_fail(
            "playwright-core and oidc-provider are not installed in interop/node/node_modules",
        );
    }
    let Some(mut op) = crate::upstream::NodeOp::start().await else {
        return;
    };
    let out_dir = screenshot_dir().join("upstream");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let issuer = op.issuer.clone();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        let mut u = crate::upstream::oidc_upstream(
            "node",
            &issuer,
            crate::upstream::NODE_CLIENT,
            crate::upstream::NODE_SECRET,
        );
        u.name = "Node OP".into();
        c.upstream = vec![u];
    })
    .await;
    op.configure(&app.url("/v1/upstream/node/callback")).await;
    let root = app.root_key().await;
    let c = crate::oauth::client(
        &app,
        &root,
        &serde_json::json!({
            "name": "Upstream app", "type": "confidential",
            "redirect_uris": [crate::oauth::REDIRECT],
            "scopes": ["openid", "email"],
        }),
    )
    .await;
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("browser_upstream.mjs"))
        .args([
            "--base-url",
            &app.base,
            "--provider-id",
            "node",
            "--login",
            "grace",
        ])
        .args(["--chromium", CHROMIUM])
        .args(["--client-id", c["client_id"].as_str().unwrap()])
        .args(["--client-secret", c["client_secret"].as_str().unwrap()])
        .arg("--out-dir")
        .arg(&out_dir)
        .current_dir(&node_dir)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(180), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            app.stop().await;
            return skip_or_fail(&format!("cannot run node: {e}"));
        }
        Err(_) => panic!("browser_upstream.mjs did not finish within 180 s"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        app.stop().await;
        return skip_or_fail(&stderr);
    }
    eprint!("{stdout}");
    crate::interop::finished("browser_upstream.mjs", out.status, &stdout, &stderr);
    for png in ["upstream-provider.png", "upstream-account.png"] {
        let size = std::fs::metadata(out_dir.join(png)).map_or(0, |m| m.len());
        assert!(size > 0, "{png} is missing or empty");
    }
    app.stop().await;
}

/// Registration, email verification and password reset in Chromium
/// (`interop/node/browser_accounts.mjs`), with real mail through aiosmtpd: the policy's reasons
/// inline, the mailed links followed and confirmed, the old password refused after the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_registers_verifies_the_email_and_resets_the_password_by_mail() {
    let node_dir = repo_root().join("interop/node");
    if !Path::new(CHROMIUM).exists() {
        return skip_or_fail(&format!("no Chromium at {CHROMIUM}"));
    }
    if !node_dir.join("node_modules/playwright-core").is_dir() {
        return skip_or_fail("playwright-core is not installed in interop/node/node_modules");
    }
    let Some(sink) = crate::mail::SmtpSink::start().await else {
        return;
    };
    let out_dir = screenshot_dir().join("accounts");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let url = sink.url();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.smtp_url = Some(portcullis_server::config::SecretSetting::new(url));
    })
    .await;
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("browser_accounts.mjs"))
        .args(["--base-url", &app.base, "--email", "mailed@example.com"])
        .args([
            "--password",
            support::PASSWORD,
            "--new-password",
            "copper lantern meadow",
        ])
        .args(["--chromium", CHROMIUM])
        .arg("--mail-dir")
        .arg(sink.dir())
        .arg("--out-dir")
        .arg(&out_dir)
        .current_dir(&node_dir)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(180), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            app.stop().await;
            return skip_or_fail(&format!("cannot run node: {e}"));
        }
        Err(_) => panic!("browser_accounts.mjs did not finish within 180 s"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        app.stop().await;
        return skip_or_fail(&stderr);
    }
    eprint!("{stdout}");
    crate::interop::finished("browser_accounts.mjs", out.status, &stdout, &stderr);
    for png in ["register-weak.png", "verify.png", "reset.png"] {
        let size = std::fs::metadata(out_dir.join(png)).map_or(0, |m| m.len());
        assert!(size > 0, "{png} is missing or empty");
    }
    app.stop().await;
}
