//! `private_key_jwt` client authentication (RFC 7523 §2.2) over HTTP: assertions verified against a
//! registered `jwks` or the JWK Set at a `jwks_uri` (fetched by the guarded fetcher, re-read when a
//! key rotates), `aud` the issuer or an endpoint, a bounded lifetime, a `jti` good once; each bad
//! assertion answered `invalid_client`. Both stores.

use std::sync::{Arc, Mutex};

use portcullis_core::jwt::{JwsAlg, SigningKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oauth::client;
use crate::on_both_stores;
use crate::support::{Backend, TestApp, uuid_hex};

on_both_stores!(
    assertions_signed_with_registered_keys_authenticate_once,
    keys_are_fetched_from_jwks_uri_and_reread_when_they_rotate,
);

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct ClientKey {
    key: SigningKey,
    kid: String,
}

impl ClientKey {
    fn new(alg: JwsAlg) -> Self {
        let (key, _) = SigningKey::generate(alg).unwrap();
        Self {
            key,
            kid: uuid_hex(),
        }
    }

    fn jwk(&self) -> Value {
        let mut j = self.key.public_jwk().unwrap();
        j["kid"] = json!(self.kid);
        j
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = serde_json::Map::new();
        h.insert("typ".into(), "JWT".into());
        h.insert("kid".into(), self.kid.clone().into());
        self.key.sign_with_header(h, claims).unwrap()
    }
}

fn now() -> i64 {
    portcullis_core::clock::Millis::now().as_secs()
}

fn claims(cid: &str, aud: &str) -> Value {
    json!({ "iss": cid, "sub": cid, "aud": aud, "iat": now(), "exp": now() + 60, "jti": uuid_hex() })
}

async fn with_assertion(
    app: &TestApp,
    assertion: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    app.client
        .post(app.url("/oauth2/token"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn machine(app: &TestApp, root: &str, keys: Value) -> String {
    let mut body = json!({
        "name": "Signed batch job",
        "type": "confidential",
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "scopes": ["orders:read"],
    });
    for (k, v) in keys.as_object().unwrap() {
        body[k] = v.clone();
    }
    let c = client(app, root, &body).await;
    assert!(
        c.get("client_secret").is_none(),
        "no secret for private_key_jwt"
    );
    c["client_id"].as_str().unwrap().to_owned()
}

async fn assertions_signed_with_registered_keys_authenticate_once(b: Backend) {
    // Failed client authentications back off after a few (as logins do); this test makes many.
    let app = TestApp::spawn_with(b, |c| c.login_free_failures = 50).await;
    let root = app.root_key().await;
    let meta: Value = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("private_key_jwt"))
    );
    let key = ClientKey::new(JwsAlg::Es256);
    let cid = machine(&app, &root, json!({ "jwks": { "keys": [key.jwk()] } })).await;
    let token_url = app.url("/oauth2/token");

    let good = key.sign(&claims(&cid, &token_url));
    let r = with_assertion(&app, &good, &[]).await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    // The issuer is an audience too.
    let r = with_assertion(&app, &key.sign(&claims(&cid, &app.base)), &[]).await;
    assert_eq!(r.status(), StatusCode::OK);

    let other = ClientKey::new(JwsAlg::Es256);
    let with = |k: &str, v: Value| {
        let mut c = claims(&cid, &token_url);
        c[k] = v;
        key.sign(&c)
    };
    let mut without_jti = claims(&cid, &token_url);
    without_jti.as_object_mut().unwrap().remove("jti");
    let hs256 = {
        use base64::Engine;
        let b = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
        };
        format!(
            "{}.{}.{}",
            b(json!({"alg": "HS256", "kid": key.kid})),
            b(claims(&cid, &token_url)),
            b(json!("sig"))
        )
    };
    let bad = [
        ("replayed", good.clone()),
        ("other key", other.sign(&claims(&cid, &token_url))),
        (
            "other audience",
            with("aud", json!("https://elsewhere.example/token")),
        ),
        ("iss is not sub", with("iss", json!("cli_someone"))),
        ("expired", with("exp", json!(now() - 120))),
        ("an hour long", with("exp", json!(now() + 3600))),
        ("issued in the future", with("iat", json!(now() + 600))),
        ("no jti", key.sign(&without_jti)),
        ("HS256", hs256),
        ("garbage", "a.b.c".into()),
    ];
    for (why, assertion) in bad {
        let r = with_assertion(&app, &assertion, &[]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "invalid_client",
            "{why}"
        );
    }
    // Malformed requests: the wrong assertion type, a secret beside the assertion, another client_id.
    let fresh = || key.sign(&claims(&cid, &token_url));
    let r = app
        .client
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:other"),
            ("client_assertion", &fresh()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = with_assertion(&app, &fresh(), &[("client_secret", "pcs_x")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = with_assertion(
        &app,
        &fresh(),
        &[("client_id", "cli_00000000000000000000000000000000")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A JWK Set with a private key, or none at all, is refused at registration.
    let mut private = key.jwk();
    private["d"] = json!("AAAA");
    for keys in [json!({ "jwks": { "keys": [private] } }), json!({})] {
        let mut body = json!({
            "name": "x", "type": "confidential", "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["client_credentials"], "scopes": ["orders:read"],
        });
        for (k, v) in keys.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = app
            .post_with_key("/admin/v1/clients", &root, Some(&body))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    }
}

/// A JWK Set server whose keys the test can swap.
async fn jwks_server(keys: Arc<Mutex<Value>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = Arc::clone(&keys);
            async move { axum::Json(keys.lock().unwrap().clone()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/jwks.json")
}

async fn keys_are_fetched_from_jwks_uri_and_reread_when_they_rotate(b: Backend) {
    let first = ClientKey::new(JwsAlg::Rs256);
    let served = Arc::new(Mutex::new(json!({ "keys": [first.jwk()] })));
    let uri = jwks_server(Arc::clone(&served)).await;

    // Without the test-only switch, a loopback jwks_uri is never fetched (nor an http one kept).
    let app = TestApp::spawn(b.clone()).await;
    let root = app.root_key().await;
    let r = app
        .post_with_key(
            "/admin/v1/clients",
            &root,
            Some(&json!({
                "name": "x", "type": "confidential", "token_endpoint_auth_method": "private_key_jwt",
                "grant_types": ["client_credentials"], "scopes": ["orders:read"], "jwks_uri": uri,
            })),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "http jwks_uri");
    let loopback = uri.replace("http://", "https://");
    let cid = machine(&app, &root, json!({ "jwks_uri": loopback })).await;
    let r = with_assertion(
        &app,
        &first.sign(&claims(&cid, &app.url("/oauth2/token"))),
        &[],
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a loopback jwks_uri is not fetched"
    );
    app.stop().await;

    let app = TestApp::spawn_with(b, |c| c.oauth_fetch_allow_private_for_tests = true).await;
    let root = app.root_key().await;
    let cid = machine(&app, &root, json!({ "jwks_uri": uri })).await;
    let token_url = app.url("/oauth2/token");
    let r = with_assertion(&app, &first.sign(&claims(&cid, &token_url)), &[]).await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    // The client rotates its key: the cached set is re-read once, and the new key works at once.
    let second = ClientKey::new(JwsAlg::EdDsa);
    *served.lock().unwrap() = json!({ "keys": [second.jwk()] });
    let r = with_assertion(&app, &second.sign(&claims(&cid, &token_url)), &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = with_assertion(&app, &first.sign(&claims(&cid, &token_url)), &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the retired key no longer works"
    );
}
