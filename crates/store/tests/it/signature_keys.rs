//! RFC 9421 signing keys: stored and read back, listed by owner, revoked once by their owner only, the
//! revocations other nodes poll, and the janitor's purge of long-revoked keys.

use portcullis_core::clock::Millis;
use portcullis_core::ids::{SignatureKeyId, UserId};
use portcullis_store::{KeyOwner, Maintenance, SignatureKeyRow, SignatureKeyStore};

use crate::support::{Ctx, DAY, T0, backend_tests, user_id};

backend_tests!(
    signature_keys_round_trip_and_list_by_owner,
    only_the_owner_revokes_and_only_once,
    revocations_are_polled_and_long_revoked_keys_purged,
);

fn key(owner: Option<&UserId>, alg: &str) -> SignatureKeyRow {
    SignatureKeyRow {
        id: SignatureKeyId::generate().to_string(),
        owner_id: owner.map(ToString::to_string),
        name: "ci".into(),
        alg: alg.into(),
        key_material: vec![7; 60],
        scopes: "keys:read".into(),
        created_at: T0.0,
        revoked_at: None,
    }
}

fn id(row: &SignatureKeyRow) -> SignatureKeyId {
    SignatureKeyId::parse(&row.id).unwrap()
}

async fn signature_keys_round_trip_and_list_by_owner(t: Ctx) {
    let s = &t.store;
    let (alice, bob) = (user_id(s).await, user_id(s).await);
    let a1 = key(Some(&alice), "hmac-sha256");
    let a2 = key(Some(&alice), "ed25519");
    let b1 = key(Some(&bob), "hmac-sha256");
    let none = key(None, "hmac-sha256");
    for k in [&a1, &a2, &b1, &none] {
        s.insert_signature_key(k).await.unwrap();
    }
    let got = s.signature_key(&id(&a2)).await.unwrap().unwrap();
    assert_eq!(
        (
            got.alg.as_str(),
            got.key_material.as_slice(),
            got.scopes.as_str()
        ),
        ("ed25519", &[7u8; 60][..], "keys:read")
    );
    assert!(
        s.signature_key(&SignatureKeyId::generate())
            .await
            .unwrap()
            .is_none()
    );
    // The same id twice is a conflict, not an overwrite.
    assert!(s.insert_signature_key(&a1).await.is_err());

    let ids = |rows: Vec<SignatureKeyRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s
            .list_signature_keys(KeyOwner::User(&alice), None, 10)
            .await
            .unwrap()),
        [a1.id.clone(), a2.id.clone()]
    );
    assert_eq!(
        ids(s
            .list_signature_keys(KeyOwner::User(&alice), Some(&id(&a1)), 10)
            .await
            .unwrap()),
        vec![a2.id.clone()]
    );
    assert_eq!(
        ids(s
            .list_signature_keys(KeyOwner::Nobody, None, 10)
            .await
            .unwrap()),
        vec![none.id.clone()]
    );
    assert_eq!(
        s.list_signature_keys(KeyOwner::All, None, 10)
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        s.list_signature_keys(KeyOwner::All, None, 2)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn only_the_owner_revokes_and_only_once(t: Ctx) {
    let s = &t.store;
    let (alice, bob) = (user_id(s).await, user_id(s).await);
    let k = key(Some(&alice), "hmac-sha256");
    s.insert_signature_key(&k).await.unwrap();
    let at = Millis(T0.0 + DAY);
    assert!(
        s.revoke_signature_key(&id(&k), KeyOwner::User(&bob), at)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.revoke_signature_key(&id(&k), KeyOwner::Nobody, at)
            .await
            .unwrap()
            .is_none()
    );
    let revoked = s
        .revoke_signature_key(&id(&k), KeyOwner::User(&alice), at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at.0));
    assert!(
        s.revoke_signature_key(&id(&k), KeyOwner::All, at)
            .await
            .unwrap()
            .is_none()
    );
    let nobody = key(None, "ed25519");
    s.insert_signature_key(&nobody).await.unwrap();
    assert!(
        s.revoke_signature_key(&id(&nobody), KeyOwner::All, at)
            .await
            .unwrap()
            .is_some()
    );
}

async fn revocations_are_polled_and_long_revoked_keys_purged(t: Ctx) {
    let s = &t.store;
    let alice = user_id(s).await;
    let (old, recent, live) = (
        key(Some(&alice), "hmac-sha256"),
        key(Some(&alice), "hmac-sha256"),
        key(Some(&alice), "hmac-sha256"),
    );
    for k in [&old, &recent, &live] {
        s.insert_signature_key(k).await.unwrap();
    }
    s.revoke_signature_key(&id(&old), KeyOwner::All, Millis(T0.0 + DAY))
        .await
        .unwrap();
    s.revoke_signature_key(&id(&recent), KeyOwner::All, Millis(T0.0 + 40 * DAY))
        .await
        .unwrap();
    let since = s
        .signature_keys_revoked_since(Millis(T0.0 + 2 * DAY), 10)
        .await
        .unwrap();
    assert_eq!(since, [(recent.id.clone(), Millis(T0.0 + 40 * DAY))]);
    assert_eq!(
        s.signature_keys_revoked_since(T0, 10).await.unwrap().len(),
        2
    );
    // Revoked 30 days before the cutoff: gone; revoked after it, and live: kept.
    let cutoff = Millis(T0.0 + 31 * DAY);
    let purged = s.purge_expired(T0, T0, cutoff, 100).await.unwrap();
    assert_eq!(purged.signature_keys, 1);
    assert!(s.signature_key(&id(&old)).await.unwrap().is_none());
    assert!(s.signature_key(&id(&recent)).await.unwrap().is_some());
    assert!(s.signature_key(&id(&live)).await.unwrap().is_some());
}
