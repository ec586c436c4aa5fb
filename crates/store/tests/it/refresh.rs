use portcullis_store::{RefreshTokenStore, Rotation};

use crate::support::{
    Ctx, DAY, HOUR, T0, backend_tests, expect_invalid, expect_reused, expect_rotated, family,
    new_family, next_token, next_token_ttl, random_hash, user,
};

backend_tests!(
    start_family_caps_first_expiry_by_family_expiry,
    rotate_live_token_issues_usable_token_and_spends_old,
    rotation_expiry_is_capped_by_family_expiry,
    reused_token_revokes_the_whole_family,
    unknown_hash_is_invalid,
    expired_token_is_invalid,
    token_of_expired_family_is_invalid,
    revoked_family_is_invalid,
    grace_retry_while_child_unused_rotates_once,
    a_child_superseded_by_a_grace_retry_counts_as_reuse,
    grace_retry_after_child_used_is_reuse,
    grace_retry_after_grace_period_is_reuse,
    revoke_family_of_revokes_only_that_family,
    revoke_user_families_revokes_every_live_family_of_the_user,
);

async fn start_family_caps_first_expiry_by_family_expiry(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;

    // Token lifetime within the family's: created_at + ttl.
    let f = new_family(&uid, T0, DAY);
    let first = next_token_ttl(HOUR);
    assert_eq!(
        s.start_family(&f, &first).await.unwrap(),
        T0.plus_millis(HOUR)
    );

    // Token lifetime beyond the family's absolute end: capped.
    let f = new_family(&uid, T0, 10 * 60_000);
    let first = next_token_ttl(HOUR);
    let exp = s.start_family(&f, &first).await.unwrap();
    assert_eq!(exp, f.expires_at);
    // The stored expiry is the capped one: usable just before it, not at it.
    expect_invalid(s, &first.hash, f.expires_at, 0).await;
    expect_rotated(
        s,
        &first.hash,
        f.expires_at.plus_millis(-1),
        0,
        &next_token(),
    )
    .await;
}

async fn rotate_live_token_issues_usable_token_and_spends_old(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (f, first) = family(s, &uid).await;

    let now = T0.plus_millis(1_000);
    let second = next_token();
    match s.rotate(&first.hash, now, 0, &second).await.unwrap() {
        Rotation::Rotated { family, expires_at } => {
            assert_eq!(family.id, f.id.as_str());
            assert_eq!(family.user_id, uid);
            assert_eq!(family.client_id, f.client_id);
            assert_eq!(family.scope, f.scope);
            assert_eq!(family.session_id, f.session_id);
            assert_eq!(family.expires_at, f.expires_at.0);
            assert_eq!(expires_at, now.plus_millis(HOUR));
        }
        other => panic!("expected Rotated, got {other:?}"),
    }

    // The new token is usable, and so on down the chain.
    let third = next_token();
    expect_rotated(s, &second.hash, now.plus_millis(1_000), 0, &third).await;
    let fourth = next_token();
    expect_rotated(s, &third.hash, now.plus_millis(2_000), 0, &fourth).await;

    // The first token is spent: presenting it again is reuse.
    let (family_id, user_id) = expect_reused(s, &first.hash, now.plus_millis(3_000), 0).await;
    assert_eq!(family_id, f.id.as_str());
    assert_eq!(user_id, uid);
}

async fn rotation_expiry_is_capped_by_family_expiry(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let f = new_family(&uid, T0, 90 * 60_000);
    let first = next_token_ttl(HOUR);
    s.start_family(&f, &first).await.unwrap();

    // 50 minutes in, a one-hour token would outlive the family (90 minutes): capped.
    let second = next_token_ttl(HOUR);
    let exp = expect_rotated(s, &first.hash, T0.plus_millis(50 * 60_000), 0, &second).await;
    assert_eq!(exp, f.expires_at);
    expect_invalid(s, &second.hash, f.expires_at, 0).await;
}

async fn reused_token_revokes_the_whole_family(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (f, first) = family(s, &uid).await;
    // Another family of the same user must not be touched.
    let (_, other_first) = family(s, &uid).await;

    let second = next_token();
    expect_rotated(s, &first.hash, T0.plus_millis(10), 0, &second).await;

    // The attacker (or the victim) presents the spent token.
    let (family_id, user_id) = expect_reused(s, &first.hash, T0.plus_millis(20), 0).await;
    assert_eq!(
        (family_id.as_str(), user_id.as_str()),
        (f.id.as_str(), uid.as_str())
    );

    // Both tokens of the family are dead: the newest one no longer rotates.
    expect_invalid(s, &second.hash, T0.plus_millis(30), 0).await;
    // Presenting the spent one again still reports reuse (the family stays revoked).
    expect_reused(s, &first.hash, T0.plus_millis(40), 0).await;
    expect_invalid(s, &second.hash, T0.plus_millis(50), 0).await;

    expect_rotated(s, &other_first.hash, T0.plus_millis(60), 0, &next_token()).await;
}

async fn unknown_hash_is_invalid(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let _live = family(s, &uid).await;
    expect_invalid(s, &random_hash(), T0.plus_millis(1), 0).await;
    expect_invalid(s, &random_hash(), T0.plus_millis(1), 60_000).await;
}

async fn expired_token_is_invalid(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (_, first) = family(s, &uid).await; // token expires at T0 + 1h, family at T0 + 30d
    let expiry = T0.plus_millis(HOUR);
    expect_invalid(s, &first.hash, expiry, 0).await;
    expect_invalid(s, &first.hash, expiry.plus_millis(DAY), 60_000).await;
    // Presenting an expired token is not reuse: it stays Invalid and the family is left alone.
    expect_invalid(s, &first.hash, expiry.plus_millis(1), 0).await;
    // One millisecond earlier it was still live.
    expect_rotated(s, &first.hash, expiry.plus_millis(-1), 0, &next_token()).await;
}

async fn token_of_expired_family_is_invalid(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let f = new_family(&uid, T0, 2 * HOUR);
    let first = next_token_ttl(HOUR);
    s.start_family(&f, &first).await.unwrap();
    let second = next_token_ttl(HOUR);
    expect_rotated(s, &first.hash, T0.plus_millis(HOUR - 1), 0, &second).await;
    // The second token's own expiry is capped to the family's end.
    expect_invalid(s, &second.hash, f.expires_at, 0).await;

    // And the family's end decides on its own: a family cut short (its tokens still live by their
    // own expiry) is dead, and presenting its token is not reuse.
    let f = new_family(&uid, T0, 30 * DAY);
    let first = next_token_ttl(DAY);
    s.start_family(&f, &first).await.unwrap();
    t.raw
        .execute(&format!(
            "UPDATE refresh_families SET expires_at = {} WHERE id = '{}'",
            T0.0 + HOUR,
            f.id.as_str()
        ))
        .await;
    expect_invalid(s, &first.hash, T0.plus_millis(HOUR), 0).await;
    expect_invalid(s, &first.hash, T0.plus_millis(HOUR + 1), 60_000).await;
    expect_rotated(s, &first.hash, T0.plus_millis(HOUR - 1), 0, &next_token()).await;
}

async fn revoked_family_is_invalid(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (f, first) = family(s, &uid).await;
    let found = s
        .revoke_family_of(&first.hash, T0.plus_millis(5), "logout")
        .await
        .unwrap();
    assert_eq!(found, Some((f.id.as_str().to_owned(), uid.clone())));
    expect_invalid(s, &first.hash, T0.plus_millis(10), 0).await;
    expect_invalid(s, &first.hash, T0.plus_millis(10), 60_000).await;
    // Still Invalid, not Reused: a revoked token was never spent.
    expect_invalid(s, &first.hash, T0.plus_millis(20), 0).await;
}

async fn grace_retry_while_child_unused_rotates_once(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (_, first) = family(s, &uid).await;
    let grace = 30_000;
    let now = T0.plus_millis(1_000);

    let child = next_token();
    expect_rotated(s, &first.hash, now, grace, &child).await;

    // The response was lost: the client retries with `first` inside the grace period.
    let retry = next_token();
    let exp = expect_rotated(s, &first.hash, now.plus_millis(2_000), grace, &retry).await;
    assert_eq!(exp, now.plus_millis(2_000 + HOUR));
    let grandchild = next_token();
    expect_rotated(s, &retry.hash, now.plus_millis(3_000), grace, &grandchild).await;

    // One retry per token: a second retry of `first`, still inside the grace period, is reuse.
    let (family_id, _) = expect_reused(s, &first.hash, now.plus_millis(4_000), grace).await;
    assert!(!family_id.is_empty());
    expect_invalid(s, &grandchild.hash, now.plus_millis(5_000), grace).await;
}

async fn a_child_superseded_by_a_grace_retry_counts_as_reuse(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (_, first) = family(s, &uid).await;
    let grace = 30_000;
    let now = T0.plus_millis(1_000);

    // The real client rotates and holds `child`; an attacker replays the stolen `first` in grace.
    let child = next_token();
    expect_rotated(s, &first.hash, now, grace, &child).await;
    let stolen = next_token();
    expect_rotated(s, &first.hash, now.plus_millis(500), grace, &stolen).await;
    // The real client's next use is reuse, not "invalid": the family ends, the attacker's token too.
    expect_reused(s, &child.hash, now.plus_millis(1_000), grace).await;
    expect_invalid(s, &stolen.hash, now.plus_millis(1_500), grace).await;
}

async fn grace_retry_after_child_used_is_reuse(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (f, first) = family(s, &uid).await;
    let grace = 30_000;
    let now = T0.plus_millis(1_000);

    let child = next_token();
    expect_rotated(s, &first.hash, now, grace, &child).await;
    let grandchild = next_token();
    expect_rotated(s, &child.hash, now.plus_millis(100), grace, &grandchild).await;

    // The child was used, so whoever presents `first` now is not the legitimate client retrying.
    let (family_id, _) = expect_reused(s, &first.hash, now.plus_millis(200), grace).await;
    assert_eq!(family_id, f.id.as_str());
    expect_invalid(s, &grandchild.hash, now.plus_millis(300), grace).await;
}

async fn grace_retry_after_grace_period_is_reuse(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (_, first) = family(s, &uid).await;
    let grace = 30_000;
    let now = T0.plus_millis(1_000);

    let child = next_token();
    expect_rotated(s, &first.hash, now, grace, &child).await;
    expect_reused(s, &first.hash, now.plus_millis(grace + 1), grace).await;
    expect_invalid(s, &child.hash, now.plus_millis(grace + 2), grace).await;
}

async fn revoke_family_of_revokes_only_that_family(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let (f, first) = family(s, &uid).await;
    let (_, other) = family(s, &uid).await;

    let second = next_token();
    expect_rotated(s, &first.hash, T0.plus_millis(10), 0, &second).await;

    // Any token of the family finds it, including a spent one.
    let found = s
        .revoke_family_of(&first.hash, T0.plus_millis(20), "logout")
        .await
        .unwrap();
    assert_eq!(found, Some((f.id.as_str().to_owned(), uid.clone())));
    expect_invalid(s, &second.hash, T0.plus_millis(30), 0).await;

    // Idempotent: revoking again still reports the family.
    let again = s
        .revoke_family_of(&second.hash, T0.plus_millis(40), "logout")
        .await
        .unwrap();
    assert_eq!(again, Some((f.id.as_str().to_owned(), uid.clone())));

    assert_eq!(
        s.revoke_family_of(&random_hash(), T0.plus_millis(50), "logout")
            .await
            .unwrap(),
        None
    );
    expect_rotated(s, &other.hash, T0.plus_millis(60), 0, &next_token()).await;
}

async fn revoke_user_families_revokes_every_live_family_of_the_user(t: Ctx) {
    let s = &t.store;
    let alice = user(s).await;
    let bob = user(s).await;
    let (_, a1) = family(s, &alice).await;
    let (_, a2) = family(s, &alice).await;
    let (_, a3) = family(s, &alice).await;
    let (_, b1) = family(s, &bob).await;

    // One of Alice's families is already revoked: it does not count as live.
    s.revoke_family_of(&a3.hash, T0.plus_millis(1), "logout")
        .await
        .unwrap();
    // A rotated family: its newest token must die too.
    let a1_next = next_token();
    expect_rotated(s, &a1.hash, T0.plus_millis(2), 0, &a1_next).await;

    assert_eq!(
        s.revoke_user_families(&alice, T0.plus_millis(10), "logout-all")
            .await
            .unwrap(),
        2
    );
    expect_invalid(s, &a1_next.hash, T0.plus_millis(20), 0).await;
    expect_invalid(s, &a2.hash, T0.plus_millis(20), 0).await;
    expect_invalid(s, &a3.hash, T0.plus_millis(20), 0).await;
    assert_eq!(
        s.revoke_user_families(&alice, T0.plus_millis(30), "logout-all")
            .await
            .unwrap(),
        0
    );

    expect_rotated(s, &b1.hash, T0.plus_millis(40), 0, &next_token()).await;
    assert_eq!(
        s.revoke_user_families(&bob, T0.plus_millis(50), "logout-all")
            .await
            .unwrap(),
        1
    );
}
