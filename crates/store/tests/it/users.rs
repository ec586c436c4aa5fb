use portcullis_core::clock::Millis;
use portcullis_core::ids::UserId;
use portcullis_store::{StoreError, UserStore};

use crate::support::{Ctx, T0, backend_tests, new_user_row, user};

backend_tests!(
    create_and_read_back_by_id_and_email_key,
    duplicate_email_key_is_a_conflict,
    set_password_hash_without_revoke_keeps_watermark,
    set_password_hash_with_revoke_sets_watermark,
    set_password_hash_of_unknown_user_is_not_found,
    upgrade_password_hash_only_when_old_hash_still_matches,
    token_watermarks_since_returns_later_watermarks,
    list_users_paginates_by_id_cursor,
    count_users_counts,
    set_user_disabled_disables_and_leaves_the_watermark_alone,
    set_tokens_valid_after_never_moves_back_and_marks_the_user_changed,
    users_changed_since_lists_changes_in_order,
    set_user_disabled_none_reenables_and_keeps_the_watermark,
    set_user_disabled_of_unknown_user_is_false,
);

async fn create_and_read_back_by_id_and_email_key(t: Ctx) {
    let s = &t.store;
    let mut u = new_user_row("Alice@Example.TEST", T0);
    u.roles = "admin user".to_owned();
    s.create_user(&u).await.unwrap();

    let by_id = s
        .user_by_id(u.id.as_str())
        .await
        .unwrap()
        .expect("user by id");
    assert_eq!(by_id.id, u.id.as_str());
    assert_eq!(by_id.email, "Alice@Example.TEST");
    assert_eq!(by_id.email_key, "alice@example.test");
    assert_eq!(by_id.name.as_deref(), Some("Test User"));
    assert_eq!(by_id.password_hash, u.password_hash);
    assert_eq!(by_id.roles, "admin user");
    assert!(by_id.has_role("admin") && by_id.has_role("user") && !by_id.has_role("adm"));
    assert_eq!(by_id.disabled_at, None);
    assert_eq!(by_id.tokens_valid_after, None);
    assert_eq!(by_id.created_at, T0.0);
    assert_eq!(by_id.updated_at, T0.0);

    let by_key = s
        .user_by_email_key("alice@example.test")
        .await
        .unwrap()
        .expect("user by email key");
    assert_eq!(by_key.id, by_id.id);

    // A user without name or password (e.g. invited) round-trips its NULLs.
    let mut bare = new_user_row("bob@example.test", T0.plus_millis(1));
    bare.name = None;
    bare.password_hash = None;
    bare.roles = String::new();
    s.create_user(&bare).await.unwrap();
    let bare_row = s.user_by_id(bare.id.as_str()).await.unwrap().unwrap();
    assert_eq!(bare_row.name, None);
    assert_eq!(bare_row.password_hash, None);
    assert!(!bare_row.has_role("user"));

    assert!(
        s.user_by_id(UserId::generate().as_str())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.user_by_email_key("nobody@example.test")
            .await
            .unwrap()
            .is_none()
    );
    // Lookup is by the normalised key, never by the displayed address.
    assert!(
        s.user_by_email_key("Alice@Example.TEST")
            .await
            .unwrap()
            .is_none()
    );
}

async fn duplicate_email_key_is_a_conflict(t: Ctx) {
    let s = &t.store;
    s.create_user(&new_user_row("carol@example.test", T0))
        .await
        .unwrap();
    let again = new_user_row("CAROL@example.test", T0);
    match s.create_user(&again).await {
        Err(StoreError::Conflict(rule)) => assert_eq!(rule, "users_email_key_unique"),
        other => panic!("expected Conflict(users_email_key_unique), got {other:?}"),
    }
    assert!(s.user_by_id(again.id.as_str()).await.unwrap().is_none());
    assert_eq!(s.count_users().await.unwrap(), 1);
}

async fn set_password_hash_without_revoke_keeps_watermark(t: Ctx) {
    let s = &t.store;
    let id = user(s).await;
    s.set_password_hash(&id, "hash-2", T0.plus_millis(10), None)
        .await
        .unwrap();
    let row = s.user_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.password_hash.as_deref(), Some("hash-2"));
    assert_eq!(row.updated_at, T0.0 + 10);
    assert_eq!(
        row.tokens_valid_after, None,
        "no revoke: watermark stays unset"
    );

    // An existing watermark also survives a change without revoke.
    s.set_tokens_valid_after(&id, T0.plus_millis(20))
        .await
        .unwrap();
    s.set_password_hash(&id, "hash-3", T0.plus_millis(30), None)
        .await
        .unwrap();
    let row = s.user_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.password_hash.as_deref(), Some("hash-3"));
    assert_eq!(row.tokens_valid_after, Some(T0.0 + 20));
    assert_eq!(row.updated_at, T0.0 + 30);
}

async fn set_password_hash_with_revoke_sets_watermark(t: Ctx) {
    let s = &t.store;
    let id = user(s).await;
    let now = T0.plus_millis(1_000);
    s.set_password_hash(&id, "hash-2", now, Some(now))
        .await
        .unwrap();
    let row = s.user_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.password_hash.as_deref(), Some("hash-2"));
    assert_eq!(row.tokens_valid_after, Some(now.0));
    assert_eq!(row.updated_at, now.0);

    let later = now.plus_millis(5_000);
    s.set_password_hash(&id, "hash-3", later, Some(later))
        .await
        .unwrap();
    assert_eq!(
        s.user_by_id(&id).await.unwrap().unwrap().tokens_valid_after,
        Some(later.0)
    );
}

async fn set_password_hash_of_unknown_user_is_not_found(t: Ctx) {
    let s = &t.store;
    let _someone = user(s).await;
    let unknown = UserId::generate();
    for revoke in [None, Some(T0)] {
        match s.set_password_hash(unknown.as_str(), "h", T0, revoke).await {
            Err(StoreError::NotFound) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
}

async fn upgrade_password_hash_only_when_old_hash_still_matches(t: Ctx) {
    let s = &t.store;
    let mut u = new_user_row("dave@example.test", T0);
    u.password_hash = Some("bcrypt-old".to_owned());
    s.create_user(&u).await.unwrap();
    let id = u.id.as_str();

    // The verified hash is still current: upgraded.
    assert!(
        s.upgrade_password_hash(id, "bcrypt-old", "argon-new", T0.plus_millis(5))
            .await
            .unwrap()
    );
    let row = s.user_by_id(id).await.unwrap().unwrap();
    assert_eq!(row.password_hash.as_deref(), Some("argon-new"));
    assert_eq!(row.updated_at, T0.0 + 5);

    // A password change happened since the verification: the upgrade must not overwrite it.
    s.set_password_hash(id, "changed", T0.plus_millis(6), None)
        .await
        .unwrap();
    assert!(
        !s.upgrade_password_hash(id, "argon-new", "argon-rehash", T0.plus_millis(7))
            .await
            .unwrap()
    );
    let row = s.user_by_id(id).await.unwrap().unwrap();
    assert_eq!(row.password_hash.as_deref(), Some("changed"));
    assert_eq!(row.updated_at, T0.0 + 6);

    // Unknown user: nothing to upgrade.
    assert!(
        !s.upgrade_password_hash(UserId::generate().as_str(), "changed", "x", T0)
            .await
            .unwrap()
    );
}

async fn token_watermarks_since_returns_later_watermarks(t: Ctx) {
    let s = &t.store;
    let a = user(s).await;
    let b = user(s).await;
    let _never = user(s).await;
    s.set_tokens_valid_after(&a, T0.plus_millis(100))
        .await
        .unwrap();
    s.set_password_hash(&b, "h", T0.plus_millis(200), Some(T0.plus_millis(200)))
        .await
        .unwrap();

    let sorted = |mut v: Vec<(String, i64)>| {
        v.sort();
        v
    };
    let mut both = vec![(a.clone(), T0.0 + 100), (b.clone(), T0.0 + 200)];
    both.sort();
    assert_eq!(
        sorted(s.token_watermarks_since(Millis(0)).await.unwrap()),
        both
    );
    assert_eq!(
        sorted(s.token_watermarks_since(T0.plus_millis(99)).await.unwrap()),
        both
    );
    // Strictly later than `since`.
    assert_eq!(
        s.token_watermarks_since(T0.plus_millis(100)).await.unwrap(),
        vec![(b.clone(), T0.0 + 200)]
    );
    assert_eq!(
        s.token_watermarks_since(T0.plus_millis(199)).await.unwrap(),
        vec![(b, T0.0 + 200)]
    );
    assert!(
        s.token_watermarks_since(T0.plus_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn list_users_paginates_by_id_cursor(t: Ctx) {
    let s = &t.store;
    assert!(s.list_users(None, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(user(s).await);
    }
    ids.sort();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let page = s.list_users(cursor.as_deref(), 3).await.unwrap();
        pages.push(page.len());
        let Some(last) = page.last() else { break };
        cursor = Some(last.id.clone());
        seen.extend(page.into_iter().map(|u| u.id));
    }
    assert_eq!(pages, vec![3, 3, 1, 0]);
    assert_eq!(seen, ids, "pages are in id order, without gaps or repeats");

    assert_eq!(s.list_users(None, 100).await.unwrap().len(), 7);
    let after_fifth = s.list_users(Some(&ids[4]), 100).await.unwrap();
    assert_eq!(
        after_fifth.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
        ids[5..].to_vec()
    );
    assert!(s.list_users(Some(&ids[6]), 100).await.unwrap().is_empty());
}

async fn count_users_counts(t: Ctx) {
    let s = &t.store;
    assert_eq!(s.count_users().await.unwrap(), 0);
    for n in 1..=4 {
        user(s).await;
        assert_eq!(s.count_users().await.unwrap(), n);
    }
}

async fn set_user_disabled_disables_and_leaves_the_watermark_alone(t: Ctx) {
    let s = &t.store;
    let id = user(s).await;
    let bystander = user(s).await;
    let bystander_before = s.user_by_id(&bystander).await.unwrap().unwrap();

    // `at` and `now` differ so a swap of the two would show.
    let at = T0.plus_millis(100);
    let now = T0.plus_millis(150);
    assert!(s.set_user_disabled(&id, Some(at), now).await.unwrap());
    let row = s.user_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.disabled_at, Some(at.0));
    assert_eq!(
        row.tokens_valid_after, None,
        "the caller moves the watermark, after revoking what the user held"
    );
    assert_eq!(row.updated_at, now.0);
    assert_eq!(row.created_at, T0.0);

    let other = s.user_by_id(&bystander).await.unwrap().unwrap();
    assert_eq!(
        (
            other.disabled_at,
            other.tokens_valid_after,
            other.updated_at
        ),
        (
            bystander_before.disabled_at,
            bystander_before.tokens_valid_after,
            bystander_before.updated_at
        ),
        "another user is untouched"
    );
}

async fn set_tokens_valid_after_never_moves_back_and_marks_the_user_changed(t: Ctx) {
    let s = &t.store;
    let id = user(s).await;
    s.set_tokens_valid_after(&id, T0.plus_millis(300))
        .await
        .unwrap();
    s.set_tokens_valid_after(&id, T0.plus_millis(200))
        .await
        .unwrap();
    let row = s.user_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.tokens_valid_after, Some(T0.0 + 300));
    assert_eq!(row.updated_at, T0.0 + 300);
    assert_eq!(
        s.token_watermarks_since(T0).await.unwrap(),
        vec![(id.clone(), T0.0 + 300)]
    );
}

async fn users_changed_since_lists_changes_in_order(t: Ctx) {
    let s = &t.store;
    let a = user(s).await;
    let b = user(s).await;
    assert!(
        s.set_user_disabled(&b, Some(T0.plus_millis(50)), T0.plus_millis(50))
            .await
            .unwrap()
    );
    assert!(
        s.set_user_disabled(&a, Some(T0.plus_millis(60)), T0.plus_millis(60))
            .await
            .unwrap()
    );
    assert_eq!(
        s.users_changed_since(T0.0 + 50, 10).await.unwrap(),
        vec![(b.clone(), T0.0 + 50), (a.clone(), T0.0 + 60)]
    );
    assert_eq!(
        s.users_changed_since(T0.0 + 51, 10).await.unwrap(),
        vec![(a.clone(), T0.0 + 60)]
    );
    assert_eq!(s.users_changed_since(T0.0 + 50, 1).await.unwrap().len(), 1);
}

async fn set_user_disabled_none_reenables_and_keeps_the_watermark(t: Ctx) {
    let s = &t.store;
    let id = user(s).await;
    let at = T0.plus_millis(100);
    assert!(s.set_user_disabled(&id, Some(at), at).await.unwrap());
    s.set_tokens_valid_after(&id, at).await.unwrap();

    let now = T0.plus_millis(500);
    assert!(s.set_user_disabled(&id, None, now).await.unwrap());
    let row = s.user_by_id(&id).await.unwrap().unwrap();
    assert_eq!(row.disabled_at, None);
    assert_eq!(
        row.tokens_valid_after,
        Some(at.0),
        "re-enabling does not revive tokens issued before the disable"
    );
    assert_eq!(row.updated_at, now.0);

    // Re-enabling a user that was never disabled: true, and no watermark appears.
    let fresh = user(s).await;
    assert!(s.set_user_disabled(&fresh, None, now).await.unwrap());
    let row = s.user_by_id(&fresh).await.unwrap().unwrap();
    assert_eq!(
        (row.disabled_at, row.tokens_valid_after, row.updated_at),
        (None, None, now.0)
    );
}

async fn set_user_disabled_of_unknown_user_is_false(t: Ctx) {
    let s = &t.store;
    let someone = user(s).await;
    let unknown = UserId::generate();
    for at in [Some(T0.plus_millis(1)), None] {
        assert!(
            !s.set_user_disabled(unknown.as_str(), at, T0.plus_millis(2))
                .await
                .unwrap()
        );
    }
    assert!(s.user_by_id(unknown.as_str()).await.unwrap().is_none());
    let row = s.user_by_id(&someone).await.unwrap().unwrap();
    assert_eq!(
        (row.disabled_at, row.tokens_valid_after, row.updated_at),
        (None, None, T0.0)
    );
    assert_eq!(s.count_users().await.unwrap(), 1);
}
