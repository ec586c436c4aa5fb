//! The OAuth 2.0 / OpenID Connect provider over HTTP (API.md "OAuth 2.0 and OpenID Connect"): the
//! code flow through the real login and consent forms, each grant, introspection, revocation,
//! userinfo, discovery, logout, and the refusals, on both stores. Outside client libraries drive the
//! same flows in `interop`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::{Client, StatusCode, redirect};
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp, jwt_claims};

on_both_stores!(
    code_flow_through_login_and_consent_issues_verified_tokens,
    a_code_is_single_use_and_its_replay_revokes_what_it_issued,
    exactly_one_of_concurrent_redemptions_wins,
    refresh_rotates_narrows_and_never_widens,
    client_credentials_introspection_and_revocation,
    token_endpoint_refusals_write_nothing,
    authorization_errors_are_pages_or_redirects_as_rfc_6749_says,
    consent_is_remembered_listed_and_withdrawable,
    admin_manages_clients_and_rotates_secrets,
    logout_ends_the_session_and_its_grants,
    opaque_tokens_are_introspected_and_revoked,
    public_clients_are_answered_cross_origin_from_their_redirect_origins_only,
    back_channel_logout_posts_a_signed_logout_token_and_retries,
    the_id_token_algorithm_is_rs256_or_what_the_client_registered,
    an_issuer_with_a_path_has_its_metadata_at_the_path_inserted_urls,
);

pub const REDIRECT: &str = "http://127.0.0.1:9/cb";

pub fn no_redirects() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = format!("v{}", crate::support::uuid_hex()).repeat(4);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    (verifier, URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

/// Registers a client through the admin API; returns its registration answer.
pub async fn client(app: &TestApp, root: &str, body: &Value) -> Value {
    let r = app
        .post_with_key("/admin/v1/clients", root, Some(body))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

pub async fn web_client(app: &TestApp, root: &str) -> Value {
    client(
        app,
        root,
        &json!({
            "name": "Orders <App>",
            "type": "confidential",
            "redirect_uris": [REDIRECT],
            "post_logout_redirect_uris": ["https://app.example/bye"],
            "scopes": ["openid", "profile", "email", "offline_access", "orders:read", "orders:write"],
            "audiences": ["https://api.example.com"],
        }),
    )
    .await
}

pub fn form_value(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    let raw = &rest[..rest.find('"').unwrap()];
    raw.replace("&amp;", "&")
        .replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#x27;", "'")
}

pub fn query_of(location: &str) -> Vec<(String, String)> {
    let q = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
    url_pairs(q)
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A browser: a cookie, no redirects followed.
pub struct Browser {
    pub http: Client,
    pub cookie: Option<String>,
    pub base: String,
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        Self {
            http: no_redirects(),
            cookie: None,
            base: app.base.clone(),
        }
    }

    pub async fn get(&self, path_or_url: &str) -> reqwest::Response {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let mut r = self.http.get(url);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        r.send().await.unwrap()
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("origin", &self.base)
            .form(form);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        r.send().await.unwrap()
    }

    /// Logs in through the form; follows to `return_to`.
    pub async fn log_in(&mut self, email: &str, return_to: &str) -> reqwest::Response {
        let r = self
            .post(
                "/login",
                &[
                    ("email", email),
                    ("password", PASSWORD),
                    ("return_to", return_to),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        self.cookie = Some(cookie);
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        self.get(&to).await
    }
}

pub struct Authorized {
    pub code: String,
    pub verifier: String,
    pub nonce: String,
}

pub fn authorize_url(
    client_id: &str,
    scope: &str,
    challenge: &str,
    state: &str,
    nonce: &str,
) -> String {
    format!(
        "/oauth2/authorize?response_type=code&client_id={client_id}&redirect_uri={}&scope={}&code_challenge={challenge}&code_challenge_method=S256&state={state}&nonce={nonce}",
        REDIRECT.replace(':', "%3A").replace('/', "%2F"),
        scope.replace(' ', "%20"),
    )
}

/// The whole browser half: authorize, log in (first time), approve (when asked), and the redirect
/// back with the code, whose `state` and `iss` are checked.
pub async fn authorize(
    app: &TestApp,
    b: &mut Browser,
    client_id: &str,
    scope: &str,
    email: &str,
) -> Authorized {
    let (verifier, challenge) = pkce();
    let state = crate::support::uuid_hex();
    let nonce = crate::support::uuid_hex();
    let url = authorize_url(client_id, scope, &challenge, &state, &nonce);
    let mut r = b.get(&url).await;
    if b.cookie.is_none() {
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let login = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            login.starts_with("/login?return_to=/oauth2/authorize%3F"),
            "{login}"
        );
        let return_to = param(&query_of(&login), "return_to").unwrap().to_owned();
        r = b.log_in(email, &return_to).await;
    }
    if r.status() == StatusCode::OK {
        let html = r.text().await.unwrap();
        assert!(html.contains("id=\"consent-client\""), "{html}");
        let csrf = form_value(&html, "csrf_token");
        let request = form_value(&html, "request");
        r = b
            .post(
                "/consent",
                &[
                    ("csrf_token", &csrf),
                    ("request", &request),
                    ("decision", "approve"),
                ],
            )
            .await;
    }
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{:?}", r.text().await);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with(REDIRECT), "{to}");
    let q = query_of(&to);
    assert_eq!(param(&q, "state"), Some(state.as_str()));
    assert_eq!(param(&q, "iss"), Some(app.base.as_str()));
    Authorized {
        code: param(&q, "code").expect("a code").to_owned(),
        verifier,
        nonce,
    }
}

pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// `POST /oauth2/token` with Basic client authentication.
pub async fn token(app: &TestApp, c: &Value, form: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .post(app.url("/oauth2/token"))
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

pub async fn redeem(app: &TestApp, c: &Value, a: &Authorized) -> reqwest::Response {
    token(
        app,
        c,
        &[
            ("grant_type", "authorization_code"),
            ("code", &a.code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &a.verifier),
        ],
    )
    .await
}

async fn oauth_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    body
}

async fn introspect(app: &TestApp, c: &Value, t: &str) -> Value {
    let r = app
        .client
        .post(app.url("/oauth2/introspect"))
        .header(
            "authorization",
            basic(
                c["client_id"].as_str().unwrap(),
                c["client_secret"].as_str().unwrap(),
            ),
        )
        .form(&[("token", t)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

async fn revoke(app: &TestApp, c: &Value, t: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth2/revoke"))
        .header(
            "authorization",
            basic(
                c["client_id"].as_str().unwrap(),
                c["client_secret"].as_str().unwrap(),
            ),
        )
        .form(&[("token", t)])
        .send()
        .await
        .unwrap()
}

async fn code_flow_through_login_and_consent_issues_verified_tokens(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let secret = c["client_secret"].as_str().unwrap();
    assert!(
        secret.starts_with("pcs_") && secret.len() >= 4 + 43,
        "256 bits: {secret}"
    );
    let user = app.register("ada@example.com").await;
    let mut browser = Browser::new(&app);
    let cid = c["client_id"].as_str().unwrap();
    let a = authorize(
        &app,
        &mut browser,
        cid,
        "openid profile email offline_access orders:read",
        "ada@example.com",
    )
    .await;
    let r = redeem(&app, &c, &a).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(
        t["scope"],
        "openid profile email offline_access orders:read"
    );
    assert!(t["refresh_token"].as_str().unwrap().starts_with("prt_"));
    // The access token: RFC 9068, for the client's audience, bound to the browser session.
    let access = t["access_token"].as_str().unwrap();
    let claims = jwt_claims(access);
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["client_id"], cid);
    assert_eq!(claims["aud"], "https://api.example.com");
    assert_eq!(claims["iss"], app.base);
    assert!(claims["sid"].as_str().unwrap().starts_with("ses_"));
    // The ID token: RS256, from a key in the JWKS, with the claims OIDC Core asks for.
    let id = t["id_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(id.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the ID token's key is published")
        .clone();
    let signed = id.rsplit_once('.').unwrap().0;
    let sig = URL_SAFE_NO_PAD
        .decode(id.rsplit('.').next().unwrap())
        .unwrap();
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap();
    aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &sig,
        )
        .expect("the ID token verifies against the JWKS");
    let idc = jwt_claims(id);
    assert_eq!(idc["aud"], cid);
    assert_eq!(idc["sub"], user["id"]);
    assert_eq!(idc["nonce"], a.nonce.as_str());
    assert_eq!(idc["sid"], claims["sid"]);
    assert_eq!(idc["email"], "ada@example.com");
    assert_eq!(idc["amr"], json!(["pwd"]));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access.as_bytes());
    assert_eq!(
        idc["at_hash"],
        URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
    );
    assert!(idc["auth_time"].as_i64().unwrap() <= idc["iat"].as_i64().unwrap());
    // Userinfo, by GET and by POST; a token without openid is not enough.
    for post in [false, true] {
        let req = if post {
            app.client.post(app.url("/oauth2/userinfo"))
        } else {
            app.client.get(app.url("/oauth2/userinfo"))
        };
        let r = req.bearer_auth(access).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let info: Value = r.json().await.unwrap();
        assert_eq!(info["sub"], user["id"]);
        assert_eq!(info["email"], "ada@example.com");
    }
    let r = app
        .client
        .get(app.url("/oauth2/userinfo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let r = app
        .client
        .get(app.url("/oauth2/userinfo"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    // The access token is for the API's audience, not ours: our own API refuses it.
    let r = app.get_bearer("/v1/me", access).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Discovery: both documents, the same, and exactly what is served.
    let one: Value = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let two: Value = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one, two);
    assert_eq!(one["issuer"], app.base);
    assert_eq!(one["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(one["authorization_response_iss_parameter_supported"], true);
    assert_eq!(one["response_types_supported"], json!(["code"]));
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "end_session_endpoint",
        "jwks_uri",
    ] {
        let url = one[endpoint].as_str().unwrap();
        let r = app.client.get(url).send().await.unwrap();
        assert_ne!(r.status(), StatusCode::NOT_FOUND, "{endpoint} {url}");
    }
    // Served: the device endpoint; off by default: dynamic registration.
    assert!(one.get("device_authorization_endpoint").is_some());
    assert!(one.get("registration_endpoint").is_none());
    app.wait_for_audit(&root, "oauth.code_redeemed").await;
    app.stop().await;
}

async fn a_code_is_single_use_and_its_replay_revokes_what_it_issued(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    app.register("bo@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        c["client_id"].as_str().unwrap(),
        "openid offline_access orders:read",
        "bo@example.com",
    )
    .await;
    let t: Value = redeem(&app, &c, &a).await.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&app, &c, access).await["active"], true);
    let body = oauth_error(
        redeem(&app, &c, &a).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    assert!(
        !body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay"),
        "says nothing more"
    );
    // What the first redemption produced is revoked: the access token by its jti, the refresh
    // token's family.
    assert_eq!(introspect(&app, &c, access).await["active"], false);
    assert_eq!(introspect(&app, &c, refresh).await["active"], false);
    let r = token(
        &app,
        &c,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    app.wait_for_audit(&root, "oauth.code_replayed").await;
    app.stop().await;
}

async fn exactly_one_of_concurrent_redemptions_wins(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    app.register("cy@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        c["client_id"].as_str().unwrap(),
        "orders:read",
        "cy@example.com",
    )
    .await;
    let a = std::sync::Arc::new(a);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, c, a) = (
            app.client.clone(),
            app.url("/oauth2/token"),
            c.clone(),
            a.clone(),
        );
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .header(
                    "authorization",
                    basic(
                        c["client_id"].as_str().unwrap(),
                        c["client_secret"].as_str().unwrap(),
                    ),
                )
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", a.code.as_str()),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", a.verifier.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            s => assert_eq!(s, StatusCode::BAD_REQUEST),
        }
    }
    assert_eq!(ok, 1, "exactly one redemption wins");
    app.stop().await;
}

async fn refresh_rotates_narrows_and_never_widens(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let other = web_client(&app, &root).await;
    app.register("di@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        c["client_id"].as_str().unwrap(),
        "openid offline_access orders:read orders:write",
        "di@example.com",
    )
    .await;
    let t: Value = redeem(&app, &c, &a).await.json().await.unwrap();
    let first = t["refresh_token"].as_str().unwrap().to_owned();
    // Another client's token: refused, and nothing is spent.
    let r = token(
        &app,
        &other,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    // Widening is refused before anything is spent.
    let r = token(
        &app,
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &first),
            ("scope", "orders:read admin"),
        ],
    )
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_scope").await;
    // Narrowing: this access token has less; the family keeps what was granted.
    let r = token(
        &app,
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &first),
            ("scope", "orders:read"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2: Value = r.json().await.unwrap();
    assert_eq!(t2["scope"], "orders:read");
    assert_eq!(
        jwt_claims(t2["access_token"].as_str().unwrap())["scope"],
        "orders:read"
    );
    assert!(
        t2.get("id_token").is_none(),
        "no openid in the narrowed scope"
    );
    let second = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let r = token(
        &app,
        &c,
        &[("grant_type", "refresh_token"), ("refresh_token", &second)],
    )
    .await;
    let t3: Value = r.json().await.unwrap();
    assert_eq!(
        t3["scope"],
        "openid offline_access orders:read orders:write"
    );
    assert!(t3["id_token"].is_string());
    // The first token again is reuse: the family ends, its newest token too.
    let r = token(
        &app,
        &c,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let r = token(
        &app,
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t3["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    // An OAuth refresh token is not a first-party one.
    let a = authorize(
        &app,
        &mut browser,
        c["client_id"].as_str().unwrap(),
        "offline_access",
        "di@example.com",
    )
    .await;
    let t: Value = redeem(&app, &c, &a).await.json().await.unwrap();
    let r = app
        .post_json(
            "/v1/auth/refresh",
            &json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn client_credentials_introspection_and_revocation(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let svc = client(
        &app,
        &root,
        &json!({
            "name": "billing", "type": "confidential", "grant_types": ["client_credentials"],
            "scopes": ["orders:read", "orders:write"], "audiences": ["https://api.example.com"],
            "token_endpoint_auth_method": "client_secret_post",
        }),
    )
    .await;
    let (id, secret) = (
        svc["client_id"].as_str().unwrap(),
        svc["client_secret"].as_str().unwrap(),
    );
    let post = |form: Vec<(&'static str, String)>| {
        let http = app.client.clone();
        let url = app.url("/oauth2/token");
        async move { http.post(url).form(&form).send().await.unwrap() }
    };
    let r = post(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", id.into()),
        ("client_secret", secret.into()),
        ("scope", "orders:read".into()),
    ])
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert!(t.get("refresh_token").is_none() && t.get("id_token").is_none());
    let claims = jwt_claims(t["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(claims["aud"], "https://api.example.com");
    // A resource it was not given is invalid_target; a scope it lacks, invalid_scope.
    let r = post(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", id.into()),
        ("client_secret", secret.into()),
        ("resource", "https://other.example".into()),
    ])
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_target").await;
    let r = post(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", id.into()),
        ("client_secret", secret.into()),
        ("scope", "orders:delete".into()),
    ])
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_scope").await;
    // Basic is not its registered method.
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .header("authorization", basic(id, secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;
    // Introspection: by the client, about its token; by a key with oauth:introspect, about any.
    let access = t["access_token"].as_str().unwrap();
    let intro = |auth: (&'static str, String), token: String| {
        let http = app.client.clone();
        let url = app.url("/oauth2/introspect");
        async move {
            http.post(url)
                .header(auth.0, auth.1)
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
        }
    };
    let r = app
        .client
        .post(app.url("/oauth2/introspect"))
        .form(&[
            ("token", access),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], id);
    assert_eq!(v["token_type"], "Bearer");
    let r = intro(("x-api-key", root.clone()), access.to_owned()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["active"], true);
    // API keys are introspected too (by a key allowed to), as token_type api_key, spending nothing.
    let r = intro(("x-api-key", root.clone()), root.clone()).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "api_key");
    // A user's own token may not introspect.
    let u = app.user_with_tokens("ed@example.com").await;
    let r = intro(
        (
            "authorization",
            format!("Bearer {}", u["access_token"].as_str().unwrap()),
        ),
        access.to_owned(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Revocation: unknown tokens are fine; the access token is denied at once, everywhere we verify.
    let r = app
        .client
        .post(app.url("/oauth2/revoke"))
        .form(&[
            ("token", "nonsense"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .post(app.url("/oauth2/revoke"))
        .form(&[
            ("token", access),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = intro(("x-api-key", root.clone()), access.to_owned()).await;
    assert_eq!(r.json::<Value>().await.unwrap()["active"], false);
    // A first-party token revoked through RFC 7009 is refused by our own API at once.
    let app_client = web_client(&app, &root).await;
    let mine = u["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_bearer("/v1/me", mine).await.status(),
        StatusCode::OK
    );
    revoke(&app, &app_client, mine).await;
    assert_eq!(
        app.get_bearer("/v1/me", mine).await.status(),
        StatusCode::OK,
        "another client's token is left alone"
    );
    app.wait_for_audit(&root, "oauth.token_revoked").await;
    app.stop().await;
}

async fn token_endpoint_refusals_write_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let other = web_client(&app, &root).await;
    let public = client(&app, &root, &json!({"name": "spa", "type": "public", "redirect_uris": [REDIRECT], "scopes": ["openid"]})).await;
    app.register("fay@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        c["client_id"].as_str().unwrap(),
        "openid",
        "fay@example.com",
    )
    .await;
    let code_form = |verifier: &str| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", a.code.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_verifier", verifier.to_owned()),
        ]
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        ("wrong verifier", app.client.post(app.url("/oauth2/token")).header("authorization", basic(c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap())).form(&code_form(&"x".repeat(43))), StatusCode::BAD_REQUEST, "invalid_grant"),
        ("another client's code", app.client.post(app.url("/oauth2/token")).header("authorization", basic(other["client_id"].as_str().unwrap(), other["client_secret"].as_str().unwrap())).form(&code_form(&a.verifier)), StatusCode::BAD_REQUEST, "invalid_grant"),
        ("wrong secret", app.client.post(app.url("/oauth2/token")).header("authorization", basic(c["client_id"].as_str().unwrap(), "pcs_wrong")).form(&code_form(&a.verifier)), StatusCode::UNAUTHORIZED, "invalid_client"),
        ("confidential client without a secret", app.client.post(app.url("/oauth2/token")).form(&[code_form(&a.verifier), vec![("client_id", c["client_id"].as_str().unwrap().to_owned())]].concat()), StatusCode::UNAUTHORIZED, "invalid_client"),
        ("public client sending a secret", app.client.post(app.url("/oauth2/token")).form(&[code_form(&a.verifier), vec![("client_id", public["client_id"].as_str().unwrap().to_owned()), ("client_secret", "anything".to_owned())]].concat()), StatusCode::UNAUTHORIZED, "invalid_client"),
        ("unknown client", app.client.post(app.url("/oauth2/token")).header("authorization", basic("cli_00000000000000000000000000000000", "x")).form(&code_form(&a.verifier)), StatusCode::UNAUTHORIZED, "invalid_client"),
        ("unknown grant", app.client.post(app.url("/oauth2/token")).header("authorization", basic(c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap())).form(&[("grant_type", "password")]), StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        ("a grant it lacks", app.client.post(app.url("/oauth2/token")).header("authorization", basic(c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap())).form(&[("grant_type", "client_credentials")]), StatusCode::BAD_REQUEST, "unauthorized_client"),
        ("duplicated parameter", app.client.post(app.url("/oauth2/token")).header("authorization", basic(c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap())).body(format!("grant_type=authorization_code&code={}&code=x&redirect_uri={REDIRECT}&code_verifier={}", a.code, a.verifier)).header("content-type", "application/x-www-form-urlencoded"), StatusCode::BAD_REQUEST, "invalid_request"),
        ("JSON body", app.client.post(app.url("/oauth2/token")).json(&json!({"grant_type": "client_credentials"})), StatusCode::BAD_REQUEST, "invalid_request"),
        ("wrong redirect_uri", app.client.post(app.url("/oauth2/token")).header("authorization", basic(c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap())).form(&[("grant_type", "authorization_code"), ("code", a.code.as_str()), ("redirect_uri", "http://127.0.0.1:9/other"), ("code_verifier", a.verifier.as_str())]), StatusCode::BAD_REQUEST, "invalid_grant"),
    ];
    for (name, req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{name}");
        if name == "wrong secret" {
            assert!(
                r.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic"),
                "{name}"
            );
        }
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{name}: {body}");
    }
    // None of those spent the code: the right request still redeems it.
    assert_eq!(redeem(&app, &c, &a).await.status(), StatusCode::OK);
    // Failed client authentications back off, like failed logins.
    let mut last = StatusCode::OK;
    for _ in 0..8 {
        last = app
            .client
            .post(app.url("/oauth2/token"))
            .header(
                "authorization",
                basic(other["client_id"].as_str().unwrap(), "pcs_guess"),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    app.wait_for_audit(&root, "oauth.client_auth_failed").await;
    app.stop().await;
}

async fn authorization_errors_are_pages_or_redirects_as_rfc_6749_says(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let cid = c["client_id"].as_str().unwrap();
    let browser = Browser::new(&app);
    let (_, challenge) = pkce();
    let good = authorize_url(cid, "openid", &challenge, "st", "n");
    // A bad client or redirect URI: a page, never a redirect.
    for bad in [
        good.replace(cid, "cli_00000000000000000000000000000000"),
        good.replace("%2Fcb", "%2Fevil"),
        good.replace("127.0.0.1", "localhost"),
        format!("{good}&client_id={cid}"),
    ] {
        let r = browser.get(&bad).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.headers().get("location").is_none());
    }
    // A loopback redirect URI may differ in its port (RFC 8252 §7.3).
    let r = browser
        .get(&good.replace("127.0.0.1%3A9", "127.0.0.1%3A51234"))
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login")
    );
    // Everything else goes back to the client with error, state and iss.
    let bad_requests = [
        (
            good.replace("code_challenge_method=S256", "code_challenge_method=plain"),
            "invalid_request",
        ),
        (
            good.replace(&format!("code_challenge={challenge}&"), ""),
            "invalid_request",
        ),
        (
            good.replace("response_type=code", "response_type=token"),
            "unsupported_response_type",
        ),
        (
            good.replace("scope=openid", "scope=openid%20admin"),
            "invalid_scope",
        ),
        (format!("{good}&state=again"), "invalid_request"),
        (
            format!("{good}&resource=https%3A%2F%2Fnot-allowed.example"),
            "invalid_target",
        ),
        (format!("{good}&prompt=none"), "login_required"),
        (format!("{good}&request=eyJ"), "request_not_supported"),
        (
            good.replace("state=st", &format!("state={}", "s".repeat(2000))),
            "invalid_request",
        ),
    ];
    for (url, code) in bad_requests {
        let r = browser.get(&url).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{url}");
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(to.starts_with(REDIRECT), "{url} -> {to}");
        let q = query_of(&to);
        assert_eq!(param(&q, "error"), Some(code), "{url}");
        assert_eq!(param(&q, "iss"), Some(app.base.as_str()));
        if code != "invalid_request" || !url.contains("sssss") {
            assert!(param(&q, "state").is_some(), "{url}");
        }
    }
    // form_post: an HTML form to the client, the script allowed by hash alone.
    let r = browser
        .get(&format!("{}&response_mode=form_post&prompt=none", good))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'sha256-") && csp.contains("form-action http://127.0.0.1:9"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(
        html.contains("action=\"http:&#x2f;&#x2f;127.0.0.1:9&#x2f;cb\"")
            && html.contains("value=\"login_required\""),
        "{html}"
    );
    app.stop().await;
}

async fn consent_is_remembered_listed_and_withdrawable(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let cid = c["client_id"].as_str().unwrap();
    app.register("gil@example.com").await;
    let mut browser = Browser::new(&app);
    authorize(
        &app,
        &mut browser,
        cid,
        "openid orders:read",
        "gil@example.com",
    )
    .await;
    // Asked again for the same scopes: straight back with a code, no page.
    let (_, challenge) = pkce();
    let r = browser
        .get(&authorize_url(
            cid,
            "openid orders:read",
            &challenge,
            "s2",
            "n2",
        ))
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("code=pac_")
    );
    // A new scope asks again, and the page names the client, the redirect host and each scope.
    let r = browser
        .get(&authorize_url(
            cid,
            "openid orders:read orders:write",
            &challenge,
            "s3",
            "n3",
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.starts_with("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Orders &lt;App&gt;"),
        "escaped client name: {html}"
    );
    assert!(html.contains("id=\"consent-host\">127.0.0.1:9<"));
    assert!(html.contains("data-scope=\"orders:write\""));
    // A consent post without the CSRF field, or from another site, does nothing.
    let request = form_value(&html, "request");
    let r = browser
        .post(
            "/consent",
            &[("request", &request), ("decision", "approve")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Deny goes back with access_denied.
    let csrf = form_value(&html, "csrf_token");
    let r = browser
        .post(
            "/consent",
            &[
                ("csrf_token", &csrf),
                ("request", &request),
                ("decision", "deny"),
            ],
        )
        .await;
    let q = query_of(r.headers()["location"].to_str().unwrap());
    assert_eq!(param(&q, "error"), Some("access_denied"));
    assert_eq!(param(&q, "state"), Some("s3"));
    // prompt=none when consent is missing: consent_required.
    let r = browser
        .get(&format!(
            "{}&prompt=none",
            authorize_url(cid, "orders:write", &challenge, "s4", "n4")
        ))
        .await;
    assert_eq!(
        param(
            &query_of(r.headers()["location"].to_str().unwrap()),
            "error"
        ),
        Some("consent_required")
    );
    // Listed on /account, and withdrawn there.
    let html = browser.get("/account").await.text().await.unwrap();
    assert!(
        html.contains(&format!("data-client-id=\"{cid}\"")),
        "{html}"
    );
    let csrf = form_value(&html, "csrf_token");
    let r = browser
        .post(
            &format!("/account/consents/{cid}/withdraw"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = browser
        .get(&authorize_url(
            cid,
            "openid orders:read",
            &challenge,
            "s5",
            "n5",
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "asked again after withdrawing");
    app.wait_for_audit(&root, "oauth.consent_withdrawn").await;
    app.stop().await;
}

async fn admin_manages_clients_and_rotates_secrets(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    // Every bad field at once.
    let r = app.post_with_key("/admin/v1/clients", &root, Some(&json!({
        "name": "", "type": "public", "redirect_uris": ["http://localhost/cb", "https://a.example/cb#frag"],
        "grant_types": ["implicit", "client_credentials"], "scopes": ["admin"],
        "token_endpoint_auth_method": "client_secret_basic",
    }))).await;
    let body =
        crate::support::assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "name",
        "redirect_uris",
        "grant_types",
        "scopes",
        "token_endpoint_auth_method",
    ] {
        assert!(fields.contains(&f), "{f} missing from {body}");
    }
    let c = web_client(&app, &root).await;
    let cid = c["client_id"].as_str().unwrap().to_owned();
    let old = c["client_secret"].as_str().unwrap().to_owned();
    // The secret is never shown again, and never stored as itself.
    let r = app
        .get_with_key(&format!("/admin/v1/clients/{cid}"), &root)
        .await;
    let shown: Value = r.json().await.unwrap();
    assert!(shown.get("client_secret").is_none());
    assert_eq!(shown["token_endpoint_auth_method"], "client_secret_basic");
    let list: Value = app
        .get_with_key("/admin/v1/clients", &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["clients"].as_array().unwrap().len(), 1);
    // PATCH changes what it names; the type cannot change.
    let r = app
        .call(
            reqwest::Method::PATCH,
            &format!("/admin/v1/clients/{cid}"),
            &crate::support::Auth::Key(root.clone()),
            Some(&json!({"name": "Renamed", "skip_consent": true})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["name"], "Renamed");
    assert_eq!(v["redirect_uris"], json!([REDIRECT]));
    let r = app
        .call(
            reqwest::Method::PATCH,
            &format!("/admin/v1/clients/{cid}"),
            &crate::support::Auth::Key(root.clone()),
            Some(&json!({"type": "public"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Rotation: the new secret works, the old one stops at once.
    let r = app
        .post_with_key(&format!("/admin/v1/clients/{cid}/secret"), &root, None)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rotated: Value = r.json().await.unwrap();
    let new = rotated["client_secret"].as_str().unwrap();
    assert_ne!(new, old);
    let probe = |secret: String| {
        let http = app.client.clone();
        let url = app.url("/oauth2/token");
        let id = cid.clone();
        async move {
            http.post(url)
                .header("authorization", basic(&id, &secret))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", "prt_x")])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(probe(old.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        probe(new.to_owned()).await,
        StatusCode::BAD_REQUEST,
        "authenticated; the token is what is wrong"
    );
    // A user is not an administrator.
    let u = app.user_with_tokens("hal@example.com").await;
    let r = app
        .get_bearer("/admin/v1/clients", u["access_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Delete: gone, and its secret no longer authenticates.
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/admin/v1/clients/{cid}"),
            &crate::support::Auth::Key(root.clone()),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(probe(new.to_owned()).await, StatusCode::UNAUTHORIZED);
    let r = app
        .get_with_key(&format!("/admin/v1/clients/{cid}"), &root)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.wait_for_audit(&root, "client.deleted").await;
    app.stop().await;
}

async fn logout_ends_the_session_and_its_grants(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = web_client(&app, &root).await;
    let cid = c["client_id"].as_str().unwrap();
    app.register("ivy@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        cid,
        "openid offline_access",
        "ivy@example.com",
    )
    .await;
    let t: Value = redeem(&app, &c, &a).await.json().await.unwrap();
    let id = t["id_token"].as_str().unwrap();
    // A post-logout URI it did not register: a page, no redirect.
    let r = browser.get(&format!("/oauth2/logout?id_token_hint={id}&post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Without a hint for this session the user is asked first.
    let r = browser
        .get(&format!("/oauth2/logout?client_id={cid}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("id=\"logout-confirm\""));
    // With it: logged out at once, back to the client with its state.
    let r = browser.get(&format!("/oauth2/logout?id_token_hint={id}&post_logout_redirect_uri=https%3A%2F%2Fapp.example%2Fbye&state=xyz")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "https://app.example/bye?state=xyz");
    let r = browser.get("/account").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the session is over");
    let r = token(
        &app,
        &c,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant").await;
    app.wait_for_audit(&root, "oauth.logout").await;
    app.stop().await;
}

async fn opaque_tokens_are_introspected_and_revoked(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let svc = client(
        &app,
        &root,
        &json!({
            "name": "reports", "type": "confidential", "grant_types": ["client_credentials"],
            "scopes": ["reports:read"], "access_token_format": "opaque",
        }),
    )
    .await;
    let r = token(&app, &svc, &[("grant_type", "client_credentials")]).await;
    let t: Value = r.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap();
    assert!(access.starts_with("pat_"), "{access}");
    let v = introspect(&app, &svc, access).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["scope"], "reports:read");
    assert_eq!(v["sub"], svc["client_id"]);
    assert_eq!(revoke(&app, &svc, access).await.status(), StatusCode::OK);
    assert_eq!(introspect(&app, &svc, access).await["active"], false);
    app.stop().await;
}

async fn public_clients_are_answered_cross_origin_from_their_redirect_origins_only(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let spa = client(
        &app,
        &root,
        &json!({"name": "spa", "type": "public", "redirect_uris": [REDIRECT, "https://spa.example/cb"],
                "scopes": ["openid", "email"]}),
    )
    .await;
    let web = web_client(&app, &root).await;
    let spa_id = spa["client_id"].as_str().unwrap();
    app.register("jo@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(&app, &mut browser, spa_id, "openid email", "jo@example.com").await;
    let form = |code: &str| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("client_id", spa_id.to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_verifier", a.verifier.clone()),
        ]
    };
    // A preflight from anywhere is answered; the request itself is judged.
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/oauth2/token"))
        .header("origin", "https://spa.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://spa.example"
    );
    // Another origin: refused, nothing spent.
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .header("origin", "https://evil.example")
        .form(&form(&a.code))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    // The origin of one of its redirect URIs: answered, readable by that origin.
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .header("origin", "https://spa.example")
        .form(&form(&a.code))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://spa.example"
    );
    let t: Value = r.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap();
    let r = app
        .client
        .get(app.url("/oauth2/userinfo"))
        .bearer_auth(access)
        .header("origin", "https://spa.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://spa.example"
    );
    let r = app
        .client
        .post(app.url("/oauth2/revoke"))
        .header("origin", "https://spa.example")
        .form(&[("client_id", spa_id), ("token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://spa.example"
    );
    // A confidential client is never called from a browser.
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .header("origin", "http://127.0.0.1:9")
        .header(
            "authorization",
            basic(
                web["client_id"].as_str().unwrap(),
                web["client_secret"].as_str().unwrap(),
            ),
        )
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "prt_x")])
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    app.stop().await;
}

/// A receiver of back-channel logouts: answers the first POST 500 and the others 204, and hands on
/// every `logout_token` it was sent.
async fn logout_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/backchannel", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(at) = text.find("\r\n\r\n") {
                    let len = text[..at]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= at + 4 + len {
                        break Some(
                            String::from_utf8_lossy(&buf[at + 4..at + 4 + len]).to_string(),
                        );
                    }
                }
            };
            let Some(body) = body else { continue };
            seen += 1;
            let status = if seen == 1 {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let _ = sock
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let token = url_pairs(&body)
                .into_iter()
                .find(|(k, _)| k == "logout_token")
                .map(|(_, v)| v)
                .unwrap_or_default();
            let _ = tx.send(token);
        }
    });
    (url, rx)
}

async fn back_channel_logout_posts_a_signed_logout_token_and_retries(b: Backend) {
    let (url, mut received) = logout_receiver().await;
    let body = json!({
        "name": "bc app", "type": "confidential", "redirect_uris": [REDIRECT],
        "scopes": ["openid", "offline_access"], "backchannel_logout_uri": url,
        "post_logout_redirect_uris": ["https://app.example/bye"],
    });
    // Plain http is refused unless the operator allows loopback receivers.
    let strict = TestApp::spawn(b.clone()).await;
    let root = strict.root_key().await;
    let r = strict
        .post_with_key("/admin/v1/clients", &root, Some(&body))
        .await;
    crate::support::assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    strict.stop().await;

    let app = TestApp::spawn_with(b, |c| c.oauth_allow_loopback_backchannel = true).await;
    let root = app.root_key().await;
    let c = client(&app, &root, &body).await;
    let cid = c["client_id"].as_str().unwrap();
    let meta: Value = app
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["backchannel_logout_supported"], true);
    let user = app.register("kim@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        cid,
        "openid offline_access",
        "kim@example.com",
    )
    .await;
    let t: Value = redeem(&app, &c, &a).await.json().await.unwrap();
    let id = t["id_token"].as_str().unwrap();
    let sid = jwt_claims(id)["sid"].clone();
    let started = std::time::Instant::now();
    let r = browser.get(&format!("/oauth2/logout?id_token_hint={id}&post_logout_redirect_uri=https%3A%2F%2Fapp.example%2Fbye")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(400),
        "the logout did not wait for the client"
    );
    // The first delivery is answered 500; the retry is accepted.
    let wait = std::time::Duration::from_secs(10);
    let first = tokio::time::timeout(wait, received.recv())
        .await
        .expect("a logout token")
        .unwrap();
    let second = tokio::time::timeout(wait, received.recv())
        .await
        .expect("a retry")
        .unwrap();
    assert_eq!(first, second, "the same token is retried");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(first.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "logout+jwt");
    assert_eq!(header["alg"], "RS256");
    let claims = jwt_claims(&first);
    assert_eq!(claims["iss"], app.base);
    assert_eq!(claims["aud"], cid);
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["sid"], sid);
    assert!(claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(claims.get("nonce").is_none());
    // A client that got only an ID token (no refresh token, so no family) is told too.
    let (url2, mut received2) = logout_receiver().await;
    let mut body2 = body.clone();
    body2["backchannel_logout_uri"] = json!(url2);
    body2["scopes"] = json!(["openid"]);
    let c2 = client(&app, &root, &body2).await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        c2["client_id"].as_str().unwrap(),
        "openid",
        "kim@example.com",
    )
    .await;
    let t: Value = redeem(&app, &c2, &a).await.json().await.unwrap();
    assert!(t.get("refresh_token").is_none());
    let r = browser
        .get(&format!(
            "/oauth2/logout?id_token_hint={}",
            t["id_token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "logged out, no redirect asked");
    let token = tokio::time::timeout(wait, received2.recv())
        .await
        .expect("a logout token")
        .unwrap();
    assert_eq!(jwt_claims(&token)["aud"], c2["client_id"]);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), received.recv())
            .await
            .is_err(),
        "the first client had no grant in this session"
    );
    app.stop().await;
}

async fn the_id_token_algorithm_is_rs256_or_what_the_client_registered(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let mut body = json!({"name": "es", "type": "confidential", "redirect_uris": [REDIRECT], "scopes": ["openid"],
                          "id_token_signed_response_alg": "HS256"});
    let r = app
        .post_with_key("/admin/v1/clients", &root, Some(&body))
        .await;
    let problem =
        crate::support::assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(
        problem["errors"][0]["field"],
        "id_token_signed_response_alg"
    );
    body["id_token_signed_response_alg"] = json!("ES256");
    let c = client(&app, &root, &body).await;
    assert_eq!(c["id_token_signed_response_alg"], "ES256");
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
        meta["id_token_signing_alg_values_supported"],
        json!(["RS256", "ES256"])
    );
    app.register("lu@example.com").await;
    let mut browser = Browser::new(&app);
    let a = authorize(
        &app,
        &mut browser,
        c["client_id"].as_str().unwrap(),
        "openid",
        "lu@example.com",
    )
    .await;
    let t: Value = redeem(&app, &c, &a).await.json().await.unwrap();
    let id = t["id_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(id.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    let web = web_client(&app, &root).await;
    assert_eq!(web["id_token_signed_response_alg"], "RS256", "the default");
    app.stop().await;
}

/// RFC 8414 §3.1 (and the MCP authorization spec, which tries it first): an issuer with a path has
/// its metadata at `/.well-known/oauth-authorization-server/<path>`; other paths are not found.
async fn an_issuer_with_a_path_has_its_metadata_at_the_path_inserted_urls(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.issuer = c.issuer.as_ref().map(|i| format!("{i}/tenant-a"));
    })
    .await;
    for path in [
        "/.well-known/oauth-authorization-server/tenant-a",
        "/.well-known/openid-configuration/tenant-a",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let doc: Value = r.json().await.unwrap();
        assert_eq!(doc["issuer"], format!("{}/tenant-a", app.base));
    }
    for path in [
        "/.well-known/oauth-authorization-server/tenant-b",
        "/.well-known/oauth-authorization-server/tenant-a/x",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
}
