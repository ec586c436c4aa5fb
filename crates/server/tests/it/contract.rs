//! Behaviours of the contract (API.md) that no other test pinned down: password length at its
//! boundaries, re-hashing at raised cost, the rest of the forbidden JWT headers, `sid` and `scope`,
//! the leeway's exact edge, sealed signing keys, the family's absolute cap, logout-all reaching the
//! browser, CSRF on the session endpoints and the login, RateLimit headers on every 429, the audit
//! filters, and who may list signing keys.

use portcullis_core::clock::Millis;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::jwt::{b64json, claims};
use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp, assert_problem};

on_both_stores!(
    password_length_is_counted_in_code_points_at_its_boundaries,
    raised_argon2_parameters_rehash_a_hash_at_the_next_login,
    every_header_that_carries_key_material_or_extensions_is_refused,
    sid_and_scope_claims_reach_the_principal,
    the_leeway_is_honoured_to_the_second,
    signing_keys_are_sealed_at_rest,
    a_refresh_family_ends_at_its_absolute_cap,
    bearer_logout_all_also_ends_browser_sessions,
    ending_the_current_session_needs_the_csrf_token,
    login_csrf_is_judged_by_origin,
    every_429_carries_the_ratelimit_headers,
    the_audit_log_filters_by_actor_and_time_and_pages_with_a_cursor,
    signing_keys_are_listed_to_administrators_only,
);

async fn password_length_is_counted_in_code_points_at_its_boundaries(b: Backend) {
    let app = TestApp::spawn(b.clone()).await;
    let register = |email: &str, password: String| {
        let body = json!({"email": email, "password": password});
        let app = &app;
        async move { app.post_json("/v1/users", &body).await }
    };
    // 12 code points (some of them three bytes each) is enough; 11 is not.
    let twelve = "zq7xw·vmk·pä".to_owned();
    assert_eq!(twelve.chars().count(), 12);
    assert_eq!(
        register("a@example.com", twelve).await.status(),
        StatusCode::CREATED
    );
    let r = register("b@example.com", "zq7xw·vmk·p".into()).await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "weak_password").await;
    assert_eq!(body["errors"][0]["code"], "too_short");
    // 128 is allowed, 129 is not (and never truncated to 128).
    let long: String = "ab3Ω".repeat(32);
    assert_eq!(long.chars().count(), 128);
    assert_eq!(
        register("c@example.com", long.clone()).await.status(),
        StatusCode::CREATED
    );
    let r = register("d@example.com", format!("{long}x")).await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "weak_password").await;
    assert_eq!(body["errors"][0]["code"], "too_long");
    assert_eq!(
        app.login("c@example.com", &long).await.status(),
        StatusCode::OK
    );
    assert_problem(
        app.login("c@example.com", &long.chars().take(127).collect::<String>())
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    app.stop().await;
    // A raised minimum.
    let app = TestApp::spawn_with(b, |c| c.password_min_length = 16).await;
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "e@example.com", "password": "fifteen chars!!"}),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "weak_password").await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("16")
    );
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "e@example.com", "password": "sixteen chars!!!"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.stop().await;
}

async fn raised_argon2_parameters_rehash_a_hash_at_the_next_login(b: Backend) {
    let app = TestApp::spawn(b).await;
    let u = app.register("ria@example.com").await;
    let id = u["id"].as_str().unwrap().to_owned();
    let stored = |app: &TestApp| {
        let (store, id) = (app.store.clone(), id.clone());
        async move {
            portcullis_store::UserStore::user_by_id(&store, &id)
                .await
                .unwrap()
                .unwrap()
                .password_hash
                .unwrap()
        }
    };
    let before = stored(&app).await;
    assert!(
        before.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{before}"
    );
    // The operator raises the cost; the same store, a node with the new parameters.
    let (node, running) = app.second_node(|c| c.argon2_t = 3).await;
    let r = app
        .client
        .post(format!("{node}/v1/auth/login"))
        .json(&json!({"email": "ria@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let after = stored(&app).await;
    assert!(
        after.starts_with("$argon2id$v=19$m=19456,t=3,p=1$"),
        "re-hashed: {after}"
    );
    // A wrong password changes nothing.
    let r = app
        .client
        .post(format!("{node}/v1/auth/login"))
        .json(&json!({"email": "ria@example.com", "password": "not the password!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(stored(&app).await, after);
    running.stop().await;
    app.stop().await;
}

async fn every_header_that_carries_key_material_or_extensions_is_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("hdr@example.com").await;
    let token = t["access_token"].as_str().unwrap();
    let me: Value = app.get_bearer("/v1/me", token).await.json().await.unwrap();
    let key = app
        .state()
        .keys
        .current()
        .signer(Millis::now())
        .unwrap()
        .clone();
    let kid = key.kid().to_owned();
    let payload = b64json(&serde_json::to_value(claims(&app, me["id"].as_str().unwrap())).unwrap());
    for (member, value) in [
        ("x5u", json!("https://evil.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("jku", json!("https://evil.example/jwks")),
        ("jwk", json!({"kty": "EC"})),
    ] {
        let mut header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        header[member] = value;
        // The header is refused before any key is looked up or signature checked.
        let forged = format!(
            "{}.{payload}.{}",
            b64json(&header),
            token.rsplit('.').next().unwrap()
        );
        let body = assert_problem(
            app.get_bearer("/v1/me", &forged).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_eq!(body["reason"], "forbidden_header", "{member}");
    }
    app.stop().await;
}

async fn sid_and_scope_claims_reach_the_principal(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("sid@example.com").await;
    let me: Value = app
        .get_bearer("/v1/me", t["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let key = app
        .state()
        .keys
        .current()
        .signer(Millis::now())
        .unwrap()
        .clone();
    let mut c = claims(&app, me["id"].as_str().unwrap());
    c.sid = Some("ses_0193a5b0c1d27000a000000000000001".into());
    c.scope = "orders:read keys:read".into();
    c.client_id = "cli_thirdparty".into();
    let token = key.sign("at+jwt", &c).unwrap();
    let me: Value = app.get_bearer("/v1/me", &token).await.json().await.unwrap();
    assert_eq!(me["auth"]["method"], "jwt");
    assert_eq!(
        me["auth"]["session_id"],
        "ses_0193a5b0c1d27000a000000000000001"
    );
    assert_eq!(me["auth"]["scopes"], json!(["keys:read", "orders:read"]));
    assert_eq!(me["auth"]["client_id"], "cli_thirdparty");
    // A third party's token acts only within its scopes: keys:read lists, keys:write is missing.
    let r = app.get_bearer("/v1/keys", &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    app.stop().await;
}

async fn the_leeway_is_honoured_to_the_second(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.jwt_leeway_s = 60).await;
    let t = app.user_with_tokens("lee@example.com").await;
    let me: Value = app
        .get_bearer("/v1/me", t["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let key = app
        .state()
        .keys
        .current()
        .signer(Millis::now())
        .unwrap()
        .clone();
    let at = |exp_ago: i64, nbf_ahead: Option<i64>| {
        let mut c = claims(&app, me["id"].as_str().unwrap());
        let now = Millis::now().as_secs();
        c.exp = now - exp_ago;
        c.iat = now - exp_ago - 10;
        c.nbf = nbf_ahead.map(|a| now + a);
        key.sign("at+jwt", &c).unwrap()
    };
    // Expired 55 s ago: inside 60 s of leeway. 65 s ago: outside.
    assert_eq!(
        app.get_bearer("/v1/me", &at(55, None)).await.status(),
        StatusCode::OK
    );
    let body = assert_problem(
        app.get_bearer("/v1/me", &at(65, None)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(body["reason"], "expired");
    // Not valid for another 55 s: accepted; 65 s: not yet.
    assert_eq!(
        app.get_bearer("/v1/me", &at(-600, Some(55))).await.status(),
        StatusCode::OK
    );
    let body = assert_problem(
        app.get_bearer("/v1/me", &at(-600, Some(65))).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(body["reason"], "not_yet_valid");
    app.stop().await;
    // And no configuration allows more than 60.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "jwt_leeway_s = 61\n").unwrap();
    let e = portcullis_server::Config::load(Some(&path), &Default::default()).unwrap_err();
    assert!(e.to_string().contains("jwt_leeway_s"), "{e}");
    std::fs::write(&path, "jwt_leeway_s = 60\n").unwrap();
    assert!(portcullis_server::Config::load(Some(&path), &Default::default()).is_ok());
}

async fn signing_keys_are_sealed_at_rest(b: Backend) {
    let app = TestApp::spawn(b).await;
    let rows = portcullis_store::SigningKeyStore::all_signing_keys(&app.store)
        .await
        .unwrap();
    // The access-token key and the ID-token key.
    assert_eq!(rows.len(), 2);
    for row in &rows {
        // What is stored is AES-256-GCM output, not PKCS#8: no DER header, and it does not parse as a key.
        assert_ne!(
            row.private_key.first(),
            Some(&0x30),
            "a DER SEQUENCE in clear"
        );
        assert!(
            portcullis_core::jwt::SigningKey::from_pkcs8(
                portcullis_core::jwt::JwsAlg::parse(&row.alg).unwrap(),
                &row.private_key
            )
            .is_err()
        );
        // Opened with the master key it is the key that signs our tokens.
        let master =
            portcullis_server::app::bootstrap::load_master_key(&app.state().config).unwrap();
        let der = master
            .open(
                &format!("portcullis:signing_key:{}", row.kid),
                &row.private_key,
            )
            .unwrap();
        let key = portcullis_core::jwt::SigningKey::from_pkcs8(
            portcullis_core::jwt::JwsAlg::parse(&row.alg).unwrap(),
            &der,
        )
        .unwrap();
        assert_eq!(key.kid(), row.kid);
    }
    // Another master key cannot open it: a node started with one fails, and says what to do.
    let mut config = app.state().config.clone();
    config.master_key = Some(portcullis_server::config::MasterKeyHex::new(
        "11".repeat(32),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match portcullis_server::start(config, app.store.clone(), listener).await {
        Ok(_) => panic!("started with the wrong master key"),
        Err(e) => e.to_string(),
    };
    assert!(
        rows.iter().any(|r| err.contains(&r.kid)) && err.contains("master key"),
        "{err}"
    );
    app.stop().await;
}

async fn a_refresh_family_ends_at_its_absolute_cap(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.refresh_token_ttl_s = 60;
        c.refresh_family_ttl_s = 60;
    })
    .await;
    let t = app.user_with_tokens("cap@example.com").await;
    assert_eq!(t["refresh_expires_in"], 60);
    // Rotation does not extend the family: each new token ends no later than the family does.
    let r = app
        .post_json(
            "/v1/auth/refresh",
            &json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    let t2: Value = r.json().await.unwrap();
    assert!(t2["refresh_expires_in"].as_i64().unwrap() <= 60);
    // The family is cut to end now (as 30 days would end it): its live token is refused, as invalid.
    app.execute_sql(&format!(
        "UPDATE refresh_families SET expires_at = {}",
        Millis::now().0 - 1
    ))
    .await;
    let r = app
        .post_json(
            "/v1/auth/refresh",
            &json!({"refresh_token": t2["refresh_token"]}),
        )
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
    app.stop().await;
    // The default cap is 30 days.
    assert_eq!(
        portcullis_server::Config::default().refresh_family_ttl_s,
        30 * 86_400
    );
}

fn session_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-portcullis="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn bearer_logout_all_also_ends_browser_sessions(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("all@example.com").await;
    let r = app
        .post_json(
            "/v1/sessions",
            &json!({"email": "all@example.com", "password": PASSWORD}),
        )
        .await;
    let cookie = session_cookie(&r);
    let t: Value = app
        .login("all@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let me = |cookie: String| {
        app.client
            .get(app.url("/v1/me"))
            .header("cookie", cookie)
            .send()
    };
    assert_eq!(me(cookie.clone()).await.unwrap().status(), StatusCode::OK);
    let r = app
        .client
        .post(app.url("/v1/auth/logout-all"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let body = assert_problem(
        me(cookie).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_session",
    )
    .await;
    assert_eq!(body["reason"], "revoked");
    app.stop().await;
}

async fn ending_the_current_session_needs_the_csrf_token(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("cur@example.com").await;
    let r = app
        .post_json(
            "/v1/sessions",
            &json!({"email": "cur@example.com", "password": PASSWORD}),
        )
        .await;
    let cookie = session_cookie(&r);
    let csrf = r.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let delete = |token: Option<&str>| {
        let mut req = app
            .client
            .delete(app.url("/v1/sessions/current"))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "same-origin");
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    assert_problem(
        delete(None).await.unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_failed",
    )
    .await;
    assert_problem(
        delete(Some("not-the-token")).await.unwrap(),
        StatusCode::FORBIDDEN,
        "csrf_failed",
    )
    .await;
    // Still signed in; with the token, logged out.
    let r = app
        .client
        .get(app.url("/v1/sessions/current"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        delete(Some(&csrf)).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    app.stop().await;
}

async fn login_csrf_is_judged_by_origin(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("org@example.com").await;
    let login = |origin: &str| {
        app.client
            .post(app.url("/v1/sessions"))
            .header("origin", origin)
            .json(&json!({"email": "org@example.com", "password": PASSWORD}))
            .send()
    };
    // No Fetch Metadata (an older browser): the Origin decides.
    let r = login("https://evil.example").await.unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "csrf_failed").await;
    let r = login("null").await.unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "csrf_failed").await;
    assert_eq!(
        login(&app.base).await.unwrap().status(),
        StatusCode::CREATED
    );
    app.stop().await;
}

fn assert_ratelimit_headers(r: &reqwest::Response, policy: &str) {
    let h = r.headers();
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(
        h["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with(&format!("\"{policy}\";q=")),
        "{:?}",
        h["ratelimit-policy"]
    );
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(&format!("\"{policy}\";r=0;t=")),
        "{:?}",
        h["ratelimit"]
    );
}

async fn every_429_carries_the_ratelimit_headers(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.login_free_failures = 1).await;
    let root = app.root_key().await;
    // An API key over its own rate, used as a credential.
    let k: Value = app
        .post_with_key(
            "/v1/keys",
            &root,
            Some(&json!({"name": "slow", "ratelimit": {"limit": 1, "duration_ms": 60000}})),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = k["key"].as_str().unwrap();
    app.get_with_key("/v1/keys", key).await;
    let r = app.get_with_key("/v1/keys", key).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_ratelimit_headers(&r, "api-key");
    assert_eq!(r.headers()["ratelimit-policy"], "\"api-key\";q=1;w=60");
    // An account waiting after its failures.
    app.register("rl@example.com").await;
    app.login("rl@example.com", "wrong wrong wrong").await;
    let r = app.login("rl@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_ratelimit_headers(&r, "login-account");
    app.stop().await;
}

async fn the_audit_log_filters_by_actor_and_time_and_pages_with_a_cursor(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let a = app.register("aud1@example.com").await;
    app.register("aud2@example.com").await;
    for _ in 0..3 {
        app.login("aud1@example.com", PASSWORD).await;
    }
    app.login("aud2@example.com", PASSWORD).await;
    let audit = |query: String| {
        let (app, root) = (&app, root.clone());
        async move {
            let r = app
                .get_with_key(&format!("/admin/v1/audit?{query}"), &root)
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let a_id = a["id"].as_str().unwrap();
    crate::support::until(
        "the logins in the audit log",
        std::time::Duration::from_secs(3),
        async || {
            audit(format!("type=login.succeeded&actor={a_id}")).await["events"]
                .as_array()
                .unwrap()
                .len()
                == 3
        },
    )
    .await;
    let page = audit(format!("type=login.succeeded&actor={a_id}")).await;
    assert!(
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == a_id)
    );
    // Pages of two, newest first, until the cursor runs out.
    let first = audit(format!("actor={a_id}&type=login.succeeded&limit=2")).await;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = audit(format!(
        "actor={a_id}&type=login.succeeded&limit=2&cursor={cursor}"
    ))
    .await;
    let second_events = second["events"].as_array().unwrap();
    assert_eq!(second_events.len(), 1);
    assert!(
        first["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != second_events[0]["id"])
    );
    assert!(second["next_cursor"].is_null());
    // `since`: nothing from the future; all of it from an hour ago.
    let later = Millis::now().plus_secs(60).rfc3339();
    assert!(
        audit(format!("actor={a_id}&since={later}")).await["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let earlier = Millis::now().plus_secs(-3600).rfc3339();
    assert!(
        audit(format!("actor={a_id}&since={earlier}")).await["events"]
            .as_array()
            .unwrap()
            .len()
            >= 3
    );
    let r = app
        .get_with_key("/admin/v1/audit?since=yesterday", &root)
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    // Not for users.
    let t: Value = app
        .login("aud2@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .get_bearer("/admin/v1/audit", t["access_token"].as_str().unwrap())
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    app.stop().await;
}

async fn signing_keys_are_listed_to_administrators_only(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("nokeys@example.com").await;
    let r = app
        .get_bearer(
            "/admin/v1/signing-keys",
            t["access_token"].as_str().unwrap(),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .client
        .get(app.url("/admin/v1/signing-keys"))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let root = app.root_key().await;
    let r = app.get_with_key("/admin/v1/signing-keys", &root).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}
