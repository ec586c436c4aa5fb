//! Creating, using, listing, changing and revoking keys: the secret shown once and stored only as its
//! hash, owners and scopes, changes and revocations that apply at once (on every node), `last_used_at`,
//! and the audit trail.

use super::*;
use crate::on_both_stores;

on_both_stores!(
    create_shows_the_key_once_and_stores_only_its_hash,
    a_key_authenticates_as_its_owner_with_its_scopes,
    keys_cannot_grant_more_than_they_hold,
    owners_see_only_their_keys_and_admins_see_all,
    revocation_and_changes_apply_at_once,
    a_revocation_on_one_node_reaches_the_others_within_a_second,
    last_used_at_is_recorded_off_the_request_path,
    audit_records_lifecycle_and_aggregates_verify_failures,
);

async fn create_shows_the_key_once_and_stores_only_its_hash(b: Backend) {
    let is_sqlite = matches!(b, Backend::Sqlite);
    let app = spawn(b).await;
    let (alice, alice_id) = user(&app, "alice@example.com").await;
    let r = app.call(Method::POST,
        "/v1/keys",
        &alice,
        Some(&json!({"name": "ci", "scopes": ["orders:read", "keys:read"], "owner_meta": {"team": "infra"}})),
)
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let created: Value = r.json().await.unwrap();
    let key = key_of(&created);
    let re = regex_lite(&key);
    assert!(re, "{key} does not match the documented scanner pattern");
    assert!(key.starts_with("pk_live_"));
    assert_eq!(created["start"], key[..12]);
    assert_eq!(created["name"], "ci");
    assert_eq!(created["scopes"], json!(["keys:read", "orders:read"]));
    assert_eq!(created["owner_meta"], json!({"team": "infra"}));
    assert_eq!(created["meta"], Value::Null);
    assert_eq!(created["owner_id"], alice_id.as_str());
    assert!(created["id"].as_str().unwrap().starts_with("key_"));
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["expires_at"], Value::Null);

    let id = id_of(&created);
    let got: Value = app
        .call(Method::GET, &format!("/v1/keys/{id}"), &alice, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        got.get("key").is_none(),
        "the key is shown only once: {got}"
    );
    assert_eq!(got["start"], created["start"]);
    let list: Value = app
        .call(Method::GET, "/v1/keys", &alice, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert!(list["keys"][0].get("key").is_none());
    assert!(!list.to_string().contains(&key));

    // A custom prefix is kept.
    let custom = create(&app, &alice, json!({"name": "test", "prefix": "sk_test"})).await;
    assert!(key_of(&custom).starts_with("sk_test_"));

    // Only the SHA-256 is stored.
    use portcullis_store::ApiKeyStore;
    let row = app
        .store
        .api_key_by_id(&portcullis_core::ids::KeyId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.key_hash,
        portcullis_core::secrets::TokenHash::of(key.as_bytes())
    );
    let row_text = format!("{row:?}");
    assert!(!row_text.contains(&key[12..]));
    if is_sqlite {
        // Nothing in the database files holds the secret part of the key.
        app.state().store.close().await;
        let secret = &key.as_bytes()[12..];
        for entry in std::fs::read_dir(app.state().config.data_dir.clone()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret));
        }
    }
}

/// The README's scanner regex `\b[a-z0-9_]{2,20}_[0-9A-Za-z]{39}\b`, by hand.
fn regex_lite(key: &str) -> bool {
    let Some((prefix, body)) = key.rsplit_once('_') else {
        return false;
    };
    (2..=20).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && body.len() == 39
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
}

async fn a_key_authenticates_as_its_owner_with_its_scopes(b: Backend) {
    let app = spawn(b).await;
    let (alice, alice_id) = user(&app, "alice@example.com").await;
    let reader = key_of(&create(&app, &alice, json!({"name": "r", "scopes": ["keys:read"]})).await);

    for auth in [Auth::Key(reader.clone()), Auth::Bearer(reader.clone())] {
        let r = app.call(Method::GET, "/v1/me", &auth, None).await;
        assert_eq!(r.status(), StatusCode::OK);
        let me: Value = r.json().await.unwrap();
        assert_eq!(me["id"], alice_id.as_str());
        assert_eq!(me["auth"]["method"], "api_key");
        assert_eq!(me["auth"]["scopes"], json!(["keys:read"]));
        assert!(me["auth"]["key_id"].as_str().unwrap().starts_with("key_"));
    }
    // keys:read lists, but does not create, change or revoke.
    let r = app
        .call(Method::GET, "/v1/keys", &Auth::Key(reader.clone()), None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .call(
            Method::POST,
            "/v1/keys",
            &Auth::Key(reader.clone()),
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;

    // A key without key scopes does not even list.
    let plain = key_of(
        &create(
            &app,
            &alice,
            json!({"name": "p", "scopes": ["orders:read"]}),
        )
        .await,
    );
    let r = app
        .call(Method::GET, "/v1/keys", &Auth::Key(plain.clone()), None)
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    // Nor may it act as the user for self-service that needs the user's own login.
    let r = app
        .call(Method::POST, "/v1/auth/logout-all", &Auth::Key(plain), None)
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;

    // Unknown and made-up keys.
    let unknown = ApiKey::generate("pk_live").unwrap();
    let r = app.get_with_key("/v1/me", unknown.expose()).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    let r = app.get_with_key("/v1/me", "pk_live_not_a_key").await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    let r = app
        .call(Method::GET, "/v1/keys", &Auth::Bearer("x".into()), None)
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.client.get(app.url("/v1/keys")).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

async fn keys_cannot_grant_more_than_they_hold(b: Backend) {
    let app = spawn(b).await;
    let (alice, _) = user(&app, "alice@example.com").await;
    for reserved in ["admin", "keys:verify"] {
        let r = app
            .call(
                Method::POST,
                "/v1/keys",
                &alice,
                Some(&json!({"name": "x", "scopes": [reserved]})),
            )
            .await;
        let body = assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
        assert!(body["detail"].as_str().unwrap().contains(reserved));
    }
    let writer = Auth::Key(key_of(
        &create(
            &app,
            &alice,
            json!({"name": "w", "scopes": ["keys:write", "orders:read"]}),
        )
        .await,
    ));
    let r = app
        .call(
            Method::POST,
            "/v1/keys",
            &writer,
            Some(&json!({"name": "x", "scopes": ["orders:write"]})),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let child = create(
        &app,
        &writer,
        json!({"name": "child", "scopes": ["orders:read"]}),
    )
    .await;
    assert_eq!(child["scopes"], json!(["orders:read"]));

    // Neither through PATCH nor by rolling a stronger key.
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&child)),
            &writer,
            Some(&json!({"scopes": ["orders:write"]})),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let strong = create(
        &app,
        &alice,
        json!({"name": "strong", "scopes": ["billing:write"]}),
    )
    .await;
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&strong)),
            &writer,
            None,
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(
        code(&app, &verifier(&app).await.1, &key_of(&strong)).await,
        "VALID"
    );

    // Administrators may grant the reserved scopes; an ownerless non-admin key manages nothing.
    let root = Auth::Key(app.root_key().await);
    let service = create(
        &app,
        &root,
        json!({"name": "svc", "scopes": ["keys:verify", "keys:write"]}),
    )
    .await;
    assert_eq!(service["owner_id"], Value::Null);
    let r = app
        .call(
            Method::POST,
            "/v1/keys",
            &Auth::Key(key_of(&service)),
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "not_a_user").await;
}

async fn owners_see_only_their_keys_and_admins_see_all(b: Backend) {
    let app = spawn(b).await;
    let (alice, alice_id) = user(&app, "alice@example.com").await;
    let (bob, _) = user(&app, "bob@example.com").await;
    let a = create(&app, &alice, json!({"name": "a"})).await;
    let a2 = create(&app, &alice, json!({"name": "a2"})).await;
    let bk = create(&app, &bob, json!({"name": "b"})).await;
    let aid = id_of(&a);

    for (method, path, body) in [
        (Method::GET, format!("/v1/keys/{aid}"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{aid}"),
            Some(json!({"name": "mine"})),
        ),
        (Method::DELETE, format!("/v1/keys/{aid}"), None),
        (Method::POST, format!("/v1/keys/{aid}/roll"), None),
        (Method::GET, "/v1/keys/key_nonsense".to_owned(), None),
    ] {
        let r = app.call(method, &path, &bob, body.as_ref()).await;
        assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let bobs: Value = app
        .call(Method::GET, "/v1/keys", &bob, None)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = bobs["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![bk["id"].as_str().unwrap()]);
    // Alice's key is untouched.
    assert_eq!(
        code(&app, &verifier(&app).await.1, &key_of(&a)).await,
        "VALID"
    );

    // Paging, oldest first.
    let page: Value = app
        .call(Method::GET, "/v1/keys?limit=1", &alice, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["keys"][0]["id"], aid.as_str());
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let page: Value = app
        .call(
            Method::GET,
            &format!("/v1/keys?limit=1&cursor={cursor}"),
            &alice,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["keys"][0]["id"], a2["id"]);
    assert!(page.get("next_cursor").is_none());

    // Administrators.
    let root = app.root_key().await;
    let all: Value = app
        .get_with_key("/admin/v1/keys", &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        all["keys"].as_array().unwrap().len(),
        6,
        "three user keys, two root keys and the verifier"
    );
    let alices: Value = app
        .get_with_key(&format!("/admin/v1/keys?owner={alice_id}"), &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alices["keys"].as_array().unwrap().len(), 2);
    let nobodys: Value = app
        .get_with_key("/admin/v1/keys?owner=none", &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(nobodys["keys"].as_array().unwrap().len(), 3);
    let r = app.get_with_key("/admin/v1/keys?owner=bob", &root).await;
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    let got: Value = app
        .get_with_key(&format!("/admin/v1/keys/{aid}"), &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["owner_id"], alice_id.as_str());
    let r = app
        .call(
            Method::DELETE,
            &format!("/admin/v1/keys/{aid}"),
            &Auth::Key(root.clone()),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let got: Value = app
        .call(Method::GET, &format!("/v1/keys/{aid}"), &alice, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(got["revoked_at"].as_str().is_some());

    let r = app.call(Method::GET, "/admin/v1/keys", &alice, None).await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
}

async fn revocation_and_changes_apply_at_once(b: Backend) {
    let app = spawn(b).await;
    let (_, v) = verifier(&app).await;
    let (alice, _) = user(&app, "alice@example.com").await;
    let k = create(
        &app,
        &alice,
        json!({"name": "k", "scopes": ["orders:read"]}),
    )
    .await;
    let key = key_of(&k);
    let path = format!("/v1/keys/{}", id_of(&k));
    // Cached by use…
    assert_eq!(code(&app, &v, &key).await, "VALID");
    assert_eq!(
        app.get_with_key("/v1/me", &key).await.status(),
        StatusCode::OK
    );

    // …a scope change shows on the very next verify.
    let r = app
        .call(
            Method::PATCH,
            &path,
            &alice,
            Some(&json!({"scopes": ["orders:write"], "owner_meta": {"v": 2}, "name": "renamed"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["scopes"], json!(["orders:write"]));
    assert_eq!(patched["name"], "renamed");
    let r = verify(
        &app,
        &v,
        json!({"key": key, "required_scopes": ["orders:read"]}),
    )
    .await;
    assert_eq!(r["code"], "INSUFFICIENT_SCOPE");
    assert_eq!(r["owner_meta"], json!({"v": 2}));
    // Clearing owner_meta with null.
    let r = app
        .call(
            Method::PATCH,
            &path,
            &alice,
            Some(&json!({"owner_meta": null})),
        )
        .await;
    let cleared: Value = r.json().await.unwrap();
    assert_eq!(cleared["owner_meta"], Value::Null);
    assert_eq!(cleared["name"], "renamed", "fields left out stay");

    // Revocation: rejected on the next request, everywhere on this node.
    let r = app.call(Method::DELETE, &path, &alice, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(code(&app, &v, &key).await, "REVOKED");
    let r = app.get_with_key("/v1/me", &key).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    // Revoking twice is fine; changing a revoked key is not.
    assert_eq!(
        app.call(Method::DELETE, &path, &alice, None).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = app
        .call(
            Method::PATCH,
            &path,
            &alice,
            Some(&json!({"name": "again"})),
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "key_revoked").await;
    let r = app
        .call(Method::POST, &format!("{path}/roll"), &alice, None)
        .await;
    assert_problem(r, StatusCode::CONFLICT, "key_not_rollable").await;
}

async fn a_revocation_on_one_node_reaches_the_others_within_a_second(b: Backend) {
    let app = spawn(b).await;
    let (root, v) = verifier(&app).await;
    let k = create(
        &app,
        &root,
        json!({"name": "shared", "scopes": ["orders:read"]}),
    )
    .await;
    let key = key_of(&k);

    // A second node over the same database, with a store and caches of its own.
    let (node2_base, node2) = app.second_node(|_| {}).await;
    let verifier_key = match &v {
        Auth::Key(k) => k.clone(),
        Auth::Bearer(_) | Auth::None => unreachable!(),
    };
    let verify2 = |required: Value| {
        let (client, url, verifier_key, key) = (
            app.client.clone(),
            format!("{node2_base}/v1/keys/verify"),
            verifier_key.clone(),
            key.clone(),
        );
        async move {
            let r = client
                .post(url)
                .header("x-api-key", verifier_key)
                .json(&json!({"key": key, "required_scopes": required}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["code"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // Node 2 has the key in memory.
    assert_eq!(verify2(json!(["orders:read"])).await, "VALID");
    assert_eq!(verify2(json!(["orders:read"])).await, "VALID");

    async fn until(what: &str, f: impl AsyncFn() -> bool) -> Duration {
        let started = std::time::Instant::now();
        while !f().await {
            assert!(
                started.elapsed() < Duration::from_millis(1_000),
                "{what} did not reach the other node in time"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        started.elapsed()
    }

    // A change on node 1 …
    let path = format!("/v1/keys/{}", id_of(&k));
    let r = app
        .call(
            Method::PATCH,
            &path,
            &root,
            Some(&json!({"scopes": ["orders:write"]})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let took = until("a scope change", async || {
        verify2(json!(["orders:read"])).await == "INSUFFICIENT_SCOPE"
    })
    .await;
    eprintln!("scope change seen by node 2 after {took:?}");

    // … and a revocation.
    let r = app.call(Method::DELETE, &path, &root, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let took = until("a revocation", async || {
        verify2(json!([])).await == "REVOKED"
    })
    .await;
    eprintln!("revocation seen by node 2 after {took:?}");
    node2.stop().await;
}

async fn last_used_at_is_recorded_off_the_request_path(b: Backend) {
    let app = spawn(b).await;
    let (_, v) = verifier(&app).await;
    let (alice, _) = user(&app, "alice@example.com").await;
    let k = create(&app, &alice, json!({"name": "k"})).await;
    let path = format!("/v1/keys/{}", id_of(&k));
    assert_eq!(k["last_used_at"], Value::Null);
    assert_eq!(code(&app, &v, &key_of(&k)).await, "VALID");
    let mut first = Value::Null;
    for _ in 0..60 {
        let view: Value = app
            .call(Method::GET, &path, &alice, None)
            .await
            .json()
            .await
            .unwrap();
        if !view["last_used_at"].is_null() {
            first = view["last_used_at"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.is_string(), "last_used_at was never written");
    // Used again within the minute: not written again.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(code(&app, &v, &key_of(&k)).await, "VALID");
    assert_eq!(
        app.get_with_key("/v1/me", &key_of(&k)).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let view: Value = app
        .call(Method::GET, &path, &alice, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["last_used_at"], first);
}

async fn audit_records_lifecycle_and_aggregates_verify_failures(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.verify_audit_interval_ms = 300;
        c.self_service_scopes = SELF_SERVICE.iter().map(|s| (*s).to_owned()).collect();
    })
    .await;
    let (root, v) = verifier(&app).await;
    let root_key = match &root {
        Auth::Key(k) => k.clone(),
        Auth::Bearer(_) | Auth::None => unreachable!(),
    };
    let k = create(&app, &root, json!({"name": "audited"})).await;
    let created = app.wait_for_audit(&root_key, "api_key.created").await;
    assert!(
        !created.to_string().contains(&key_of(&k)),
        "no secret in the audit log"
    );
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&k)),
            &root,
            None,
        )
        .await;
    let rolled: Value = r.json().await.unwrap();
    let event = app.wait_for_audit(&root_key, "api_key.rolled").await;
    assert_eq!(event["subject"], k["id"]);
    app.call(
        Method::DELETE,
        &format!("/v1/keys/{}", id_of(&rolled)),
        &root,
        None,
    )
    .await;
    let event = app.wait_for_audit(&root_key, "api_key.revoked").await;
    assert_eq!(event["subject"], rolled["id"]);

    // 30 failures become a handful of events with counts, not 30 rows.
    let unknown = ApiKey::generate("pk_live").unwrap();
    for _ in 0..25 {
        assert_eq!(code(&app, &v, unknown.expose()).await, "NOT_FOUND");
    }
    for _ in 0..5 {
        assert_eq!(code(&app, &v, &key_of(&rolled)).await, "REVOKED");
    }
    let mut counts = std::collections::HashMap::new();
    let mut rows = 0;
    for _ in 0..50 {
        let r: Value = app
            .get_with_key("/admin/v1/audit?type=api_key.verify_failed", &root_key)
            .await
            .json()
            .await
            .unwrap();
        counts.clear();
        rows = 0;
        for e in r["events"].as_array().unwrap() {
            rows += 1;
            *counts
                .entry(e["data"]["code"].as_str().unwrap().to_owned())
                .or_insert(0) += e["data"]["count"].as_i64().unwrap();
        }
        if counts.get("NOT_FOUND") == Some(&25) && counts.get("REVOKED") == Some(&5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counts.get("NOT_FOUND"), Some(&25));
    assert_eq!(counts.get("REVOKED"), Some(&5));
    assert!(rows <= 6, "{rows} events for 30 failures");
}
