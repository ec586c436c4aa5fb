//! Rolling a key: the new key at once, the old one for its grace period only, sharing one counter.

use super::*;
use crate::on_both_stores;

on_both_stores!(roll_keeps_the_old_key_for_the_grace_period,);

async fn roll_keeps_the_old_key_for_the_grace_period(b: Backend) {
    let app = spawn(b).await;
    let (_, v) = verifier(&app).await;
    let (alice, _) = user(&app, "alice@example.com").await;
    let old = create(
        &app,
        &alice,
        json!({"name": "prod", "scopes": ["orders:read"], "owner_meta": {"env": "prod"}, "remaining": 10,
               "ratelimit": {"limit": 100, "duration_ms": 60000}, "prefix": "sk_prod"}),
    )
    .await;
    let old_key = key_of(&old);
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&old)),
            &alice,
            Some(&json!({"grace_period_s": 60})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let new: Value = r.json().await.unwrap();
    let new_key = key_of(&new);
    assert!(new_key.starts_with("sk_prod_"));
    assert_ne!(new_key, old_key);
    assert_ne!(new["id"], old["id"]);
    assert_eq!(new["rolled_from"], old["id"]);
    for field in [
        "name",
        "scopes",
        "owner_meta",
        "remaining",
        "ratelimit",
        "owner_id",
    ] {
        assert_eq!(new[field], old[field], "{field} is copied");
    }
    let grace_end = new["old_key_expires_at"].as_str().unwrap().to_owned();

    // Both work during the grace period, and share one counter of uses.
    let r = verify(&app, &v, json!({"key": new_key})).await;
    assert_eq!(
        (r["code"].as_str(), r["remaining"].as_i64()),
        (Some("VALID"), Some(9))
    );
    let r = verify(&app, &v, json!({"key": old_key})).await;
    assert_eq!(
        (r["code"].as_str(), r["remaining"].as_i64()),
        (Some("VALID"), Some(8))
    );
    let old_view: Value = app
        .call(
            Method::GET,
            &format!("/v1/keys/{}", id_of(&old)),
            &alice,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(old_view["rolled_to"], new["id"]);
    assert_eq!(old_view["grace_until"], grace_end.as_str());

    // A key is rolled once; its successor can be rolled, and the oldest key follows the newest counter.
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&old)),
            &alice,
            None,
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "key_not_rollable").await;
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&new)),
            &alice,
            Some(&json!({"grace_period_s": 60})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let newest: Value = r.json().await.unwrap();
    assert_eq!(newest["remaining"], 8);
    let r = verify(&app, &v, json!({"key": old_key})).await;
    assert_eq!(
        (r["code"].as_str(), r["remaining"].as_i64()),
        (Some("VALID"), Some(7))
    );

    // Revoking the newest key ends the ones still in grace too.
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{}", id_of(&newest)),
            &alice,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for k in [&old_key, &new_key, &key_of(&newest)] {
        assert_eq!(code(&app, &v, k).await, "REVOKED");
    }

    // Without a grace period (the default) the old key stops at once: EXPIRED.
    let k = create(&app, &alice, json!({"name": "now"})).await;
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&k)),
            &alice,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rolled: Value = r.json().await.unwrap();
    assert_eq!(code(&app, &v, &key_of(&k)).await, "EXPIRED");
    assert_eq!(code(&app, &v, &key_of(&rolled)).await, "VALID");
    // A short grace runs out.
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&rolled)),
            &alice,
            Some(&json!({"grace_period_s": 3})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let last: Value = r.json().await.unwrap();
    assert_eq!(code(&app, &v, &key_of(&rolled)).await, "VALID");
    crate::support::sleep_until_ms(crate::support::ms_of(&last["old_key_expires_at"]), 100).await;
    assert_eq!(code(&app, &v, &key_of(&rolled)).await, "EXPIRED");

    // Bad grace periods.
    for bad in [
        json!({"grace_period_s": -1}),
        json!({"grace_period_s": 99_999_999}),
    ] {
        let r = app
            .call(
                Method::POST,
                &format!("/v1/keys/{}/roll", id_of(&last)),
                &alice,
                Some(&bad),
            )
            .await;
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "grace_period_s");
    }
}
