//! Client ID Metadata Documents over HTTP: a client whose `client_id` is the URL of its document
//! runs the code flow like any other (its redirect URIs from the document, its tokens naming the
//! URL, the consent page naming the host and calling it unverified), the document fetched once per
//! its HTTP caching; a document that is huge, slow, redirects, names another `client_id`, wants a
//! secret, sits on a loopback address (without the test-only switch) or on a refused domain is no
//! client, and leaves nothing behind. Both stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, HeaderValue, StatusCode as S, header};
use axum::response::IntoResponse;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oauth::{Browser, REDIRECT, authorize_url, form_value, param, pkce, query_of};
use crate::on_both_stores;
use crate::support::{Backend, TestApp, jwt_claims};

on_both_stores!(
    a_metadata_document_is_a_client,
    documents_that_break_the_rules_are_no_client,
    one_site_brings_a_bounded_number_of_new_documents,
);

/// The documents' server; counts fetches of the good one.
async fn documents(fetches: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let base = b.clone();
        let fetches = Arc::clone(&fetches);
        async move {
            let url = format!("{base}{}", uri.path());
            let doc = |extra: Value| {
                let mut d = json!({
                    "client_id": url,
                    "client_name": "Doc App",
                    "redirect_uris": [REDIRECT],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "token_endpoint_auth_method": "none",
                });
                for (k, v) in extra.as_object().unwrap() {
                    d[k] = v.clone();
                }
                d
            };
            let mut h = HeaderMap::new();
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600"),
            );
            match uri.path() {
                "/good.json" => {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    (h, axum::Json(doc(json!({})))).into_response()
                }
                "/mismatch.json" => {
                    axum::Json(doc(json!({"client_id": format!("{base}/good.json")})))
                        .into_response()
                }
                "/secret.json" => axum::Json(doc(
                    json!({"token_endpoint_auth_method": "client_secret_basic"}),
                ))
                .into_response(),
                "/javascript.json" => {
                    axum::Json(doc(json!({"redirect_uris": ["javascript:alert(1)"]})))
                        .into_response()
                }
                "/huge.json" => {
                    axum::Json(doc(json!({"padding": "x".repeat(64 * 1024)}))).into_response()
                }
                "/redirect.json" => (S::FOUND, [(header::LOCATION, "/good.json")]).into_response(),
                "/slow.json" => {
                    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
                    axum::Json(doc(json!({}))).into_response()
                }
                "/html.json" => "<html>not json</html>".into_response(),
                p if p.starts_with("/many-") => axum::Json(doc(json!({}))).into_response(),
                _ => S::NOT_FOUND.into_response(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn a_metadata_document_is_a_client(b: Backend) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let docs = documents(Arc::clone(&fetches)).await;
    let app = TestApp::spawn_with(b, |c| c.oauth_fetch_allow_private_for_tests = true).await;
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
    assert_eq!(meta["client_id_metadata_document_supported"], true);
    let cid = format!("{docs}/good.json");
    let user = app.register("ada@example.com").await;
    let mut browser = Browser::new(&app);
    browser.log_in("ada@example.com", "/account").await;

    let (verifier, challenge) = pkce();
    let url = authorize_url(&cid, "openid offline_access", &challenge, "s1", "n1");
    let r = browser.get(&url).await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"consent-unverified\""), "{html}");
    assert!(
        html.contains("127.0.0.1"),
        "the consent page names the document's host"
    );
    assert!(html.contains("Doc App"));
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
    let q = query_of(r.headers()["location"].to_str().unwrap());
    let code = param(&q, "code").unwrap().to_owned();
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", cid.as_str()),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    // Outside, the client is its URL.
    assert_eq!(
        jwt_claims(t["access_token"].as_str().unwrap())["client_id"],
        cid
    );
    let id = jwt_claims(t["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], cid);
    assert_eq!(id["sub"], user["id"]);
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", cid.as_str()),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "refresh as the URL");
    let r = app
        .client
        .post(app.url("/oauth2/introspect"))
        .header("x-api-key", &root)
        .form(&[("token", t["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["client_id"], cid);
    // A redirect URI the document does not list is an error page, never a redirect.
    let other = url.replace("127.0.0.1%3A9", "127.0.0.1%3A9%2Fother");
    let r = browser.get(&other).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // A long URL (here 430 bytes) is a client id like any other at the token endpoint: the made-up
    // code is refused, not the client.
    let long = format!("{docs}/many-{}.json", "x".repeat(400));
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", long.as_str()),
            ("code", "pac_made_up"),
            ("code_verifier", &"v".repeat(43)),
            ("redirect_uri", REDIRECT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "invalid_grant",
        "the long document client authenticated"
    );
    // Fetched once: max-age=600 holds it across every request above.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

async fn documents_that_break_the_rules_are_no_client(b: Backend) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let docs = documents(Arc::clone(&fetches)).await;
    let app =
        TestApp::spawn_with(b.clone(), |c| c.oauth_fetch_allow_private_for_tests = true).await;
    let browser = Browser::new(&app);
    let (_, challenge) = pkce();
    let page = |cid: String| {
        let url = authorize_url(&cid, "openid", &challenge, "s", "n");
        let browser = &browser;
        async move { browser.get(&url).await }
    };
    for doc in [
        "mismatch.json",
        "secret.json",
        "javascript.json",
        "huge.json",
        "redirect.json",
        "html.json",
        "missing.json",
        "slow.json",
    ] {
        let started = std::time::Instant::now();
        let r = page(format!("{docs}/{doc}")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{doc}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(7),
            "{doc}: a slow document is given up on"
        );
    }
    // URLs the draft rules out are not even fetched.
    for bad in [
        format!("{docs}/"),
        format!("{docs}/good.json?x=1"),
        format!("{docs}/a/../good.json"),
    ] {
        let r = page(bad.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 0);
    assert_eq!(
        app.scalar_i64("SELECT COUNT(*) FROM oauth_clients").await,
        0,
        "no refused document left a client"
    );
    app.stop().await;

    // Without the test-only switch a loopback document is never fetched; a denied domain neither.
    let app = TestApp::spawn(b.clone()).await;
    let browser = Browser::new(&app);
    let r = browser
        .get(&authorize_url(
            &format!("{docs}/good.json"),
            "openid",
            &challenge,
            "s",
            "n",
        ))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
    let app = TestApp::spawn_with(b, |c| {
        c.oauth_fetch_allow_private_for_tests = true;
        c.oauth_client_metadata_denied_domains = vec!["127.0.0.1".into()];
    })
    .await;
    let browser = Browser::new(&app);
    let r = browser
        .get(&authorize_url(
            &format!("{docs}/good.json"),
            "openid",
            &challenge,
            "s",
            "n",
        ))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fetches.load(Ordering::SeqCst), 0);
}

/// Anyone can name a new document, and each becomes a row: 20 new ones per site per hour, then
/// refused until the hour passes; those already known keep working.
async fn one_site_brings_a_bounded_number_of_new_documents(b: Backend) {
    let docs = documents(Arc::new(AtomicUsize::new(0))).await;
    let app = TestApp::spawn_with(b, |c| c.oauth_fetch_allow_private_for_tests = true).await;
    let browser = Browser::new(&app);
    let (_, challenge) = pkce();
    let status = |n: usize| {
        let url = authorize_url(
            &format!("{docs}/many-{n}.json"),
            "openid",
            &challenge,
            "s",
            "n",
        );
        let browser = &browser;
        async move { browser.get(&url).await.status() }
    };
    for n in 0..20 {
        assert_eq!(
            status(n).await,
            StatusCode::SEE_OTHER,
            "document {n} is a client (to the login)"
        );
    }
    assert_eq!(
        status(20).await,
        StatusCode::BAD_REQUEST,
        "the 21st new one is refused"
    );
    assert_eq!(
        status(3).await,
        StatusCode::SEE_OTHER,
        "a known one still works"
    );
    assert_eq!(
        app.scalar_i64("SELECT COUNT(*) FROM oauth_clients").await,
        20
    );
}
