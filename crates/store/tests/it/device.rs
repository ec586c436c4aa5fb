//! RFC 8628 device codes on both backends: found by the user code while pending, decided once, polled
//! with `slow_down` only for polls that come too soon, redeemed by exactly one of concurrent polls, and
//! never by another client.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::secrets::TokenHash;
use portcullis_store::{DeviceCodeRow, DeviceCodeStore, DeviceDecision, DevicePoll};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::oauth::client;
use crate::support::{Ctx, T0, backend_tests, random_hash, user_id};

backend_tests!(
    a_device_code_is_decided_once_and_polled_politely,
    exactly_one_of_concurrent_polls_redeems_an_approved_code,
    a_denied_or_expired_code_says_so,
);

const MINUTE: i64 = 60_000;

async fn device_code(t: &Ctx) -> (TokenHash, TokenHash, String) {
    let s = &t.store;
    let client = client(s).await.to_string();
    let (device, user) = (random_hash(), random_hash());
    s.insert_device_code(&DeviceCodeRow {
        device_code_hash: device.as_bytes().to_vec(),
        user_code_hash: user.as_bytes().to_vec(),
        client_id: client.clone(),
        scope: "openid".into(),
        resources: String::new(),
        created_at: T0.0,
        expires_at: T0.0 + 10 * MINUTE,
        interval_s: 5,
        last_polled_at: None,
        polled_fast: 0,
        decision: None,
        user_id: None,
        session_id: None,
        decided_at: None,
        redeemed_at: None,
    })
    .await
    .unwrap();
    (device, user, client)
}

fn at(ms: i64) -> Millis {
    Millis(T0.0 + ms)
}

async fn a_device_code_is_decided_once_and_polled_politely(t: Ctx) {
    let s = &t.store;
    let (device, user, client) = device_code(&t).await;
    let uid = user_id(s).await.to_string();
    assert!(
        s.pending_device_code(&user, at(1000))
            .await
            .unwrap()
            .is_some()
    );
    // Polls: the first is in time; one a second later is too soon (interval 5 → 10); one that keeps
    // to the new interval is in time again.
    assert_eq!(
        s.poll_device_code(&device, &client, at(1000))
            .await
            .unwrap(),
        DevicePoll::Pending
    );
    assert_eq!(
        s.poll_device_code(&device, &client, at(2000))
            .await
            .unwrap(),
        DevicePoll::SlowDown { interval_s: 10 }
    );
    assert_eq!(
        s.poll_device_code(&device, &client, at(12_000))
            .await
            .unwrap(),
        DevicePoll::Pending
    );
    // Another client's poll of this code finds nothing.
    let other = crate::oauth::client(s).await.to_string();
    assert_eq!(
        s.poll_device_code(&device, &other, at(30_000))
            .await
            .unwrap(),
        DevicePoll::Unknown
    );
    // Decided once.
    let approve = DeviceDecision::Approve {
        user_id: &uid,
        session_id: Some("ses_x"),
    };
    assert!(
        s.decide_device_code(&user, approve, at(20_000))
            .await
            .unwrap()
    );
    assert!(
        !s.decide_device_code(&user, DeviceDecision::Deny, at(21_000))
            .await
            .unwrap()
    );
    assert!(
        s.pending_device_code(&user, at(21_000))
            .await
            .unwrap()
            .is_none()
    );
    let DevicePoll::Approved(row) = s
        .poll_device_code(&device, &client, at(40_000))
        .await
        .unwrap()
    else {
        panic!("an approved code redeems");
    };
    assert_eq!(row.user_id.as_deref(), Some(uid.as_str()));
    assert_eq!(
        s.poll_device_code(&device, &client, at(60_000))
            .await
            .unwrap(),
        DevicePoll::Redeemed
    );
}

async fn exactly_one_of_concurrent_polls_redeems_an_approved_code(t: Ctx) {
    let s = &t.store;
    let (device, user, client) = device_code(&t).await;
    let uid = user_id(s).await.to_string();
    let approve = DeviceDecision::Approve {
        user_id: &uid,
        session_id: None,
    };
    assert!(
        s.decide_device_code(&user, approve, at(1000))
            .await
            .unwrap()
    );
    let barrier = Arc::new(Barrier::new(8));
    let mut polls = JoinSet::new();
    for i in 0..8 {
        let (s, device, client, barrier) = (
            s.clone(),
            device.clone(),
            client.clone(),
            Arc::clone(&barrier),
        );
        polls.spawn(async move {
            barrier.wait().await;
            // Far apart in time, so none is slowed down: only the redemption is contended.
            s.poll_device_code(&device, &client, at(10_000 + i * 10_000))
                .await
                .unwrap()
        });
    }
    let outcomes = polls.join_all().await;
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, DevicePoll::Approved(_)))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            DevicePoll::Approved(_) | DevicePoll::Redeemed | DevicePoll::SlowDown { .. }
        )),
        "{outcomes:?}"
    );
}

async fn a_denied_or_expired_code_says_so(t: Ctx) {
    let s = &t.store;
    let (device, user, client) = device_code(&t).await;
    assert!(
        s.decide_device_code(&user, DeviceDecision::Deny, at(1000))
            .await
            .unwrap()
    );
    assert_eq!(
        s.poll_device_code(&device, &client, at(2000))
            .await
            .unwrap(),
        DevicePoll::Denied
    );
    let (device, user, client) = device_code(&t).await;
    assert_eq!(
        s.poll_device_code(&device, &client, at(10 * MINUTE))
            .await
            .unwrap(),
        DevicePoll::Expired
    );
    // Too late to approve, too; and the janitor takes it once past its expiry.
    assert!(
        !s.decide_device_code(&user, DeviceDecision::Deny, at(10 * MINUTE))
            .await
            .unwrap()
    );
    assert!(
        s.pending_device_code(&user, at(10 * MINUTE))
            .await
            .unwrap()
            .is_none()
    );
}
