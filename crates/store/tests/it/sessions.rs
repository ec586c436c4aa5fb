//! Browser sessions: storage by token hash, the live-session listing, revocation (one, all of a user,
//! and the feed other nodes poll), last-seen batching and the janitor's purge.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::ids::{SessionId, UserId};
use portcullis_core::secrets::TokenHash;
use portcullis_store::{SessionRow, SessionStore, Store, StoreError};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::{Ctx, DAY, HOUR, T0, backend_tests, random_hash, user_id};

backend_tests!(
    insert_and_lookup_by_hash_and_id,
    duplicate_token_hash_is_a_conflict,
    session_of_unknown_user_is_refused,
    list_user_sessions_returns_only_live_sessions_newest_first,
    revoke_session_returns_the_hash_once_and_only_to_its_owner,
    revoke_user_sessions_revokes_only_that_users_unrevoked_sessions,
    revoke_user_sessions_can_keep_one,
    touch_sessions_never_moves_last_seen_backwards,
    sessions_revoked_since_is_ordered_inclusive_and_limited,
    purge_sessions_deletes_dead_and_idle_sessions_in_batches,
    concurrent_revokes_of_one_session_have_one_winner,
);

// ---------------------------------------------------------------------------------------------------
// Helpers

/// A live session of `user_id` created (and last seen) at `created_at`, with a 30-day absolute timeout.
fn session(user_id: &UserId, created_at: Millis) -> SessionRow {
    SessionRow {
        id: SessionId::generate(),
        token_hash: random_hash(),
        user_id: user_id.clone(),
        created_at,
        last_seen_at: created_at,
        expires_at: created_at + 30 * DAY,
        revoked_at: None,
        revoked_reason: None,
        ip: Some("203.0.113.7".to_owned()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".to_owned()),
    }
}

/// Inserts `session(user_id, created_at)` after `edit`; returns the stored row as inserted.
async fn insert_with(
    s: &Store,
    user_id: &UserId,
    created_at: Millis,
    edit: impl FnOnce(&mut SessionRow),
) -> SessionRow {
    let mut row = session(user_id, created_at);
    edit(&mut row);
    s.insert_session(&row).await.expect("insert session");
    row
}

async fn insert(s: &Store, user_id: &UserId, created_at: Millis) -> SessionRow {
    insert_with(s, user_id, created_at, |_| {}).await
}

async fn by_id(s: &Store, id: &SessionId) -> SessionRow {
    s.session_by_id(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("session {id} not found"))
}

fn hash_of(row: &SessionRow) -> TokenHash {
    row.token_hash.clone()
}

fn ids(rows: &[SessionRow]) -> Vec<SessionId> {
    rows.iter().map(|r| r.id.clone()).collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Compares every column, naming the first that differs.
#[track_caller]
fn assert_row(got: &SessionRow, want: &SessionRow, what: &str) {
    macro_rules! fields {
        ($($f:ident),*) => {
            $(assert_eq!(got.$f, want.$f, "{what}: column `{}`", stringify!($f));)*
        };
    }
    fields!(
        id,
        token_hash,
        user_id,
        created_at,
        last_seen_at,
        expires_at,
        revoked_at,
        revoked_reason,
        ip,
        user_agent
    );
}

// ---------------------------------------------------------------------------------------------------
// Insert and lookup

async fn insert_and_lookup_by_hash_and_id(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;

    // Every column set, each to a distinct value.
    let full = insert_with(s, &uid, T0 + 1, |r| {
        r.last_seen_at = T0 + 2;
        r.expires_at = T0 + 3 * DAY;
        r.revoked_at = Some(T0 + 4);
        r.revoked_reason = Some("logout".to_owned());
        r.ip = Some("2001:db8::1".to_owned());
        r.user_agent = Some("curl/8.5.0 ünïcödé".to_owned());
    })
    .await;
    // Every nullable column NULL.
    let bare = insert_with(s, &uid, T0 + 10, |r| {
        r.ip = None;
        r.user_agent = None;
    })
    .await;

    for want in [&full, &bare] {
        let got = s
            .session_by_hash(&hash_of(want))
            .await
            .unwrap()
            .expect("session by hash");
        assert_row(&got, want, "by hash");
        let got = s
            .session_by_id(&want.id)
            .await
            .unwrap()
            .expect("session by id");
        assert_row(&got, want, "by id");
    }
    assert_eq!(full.token_hash.as_bytes().len(), 32);

    assert!(s.session_by_hash(&random_hash()).await.unwrap().is_none());
    assert!(
        s.session_by_id(&SessionId::generate())
            .await
            .unwrap()
            .is_none()
    );
}

async fn duplicate_token_hash_is_a_conflict(t: Ctx) {
    let s = &t.store;
    let a = user_id(s).await;
    let b = user_id(s).await;
    let first = insert(s, &a, T0).await;

    // Same hash, different id, even a different user: refused.
    let mut dup = session(&b, T0 + 5);
    dup.token_hash = first.token_hash.clone();
    match s.insert_session(&dup).await {
        Err(StoreError::Conflict(rule)) => assert_eq!(rule, "sessions_token_hash_unique"),
        other => panic!("expected Conflict(sessions_token_hash_unique), got {other:?}"),
    }
    assert!(s.session_by_id(&dup.id).await.unwrap().is_none());
    assert_row(
        &s.session_by_hash(&hash_of(&first)).await.unwrap().unwrap(),
        &first,
        "the first holder of the hash",
    );
    assert!(
        s.list_user_sessions(&b, T0, Millis(0))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn session_of_unknown_user_is_refused(t: Ctx) {
    let s = &t.store;
    let _someone = user_id(s).await;
    let orphan = session(&UserId::generate(), T0);
    match s.insert_session(&orphan).await {
        Err(StoreError::Database(sqlx::Error::Database(db))) => assert!(
            db.is_foreign_key_violation(),
            "expected a foreign-key violation, got {db}"
        ),
        other => panic!("expected a foreign-key violation, got {other:?}"),
    }
    assert!(s.session_by_id(&orphan.id).await.unwrap().is_none());
    assert!(
        s.session_by_hash(&hash_of(&orphan))
            .await
            .unwrap()
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------------------
// Listing

async fn list_user_sessions_returns_only_live_sessions_newest_first(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;
    let other = user_id(s).await;
    let now = T0 + DAY;
    let idle_before = now - HOUR;
    let seen = |r: &mut SessionRow| r.last_seen_at = now - 1;

    assert!(
        s.list_user_sessions(&uid, now, idle_before)
            .await
            .unwrap()
            .is_empty()
    );

    // Inserted out of creation order, so the order cannot come from insertion.
    let middle = insert_with(s, &uid, T0 + 20, seen).await;
    let oldest = insert_with(s, &uid, T0 + 10, seen).await;
    let newest = insert_with(s, &uid, T0 + 30, seen).await;
    // Boundaries that are still live: expires one millisecond after now, seen exactly at idle_before.
    let expires_next_ms = insert_with(s, &uid, T0 + 15, |r| {
        r.last_seen_at = now - 1;
        r.expires_at = now + 1;
    })
    .await;
    let seen_at_idle_edge = insert_with(s, &uid, T0 + 25, |r| r.last_seen_at = idle_before).await;

    // Not live.
    let _revoked = insert_with(s, &uid, T0 + 40, |r| {
        r.last_seen_at = now - 1;
        r.revoked_at = Some(now - 2);
        r.revoked_reason = Some("logout".to_owned());
    })
    .await;
    let _revoked_in_future = insert_with(s, &uid, T0 + 41, |r| {
        r.last_seen_at = now - 1;
        r.revoked_at = Some(now + HOUR);
        r.revoked_reason = Some("logout".to_owned());
    })
    .await;
    let _expires_now = insert_with(s, &uid, T0 + 42, |r| {
        r.last_seen_at = now - 1;
        r.expires_at = now;
    })
    .await;
    let _expired = insert_with(s, &uid, T0 + 43, |r| {
        r.last_seen_at = now - 1;
        r.expires_at = now - HOUR;
    })
    .await;
    let _idle = insert_with(s, &uid, T0 + 44, |r| r.last_seen_at = idle_before - 1).await;
    // Another user's live session.
    let theirs = insert_with(s, &other, T0 + 50, seen).await;

    let listed = s.list_user_sessions(&uid, now, idle_before).await.unwrap();
    let want = [
        &newest,
        &seen_at_idle_edge,
        &middle,
        &expires_next_ms,
        &oldest,
    ];
    assert_eq!(
        ids(&listed),
        want.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        "live sessions, newest first"
    );
    for (got, want) in listed.iter().zip(want) {
        assert_row(got, want, "listed row");
    }

    let theirs_listed = s
        .list_user_sessions(&other, now, idle_before)
        .await
        .unwrap();
    assert_eq!(ids(&theirs_listed), vec![theirs.id.clone()]);

    // The bounds are the caller's: one millisecond later, the boundary sessions are gone too.
    assert_eq!(
        ids(&s
            .list_user_sessions(&uid, now + 1, idle_before + 1)
            .await
            .unwrap()),
        vec![newest.id, middle.id, oldest.id]
    );
    assert!(
        s.list_user_sessions(&UserId::generate(), now, idle_before)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------------
// Revocation

async fn revoke_session_returns_the_hash_once_and_only_to_its_owner(t: Ctx) {
    let s = &t.store;
    let owner = user_id(s).await;
    let intruder = user_id(s).await;
    let target = insert(s, &owner, T0).await;
    let sibling = insert(s, &owner, T0 + 1).await;
    let intruders_own = insert(s, &intruder, T0 + 2).await;

    // Another user's id: nothing happens.
    assert_eq!(
        s.revoke_session(&target.id, &intruder, T0 + 10, "stolen")
            .await
            .unwrap(),
        None
    );
    assert_row(
        &by_id(s, &target.id).await,
        &target,
        "after another user's attempt",
    );
    // Unknown session id.
    assert_eq!(
        s.revoke_session(&SessionId::generate(), &owner, T0 + 10, "x")
            .await
            .unwrap(),
        None
    );

    // The owner: the hash, once.
    assert_eq!(
        s.revoke_session(&target.id, &owner, T0 + 20, "logout")
            .await
            .unwrap(),
        Some(target.token_hash.clone())
    );
    let mut want = target.clone();
    want.revoked_at = Some(T0 + 20);
    want.revoked_reason = Some("logout".to_owned());
    assert_row(&by_id(s, &target.id).await, &want, "revoked");

    assert_eq!(
        s.revoke_session(&target.id, &owner, T0 + 30, "again")
            .await
            .unwrap(),
        None
    );
    assert_row(
        &by_id(s, &target.id).await,
        &want,
        "second revoke keeps the first time and reason",
    );

    assert_row(&by_id(s, &sibling.id).await, &sibling, "sibling untouched");
    assert_row(
        &by_id(s, &intruders_own.id).await,
        &intruders_own,
        "other user's session untouched",
    );
}

async fn revoke_user_sessions_revokes_only_that_users_unrevoked_sessions(t: Ctx) {
    let s = &t.store;
    let a = user_id(s).await;
    let b = user_id(s).await;
    let live: Vec<SessionRow> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(insert(s, &a, T0 + i).await);
        }
        v
    };
    let already = insert_with(s, &a, T0 + 5, |r| {
        r.revoked_at = Some(T0 + 6);
        r.revoked_reason = Some("logout".to_owned());
    })
    .await;
    let bs = [insert(s, &b, T0).await, insert(s, &b, T0 + 1).await];

    let now = T0 + HOUR;
    let hashes = s
        .revoke_user_sessions(&a, now, "logout_all", None)
        .await
        .unwrap();
    assert_eq!(
        sorted(hashes),
        sorted(live.iter().map(|r| r.token_hash.clone()).collect()),
        "the hashes of exactly the sessions this call revoked"
    );
    for r in &live {
        let mut want = r.clone();
        want.revoked_at = Some(now);
        want.revoked_reason = Some("logout_all".to_owned());
        assert_row(&by_id(s, &r.id).await, &want, "revoked by logout-all");
    }
    assert_row(
        &by_id(s, &already.id).await,
        &already,
        "an earlier revocation is kept",
    );
    for r in &bs {
        assert_row(&by_id(s, &r.id).await, r, "other user's session untouched");
    }
    assert!(
        s.list_user_sessions(&a, now, Millis(0))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_user_sessions(&b, now, Millis(0))
            .await
            .unwrap()
            .len(),
        2
    );

    // Nothing left to revoke.
    assert!(
        s.revoke_user_sessions(&a, now + 1, "again", None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(by_id(s, &live[0].id).await.revoked_at, Some(now));
    assert!(
        s.revoke_user_sessions(&UserId::generate(), now, "x", None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn revoke_user_sessions_can_keep_one(t: Ctx) {
    let s = &t.store;
    let a = user_id(s).await;
    let keep = insert(s, &a, T0).await;
    let other = insert(s, &a, T0 + 1).await;
    let hashes = s
        .revoke_user_sessions(&a, T0 + 10, "password_change", Some(&keep.id))
        .await
        .unwrap();
    assert_eq!(hashes, vec![other.token_hash.clone()]);
    assert_row(
        &by_id(s, &keep.id).await,
        &keep,
        "the kept session is untouched",
    );
    assert_eq!(by_id(s, &other.id).await.revoked_at, Some(T0 + 10));
}

const REVOKERS: usize = 20;

async fn concurrent_revokes_of_one_session_have_one_winner(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;
    for round in 0..3 {
        let target = insert(s, &uid, T0 + round).await;
        let barrier = Arc::new(Barrier::new(REVOKERS));
        let mut tasks = JoinSet::new();
        for i in 0..REVOKERS {
            let s = s.clone();
            let (id, uid) = (target.id.clone(), uid.clone());
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let (at, reason) = (T0 + 1_000 + i as i64, format!("revoker-{i}"));
                barrier.wait().await;
                let r = s
                    .revoke_session(&id, &uid, at, &reason)
                    .await
                    .expect("revoke must not fail under contention");
                (r, at, reason)
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (r, at, reason) = joined.expect("revoker panicked");
            if let Some(hash) = r {
                assert_eq!(hash, target.token_hash, "round {round}");
                winners.push((at, reason));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one Some");
        let (at, reason) = winners.pop().unwrap();
        let row = by_id(s, &target.id).await;
        assert_eq!(
            (row.revoked_at, row.revoked_reason),
            (Some(at), Some(reason)),
            "round {round}: the row records the winner"
        );
    }
}

async fn sessions_revoked_since_is_ordered_inclusive_and_limited(t: Ctx) {
    let s = &t.store;
    let a = user_id(s).await;
    let b = user_id(s).await;
    assert!(
        s.sessions_revoked_since(Millis(0), 100)
            .await
            .unwrap()
            .is_empty()
    );

    let r30 = insert(s, &a, T0).await;
    let r10 = insert(s, &b, T0 + 1).await;
    let r20 = insert(s, &a, T0 + 2).await;
    let r5 = insert(s, &a, T0 + 3).await;
    let live = insert(s, &a, T0 + 4).await;
    // Revoked out of time order, by different means.
    for (row, at) in [(&r30, 30), (&r10, 10), (&r5, 5)] {
        s.revoke_session(&row.id, &row.user_id, T0 + at, "logout")
            .await
            .unwrap()
            .expect("revoked");
    }
    let via_all = s
        .revoke_user_sessions(&a, T0 + 20, "logout_all", None)
        .await
        .unwrap();
    assert_eq!(
        sorted(via_all),
        sorted(vec![r20.token_hash.clone(), live.token_hash.clone()])
    );
    let entry = |r: &SessionRow, at: i64| (r.token_hash.clone(), T0 + at);

    let got = s.sessions_revoked_since(T0 + 10, 100).await.unwrap();
    assert_eq!(got.len(), 4, "{got:?}");
    // The two revoked at +20 tie; their mutual order is unspecified.
    assert_eq!(
        sorted(got[1..3].to_vec()),
        sorted(vec![entry(&r20, 20), entry(&live, 20)])
    );
    assert_eq!(got[0], entry(&r10, 10), "inclusive of `since`");
    assert_eq!(got[3], entry(&r30, 30));

    assert_eq!(
        s.sessions_revoked_since(Millis(0), 100)
            .await
            .unwrap()
            .first(),
        Some(&entry(&r5, 5))
    );
    let limited = s.sessions_revoked_since(Millis(0), 2).await.unwrap();
    assert_eq!(limited, vec![entry(&r5, 5), entry(&r10, 10)], "limit");
    assert_eq!(
        s.sessions_revoked_since(T0 + 21, 1).await.unwrap(),
        vec![entry(&r30, 30)]
    );
    assert_eq!(
        s.sessions_revoked_since(T0 + 30, 100).await.unwrap(),
        vec![entry(&r30, 30)]
    );
    assert!(
        s.sessions_revoked_since(T0 + 31, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------------
// Last seen

async fn touch_sessions_never_moves_last_seen_backwards(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;
    let a = insert(s, &uid, T0).await;
    let b = insert(s, &uid, T0).await;
    let c = insert(s, &uid, T0).await;

    s.touch_sessions(&[]).await.unwrap();
    for r in [&a, &b, &c] {
        assert_row(&by_id(s, &r.id).await, r, "empty touch changes nothing");
    }

    s.touch_sessions(&[(a.id.clone(), T0 + 100)]).await.unwrap();
    let mut want_a = a.clone();
    want_a.last_seen_at = T0 + 100;
    assert_row(&by_id(s, &a.id).await, &want_a, "touched once");
    assert_row(&by_id(s, &b.id).await, &b, "untouched");

    // Older times never win, whether in a later batch or later in the same batch.
    s.touch_sessions(&[(a.id.clone(), T0 + 50)]).await.unwrap();
    assert_eq!(by_id(s, &a.id).await.last_seen_at, T0 + 100);
    s.touch_sessions(&[(c.id.clone(), T0 - 1)]).await.unwrap();
    assert_eq!(
        by_id(s, &c.id).await.last_seen_at,
        T0,
        "not before creation"
    );
    s.touch_sessions(&[
        (b.id.clone(), T0 + 300),
        (a.id.clone(), T0 + 200),
        (SessionId::generate(), T0 + 400),
        (b.id.clone(), T0 + 250),
        (c.id.clone(), T0 + 100),
    ])
    .await
    .unwrap();
    assert_eq!(by_id(s, &a.id).await.last_seen_at, T0 + 200);
    assert_eq!(by_id(s, &b.id).await.last_seen_at, T0 + 300);
    assert_eq!(by_id(s, &c.id).await.last_seen_at, T0 + 100);
    // Nothing else changes.
    want_a.last_seen_at = T0 + 200;
    assert_row(&by_id(s, &a.id).await, &want_a, "touched again");
}

// ---------------------------------------------------------------------------------------------------
// Purge

async fn purge_sessions_deletes_dead_and_idle_sessions_in_batches(t: Ctx) {
    let s = &t.store;
    let a = user_id(s).await;
    let b = user_id(s).await;
    let dead_before = T0 + 10 * DAY;
    let idle_before = T0 + 5 * DAY;
    // Recently seen and far from expiry unless the case says otherwise.
    let fresh = |r: &mut SessionRow| r.last_seen_at = idle_before + HOUR;

    let mut doomed = Vec::new();
    doomed.push(
        insert_with(s, &a, T0, |r| {
            fresh(r);
            r.expires_at = dead_before - 1;
        })
        .await,
    );
    doomed.push(
        insert_with(s, &b, T0, |r| {
            fresh(r);
            r.revoked_at = Some(dead_before - 1);
            r.revoked_reason = Some("logout".to_owned());
        })
        .await,
    );
    doomed.push(insert_with(s, &a, T0, |r| r.last_seen_at = idle_before - 1).await);
    doomed.push(
        insert_with(s, &b, T0, |r| {
            r.last_seen_at = T0;
            r.expires_at = T0 + HOUR;
            r.revoked_at = Some(T0 + 1);
        })
        .await,
    );
    doomed.push(
        insert_with(s, &a, T0, |r| {
            fresh(r);
            r.expires_at = T0 + DAY;
        })
        .await,
    );

    let mut kept = Vec::new();
    kept.push(insert_with(s, &a, T0, fresh).await);
    kept.push(insert_with(s, &b, T0, fresh).await);
    // Boundaries: each ended (or was last seen) exactly at the cut-off, not before it.
    kept.push(
        insert_with(s, &a, T0, |r| {
            fresh(r);
            r.expires_at = dead_before;
        })
        .await,
    );
    kept.push(
        insert_with(s, &a, T0, |r| {
            fresh(r);
            r.revoked_at = Some(dead_before);
            r.revoked_reason = Some("logout".to_owned());
        })
        .await,
    );
    kept.push(insert_with(s, &b, T0, |r| r.last_seen_at = idle_before).await);

    let mut counts = Vec::new();
    loop {
        let n = s.purge_sessions(dead_before, idle_before, 2).await.unwrap();
        counts.push(n);
        assert!(n <= 2, "at most `batch` per call: {counts:?}");
        if n == 0 || counts.len() > 10 {
            break;
        }
    }
    assert_eq!(counts, vec![2, 2, 1, 0]);

    for r in &doomed {
        assert!(
            s.session_by_id(&r.id).await.unwrap().is_none(),
            "purged: {r:?}"
        );
    }
    for r in &kept {
        assert_row(&by_id(s, &r.id).await, r, "kept");
    }
    assert_eq!(
        t.raw.scalar("SELECT COUNT(*) FROM sessions").await,
        kept.len() as i64
    );

    // A larger batch takes everything at once.
    let more: Vec<SessionRow> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(insert_with(s, &a, T0 + i, |r| r.last_seen_at = T0).await);
        }
        v
    };
    assert_eq!(
        s.purge_sessions(dead_before, idle_before, 100)
            .await
            .unwrap(),
        3
    );
    for r in &more {
        assert!(s.session_by_id(&r.id).await.unwrap().is_none());
    }
    assert_eq!(
        s.purge_sessions(dead_before, idle_before, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        t.raw.scalar("SELECT COUNT(*) FROM sessions").await,
        kept.len() as i64
    );
}
