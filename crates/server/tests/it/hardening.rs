//! The findings of the outside security review, each as the attack that showed it, now refused:
//! concurrent guessing, lockout of the real user, forwarded addresses, registration floods, scopes and
//! `meta` that impersonate the operator, keys that shed their limits, two credentials in one request,
//! unbounded metrics, lookalike emails, imported hashes, malleable signatures, revocation everywhere.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Auth, Backend, PASSWORD, TestApp, assert_problem, until};

on_both_stores!(
    concurrent_wrong_logins_get_only_the_free_allowance,
    concurrent_wrong_password_changes_get_only_the_free_allowance,
    a_known_device_gets_through_a_locked_account,
    ipv6_clients_are_throttled_by_their_64,
    forwarded_addresses_are_believed_only_from_trusted_proxies,
    registration_is_rate_limited_per_address,
    users_grant_only_self_service_scopes_and_never_write_operator_meta,
    verify_reports_the_owner_and_can_require_one,
    a_key_never_sheds_its_limits,
    keys_made_by_a_rate_limited_key_share_its_rate,
    a_key_changes_only_keys_within_its_scopes,
    a_rolled_key_in_grace_follows_its_successor,
    a_request_with_two_credentials_is_refused,
    lookalike_emails_are_one_account_and_invisible_characters_are_refused,
    imported_hashes_over_the_cost_cap_are_refused_and_bcrypt_never_truncates,
    the_high_s_twin_of_a_token_is_refused,
    a_disabled_users_tokens_stop_at_once,
    a_revoked_signing_key_stops_its_tokens_at_once_on_every_node,
    a_password_change_reaches_other_nodes_within_a_second,
);

fn xff(app: &TestApp, method: Method, path: &str, ip: &str) -> reqwest::RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("x-forwarded-for", ip)
}

async fn login_from(app: &TestApp, email: &str, password: &str, ip: &str) -> reqwest::Response {
    xff(app, Method::POST, "/v1/auth/login", ip)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// Behind a trusted proxy on loopback, so that each test can speak from many client addresses.
async fn behind_proxy(b: Backend, tweak: impl FnOnce(&mut portcullis_server::Config)) -> TestApp {
    TestApp::spawn_with(b, |c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        tweak(c);
    })
    .await
}

async fn concurrent_wrong_logins_get_only_the_free_allowance(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("ada@example.com").await;
    // 50 wrong guesses released at the same instant, one account, one address.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (client, url, barrier) = (
            app.client.clone(),
            app.url("/v1/auth/login"),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client
                .post(url)
                .json(&json!({"email": "ada@example.com", "password": format!("wrong guess {i}")}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        *counts.entry(t.await.unwrap().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        std::collections::BTreeMap::from([(401, 5), (429, 45)]),
        "only the 5 free failures are checked; the rest are refused before hashing"
    );
    // And the right password is now refused too (the account waits), without a hash.
    assert_eq!(
        app.login("ada@example.com", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

async fn concurrent_wrong_password_changes_get_only_the_free_allowance(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("bea@example.com").await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/v1/me/password"),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"current_password": format!("not it {i}"), "new_password": "a brand new passphrase"}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let (mut wrong, mut throttled) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::BAD_REQUEST => wrong += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((wrong, throttled), (5, 15));
    app.stop().await;
}

fn device_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-portcullis-device="))
        .and_then(|v| v.split(';').next())
        .expect("a known-device cookie")
        .to_owned()
}

async fn a_known_device_gets_through_a_locked_account(b: Backend) {
    let app = behind_proxy(b, |_| {}).await;
    app.register("cat@example.com").await;
    app.register("dan@example.com").await;
    // Cat signs in from her laptop at home; the laptop is now a known device.
    let r = login_from(&app, "cat@example.com", PASSWORD, "10.0.0.1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = device_cookie(&r);
    assert!(r.headers().get_all("set-cookie").iter().any(|v| {
        v.to_str()
            .unwrap()
            .contains("HttpOnly; Secure; SameSite=Lax; Max-Age=15552000")
    }));
    // An attacker guesses from the office address she shares: 5 free failures, then waits.
    for _ in 0..5 {
        let r = login_from(&app, "cat@example.com", "guess guess guess", "10.0.0.2").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = login_from(&app, "cat@example.com", PASSWORD, "10.0.0.2").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address is not held by that address's failures.
    let r = login_from(&app, "cat@example.com", PASSWORD, "10.0.0.3").await;
    assert_eq!(r.status(), StatusCode::OK);
    // Spread over many addresses, the attacker reaches the account-wide ceiling (10): every client
    // without a device cookie now waits, even with the right password.
    for i in 0..10 {
        let r = login_from(
            &app,
            "cat@example.com",
            "guess guess guess",
            &format!("10.0.1.{i}"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let r = login_from(&app, "cat@example.com", PASSWORD, "10.0.0.4").await;
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Her laptop gets through, even from the attacker's own (throttled) address.
    let r = xff(&app, Method::POST, "/v1/auth/login", "10.0.0.2")
        .header("cookie", &cookie)
        .json(&json!({"email": "cat@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The cookie is worth nothing for another account.
    for _ in 0..5 {
        login_from(&app, "dan@example.com", "guess guess guess", "10.0.0.2").await;
    }
    let r = xff(&app, Method::POST, "/v1/auth/login", "10.0.0.2")
        .header("cookie", &cookie)
        .json(&json!({"email": "dan@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // A known device is throttled by its own failures.
    for _ in 0..5 {
        let r = xff(&app, Method::POST, "/v1/auth/login", "10.0.0.9")
            .header("cookie", &cookie)
            .json(&json!({"email": "cat@example.com", "password": "typo typo typo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = xff(&app, Method::POST, "/v1/auth/login", "10.0.0.9")
        .header("cookie", &cookie)
        .json(&json!({"email": "cat@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

async fn ipv6_clients_are_throttled_by_their_64(b: Backend) {
    let app = behind_proxy(b, |c| c.login_account_free_failures = 100).await;
    app.register("eve@example.com").await;
    for i in 1..=5 {
        let r = login_from(
            &app,
            "eve@example.com",
            "wrong wrong",
            &format!("2001:db8:0:1::{i}"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // A new address in the same /64 is the same client.
    let r = login_from(&app, "eve@example.com", PASSWORD, "2001:db8:0:1::99").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = login_from(&app, "eve@example.com", PASSWORD, "2001:db8:0:2::1").await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn session_ip(app: &TestApp, xff_header: Option<&str>) -> String {
    let mut req = app.client.post(app.url("/v1/sessions"));
    if let Some(v) = xff_header {
        req = req.header("x-forwarded-for", v);
    }
    let r = req
        .json(&json!({"email": "fay@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let list: Value = app
        .client
        .get(app.url("/v1/sessions"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn forwarded_addresses_are_believed_only_from_trusted_proxies(b: Backend) {
    let direct = TestApp::spawn(b.clone()).await;
    direct.register("fay@example.com").await;
    assert_eq!(session_ip(&direct, Some("10.9.9.9")).await, "127.0.0.1");
    direct.stop().await;

    let app = TestApp::spawn_with(b, |c| {
        c.trusted_proxies = vec!["127.0.0.0/8".into(), "10.1.0.0/16".into()]
    })
    .await;
    app.register("fay@example.com").await;
    assert_eq!(session_ip(&app, Some("10.9.9.9")).await, "10.9.9.9");
    // Right-most untrusted: what the client wrote to the left of it is not believed.
    assert_eq!(
        session_ip(&app, Some("6.6.6.6, 10.9.9.9")).await,
        "10.9.9.9"
    );
    assert_eq!(
        session_ip(&app, Some("10.9.9.9, 10.1.2.3")).await,
        "10.9.9.9"
    );
    assert_eq!(
        session_ip(&app, Some("garbage, 10.1.2.3")).await,
        "10.1.2.3"
    );
    assert_eq!(session_ip(&app, None).await, "127.0.0.1");
    app.stop().await;
}

async fn registration_is_rate_limited_per_address(b: Backend) {
    let app = behind_proxy(b, |c| {
        c.registration_ip_limit = 3;
        c.registration_ip_period_s = 3600;
    })
    .await;
    let register = |email: String, ip: &'static str| {
        xff(&app, Method::POST, "/v1/users", ip)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
    };
    for i in 0..3 {
        let r = register(format!("u{i}@example.com"), "10.2.0.1")
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = register("u9@example.com".into(), "10.2.0.1").await.unwrap();
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"registration-ip\";q=3;w=3600"
    );
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let r = register("u9@example.com".into(), "10.2.0.2").await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "another address has its own allowance"
    );
    app.stop().await;
}

async fn create_key(app: &TestApp, auth: (&str, &str), body: Value) -> reqwest::Response {
    let auth = match auth {
        ("bearer", t) => Auth::Bearer(t.to_owned()),
        (_, k) => Auth::Key(k.to_owned()),
    };
    app.call(Method::POST, "/v1/keys", &auth, Some(&body)).await
}

async fn users_grant_only_self_service_scopes_and_never_write_operator_meta(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.self_service_scopes = vec!["orders:read".into()]).await;
    let t = app.user_with_tokens("gil@example.com").await;
    let token = t["access_token"].as_str().unwrap();
    let user = ("bearer", token);
    // The review's key: operator-looking scopes and meta, from a fresh account.
    let r = create_key(
        &app,
        user,
        json!({"name": "x", "scopes": ["orders:read", "orders:write", "billing:admin"]}),
    )
    .await;
    let body = assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert!(
        body["detail"].as_str().unwrap().contains("billing:admin"),
        "{body}"
    );
    let r = create_key(
        &app,
        user,
        json!({"name": "x", "meta": {"plan": "enterprise", "tenant": "acme"}}),
    )
    .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    // What the user may do: self-service scopes, and notes of their own.
    for scopes in [json!(["keys:read", "keys:write"]), json!(["orders:read"])] {
        let r = create_key(
            &app,
            user,
            json!({"name": "ok", "scopes": scopes, "owner_meta": {"note": "mine"}}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // Portcullis's own scopes in another letter case are nobody's, administrators' included.
    let root = app.root_key().await;
    for (who, look_alike) in [
        (user, "Admin"),
        (user, "keys:Verify"),
        (("key", root.as_str()), "ADMIN"),
        (("key", root.as_str()), "Keys:Write"),
    ] {
        let r = create_key(&app, who, json!({"name": "x", "scopes": [look_alike]})).await;
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(
            body["errors"][0]["code"], "confusable_scope",
            "{look_alike}"
        );
    }
    let r = create_key(&app, user, json!({"name": "x", "scopes": ["keys:verify"]})).await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    // Administrators grant anything and write meta.
    let r = create_key(&app, ("key", &root), json!({"name": "svc", "scopes": ["billing:admin", "keys:verify"], "meta": {"plan": "enterprise"}})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    app.stop().await;
}

async fn verify(app: &TestApp, verifier: &str, body: Value) -> Value {
    let r = app
        .post_with_key("/v1/keys/verify", verifier, Some(&body))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn verify_reports_the_owner_and_can_require_one(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let v: Value = create_key(
        &app,
        ("key", &root),
        json!({"name": "gateway", "scopes": ["keys:verify"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let v = v["key"].as_str().unwrap().to_owned();
    let service: Value = create_key(&app, ("key", &root), json!({"name": "svc"}))
        .await
        .json()
        .await
        .unwrap();
    let service = service["key"].as_str().unwrap().to_owned();
    let t = app.user_with_tokens("hal@example.com").await;
    let me: Value = app
        .get_bearer("/v1/me", t["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let own: Value = create_key(
        &app,
        ("bearer", t["access_token"].as_str().unwrap()),
        json!({"name": "mine", "owner_meta": {"plan": "enterprise"}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let own = own["key"].as_str().unwrap().to_owned();

    let r = verify(&app, &v, json!({"key": service})).await;
    assert_eq!(
        r["owner_id"],
        Value::Null,
        "present, and null for an ownerless key: {r}"
    );
    let r = verify(&app, &v, json!({"key": own})).await;
    assert_eq!(r["owner_id"], me["id"]);
    assert!(r.get("meta").is_none());
    assert_eq!(r["owner_meta"], json!({"plan": "enterprise"}));
    // A gateway that takes only its operator's keys.
    let r = verify(&app, &v, json!({"key": own, "owner": "none"})).await;
    assert_eq!(
        (r["valid"].clone(), r["code"].clone()),
        (json!(false), json!("NOT_FOUND"))
    );
    assert!(
        r.get("key_id").is_none(),
        "nothing about a key that is not accepted: {r}"
    );
    let r = verify(&app, &v, json!({"key": service, "owner": "none"})).await;
    assert_eq!(r["code"], "VALID");
    let r = verify(&app, &v, json!({"key": own, "owner": me["id"]})).await;
    assert_eq!(r["code"], "VALID");
    let r = app
        .post_with_key(
            "/v1/keys/verify",
            &v,
            Some(&json!({"key": own, "owner": "someone"})),
        )
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    app.stop().await;
}

async fn patch_key(app: &TestApp, key: &str, id: &str, body: Value) -> reqwest::Response {
    let path = format!("/v1/keys/{id}");
    app.call(
        Method::PATCH,
        &path,
        &Auth::Key(key.to_owned()),
        Some(&body),
    )
    .await
}

async fn a_key_never_sheds_its_limits(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("ida@example.com").await;
    let user = ("bearer", t["access_token"].as_str().unwrap());
    let expires = portcullis_core::clock::Millis::now()
        .plus_secs(3600)
        .rfc3339();
    let parent: Value = create_key(&app, user, json!({"name": "limited", "scopes": ["keys:write", "keys:read"],
        "expires_at": expires, "remaining": 20, "ratelimit": {"limit": 1000, "duration_ms": 60000}})).await.json().await.unwrap();
    let (pk, pid) = (
        parent["key"].as_str().unwrap().to_owned(),
        parent["id"].as_str().unwrap().to_owned(),
    );
    // It cannot clear or loosen its own limits.
    for body in [
        json!({"remaining": null}),
        json!({"remaining": 1000}),
        json!({"ratelimit": null}),
        json!({"ratelimit": {"limit": 2000, "duration_ms": 60000}}),
        json!({"ratelimit": {"limit": 1000, "duration_ms": 30000}}),
        json!({"expires_at": null}),
        json!({"expires_at": portcullis_core::clock::Millis::now().plus_secs(7200).rfc3339()}),
    ] {
        let r = patch_key(&app, &pk, &pid, body.clone()).await;
        assert_problem(r, StatusCode::FORBIDDEN, "limit_exceeded").await;
    }
    // It cannot make an unlimited copy of itself: what it leaves out is inherited, and uses are
    // taken out of its own.
    let r = create_key(&app, ("key", &pk), json!({"name": "copy"})).await;
    let body = assert_problem(r, StatusCode::FORBIDDEN, "limit_exceeded").await;
    assert!(
        body["detail"].as_str().unwrap().contains("remaining"),
        "{body}"
    );
    let r = create_key(
        &app,
        ("key", &pk),
        json!({"name": "copy", "remaining": 100}),
    )
    .await;
    assert_problem(r, StatusCode::FORBIDDEN, "limit_exceeded").await;
    let child = create_key(&app, ("key", &pk), json!({"name": "copy", "remaining": 5})).await;
    assert_eq!(child.status(), StatusCode::CREATED);
    let child: Value = child.json().await.unwrap();
    assert_eq!(child["expires_at"], parent["expires_at"]);
    assert_eq!(
        child["ratelimit"],
        json!({"limit": 1000, "duration_ms": 60000})
    );
    assert_eq!(child["remaining"], 5);
    let left: Value = app
        .get_bearer(&format!("/v1/keys/{pid}"), user.1)
        .await
        .json()
        .await
        .unwrap();
    // 20, less the 10 requests the key made (each spends a use, refused or not) and the 5 it gave.
    assert_eq!(left["remaining"], 5, "{left}");
    // A later expiry for the child is refused too.
    let later = portcullis_core::clock::Millis::now()
        .plus_secs(7200)
        .rfc3339();
    let r = create_key(
        &app,
        ("key", &pk),
        json!({"name": "late", "remaining": 1, "expires_at": later}),
    )
    .await;
    assert_problem(r, StatusCode::FORBIDDEN, "limit_exceeded").await;
    app.stop().await;
}

async fn keys_made_by_a_rate_limited_key_share_its_rate(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let v: Value = create_key(
        &app,
        ("key", &root),
        json!({"name": "gw", "scopes": ["keys:verify"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let v = v["key"].as_str().unwrap().to_owned();
    let t = app.user_with_tokens("quin@example.com").await;
    let parent: Value = create_key(&app, ("bearer", t["access_token"].as_str().unwrap()),
        json!({"name": "p", "scopes": ["keys:write"], "ratelimit": {"limit": 3, "duration_ms": 60000}})).await.json().await.unwrap();
    let pk = parent["key"].as_str().unwrap().to_owned();
    // Making the child is the parent's first request of the minute.
    let child: Value = create_key(&app, ("key", &pk), json!({"name": "c"}))
        .await
        .json()
        .await
        .unwrap();
    let ck = child["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(&app, &v, json!({"key": ck})).await["code"], "VALID");
    assert_eq!(verify(&app, &v, json!({"key": pk})).await["code"], "VALID");
    // Three between them: however many keys it makes, the parent's rate is not multiplied.
    assert_eq!(
        verify(&app, &v, json!({"key": ck})).await["code"],
        "RATE_LIMITED"
    );
    assert_eq!(
        verify(&app, &v, json!({"key": pk})).await["code"],
        "RATE_LIMITED"
    );
    app.stop().await;
}

async fn a_key_changes_only_keys_within_its_scopes(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("jon@example.com").await;
    let user = ("bearer", t["access_token"].as_str().unwrap());
    let writer: Value = create_key(
        &app,
        user,
        json!({"name": "writer", "scopes": ["keys:write"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let strong: Value = create_key(
        &app,
        user,
        json!({"name": "strong", "scopes": ["keys:write", "keys:read"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let weak: Value = create_key(
        &app,
        user,
        json!({"name": "weak", "scopes": ["keys:write"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let wk = writer["key"].as_str().unwrap();
    let sid = strong["id"].as_str().unwrap();
    for body in [json!({"owner_meta": {"x": 1}}), json!({"name": "mine now"})] {
        let r = patch_key(&app, wk, sid, body).await;
        assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    }
    let r = app
        .client
        .delete(app.url(&format!("/v1/keys/{sid}")))
        .header("x-api-key", wk)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let r = app
        .post_with_key(&format!("/v1/keys/{sid}/roll"), wk, None)
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    // A sibling within its scopes it may change; an unlimited writer is not bounded further.
    let r = patch_key(
        &app,
        wk,
        weak["id"].as_str().unwrap(),
        json!({"name": "renamed"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn a_rolled_key_in_grace_follows_its_successor(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.self_service_scopes = vec!["orders:read".into(), "orders:write".into()]
    })
    .await;
    let root = app.root_key().await;
    let v: Value = create_key(
        &app,
        ("key", &root),
        json!({"name": "gw", "scopes": ["keys:verify"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let v = v["key"].as_str().unwrap().to_owned();
    let t = app.user_with_tokens("kim@example.com").await;
    let token = t["access_token"].as_str().unwrap();
    let old: Value = create_key(
        &app,
        ("bearer", token),
        json!({"name": "k", "scopes": ["orders:read", "orders:write"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let r = app
        .client
        .post(app.url(&format!("/v1/keys/{}/roll", old["id"].as_str().unwrap())))
        .bearer_auth(token)
        .json(&json!({"grace_period_s": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let new: Value = r.json().await.unwrap();
    // The successor is narrowed; the old key, still in grace, is narrowed with it at once.
    let r = app
        .client
        .patch(app.url(&format!("/v1/keys/{}", new["id"].as_str().unwrap())))
        .bearer_auth(token)
        .json(&json!({"scopes": ["orders:read"], "ratelimit": {"limit": 1, "duration_ms": 60000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let old_key = old["key"].as_str().unwrap();
    let r = verify(
        &app,
        &v,
        json!({"key": old_key, "required_scopes": ["orders:write"]}),
    )
    .await;
    assert_eq!(r["code"], "INSUFFICIENT_SCOPE", "{r}");
    let r = verify(&app, &v, json!({"key": old_key})).await;
    assert_eq!(r["scopes"], json!(["orders:read"]));
    assert_eq!(r["code"], "VALID");
    // And it spends its successor's rate limit: one a minute between them.
    let r = verify(&app, &v, json!({"key": new["key"]})).await;
    assert_eq!(r["code"], "RATE_LIMITED");
    app.stop().await;
}

async fn a_request_with_two_credentials_is_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let t = app.user_with_tokens("lou@example.com").await;
    let token = t["access_token"].as_str().unwrap();
    // The fuzzer's find: a valid key beside a garbage Authorization header.
    let r = app
        .client
        .get(app.url("/admin/v1/users"))
        .header("x-api-key", &root)
        .header("authorization", "Bearer garbage")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "multiple_credentials").await;
    // Two valid ones are refused too: which would it be?
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header("x-api-key", &root)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "multiple_credentials").await;
    let r = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(token)
        .header("cookie", "__Host-portcullis=pcs_whatever")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "multiple_credentials").await;
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header("x-api-key", &root)
        .header("x-api-key", &root)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "multiple_credentials").await;
    assert_eq!(
        app.get_bearer("/v1/me", token).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn lookalike_emails_are_one_account_and_invisible_characters_are_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    for same in [
        "ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        "ALICE@EXAMPLE.COM",
        "alice@EXAMPLE.com",
    ] {
        let r = app
            .post_json("/v1/users", &json!({"email": same, "password": PASSWORD}))
            .await;
        assert_problem(r, StatusCode::CONFLICT, "email_taken").await;
    }
    // NFD and NFC spell one address; so do the Unicode and ASCII forms of a domain.
    app.register("jose\u{301}@bücher.example").await;
    for same in [
        "jos\u{e9}@bücher.example",
        "jos\u{e9}@xn--bcher-kva.example",
    ] {
        let r = app
            .post_json("/v1/users", &json!({"email": same, "password": PASSWORD}))
            .await;
        assert_problem(r, StatusCode::CONFLICT, "email_taken").await;
    }
    assert_eq!(
        app.login("ｊｏｓé@BÜCHER.example", PASSWORD).await.status(),
        StatusCode::OK
    );
    for bad in [
        "ali\u{200B}ce@example.com",
        "\u{202E}moc.elpmaxe@eve",
        "\u{430}lice@example.com",
    ] {
        let r = app
            .post_json("/v1/users", &json!({"email": bad, "password": PASSWORD}))
            .await;
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "email", "{bad:?}");
    }
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "zed@example.com", "password": PASSWORD, "name": "Zed\u{202E}nimda"}),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "name");
    app.stop().await;
}

async fn imported_hashes_over_the_cost_cap_are_refused_and_bcrypt_never_truncates(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let import = |email: &str, hash: String| {
        let body = json!({"email": email, "password_hash": hash});
        let (app, root) = (&app, root.clone());
        async move {
            app.post_with_key("/admin/v1/users/import", &root, Some(&body))
                .await
        }
    };
    let salt = "c2FsdHNhbHRzYWx0c2FsdA";
    let digest = "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
    for hostile in [
        format!("$2b$31${}", "a".repeat(53)),
        format!(
            "$argon2id$v=19$m={},t=1,p=1${salt}${digest}",
            4 * 1024 * 1024
        ),
        format!("$argon2id$v=19$m=19456,t=64,p=1${salt}${digest}"),
    ] {
        let r = import("hostile@example.com", hostile.clone()).await;
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("too costly"),
            "{hostile}: {body}"
        );
    }
    // bcrypt reads 72 bytes; we refuse a longer password against a bcrypt hash rather than let
    // a different password past byte 72 in.
    let long = "x".repeat(72);
    let r = import("old@example.com", bcrypt::hash(&long, 4).unwrap()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .login("old@example.com", &format!("{long}but not the password"))
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(
        app.login("old@example.com", &long).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn the_high_s_twin_of_a_token_is_refused(b: Backend) {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("max@example.com").await;
    let token = t["access_token"].as_str().unwrap();
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    // n − s for P-256.
    let n: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let mut twin = sig.clone();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(n[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        twin[32 + i] = d as u8;
    }
    let forged = format!("{signed}.{}", B64.encode(&twin));
    let r = app.get_bearer("/v1/me", &forged).await;
    let body = assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_eq!(body["reason"], "bad_signature");
    assert_eq!(
        app.get_bearer("/v1/me", token).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn a_disabled_users_tokens_stop_at_once(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let t = app.user_with_tokens("ned@example.com").await;
    let token = t["access_token"].as_str().unwrap();
    let me: Value = app.get_bearer("/v1/me", token).await.json().await.unwrap();
    // Another node has the token verified and cached.
    let (node2, running) = app.second_node(|_| {}).await;
    let on2 = |token: String| {
        let (client, url) = (app.client.clone(), format!("{node2}/v1/me"));
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(on2(token.to_owned()).await, StatusCode::OK);
    let r = app
        .post_with_key(
            &format!("/admin/v1/users/{}/disable", me["id"].as_str().unwrap()),
            &root,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get_bearer("/v1/me", token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    until(
        "the disable on node 2",
        Duration::from_secs(1),
        async || on2(token.to_owned()).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    running.stop().await;
    app.stop().await;
}

async fn a_revoked_signing_key_stops_its_tokens_at_once_on_every_node(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let t = app.user_with_tokens("oli@example.com").await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let (node2, running) = app.second_node(|_| {}).await;
    let on2 = |token: String| {
        let (client, url) = (app.client.clone(), format!("{node2}/v1/me"));
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Both nodes have verified (and cached) the token.
    assert_eq!(
        app.get_bearer("/v1/me", &token).await.status(),
        StatusCode::OK
    );
    assert_eq!(on2(token.clone()).await, StatusCode::OK);
    let header: Value = {
        use base64::Engine;
        let h = token.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    let kid = header["kid"].as_str().unwrap();
    let r = app
        .post_with_key(&format!("/admin/v1/signing-keys/{kid}/revoke"), &root, None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["kid"], kid);
    assert_ne!(
        body["replaced_by"]["kid"].as_str().unwrap(),
        kid,
        "a new key signs at once"
    );
    assert_problem(
        app.get_bearer("/v1/me", &token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != kid)
    );
    until(
        "the revocation on node 2",
        Duration::from_secs(1),
        async || on2(token.clone()).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    // New logins get tokens from the replacement, which both nodes accept.
    let fresh: Value = app
        .login("oli@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let fresh = fresh["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_bearer("/v1/me", &fresh).await.status(),
        StatusCode::OK
    );
    until(
        "the replacement key on node 2",
        Duration::from_secs(1),
        async || on2(fresh.clone()).await == StatusCode::OK,
    )
    .await;
    let r = app
        .post_with_key(&format!("/admin/v1/signing-keys/{kid}/revoke"), &root, None)
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    let user: Value = app
        .login("oli@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url(&format!("/admin/v1/signing-keys/{kid}/revoke")))
        .bearer_auth(user["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    running.stop().await;
    app.stop().await;
}

async fn a_password_change_reaches_other_nodes_within_a_second(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("pam@example.com").await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let (node2, running) = app.second_node(|_| {}).await;
    let on2 = |token: String| {
        let (client, url) = (app.client.clone(), format!("{node2}/v1/me"));
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(on2(token.clone()).await, StatusCode::OK);
    let r = app
        .client
        .post(app.url("/v1/me/password"))
        .bearer_auth(&token)
        .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    until(
        "the password change on node 2",
        Duration::from_secs(1),
        async || on2(token.clone()).await == StatusCode::UNAUTHORIZED,
    )
    .await;
    running.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_bounded_and_are_served_only_to_the_operator() {
    let app = behind_proxy(Backend::Sqlite, |_| {}).await;
    // 200 made-up methods used to add 200 series each.
    for i in 0..200 {
        let method = Method::from_bytes(format!("FUZZ{i}").as_bytes()).unwrap();
        app.client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
    }
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "loopback may read it");
    let text = r.text().await.unwrap();
    assert!(!text.contains("FUZZ"), "a made-up method became a label");
    assert!(text.contains("method=\"other\""));
    // A client forwarded by the proxy is not the operator.
    let r = xff(&app, Method::GET, "/metrics", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    app.stop().await;

    // On a separate listener, only there.
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    let metrics = app.metrics_addr().unwrap();
    let r = app
        .client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("portcullis_http_requests_total")
    );
    let r = app
        .client
        .get(format!("http://{metrics}/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing else there");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_send_same_origin_referrers_and_hsts_subdomains_is_configurable() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let r = app.client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(r.headers()["referrer-policy"], "same-origin");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<meta name=\"referrer\" content=\"same-origin\">")
    );
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    assert!(
        r.headers().get("strict-transport-security").is_none(),
        "not over http"
    );
    app.stop().await;
    for (include, want) in [
        (true, "max-age=31536000; includeSubDomains"),
        (false, "max-age=31536000"),
    ] {
        let app = TestApp::spawn_with(Backend::Sqlite, |c| {
            c.issuer = Some("https://auth.example.com".into());
            c.hsts_include_subdomains = include;
        })
        .await;
        let r = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.headers()["strict-transport-security"], want);
        app.stop().await;
    }
}
