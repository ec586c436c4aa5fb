//! Password login and the token pair over HTTP: what a login returns (and the scopes it carries),
//! refresh rotation, reuse revoking the family, the grace period, concurrent refreshes, logout, and
//! login throttling by address, by account and by the hashing queue.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp, assert_problem, jwt_claims};

on_both_stores!(
    login_returns_a_no_store_token_pair,
    password_login_tokens_carry_the_login_scopes,
    login_accepts_form_bodies,
    wrong_password_and_unknown_account_look_the_same,
    refresh_rotates_and_the_old_token_is_spent,
    reused_refresh_token_revokes_the_family,
    concurrent_refreshes_of_one_token_let_exactly_one_through,
    grace_period_retry_gets_a_fresh_pair_once,
    a_replay_within_grace_cannot_take_over_the_login,
    garbage_refresh_tokens_are_invalid,
    logout_revokes_the_family,
    logout_all_revokes_everything,
    failed_logins_are_throttled_per_ip_with_ratelimit_headers,
    failed_logins_of_one_account_buy_growing_waits,
    a_full_hashing_queue_answers_503_at_once,
);

async fn login_returns_a_no_store_token_pair(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("ann@example.com").await;
    let r = app.login("ann@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 900);
    assert_eq!(t["refresh_expires_in"], 7 * 24 * 3600);
    assert!(t["refresh_token"].as_str().unwrap().starts_with("prt_"));
    assert_eq!(t["access_token"].as_str().unwrap().split('.').count(), 3);
    let root = app.root_key().await;
    app.wait_for_audit(&root, "login.succeeded").await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("portcullis_logins_total{outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_tokens_issued_total"));
    app.stop().await;
}

/// RFC 9068 §2.2.3 / API.md: password-login access tokens carry `scope`, `keys:read keys:write` unless
/// `login_scopes` says otherwise, and a refreshed token keeps the scope of its login. Our own endpoints
/// still give a user's own login every self-service right.
async fn password_login_tokens_carry_the_login_scopes(b: Backend) {
    let app = TestApp::spawn(b.clone()).await;
    let t = app.user_with_tokens("ann@example.com").await;
    let claims = jwt_claims(t["access_token"].as_str().unwrap());
    assert_eq!(claims["scope"], "keys:read keys:write", "{claims}");
    assert_eq!(claims["client_id"], "portcullis");
    app.stop().await;

    let app = TestApp::spawn_with(b, |c| {
        c.login_scopes = vec!["orders:read".into(), "keys:read".into()];
    })
    .await;
    let t = app.user_with_tokens("bob@example.com").await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(jwt_claims(token)["scope"], "orders:read keys:read");
    let me: Value = app.get_bearer("/v1/me", token).await.json().await.unwrap();
    assert_eq!(me["auth"]["method"], "jwt", "{me}");
    let r = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(token)
        .json(&json!({"name": "ci", "scopes": ["keys:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "own login keeps self-service rights"
    );
    let r = app
        .post_json(
            "/v1/auth/refresh",
            &json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let refreshed: Value = r.json().await.unwrap();
    assert_eq!(
        jwt_claims(refreshed["access_token"].as_str().unwrap())["scope"],
        "orders:read keys:read"
    );
    app.stop().await;
}

async fn login_accepts_form_bodies(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("bob@example.com").await;
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .form(&[("email", "bob@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let r = app
        .client
        .post(app.url("/v1/auth/refresh"))
        .form(&[("refresh_token", t["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn wrong_password_and_unknown_account_look_the_same(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("cat@example.com").await;
    let wrong = assert_problem(
        app.login("cat@example.com", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let unknown = assert_problem(
        app.login("nobody@example.com", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(wrong["detail"], unknown["detail"]);
    // Both do a full argon2 verification. Proven by a lower bound, which load cannot break: neither
    // answers faster than half of one verification timed here, in this process (a shortcut for
    // unknown accounts would answer in about a millisecond).
    let hashing = portcullis_core::passwords::PasswordHashing::new(Default::default()).unwrap();
    let stored = hashing
        .hash(&secrecy::SecretString::from(
            "violet tractor umbrella".to_owned(),
        ))
        .unwrap();
    // The cheapest of several verifications, before and after the logins: on a loaded machine (the
    // whole suite running on two cores) one slow sample must not set the bar.
    let hash_once = || {
        let s = std::time::Instant::now();
        hashing.verify(&secrecy::SecretString::from("x".repeat(20)), &stored);
        s.elapsed()
    };
    let before = (0..3).map(|_| hash_once()).min().unwrap();
    let mut t_wrong = Vec::new();
    let mut t_unknown = Vec::new();
    for i in 0..3 {
        let s = std::time::Instant::now();
        let r = app
            .login("cat@example.com", &format!("wrong password {i}"))
            .await;
        t_wrong.push(s.elapsed());
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "a throttled answer would be fast too"
        );
        let s = std::time::Instant::now();
        let r = app
            .login(&format!("ghost{i}@example.com"), "wrong password")
            .await;
        t_unknown.push(s.elapsed());
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let one_hash = (0..3).map(|_| hash_once()).min().unwrap().min(before);
    let (a, b) = (
        *t_wrong.iter().min().unwrap(),
        *t_unknown.iter().min().unwrap(),
    );
    assert!(
        a >= one_hash / 2 && b >= one_hash / 2,
        "wrong password {a:?}, unknown account {b:?}, one verification {one_hash:?}"
    );
    let root = app.root_key().await;
    app.wait_for_audit(&root, "login.failed").await;
    app.stop().await;
}

async fn refresh(app: &TestApp, token: &Value) -> reqwest::Response {
    app.post_json("/v1/auth/refresh", &json!({"refresh_token": token}))
        .await
}

async fn refresh_rotates_and_the_old_token_is_spent(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t1 = app.user_with_tokens("dan@example.com").await;
    let r = refresh(&app, &t1["refresh_token"]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t2: Value = r.json().await.unwrap();
    assert_ne!(t2["refresh_token"], t1["refresh_token"]);
    assert_eq!(
        app.get_bearer("/v1/me", t2["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let t3: Value = refresh(&app, &t2["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    assert!(t3["refresh_token"].is_string());
    // The old token is spent: presented again, it is reuse (and the newest token dies with it).
    assert_problem(
        refresh(&app, &t1["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_problem(
        refresh(&app, &t3["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
    let root = app.root_key().await;
    app.wait_for_audit(&root, "refresh.rotated").await;
    app.stop().await;
}

async fn reused_refresh_token_revokes_the_family(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t1 = app.user_with_tokens("eve@example.com").await;
    let other = app
        .login("eve@example.com", PASSWORD)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let t2: Value = refresh(&app, &t1["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    // The attacker (or the victim) presents the spent token again.
    assert_problem(
        refresh(&app, &t1["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    // The family's newest token is dead too.
    assert_problem(
        refresh(&app, &t2["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
    // Another login's family is untouched.
    assert_eq!(
        refresh(&app, &other["refresh_token"]).await.status(),
        StatusCode::OK
    );
    let root = app.root_key().await;
    app.wait_for_audit(&root, "refresh.reuse_detected").await;
    app.stop().await;
}

async fn concurrent_refreshes_of_one_token_let_exactly_one_through(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("fay@example.com").await;
    for _round in 0..3 {
        let t: Value = app
            .login("fay@example.com", PASSWORD)
            .await
            .json()
            .await
            .unwrap();
        let token = t["refresh_token"].clone();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let client = app.client.clone();
            let url = app.url("/v1/auth/refresh");
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"refresh_token": token}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                StatusCode::OK => ok += 1,
                StatusCode::UNAUTHORIZED => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(ok, 1, "exactly one concurrent use may succeed");
    }
    app.stop().await;
}

async fn grace_period_retry_gets_a_fresh_pair_once(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.refresh_reuse_grace_s = 30).await;
    let t1 = app.user_with_tokens("gus@example.com").await;
    let lost = refresh(&app, &t1["refresh_token"]).await;
    assert_eq!(lost.status(), StatusCode::OK);
    // The response was lost; the client retries with the token it just spent.
    let r = refresh(&app, &t1["refresh_token"]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let retried: Value = r.json().await.unwrap();
    let next: Value = refresh(&app, &retried["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    assert!(next["refresh_token"].is_string());
    // One retry per token: a second one, still inside the grace period, is reuse and ends the login.
    assert_problem(
        refresh(&app, &t1["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_problem(
        refresh(&app, &next["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
    app.stop().await;
}

/// RFC 9700 §4.14.2 with a grace period: a thief who replays a just-spent token inside the grace
/// period must not end up the only one signed in. The real client's next use is reuse, which ends
/// the family, the thief's token with it.
async fn a_replay_within_grace_cannot_take_over_the_login(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.refresh_reuse_grace_s = 30).await;
    let t1 = app.user_with_tokens("ivy@example.com").await;
    let real: Value = refresh(&app, &t1["refresh_token"])
        .await
        .json()
        .await
        .unwrap();
    let stolen = refresh(&app, &t1["refresh_token"]).await;
    assert_eq!(
        stolen.status(),
        StatusCode::OK,
        "inside grace, the replay is served"
    );
    let stolen: Value = stolen.json().await.unwrap();
    assert_problem(
        refresh(&app, &real["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    assert_problem(
        refresh(&app, &stolen["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
    app.stop().await;
}

async fn garbage_refresh_tokens_are_invalid(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("hal@example.com").await;
    let good = t["refresh_token"].as_str().unwrap();
    for bad in [
        "",
        "prt_",
        "garbage",
        &good[..good.len() - 1],
        &format!("{good}x"),
        &good.replace("prt_", "xyz_"),
    ] {
        assert_problem(
            refresh(&app, &json!(bad)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
        )
        .await;
    }
    let r = app
        .post_json("/v1/auth/refresh", &json!({"refresh_token": 5}))
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    // None of this touched the real token.
    assert_eq!(
        refresh(&app, &t["refresh_token"]).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn logout_revokes_the_family(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("ian@example.com").await;
    let r = app
        .post_json(
            "/v1/auth/logout",
            &json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(
        refresh(&app, &t["refresh_token"]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
    // Unknown tokens are accepted silently (RFC 7009 style).
    let r = app
        .post_json("/v1/auth/logout", &json!({"refresh_token": "prt_nothing"}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.stop().await;
}

async fn logout_all_revokes_everything(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.user_with_tokens("jay@example.com").await;
    let other = app.user_with_tokens("kim@example.com").await;
    let b2: Value = app
        .login("jay@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url("/v1/auth/logout-all"))
        .bearer_auth(a["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for t in [&a, &b2] {
        assert_problem(
            refresh(&app, &t["refresh_token"]).await,
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
        )
        .await;
        assert_problem(
            app.get_bearer("/v1/me", t["access_token"].as_str().unwrap())
                .await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    assert_eq!(
        app.get_bearer("/v1/me", other["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    assert_problem(
        app.client
            .post(app.url("/v1/auth/logout-all"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    app.stop().await;
}

async fn failed_logins_are_throttled_per_ip_with_ratelimit_headers(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.login_ip_limit = 5;
        c.login_ip_period_s = 60;
        c.login_free_failures = 100;
        c.verify_audit_interval_ms = 200;
    })
    .await;
    app.register("lea@example.com").await;
    for i in 0..5 {
        let r = app
            .login(&format!("someone{i}@example.com"), "wrong password")
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = app.login("lea@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "retry-after {retry}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"login-ip\";q=5;w=60");
    assert!(
        r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"login-ip\";r=0;t=")
    );
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Refused before any work, so counted, not written one by one: more refusals, one event.
    for _ in 0..20 {
        let r = app.login("lea@example.com", PASSWORD).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let root = app.root_key().await;
    let event = app.wait_for_audit(&root, "login.throttled").await;
    assert_eq!(event["data"]["email"], "lea@example.com");
    assert_eq!(event["data"]["policy"], "login-ip");
    assert_eq!(event["data"]["ips"], json!(["127.0.0.1"]));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let all: serde_json::Value = app
        .get_with_key("/admin/v1/audit?type=login.throttled", &root)
        .await
        .json()
        .await
        .unwrap();
    let events = all["events"].as_array().unwrap();
    let total: u64 = events
        .iter()
        .map(|e| e["data"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 21, "every refusal counted: {all}");
    assert!(events.len() <= 3, "{} rows for 21 refusals", events.len());
    app.stop().await;
}

async fn failed_logins_of_one_account_buy_growing_waits(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.login_free_failures = 2;
        c.login_ip_limit = 1000;
    })
    .await;
    app.register("max@example.com").await;
    for _ in 0..2 {
        assert_eq!(
            app.login("max@example.com", "wrong password")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Two free failures used up: a 1 s wait, during which even the correct password is refused
    // without any hashing.
    let r = app.login("max@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
        "\"login-account\""
    );
    // Unknown accounts are throttled the same way: a 429 reveals nothing.
    for _ in 0..2 {
        app.login("nobody@example.com", "wrong password").await;
    }
    assert_eq!(
        app.login("nobody@example.com", "wrong password")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let retry_after = |r: &reqwest::Response| -> u64 {
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // The first wait is 1 s; the failure after it doubles the next wait to 2 s.
    let r = app.login("max@example.com", PASSWORD).await;
    assert_eq!(retry_after(&r), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        app.login("max@example.com", "wrong password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app.login("max@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), 2, "the waits grow");
    // The wait ends; a success clears the count.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        app.login("max@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login("max@example.com", "wrong password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("max@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn a_full_hashing_queue_answers_503_at_once(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.hash_concurrency = 1;
        c.hash_queue_limit = 1;
        c.login_ip_limit = 1000;
        c.login_free_failures = 1000;
        c.login_account_free_failures = 1000;
    })
    .await;
    app.register("ola@example.com").await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = app.client.clone();
        let url = app.url("/v1/auth/login");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"email": "ola@example.com", "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            (r.status(), r.headers().get("retry-after").cloned())
        }));
    }
    let (mut ok, mut overloaded) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::SERVICE_UNAVAILABLE, retry) => {
                assert_eq!(retry.unwrap(), "1");
                overloaded += 1;
            }
            (other, _) => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 2, "the running and the queued login succeed: {ok}");
    assert!(overloaded >= 1, "the rest are turned away: {overloaded}");
    assert_eq!(
        app.login("ola@example.com", PASSWORD).await.status(),
        StatusCode::OK,
        "and it recovers"
    );
    app.stop().await;
}
