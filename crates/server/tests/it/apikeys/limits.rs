//! A key's limits: `remaining` spent atomically under concurrency, the per-key rate limit, and both
//! applying when the key calls our own endpoints.

use super::*;
use crate::on_both_stores;

on_both_stores!(
    remaining_is_spent_atomically_under_concurrency,
    per_key_rate_limit_answers_rate_limited,
    limits_also_apply_when_the_key_calls_our_endpoints,
);

async fn remaining_is_spent_atomically_under_concurrency(b: Backend) {
    let app = spawn(b).await;
    let (root, v) = verifier(&app).await;
    for (k, n) in [(5_i64, 40_usize), (17, 24), (3, 3)] {
        let key = key_of(&create(&app, &root, json!({"name": "metered", "remaining": k})).await);
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (client, url, key, vk) = (
                app.client.clone(),
                app.url("/v1/keys/verify"),
                key.clone(),
                match &v {
                    Auth::Key(k) => k.clone(),
                    Auth::Bearer(_) | Auth::None => unreachable!(),
                },
            );
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("x-api-key", vk)
                    .json(&json!({"key": key}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let body: Value = r.json().await.unwrap();
                body["code"].as_str().unwrap().to_owned()
            }));
        }
        let mut valid = 0;
        let mut exceeded = 0;
        for t in tasks {
            match t.await.unwrap().as_str() {
                "VALID" => valid += 1,
                "USAGE_EXCEEDED" => exceeded += 1,
                other => panic!("unexpected code {other}"),
            }
        }
        let expect = (k as usize).min(n);
        assert_eq!(
            (valid, exceeded),
            (expect, n - expect),
            "remaining {k}, {n} racers"
        );
        assert_eq!(code(&app, &v, &key).await, "USAGE_EXCEEDED");
    }
}

async fn per_key_rate_limit_answers_rate_limited(b: Backend) {
    let app = spawn(b).await;
    let (root, v) = verifier(&app).await;
    let key = key_of(
        &create(
            &app,
            &root,
            json!({"name": "rl", "ratelimit": {"limit": 3, "duration_ms": 60000}}),
        )
        .await,
    );
    for left in [2, 1, 0] {
        let r = verify(&app, &v, json!({"key": key})).await;
        assert_eq!(r["code"], "VALID");
        assert_eq!(r["ratelimit"]["remaining"], left);
    }
    let r = verify(&app, &v, json!({"key": key})).await;
    assert_eq!(r["valid"], false);
    assert_eq!(r["code"], "RATE_LIMITED");
    assert_eq!(r["ratelimit"]["limit"], 3);
    assert_eq!(r["ratelimit"]["remaining"], 0);
    let reset = r["ratelimit"]["reset_ms"].as_i64().unwrap();
    assert!(reset > 50_000 && reset <= 60_000, "{reset}");

    // A fast window refills.
    let quick = key_of(
        &create(
            &app,
            &root,
            json!({"name": "q", "ratelimit": {"limit": 1, "duration_ms": 3000}}),
        )
        .await,
    );
    let first = std::time::Instant::now();
    assert_eq!(code(&app, &v, &quick).await, "VALID");
    assert_eq!(code(&app, &v, &quick).await, "RATE_LIMITED");
    tokio::time::sleep(Duration::from_millis(3_050).saturating_sub(first.elapsed())).await;
    assert_eq!(code(&app, &v, &quick).await, "VALID");
}

async fn limits_also_apply_when_the_key_calls_our_endpoints(b: Backend) {
    let app = spawn(b).await;
    let (alice, _) = user(&app, "alice@example.com").await;
    let limited = key_of(
        &create(
            &app,
            &alice,
            json!({"name": "rl", "ratelimit": {"limit": 2, "duration_ms": 60000}}),
        )
        .await,
    );
    for _ in 0..2 {
        assert_eq!(
            app.get_with_key("/v1/me", &limited).await.status(),
            StatusCode::OK
        );
    }
    let r = app.get_with_key("/v1/me", &limited).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["ratelimit-policy"], "\"api-key\";q=2;w=60");
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    let metered = key_of(&create(&app, &alice, json!({"name": "m", "remaining": 1})).await);
    assert_eq!(
        app.get_with_key("/v1/me", &metered).await.status(),
        StatusCode::OK
    );
    let r = app.get_with_key("/v1/me", &metered).await;
    assert_problem(r, StatusCode::FORBIDDEN, "usage_exceeded").await;
}
