//! Cross-cutting HTTP behaviour: problem+json errors, limits, content types, headers, ops endpoints.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp, assert_problem};

on_both_stores!(
    every_response_carries_the_security_headers_and_a_request_id,
    unknown_routes_and_methods_are_problems,
    bodies_over_64_kib_are_refused_and_nothing_is_written,
    malformed_and_mistyped_bodies_get_precise_codes,
    health_readiness_and_metrics_answer,
);

async fn every_response_carries_the_security_headers_and_a_request_id(b: Backend) {
    let app = TestApp::spawn(b).await;
    for path in ["/healthz", "/v1/me", "/nope", "/.well-known/jwks.json"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert!(h.contains_key("x-request-id"), "{path}");
        assert!(
            !h.contains_key("strict-transport-security"),
            "no HSTS over plain HTTP"
        );
    }
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-abc_123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc_123");
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "bad id\twith tab")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id\twith tab");
    app.stop().await;
}

async fn unknown_routes_and_methods_are_problems(b: Backend) {
    let app = TestApp::spawn(b).await;
    assert_problem(
        app.client
            .get(app.url("/v1/nothing-here"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        app.client
            .delete(app.url("/v1/auth/login"))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    app.stop().await;
}

async fn bodies_over_64_kib_are_refused_and_nothing_is_written(b: Backend) {
    let app = TestApp::spawn(b).await;
    // A 10 MB password: announced by Content-Length, refused before a byte of it is read.
    let head = format!(
        "POST /v1/users HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        app.base.trim_start_matches("http://"),
        10 * 1024 * 1024
    );
    let answer = raw_exchange(&app, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{answer}"
    );
    let just_over = "p".repeat(64 * 1024);
    let r = app
        .post_json(
            "/v1/auth/login",
            &json!({"email": "big@example.com", "password": just_over}),
        )
        .await;
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Chunked, without Content-Length. The server answers as soon as the limit is crossed and closes
    // with the rest unread, which the kernel may turn into a reset that loses the answer on the way
    // (TCP, not us): a transport error is retried, a wrong answer never.
    let mut answered = None;
    for _ in 0..5 {
        match app
            .client
            .post(app.url("/v1/users"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_stream(70 * 1024)))
            .send()
            .await
        {
            Ok(r) => {
                answered = Some(r);
                break;
            }
            Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
        }
    }
    let r = answered.expect("an answer to the chunked body");
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // A 60 KB password fits the body limit but not the password policy.
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "big@example.com", "password": "q".repeat(60 * 1024)}),
        )
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "weak_password").await;
    assert_eq!(
        portcullis_store::UserStore::count_users(&app.store)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}

pub async fn raw_exchange(app: &TestApp, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn futures_stream(
    total: usize,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunk = vec![b' '; 8 * 1024];
    let n = total / chunk.len() + 1;
    ChunkStream { chunk, left: n }
}

struct ChunkStream {
    chunk: Vec<u8>,
    left: usize,
}

impl futures_core::Stream for ChunkStream {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(self.chunk.clone())))
    }
}

async fn malformed_and_mistyped_bodies_get_precise_codes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let send = |body: &'static str, ct: Option<&'static str>| {
        let mut req = app.client.post(app.url("/v1/auth/login")).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    assert_problem(
        send("{\"email\": ", Some("application/json"))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_body",
    )
    .await;
    assert_problem(
        send("not json at all", Some("application/json"))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_body",
    )
    .await;
    assert_problem(
        send("{}", None).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_problem(
        send("{}", Some("text/plain")).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let r = app
        .client
        .post(app.url("/v1/users"))
        .form(&[("email", "f@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_problem(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let r = app
        .post_json(
            "/v1/auth/login",
            &json!({"email": "a@example.com", "password": PASSWORD, "remember": true}),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(
        body["errors"][0],
        json!({"field": "remember", "code": "unknown_field", "message": "unknown field `remember`"})
    );
    let r = app.post_json("/v1/auth/login", &json!(["a", "b"])).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    let body: Value = app
        .post_json(
            "/v1/auth/login",
            &json!({"email": "not an email", "password": PASSWORD}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["code"], "validation_failed");
    app.stop().await;
}

async fn health_readiness_and_metrics_answer(b: Backend) {
    let app = TestApp::spawn(b).await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.client.get(app.url("/v1/me")).send().await.unwrap();
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "portcullis_http_requests_total{route=\"/v1/me\",method=\"GET\",status=\"401\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("portcullis_http_request_duration_seconds_bucket{route=\"/healthz\""),
        "{text}"
    );
    // With the store gone, the process is alive but not ready.
    app.store.close().await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text().await.unwrap(), "{\"status\":\"unavailable\"}");
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_matches_the_snapshot() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/users",
        "/v1/me",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/.well-known/jwks.json",
        "/admin/v1/audit",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    insta::assert_json_snapshot!("openapi", doc, {".info.version" => "[version]"});
    app.stop().await;
}

/// Every route the router serves is in the OpenAPI document: capabilities list their routes with
/// utoipa-axum's `routes!`, which puts each handler's documented path in the document and in the
/// router at once, so the only routes added any other way may be the pages (HTML), the document
/// itself, the separate metrics listener, and the OAuth protocol's endpoints, which its own
/// discovery document describes (RFC 8414). A `.route(` anywhere else fails here.
#[tokio::test]
async fn the_openapi_document_covers_every_route_the_router_serves() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed = [
        "pages/mod.rs",
        "app/router.rs",
        "oauth/handlers.rs",
        "forward_auth/handlers.rs",
    ];
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        if text.contains(".route(") {
            assert!(
                allowed.contains(&rel.as_str()),
                "{rel} adds a route outside routes!()"
            );
        }
        if allowed.contains(&rel.as_str()) {
            for route in text.split(".route(").skip(1) {
                let path = route
                    .trim_start()
                    .trim_start_matches('"')
                    .split('"')
                    .next()
                    .unwrap();
                assert!(
                    [
                        "/login",
                        "/account",
                        "/assets/",
                        "/openapi.json",
                        "/metrics",
                        "/oauth2/",
                        "/consent",
                        "/device",
                        "/register",
                        "/verify",
                        "/reset",
                        // The browser's side of upstream sign-in: redirects and HTML pages.
                        "/v1/upstream/",
                        "/.well-known/openid-configuration",
                        "/.well-known/oauth-authorization-server",
                        // Paths of any depth, which OpenAPI cannot state.
                        "/v1/authorize/",
                        "/.well-known/oauth-protected-resource/",
                    ]
                    .iter()
                    .any(|p| path.starts_with(p)),
                    "{rel}: {path} is served but not through routes!()"
                );
            }
        }
    }
    // And what routes!() registered is served: every documented operation answers, not 404/405.
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 29, "{} paths", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "usr_0193a5b0c1d27000a000000000000001")
            .replace("{kid}", "k");
        for method in ops.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .client
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            assert_ne!(
                r.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            if r.status() == StatusCode::NOT_FOUND {
                let body: Value = r.json().await.unwrap_or_default();
                assert_ne!(
                    body["detail"], "no such endpoint",
                    "{method} {path} is documented but not served"
                );
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_janitor_deletes_what_is_past_use() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let t = app.user_with_tokens("jan@example.com").await;
    let live: Value = app
        .login("jan@example.com", crate::support::PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .post_json(
            "/v1/auth/logout",
            &json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let removed = portcullis_server::app::background::janitor_pass(app.state()).await;
    assert_eq!(removed, 1, "exactly the revoked family is purged");
    assert_eq!(
        portcullis_server::app::background::janitor_pass(app.state()).await,
        0
    );
    // What is still in use stays: the live login refreshes.
    let r = app
        .post_json(
            "/v1/auth/refresh",
            &json!({"refresh_token": live["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}
