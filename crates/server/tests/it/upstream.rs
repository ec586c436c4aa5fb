//! Sign-in with upstream providers, against real upstreams over real HTTP:
//!
//! * a local OpenID provider written here ([`FakeOp`]) that can be told to misbehave in every way the
//!   callback must refuse (wrong nonce, issuer, audience, `alg: none`, unknown key, expired, mix-up,
//!   slow, down);
//! * a local server that plays GitHub's OAuth and `/user`, `/user/emails` endpoints as documented;
//! * a second Portcullis process (the real binary) as the upstream of the first.
//!
//! node-oidc-provider, in Chromium, is in `browser.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_core::jwt::{JwsAlg, SigningKey};
use portcullis_server::config::SecretSetting;
use portcullis_server::upstream::{UpstreamConfig, UpstreamKind};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::oauth::{form_value, no_redirects};
use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp};

/// A browser: cookies per origin (host and port, as a browser would keep them apart by name only,
/// which is why the tests give each server its own host or cookie names), redirects followed by hand.
pub struct Agent {
    http: Client,
    jar: HashMap<String, BTreeMap<String, String>>,
    /// Every URL visited, in order.
    pub visited: Vec<String>,
}

fn origin_of(url: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap();
    u.origin().ascii_serialization()
}

impl Agent {
    pub fn new() -> Self {
        Self {
            http: no_redirects(),
            jar: HashMap::new(),
            visited: Vec::new(),
        }
    }

    fn keep(&mut self, url: &str, res: &reqwest::Response) {
        let jar = self.jar.entry(origin_of(url)).or_default();
        for v in res.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if v.contains("Max-Age=0") || value.is_empty() {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn cookies(&self, url: &str) -> Option<String> {
        let jar = self.jar.get(&origin_of(url))?;
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub fn cookie(&self, origin: &str, name: &str) -> Option<String> {
        self.jar.get(origin)?.get(name).cloned()
    }

    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        self.visited.push(url.to_owned());
        let mut r = self.http.get(url);
        if let Some(c) = self.cookies(url) {
            r = r.header("cookie", c);
        }
        let res = r.send().await.unwrap();
        self.keep(url, &res);
        res
    }

    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.visited.push(url.to_owned());
        let mut r = self
            .http
            .post(url)
            .header("origin", origin_of(url))
            .form(form);
        if let Some(c) = self.cookies(url) {
            r = r.header("cookie", c);
        }
        let res = r.send().await.unwrap();
        self.keep(url, &res);
        res
    }

    /// Follows redirects from `res` (got at `url`) to the first answer that is not one; returns
    /// where it was and the answer.
    pub async fn follow(
        &mut self,
        mut url: String,
        mut res: reqwest::Response,
    ) -> (String, reqwest::Response) {
        for _ in 0..20 {
            if !res.status().is_redirection() {
                return (url, res);
            }
            let to = res.headers()["location"].to_str().unwrap().to_owned();
            url = reqwest::Url::parse(&url)
                .unwrap()
                .join(&to)
                .unwrap()
                .to_string();
            res = self.get(&url).await;
        }
        panic!("too many redirects: {:?}", self.visited);
    }

    pub async fn open(&mut self, url: &str) -> (String, reqwest::Response) {
        let res = self.get(url).await;
        self.follow(url.to_owned(), res).await
    }
}

// ---------------------------------------------------------------------------------------------
// A local OpenID provider that does what it is told.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Good,
    WrongNonce,
    NoNonce,
    OtherIssuer,
    OtherAudience,
    AlgNone,
    UnknownKey,
    Expired,
    /// The authorization response's `iss` names another provider (mix-up).
    IssMismatch,
    /// The token endpoint answers after 12 s (our bound is 10).
    Slow,
}

pub struct OpState {
    pub base: String,
    key: SigningKey,
    stranger: SigningKey,
    pub mode: Mode,
    pub client_id: String,
    pub secret: String,
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    /// Put the email in the ID token (else only UserInfo has it).
    pub email_in_id_token: bool,
    /// The last authorization request's query.
    pub authorize: HashMap<String, String>,
    codes: HashMap<String, HashMap<String, String>>,
    pub token_requests: usize,
}

pub type Op = Arc<Mutex<OpState>>;

pub async fn fake_op() -> Op {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (key, _) = SigningKey::generate(JwsAlg::Es256).unwrap();
    let (stranger, _) = SigningKey::generate(JwsAlg::Es256).unwrap();
    let op = Arc::new(Mutex::new(OpState {
        base,
        key,
        stranger,
        mode: Mode::Good,
        client_id: "portcullis-downstream".into(),
        secret: "op-secret-0123456789".into(),
        sub: "op-user-1".into(),
        email: "op.person@example.org".into(),
        email_verified: true,
        email_in_id_token: false,
        authorize: HashMap::new(),
        codes: HashMap::new(),
        token_requests: 0,
    }));
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(op_discovery))
        .route("/jwks", get(op_jwks))
        .route("/authorize", get(op_authorize))
        .route("/token", post(op_token))
        .route("/userinfo", get(op_userinfo))
        .with_state(Arc::clone(&op));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    op
}

async fn op_discovery(State(op): State<Op>) -> axum::Json<Value> {
    let base = op.lock().unwrap().base.clone();
    axum::Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
    }))
}

async fn op_jwks(State(op): State<Op>) -> axum::Json<Value> {
    let jwk = op
        .lock()
        .unwrap()
        .key
        .verifying_key()
        .unwrap()
        .jwk()
        .clone();
    axum::Json(json!({ "keys": [jwk] }))
}

async fn op_authorize(State(op): State<Op>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut s = op.lock().unwrap();
    s.authorize = q.clone();
    let code = format!("code-{}", crate::support::uuid_hex());
    s.codes.insert(code.clone(), q.clone());
    let iss = if s.mode == Mode::IssMismatch {
        "https://other-provider.example".to_owned()
    } else {
        s.base.clone()
    };
    let mut to = reqwest::Url::parse(&q["redirect_uri"]).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"])
        .append_pair("iss", &iss);
    Redirect::to(to.as_str()).into_response()
}

fn sign(key: &SigningKey, alg_none: bool, claims: &Value) -> String {
    if alg_none {
        let h = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let p = B64.encode(serde_json::to_vec(claims).unwrap());
        return format!("{h}.{p}.");
    }
    let mut header = serde_json::Map::new();
    header.insert("typ".into(), "JWT".into());
    header.insert("kid".into(), key.kid().into());
    key.sign_with_header(header, claims).unwrap()
}

async fn op_token(
    State(op): State<Op>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let mode = op.lock().unwrap().mode;
    if mode == Mode::Slow {
        tokio::time::sleep(Duration::from_secs(12)).await;
    }
    let mut s = op.lock().unwrap();
    s.token_requests += 1;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", s.client_id, s.secret))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let Some(req) = s
        .codes
        .remove(f.get("code").map(String::as_str).unwrap_or_default())
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let challenge = B64.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    if req.get("code_challenge") != Some(&challenge)
        || f.get("redirect_uri") != req.get("redirect_uri")
    {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "error_description": "PKCE or redirect_uri mismatch"}))).into_response();
    }
    let now = portcullis_core::clock::Millis::now().as_secs();
    let mut claims = json!({
        "iss": if mode == Mode::OtherIssuer { "https://impostor.example".to_owned() } else { s.base.clone() },
        "sub": s.sub,
        "aud": if mode == Mode::OtherAudience { "someone-else".to_owned() } else { s.client_id.clone() },
        "iat": now,
        "exp": if mode == Mode::Expired { now - 600 } else { now + 300 },
        "nonce": match mode { Mode::WrongNonce => "not-the-nonce".to_owned(), _ => req.get("nonce").cloned().unwrap_or_default() },
    });
    if mode == Mode::NoNonce {
        claims.as_object_mut().unwrap().remove("nonce");
    }
    if s.email_in_id_token {
        claims["email"] = json!(s.email);
        claims["email_verified"] = json!(s.email_verified);
    }
    let key = if mode == Mode::UnknownKey {
        &s.stranger
    } else {
        &s.key
    };
    let id_token = sign(key, mode == Mode::AlgNone, &claims);
    axum::Json(json!({
        "access_token": format!("op-at-{}", s.sub),
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
    }))
    .into_response()
}

async fn op_userinfo(State(op): State<Op>, headers: HeaderMap) -> Response {
    let s = op.lock().unwrap();
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(format!("Bearer op-at-{}", s.sub).as_str())
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(json!({ "sub": s.sub, "email": s.email, "email_verified": s.email_verified, "name": "Op Person" }))
        .into_response()
}

pub fn oidc_upstream(id: &str, issuer: &str, client_id: &str, secret: &str) -> UpstreamConfig {
    UpstreamConfig {
        id: id.into(),
        kind: UpstreamKind::Oidc,
        name: format!("Provider {id}"),
        issuer: Some(issuer.into()),
        client_id: client_id.into(),
        client_secret: Some(SecretSetting::new(secret.into())),
        scopes: None,
        link_by_email: true,
        store_tokens: false,
        id_token_alg: None,
        authorization_endpoint: None,
        token_endpoint: None,
        api_url: None,
    }
}

async fn with_op(
    backend: Backend,
    op: &Op,
    tweak: impl FnOnce(&mut portcullis_server::Config),
) -> TestApp {
    let (base, id, secret) = {
        let s = op.lock().unwrap();
        (s.base.clone(), s.client_id.clone(), s.secret.clone())
    };
    TestApp::spawn_with(backend, |c| {
        c.upstream = vec![oidc_upstream("op", &base, &id, &secret)];
        tweak(c);
    })
    .await
}

async fn count(app: &TestApp, table: &str) -> i64 {
    app.scalar_i64(&format!("SELECT COUNT(*) FROM {table}"))
        .await
}

async fn failures(app: &TestApp, root: &str) -> Vec<String> {
    let r = app
        .get_with_key("/admin/v1/audit?type=upstream.login_failed", root)
        .await;
    let body: Value = r.json().await.unwrap();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

on_both_stores!(
    an_openid_provider_signs_a_new_person_in_and_again_later,
    every_bad_answer_from_a_provider_is_refused_and_links_nothing,
    an_unverified_email_never_takes_over_an_account,
    github_signs_in_by_its_verified_email_and_links_to_a_signed_in_user,
    an_oauth_client_of_ours_gets_upstream_login_unchanged,
    another_portcullis_is_the_upstream_of_this_one,
    node_oidc_provider_is_an_upstream_and_its_email_comes_from_userinfo,
);

async fn an_openid_provider_signs_a_new_person_in_and_again_later(backend: Backend) {
    let op = fake_op().await;
    let app = with_op(backend, &op, |_| {}).await;
    // The login page has the button (a plain link) and the other links.
    let login = no_redirects()
        .get(app.url("/login?return_to=/account"))
        .send()
        .await
        .unwrap();
    let html = login.text().await.unwrap();
    assert!(
        html.contains("href=\"/v1/upstream/op/start?return_to=&#x2f;account\""),
        "{html}"
    );
    assert!(html.contains("Continue with Provider op"));
    assert!(
        html.contains("href=\"/reset\"") && html.contains("/register?return_to="),
        "{html}"
    );

    let mut agent = Agent::new();
    let start = app.url("/v1/upstream/op/start?return_to=/account");
    let first = agent.get(&start).await;
    assert_eq!(first.status(), StatusCode::FOUND);
    let set = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.starts_with("__Host-portcullis-upstream=")
            && set.contains("HttpOnly")
            && set.contains("Secure")
            && set.contains("SameSite=Lax")
            && set.contains("Max-Age=600"),
        "{set}"
    );
    let (url, page) = agent.follow(start.clone(), first).await;
    assert_eq!(url, app.url("/account"), "{:?}", agent.visited);
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("op.person@example.org"), "{html}");
    assert!(
        agent
            .cookie(&app.base, "__Host-portcullis-upstream")
            .is_none(),
        "the binding cookie is cleared"
    );
    // What we asked the provider for.
    let q = op.lock().unwrap().authorize.clone();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], app.url("/v1/upstream/op/callback"));
    assert_eq!(q["scope"], "openid email profile");
    assert!(
        q["state"].len() >= 43 && q["nonce"].len() >= 43 && q["code_challenge"].len() == 43,
        "{q:?}"
    );
    // Nothing secret stored: the state only as a hash, and no nonce or verifier at all.
    let stored = app
        .scalar_i64("SELECT COUNT(*) FROM upstream_logins WHERE used_at IS NOT NULL")
        .await;
    assert_eq!(stored, 1);

    // The new account: verified (the provider said so), no password, one identity.
    let cookie = format!(
        "__Host-portcullis={}",
        agent.cookie(&app.base, "__Host-portcullis").unwrap()
    );
    let me: Value = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "op.person@example.org");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["name"], "Op Person");
    let ids: Value = app
        .client
        .get(app.url("/v1/me/identities"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = ids["identities"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{ids}");
    assert_eq!(list[0]["provider"], "op");
    assert_eq!(list[0]["provider_name"], "Provider op");
    // The only way in cannot be unlinked.
    let csrf = {
        let page = app
            .client
            .get(app.url("/account"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        form_value(&page, "csrf_token")
    };
    let r = app
        .client
        .delete(app.url(&format!(
            "/v1/me/identities/{}",
            list[0]["id"].as_str().unwrap()
        )))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", &app.base)
        .send()
        .await
        .unwrap();
    crate::support::assert_problem(r, StatusCode::CONFLICT, "last_sign_in_method").await;

    // Later, another browser: the same person, the same account.
    let users = count(&app, "users").await;
    let mut later = Agent::new();
    let (url, _) = later.open(&start).await;
    assert_eq!(url, app.url("/account"));
    assert_eq!(count(&app, "users").await, users);
    assert_eq!(count(&app, "user_identities").await, 1);
    let root = app.root_key().await;
    let ok = app.wait_for_audit(&root, "upstream.login_succeeded").await;
    assert_eq!(ok["actor"], me["id"]);
    let linked = app.wait_for_audit(&root, "identity.linked").await;
    assert!(linked.to_string().contains("new_account"), "{linked}");
    app.wait_for_audit(&root, "upstream.login_started").await;
    app.stop().await;
}

/// Runs one sign-in through the provider in `mode`; returns the final page's status and reason.
async fn refused_with(app: &TestApp, op: &Op, mode: Mode) -> (StatusCode, String, String) {
    op.lock().unwrap().mode = mode;
    let mut agent = Agent::new();
    let (_, page) = agent
        .open(&app.url("/v1/upstream/op/start?return_to=/account"))
        .await;
    let status = page.status();
    let reason = page
        .headers()
        .get("x-portcullis-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let html = page.text().await.unwrap();
    (status, reason, html)
}

async fn every_bad_answer_from_a_provider_is_refused_and_links_nothing(backend: Backend) {
    let op = fake_op().await;
    let app = with_op(backend, &op, |_| {}).await;
    let root = app.root_key().await;
    for (mode, reason) in [
        (Mode::WrongNonce, "id_token_nonce"),
        (Mode::NoNonce, "id_token_nonce"),
        (Mode::OtherIssuer, "id_token_issuer"),
        (Mode::OtherAudience, "id_token_audience"),
        (Mode::AlgNone, "id_token_algorithm"),
        (Mode::UnknownKey, "id_token_unknown_key"),
        (Mode::Expired, "id_token_expired"),
        (Mode::IssMismatch, "issuer_mismatch"),
    ] {
        let (status, got, html) = refused_with(&app, &op, mode).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{mode:?}: {html}");
        assert_eq!(got, reason, "{mode:?}");
        assert!(html.contains("Sign-in refused"), "{mode:?}: {html}");
        assert_eq!(count(&app, "users").await, 0, "{mode:?} made an account");
        assert_eq!(count(&app, "user_identities").await, 0, "{mode:?} linked");
    }
    // A mix-up is refused before the code is spent anywhere.
    let before = op.lock().unwrap().token_requests;
    refused_with(&app, &op, Mode::IssMismatch).await;
    assert_eq!(op.lock().unwrap().token_requests, before);

    // A replayed callback, and a callback in a browser that did not start the sign-in.
    op.lock().unwrap().mode = Mode::Good;
    let mut agent = Agent::new();
    let start = app.url("/v1/upstream/op/start?return_to=/account");
    let r = agent.get(&start).await;
    let to_op = r.headers()["location"].to_str().unwrap().to_owned();
    let at_op = agent.get(&to_op).await;
    let callback = at_op.headers()["location"].to_str().unwrap().to_owned();
    let mut other = Agent::new();
    let r = other.get(&callback).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["x-portcullis-error"], "browser_mismatch");
    // That spent the state: the right browser cannot use it either now.
    let r = agent.get(&callback).await;
    assert_eq!(r.headers()["x-portcullis-error"], "state");
    let r = agent
        .get(&app.url("/v1/upstream/op/callback?code=x&state=made-up"))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["x-portcullis-error"], "state");
    // The provider's own refusal is shown as such.
    let r = agent.get(&start).await;
    let to_op = r.headers()["location"].to_str().unwrap().to_owned();
    let state = crate::oauth::param(&crate::oauth::query_of(&to_op), "state")
        .unwrap()
        .to_owned();
    let r = agent
        .get(&app.url(&format!("/v1/upstream/op/callback?error=access_denied&error_description=The+user+said+no&state={state}")))
        .await;
    assert_eq!(r.headers()["x-portcullis-error"], "upstream_denied");
    assert!(r.text().await.unwrap().contains("The user said no"));
    assert_eq!(count(&app, "user_identities").await, 0);
    // Unknown providers.
    let r = agent.get(&app.url("/v1/upstream/nope/start")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A return_to on another site is not followed: the person lands on /account.
    let mut agent = Agent::new();
    let (url, _) = agent
        .open(&app.url("/v1/upstream/op/start?return_to=https://evil.example/steal"))
        .await;
    assert_eq!(url, app.url("/account"), "{:?}", agent.visited);

    // A provider that answers too slowly, and one that is down: a clear page, in bounded time.
    let began = std::time::Instant::now();
    let (status, reason, html) = refused_with(&app, &op, Mode::Slow).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::BAD_GATEWAY, "upstream_timeout"),
        "{html}"
    );
    assert!(html.contains("Try again in a moment"), "{html}");
    assert!(
        began.elapsed() < Duration::from_secs(12),
        "{:?}",
        began.elapsed()
    );
    op.lock().unwrap().mode = Mode::Good;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.upstream = vec![oidc_upstream("down", &format!("http://{closed}"), "x", "y")];
    })
    .await;
    let r = Agent::new().get(&down.url("/v1/upstream/down/start")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers()["x-portcullis-error"], "upstream_unreachable");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("cannot be reached right now")
    );
    down.stop().await;

    // Every refusal was audited with its reason.
    let seen = failures(&app, &root).await.join("\n");
    for reason in [
        "id_token_nonce",
        "id_token_algorithm",
        "id_token_unknown_key",
        "issuer_mismatch",
        "browser_mismatch",
        "state",
        "upstream_denied",
        "upstream_timeout",
    ] {
        assert!(
            seen.contains(&format!("\"{reason}\"")),
            "no failure with reason {reason}: {seen}"
        );
    }
    app.stop().await;
}

async fn an_unverified_email_never_takes_over_an_account(backend: Backend) {
    let op = fake_op().await;
    let app = with_op(backend, &op, |_| {}).await;
    let local = app.register("op.person@example.org").await;
    // The provider vouches for nothing: refused, though the address matches.
    op.lock().unwrap().email_verified = false;
    let (status, reason, html) = refused_with(&app, &op, Mode::Good).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::BAD_REQUEST, "email_unverified_upstream"),
        "{html}"
    );
    assert!(html.contains("already exists"), "{html}");
    // The provider vouches, but the account here never proved the address (someone may have
    // registered another person's email): refused too.
    op.lock().unwrap().email_verified = true;
    let (_, reason, _) = refused_with(&app, &op, Mode::Good).await;
    assert_eq!(reason, "email_unverified_here");
    assert_eq!(count(&app, "user_identities").await, 0);
    // Both verified: linked to the account, and signed in as it.
    app.execute_sql("UPDATE users SET email_verified_at = 1")
        .await;
    let mut agent = Agent::new();
    let (url, _) = agent
        .open(&app.url("/v1/upstream/op/start?return_to=/account"))
        .await;
    assert_eq!(url, app.url("/account"));
    let cookie = format!(
        "__Host-portcullis={}",
        agent.cookie(&app.base, "__Host-portcullis").unwrap()
    );
    let me: Value = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], local["id"]);
    assert_eq!(count(&app, "users").await, 1);
    app.stop().await;

    // With link_by_email off, even a verified match is not linked.
    let op = fake_op().await;
    let app = with_op(Backend::Sqlite, &op, |c| {
        c.upstream[0].link_by_email = false
    })
    .await;
    app.register("op.person@example.org").await;
    app.execute_sql("UPDATE users SET email_verified_at = 1")
        .await;
    let (_, reason, _) = refused_with(&app, &op, Mode::Good).await;
    assert_eq!(reason, "link_by_email_off");
    // And with registration closed, nobody new gets in.
    app.stop().await;
    let op = fake_op().await;
    let app = with_op(Backend::Sqlite, &op, |c| {
        c.registration = portcullis_server::config::Registration::Closed
    })
    .await;
    let (_, reason, _) = refused_with(&app, &op, Mode::Good).await;
    assert_eq!(reason, "registration_closed");
    assert_eq!(count(&app, "users").await, 0);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// GitHub, as documented: https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps
// and the REST API's GET /user and GET /user/emails.

pub struct GithubState {
    pub base: String,
    pub emails: Value,
    pub user_id: u64,
    codes: HashMap<String, HashMap<String, String>>,
}

pub type Github = Arc<Mutex<GithubState>>;

pub async fn fake_github() -> Github {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let gh = Arc::new(Mutex::new(GithubState {
        base,
        emails: json!([
            { "email": "octo-old@example.net", "primary": false, "verified": true, "visibility": null },
            { "email": "octocat@example.net", "primary": true, "verified": true, "visibility": "public" },
        ]),
        user_id: 583231,
        codes: HashMap::new(),
    }));
    let app = axum::Router::new()
        .route("/login/oauth/authorize", get(gh_authorize))
        .route("/login/oauth/access_token", post(gh_token))
        .route("/user", get(gh_user))
        .route("/user/emails", get(gh_emails))
        .with_state(Arc::clone(&gh));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    gh
}

async fn gh_authorize(
    State(gh): State<Github>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let code = format!("ghcode{}", crate::support::uuid_hex());
    gh.lock().unwrap().codes.insert(code.clone(), q.clone());
    let mut to = reqwest::Url::parse(&q["redirect_uri"]).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"]);
    Redirect::to(to.as_str()).into_response()
}

async fn gh_token(
    State(gh): State<Github>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let mut s = gh.lock().unwrap();
    let ok_client = f.get("client_id").map(String::as_str) == Some("Iv1.gh-client")
        && f.get("client_secret").map(String::as_str) == Some("gh-secret-0123456789");
    let Some(req) = s
        .codes
        .remove(f.get("code").map(String::as_str).unwrap_or_default())
    else {
        return axum::Json(json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."})).into_response();
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let challenge = B64.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    if !ok_client || req.get("code_challenge") != Some(&challenge) {
        return axum::Json(json!({"error": "incorrect_client_credentials"})).into_response();
    }
    // GitHub answers form-encoded unless asked for JSON.
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return "access_token=gho_x&scope=user&token_type=bearer".into_response();
    }
    axum::Json(json!({ "access_token": format!("gho_{}", s.user_id), "scope": "read:user,user:email", "token_type": "bearer" })).into_response()
}

fn gh_authorized(s: &GithubState, headers: &HeaderMap) -> bool {
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Bearer gho_{}", s.user_id).as_str());
    // The REST API refuses requests without a User-Agent.
    ok && headers.contains_key("user-agent")
}

async fn gh_user(State(gh): State<Github>, headers: HeaderMap) -> Response {
    let s = gh.lock().unwrap();
    if !gh_authorized(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Requires authentication"})),
        )
            .into_response();
    }
    axum::Json(json!({ "login": "octocat", "id": s.user_id, "node_id": "MDQ6VXNlcjE=", "name": "The Octocat", "email": null, "type": "User" })).into_response()
}

async fn gh_emails(State(gh): State<Github>, headers: HeaderMap) -> Response {
    let s = gh.lock().unwrap();
    if !gh_authorized(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Requires authentication"})),
        )
            .into_response();
    }
    axum::Json(s.emails.clone()).into_response()
}

fn github_upstream(base: &str) -> UpstreamConfig {
    UpstreamConfig {
        id: "github".into(),
        kind: UpstreamKind::Github,
        name: "GitHub".into(),
        issuer: None,
        client_id: "Iv1.gh-client".into(),
        client_secret: Some(SecretSetting::new("gh-secret-0123456789".into())),
        scopes: None,
        link_by_email: true,
        store_tokens: true,
        id_token_alg: None,
        authorization_endpoint: Some(format!("{base}/login/oauth/authorize")),
        token_endpoint: Some(format!("{base}/login/oauth/access_token")),
        api_url: Some(base.into()),
    }
}

async fn github_signs_in_by_its_verified_email_and_links_to_a_signed_in_user(backend: Backend) {
    let gh = fake_github().await;
    let base = gh.lock().unwrap().base.clone();
    let app = TestApp::spawn_with(backend, |c| c.upstream = vec![github_upstream(&base)]).await;
    let mut agent = Agent::new();
    let (url, page) = agent
        .open(&app.url("/v1/upstream/github/start?return_to=/account"))
        .await;
    assert_eq!(url, app.url("/account"), "{:?}", agent.visited);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("octocat@example.net"),
        "the primary verified address: {html}"
    );
    // Tokens kept only because this provider asks for it, and then sealed.
    let sealed = app
        .scalar_i64("SELECT COUNT(*) FROM user_identities WHERE sealed_tokens IS NOT NULL")
        .await;
    assert_eq!(sealed, 1);
    let root = app.root_key().await;
    let r = app.get_with_key("/admin/v1/users", &root).await;
    assert!(!r.text().await.unwrap().contains("gho_"));

    // A person with a password links GitHub from the account page while signed in.
    let gh2 = fake_github().await;
    {
        let mut s = gh2.lock().unwrap();
        s.user_id = 42;
        s.emails = json!([{ "email": "someone-else@example.net", "primary": true, "verified": false, "visibility": null }]);
    }
    let base2 = gh2.lock().unwrap().base.clone();
    app.stop().await;
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.upstream = vec![github_upstream(&base2)]
    })
    .await;
    let email = "linker@example.com";
    app.register(email).await;
    let mut agent = Agent::new();
    let r = agent
        .post_form(
            &app.url("/login"),
            &[
                ("email", email),
                ("password", PASSWORD),
                ("return_to", "/account"),
            ],
        )
        .await;
    let (_, page) = agent.follow(app.url("/login"), r).await;
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"link-github\""), "{html}");
    let csrf = form_value(&html, "csrf_token");
    // Without the CSRF token, nothing starts.
    let r = agent
        .post_form(
            &app.url("/account/identities/link/github"),
            &[("csrf_token", "wrong")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = agent
        .post_form(
            &app.url("/account/identities/link/github"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let (url, page) = agent
        .follow(app.url("/account/identities/link/github"), r)
        .await;
    assert_eq!(
        url,
        app.url("/account?done=identity_linked"),
        "{:?}",
        agent.visited
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("data-provider=\"github\""), "{html}");
    // Linked despite GitHub's unverified address: linking while signed in needs no email match.
    assert_eq!(count(&app, "user_identities").await, 1);
    // With a password beside it, the identity can be unlinked.
    let id = html
        .split("data-identity-id=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let csrf = form_value(&html, "csrf_token");
    let r = agent
        .post_form(
            &app.url(&format!("/account/identities/{id}/unlink")),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(count(&app, "user_identities").await, 0);
    let root = app.root_key().await;
    app.wait_for_audit(&root, "identity.unlinked").await;
    app.stop().await;
}

async fn an_oauth_client_of_ours_gets_upstream_login_unchanged(backend: Backend) {
    let op = fake_op().await;
    let app = with_op(backend, &op, |_| {}).await;
    let root = app.root_key().await;
    let c = crate::oauth::web_client(&app, &root).await;
    let (_, challenge) = crate::oauth::pkce();
    let authorize = app.url(&crate::oauth::authorize_url(
        c["client_id"].as_str().unwrap(),
        "openid email",
        &challenge,
        "st-1",
        "n-1",
    ));
    let mut agent = Agent::new();
    let (url, page) = agent.open(&authorize).await;
    assert!(url.starts_with(&app.url("/login?return_to=")), "{url}");
    let html = page.text().await.unwrap();
    // The login page's button carries the pending request back.
    let href = html
        .split("href=\"")
        .find(|h| h.starts_with("/v1/upstream/op/start") || h.starts_with("&#x2f;v1&#x2f;upstream"))
        .unwrap_or_else(|| panic!("{html}"))
        .split('"')
        .next()
        .unwrap()
        .replace("&#x2f;", "/")
        .replace("&amp;", "&");
    let (url, page) = agent.open(&app.url(&href)).await;
    // Back at our consent page for the client, signed in through the provider.
    assert!(
        url.starts_with(&app.url("/oauth2/authorize?")),
        "{url} {:?}",
        agent.visited
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"consent-client\""), "{html}");
    let r = agent
        .post_form(
            &app.url("/consent"),
            &[
                ("csrf_token", &form_value(&html, "csrf_token")),
                ("request", &form_value(&html, "request")),
                ("decision", "approve"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()["location"].to_str().unwrap();
    assert!(
        to.starts_with(crate::oauth::REDIRECT) && to.contains("code=") && to.contains("state=st-1"),
        "{to}"
    );
    app.stop().await;
}

async fn another_portcullis_is_the_upstream_of_this_one(backend: Backend) {
    // The upstream: the real binary, its own process and data folder.
    let dir = tempfile::tempdir().unwrap();
    let up = crate::binary::Server::start(dir.path(), &[], &[]);
    let root = up.root_key().expect("the upstream's root key");
    let http = Client::new();
    let r = http
        .post(format!("{}/admin/v1/clients", up.base))
        .header("x-api-key", &root)
        .json(&json!({ "name": "Downstream", "type": "confidential", "redirect_uris": ["http://127.0.0.1:9/placeholder"], "scopes": ["openid", "email", "profile"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let client: Value = r.json().await.unwrap();
    let (id, secret) = (
        client["client_id"].as_str().unwrap().to_owned(),
        client["client_secret"].as_str().unwrap().to_owned(),
    );
    let email = "upstream-user@example.com";
    let r = http
        .post(format!("{}/v1/users", up.base))
        .json(&json!({ "email": email, "password": PASSWORD, "name": "Up Stream" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let base = up.base.clone();
    let app = TestApp::spawn_with(backend, |c| {
        c.upstream = vec![oidc_upstream("portcullis", &base, &id, &secret)]
    })
    .await;
    let r = http
        .patch(format!("{}/admin/v1/clients/{id}", up.base))
        .header("x-api-key", &root)
        .json(&json!({ "redirect_uris": [app.url("/v1/upstream/portcullis/callback")] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);

    let mut agent = Agent::new();
    let (url, page) = agent
        .open(&app.url("/v1/upstream/portcullis/start?return_to=/account"))
        .await;
    assert!(
        url.starts_with(&format!("{}/login?return_to=", up.base)),
        "{url}"
    );
    let return_to = crate::oauth::param(&crate::oauth::query_of(&url), "return_to")
        .unwrap()
        .to_owned();
    drop(page);
    let r = agent
        .post_form(
            &format!("{}/login", up.base),
            &[
                ("email", email),
                ("password", PASSWORD),
                ("return_to", &return_to),
            ],
        )
        .await;
    let (url, mut page) = agent.follow(format!("{}/login", up.base), r).await;
    if url.starts_with(&format!("{}/oauth2/authorize", up.base)) {
        let html = page.text().await.unwrap();
        assert!(html.contains("id=\"consent-client\""), "{html}");
        let r = agent
            .post_form(
                &format!("{}/consent", up.base),
                &[
                    ("csrf_token", &form_value(&html, "csrf_token")),
                    ("request", &form_value(&html, "request")),
                    ("decision", "approve"),
                ],
            )
            .await;
        let (u, p) = agent.follow(format!("{}/consent", up.base), r).await;
        assert_eq!(u, app.url("/account"), "{:?}", agent.visited);
        page = p;
    } else {
        assert_eq!(url, app.url("/account"), "{:?}", agent.visited);
    }
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(email), "{html}");
    // The upstream said the email is not verified (nobody verified it there), so the account here
    // is not verified either.
    let cookie = format!(
        "__Host-portcullis={}",
        agent.cookie(&app.base, "__Host-portcullis").unwrap()
    );
    let me: Value = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], email);
    assert_eq!(me["email_verified"], false);
    app.stop().await;
    up.stop();
}

// ---------------------------------------------------------------------------------------------
// node-oidc-provider (npm), started by the tests: `interop/node/upstream_op.mjs`.

pub struct NodeOp {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pub issuer: String,
}

pub const NODE_CLIENT: &str = "portcullis-downstream";
pub const NODE_SECRET: &str = "node-op-secret-0123456789abcdef";

impl NodeOp {
    /// Starts the provider; `None` (skipped) without node or oidc-provider, unless interop is required.
    pub async fn start() -> Option<Self> {
        use tokio::io::AsyncBufReadExt;
        let dir = crate::interop::interop_dir().join("node");
        let mut child = match tokio::process::Command::new("node")
            .arg(dir.join("upstream_op.mjs"))
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                crate::interop::skip_or_fail(
                    "node-oidc-provider",
                    &format!("cannot run node: {e}"),
                );
                return None;
            }
        };
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let issuer = match first {
            Ok(Ok(Some(l))) if l.starts_with("issuer ") => l["issuer ".len()..].to_owned(),
            _ => {
                crate::interop::skip_or_fail(
                    "node-oidc-provider",
                    "upstream_op.mjs did not start (is oidc-provider installed in interop/node?)",
                );
                return None;
            }
        };
        Some(Self {
            child,
            lines,
            issuer,
        })
    }

    /// Registers the downstream client with its callback; waits until the provider serves.
    pub async fn configure(&mut self, redirect_uri: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("client {NODE_CLIENT} {NODE_SECRET} {redirect_uri}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line()).await;
        assert!(
            matches!(line, Ok(Ok(Some(ref l))) if l == "ready"),
            "{line:?}"
        );
    }
}

/// The first `<form … action="…">` of a page, resolved against `url`.
fn form_action(url: &str, html: &str) -> String {
    let action = html
        .split("action=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no form at {url}: {html}"))
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    reqwest::Url::parse(url)
        .unwrap()
        .join(&action)
        .unwrap()
        .to_string()
}

async fn node_oidc_provider_is_an_upstream_and_its_email_comes_from_userinfo(backend: Backend) {
    let Some(mut op) = NodeOp::start().await else {
        return;
    };
    let issuer = op.issuer.clone();
    let app = TestApp::spawn_with(backend, |c| {
        c.upstream = vec![oidc_upstream("node", &issuer, NODE_CLIENT, NODE_SECRET)];
    })
    .await;
    op.configure(&app.url("/v1/upstream/node/callback")).await;
    let mut agent = Agent::new();
    let (url, page) = agent
        .open(&app.url("/v1/upstream/node/start?return_to=/account"))
        .await;
    assert!(
        url.starts_with(&format!("{issuer}/interaction/")),
        "{url} {:?}",
        agent.visited
    );
    let html = page.text().await.unwrap();
    let login = form_action(&url, &html);
    let r = agent
        .post_form(
            &login,
            &[
                ("prompt", "login"),
                ("login", "ada"),
                ("password", "anything"),
            ],
        )
        .await;
    let (url, page) = agent.follow(login, r).await;
    let (url, page) = if url.starts_with(&issuer) {
        // Its consent screen.
        let html = page.text().await.unwrap();
        let confirm = form_action(&url, &html);
        let r = agent.post_form(&confirm, &[("prompt", "consent")]).await;
        agent.follow(confirm, r).await
    } else {
        (url, page)
    };
    assert_eq!(url, app.url("/account"), "{:?}", agent.visited);
    let html = page.text().await.unwrap();
    // node-oidc-provider puts the email only in UserInfo: it still arrived.
    assert!(html.contains("ada@example.org"), "{html}");
    let cookie = format!(
        "__Host-portcullis={}",
        agent.cookie(&app.base, "__Host-portcullis").unwrap()
    );
    let me: Value = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["name"], "Node ada");
    app.stop().await;
}
