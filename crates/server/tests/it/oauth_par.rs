//! Pushed authorization requests (RFC 9126) over HTTP: `/oauth2/par` checks the request as the
//! authorization endpoint would and answers a `request_uri`; the browser's request with it runs
//! through login and consent to one code; the `request_uri` is spent by that code, expires in 60 s
//! unopened, belongs to its client, and a client (or the server) can require it. Both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oauth::{
    Browser, REDIRECT, basic, form_value, param, pkce, query_of, redeem, web_client,
};
use crate::on_both_stores;
use crate::support::{Backend, TestApp, uuid_hex};

on_both_stores!(
    a_pushed_request_leads_through_login_and_consent_to_one_code,
    pushes_are_checked_like_authorization_requests_and_nothing_is_kept,
    a_client_can_be_required_to_push,
);

const URN: &str = "urn:ietf:params:oauth:request_uri:";

async fn push(app: &TestApp, c: &Value, form: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .post(app.url("/oauth2/par"))
        .header(
            "authorization",
            basic(
                c["client_id"].as_str().unwrap(),
                c["client_secret"].as_str().unwrap(),
            ),
        )
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn push_error(app: &TestApp, c: &Value, form: &[(&str, &str)]) -> String {
    let r = push(app, c, form).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A good pushed request, with `changes` (an empty value drops the parameter).
fn request_form(challenge: &str, changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = [
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("scope", "orders:read"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in changes {
        f.retain(|(n, _)| n != k);
        if !v.is_empty() {
            f.push(((*k).to_owned(), (*v).to_owned()));
        }
    }
    f
}

fn authorize_with(client_id: &str, request_uri: &str) -> String {
    format!(
        "/oauth2/authorize?client_id={client_id}&request_uri={}",
        request_uri.replace(':', "%3A")
    )
}

async fn a_pushed_request_leads_through_login_and_consent_to_one_code(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let cid = c["client_id"].as_str().unwrap();
    app.register("ada@example.com").await;
    let meta: Value = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["pushed_authorization_request_endpoint"],
        app.url("/oauth2/par")
    );
    assert_eq!(meta["require_pushed_authorization_requests"], false);

    let (verifier, challenge) = pkce();
    let state = uuid_hex();
    let r = push(
        &app,
        &c,
        &[
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", "openid orders:read"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", &state),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let pushed: Value = r.json().await.unwrap();
    assert_eq!(pushed["expires_in"], 60);
    let request_uri = pushed["request_uri"].as_str().unwrap();
    assert!(request_uri.starts_with(URN), "{request_uri}");

    // The browser carries only client_id and request_uri, through the login and the consent.
    let mut browser = Browser::new(&app);
    let url = authorize_with(cid, request_uri);
    let r = browser.get(&url).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let login = r.headers()["location"].to_str().unwrap().to_owned();
    let return_to = param(&query_of(&login), "return_to").unwrap().to_owned();
    assert!(return_to.contains("request_uri="), "{return_to}");
    assert!(!return_to.contains("code_challenge"), "{return_to}");
    let r = browser.log_in("ada@example.com", &return_to).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("data-scope=\"orders:read\""), "{html}");
    let r = browser
        .post(
            "/consent",
            &[
                ("csrf_token", &form_value(&html, "csrf_token")),
                ("request", &form_value(&html, "request")),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with(REDIRECT), "{to}");
    let q = query_of(&to);
    assert_eq!(param(&q, "state"), Some(state.as_str()));
    assert_eq!(param(&q, "iss"), Some(app.base.as_str()));
    let a = crate::oauth::Authorized {
        code: param(&q, "code").unwrap().to_owned(),
        verifier,
        nonce: String::new(),
    };
    let r = redeem(&app, &c, &a).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Spent by that code: the same request_uri is refused with a page, not a redirect.
    let r = browser.get(&url).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("expired or was used"));
}

async fn pushes_are_checked_like_authorization_requests_and_nothing_is_kept(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let cid = c["client_id"].as_str().unwrap();
    let other = web_client(&app, &root).await;
    let (_, challenge) = pkce();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("code_challenge", "")], "invalid_request"),
        (&[("code_challenge_method", "plain")], "invalid_request"),
        (&[("scope", "admin")], "invalid_scope"),
        (&[("response_type", "token")], "unsupported_response_type"),
        (
            &[("redirect_uri", "https://evil.example/cb")],
            "invalid_request",
        ),
        (
            &[("request_uri", "urn:ietf:params:oauth:request_uri:x")],
            "invalid_request",
        ),
        (
            &[("resource", "https://elsewhere.example")],
            "invalid_target",
        ),
    ];
    for (changes, code) in cases {
        let f = request_form(&challenge, changes);
        let form: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(push_error(&app, &c, &form).await, *code, "{changes:?}");
    }
    // A wrong secret: 401 invalid_client.
    let r = app
        .client
        .post(app.url("/oauth2/par"))
        .header("authorization", basic(cid, "pcs_wrong"))
        .form(&[("response_type", "code")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.scalar_i64("SELECT COUNT(*) FROM oauth_par_requests")
            .await,
        0,
        "no refused push is kept"
    );

    // Another client cannot use this client's request_uri; an unknown one is a page too.
    let f = request_form(&challenge, &[]);
    let form: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pushed: Value = push(&app, &c, &form).await.json().await.unwrap();
    let request_uri = pushed["request_uri"].as_str().unwrap();
    let browser = Browser::new(&app);
    for url in [
        authorize_with(other["client_id"].as_str().unwrap(), request_uri),
        authorize_with(cid, &format!("{URN}nonsense")),
        authorize_with(cid, "https://elsewhere.example/req"),
    ] {
        let r = browser.get(&url).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
    }
    // The other client's try did not touch it: still good for its own client.
    let r = browser.get(&authorize_with(cid, request_uri)).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the first push is still good"
    );
    // Unopened for 60 s: expired.
    let pushed: Value = push(&app, &c, &form).await.json().await.unwrap();
    app.execute_sql("UPDATE oauth_par_requests SET expires_at = 1 WHERE opened_at IS NULL")
        .await;
    let r = browser
        .get(&authorize_with(
            cid,
            pushed["request_uri"].as_str().unwrap(),
        ))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

async fn a_client_can_be_required_to_push(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let cid = c["client_id"].as_str().unwrap();
    let r = app
        .client
        .patch(app.url(&format!("/admin/v1/clients/{cid}")))
        .header("authorization", format!("Bearer {root}"))
        .json(&json!({ "require_pushed_authorization_requests": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let (_, challenge) = pkce();
    let browser = Browser::new(&app);
    let r = browser
        .get(&crate::oauth::authorize_url(
            cid,
            "orders:read",
            &challenge,
            "s1",
            "n1",
        ))
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with(REDIRECT), "{to}");
    let q = query_of(&to);
    assert_eq!(param(&q, "error"), Some("invalid_request"));
    assert_eq!(param(&q, "state"), Some("s1"));
    // Pushed, the same request goes on to the login.
    let pushed: Value = push(
        &app,
        &c,
        &[
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", "orders:read"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    let r = browser
        .get(&authorize_with(
            cid,
            pushed["request_uri"].as_str().unwrap(),
        ))
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login?")
    );
    // The whole server can require it too.
    let app2 = TestApp::spawn_with(Backend::Sqlite, |c| c.oauth_require_par = true).await;
    let meta: Value = app2
        .client
        .get(app2.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["require_pushed_authorization_requests"], true);
}
