//! DPoP (RFC 9449) over HTTP: proofs at the token endpoint bind what it issues to the proof's key
//! (`cnf.jkt`, `token_type: DPoP`, a public client's refresh tokens too); a bound token is refused as
//! Bearer and accepted under the DPoP scheme with a proof for the request at `/v1`, userinfo and
//! `/v1/authorize`; introspection answers `cnf`; the bad proofs of §4.3 are refused with
//! `invalid_dpop_proof`; server nonces when configured. Both stores.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_core::jwt::{JwsAlg, SigningKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oauth::{Browser, client};
use crate::oauth_device::{GRANT, decide, spawn, start, tv_client};
use crate::on_both_stores;
use crate::support::{Backend, TestApp, jwt_claims, uuid_hex};

on_both_stores!(
    codes_can_be_bound_to_a_key_by_par_or_dpop_jkt,
    bound_tokens_need_their_proof_at_every_resource,
    bad_proofs_are_refused_and_nothing_is_issued,
    server_nonces_are_asked_for_when_configured,
);

/// A client's DPoP key.
pub struct DpopKey {
    key: SigningKey,
    jwk: Value,
}

impl DpopKey {
    pub fn new(alg: JwsAlg) -> Self {
        let (key, _) = SigningKey::generate(alg).unwrap();
        let jwk = key.public_jwk().unwrap();
        Self { key, jwk }
    }

    pub fn jkt(&self) -> String {
        self.key.verifying_key().unwrap().thumbprint()
    }

    /// A proof with these claims and header members over the defaults.
    pub fn proof_with(&self, claims: Value, header: Value) -> String {
        let mut h = serde_json::Map::new();
        h.insert("typ".into(), "dpop+jwt".into());
        h.insert("jwk".into(), self.jwk.clone());
        for (k, v) in header.as_object().unwrap() {
            h.insert(k.clone(), v.clone());
        }
        self.key.sign_with_header(h, &claims).unwrap()
    }

    pub fn proof(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        let mut c = json!({
            "jti": uuid_hex(),
            "htm": method,
            "htu": url,
            "iat": now(),
        });
        if let Some(t) = token {
            c["ath"] = json!(portcullis_core::oauth::dpop::ath(t));
        }
        if let Some(n) = nonce {
            c["nonce"] = json!(n);
        }
        self.proof_with(c, json!({}))
    }
}

fn now() -> i64 {
    portcullis_core::clock::Millis::now().as_secs()
}

async fn machine(app: &TestApp, root: &str) -> Value {
    client(
        app,
        root,
        &json!({
            "name": "Batch job",
            "type": "confidential",
            "grant_types": ["client_credentials"],
            "scopes": ["orders:read"],
        }),
    )
    .await
}

async fn cc_token(app: &TestApp, c: &Value, proof: Option<&str>) -> reqwest::Response {
    let mut r = app
        .client
        .post(app.url("/oauth2/token"))
        .header(
            "authorization",
            crate::oauth::basic(
                c["client_id"].as_str().unwrap(),
                c["client_secret"].as_str().unwrap(),
            ),
        )
        .form(&[("grant_type", "client_credentials")]);
    if let Some(p) = proof {
        r = r.header("dpop", p);
    }
    r.send().await.unwrap()
}

async fn dpop_get(app: &TestApp, path: &str, token: &str, proof: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
        .unwrap()
}

async fn refresh(app: &TestApp, cid: &str, rt: &str, proof: Option<&str>) -> reqwest::Response {
    let mut r = app.client.post(app.url("/oauth2/token")).form(&[
        ("grant_type", "refresh_token"),
        ("client_id", cid),
        ("refresh_token", rt),
    ]);
    if let Some(p) = proof {
        r = r.header("dpop", p);
    }
    r.send().await.unwrap()
}

async fn bound_tokens_need_their_proof_at_every_resource(b: Backend) {
    let app = spawn(b).await;
    let root = app.root_key().await;
    let tv = tv_client(&app, &root, "TV").await;
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
        meta["dpop_signing_alg_values_supported"],
        json!(["ES256", "RS256", "EdDSA"])
    );

    // A device (a public client) gets its tokens with a proof: both are bound to its key.
    let key = DpopKey::new(JwsAlg::Es256);
    let d = start(&app, cid, "openid offline_access orders:read").await;
    let mut browser = Browser::new(&app);
    browser.log_in("ada@example.com", "/account").await;
    let r = decide(&browser, d["user_code"].as_str().unwrap(), "approve").await;
    assert_eq!(r.status(), StatusCode::OK);
    let token_url = app.url("/oauth2/token");
    let r = app
        .client
        .post(&token_url)
        .header("dpop", key.proof("POST", &token_url, None, None))
        .form(&[
            ("grant_type", GRANT),
            ("client_id", cid),
            ("device_code", d["device_code"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP");
    let at = t["access_token"].as_str().unwrap();
    let rt = t["refresh_token"].as_str().unwrap();
    assert_eq!(jwt_claims(at)["cnf"]["jkt"], key.jkt());

    // Our own API: Bearer is refused (and says DPoP), the DPoP scheme with a proof is served.
    let r = app.get_bearer("/v1/me", at).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("DPoP")),
        "{challenges:?}"
    );
    let me = app.url("/v1/me");
    let proof = key.proof("GET", &me, Some(at), None);
    let r = dpop_get(&app, "/v1/me", at, &proof).await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], user["id"]);
    // Each refusal of §4.3 at a resource: a replayed proof, no ath, another URI, another method,
    // another key.
    let other = DpopKey::new(JwsAlg::EdDsa);
    let bad = [
        ("replayed", proof.clone()),
        ("no ath", key.proof("GET", &me, None, None)),
        (
            "other host",
            key.proof("GET", "https://elsewhere.example/v1/me", Some(at), None),
        ),
        (
            "query",
            key.proof("GET", &format!("{me}?x=1"), Some(at), None),
        ),
        ("method", key.proof("POST", &me, Some(at), None)),
        ("other key", other.proof("GET", &me, Some(at), None)),
    ];
    for (why, p) in bad {
        let r = dpop_get(&app, "/v1/me", at, &p).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{why}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("DPoP error=\"invalid_dpop_proof\""),
            "{why}"
        );
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "invalid_dpop_proof",
            "{why}"
        );
    }

    // Userinfo: the same rule.
    let ui = app.url("/oauth2/userinfo");
    let r = app.get_bearer("/oauth2/userinfo", at).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = dpop_get(
        &app,
        "/oauth2/userinfo",
        at,
        &key.proof("GET", &ui, Some(at), None),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["sub"], user["id"]);
    let r = dpop_get(
        &app,
        "/oauth2/userinfo",
        at,
        &other.proof("GET", &ui, Some(at), None),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Introspection tells resource servers the binding.
    let r = app
        .client
        .post(app.url("/oauth2/introspect"))
        .header("x-api-key", &root)
        .form(&[("token", at)])
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "DPoP");
    assert_eq!(v["cnf"]["jkt"], key.jkt());

    // Forward auth: the proof names the original request.
    let ask = |proof: String| {
        crate::oauth::no_redirects()
            .get(app.url("/v1/authorize"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.test")
            .header("x-forwarded-uri", "/orders/7?full=1")
            .header("authorization", format!("DPoP {at}"))
            .header("dpop", proof)
            .send()
    };
    let r = ask(key.proof("GET", "https://api.example.test/orders/7", Some(at), None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let r = ask(key.proof("GET", &app.url("/v1/authorize"), Some(at), None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("DPoP")
    );
    let r = crate::oauth::no_redirects()
        .get(app.url("/v1/authorize"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "api.example.test")
        .header("x-forwarded-uri", "/orders/7")
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a bound token as Bearer"
    );

    // The public client's refresh token is bound too: without the key's proof it is refused, and
    // those refusals spend nothing.
    assert_eq!(
        refresh(&app, cid, rt, None).await.status(),
        StatusCode::BAD_REQUEST
    );
    let r = refresh(
        &app,
        cid,
        rt,
        Some(&other.proof("POST", &token_url, None, None)),
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "invalid_dpop_proof"
    );
    let r = refresh(
        &app,
        cid,
        rt,
        Some(&key.proof("POST", &token_url, None, None)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2: Value = r.json().await.unwrap();
    assert_eq!(t2["token_type"], "DPoP");
    assert_eq!(
        jwt_claims(t2["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt()
    );
}

async fn bad_proofs_are_refused_and_nothing_is_issued(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let c = machine(&app, &root).await;
    let url = app.url("/oauth2/token");
    let key = DpopKey::new(JwsAlg::Es256);
    let good = || json!({ "jti": uuid_hex(), "htm": "POST", "htu": url, "iat": now() });
    let b64 = |v: Value| B64.encode(serde_json::to_vec(&v).unwrap());
    let mut private = key.jwk.clone();
    private["d"] = json!(B64.encode([7u8; 32]));
    let reused = key.proof("POST", &url, None, None);
    let r = cc_token(&app, &c, Some(&reused)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "DPoP");
    assert_eq!(
        jwt_claims(t["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt()
    );
    let with = |k: &str, v: Value| {
        let mut c = good();
        c[k] = v;
        key.proof_with(c, json!({}))
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk})),
                b64(good())
            ),
        ),
        (
            "HS256",
            format!(
                "{}.{}.{}",
                b64(
                    json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}})
                ),
                b64(good()),
                B64.encode([1u8; 32])
            ),
        ),
        (
            "private jwk",
            key.proof_with(good(), json!({ "jwk": private })),
        ),
        ("typ", key.proof_with(good(), json!({ "typ": "JWT" }))),
        (
            "other host",
            with("htu", json!("https://elsewhere.example/oauth2/token")),
        ),
        ("query", with("htu", json!(format!("{url}?a=b")))),
        ("method", with("htm", json!("GET"))),
        ("old", with("iat", json!(now() - 3600))),
        ("future", with("iat", json!(now() + 3600))),
        ("reused jti", reused),
        ("garbage", "not.a.proof".into()),
    ];
    for (why, proof) in cases {
        let r = cc_token(&app, &c, Some(&proof)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{why}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_dpop_proof", "{why}: {body}");
    }
    // Two DPoP headers: refused too.
    let r = app
        .client
        .post(&url)
        .header(
            "authorization",
            crate::oauth::basic(
                c["client_id"].as_str().unwrap(),
                c["client_secret"].as_str().unwrap(),
            ),
        )
        .header("dpop", key.proof("POST", &url, None, None))
        .header("dpop", key.proof("POST", &url, None, None))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Without a proof: an ordinary Bearer token.
    let r = cc_token(&app, &c, None).await;
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert!(
        jwt_claims(t["access_token"].as_str().unwrap())
            .get("cnf")
            .is_none()
    );
}

async fn server_nonces_are_asked_for_when_configured(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.oauth_dpop_nonce = true).await;
    let root = app.root_key().await;
    let c = machine(&app, &root).await;
    let url = app.url("/oauth2/token");
    let key = DpopKey::new(JwsAlg::Rs256);
    let r = cc_token(&app, &c, Some(&key.proof("POST", &url, None, None))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "use_dpop_nonce");
    let r = cc_token(
        &app,
        &c,
        Some(&key.proof("POST", &url, None, Some("made-up"))),
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "use_dpop_nonce");
    let r = cc_token(&app, &c, Some(&key.proof("POST", &url, None, Some(&nonce)))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("dpop-nonce"));
    assert_eq!(r.json::<Value>().await.unwrap()["token_type"], "DPoP");
}

/// The browser half for `url` (logged in, consent given once): the code.
async fn code_for(browser: &Browser, url: &str) -> String {
    let mut r = browser.get(url).await;
    if r.status() == StatusCode::OK {
        let html = r.text().await.unwrap();
        r = browser
            .post(
                "/consent",
                &[
                    ("csrf_token", &crate::oauth::form_value(&html, "csrf_token")),
                    ("request", &crate::oauth::form_value(&html, "request")),
                    ("decision", "approve"),
                ],
            )
            .await;
    }
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let q = crate::oauth::query_of(r.headers()["location"].to_str().unwrap());
    crate::oauth::param(&q, "code").expect("a code").to_owned()
}

/// RFC 9449 §10: a proof sent with the pushed request, or `dpop_jkt` on the authorization request,
/// binds the code; only a proof by that key redeems it.
async fn codes_can_be_bound_to_a_key_by_par_or_dpop_jkt(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let web = crate::oauth::web_client(&app, &root).await;
    let cid = web["client_id"].as_str().unwrap().to_owned();
    app.register("ada@example.com").await;
    let mut browser = Browser::new(&app);
    browser.log_in("ada@example.com", "/account").await;
    let key = DpopKey::new(JwsAlg::Es256);
    let other = DpopKey::new(JwsAlg::Es256);
    let par_url = app.url("/oauth2/par");
    let token_url = app.url("/oauth2/token");
    let redeem = |code: String, verifier: String, proof: Option<String>| {
        let app = &app;
        let web = &web;
        async move {
            let mut r = app
                .client
                .post(app.url("/oauth2/token"))
                .header(
                    "authorization",
                    crate::oauth::basic(
                        web["client_id"].as_str().unwrap(),
                        web["client_secret"].as_str().unwrap(),
                    ),
                )
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("code_verifier", verifier.as_str()),
                    ("redirect_uri", crate::oauth::REDIRECT),
                ]);
            if let Some(p) = proof {
                r = r.header("dpop", p);
            }
            r.send().await.unwrap()
        }
    };
    let pushed = |verifier_challenge: String| {
        let app = &app;
        let web = &web;
        let key = &key;
        let par_url = par_url.clone();
        async move {
            let r = app
                .client
                .post(&par_url)
                .header(
                    "authorization",
                    crate::oauth::basic(
                        web["client_id"].as_str().unwrap(),
                        web["client_secret"].as_str().unwrap(),
                    ),
                )
                .header("dpop", key.proof("POST", &par_url, None, None))
                .form(&[
                    ("response_type", "code"),
                    ("redirect_uri", crate::oauth::REDIRECT),
                    ("scope", "orders:read"),
                    ("code_challenge", verifier_challenge.as_str()),
                    ("code_challenge_method", "S256"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let v: Value = r.json().await.unwrap();
            v["request_uri"].as_str().unwrap().replace(':', "%3A")
        }
    };
    // Pushed with a proof: another key's proof, or none, does not redeem it.
    for proof in [Some(other.proof("POST", &token_url, None, None)), None] {
        let (verifier, challenge) = crate::oauth::pkce();
        let uri = pushed(challenge).await;
        let code = code_for(
            &browser,
            &format!("/oauth2/authorize?client_id={cid}&request_uri={uri}"),
        )
        .await;
        let r = redeem(code, verifier, proof).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "invalid_dpop_proof"
        );
    }
    let (verifier, challenge) = crate::oauth::pkce();
    let uri = pushed(challenge).await;
    let code = code_for(
        &browser,
        &format!("/oauth2/authorize?client_id={cid}&request_uri={uri}"),
    )
    .await;
    let r = redeem(
        code,
        verifier,
        Some(key.proof("POST", &token_url, None, None)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(
        jwt_claims(t["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt()
    );

    // dpop_jkt on a plain authorization request binds the same way; a malformed one is refused.
    let (verifier, challenge) = crate::oauth::pkce();
    let url = format!(
        "{}&dpop_jkt={}",
        crate::oauth::authorize_url(&cid, "orders:read", &challenge, "s", "n"),
        key.jkt()
    );
    let code = code_for(&browser, &url).await;
    let r = redeem(
        code,
        verifier,
        Some(key.proof("POST", &token_url, None, None)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, challenge) = crate::oauth::pkce();
    let r = browser
        .get(&format!(
            "{}&dpop_jkt=short",
            crate::oauth::authorize_url(&cid, "orders:read", &challenge, "s", "n")
        ))
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let q = crate::oauth::query_of(r.headers()["location"].to_str().unwrap());
    assert_eq!(crate::oauth::param(&q, "error"), Some("invalid_request"));
}
