//! `portcullis-client` against the real server over HTTP (SQLite store): local verification and its
//! refusals, key rotation seen through a JWKS refetch, the issuer going away, the tower layer in an
//! axum app, and introspection of opaque tokens.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use portcullis_client::{Config, Error, Introspection, Principal, RequireAuth, Verifier};
use reqwest::StatusCode;
use serde_json::{Value, json};

const AUDIENCE: &str = "https://orders.example.test";

struct Server {
    base: String,
    root: String,
    http: reqwest::Client,
    running: Option<portcullis_server::Running>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = portcullis_server::Config {
            listen: addr,
            data_dir: dir.path().join("data"),
            issuer: Some(format!("http://{addr}")),
            // A rotated key signs at once, so a test sees tokens of a key the client never fetched.
            signing_key_publish_lead_s: 0,
            ..portcullis_server::Config::default()
        };
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let store = portcullis_store::Store::open_sqlite(
            &config.sqlite_path(),
            &portcullis_store::StoreOptions::default(),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let root = portcullis_server::create_root_key(&store, "client tests")
            .await
            .unwrap();
        let running = portcullis_server::start(config, store, listener)
            .await
            .unwrap();
        Self {
            base: format!("http://{addr}"),
            root,
            http: reqwest::Client::new(),
            running: Some(running),
            _dir: dir,
        }
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-api-key", &self.root)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {:?}", r.text().await);
        r.json().await.unwrap()
    }

    /// A confidential client for `AUDIENCE`; returns (id, secret).
    async fn client(&self, format: &str) -> (String, String) {
        let c = self
            .admin(
                "/admin/v1/clients",
                json!({
                    "name": "svc", "type": "confidential", "grant_types": ["client_credentials"],
                    "scopes": ["orders:read", "orders:write"], "audiences": [AUDIENCE],
                    "token_endpoint_auth_method": "client_secret_basic",
                    "access_token_format": format,
                }),
            )
            .await;
        (
            c["client_id"].as_str().unwrap().to_owned(),
            c["client_secret"].as_str().unwrap().to_owned(),
        )
    }

    async fn token(&self, id: &str, secret: &str, scope: &str) -> String {
        let r = self
            .http
            .post(format!("{}/oauth2/token", self.base))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
        let t: Value = r.json().await.unwrap();
        t["access_token"].as_str().unwrap().to_owned()
    }
}

fn verifier(server: &Server, tweak: impl FnOnce(&mut Config)) -> Verifier {
    let mut c = Config::new(&server.base, AUDIENCE);
    c.min_refetch_interval = Duration::from_millis(200);
    tweak(&mut c);
    Verifier::new(c).unwrap()
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_locally_with_the_servers_rules() {
    let mut server = Server::start().await;
    let (id, secret) = server.client("jwt").await;
    let token = server.token(&id, &secret, "orders:read").await;
    let v = verifier(&server, |_| {});
    let p = v.verify(&token).await.unwrap();
    assert_eq!(p.subject, id);
    assert_eq!(p.client_id.as_deref(), Some(id.as_str()));
    assert!(p.scopes.contains("orders:read") && !p.scopes.contains("orders:write"));
    // Again, from the cache.
    assert_eq!(v.verify(&token).await.unwrap().subject, id);

    // Another audience, a tampered payload, a forged signature, garbage, a token of our own login
    // (another audience too): each refused with its reason.
    let other = verifier(&server, |c| {
        c.audience = "https://other.example.test".into()
    });
    assert_eq!(
        other.verify(&token).await.unwrap_err(),
        Error::InvalidToken("wrong_audience")
    );
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replace('A', "B");
    let tampered = parts.join(".");
    assert!(matches!(
        v.verify(&tampered).await,
        Err(Error::InvalidToken(_))
    ));
    let (head, _) = token.rsplit_once('.').unwrap();
    assert_eq!(
        v.verify(&format!("{head}.AAAA")).await.unwrap_err(),
        Error::InvalidToken("bad_signature")
    );
    assert_eq!(
        v.verify("nope").await.unwrap_err(),
        Error::InvalidToken("malformed")
    );
    assert_eq!(
        v.verify(&"a".repeat(9000)).await.unwrap_err(),
        Error::InvalidToken("malformed")
    );
    // The issuer must match too.
    let wrong_iss = Verifier::new(Config {
        jwks_uri: Some(format!("{}/.well-known/jwks.json", server.base)),
        ..Config::new("https://impostor.example.test", AUDIENCE)
    })
    .unwrap();
    assert_eq!(
        wrong_iss.verify(&token).await.unwrap_err(),
        Error::InvalidToken("wrong_issuer")
    );

    // Headers: exactly one Bearer.
    let mut h = http::HeaderMap::new();
    assert_eq!(v.authenticate(&h).await.unwrap_err(), Error::Missing);
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(v.authenticate(&h).await.unwrap().subject, id);
    h.append("authorization", "Bearer x".parse().unwrap());
    assert!(matches!(
        v.authenticate(&h).await,
        Err(Error::InvalidRequest(_))
    ));
    let mut basic = http::HeaderMap::new();
    basic.insert("authorization", "Basic eDp5".parse().unwrap());
    assert_eq!(
        v.authenticate(&basic).await.unwrap_err(),
        Error::InvalidToken("unsupported_scheme")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_verifies_after_one_refetch_and_the_issuer_may_go_away() {
    let mut server = Server::start().await;
    let (id, secret) = server.client("jwt").await;
    let first = server.token(&id, &secret, "orders:read").await;
    let v = verifier(&server, |_| {});
    v.verify(&first).await.unwrap();

    // Rotate: the next token is signed by a key the client has not fetched.
    server
        .admin("/admin/v1/signing-keys/rotate", json!({}))
        .await;
    let second = server.token(&id, &secret, "orders:read").await;
    assert_ne!(kid_of(&first), kid_of(&second), "the rotated key signs");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(v.verify(&second).await.unwrap().subject, id);

    // An unknown kid refetches at most once per interval: a burst of forged kids costs one fetch.
    let v2 = verifier(&server, |c| {
        c.min_refetch_interval = Duration::from_secs(60)
    });
    v2.verify(&first).await.unwrap();
    let forged = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (_, rest) = first.split_once('.').unwrap();
        let header = b64.encode(br#"{"alg":"ES256","typ":"at+jwt","kid":"no-such-key"}"#);
        format!("{header}.{rest}")
    };
    for _ in 0..5 {
        assert_eq!(
            v2.verify(&forged).await.unwrap_err(),
            Error::InvalidToken("unknown_kid")
        );
    }
    // Counted at a JWKS stand-in that serves the issuer's document: the first fetch was within the
    // interval, so the burst of unknown kids fetches nothing more (the rotation above shows a refetch
    // once the interval has passed).
    let doc = server
        .http
        .get(format!("{}/.well-known/jwks.json", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let jwks = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let doc = doc.clone();
            async move { ([("content-type", "application/json")], doc) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_uri = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, jwks).await.unwrap() });
    let v3 = verifier(&server, |c| {
        c.jwks_uri = Some(jwks_uri);
        c.min_refetch_interval = Duration::from_secs(60);
    });
    v3.verify(&second).await.unwrap();
    for _ in 0..5 {
        assert_eq!(
            v3.verify(&forged).await.unwrap_err(),
            Error::InvalidToken("unknown_kid")
        );
    }
    v3.verify(&second).await.unwrap();
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The issuer goes away: tokens of known keys still verify (the JWKS is stale, refetching fails,
    // the keys we have are kept), including one never seen before.
    let third = server.token(&id, &secret, "orders:write").await;
    let stale = verifier(&server, |c| {
        c.default_jwks_ttl = Duration::ZERO;
        c.min_refetch_interval = Duration::ZERO;
    });
    stale.verify(&second).await.unwrap();
    server.stop().await;
    assert!(
        stale
            .verify(&third)
            .await
            .unwrap()
            .scopes
            .contains("orders:write")
    );
    // A verifier that never reached the issuer says it is unavailable (a 503, not a 401).
    let fresh = verifier(&server, |_| {});
    assert!(matches!(
        fresh.verify(&third).await,
        Err(Error::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_protects_an_axum_app() {
    let mut server = Server::start().await;
    let (id, secret) = server.client("jwt").await;
    let reader = server.token(&id, &secret, "orders:read").await;
    let writer = server.token(&id, &secret, "orders:write").await;
    let v = verifier(&server, |c| {
        c.resource_metadata =
            Some("https://orders.example.test/.well-known/oauth-protected-resource".into());
    });

    // The README's example, served.
    let app = axum::Router::new()
        .route(
            "/orders",
            axum::routing::get(|Extension(p): Extension<Principal>| async move {
                format!("orders of {}", p.subject)
            }),
        )
        .layer(RequireAuth::new(v.clone()).scopes(["orders:read"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/orders");
    let http = reqwest::Client::new();

    let r = http.get(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), format!("orders of {id}"));
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer resource_metadata=\"https://orders.example.test/.well-known/oauth-protected-resource\""
    );
    let r = http
        .get(&url)
        .bearer_auth("junk.junk.junk")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\"")
    );
    let r = http.get(&url).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"orders:read\"")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_and_cached_briefly() {
    let mut server = Server::start().await;
    let (id, secret) = server.client("opaque").await;
    let token = server.token(&id, &secret, "orders:read").await;
    assert!(token.starts_with("pat_"));
    let without = verifier(&server, |_| {});
    assert_eq!(
        without.verify(&token).await.unwrap_err(),
        Error::InvalidToken("opaque_token_without_introspection")
    );
    let v = verifier(&server, |c| {
        c.introspection = Some(Introspection {
            cache_ttl: Duration::from_millis(300),
            ..Introspection::new(&id, &secret)
        });
    });
    let p: Arc<Principal> = v.verify(&token).await.unwrap();
    assert_eq!(p.method, portcullis_client::AuthMethod::OAuth);
    assert!(p.scopes.contains("orders:read"));
    // Revoked: served from the short cache, then refused.
    let r = server
        .http
        .post(format!("{}/oauth2/revoke", server.base))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(v.verify(&token).await.is_ok(), "cached");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        v.verify(&token).await.unwrap_err(),
        Error::InvalidToken("inactive")
    );
    // Wrong client credentials: introspection fails, which is the issuer's answer, not the token's.
    let bad = verifier(&server, |c| {
        c.introspection = Some(Introspection::new(&id, "wrong"))
    });
    assert!(matches!(
        bad.verify(&token).await,
        Err(Error::Unavailable(_))
    ));
    server.stop().await;
}

/// A DPoP-bound token (RFC 9449) is refused by the Bearer verifier, as the server refuses it as
/// Bearer: without its proof, a stolen bound token must be worth nothing here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_tokens_are_refused_as_bearer() {
    use portcullis_core::jwt::{JwsAlg, SigningKey};
    let mut server = Server::start().await;
    let (id, secret) = server.client("jwt").await;
    let (key, _) = SigningKey::generate(JwsAlg::Es256).unwrap();
    let mut header = serde_json::Map::new();
    header.insert("typ".into(), "dpop+jwt".into());
    header.insert("jwk".into(), key.public_jwk().unwrap());
    let url = format!("{}/oauth2/token", server.base);
    let claims = json!({
        "jti": "client-test-1", "htm": "POST", "htu": url,
        "iat": portcullis_core::clock::Millis::now().as_secs(),
    });
    let proof = key.sign_with_header(header, &claims).unwrap();
    let r = server
        .http
        .post(&url)
        .basic_auth(&id, Some(&secret))
        .header("dpop", proof)
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
        ])
        .send()
        .await
        .unwrap();
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP");
    let bound = t["access_token"].as_str().unwrap();
    let v = verifier(&server, |_| {});
    match v.verify(bound).await {
        Err(portcullis_client::Error::InvalidToken(reason)) => assert_eq!(reason, "dpop_bound"),
        other => panic!("a bound token passed as Bearer: {other:?}"),
    }
    // An unbound one still verifies.
    let plain = server.token(&id, &secret, "orders:read").await;
    assert!(v.verify(&plain).await.is_ok());
    server.stop().await;
}
