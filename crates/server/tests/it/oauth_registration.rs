//! Dynamic client registration (RFC 7591) and its management (RFC 7592) over HTTP: off by default;
//! when on, a registration is checked as the admin API's are, answered with a registration access
//! token (kept as SHA-256) that reads, replaces and deletes it; `application_type` decides which
//! redirect URIs are allowed; an initial access token and a per-address limit guard it. Both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oauth::{Browser, REDIRECT, authorize};
use crate::on_both_stores;
use crate::support::{Backend, TestApp};

on_both_stores!(
    a_registered_client_signs_in_and_manages_its_registration,
    bad_registrations_are_refused_and_nothing_is_stored,
    registration_is_off_by_default_and_guarded_when_on,
);

async fn register(app: &TestApp, body: &Value, token: Option<&str>) -> reqwest::Response {
    let mut r = app.client.post(app.url("/oauth2/register")).json(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn registration_error(app: &TestApp, body: &Value) -> String {
    let r = register(app, body, None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn mcp_client() -> Value {
    json!({
        "client_name": "MCP Inspector",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "scope": "openid offline_access",
        "software_id": "inspector",
    })
}

async fn a_registered_client_signs_in_and_manages_its_registration(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.oauth_dynamic_registration = true).await;
    let root = app.root_key().await;
    let meta: Value = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["registration_endpoint"], app.url("/oauth2/register"));

    let r = register(&app, &mcp_client(), None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let reg: Value = r.json().await.unwrap();
    let cid = reg["client_id"].as_str().unwrap();
    assert!(cid.starts_with("cli_"));
    assert!(
        reg.get("client_secret").is_none(),
        "a public client has no secret"
    );
    assert_eq!(
        reg["application_type"], "native",
        "loopback redirects: native"
    );
    assert_eq!(reg["client_name"], "MCP Inspector");
    assert_eq!(reg["software_id"], "inspector");
    assert_eq!(reg["scope"], "openid offline_access");
    let token = reg["registration_access_token"].as_str().unwrap();
    assert!(token.starts_with("prat_"));
    let uri = reg["registration_client_uri"].as_str().unwrap();
    assert_eq!(uri, app.url(&format!("/oauth2/register/{cid}")));
    // Kept as SHA-256, never as itself.
    assert_eq!(
        app.scalar_i64(
            "SELECT COUNT(*) FROM oauth_client_registrations WHERE length(token_hash) = 32"
        )
        .await,
        1
    );
    let audit = app.wait_for_audit(&root, "oauth.client_registered").await;
    assert_eq!(audit["subject"], cid);

    // The client works: code + PKCE through login and consent, redeemed without a secret.
    app.register("ada@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        cid,
        "openid offline_access",
        "ada@example.com",
    )
    .await;
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", cid),
            ("code", &a.code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &a.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<Value>().await.unwrap()["refresh_token"].is_string());

    // RFC 7592: read, replace, delete with the registration access token; nothing without it.
    let read = app.client.get(uri).bearer_auth(token).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let got: Value = read.json().await.unwrap();
    assert_eq!(got["client_id"], cid);
    assert!(got.get("registration_access_token").is_none());
    for bad in ["prat_wrong", "", "pcs_nonsense"] {
        let r = app.client.get(uri).bearer_auth(bad).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
    }
    let other: Value = register(&app, &mcp_client(), None)
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .client
        .get(uri)
        .bearer_auth(other["registration_access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "another client's token"
    );
    let mut changed = mcp_client();
    changed["client_id"] = json!(cid);
    changed["client_name"] = json!("MCP Inspector 2");
    let r = app
        .client
        .put(uri)
        .bearer_auth(token)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["client_name"],
        "MCP Inspector 2"
    );
    changed["token_endpoint_auth_method"] = json!("client_secret_basic");
    let r = app
        .client
        .put(uri)
        .bearer_auth(token)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .client
        .delete(uri)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.client.get(uri).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", cid),
            ("code", "pac_x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a deleted client is gone"
    );

    // A confidential web client gets a secret that never expires.
    let r = register(
        &app,
        &json!({ "client_name": "Web app", "redirect_uris": ["https://app.example/cb"] }),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let web: Value = r.json().await.unwrap();
    assert!(web["client_secret"].as_str().unwrap().starts_with("pcs_"));
    assert_eq!(web["client_secret_expires_at"], 0);
    assert_eq!(web["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(web["application_type"], "web");
}

async fn bad_registrations_are_refused_and_nothing_is_stored(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.oauth_dynamic_registration = true).await;
    let with = |k: &str, v: Value| {
        let mut m = mcp_client();
        m[k] = v;
        m
    };
    let cases = [
        (
            with("redirect_uris", json!(["javascript:alert(1)"])),
            "invalid_redirect_uri",
        ),
        (
            with("redirect_uris", json!(["http://evil.example/cb"])),
            "invalid_redirect_uri",
        ),
        (
            with("application_type", json!("web")),
            "invalid_redirect_uri",
        ),
        (
            with("redirect_uris", json!(["https://app.example/cb"]))
                .as_object()
                .map(|m| {
                    let mut m = m.clone();
                    m.insert("application_type".into(), json!("native"));
                    Value::Object(m)
                })
                .unwrap(),
            "invalid_redirect_uri",
        ),
        (
            with("response_types", json!(["token"])),
            "invalid_client_metadata",
        ),
        (
            with("scope", json!("openid admin")),
            "invalid_client_metadata",
        ),
        (
            with("token_endpoint_auth_method", json!("private_key_jwt")),
            "invalid_client_metadata",
        ),
        (
            with("grant_types", json!(["implicit"])),
            "invalid_client_metadata",
        ),
        (
            with("client_uri", json!("javascript:alert(1)")),
            "invalid_client_metadata",
        ),
        (with("client_name", json!(7)), "invalid_client_metadata"),
        (
            with("application_type", json!("desktop")),
            "invalid_client_metadata",
        ),
        (json!(["not", "an", "object"]), "invalid_client_metadata"),
    ];
    for (body, code) in cases {
        assert_eq!(registration_error(&app, &body).await, code, "{body}");
    }
    let r = app
        .client
        .post(app.url("/oauth2/register"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        app.scalar_i64("SELECT COUNT(*) FROM oauth_clients").await,
        0,
        "no refused registration left a client"
    );
}

async fn registration_is_off_by_default_and_guarded_when_on(b: Backend) {
    let app = TestApp::spawn(b.clone()).await;
    let r = register(&app, &mcp_client(), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let meta: Value = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta.get("registration_endpoint").is_none());

    let initial = "an initial access token of 32+ characters";
    let app = TestApp::spawn_with(b, |c| {
        c.oauth_dynamic_registration = true;
        c.oauth_registration_token = Some(portcullis_server::config::SecretSetting::new(
            initial.into(),
        ));
        c.oauth_registration_ip_limit = 2;
    })
    .await;
    for token in [None, Some("wrong")] {
        let r = register(&app, &mcp_client(), token).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{token:?}");
    }
    // Refused metadata does not use up the address's allowance.
    let mut bad = mcp_client();
    bad["response_types"] = json!(["token"]);
    assert_eq!(
        register(&app, &bad, Some(initial)).await.status(),
        StatusCode::BAD_REQUEST
    );
    for _ in 0..2 {
        let r = register(&app, &mcp_client(), Some(initial)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = register(&app, &mcp_client(), Some(initial)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
}
