use portcullis_core::clock::Millis;
use portcullis_core::ids::KeyId;
use portcullis_core::secrets::TokenHash;
use portcullis_store::{ApiKeyRow, ApiKeyStore, StoreError};

use crate::support::{Ctx, T0, backend_tests, random_hash, user};

backend_tests!(
    insert_and_lookup_by_hash,
    duplicate_hash_is_a_conflict,
    count_api_keys_counts,
);

pub fn api_key(owner: Option<&str>, hash: &TokenHash, at: Millis) -> ApiKeyRow {
    ApiKeyRow {
        id: KeyId::generate().as_str().to_owned(),
        owner_id: owner.map(str::to_owned),
        prefix: "pk_".to_owned(),
        start: "pk_abcd".to_owned(),
        key_hash: hash.as_bytes().to_vec(),
        name: "ci".to_owned(),
        scopes: "users:read users:write".to_owned(),
        meta: None,
        created_at: at.0,
        updated_at: at.0,
        expires_at: None,
        revoked_at: None,
        remaining: None,
        ratelimit_limit: None,
        ratelimit_duration_ms: None,
        last_used_at: None,
        rolled_to: None,
        grace_until: None,
    }
}

async fn insert_and_lookup_by_hash(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;

    let root_hash = random_hash();
    let root = api_key(None, &root_hash, T0);
    s.insert_api_key(&root).await.unwrap();

    let user_hash = random_hash();
    let mut full = api_key(Some(&uid), &user_hash, T0.plus_millis(1));
    full.meta = Some(r#"{"team":"infra"}"#.to_owned());
    full.expires_at = Some(T0.0 + 86_400_000);
    full.remaining = Some(1_000);
    full.ratelimit_limit = Some(10);
    full.ratelimit_duration_ms = Some(60_000);
    full.last_used_at = Some(T0.0 + 2);
    full.rolled_to = Some("key_next".to_owned());
    full.grace_until = Some(T0.0 + 3);
    full.revoked_at = Some(T0.0 + 4);
    s.insert_api_key(&full).await.unwrap();

    let got = s
        .api_key_by_hash(&root_hash)
        .await
        .unwrap()
        .expect("root key");
    assert_eq!(got.id, root.id);
    assert_eq!(got.owner_id, None);
    assert_eq!(got.key_hash, root_hash.as_bytes());
    assert_eq!(
        (got.prefix.as_str(), got.start.as_str(), got.name.as_str()),
        ("pk_", "pk_abcd", "ci")
    );
    assert_eq!(got.scopes, "users:read users:write");
    assert_eq!((got.created_at, got.updated_at), (T0.0, T0.0));
    assert_eq!(
        (got.expires_at, got.revoked_at, got.remaining, got.meta),
        (None, None, None, None)
    );

    let got = s
        .api_key_by_hash(&user_hash)
        .await
        .unwrap()
        .expect("user key");
    assert_eq!(got.id, full.id);
    assert_eq!(got.owner_id.as_deref(), Some(uid.as_str()));
    assert_eq!(got.meta, full.meta);
    assert_eq!(got.expires_at, full.expires_at);
    assert_eq!(got.revoked_at, full.revoked_at);
    assert_eq!(got.remaining, full.remaining);
    assert_eq!(
        (got.ratelimit_limit, got.ratelimit_duration_ms),
        (Some(10), Some(60_000))
    );
    assert_eq!(got.last_used_at, full.last_used_at);
    assert_eq!(got.rolled_to, full.rolled_to);
    assert_eq!(got.grace_until, full.grace_until);

    assert!(s.api_key_by_hash(&random_hash()).await.unwrap().is_none());
}

async fn duplicate_hash_is_a_conflict(t: Ctx) {
    let s = &t.store;
    let hash = random_hash();
    s.insert_api_key(&api_key(None, &hash, T0)).await.unwrap();
    let dup = api_key(None, &hash, T0.plus_millis(1));
    match s.insert_api_key(&dup).await {
        Err(StoreError::Conflict(rule)) => assert_eq!(rule, "api_keys_hash_unique"),
        other => panic!("expected Conflict(api_keys_hash_unique), got {other:?}"),
    }
    assert_eq!(s.count_api_keys().await.unwrap(), 1);
    assert_ne!(s.api_key_by_hash(&hash).await.unwrap().unwrap().id, dup.id);
}

async fn count_api_keys_counts(t: Ctx) {
    let s = &t.store;
    assert_eq!(s.count_api_keys().await.unwrap(), 0);
    for n in 1..=3 {
        s.insert_api_key(&api_key(None, &random_hash(), T0))
            .await
            .unwrap();
        assert_eq!(s.count_api_keys().await.unwrap(), n);
    }
}
