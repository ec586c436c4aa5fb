use portcullis_core::clock::Millis;
use portcullis_store::{SigningKeyRow, SigningKeyStore, StoreError};

use crate::support::{Ctx, T0, backend_tests};

backend_tests!(
    new_keys_retire_older_keys_on_schedule,
    live_signing_keys_excludes_expired_keys,
    all_signing_keys_lists_newest_first,
    duplicate_kid_is_a_conflict_and_changes_nothing,
    revoking_a_key_ends_it_at_once_and_is_seen_by_the_poll,
);

const OVERLAP: i64 = 500;

pub fn key(kid: &str, activate_at: Millis) -> SigningKeyRow {
    SigningKeyRow {
        kid: kid.to_owned(),
        alg: "EdDSA".to_owned(),
        private_key: vec![0xA5; 60],
        public_jwk: format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"AAAA"}}"#),
        created_at: activate_at.plus_millis(-100).0,
        publish_at: activate_at.plus_millis(-50).0,
        activate_at: activate_at.0,
        retire_at: None,
        expire_at: None,
    }
}

/// k1 at T0, k2 at T0+1000, k3 at T0+2000, each added with a 500 ms overlap.
async fn three_keys(t: &Ctx) {
    for (kid, at) in [
        ("k1", T0),
        ("k2", T0.plus_millis(1_000)),
        ("k3", T0.plus_millis(2_000)),
    ] {
        t.store
            .add_signing_key(&key(kid, at), OVERLAP)
            .await
            .unwrap();
    }
}

fn schedule(rows: &[SigningKeyRow]) -> Vec<(&str, Option<i64>, Option<i64>)> {
    rows.iter()
        .map(|k| (k.kid.as_str(), k.retire_at, k.expire_at))
        .collect()
}

fn kids(rows: &[SigningKeyRow]) -> Vec<&str> {
    rows.iter().map(|k| k.kid.as_str()).collect()
}

async fn new_keys_retire_older_keys_on_schedule(t: Ctx) {
    let s = &t.store;
    s.add_signing_key(&key("k1", T0), OVERLAP).await.unwrap();
    let one = s.all_signing_keys().await.unwrap();
    assert_eq!(schedule(&one), vec![("k1", None, None)]);

    s.add_signing_key(&key("k2", T0.plus_millis(1_000)), OVERLAP)
        .await
        .unwrap();
    let two = s.all_signing_keys().await.unwrap();
    assert_eq!(
        schedule(&two),
        vec![
            ("k2", None, None),
            ("k1", Some(T0.0 + 1_000), Some(T0.0 + 1_500))
        ]
    );

    s.add_signing_key(&key("k3", T0.plus_millis(2_000)), OVERLAP)
        .await
        .unwrap();
    let three = s.all_signing_keys().await.unwrap();
    // k1 was already retired: its schedule is not moved by k3.
    assert_eq!(
        schedule(&three),
        vec![
            ("k3", None, None),
            ("k2", Some(T0.0 + 2_000), Some(T0.0 + 2_500)),
            ("k1", Some(T0.0 + 1_000), Some(T0.0 + 1_500)),
        ]
    );

    // Everything else round-trips.
    let k3 = three.iter().find(|k| k.kid == "k3").unwrap();
    let want = key("k3", T0.plus_millis(2_000));
    assert_eq!(k3.alg, want.alg);
    assert_eq!(k3.private_key, want.private_key);
    assert_eq!(k3.public_jwk, want.public_jwk);
    assert_eq!(
        (k3.created_at, k3.publish_at, k3.activate_at),
        (want.created_at, want.publish_at, want.activate_at)
    );
}

async fn live_signing_keys_excludes_expired_keys(t: Ctx) {
    let s = &t.store;
    three_keys(&t).await;
    // Oldest first; a key is live until (not at) its expiry.
    assert_eq!(
        kids(&s.live_signing_keys(T0).await.unwrap()),
        vec!["k1", "k2", "k3"]
    );
    assert_eq!(
        kids(&s.live_signing_keys(T0.plus_millis(1_499)).await.unwrap()),
        vec!["k1", "k2", "k3"]
    );
    assert_eq!(
        kids(&s.live_signing_keys(T0.plus_millis(1_500)).await.unwrap()),
        vec!["k2", "k3"]
    );
    assert_eq!(
        kids(&s.live_signing_keys(T0.plus_millis(2_499)).await.unwrap()),
        vec!["k2", "k3"]
    );
    assert_eq!(
        kids(&s.live_signing_keys(T0.plus_millis(2_500)).await.unwrap()),
        vec!["k3"]
    );
    assert_eq!(
        kids(&s.live_signing_keys(Millis(i64::MAX)).await.unwrap()),
        vec!["k3"]
    );
}

async fn all_signing_keys_lists_newest_first(t: Ctx) {
    let s = &t.store;
    assert!(s.all_signing_keys().await.unwrap().is_empty());
    three_keys(&t).await;
    assert_eq!(
        kids(&s.all_signing_keys().await.unwrap()),
        vec!["k3", "k2", "k1"]
    );
}

async fn duplicate_kid_is_a_conflict_and_changes_nothing(t: Ctx) {
    let s = &t.store;
    s.add_signing_key(&key("k1", T0), OVERLAP).await.unwrap();
    match s
        .add_signing_key(&key("k1", T0.plus_millis(1_000)), OVERLAP)
        .await
    {
        Err(StoreError::Conflict(rule)) => assert_eq!(rule, "signing_keys_pkey"),
        other => panic!("expected Conflict(signing_keys_pkey), got {other:?}"),
    }
    // The retirement scheduled in the same transaction was rolled back with the failed insert.
    assert_eq!(
        schedule(&s.all_signing_keys().await.unwrap()),
        vec![("k1", None, None)]
    );
    // And the store still works afterwards (the writer connection was not left mid-transaction).
    s.add_signing_key(&key("k2", T0.plus_millis(1_000)), OVERLAP)
        .await
        .unwrap();
    assert_eq!(kids(&s.all_signing_keys().await.unwrap()), vec!["k2", "k1"]);
}

async fn revoking_a_key_ends_it_at_once_and_is_seen_by_the_poll(t: Ctx) {
    let s = &t.store;
    three_keys(&t).await;
    let now = T0.plus_millis(2_100);
    assert!(s.revoke_signing_key("k3", now).await.unwrap());
    assert!(!s.revoke_signing_key("k3", now).await.unwrap(), "once");
    assert!(!s.revoke_signing_key("nope", now).await.unwrap());
    let rows = s.all_signing_keys().await.unwrap();
    let k3 = rows.iter().find(|k| k.kid == "k3").unwrap();
    assert_eq!((k3.retire_at, k3.expire_at), (Some(now.0), Some(now.0)));
    // k2 retired at k3's activation (T0+2000) and expires 500 ms later; revoking k3 leaves it be.
    let k2 = rows.iter().find(|k| k.kid == "k2").unwrap();
    assert_eq!(
        (k2.retire_at, k2.expire_at),
        (Some(T0.0 + 2_000), Some(T0.0 + 2_500))
    );
    assert_eq!(kids(&s.live_signing_keys(now).await.unwrap()), vec!["k2"]);
    assert_eq!(
        s.signing_keys_expired_between(now.plus_millis(-1), now)
            .await
            .unwrap(),
        vec!["k3".to_owned()]
    );
    assert!(
        s.signing_keys_expired_between(now, now.plus_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
}
