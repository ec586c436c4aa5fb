//! The OAuth store on both backends: a code is redeemed once (of any number of concurrent
//! redemptions exactly one gets the row, through SQLite's batch as through PostgreSQL's
//! statements; redemptions of different codes batched together each get their own row and write
//! their own outcome, alongside codes being issued), a redemption that fails a condition writes nothing, a replay returns what the first
//! produced, consents are upserted and withdrawn with their client's families, denied jtis are
//! idempotent, and deleting a client takes what hangs on it.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::ids::{ClientId, UserId};
use portcullis_core::secrets::TokenHash;
use portcullis_store::{
    ClientRow, CodeRow, OAuthStore, Produced, Redemption, RefreshTokenStore, Store,
};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::{Ctx, T0, backend_tests, family, random_hash, user_id};

backend_tests!(
    exactly_one_of_concurrent_redemptions_gets_the_code,
    concurrent_redemptions_of_different_codes_each_get_their_own,
    a_redemption_that_fails_a_condition_writes_nothing,
    a_replay_returns_what_the_first_redemption_produced,
    consents_are_upserted_and_withdrawn_with_the_clients_families,
    denied_jtis_are_idempotent_and_polled_while_unexpired,
    deleting_a_client_takes_its_codes_and_consents,
);

const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

pub async fn client(s: &Store) -> ClientId {
    let id = ClientId::generate();
    s.insert_client(&ClientRow {
        id: id.clone(),
        name: "test".into(),
        settings: "{}".into(),
        secret_hash: Some(random_hash()),
        secret_changed_at: Some(T0),
        created_at: T0,
        updated_at: T0,
    })
    .await
    .unwrap();
    id
}

async fn code(s: &Store, client: &ClientId, user: &UserId) -> TokenHash {
    let hash = random_hash();
    s.insert_code(&CodeRow {
        code_hash: hash.clone(),
        client_id: client.clone(),
        user_id: user.clone(),
        session_id: Some("ses_test".into()),
        redirect_uri: "https://app.example/cb".into(),
        code_challenge: CHALLENGE.into(),
        scope: "openid".into(),
        resources: "[]".into(),
        nonce: None,
        auth_time: T0.as_secs(),
        created_at: T0,
        expires_at: T0.plus_secs(60),
        redeemed_at: None,
        dpop_jkt: None,
    })
    .await
    .unwrap();
    hash
}

fn produced(n: usize) -> Produced {
    Produced {
        family_id: Some(format!("fam_{n}")),
        access_jti: format!("jti-{n}"),
        access_exp: T0.as_secs() + 900,
    }
}

async fn exactly_one_of_concurrent_redemptions_gets_the_code(t: Ctx) {
    let s = t.store;
    let (client, user) = (client(&s).await, user_id(&s).await);
    let hash = code(&s, &client, &user).await;
    let barrier = Arc::new(Barrier::new(12));
    let mut tasks = JoinSet::new();
    for n in 0..12 {
        let (s, hash, client, barrier) = (s.clone(), hash.clone(), client.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let expect = Redemption {
                client_id: &client,
                redirect_uri: "https://app.example/cb",
                code_challenge: CHALLENGE,
            };
            s.redeem_code(&hash, T0.plus_secs(1), &expect, &produced(n))
                .await
                .unwrap()
                .is_some()
        });
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        won += usize::from(r.unwrap());
    }
    assert_eq!(won, 1, "exactly one redemption gets the code");
    let row = s.code(&hash).await.unwrap().unwrap();
    assert!(row.redeemed_at.is_some());
    assert_eq!(
        s.session_clients("ses_test").await.unwrap(),
        [client.to_string()]
    );
}

async fn concurrent_redemptions_of_different_codes_each_get_their_own(t: Ctx) {
    let s = t.store;
    let (client, user) = (client(&s).await, user_id(&s).await);
    let mut hashes = Vec::new();
    for _ in 0..24 {
        hashes.push(code(&s, &client, &user).await);
    }
    // Every code redeemed twice and twelve codes issued, all at once: on SQLite they share
    // batches, so each outcome must find its way back to the request that asked.
    let barrier = Arc::new(Barrier::new(2 * hashes.len() + 12));
    let mut tasks = JoinSet::new();
    for (n, hash) in hashes.iter().enumerate() {
        for attempt in 0..2 {
            let (s, hash, client, barrier) =
                (s.clone(), hash.clone(), client.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                let expect = Redemption {
                    client_id: &client,
                    redirect_uri: "https://app.example/cb",
                    code_challenge: CHALLENGE,
                };
                let jti = 100 * n + attempt;
                let row = s
                    .redeem_code(&hash, T0.plus_secs(1), &expect, &produced(jti))
                    .await
                    .unwrap();
                row.map(|r| {
                    assert_eq!(r.code_hash, hash, "a redemption gets its own code back");
                    (n, jti)
                })
            });
        }
    }
    for _ in 0..12 {
        let (s, client, user, barrier) = (s.clone(), client.clone(), user.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            code(&s, &client, &user).await;
            None
        });
    }
    let mut winners = std::collections::HashMap::new();
    while let Some(r) = tasks.join_next().await {
        if let Some((n, jti)) = r.unwrap() {
            assert!(winners.insert(n, jti).is_none(), "code {n} was won twice");
        }
    }
    assert_eq!(
        winners.len(),
        hashes.len(),
        "every code is won exactly once"
    );
    for (n, hash) in hashes.iter().enumerate() {
        let r = s.replay_code(hash, T0.plus_secs(2)).await.unwrap().unwrap();
        assert_eq!(
            r.access_jti.as_deref(),
            Some(format!("jti-{}", winners[&n]).as_str()),
            "the stored outcome is the winner's"
        );
    }
    assert_eq!(t.raw.scalar("SELECT COUNT(*) FROM oauth_codes").await, 36);
    assert_eq!(
        s.session_clients("ses_test").await.unwrap(),
        [client.to_string()]
    );
}

async fn a_redemption_that_fails_a_condition_writes_nothing(t: Ctx) {
    let s = t.store;
    let (client, user) = (client(&s).await, user_id(&s).await);
    let other = ClientId::generate();
    let hash = code(&s, &client, &user).await;
    let now = T0.plus_secs(1);
    let wrong: [Redemption<'_>; 3] = [
        Redemption {
            client_id: &other,
            redirect_uri: "https://app.example/cb",
            code_challenge: CHALLENGE,
        },
        Redemption {
            client_id: &client,
            redirect_uri: "https://app.example/other",
            code_challenge: CHALLENGE,
        },
        Redemption {
            client_id: &client,
            redirect_uri: "https://app.example/cb",
            code_challenge: "x",
        },
    ];
    for expect in &wrong {
        assert!(
            s.redeem_code(&hash, now, expect, &produced(0))
                .await
                .unwrap()
                .is_none()
        );
    }
    // Expired: nothing either.
    let right = Redemption {
        client_id: &client,
        redirect_uri: "https://app.example/cb",
        code_challenge: CHALLENGE,
    };
    assert!(
        s.redeem_code(&hash, T0.plus_secs(61), &right, &produced(0))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.code(&hash).await.unwrap().unwrap().redeemed_at.is_none(),
        "nothing was written"
    );
    assert!(
        s.replay_code(&hash, now).await.unwrap().is_none(),
        "never redeemed is no replay"
    );
    assert!(s.session_clients("ses_test").await.unwrap().is_empty());
    // The right one, in time, still works.
    assert!(
        s.redeem_code(&hash, now, &right, &produced(0))
            .await
            .unwrap()
            .is_some()
    );
}

async fn a_replay_returns_what_the_first_redemption_produced(t: Ctx) {
    let s = t.store;
    let (client, user) = (client(&s).await, user_id(&s).await);
    let hash = code(&s, &client, &user).await;
    let right = Redemption {
        client_id: &client,
        redirect_uri: "https://app.example/cb",
        code_challenge: CHALLENGE,
    };
    s.redeem_code(&hash, T0.plus_secs(1), &right, &produced(7))
        .await
        .unwrap()
        .unwrap();
    assert!(!s.code_replayed(&hash).await.unwrap());
    let r = s
        .replay_code(&hash, T0.plus_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.family_id.as_deref(), Some("fam_7"));
    assert_eq!(r.access_jti.as_deref(), Some("jti-7"));
    assert_eq!(r.user_id, user.as_str());
    assert!(s.code_replayed(&hash).await.unwrap());
}

async fn consents_are_upserted_and_withdrawn_with_the_clients_families(t: Ctx) {
    let s = t.store;
    let (client, user) = (client(&s).await, user_id(&s).await);
    assert_eq!(s.consent(&user, &client).await.unwrap(), None);
    s.grant_consent(&user, &client, "openid", T0).await.unwrap();
    s.grant_consent(&user, &client, "openid email", T0.plus_secs(5))
        .await
        .unwrap();
    assert_eq!(
        s.consent(&user, &client).await.unwrap().as_deref(),
        Some("openid email")
    );
    let listed = s.list_consents(&user).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].scope, "openid email");
    // A refresh family this client holds for the user ends with the consent; one of another
    // client (the fixture's) does not.
    let (_, first) = family(&s, user.as_str()).await;
    let mut nf = crate::support::new_family(user.as_str(), T0, 86_400_000);
    nf.client_id = client.to_string();
    let token = crate::support::next_token();
    s.start_family(&nf, &token).await.unwrap();
    assert!(s.withdraw_consent(&user, &client).await.unwrap());
    assert!(!s.withdraw_consent(&user, &client).await.unwrap(), "once");
    let (fam, live) = s
        .refresh_token_family(&token.hash, T0.plus_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fam.client_id, client.as_str());
    assert!(!live, "the client's family for this user ended");
    // Another client's family of the same user lives on.
    let (_, other_live) = s
        .refresh_token_family(&first.hash, T0.plus_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(other_live);
}

async fn denied_jtis_are_idempotent_and_polled_while_unexpired(t: Ctx) {
    let s = t.store;
    let now = Millis::now();
    assert!(s.deny_jti("j1", now.as_secs() + 600, now).await.unwrap());
    assert!(!s.deny_jti("j1", now.as_secs() + 600, now).await.unwrap());
    s.deny_jti("j-old", now.as_secs() - 10, now).await.unwrap();
    let polled = s
        .jtis_denied_since(Millis(now.0 - 1000), now)
        .await
        .unwrap();
    assert_eq!(polled, [("j1".to_owned(), now.as_secs() + 600)]);
    assert!(
        s.purge_oauth(now, 100).await.unwrap() >= 1,
        "the expired one goes"
    );
}

async fn deleting_a_client_takes_its_codes_and_consents(t: Ctx) {
    let s = t.store;
    let (client, user) = (client(&s).await, user_id(&s).await);
    let hash = code(&s, &client, &user).await;
    s.grant_consent(&user, &client, "openid", T0).await.unwrap();
    assert!(s.delete_client(&client, T0).await.unwrap());
    assert!(!s.delete_client(&client, T0).await.unwrap());
    assert!(s.client(&client).await.unwrap().is_none());
    assert!(s.code(&hash).await.unwrap().is_none());
    assert!(s.list_consents(&user).await.unwrap().is_empty());
}
