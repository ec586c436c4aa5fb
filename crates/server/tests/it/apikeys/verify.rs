//! `POST /v1/keys/verify`: every code, in the order the contract gives them; the `keys:verify` scope;
//! malformed keys refused before the store; keys in a query string refused.

use super::*;
use crate::on_both_stores;

on_both_stores!(
    verify_answers_each_code_in_order,
    verify_needs_scope_keys_verify,
    malformed_keys_never_reach_the_store,
    a_key_in_the_query_string_is_refused,
);

async fn verify_answers_each_code_in_order(b: Backend) {
    let app = spawn(b).await;
    let (root, v) = verifier(&app).await;
    let (alice, alice_id) = user(&app, "alice@example.com").await;

    let k = create(
        &app,
        &alice,
        json!({"name": "orders", "scopes": ["orders:read", "orders:write"], "owner_meta": {"plan": "pro"},
               "expires_at": rfc3339_in(3_600_000), "remaining": 10, "ratelimit": {"limit": 50, "duration_ms": 60000}}),
    )
    .await;
    let key = key_of(&k);
    let ok = verify(
        &app,
        &v,
        json!({"key": key, "required_scopes": ["orders:read"]}),
    )
    .await;
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["code"], "VALID");
    assert_eq!(ok["key_id"], k["id"]);
    assert_eq!(ok["owner_id"], alice_id.as_str());
    assert_eq!(ok["name"], "orders");
    assert_eq!(ok["scopes"], json!(["orders:read", "orders:write"]));
    assert_eq!(ok["owner_meta"], json!({"plan": "pro"}));
    assert!(
        ok.get("meta").is_none(),
        "an owner's words are never operator meta: {ok}"
    );
    assert_eq!(ok["expires_at"], k["expires_at"]);
    assert_eq!(ok["remaining"], 9);
    assert_eq!(ok["ratelimit"]["limit"], 50);
    assert_eq!(ok["ratelimit"]["remaining"], 49);
    assert!(ok["ratelimit"]["reset_ms"].as_i64().unwrap() > 0);

    // MALFORMED: shape, alphabet, prefix, checksum.
    let mut flipped = key.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
    for bad in [
        "".to_owned(),
        "hello".to_owned(),
        String::from_utf8(flipped).unwrap(),
        key.replacen("pk_live", "PK_LIVE", 1),
        format!("{}!", &key[..key.len() - 1]),
        "x".repeat(10_000),
    ] {
        let r = verify(&app, &v, json!({"key": bad})).await;
        assert_eq!(
            r,
            json!({"valid": false, "code": "MALFORMED", "owner_id": null})
        );
    }
    // NOT_FOUND.
    let unknown = ApiKey::generate("pk_live").unwrap();
    assert_eq!(
        verify(&app, &v, json!({"key": unknown.expose()})).await,
        json!({"valid": false, "code": "NOT_FOUND", "owner_id": null})
    );
    // INSUFFICIENT_SCOPE (no use spent).
    let r = verify(
        &app,
        &v,
        json!({"key": key, "required_scopes": ["orders:read", "billing:read"]}),
    )
    .await;
    assert_eq!(r["code"], "INSUFFICIENT_SCOPE");
    assert_eq!(r["valid"], false);
    assert_eq!(r["key_id"], k["id"]);
    let r = verify(&app, &v, json!({"key": key})).await;
    assert_eq!(r["remaining"], 8, "a refused verify spends nothing");

    // EXPIRED, and REVOKED wins over EXPIRED.
    let short = create(
        &app,
        &alice,
        json!({"name": "short", "expires_at": rfc3339_in(3_000)}),
    )
    .await;
    let short_expired = create(
        &app,
        &alice,
        json!({"name": "short2", "expires_at": rfc3339_in(3_000)}),
    )
    .await;
    assert_eq!(code(&app, &v, &key_of(&short)).await, "VALID");
    crate::support::sleep_until_ms(crate::support::ms_of(&short_expired["expires_at"]), 100).await;
    assert_eq!(code(&app, &v, &key_of(&short)).await, "EXPIRED");
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{}", id_of(&short_expired)),
            &alice,
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(code(&app, &v, &key_of(&short_expired)).await, "REVOKED");
    // An expired key with scopes missing is EXPIRED (expiry is checked before scopes).
    let r = verify(
        &app,
        &v,
        json!({"key": key_of(&short), "required_scopes": ["nope"]}),
    )
    .await;
    assert_eq!(r["code"], "EXPIRED");

    // USAGE_EXCEEDED before RATE_LIMITED.
    let metered = create(
        &app,
        &root,
        json!({"name": "m", "remaining": 1, "ratelimit": {"limit": 1, "duration_ms": 60000}}),
    )
    .await;
    let r = verify(&app, &v, json!({"key": key_of(&metered)})).await;
    assert_eq!(
        (r["code"].as_str(), r["remaining"].as_i64()),
        (Some("VALID"), Some(0))
    );
    let r = verify(&app, &v, json!({"key": key_of(&metered)})).await;
    assert_eq!(
        (r["code"].as_str(), r["remaining"].as_i64()),
        (Some("USAGE_EXCEEDED"), Some(0))
    );

    // Bad required_scopes is a 400, a missing key too.
    let r = app
        .call(
            Method::POST,
            "/v1/keys/verify",
            &v,
            Some(&json!({"key": key, "required_scopes": ["has space"]})),
        )
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    let r = app
        .call(Method::POST, "/v1/keys/verify", &v, Some(&json!({})))
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "key");
}

async fn verify_needs_scope_keys_verify(b: Backend) {
    let app = spawn(b).await;
    let (alice, _) = user(&app, "alice@example.com").await;
    let k = key_of(&create(&app, &alice, json!({"name": "k", "scopes": ["keys:write"]})).await);
    for auth in [alice.clone(), Auth::Key(k.clone())] {
        let r = app
            .call(
                Method::POST,
                "/v1/keys/verify",
                &auth,
                Some(&json!({"key": k})),
            )
            .await;
        assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    }
    let r = app.post_json("/v1/keys/verify", &json!({"key": k})).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // Root keys may verify.
    let root = Auth::Key(app.root_key().await);
    assert_eq!(code(&app, &root, &k).await, "VALID");
}

async fn malformed_keys_never_reach_the_store(b: Backend) {
    let app = spawn(b).await;
    let (_, v) = verifier(&app).await;
    let unknown = ApiKey::generate("pk_live").unwrap();
    assert_eq!(code(&app, &v, unknown.expose()).await, "NOT_FOUND");
    // With the store gone, a malformed key is still answered (no lookup happens), while a well-formed
    // key the node has never seen needs the store and fails.
    // Right prefix, alphabet and length; only the checksum (the last character) is wrong.
    let real = ApiKey::generate("pk_live").unwrap().expose().to_owned();
    let last = real.chars().last().unwrap();
    let bad_checksum = format!(
        "{}{}",
        &real[..real.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    assert_eq!(bad_checksum.len(), real.len());
    app.store.close().await;
    assert_eq!(code(&app, &v, &bad_checksum).await, "MALFORMED");
    assert_eq!(code(&app, &v, "garbage").await, "MALFORMED");
    let fresh = ApiKey::generate("pk_live").unwrap();
    let r = app
        .call(
            Method::POST,
            "/v1/keys/verify",
            &v,
            Some(&json!({"key": fresh.expose()})),
        )
        .await;
    // A store that cannot be reached is "try again shortly", not an internal error.
    assert_eq!(r.headers()["retry-after"], "1");
    assert_problem(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // A miss is remembered too: guessing the same key again costs no lookup.
    assert_eq!(code(&app, &v, unknown.expose()).await, "NOT_FOUND");
}

async fn a_key_in_the_query_string_is_refused(b: Backend) {
    let app = spawn(b).await;
    let (alice, _) = user(&app, "alice@example.com").await;
    let key = key_of(&create(&app, &alice, json!({"name": "k", "scopes": ["keys:read"]})).await);
    for path in [
        format!("/v1/me?api_key={key}"),
        format!("/v1/me?access_token={key}"),
        format!("/v1/keys?q={key}"),
        format!("/v1/keys?limit=5&x={}", key.replace('_', "%5F")),
    ] {
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "credential_in_query").await;
        assert!(body["detail"].as_str().unwrap().contains("header"));
        // Also when the header carries a credential as well.
        let r = app.get_with_key(&path, &key).await;
        assert_problem(r, StatusCode::BAD_REQUEST, "credential_in_query").await;
    }
    // Ordinary query parameters are fine.
    assert_eq!(
        app.get_with_key("/v1/keys?limit=5", &key).await.status(),
        StatusCode::OK
    );
}
