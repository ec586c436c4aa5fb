//! The device authorization grant (RFC 8628) over HTTP: `/oauth2/device_authorization`, the token
//! endpoint's polling answers, the `/device` page through the real login, and the refusals (another
//! client's code, a code redeemed twice, an expired one, guessed user codes), on both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oauth::{Browser, client, form_value};
use crate::on_both_stores;
use crate::support::{Backend, TestApp, jwt_claims};

on_both_stores!(
    the_device_flow_runs_from_user_code_to_tokens_once,
    device_polls_are_answered_as_rfc_8628_says,
    user_code_guessing_is_throttled_per_address,
);

pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

pub async fn spawn(b: Backend) -> TestApp {
    TestApp::spawn_with(b, |c| c.oauth_device_poll_interval_s = 1).await
}

pub async fn tv_client(app: &TestApp, root: &str, name: &str) -> Value {
    client(
        app,
        root,
        &json!({
            "name": name,
            "type": "public",
            "grant_types": [GRANT, "refresh_token"],
            "scopes": ["openid", "profile", "offline_access", "orders:read"],
        }),
    )
    .await
}

async fn device_authorization(app: &TestApp, client_id: &str, scope: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth2/device_authorization"))
        .form(&[("client_id", client_id), ("scope", scope)])
        .send()
        .await
        .unwrap()
}

pub async fn start(app: &TestApp, client_id: &str, scope: &str) -> Value {
    let r = device_authorization(app, client_id, scope).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

async fn poll(app: &TestApp, client_id: &str, device_code: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", GRANT),
            ("client_id", client_id),
            ("device_code", device_code),
        ])
        .send()
        .await
        .unwrap()
}

async fn poll_error(app: &TestApp, client_id: &str, device_code: &str) -> String {
    let r = poll(app, client_id, device_code).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    body["error"].as_str().unwrap().to_owned()
}

/// On `/device` with `user_code` (as `verification_uri_complete` sends the browser), logged in:
/// the confirmation page's form fields.
async fn confirmation(b: &Browser, user_code: &str) -> (String, String) {
    let r = b.get(&format!("/device?user_code={user_code}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"device-client\""), "{html}");
    (
        form_value(&html, "csrf_token"),
        form_value(&html, "user_code"),
    )
}

pub async fn decide(b: &Browser, user_code: &str, decision: &str) -> reqwest::Response {
    let (csrf, code) = confirmation(b, user_code).await;
    b.post(
        "/device",
        &[
            ("csrf_token", csrf.as_str()),
            ("user_code", code.as_str()),
            ("decision", decision),
        ],
    )
    .await
}

async fn the_device_flow_runs_from_user_code_to_tokens_once(b: Backend) {
    let app = spawn(b).await;
    let root = app.root_key().await;
    let tv = tv_client(&app, &root, "Living-room TV").await;
    let cid = tv["client_id"].as_str().unwrap();
    let user = app.register("ada@example.com").await;

    let meta: Value = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["device_authorization_endpoint"],
        app.url("/oauth2/device_authorization")
    );
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(GRANT))
    );

    let d = start(&app, cid, "openid profile offline_access orders:read").await;
    let user_code = d["user_code"].as_str().unwrap();
    // Eight characters of the unambiguous alphabet, shown as XXXX-XXXX.
    assert_eq!(user_code.len(), 9, "{user_code}");
    assert!(user_code.chars().enumerate().all(|(i, c)| if i == 4 {
        c == '-'
    } else {
        "BCDFGHJKLMNPQRSTVWXZ".contains(c)
    }));
    assert_eq!(d["verification_uri"], app.url("/device"));
    assert_eq!(
        d["verification_uri_complete"],
        format!(
            "{}?user_code={}",
            app.url("/device"),
            user_code.replace('-', "")
        )
    );
    assert_eq!(d["expires_in"], 600);
    assert_eq!(d["interval"], 1);
    let device_code = d["device_code"].as_str().unwrap();
    assert!(device_code.starts_with("pdc_"));
    assert_eq!(
        poll_error(&app, cid, device_code).await,
        "authorization_pending"
    );

    // The person opens the complete URI, logs in, and lands on the confirmation.
    let mut browser = Browser::new(&app);
    let r = browser
        .get(d["verification_uri_complete"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let login = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        login.starts_with("/login?return_to=/device%3Fuser_code%3D"),
        "{login}"
    );
    let return_to = format!("/device?user_code={}", user_code.replace('-', ""));
    let r = browser.log_in("ada@example.com", &return_to).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("Living-room TV"), "{html}");
    assert!(
        html.contains(user_code),
        "the page shows the code to compare"
    );
    assert!(html.contains("data-scope=\"orders:read\""));
    // The code as a person might type it: lower case, without the dash.
    let r = decide(
        &browser,
        &user_code.to_lowercase().replace('-', " "),
        "approve",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Device connected"));
    // Decided once: the code no longer finds a request.
    let r = browser.get(&format!("/device?user_code={user_code}")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = poll(&app, cid, device_code).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["scope"], "openid profile offline_access orders:read");
    let claims = jwt_claims(t["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["client_id"], cid);
    assert!(claims["sid"].as_str().unwrap().starts_with("ses_"));
    let id = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], cid);
    assert_eq!(id["sub"], user["id"]);
    assert!(id["auth_time"].as_i64().unwrap() <= id["iat"].as_i64().unwrap());
    // Redeemed once: the next poll is refused, and the refresh token rotates as any other.
    assert_eq!(poll_error(&app, cid, device_code).await, "invalid_grant");
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", cid),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let me = app
        .get_bearer("/v1/me", t["access_token"].as_str().unwrap())
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    let audit = app
        .wait_for_audit(&root, "oauth.device_code_redeemed")
        .await;
    assert_eq!(audit["actor"], user["id"]);
    assert_eq!(audit["subject"], cid);

    // Denied: the device hears access_denied.
    let d = start(&app, cid, "orders:read").await;
    let r = decide(&browser, d["user_code"].as_str().unwrap(), "deny").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        poll_error(&app, cid, d["device_code"].as_str().unwrap()).await,
        "access_denied"
    );
}

async fn device_polls_are_answered_as_rfc_8628_says(b: Backend) {
    let app = spawn(b).await;
    let root = app.root_key().await;
    let tv = tv_client(&app, &root, "TV").await;
    let cid = tv["client_id"].as_str().unwrap();
    let other = tv_client(&app, &root, "Other TV").await;
    let other_id = other["client_id"].as_str().unwrap();

    // Too fast: slow_down, and only then; the interval grows by 5 s.
    let d = start(&app, cid, "orders:read").await;
    let code = d["device_code"].as_str().unwrap();
    assert_eq!(poll_error(&app, cid, code).await, "authorization_pending");
    let r = poll(&app, cid, code).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "slow_down");
    assert!(
        body["error_description"].as_str().unwrap().contains("6 s"),
        "{body}"
    );
    // Another client's poll of this code: invalid_grant, and the code's own timing is untouched.
    assert_eq!(poll_error(&app, other_id, code).await, "invalid_grant");
    // Expired: expired_token.
    let d2 = start(&app, cid, "orders:read").await;
    app.execute_sql(
        "UPDATE oauth_device_codes SET expires_at = 1 WHERE decision IS NULL AND last_polled_at IS NULL",
    )
    .await;
    assert_eq!(
        poll_error(&app, cid, d2["device_code"].as_str().unwrap()).await,
        "expired_token"
    );
    // Not a device code, or none.
    assert_eq!(poll_error(&app, cid, "pdc_nonsense").await, "invalid_grant");
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[("grant_type", GRANT), ("client_id", cid)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    // The device endpoint's own refusals: a scope the client may not ask, a client without the
    // grant, no client at all; none of them stores a code.
    let before = count_codes(&app).await;
    let r = device_authorization(&app, cid, "admin").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
    let web = crate::oauth::web_client(&app, &root).await;
    let r = app
        .client
        .post(app.url("/oauth2/device_authorization"))
        .header(
            "authorization",
            crate::oauth::basic(
                web["client_id"].as_str().unwrap(),
                web["client_secret"].as_str().unwrap(),
            ),
        )
        .form(&[("scope", "orders:read")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
    let r = device_authorization(&app, "cli_nobody", "orders:read").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    assert_eq!(count_codes(&app).await, before);
}

async fn count_codes(app: &TestApp) -> i64 {
    app.scalar_i64("SELECT COUNT(*) FROM oauth_device_codes")
        .await
}

async fn user_code_guessing_is_throttled_per_address(b: Backend) {
    let app = spawn(b).await;
    let root = app.root_key().await;
    let tv = tv_client(&app, &root, "TV").await;
    let d = start(&app, tv["client_id"].as_str().unwrap(), "orders:read").await;
    app.register("ada@example.com").await;
    let mut browser = Browser::new(&app);
    browser.log_in("ada@example.com", "/account").await;
    // Ten wrong guesses are answered "not valid"; then every try waits, a right code too.
    for i in 0..10 {
        let r = browser
            .get(&format!("/device?user_code=BBBB-BBB{}", ["B", "C"][i % 2]))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "guess {i}");
        assert!(r.text().await.unwrap().contains("not valid"));
    }
    let r = browser
        .get(&format!(
            "/device?user_code={}",
            d["user_code"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
}
