//! Real outside verifiers (Python PyJWT, Node jose) fetch our JWKS and verify tokens we issued, for each
//! signing algorithm, and reject a tampered one. Dependencies are installed by `.ci/run`; without them the
//! tests say they are skipped, unless `PORTCULLIS_REQUIRE_INTEROP=1` makes that a failure.
//!
//! Plain HTTP clients with nothing but each language's standard library (Python `urllib.request`, Node's
//! global `fetch`) walk the API-key lifecycle the README shows with `curl`: create, verify, spend, roll,
//! revoke, and the refusal of credentials in a URL. They are skipped the same way when `python3` or
//! `node` (18 or later) is missing.

use portcullis_core::jwt::JwsAlg;

use crate::support::{Backend, TestApp};

pub fn interop_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// The token with one claim changed and re-encoded: well-formed, its claims all valid, only its
/// signature wrong, so that a verifier must refuse it for the signature and nothing else.
fn tamper(token: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = serde_json::json!("usr_someone_else");
    let payload = B64.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

async fn verify_with(program: &str, script: &str, label: &str) {
    for alg in [JwsAlg::Es256, JwsAlg::EdDsa, JwsAlg::Rs256] {
        let app = TestApp::spawn_with(Backend::Sqlite, |c| c.jwt_alg = alg).await;
        let t = app.user_with_tokens("interop@example.com").await;
        let token = t["access_token"].as_str().unwrap().to_owned();
        let out = tokio::process::Command::new(program)
            .arg(interop_dir().join(script))
            .args([
                "--jwks-url",
                &app.url("/.well-known/jwks.json"),
                "--issuer",
                &app.base,
                "--audience",
                &app.base,
            ])
            .args(["--token", &token, "--tampered", &tamper(&token)])
            .output()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                skip_or_fail(label, &format!("cannot run {program}: {e}"));
                app.stop().await;
                return;
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) {
            skip_or_fail(label, &stderr);
            app.stop().await;
            return;
        }
        assert!(out.status.success(), "{label} {alg:?}: {stdout}\n{stderr}");
        let result: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
        assert_eq!(result["verified"], true, "{label} {alg:?}: {stdout}");
        assert_eq!(
            result["alg"],
            alg.as_str(),
            "{label} verified with another algorithm: {stdout}"
        );
        assert_eq!(
            result["tampered_rejected"], true,
            "{label} {alg:?}: {stdout}"
        );
        app.stop().await;
    }
}

pub fn skip_or_fail(label: &str, why: &str) {
    if std::env::var("PORTCULLIS_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{label} is required (PORTCULLIS_REQUIRE_INTEROP=1) but unavailable: {why}");
    }
    eprintln!(
        "skipped: {label} unavailable ({}); .ci/run installs it",
        why.trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pyjwt_verifies_our_tokens_and_rejects_tampered_ones() {
    verify_with("python3", "python/verify_jwt.py", "PyJWT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_jose_verifies_our_tokens_and_rejects_tampered_ones() {
    verify_with("node", "node/verify_jwt.mjs", "jose").await;
}

/// An outside scenario exited 0 and printed its last line, "every check passed" (a script that
/// exits 0 half-way through fails here).
pub fn finished(what: &str, status: std::process::ExitStatus, stdout: &str, stderr: &str) {
    assert!(
        status.success(),
        "{what} failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.contains("every check passed")),
        "{what} exited 0 without finishing its scenario:\n{stdout}\n{stderr}"
    );
}

/// What an outside program printed, or `None` when it is not there to run (skipped, or failed under
/// PORTCULLIS_REQUIRE_INTEROP=1): it could not start, or exited 3 (its runtime or library missing).
pub async fn run_outside(
    label: &str,
    mut cmd: tokio::process::Command,
    limit: std::time::Duration,
) -> Option<(std::process::ExitStatus, String, String)> {
    let run = cmd.kill_on_drop(true).output();
    let out = match tokio::time::timeout(limit, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            skip_or_fail(label, &format!("cannot run it: {e}"));
            return None;
        }
        Err(_) => panic!("{label} did not finish within {limit:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(3) {
        skip_or_fail(label, &stderr);
        return None;
    }
    Some((out.status, stdout, stderr))
}

/// Runs an interop API-key client against a fresh server with a root key; it exits 0 when every check of
/// its scenario passed, 1 (saying which check) on the first mismatch, 3 when its runtime is too old.
async fn api_key_client(program: &str, script: &str, label: &str) {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.root_key().await;
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(interop_dir().join(script))
        .args(["--base-url", &app.base, "--root-key", &root])
        .env_remove("PORTCULLIS_BASE_URL")
        .env_remove("PORTCULLIS_ROOT_KEY");
    let Some((status, stdout, stderr)) =
        run_outside(label, cmd, std::time::Duration::from_secs(120)).await
    else {
        app.stop().await;
        return;
    };
    finished(&format!("{label}: {script}"), status, &stdout, &stderr);
    assert!(
        !stdout.contains(&root) && !stderr.contains(&root),
        "{label}: {script} printed the root key"
    );
    app.stop().await;
}

/// schemathesis (pinned) fuzzes every operation of /openapi.json with the root key: no server error,
/// and every status code, content type and body the server answers is one the document lists; the
/// allowances for rules a schema cannot state are in interop/schemathesis/schemathesis.toml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_document_true() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.root_key().await;
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(interop_dir().join("schemathesis/run.py")).args([
        "--base-url",
        &app.base,
        "--root-key",
        &root,
    ]);
    let label = "schemathesis";
    let Some((status, stdout, stderr)) =
        run_outside(label, cmd, std::time::Duration::from_secs(600)).await
    else {
        app.stop().await;
        return;
    };
    let summary = stdout.rsplit("SUMMARY").next().unwrap_or_default();
    assert!(
        status.success(),
        "schemathesis found failures ({status}):\n{stdout}\n{stderr}"
    );
    // A run that tested nothing would also exit 0: every documented operation must have been tried.
    let tested: usize = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        tested >= 30,
        "schemathesis tested {tested} operations:\n{summary}"
    );
    assert!(
        summary.contains(" passed") && !summary.contains("failures"),
        "{summary}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_client_walks_the_api_key_lifecycle() {
    api_key_client("python3", "python/api_keys.py", "python3 (urllib)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_fetch_client_walks_the_api_key_lifecycle() {
    api_key_client("node", "node/api_keys.mjs", "node (fetch)").await;
}

/// Runs an OAuth client library's scenario (`interop/*/oauth_*`) against a fresh server with a root
/// key, on SQLite and (when configured) on PostgreSQL: the code flow through our login and consent forms, the ID token checked against our JWKS,
/// refresh, userinfo, introspection, revocation and client credentials, all through the library.
async fn oauth_client(program: &str, script: &str, extra: &[&str], label: &str) {
    oauth_client_on(Backend::Sqlite, program, script, extra, label).await;
    if let Some(pg) = Backend::postgres() {
        oauth_client_on(pg, program, script, extra, label).await;
    }
}

async fn oauth_client_on(b: Backend, program: &str, script: &str, extra: &[&str], label: &str) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(interop_dir().join(script)).args(extra).args([
        "--base-url",
        &app.base,
        "--root-key",
        &root,
    ]);
    let Some((status, stdout, stderr)) =
        run_outside(label, cmd, std::time::Duration::from_secs(120)).await
    else {
        app.stop().await;
        return;
    };
    finished(&format!("{label}: {script}"), status, &stdout, &stderr);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_6_runs_the_code_flow_refresh_introspection_and_revocation() {
    oauth_client(
        "node",
        "node/oauth_clients.mjs",
        &["--lib", "openid-client"],
        "openid-client 6",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth4webapi_3_runs_the_code_flow_and_validates_the_access_token() {
    oauth_client(
        "node",
        "node/oauth_clients.mjs",
        &["--lib", "oauth4webapi"],
        "oauth4webapi 3",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_runs_the_code_flow_refresh_introspection_and_revocation() {
    oauth_client("python3", "python/oauth_authlib.py", &[], "Authlib").await;
}

/// An RFC 9728 client (oauth4webapi 3) finds Portcullis from a protected resource's 401, gets a
/// token for that resource with RFC 8707 `resource`, and forward auth accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth4webapi_discovers_the_authorization_server_of_a_protected_resource() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        let base = c.issuer.clone().unwrap();
        c.route = vec![portcullis_server::forward_auth::RouteRule {
            path: "/orders/*".into(),
            scopes: vec!["orders:read".into()],
            resource: Some(format!("{base}/orders")),
            ..Default::default()
        }];
    })
    .await;
    let root = app.root_key().await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(interop_dir().join("node/protected_resource.mjs"))
        .args(["--base-url", &app.base, "--root-key", &root]);
    let Some((status, stdout, stderr)) = run_outside(
        "oauth4webapi (RFC 9728)",
        cmd,
        std::time::Duration::from_secs(60),
    )
    .await
    else {
        app.stop().await;
        return;
    };
    finished("protected_resource.mjs", status, &stdout, &stderr);
    app.stop().await;
}

/// Issue 14's outside clients (`interop/node/oauth_advanced.mjs`): oauth4webapi authenticates with
/// private_key_jwt, pushes its request (PAR), binds its tokens with DPoP and uses them at userinfo
/// and `/v1/me`; the npm `dpop` package's proofs are accepted at the token endpoint and
/// `/v1/authorize`; openid-client runs the device flow while the person approves on `/device`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth4webapi_dpop_par_private_key_jwt_and_openid_client_device_flow() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.oauth_device_poll_interval_s = 1).await;
    let root = app.root_key().await;
    let user = app.register("advanced@example.com").await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(interop_dir().join("node/oauth_advanced.mjs"))
        .args(["--base-url", &app.base, "--root-key", &root])
        .args(["--email", "advanced@example.com"])
        .args(["--password", crate::support::PASSWORD])
        .args(["--user-id", user["id"].as_str().unwrap()]);
    let Some((status, stdout, stderr)) = run_outside(
        "oauth4webapi, dpop, openid-client (issue 14)",
        cmd,
        std::time::Duration::from_secs(90),
    )
    .await
    else {
        app.stop().await;
        return;
    };
    finished("oauth_advanced.mjs", status, &stdout, &stderr);
    app.stop().await;
}

/// The PyPI package http-message-signatures signs requests (hmac-sha256 and ed25519, GET and POST
/// with Content-Digest) that we accept, and tampered ones we refuse with the right reason; it also
/// verifies a request signed by portcullis-client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_message_signatures_signs_requests_we_accept_and_verifies_ours() {
    signature_client(
        "python3",
        "python/http_signatures.py",
        "http-message-signatures (PyPI)",
    )
    .await;
}

/// The npm package http-message-signatures: the same, signing only (it has no digest helper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http_message_signatures_signs_requests_we_accept() {
    signature_client(
        "node",
        "node/http_signatures.mjs",
        "http-message-signatures (npm)",
    )
    .await;
}

/// A user with an hmac and an ed25519 signing key, and a request signed by portcullis-client, in a
/// config file for the outside signer.
async fn signature_client(program: &str, script: &str, label: &str) {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{Value, json};
    let app = TestApp::spawn(Backend::Sqlite).await;
    let tokens = app.user_with_tokens("signer@example.com").await;
    let token = tokens["access_token"].as_str().unwrap();
    let create = |body: Value| {
        app.client
            .post(app.url("/v1/signing-keys"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let hmac: Value =
        create(json!({"name": "hmac", "alg": "hmac-sha256", "scopes": ["keys:write"]}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let seed: [u8; 32] = rand_seed();
    let public = portcullis_core::httpsig::keys::SigningKey::ed25519(&seed)
        .unwrap()
        .ed25519_public_key()
        .unwrap();
    let ed: Value = create(json!({"name": "ed", "alg": "ed25519", "public_key": STANDARD.encode(public), "scopes": ["keys:write"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // PKCS#8 v1 of an Ed25519 seed (RFC 8410 §7), as PEM.
    let der = [hex_bytes("302e020100300506032b657004220420"), seed.to_vec()].concat();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    );
    // A request signed by our client crate, for the outside library to verify.
    let signer = portcullis_client::RequestSigner::hmac(
        hmac["keyid"].as_str().unwrap(),
        hmac["secret"].as_str().unwrap(),
    )
    .unwrap();
    let url = reqwest::Url::parse("https://orders.example.test/items?id=7&full=1").unwrap();
    let body = br#"{"qty":2}"#;
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    signer
        .sign_parts("POST", &url, &mut headers, Some(body))
        .unwrap();
    let client_signed = json!({
        "method": "POST",
        "url": url.as_str(),
        "headers": headers.iter().map(|(n, v)| (n.as_str().to_owned(), Value::from(v.to_str().unwrap()))).collect::<serde_json::Map<_, _>>(),
        "body_base64": STANDARD.encode(body),
    });
    let config = json!({
        "base": app.base,
        "hmac": {"keyid": hmac["keyid"], "secret": hmac["secret"]},
        "ed25519": {"keyid": ed["keyid"], "private_pem": pem},
        "client_signed": client_signed,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signatures.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(interop_dir().join(script)).arg(&path);
    let Some((status, stdout, stderr)) =
        run_outside(label, cmd, std::time::Duration::from_secs(60)).await
    else {
        app.stop().await;
        return;
    };
    finished(&format!("{label}: {script}"), status, &stdout, &stderr);
    app.stop().await;
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    portcullis_core::secrets::fill_random(&mut seed).unwrap();
    seed
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
