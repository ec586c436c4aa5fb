//! Real gateways in front of a real upstream, with the configs the repo ships (`examples/nginx`,
//! `examples/caddy`, the files the README documents), ports rewritten to free loopback ones: Debian's
//! nginx (`auth_request`) and Caddy (`forward_auth`) ask `/v1/authorize`, and the upstream, which
//! echoes what it received, shows the identity headers that reached it. Skipped, saying so, where
//! the binaries are missing; `.ci/run` installs both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Client, RequestBuilder, StatusCode, redirect};
use serde_json::{Value, json};

use crate::forward_auth::{orders_client, resource_token, rules};
use crate::on_both_stores;
use crate::support::{Backend, TestApp};

on_both_stores!(
    nginx_auth_request_protects_an_upstream,
    caddy_forward_auth_protects_an_upstream,
    the_mcp_sdk_authorizes_itself_for_an_mcp_server_behind_nginx,
    the_mcp_sdk_authorizes_itself_as_a_metadata_document_client,
);

pub(crate) fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The upstream API: answers every request with the method, URI and headers it received.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(
        |method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
            let mut seen = serde_json::Map::new();
            for (name, value) in &headers {
                seen.insert(
                    name.as_str().to_owned(),
                    Value::String(value.to_str().unwrap_or("?").to_owned()),
                );
            }
            axum::Json(json!({"method": method.as_str(), "uri": uri.to_string(), "headers": seen}))
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A gateway process, stopped when dropped.
pub(crate) struct Gateway {
    child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Replaces the server block of an nginx started by [`nginx_serving`] and reloads it (SIGHUP:
    /// new workers take the new block, old ones finish what they have), then waits for the reload.
    pub(crate) async fn reload_nginx(&self, server: &str) {
        let port = self.base.rsplit(':').next().unwrap();
        let server = server.replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{port};"),
        );
        std::fs::write(self._dir.path().join("portcullis.conf"), server).unwrap();
        let log = self._dir.path().join("error.log");
        let before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        // nginx logs "reconfiguring" when it has read the new block; its old workers then stop
        // taking requests.
        for _ in 0..100 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text
                .get(before..)
                .is_some_and(|t| t.contains("start worker process"))
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nginx did not reload: {}", self.log_tail());
    }

    /// The last lines of nginx's error log (for a failure's message).
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("[info]") && !l.contains("[notice]"))
            .collect();
        let mut kinds: Vec<String> = lines
            .iter()
            .map(|l| {
                l.split(": ")
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(": ")
                    .chars()
                    .take(160)
                    .collect()
            })
            .collect();
        kinds.dedup();
        kinds[..kinds.len().min(12)].join("\n")
    }

    async fn wait_ready(mut self, port: u16, log: &Path) -> Self {
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the gateway exited with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway did not listen on {port}");
    }
}

/// The shipped config with its placeholder addresses pointed at this test's processes.
fn rewritten(file: &str, portcullis: &str, upstream: SocketAddr) -> String {
    std::fs::read_to_string(examples().join(file))
        .unwrap()
        .replace("127.0.0.1:8787", portcullis)
        .replace("127.0.0.1:3000", &upstream.to_string())
}

async fn nginx(portcullis: &str, upstream: SocketAddr) -> Option<Gateway> {
    nginx_on(free_port(), portcullis, upstream).await
}

async fn nginx_on(port: u16, portcullis: &str, upstream: SocketAddr) -> Option<Gateway> {
    let server = rewritten("nginx/portcullis.conf", portcullis, upstream);
    nginx_serving(port, &server).await
}

/// nginx on `port` with one server block (`listen 127.0.0.1:8080;` in it is moved to `port`).
pub(crate) async fn nginx_serving(port: u16, server: &str) -> Option<Gateway> {
    let Some(bin) = binary("nginx") else {
        eprintln!("skipped: nginx is not installed (apt-get install nginx)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = server.replace(
        "listen 127.0.0.1:8080;",
        &format!("listen 127.0.0.1:{port};"),
    );
    std::fs::write(dir.path().join("portcullis.conf"), server).unwrap();
    let d = dir.path().display();
    // The smallest main file around the shipped server block: no root, no system paths.
    let main = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           include {d}/portcullis.conf;\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let log = dir.path().join("error.log");
    let child = Command::new(bin)
        .args([
            "-p",
            &d.to_string(),
            "-c",
            &format!("{d}/nginx.conf"),
            "-e",
            &format!("{d}/error.log"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = Gateway {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    Some(g.wait_ready(port, &log).await)
}

async fn caddy(portcullis: &str, upstream: SocketAddr) -> Option<Gateway> {
    let Some(bin) = binary("caddy") else {
        eprintln!("skipped: caddy is not installed (apt-get install caddy)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = rewritten("caddy/Caddyfile", portcullis, upstream)
        .replace("api.example.com {", &format!("http://127.0.0.1:{port} {{"));
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, file).unwrap();
    let log = dir.path().join("caddy.log");
    let child = Command::new(bin)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let g = Gateway {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    Some(g.wait_ready(port, &log).await)
}

/// What the upstream saw, or the gateway's refusal.
struct Seen {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Seen {
    fn upstream_header(&self, name: &str) -> Option<&str> {
        self.body["headers"][name].as_str()
    }
}

async fn send(r: RequestBuilder) -> Seen {
    let r = r.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    Seen {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// The checks of the issue, through whichever gateway is at `base`.
async fn through(app: &TestApp, base: &str) {
    let http = Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| http.get(format!("{base}{path}"));
    let root = app.root_key().await;

    // No credential: 401 with the challenge, and the upstream is never reached.
    let s = send(get("/orders/1")).await;
    assert_eq!(s.status, StatusCode::UNAUTHORIZED, "{:?}", s.body);
    let challenge = s.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    assert!(s.body.get("headers").is_none());

    // RFC 9728: the metadata the challenge names is served through the gateway.
    let s = send(get("/.well-known/oauth-protected-resource/orders")).await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    assert_eq!(s.body["authorization_servers"], json!([app.base]));

    // Portcullis's own pages and metadata on the gateway's host reach Portcullis, not the API.
    for (path, kind) in [
        ("/assets/portcullis.css", "text/css"),
        ("/device", "text/html"),
        ("/login", "text/html"),
        (
            "/.well-known/oauth-authorization-server",
            "application/json",
        ),
        ("/.well-known/jwks.json", "application/json"),
    ] {
        let r = get(path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }

    // An API key.
    let r = app
        .post_with_key(
            "/v1/keys",
            &root,
            Some(&json!({"name": "gw", "scopes": ["orders:read"]})),
        )
        .await;
    let k: Value = r.json().await.unwrap();
    let (key, kid) = (k["key"].as_str().unwrap(), k["id"].as_str().unwrap());
    let s = send(get("/orders/1?x=1").header("x-api-key", key)).await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    assert_eq!(s.body["uri"], "/orders/1?x=1");
    assert_eq!(s.upstream_header("x-auth-method"), Some("api_key"));
    assert_eq!(s.upstream_header("x-auth-key-id"), Some(kid));
    assert_eq!(s.upstream_header("x-auth-subject"), Some(kid));
    assert_eq!(s.upstream_header("x-auth-scopes"), Some("orders:read"));
    // (Caddy 2.6 copies a header Portcullis did not send as empty; nginx sends none.)
    assert!(
        s.upstream_header("x-auth-client-id")
            .unwrap_or_default()
            .is_empty(),
        "{:?}",
        s.body
    );

    // The user's own JWT (our audience, so on a route without a resource).
    let email = format!("gw{}@example.com", crate::support::uuid_hex());
    let user = app.user_with_tokens(&email).await;
    let jwt = user["access_token"].as_str().unwrap();
    let sub = crate::support::jwt_claims(jwt)["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = send(get("/profile").bearer_auth(jwt)).await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    assert_eq!(s.upstream_header("x-auth-method"), Some("jwt"));
    assert_eq!(s.upstream_header("x-auth-subject"), Some(sub.as_str()));

    // OAuth tokens for the orders API: a JWT and an opaque one.
    for (format, method) in [("jwt", "jwt"), ("opaque", "oauth")] {
        let (id, secret) = orders_client(app, &root, format).await;
        let t = resource_token(app, &id, &secret, "orders:read").await;
        let s = send(get("/orders/2").bearer_auth(&t)).await;
        assert_eq!(s.status, StatusCode::OK, "{format}: {:?}", s.body);
        assert_eq!(s.upstream_header("x-auth-method"), Some(method));
        assert_eq!(s.upstream_header("x-auth-client-id"), Some(id.as_str()));
        // The scope rule: writing needs orders:write.
        let s = send(http.post(format!("{base}/orders/2")).bearer_auth(&t)).await;
        assert_eq!(s.status, StatusCode::FORBIDDEN, "{format}");
        assert!(
            s.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("insufficient_scope")
        );
    }

    // A session cookie.
    let crate::sessions::Session {
        cookie, id: sid, ..
    } = crate::sessions::login(app, &email).await;
    let s = send(get("/profile").header("cookie", &cookie)).await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    assert_eq!(s.upstream_header("x-auth-method"), Some("session"));
    assert_eq!(s.upstream_header("x-auth-session-id"), Some(sid.as_str()));

    // An RFC 9421 signed POST, signed for the gateway's URL: the gateway sends no body to
    // Portcullis, which verifies the signature over Content-Digest and hands the digest on.
    let r = app
        .client
        .post(app.url("/v1/signing-keys"))
        .bearer_auth(jwt)
        .json(&json!({"name": "gw", "alg": "hmac-sha256"}))
        .send()
        .await
        .unwrap();
    let made: Value = r.json().await.unwrap();
    let signer = portcullis_client::RequestSigner::hmac(
        made["keyid"].as_str().unwrap(),
        made["secret"].as_str().unwrap(),
    )
    .unwrap();
    let mut req = http
        .post(format!("{base}/profile"))
        .json(&json!({"name": "signed"}))
        .build()
        .unwrap();
    signer.sign(&mut req).unwrap();
    let replay = req.try_clone().unwrap();
    let digest = req.headers()["content-digest"].to_str().unwrap().to_owned();
    let r = http.execute(req).await.unwrap();
    let status = r.status();
    let seen: Value = r.json().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "{seen:?}");
    assert_eq!(seen["headers"]["x-auth-method"], "signature", "{seen:?}");
    assert_eq!(seen["headers"]["x-auth-subject"], sub.as_str());
    assert_eq!(seen["headers"]["x-auth-content-digest"], digest.as_str());
    let r = http.execute(replay).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["x-auth-signature-reason"], "replayed");

    // A client cannot name itself: its own X-Auth-* never reach the upstream, on an anonymous route
    // (where Portcullis sends none) or beside a real credential (where Portcullis's win).
    let s = send(
        get("/public/page")
            .header("x-auth-subject", "usr_admin")
            .header("x-auth-scopes", "admin"),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    for name in ["x-auth-subject", "x-auth-scopes"] {
        let v = s.upstream_header(name).unwrap_or_default();
        assert!(v.is_empty(), "{name}: {:?}", s.body);
    }
    let s = send(
        get("/orders/3")
            .header("x-api-key", key)
            .header("x-auth-subject", "usr_admin"),
    )
    .await;
    assert_eq!(s.upstream_header("x-auth-subject"), Some(kid));
    // Nor can it describe another request than the one it makes.
    let s = send(
        get("/orders/4")
            .header("x-forwarded-uri", "/public/x")
            .header("x-original-uri", "/public/x")
            .header("x-forwarded-method", "GET"),
    )
    .await;
    assert_eq!(s.status, StatusCode::UNAUTHORIZED, "{:?}", s.body);
    // A credential in the URL is refused.
    let s = send(get(&format!("/orders/1?api_key={key}"))).await;
    assert_eq!(s.status, StatusCode::FORBIDDEN);

    // Login-redirect routes send browsers without a session to /login.
    let s = send(get("/app/inbox")).await;
    assert_eq!(s.status, StatusCode::FOUND, "{:?}", s.body);
    // (nginx makes the location absolute, on its own address.)
    let location = s.headers["location"].to_str().unwrap();
    assert!(
        location == "/login?return_to=%2Fapp%2Finbox"
            || location == format!("{base}/login?return_to=%2Fapp%2Finbox"),
        "{location}"
    );

    // A key's rate limit is spent through the gateway: 429 with its headers.
    let r = app
        .post_with_key(
            "/v1/keys",
            &root,
            Some(&json!({"name": "rl", "ratelimit": {"limit": 1, "duration_ms": 60000}})),
        )
        .await;
    let limited: Value = r.json().await.unwrap();
    let limited = limited["key"].as_str().unwrap();
    assert_eq!(
        send(get("/profile").header("x-api-key", limited))
            .await
            .status,
        StatusCode::OK
    );
    let s = send(get("/profile").header("x-api-key", limited)).await;
    assert_eq!(s.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", s.body);
    assert!(s.headers.contains_key("retry-after"));

    // A revoked key is refused within a second.
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{kid}"),
            &crate::support::Auth::Key(root.clone()),
            None,
        )
        .await;
    assert!(r.status().is_success());
    let revoked_at = std::time::Instant::now();
    loop {
        let s = send(get("/orders/1").header("x-api-key", key)).await;
        if s.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still {:?}",
            s.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn setup(c: &mut portcullis_server::Config) {
    rules(c);
    c.trusted_proxies = vec!["127.0.0.1".into()];
}

async fn nginx_auth_request_protects_an_upstream(b: Backend) {
    let app = TestApp::spawn_with(b, setup).await;
    let upstream = echo_upstream().await;
    let portcullis = app.base.trim_start_matches("http://").to_owned();
    let Some(gw) = nginx(&portcullis, upstream).await else {
        return;
    };
    through(&app, &gw.base).await;
    drop(gw);
    app.stop().await;
}

async fn caddy_forward_auth_protects_an_upstream(b: Backend) {
    let app = TestApp::spawn_with(b, setup).await;
    let upstream = echo_upstream().await;
    let portcullis = app.base.trim_start_matches("http://").to_owned();
    let Some(gw) = caddy(&portcullis, upstream).await else {
        return;
    };
    through(&app, &gw.base).await;
    drop(gw);
    app.stop().await;
}

/// MCP readiness (issue 14): the MCP TypeScript SDK's client, pointed at an MCP server that nginx
/// protects with the shipped config, gets the 401, discovers Portcullis (RFC 9728, RFC 8414),
/// registers itself (RFC 7591), runs code + PKCE with `resource` through the real login and consent
/// pages, and calls a tool with the token (`interop/node/mcp_client.mjs`).
async fn the_mcp_sdk_authorizes_itself_for_an_mcp_server_behind_nginx(b: Backend) {
    mcp_sdk_flow(b, false).await;
}

/// The same with the SDK as a Client ID Metadata Document client: its document, served over https
/// by the script, is its registration; nothing registers.
async fn the_mcp_sdk_authorizes_itself_as_a_metadata_document_client(b: Backend) {
    mcp_sdk_flow(b, true).await;
}

/// A self-signed certificate for 127.0.0.1 (the document server's), by the system's openssl.
fn self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some((key, cert))
}

async fn mcp_sdk_flow(b: Backend, cimd: bool) {
    let gateway_port = free_port();
    let resource = format!("http://127.0.0.1:{gateway_port}/mcp");
    let app = TestApp::spawn_with(b, |c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.oauth_dynamic_registration = !cimd;
        // The document server is on loopback with a self-signed certificate.
        c.oauth_fetch_allow_private_for_tests = cimd;
        c.route = vec![portcullis_server::forward_auth::RouteRule {
            path: "/mcp".into(),
            scopes: vec!["mcp:tools".into()],
            resource: Some(resource.clone()),
            ..Default::default()
        }];
    })
    .await;
    let user = app.register("mcp@example.com").await;
    let upstream_port = free_port();
    let upstream: SocketAddr = format!("127.0.0.1:{upstream_port}").parse().unwrap();
    let portcullis = app.base.trim_start_matches("http://").to_owned();
    let Some(gw) = nginx_on(gateway_port, &portcullis, upstream).await else {
        return;
    };
    let tls = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(crate::interop::interop_dir().join("node/mcp_client.mjs"))
        .args(["--resource", &resource])
        .args(["--listen", &upstream_port.to_string()])
        .args(["--issuer", &app.base])
        .args(["--email", "mcp@example.com"])
        .args(["--password", crate::support::PASSWORD])
        .args(["--user-id", user["id"].as_str().unwrap()]);
    if cimd {
        let Some((key, cert)) = self_signed(tls.path()) else {
            eprintln!("skipped: openssl is not installed");
            return;
        };
        cmd.args(["--cimd", &free_port().to_string()])
            .arg("--tls-key")
            .arg(key)
            .arg("--tls-cert")
            .arg(cert);
    }
    let Some((status, stdout, stderr)) =
        crate::interop::run_outside("MCP TypeScript SDK", cmd, Duration::from_secs(90)).await
    else {
        return;
    };
    crate::interop::finished("mcp_client.mjs", status, &stdout, &stderr);
    if cimd {
        assert_eq!(
            app.scalar_i64("SELECT COUNT(*) FROM oauth_client_registrations")
                .await,
            0,
            "a metadata document client registers nothing"
        );
    }
    drop(gw);
    app.stop().await;
}
