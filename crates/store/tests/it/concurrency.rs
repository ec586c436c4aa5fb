//! Races on one refresh token: the store promises that one conditional `UPDATE … RETURNING` settles
//! each decision, so concurrent presentations of a token can never yield two live successors.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::secrets::TokenHash;
use portcullis_store::{NextToken, RefreshTokenStore, Rotation, Store};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::{
    Ctx, Raw, T0, backend_tests, expect_rotated, family, kind, next_token, random_hash, user,
};

backend_tests!(
    concurrent_rotations_of_one_token_have_exactly_one_winner,
    concurrent_grace_retries_never_leave_two_live_tokens,
    concurrent_grace_retries_and_child_use_never_leave_two_live_tokens,
    concurrent_rotations_of_different_tokens_all_succeed,
    made_up_tokens_among_real_ones_are_invalid_and_harm_nothing,
);

const RACERS: usize = 16;

/// Presents each hash in `presented` from its own task, all released at once by a barrier; returns
/// every outcome with the token that task offered as successor, in the order of `presented`.
async fn race(
    s: &Store,
    presented: Vec<TokenHash>,
    now: Millis,
    grace_ms: i64,
) -> Vec<(Rotation, NextToken)> {
    let barrier = Arc::new(Barrier::new(presented.len()));
    let mut tasks = JoinSet::new();
    for (i, hash) in presented.into_iter().enumerate() {
        let s = s.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let next = next_token();
            barrier.wait().await;
            let r = s
                .rotate(&hash, now, grace_ms, &next)
                .await
                .expect("rotate must not fail under contention");
            (i, r, next)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        out.push(joined.expect("racer panicked"));
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, r, n)| (r, n)).collect()
}

fn tally(outcomes: &[(Rotation, NextToken)]) -> (usize, usize, usize) {
    let count = |k: &str| outcomes.iter().filter(|(r, _)| kind(r) == k).count();
    (count("Rotated"), count("Reused"), count("Invalid"))
}

/// Tokens of the family that are neither spent nor revoked, whatever the family's own state: a
/// revocation must catch every successor a concurrent rotation stored.
async fn live_tokens(raw: &Raw, family_id: &str) -> i64 {
    raw.scalar(&format!(
        "SELECT COUNT(*) FROM refresh_tokens WHERE family_id = '{family_id}' AND spent_at IS NULL AND revoked_at IS NULL"
    ))
    .await
}

/// Is this token neither spent nor revoked? (Read directly, so that probing has no side effects: a
/// token superseded by a grace retry would, rightly, revoke its family when presented.)
async fn is_live(raw: &Raw, hash: &TokenHash) -> bool {
    let hex = hex::encode(hash.as_bytes());
    let literal = match raw {
        Raw::Sqlite(_) => format!("X'{hex}'"),
        Raw::Postgres { .. } => format!("'\\x{hex}'::bytea"),
    };
    raw.scalar(&format!(
        "SELECT COUNT(*) FROM refresh_tokens WHERE token_hash = {literal} AND spent_at IS NULL AND revoked_at IS NULL"
    ))
    .await
        == 1
}

/// The candidates that are live, in order.
async fn live_candidates(raw: &Raw, candidates: Vec<TokenHash>) -> Vec<TokenHash> {
    let mut live = Vec::new();
    for c in candidates {
        if is_live(raw, &c).await {
            live.push(c);
        }
    }
    live
}

/// Tries every candidate in turn; returns how many still rotated. Two live tokens in one family would
/// both rotate here (none of them is spent, so no attempt can revoke the family).
async fn how_many_rotate(s: &Store, candidates: &[TokenHash], now: Millis, grace_ms: i64) -> usize {
    let mut n = 0;
    for hash in candidates {
        match s
            .rotate(hash, now, grace_ms, &next_token())
            .await
            .expect("rotate")
        {
            Rotation::Rotated { .. } => n += 1,
            Rotation::Invalid => {}
            Rotation::Reused { .. } => panic!("a never-spent successor was reported as reused"),
        }
    }
    n
}

async fn concurrent_rotations_of_one_token_have_exactly_one_winner(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    for round in 0..20 {
        let (f, first) = family(s, &uid).await;
        let now = T0.plus_millis(1_000 + round);
        let outcomes = race(s, vec![first.hash.clone(); RACERS], now, 0).await;
        let (rotated, reused, invalid) = tally(&outcomes);
        assert_eq!(
            (rotated, reused, invalid),
            (1, RACERS - 1, 0),
            "round {round}: {:?}",
            outcomes.iter().map(|(r, _)| kind(r)).collect::<Vec<_>>()
        );
        for (r, _) in &outcomes {
            if let Rotation::Reused { family_id, user_id } = r {
                assert_eq!(
                    (family_id.as_str(), user_id.as_str()),
                    (f.id.as_str(), uid.as_str())
                );
            }
        }
        // Exactly one successor was stored, and the reuse that followed killed it with its family.
        let stored = t
            .raw
            .scalar(&format!(
                "SELECT COUNT(*) FROM refresh_tokens WHERE family_id = '{}'",
                f.id
            ))
            .await;
        assert_eq!(
            stored, 2,
            "round {round}: the presented token and one successor"
        );
        assert_eq!(live_tokens(&t.raw, f.id.as_str()).await, 0, "round {round}");
        let winners: Vec<TokenHash> = outcomes
            .iter()
            .filter(|(r, _)| kind(r) == "Rotated")
            .map(|(_, n)| n.hash.clone())
            .collect();
        assert_eq!(
            how_many_rotate(s, &winners, now.plus_millis(1), 0).await,
            0,
            "round {round}"
        );
    }
}

async fn concurrent_grace_retries_never_leave_two_live_tokens(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let grace = 60_000;
    for round in 0..10 {
        let (f, first) = family(s, &uid).await;
        let now = T0.plus_millis(1_000 + round);
        let child = next_token();
        expect_rotated(s, &first.hash, now, grace, &child).await;

        // The client lost the response and retries from many places at once.
        let outcomes = race(
            s,
            vec![first.hash.clone(); RACERS],
            now.plus_millis(10),
            grace,
        )
        .await;
        let (rotated, reused, invalid) = tally(&outcomes);
        assert_eq!(
            rotated + reused,
            RACERS,
            "round {round}: no retry may be Invalid"
        );
        assert_eq!(invalid, 0);

        let live = live_tokens(&t.raw, f.id.as_str()).await;
        assert!(
            live <= 1,
            "round {round}: {live} live tokens after {rotated} grace rotations"
        );
        if reused == 0 {
            assert_eq!(
                live, 1,
                "round {round}: without reuse detection the last retry's token is live"
            );
        }

        let mut candidates = vec![child.hash.clone()];
        candidates.extend(
            outcomes
                .iter()
                .filter(|(r, _)| kind(r) == "Rotated")
                .map(|(_, n)| n.hash.clone()),
        );
        let candidates = live_candidates(&t.raw, candidates).await;
        let usable = how_many_rotate(s, &candidates, now.plus_millis(20), grace).await;
        assert!(
            usable <= 1,
            "round {round}: {usable} tokens of one family still rotate"
        );
        assert_eq!(usable as i64, live, "round {round}");
    }
}

async fn concurrent_grace_retries_and_child_use_never_leave_two_live_tokens(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let grace = 60_000;
    for round in 0..10 {
        let (f, first) = family(s, &uid).await;
        let now = T0.plus_millis(1_000 + round);
        let child = next_token();
        expect_rotated(s, &first.hash, now, grace, &child).await;

        // Half the racers retry with the parent, half use the child.
        let mut presented = vec![first.hash.clone(); RACERS / 2];
        presented.extend(vec![child.hash.clone(); RACERS / 2]);
        let outcomes = race(s, presented, now.plus_millis(10), grace).await;

        let live = live_tokens(&t.raw, f.id.as_str()).await;
        assert!(
            live <= 1,
            "round {round}: {live} live tokens; outcomes {:?}",
            outcomes.iter().map(|(r, _)| kind(r)).collect::<Vec<_>>()
        );

        // The child is spent or revoked by now (presenting a spent child again would rightly be reuse),
        // so probe only the successors handed out during the race.
        let candidates: Vec<TokenHash> = outcomes
            .iter()
            .filter(|(r, _)| kind(r) == "Rotated")
            .map(|(_, n)| n.hash.clone())
            .collect();
        let candidates = live_candidates(&t.raw, candidates).await;
        let usable = how_many_rotate(s, &candidates, now.plus_millis(20), grace).await;
        assert!(
            usable <= 1,
            "round {round}: {usable} tokens of one family still rotate"
        );
        assert_eq!(usable as i64, live, "round {round}");
    }
}

/// Many families rotating at once (on SQLite they are settled together, in one batch): every one
/// rotates, each successor belongs to its own family, and each successor rotates again.
async fn concurrent_rotations_of_different_tokens_all_succeed(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let mut families = Vec::new();
    for _ in 0..40 {
        families.push(family(s, &uid).await);
    }
    let now = T0.plus_millis(1_000);
    let outcomes = race(
        s,
        families
            .iter()
            .map(|(_, first)| first.hash.clone())
            .collect(),
        now,
        0,
    )
    .await;
    assert_eq!(tally(&outcomes), (40, 0, 0));
    for (f, _) in &families {
        let stored = t
            .raw
            .scalar(&format!(
                "SELECT COUNT(*) FROM refresh_tokens WHERE family_id = '{}'",
                f.id
            ))
            .await;
        assert_eq!(stored, 2, "each family got exactly its own successor");
        assert_eq!(live_tokens(&t.raw, f.id.as_str()).await, 1);
    }
    // Each answer names the family of the token its request presented (a batch that swapped
    // successors between families would not), and each successor rotates within that family.
    for ((f, _), (r, next)) in families.iter().zip(&outcomes) {
        let Rotation::Rotated { family, .. } = r else {
            unreachable!()
        };
        assert_eq!(
            family.id,
            f.id.as_str(),
            "answered with another request's family"
        );
        let Rotation::Rotated { family: again, .. } =
            expect_rotated_family(s, &next.hash, now.plus_millis(1)).await
        else {
            unreachable!()
        };
        assert_eq!(
            again.id,
            f.id.as_str(),
            "the successor was stored in another family"
        );
    }
}

async fn expect_rotated_family(s: &Store, hash: &TokenHash, now: Millis) -> Rotation {
    let r = s.rotate(hash, now, 0, &next_token()).await.expect("rotate");
    assert_eq!(kind(&r), "Rotated");
    r
}

/// Well-formed tokens we never issued, presented in the same moment as real ones: they are `Invalid`,
/// and every real one still rotates.
async fn made_up_tokens_among_real_ones_are_invalid_and_harm_nothing(t: Ctx) {
    let s = &t.store;
    let uid = user(s).await;
    let mut presented = Vec::new();
    for _ in 0..20 {
        presented.push(family(s, &uid).await.1.hash);
        presented.push(random_hash());
    }
    let outcomes = race(s, presented, T0.plus_millis(1_000), 0).await;
    assert_eq!(tally(&outcomes), (20, 0, 20));
}
