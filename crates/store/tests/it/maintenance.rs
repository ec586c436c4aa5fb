use portcullis_store::{
    ApiKeyStore, AuditFilter, AuditStore, Maintenance, Purged, RefreshTokenStore, SigningKeyStore,
    UserStore,
};

use crate::api_keys::api_key;
use crate::audit::events;
use crate::signing_keys::key;
use crate::support::{
    Ctx, DAY, T0, backend_tests, expect_invalid, expect_reused, expect_rotated, new_family,
    next_token, next_token_ttl, random_hash, user_id,
};

backend_tests!(
    ping_answers,
    purge_expired_removes_dead_rows_in_batches_and_keeps_live_ones,
    dead_api_keys_are_kept_until_their_own_cutoff,
    a_job_runs_on_one_node_at_a_time,
    a_replay_nonce_is_recorded_once_until_it_expires,
);

/// The database's replay cache (used while Redis is away): once per id while live, taken over after
/// expiry, and purged in batches after that; many nodes at once, one first use.
async fn a_replay_nonce_is_recorded_once_until_it_expires(t: Ctx) {
    use portcullis_store::NonceStore;
    let s = &t.store;
    let id = crate::support::random_bytes::<32>();
    assert!(s.record_nonce(&id, 1000, 1300).await.unwrap());
    assert!(!s.record_nonce(&id, 1299, 1600).await.unwrap(), "a replay");
    assert!(
        !s.record_nonce(&id, 1300, 1600).await.unwrap(),
        "still live at its expiry"
    );
    assert!(
        s.record_nonce(&id, 1301, 1600).await.unwrap(),
        "expired: free again"
    );
    assert!(!s.record_nonce(&id, 1400, 1700).await.unwrap());
    let other = crate::support::random_bytes::<32>();
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.record_nonce(&other, 1000, 1300).await.unwrap() })
        })
        .collect();
    let mut first = 0;
    for r in racers {
        first += usize::from(r.await.unwrap());
    }
    assert_eq!(first, 1, "one first use among 16 at once");
    for i in 0..5u8 {
        s.record_nonce(&[i; 32], 0, 10).await.unwrap();
    }
    assert_eq!(s.purge_nonces(11, 3).await.unwrap(), 3);
    assert_eq!(s.purge_nonces(11, 3).await.unwrap(), 2);
    assert_eq!(
        s.purge_nonces(1601, 10).await.unwrap(),
        2,
        "the two live ones, once expired"
    );
}

/// Two stores on one database are two nodes: only one holds a job's lock; released, the other gets it.
/// (SQLite is one node: its lock is always granted.)
async fn a_job_runs_on_one_node_at_a_time(t: Ctx) {
    use portcullis_store::Job;
    let s = &t.store;
    let first = s
        .try_job_lock(Job::Janitor)
        .await
        .unwrap()
        .expect("the first taker gets it");
    let crate::support::Raw::Postgres { url, schema } = &t.raw else {
        assert!(s.try_job_lock(Job::Janitor).await.unwrap().is_some());
        first.release().await;
        return;
    };
    let other = portcullis_store::Store::connect_postgres(url, &Default::default(), Some(schema))
        .await
        .unwrap();
    assert!(
        other.try_job_lock(Job::Janitor).await.unwrap().is_none(),
        "held by the first node"
    );
    let rotation = other.try_job_lock(Job::KeyRotation).await.unwrap();
    assert!(rotation.is_some(), "another job is another lock");
    first.release().await;
    let second = other
        .try_job_lock(Job::Janitor)
        .await
        .unwrap()
        .expect("free once released");
    assert!(s.try_job_lock(Job::Janitor).await.unwrap().is_none());
    second.release().await;
    if let Some(r) = rotation {
        r.release().await;
    }
    other.close().await;
}

async fn dead_api_keys_are_kept_until_their_own_cutoff(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;
    for i in 0..4 {
        let mut k = api_key(Some(&uid), &random_hash(), T0);
        match i {
            0 => k.expires_at = Some(T0 + DAY),
            1 => k.revoked_at = Some(T0 + DAY),
            2 => {
                k.rolled_to = Some(portcullis_core::ids::KeyId::generate());
                k.grace_until = Some(T0 + DAY);
            }
            _ => {}
        }
        s.insert_api_key(&k).await.unwrap();
    }
    let long_after = T0.plus_millis(10 * DAY);
    // Everything else is long dead, but the keys' own cutoff is before they died: all kept.
    let kept = s
        .purge_expired(long_after, long_after, T0.plus_millis(DAY), 10)
        .await
        .unwrap();
    assert_eq!(kept.api_keys, 0);
    assert_eq!(s.count_api_keys().await.unwrap(), 4);
    // Past it: the expired, the revoked and the rolled key whose grace ended go; the live one stays.
    let gone = s
        .purge_expired(long_after, long_after, T0.plus_millis(DAY + 1), 10)
        .await
        .unwrap();
    assert_eq!(gone.api_keys, 3);
    assert_eq!(s.count_api_keys().await.unwrap(), 1);
}

async fn ping_answers(t: Ctx) {
    t.store.ping().await.unwrap();
    t.store.ping().await.unwrap();
    // And says so when the store is gone.
    t.store.close().await;
    assert!(
        t.store.ping().await.is_err(),
        "a closed store answered the ping"
    );
}

fn purged(refresh_families: u64, audit_events: u64, signing_keys: u64, api_keys: u64) -> Purged {
    Purged {
        refresh_families,
        audit_events,
        signing_keys,
        api_keys,
        signature_keys: 0,
    }
}

async fn purge_expired_removes_dead_rows_in_batches_and_keeps_live_ones(t: Ctx) {
    let s = &t.store;
    let dead_before = T0.plus_millis(10 * DAY);
    let audit_before = T0.plus_millis(5 * DAY);
    let later = dead_before.plus_millis(1);
    let uid = user_id(s).await;

    // --- refresh families: 3 expired + 2 revoked before `dead_before` (dead); 2 live + 1 revoked at
    // `dead_before` (kept).
    let start = |lifetime: i64| {
        let s = s.clone();
        let uid = uid.clone();
        async move {
            let f = new_family(uid.as_str(), T0, lifetime);
            let first = next_token_ttl(30 * DAY);
            s.start_family(&f, &first).await.unwrap();
            (f, first)
        }
    };
    let (_, expired_a) = start(DAY).await;
    let spent_child = next_token();
    expect_rotated(s, &expired_a.hash, T0.plus_millis(1), 0, &spent_child).await;
    let _ = start(DAY).await;
    let _ = start(2 * DAY).await;
    let (_, revoked_a) = start(30 * DAY).await;
    let revoked_child = next_token();
    expect_rotated(s, &revoked_a.hash, T0.plus_millis(1), 0, &revoked_child).await;
    s.revoke_family_of(&revoked_a.hash, T0.plus_millis(2), "logout")
        .await
        .unwrap();
    let (_, revoked_b) = start(30 * DAY).await;
    s.revoke_family_of(&revoked_b.hash, T0.plus_millis(2), "logout")
        .await
        .unwrap();
    let (_, live_a) = start(30 * DAY).await;
    let (_, live_b) = start(30 * DAY).await;
    let (late_revoked_family, late_revoked) = start(30 * DAY).await;
    s.revoke_family_of(&late_revoked.hash, dead_before, "logout")
        .await
        .unwrap();

    // Before the purge, the spent token of a revoked family is still known (reuse)...
    expect_reused(s, &revoked_a.hash, T0.plus_millis(3), 0).await;

    // --- audit: 3 before `audit_before`, 2 at or after it.
    let old_events = events(3, T0);
    let new_events = events(2, audit_before);
    s.insert_audit_events(&old_events).await.unwrap();
    s.insert_audit_events(&new_events).await.unwrap();

    // --- signing keys: 3 expired before `dead_before`; kept: one expiring exactly at it, one retired but
    // still published, the current one.
    for (i, kid) in ["old1", "old2", "old3"].into_iter().enumerate() {
        let mut k = key(kid, T0.plus_millis(i as i64));
        k.retire_at = Some(T0.0 + DAY);
        k.expire_at = Some(T0.0 + 2 * DAY + i as i64);
        s.add_signing_key(&k, 0).await.unwrap();
    }
    let mut edge = key("edge", T0.plus_millis(10));
    edge.retire_at = Some(T0.0 + DAY);
    edge.expire_at = Some(dead_before.0);
    s.add_signing_key(&edge, 0).await.unwrap();
    let mut retired = key("retired", T0.plus_millis(20));
    retired.retire_at = Some(dead_before.0 - 1);
    retired.expire_at = Some(dead_before.0 + DAY);
    s.add_signing_key(&retired, 0).await.unwrap();
    s.add_signing_key(&key("current", T0.plus_millis(30)), 0)
        .await
        .unwrap();

    // --- API keys: 2 expired + 2 revoked before `dead_before`; kept: no expiry, future expiry, revoked
    // at `dead_before`.
    let mut kept_hashes = Vec::new();
    for i in 0..7 {
        let hash = random_hash();
        let mut k = api_key(Some(&uid), &hash, T0);
        match i {
            0 | 1 => k.expires_at = Some(T0 + DAY),
            2 | 3 => k.revoked_at = Some(T0 + DAY),
            4 => kept_hashes.push(hash),
            5 => {
                k.expires_at = Some(dead_before + DAY);
                kept_hashes.push(hash);
            }
            _ => {
                k.revoked_at = Some(dead_before);
                kept_hashes.push(hash);
            }
        }
        s.insert_api_key(&k).await.unwrap();
    }

    assert_eq!(
        t.raw.scalar("SELECT COUNT(*) FROM refresh_families").await,
        8
    );
    assert_eq!(
        t.raw.scalar("SELECT COUNT(*) FROM refresh_tokens").await,
        10
    );

    // --- at most `batch` rows of each kind per call, until nothing is left.
    assert_eq!(
        s.purge_expired(dead_before, audit_before, dead_before, 2)
            .await
            .unwrap(),
        purged(2, 2, 2, 2)
    );
    assert_eq!(
        s.purge_expired(dead_before, audit_before, dead_before, 2)
            .await
            .unwrap(),
        purged(2, 1, 1, 2)
    );
    assert_eq!(
        s.purge_expired(dead_before, audit_before, dead_before, 2)
            .await
            .unwrap(),
        purged(1, 0, 0, 0)
    );
    let nothing = s
        .purge_expired(dead_before, audit_before, dead_before, 2)
        .await
        .unwrap();
    assert_eq!(nothing, Purged::default());
    assert_eq!(nothing.total(), 0);

    // Refresh families: the dead ones went, with their tokens (ON DELETE CASCADE).
    assert_eq!(
        t.raw.scalar("SELECT COUNT(*) FROM refresh_families").await,
        3
    );
    assert_eq!(t.raw.scalar("SELECT COUNT(*) FROM refresh_tokens").await, 3);
    assert_eq!(
        t.raw.scalar("SELECT COUNT(*) FROM refresh_tokens WHERE family_id NOT IN (SELECT id FROM refresh_families)").await,
        0
    );
    // ...so the spent token that was "reuse" before is now simply unknown.
    expect_invalid(s, &revoked_a.hash, later, 0).await;
    expect_invalid(s, &revoked_child.hash, later, 0).await;
    expect_invalid(s, &expired_a.hash, later, 0).await;
    expect_invalid(s, &spent_child.hash, later, 0).await;
    assert_eq!(
        s.revoke_family_of(&revoked_b.hash, later, "logout")
            .await
            .unwrap(),
        None
    );
    // The live families still work; the late-revoked one is still there (revoked, so Invalid).
    expect_rotated(s, &live_a.hash, later, 0, &next_token()).await;
    expect_rotated(s, &live_b.hash, later, 0, &next_token()).await;
    assert_eq!(
        s.revoke_family_of(&late_revoked.hash, later, "logout")
            .await
            .unwrap()
            .map(|(f, _)| f),
        Some(late_revoked_family.id.as_str().to_owned())
    );

    // Audit: the recent events remain.
    let left = s
        .list_audit_events(&AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec![new_events[1].id.as_str(), new_events[0].id.as_str()]
    );

    // Signing keys: expired ones gone, the rest untouched.
    let keys = s.all_signing_keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        vec!["current", "retired", "edge"]
    );
    assert_eq!(
        s.live_signing_keys(dead_before)
            .await
            .unwrap()
            .iter()
            .map(|k| k.kid.as_str())
            .collect::<Vec<_>>(),
        vec!["retired", "current"]
    );

    // API keys: only the live ones remain.
    assert_eq!(s.count_api_keys().await.unwrap(), 3);
    for hash in &kept_hashes {
        assert!(s.api_key_by_hash(hash).await.unwrap().is_some());
    }

    // Users are never purged.
    assert_eq!(s.count_users().await.unwrap(), 1);
    assert!(s.user_by_id(uid.as_str()).await.unwrap().is_some());
}
