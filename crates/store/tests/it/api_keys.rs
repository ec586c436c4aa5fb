use std::collections::BTreeSet;
use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::ids::{KeyId, UserId};
use portcullis_core::scopes::Scopes;
use portcullis_core::secrets::TokenHash;
use portcullis_store::{
    ApiKeyPatch, ApiKeyRow, ApiKeyStore, KeyOwner, RolledKey, Spend, Store, StoreError,
};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::support::{Ctx, DAY, HOUR, T0, backend_tests, random_hash, user_id};

backend_tests!(
    insert_and_lookup_by_hash,
    duplicate_hash_is_a_conflict,
    count_api_keys_counts,
    lookup_by_id,
    list_by_owner_in_creation_order,
    list_pages_with_after_and_limit,
    update_changes_only_the_patched_field,
    update_of_revoked_or_unknown_key_is_none,
    spend_unlimited_key,
    spend_counts_down_to_exhausted,
    spend_of_revoked_or_unknown_key_is_exhausted,
    concurrent_spends_never_overspend,
    revoke_returns_the_hash_once,
    revoke_takes_keys_rolled_into_it,
    roll_copies_the_old_key,
    roll_happens_once,
    roll_of_revoked_or_unknown_key_is_not_found,
    roll_chain_repoints_keys_in_grace,
    roll_chain_skips_revoked_keys,
    roll_with_a_taken_hash_changes_nothing,
    concurrent_rolls_of_one_key_have_one_winner,
    touch_records_last_use_never_backwards,
    spending_several_uses_is_all_or_nothing,
    a_patch_reaches_the_keys_in_grace_of_a_roll_into_it,
);

pub fn scopes(raw: &str) -> Scopes {
    Scopes::parse_space_separated(raw).unwrap()
}

pub fn api_key(owner: Option<&UserId>, hash: &TokenHash, at: Millis) -> ApiKeyRow {
    ApiKeyRow {
        id: KeyId::generate(),
        owner_id: owner.cloned(),
        prefix: "pk_".to_owned(),
        start: "pk_abcd".to_owned(),
        key_hash: hash.clone(),
        name: "ci".to_owned(),
        scopes: scopes("users:read users:write"),
        meta: None,
        owner_meta: None,
        created_at: at,
        updated_at: at,
        expires_at: None,
        revoked_at: None,
        remaining: None,
        ratelimit_limit: None,
        ratelimit_duration_ms: None,
        last_used_at: None,
        rolled_to: None,
        grace_until: None,
        ratelimit_bucket: None,
    }
}

async fn insert_and_lookup_by_hash(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;

    let root_hash = random_hash();
    let root = api_key(None, &root_hash, T0);
    s.insert_api_key(&root).await.unwrap();

    let user_hash = random_hash();
    let mut full = api_key(Some(&uid), &user_hash, T0.plus_millis(1));
    full.meta = Some(r#"{"team":"infra"}"#.to_owned());
    full.expires_at = Some(T0 + 86_400_000);
    full.remaining = Some(1_000);
    full.ratelimit_limit = Some(10);
    full.ratelimit_duration_ms = Some(60_000);
    full.last_used_at = Some(T0 + 2);
    full.rolled_to = Some(KeyId::generate());
    full.grace_until = Some(T0 + 3);
    full.revoked_at = Some(T0 + 4);
    s.insert_api_key(&full).await.unwrap();

    let got = s
        .api_key_by_hash(&root_hash)
        .await
        .unwrap()
        .expect("root key");
    assert_eq!(got.id, root.id);
    assert_eq!(got.owner_id, None);
    assert_eq!(got.key_hash, root_hash);
    assert_eq!(
        (got.prefix.as_str(), got.start.as_str(), got.name.as_str()),
        ("pk_", "pk_abcd", "ci")
    );
    assert_eq!(got.scopes, scopes("users:read users:write"));
    assert_eq!((got.created_at, got.updated_at), (T0, T0));
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
    assert_eq!(got.owner_id.as_ref(), Some(&uid));
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

// ---------------------------------------------------------------------------------------------------
// Helpers

/// Inserts a plain key (`api_key` with a fresh hash, created at `T0`); returns it.
async fn insert(s: &Store, owner: Option<&UserId>) -> ApiKeyRow {
    let k = api_key(owner, &random_hash(), T0);
    s.insert_api_key(&k).await.unwrap();
    k
}

/// A key with every optional setting set (but not revoked, rolled or used).
fn full_key(owner: Option<&UserId>) -> ApiKeyRow {
    let mut k = api_key(owner, &random_hash(), T0);
    k.meta = Some(r#"{"team":"infra"}"#.to_owned());
    k.owner_meta = Some(r#"{"note":"mine"}"#.to_owned());
    k.ratelimit_bucket = Some(KeyId::generate());
    k.expires_at = Some(T0 + 30 * DAY);
    k.remaining = Some(50);
    k.ratelimit_limit = Some(10);
    k.ratelimit_duration_ms = Some(60_000);
    k.last_used_at = Some(T0 + 1);
    k
}

async fn by_id(s: &Store, id: &KeyId) -> ApiKeyRow {
    s.api_key_by_id(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("key {id} not found"))
}

/// Compares every column, naming the first that differs.
#[track_caller]
fn assert_row(got: &ApiKeyRow, want: &ApiKeyRow, what: &str) {
    macro_rules! fields {
        ($($f:ident),*) => {
            $(assert_eq!(got.$f, want.$f, "{what}: column `{}`", stringify!($f));)*
        };
    }
    fields!(
        id,
        owner_id,
        prefix,
        start,
        key_hash,
        name,
        scopes,
        meta,
        created_at,
        updated_at,
        expires_at,
        revoked_at,
        remaining,
        ratelimit_limit,
        ratelimit_duration_ms,
        last_used_at,
        rolled_to,
        grace_until,
        owner_meta,
        ratelimit_bucket
    );
}

fn ids(rows: &[ApiKeyRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

fn hash_set(hashes: &[TokenHash]) -> BTreeSet<TokenHash> {
    hashes.iter().cloned().collect()
}

fn rolled_key() -> RolledKey {
    RolledKey {
        id: KeyId::generate(),
        start: "pk_wxyz".to_owned(),
        key_hash: random_hash(),
    }
}

// ---------------------------------------------------------------------------------------------------
// Lookup and listing

async fn lookup_by_id(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;
    let mut k = full_key(Some(&uid));
    k.revoked_at = Some(T0 + 5);
    k.rolled_to = Some(KeyId::generate());
    k.grace_until = Some(T0 + 6);
    s.insert_api_key(&k).await.unwrap();
    let other = insert(s, None).await;

    assert_row(&by_id(s, &k.id).await, &k, "full key");
    assert_row(&by_id(s, &other.id).await, &other, "plain key");
    assert!(s.api_key_by_id(&KeyId::generate()).await.unwrap().is_none());
}

/// Seven keys of three owners, created (ids generated) in order but inserted in reverse, so only an
/// ordering by id can list them in creation order.
async fn seed_owners(s: &Store) -> (UserId, UserId, Vec<ApiKeyRow>) {
    let u1 = user_id(s).await;
    let u2 = user_id(s).await;
    let owners = [
        Some(&u1),
        None,
        Some(&u2),
        Some(&u1),
        None,
        Some(&u2),
        Some(&u1),
    ];
    let keys: Vec<ApiKeyRow> = owners
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut k = api_key(*o, &random_hash(), T0.plus_millis(i as i64));
            k.name = format!("key{i}");
            k
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0].id < w[1].id),
        "precondition: KeyId::generate() makes increasing ids"
    );
    for k in keys.iter().rev() {
        s.insert_api_key(k).await.unwrap();
    }
    (u1, u2, keys)
}

async fn list_by_owner_in_creation_order(t: Ctx) {
    let s = &t.store;
    let (u1, u2, keys) = seed_owners(s).await;
    let want = |pred: &dyn Fn(&ApiKeyRow) -> bool| -> Vec<&str> {
        keys.iter()
            .filter(|k| pred(k))
            .map(|k| k.id.as_str())
            .collect()
    };

    let got = s
        .list_api_keys(KeyOwner::User(&u1), None, 100)
        .await
        .unwrap();
    assert_eq!(ids(&got), want(&|k| k.owner_id.as_ref() == Some(&u1)));
    assert_eq!(got.len(), 3);
    for (g, k) in got
        .iter()
        .zip(keys.iter().filter(|k| k.owner_id.as_ref() == Some(&u1)))
    {
        assert_row(g, k, "listed user key");
    }

    let got = s
        .list_api_keys(KeyOwner::User(&u2), None, 100)
        .await
        .unwrap();
    assert_eq!(ids(&got), want(&|k| k.owner_id.as_ref() == Some(&u2)));
    assert_eq!(got.len(), 2);

    let got = s.list_api_keys(KeyOwner::Nobody, None, 100).await.unwrap();
    assert_eq!(ids(&got), want(&|k| k.owner_id.is_none()));
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|k| k.owner_id.is_none()));

    let got = s.list_api_keys(KeyOwner::All, None, 100).await.unwrap();
    assert_eq!(ids(&got), want(&|_| true));
    assert_eq!(got.len(), 7);

    let stranger = user_id(s).await;
    assert!(
        s.list_api_keys(KeyOwner::User(&stranger), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Pages through a listing `limit` at a time, each page starting after the last id of the previous.
async fn pages(s: &Store, owner: KeyOwner<'_>, limit: i64) -> Vec<Vec<KeyId>> {
    let mut out = Vec::new();
    let mut after: Option<KeyId> = None;
    loop {
        let page = s.list_api_keys(owner, after.as_ref(), limit).await.unwrap();
        assert!(page.len() as i64 <= limit, "page longer than the limit");
        if page.is_empty() {
            return out;
        }
        after = page.last().map(|k| k.id.clone());
        out.push(page.into_iter().map(|k| k.id).collect());
        assert!(out.len() <= 10, "paging does not end");
    }
}

async fn list_pages_with_after_and_limit(t: Ctx) {
    let s = &t.store;
    let (u1, _, keys) = seed_owners(s).await;
    let all: Vec<KeyId> = keys.iter().map(|k| k.id.clone()).collect();
    let of = |idx: &[usize]| -> Vec<KeyId> { idx.iter().map(|&i| all[i].clone()).collect() };

    assert_eq!(
        pages(s, KeyOwner::All, 3).await,
        vec![of(&[0, 1, 2]), of(&[3, 4, 5]), of(&[6])]
    );
    assert_eq!(
        pages(s, KeyOwner::All, 7).await,
        vec![of(&[0, 1, 2, 3, 4, 5, 6])]
    );
    assert_eq!(
        pages(s, KeyOwner::User(&u1), 2).await,
        vec![of(&[0, 3]), of(&[6])]
    );
    assert_eq!(
        pages(s, KeyOwner::Nobody, 1).await,
        vec![of(&[1]), of(&[4])]
    );

    // `after` need not be a key of the listing: it is a position in creation order.
    let got = s
        .list_api_keys(KeyOwner::User(&u1), Some(&all[1]), 100)
        .await
        .unwrap();
    assert_eq!(ids(&got), vec![all[3].as_str(), all[6].as_str()]);
    let got = s
        .list_api_keys(KeyOwner::All, Some(&all[6]), 100)
        .await
        .unwrap();
    assert!(got.is_empty());
    let got = s.list_api_keys(KeyOwner::All, None, 0).await.unwrap();
    assert!(got.is_empty(), "limit 0 lists nothing");
}

// ---------------------------------------------------------------------------------------------------
// Updates

async fn update_changes_only_the_patched_field(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;
    type Case = (&'static str, ApiKeyPatch, fn(&mut ApiKeyRow));
    let cases: Vec<Case> = vec![
        ("nothing", ApiKeyPatch::default(), |_| {}),
        (
            "name",
            ApiKeyPatch {
                name: Some("renamed".to_owned()),
                ..Default::default()
            },
            |k| k.name = "renamed".to_owned(),
        ),
        (
            "scopes",
            ApiKeyPatch {
                scopes: Some(scopes("users:read")),
                ..Default::default()
            },
            |k| k.scopes = scopes("users:read"),
        ),
        (
            "meta set",
            ApiKeyPatch {
                meta: Some(Some(r#"{"env":"prod"}"#.to_owned())),
                ..Default::default()
            },
            |k| k.meta = Some(r#"{"env":"prod"}"#.to_owned()),
        ),
        (
            "meta cleared",
            ApiKeyPatch {
                meta: Some(None),
                ..Default::default()
            },
            |k| k.meta = None,
        ),
        (
            "owner_meta set",
            ApiKeyPatch {
                owner_meta: Some(Some(r#"{"mine":1}"#.to_owned())),
                ..Default::default()
            },
            |k| k.owner_meta = Some(r#"{"mine":1}"#.to_owned()),
        ),
        (
            "owner_meta cleared",
            ApiKeyPatch {
                owner_meta: Some(None),
                ..Default::default()
            },
            |k| k.owner_meta = None,
        ),
        (
            "expires_at set",
            ApiKeyPatch {
                expires_at: Some(Some(T0 + 7 * DAY)),
                ..Default::default()
            },
            |k| k.expires_at = Some(T0 + 7 * DAY),
        ),
        (
            "expires_at cleared",
            ApiKeyPatch {
                expires_at: Some(None),
                ..Default::default()
            },
            |k| k.expires_at = None,
        ),
        (
            "remaining set",
            ApiKeyPatch {
                remaining: Some(Some(3)),
                ..Default::default()
            },
            |k| k.remaining = Some(3),
        ),
        (
            "remaining set to 0",
            ApiKeyPatch {
                remaining: Some(Some(0)),
                ..Default::default()
            },
            |k| k.remaining = Some(0),
        ),
        (
            "remaining cleared",
            ApiKeyPatch {
                remaining: Some(None),
                ..Default::default()
            },
            |k| k.remaining = None,
        ),
        (
            "ratelimit set",
            ApiKeyPatch {
                ratelimit: Some(Some((5, 1_000))),
                ..Default::default()
            },
            |k| {
                k.ratelimit_limit = Some(5);
                k.ratelimit_duration_ms = Some(1_000);
            },
        ),
        (
            "ratelimit cleared",
            ApiKeyPatch {
                ratelimit: Some(None),
                ..Default::default()
            },
            |k| {
                k.ratelimit_limit = None;
                k.ratelimit_duration_ms = None;
            },
        ),
    ];

    let bystander = full_key(Some(&uid));
    s.insert_api_key(&bystander).await.unwrap();
    let mut now = T0 + 1_000;
    // Each case on a key with every setting set, and on one with none (setting from NULL).
    for (label, patch, apply) in &cases {
        for (base_label, base) in [
            ("full", full_key(Some(&uid))),
            ("bare", api_key(None, &random_hash(), T0)),
        ] {
            let what = format!("patch {label} on {base_label} key");
            s.insert_api_key(&base).await.unwrap();
            now = now + 1;
            let got = s
                .update_api_key(&base.id, patch, now)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: key not found"))
                .0;
            let mut want = base.clone();
            apply(&mut want);
            want.updated_at = now;
            assert_row(&got, &want, &what);
            assert_row(
                &by_id(s, &base.id).await,
                &want,
                &format!("{what} (stored)"),
            );
        }
    }
    assert_row(&by_id(s, &bystander.id).await, &bystander, "bystander");

    // Several fields at once.
    let k = full_key(None);
    s.insert_api_key(&k).await.unwrap();
    let patch = ApiKeyPatch {
        name: Some("both".to_owned()),
        remaining: Some(Some(9)),
        ratelimit: Some(Some((1, 2))),
        ..Default::default()
    };
    let got = s
        .update_api_key(&k.id, &patch, now + 1)
        .await
        .unwrap()
        .unwrap()
        .0;
    let mut want = k.clone();
    want.name = "both".to_owned();
    want.remaining = Some(9);
    want.ratelimit_limit = Some(1);
    want.ratelimit_duration_ms = Some(2);
    want.updated_at = now + 1;
    assert_row(&got, &want, "combined patch");
}

async fn update_of_revoked_or_unknown_key_is_none(t: Ctx) {
    let s = &t.store;
    let k = insert(s, None).await;
    assert_eq!(s.revoke_api_key(&k.id, T0 + 10).await.unwrap().len(), 1);
    let before = by_id(s, &k.id).await;
    let patch = ApiKeyPatch {
        name: Some("nope".to_owned()),
        remaining: Some(Some(100)),
        ..Default::default()
    };
    assert!(
        s.update_api_key(&k.id, &patch, T0 + 20)
            .await
            .unwrap()
            .is_none()
    );
    assert_row(&by_id(s, &k.id).await, &before, "revoked key untouched");
    assert!(
        s.update_api_key(&KeyId::generate(), &patch, T0 + 20)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.count_api_keys().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------------
// Spending

async fn spend_unlimited_key(t: Ctx) {
    let s = &t.store;
    let k = insert(s, None).await;
    for _ in 0..3 {
        assert_eq!(s.spend_api_key(&k.id, 1).await.unwrap(), Spend::Spent(None));
    }
    assert_row(&by_id(s, &k.id).await, &k, "unlimited key unchanged");
}

async fn spend_counts_down_to_exhausted(t: Ctx) {
    let s = &t.store;
    let mut k = api_key(None, &random_hash(), T0);
    k.remaining = Some(2);
    s.insert_api_key(&k).await.unwrap();
    let other = full_key(None);
    s.insert_api_key(&other).await.unwrap();

    assert_eq!(
        s.spend_api_key(&k.id, 1).await.unwrap(),
        Spend::Spent(Some(1))
    );
    assert_eq!(by_id(s, &k.id).await.remaining, Some(1));
    assert_eq!(
        s.spend_api_key(&k.id, 1).await.unwrap(),
        Spend::Spent(Some(0))
    );
    assert_eq!(s.spend_api_key(&k.id, 1).await.unwrap(), Spend::Exhausted);
    assert_eq!(s.spend_api_key(&k.id, 1).await.unwrap(), Spend::Exhausted);
    let mut want = k.clone();
    want.remaining = Some(0);
    assert_row(&by_id(s, &k.id).await, &want, "exhausted key");
    assert_row(&by_id(s, &other.id).await, &other, "other key");

    let mut zero = api_key(None, &random_hash(), T0);
    zero.remaining = Some(0);
    s.insert_api_key(&zero).await.unwrap();
    assert_eq!(
        s.spend_api_key(&zero.id, 1).await.unwrap(),
        Spend::Exhausted
    );
    assert_eq!(by_id(s, &zero.id).await.remaining, Some(0));
}

async fn spend_of_revoked_or_unknown_key_is_exhausted(t: Ctx) {
    let s = &t.store;
    let mut limited = api_key(None, &random_hash(), T0);
    limited.remaining = Some(5);
    s.insert_api_key(&limited).await.unwrap();
    let unlimited = insert(s, None).await;
    for k in [&limited, &unlimited] {
        s.revoke_api_key(&k.id, T0 + 1).await.unwrap();
        assert_eq!(s.spend_api_key(&k.id, 1).await.unwrap(), Spend::Exhausted);
    }
    assert_eq!(by_id(s, &limited.id).await.remaining, Some(5));
    assert_eq!(by_id(s, &unlimited.id).await.remaining, None);
    assert_eq!(
        s.spend_api_key(&KeyId::generate(), 1).await.unwrap(),
        Spend::Exhausted
    );
}

const SPENDERS: usize = 40;
const USES: i64 = 7;

async fn concurrent_spends_never_overspend(t: Ctx) {
    let s = &t.store;
    for round in 0..5 {
        let mut k = api_key(None, &random_hash(), T0);
        k.remaining = Some(USES);
        s.insert_api_key(&k).await.unwrap();

        let barrier = Arc::new(Barrier::new(SPENDERS));
        let mut tasks = JoinSet::new();
        for _ in 0..SPENDERS {
            let s = s.clone();
            let id = k.id.clone();
            let barrier = barrier.clone();
            tasks.spawn(async move {
                barrier.wait().await;
                s.spend_api_key(&id, 1)
                    .await
                    .expect("spend must not fail under contention")
            });
        }
        let mut left = Vec::new();
        let mut exhausted = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("spender panicked") {
                Spend::Spent(Some(n)) => left.push(n),
                Spend::Spent(None) => panic!("round {round}: a limited key spent as unlimited"),
                Spend::Exhausted => exhausted += 1,
            }
        }
        left.sort_unstable();
        assert_eq!(
            (left.len(), exhausted),
            (USES as usize, SPENDERS - USES as usize),
            "round {round}: {left:?}"
        );
        // Each use was handed out once: the counts left are exactly 0..k.
        assert_eq!(left, (0..USES).collect::<Vec<_>>(), "round {round}");
        assert_eq!(by_id(s, &k.id).await.remaining, Some(0), "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Revoking

async fn revoke_returns_the_hash_once(t: Ctx) {
    let s = &t.store;
    let k = full_key(None);
    s.insert_api_key(&k).await.unwrap();
    let bystander = insert(s, None).await;

    let now = T0 + 5_000;
    assert_eq!(
        s.revoke_api_key(&k.id, now).await.unwrap(),
        vec![k.key_hash.clone()]
    );
    let mut want = k.clone();
    want.revoked_at = Some(now);
    want.updated_at = now;
    assert_row(&by_id(s, &k.id).await, &want, "revoked key");

    assert!(s.revoke_api_key(&k.id, now + 1).await.unwrap().is_empty());
    assert_row(
        &by_id(s, &k.id).await,
        &want,
        "revoked twice: the first time stands",
    );

    assert!(
        s.revoke_api_key(&KeyId::generate(), now)
            .await
            .unwrap()
            .is_empty()
    );
    assert_row(&by_id(s, &bystander.id).await, &bystander, "bystander");
}

async fn revoke_takes_keys_rolled_into_it(t: Ctx) {
    let s = &t.store;
    let a = insert(s, None).await;
    let b = rolled_key();
    s.roll_api_key(&a.id, &b, T0 + HOUR, T0 + 10).await.unwrap();
    let unrelated = insert(s, None).await;

    // Revoking the old key of a roll leaves the new one alone.
    let a2 = insert(s, None).await;
    let b2 = rolled_key();
    s.roll_api_key(&a2.id, &b2, T0 + HOUR, T0 + 10)
        .await
        .unwrap();
    assert_eq!(
        s.revoke_api_key(&a2.id, T0 + 15).await.unwrap(),
        vec![a2.key_hash.clone()]
    );
    assert_eq!(by_id(s, &b2.id).await.revoked_at, None);

    // Revoking the new key takes the old one, still in grace, with it.
    let now = T0 + 20;
    let got = s.revoke_api_key(&b.id, now).await.unwrap();
    assert_eq!(got.len(), 2, "both hashes, once each");
    assert_eq!(
        hash_set(&got),
        hash_set(&[a.key_hash.clone(), b.key_hash.clone()])
    );
    for id in [&a.id, &b.id] {
        let r = by_id(s, id).await;
        assert_eq!((r.revoked_at, r.updated_at), (Some(now), now), "{id}");
    }
    assert_eq!(s.spend_api_key(&b.id, 1).await.unwrap(), Spend::Exhausted);
    assert_eq!(by_id(s, &unrelated.id).await.revoked_at, None);
    assert!(s.revoke_api_key(&b.id, now + 1).await.unwrap().is_empty());

    // A chain: revoking the newest takes every key rolled into it.
    let c0 = insert(s, None).await;
    let c1 = rolled_key();
    let c2 = rolled_key();
    s.roll_api_key(&c0.id, &c1, T0 + HOUR, T0 + 30)
        .await
        .unwrap();
    s.roll_api_key(&c1.id, &c2, T0 + HOUR, T0 + 31)
        .await
        .unwrap();
    let got = s.revoke_api_key(&c2.id, T0 + 40).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(
        hash_set(&got),
        hash_set(&[
            c0.key_hash.clone(),
            c1.key_hash.clone(),
            c2.key_hash.clone()
        ])
    );
}

// ---------------------------------------------------------------------------------------------------
// Rolling

async fn roll_copies_the_old_key(t: Ctx) {
    let s = &t.store;
    let uid = user_id(s).await;
    let old = full_key(Some(&uid));
    s.insert_api_key(&old).await.unwrap();
    let bystander = full_key(Some(&uid));
    s.insert_api_key(&bystander).await.unwrap();

    let new_hash = random_hash();
    let new = RolledKey {
        key_hash: new_hash.clone(),
        ..rolled_key()
    };
    let now = T0 + 1_000;
    let grace = now + HOUR;
    let (row, hashes) = s.roll_api_key(&old.id, &new, grace, now).await.unwrap();
    assert_eq!(hashes, vec![old.key_hash.clone()]);

    let want_new = ApiKeyRow {
        id: new.id.clone(),
        start: new.start.clone(),
        key_hash: new.key_hash.clone(),
        created_at: now,
        updated_at: now,
        revoked_at: None,
        last_used_at: None,
        rolled_to: None,
        grace_until: None,
        ..old.clone()
    };
    assert_row(&row, &want_new, "returned new key");
    assert_row(&by_id(s, &new.id).await, &want_new, "stored new key");
    let by_hash = s
        .api_key_by_hash(&new_hash)
        .await
        .unwrap()
        .expect("new key by hash");
    assert_eq!(by_hash.id, new.id);
    assert_eq!(row.counter_id(), &new.id);

    let mut want_old = old.clone();
    want_old.rolled_to = Some(new.id.clone());
    want_old.grace_until = Some(grace);
    want_old.updated_at = now;
    let stored_old = by_id(s, &old.id).await;
    assert_row(&stored_old, &want_old, "old key");
    assert_eq!(stored_old.counter_id(), &new.id);
    assert_row(&by_id(s, &bystander.id).await, &bystander, "bystander");
    assert_eq!(s.count_api_keys().await.unwrap(), 3);
}

async fn roll_happens_once(t: Ctx) {
    let s = &t.store;
    let old = insert(s, None).await;
    let first = rolled_key();
    s.roll_api_key(&old.id, &first, T0 + HOUR, T0 + 10)
        .await
        .unwrap();
    let after_first = by_id(s, &old.id).await;

    let second = rolled_key();
    match s
        .roll_api_key(&old.id, &second, T0 + 2 * HOUR, T0 + 20)
        .await
    {
        Err(StoreError::NotFound) => {}
        other => panic!("second roll of the same key: expected NotFound, got {other:?}"),
    }
    assert_row(
        &by_id(s, &old.id).await,
        &after_first,
        "old key after the refused roll",
    );
    assert!(s.api_key_by_id(&second.id).await.unwrap().is_none());
    assert_eq!(s.count_api_keys().await.unwrap(), 2);
}

async fn roll_of_revoked_or_unknown_key_is_not_found(t: Ctx) {
    let s = &t.store;
    let k = insert(s, None).await;
    s.revoke_api_key(&k.id, T0 + 5).await.unwrap();
    let revoked = by_id(s, &k.id).await;
    let new = rolled_key();
    match s.roll_api_key(&k.id, &new, T0 + HOUR, T0 + 10).await {
        Err(StoreError::NotFound) => {}
        other => panic!("roll of a revoked key: expected NotFound, got {other:?}"),
    }
    assert_row(&by_id(s, &k.id).await, &revoked, "revoked key untouched");
    assert!(s.api_key_by_id(&new.id).await.unwrap().is_none());

    match s
        .roll_api_key(&KeyId::generate(), &new, T0 + HOUR, T0 + 10)
        .await
    {
        Err(StoreError::NotFound) => {}
        other => panic!("roll of an unknown key: expected NotFound, got {other:?}"),
    }
    assert_eq!(s.count_api_keys().await.unwrap(), 1);
}

async fn roll_chain_repoints_keys_in_grace(t: Ctx) {
    let s = &t.store;
    let a = full_key(None);
    s.insert_api_key(&a).await.unwrap();
    let b = rolled_key();
    let c = rolled_key();
    let grace_a = T0 + HOUR;
    s.roll_api_key(&a.id, &b, grace_a, T0 + 10).await.unwrap();
    let (c_row, hashes) = s
        .roll_api_key(&b.id, &c, T0 + 2 * HOUR, T0 + 20)
        .await
        .unwrap();
    assert_eq!(hashes.len(), 2, "A's and B's hashes, once each: {hashes:?}");
    assert_eq!(
        hash_set(&hashes),
        hash_set(&[a.key_hash.clone(), b.key_hash.clone()])
    );

    let a_row = by_id(s, &a.id).await;
    assert_eq!(a_row.rolled_to.as_ref(), Some(&c.id));
    assert_eq!(a_row.counter_id(), &c.id);
    assert_eq!(a_row.grace_until, Some(grace_a), "A keeps its own grace");
    assert_eq!(a_row.updated_at, T0 + 20);
    assert_eq!(a_row.revoked_at, None);

    let b_row = by_id(s, &b.id).await;
    assert_eq!(b_row.rolled_to.as_ref(), Some(&c.id));
    assert_eq!(b_row.grace_until, Some(T0 + 2 * HOUR));
    assert_eq!(b_row.counter_id(), &c.id);

    // C copies A's settings (through B).
    assert_eq!(
        (c_row.meta.as_deref(), c_row.remaining, c_row.expires_at),
        (a.meta.as_deref(), a.remaining, a.expires_at)
    );
    assert_eq!(c_row.counter_id(), &c.id);
    assert_eq!(by_id(s, &c.id).await.rolled_to, None);
    assert_eq!(s.count_api_keys().await.unwrap(), 3);
}

async fn roll_chain_skips_revoked_keys(t: Ctx) {
    let s = &t.store;
    let a = insert(s, None).await;
    let b = rolled_key();
    let c = rolled_key();
    s.roll_api_key(&a.id, &b, T0 + HOUR, T0 + 10).await.unwrap();
    s.revoke_api_key(&a.id, T0 + 15).await.unwrap();
    let a_revoked = by_id(s, &a.id).await;
    let (_, hashes) = s.roll_api_key(&b.id, &c, T0 + HOUR, T0 + 20).await.unwrap();
    assert_eq!(hashes, vec![b.key_hash.clone()]);
    assert_row(
        &by_id(s, &a.id).await,
        &a_revoked,
        "revoked A is not re-pointed",
    );
}

async fn roll_with_a_taken_hash_changes_nothing(t: Ctx) {
    let s = &t.store;
    let old = full_key(None);
    s.insert_api_key(&old).await.unwrap();
    let other = insert(s, None).await;
    let clash = RolledKey {
        key_hash: other.key_hash.clone(),
        ..rolled_key()
    };
    match s.roll_api_key(&old.id, &clash, T0 + HOUR, T0 + 10).await {
        Err(StoreError::Conflict(rule)) => assert_eq!(rule, "api_keys_hash_unique"),
        other => panic!("expected Conflict(api_keys_hash_unique), got {other:?}"),
    }
    // The whole roll was undone: the old key can still be rolled.
    assert_row(
        &by_id(s, &old.id).await,
        &old,
        "old key after a failed roll",
    );
    assert!(s.api_key_by_id(&clash.id).await.unwrap().is_none());
    assert_eq!(s.count_api_keys().await.unwrap(), 2);
    let new = rolled_key();
    s.roll_api_key(&old.id, &new, T0 + HOUR, T0 + 20)
        .await
        .unwrap();
}

const ROLLERS: usize = 16;

async fn concurrent_rolls_of_one_key_have_one_winner(t: Ctx) {
    let s = &t.store;
    for round in 0..5 {
        let old = insert(s, None).await;
        let barrier = Arc::new(Barrier::new(ROLLERS));
        let mut tasks = JoinSet::new();
        for _ in 0..ROLLERS {
            let s = s.clone();
            let id = old.id.clone();
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let new = rolled_key();
                barrier.wait().await;
                let r = s.roll_api_key(&id, &new, T0 + HOUR, T0 + 10).await;
                (r, new)
            });
        }
        let mut winners = Vec::new();
        let mut refused = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("roller panicked") {
                (Ok((row, hashes)), new) => {
                    assert_eq!(row.id, new.id);
                    assert_eq!(hashes, vec![old.key_hash.clone()]);
                    winners.push(new.id);
                }
                (Err(StoreError::NotFound), _) => refused += 1,
                (Err(e), _) => panic!("round {round}: roll failed under contention: {e}"),
            }
        }
        assert_eq!((winners.len(), refused), (1, ROLLERS - 1), "round {round}");
        assert_eq!(
            by_id(s, &old.id).await.rolled_to.as_ref(),
            winners.first(),
            "round {round}"
        );
    }
    assert_eq!(
        s.count_api_keys().await.unwrap(),
        10,
        "one new key per round"
    );
}

// ---------------------------------------------------------------------------------------------------
// Last use

async fn touch_records_last_use_never_backwards(t: Ctx) {
    let s = &t.store;
    let a = insert(s, None).await;
    let b = insert(s, None).await;
    let c = insert(s, None).await;

    s.touch_api_keys(&[]).await.unwrap();
    s.touch_api_keys(&[(a.id.clone(), T0 + 100)]).await.unwrap();
    let mut want_a = a.clone();
    want_a.last_used_at = Some(T0 + 100);
    assert_row(&by_id(s, &a.id).await, &want_a, "touched once");
    assert_eq!(by_id(s, &b.id).await.last_used_at, None);

    // Older times never win, whether in a later batch or later in the same batch.
    s.touch_api_keys(&[(a.id.clone(), T0 + 50)]).await.unwrap();
    assert_eq!(by_id(s, &a.id).await.last_used_at, Some(T0 + 100));
    s.touch_api_keys(&[
        (b.id.clone(), T0 + 300),
        (a.id.clone(), T0 + 200),
        (KeyId::generate(), T0 + 400),
        (b.id.clone(), T0 + 250),
        (c.id.clone(), T0 + 100),
    ])
    .await
    .unwrap();
    assert_eq!(by_id(s, &a.id).await.last_used_at, Some(T0 + 200));
    assert_eq!(by_id(s, &b.id).await.last_used_at, Some(T0 + 300));
    assert_eq!(by_id(s, &c.id).await.last_used_at, Some(T0 + 100));
    // Nothing else changes (updated_at included: a use is not an edit).
    want_a.last_used_at = Some(T0 + 200);
    assert_row(&by_id(s, &a.id).await, &want_a, "touched again");
    assert_eq!(s.count_api_keys().await.unwrap(), 3);
}

async fn spending_several_uses_is_all_or_nothing(t: Ctx) {
    let s = &t.store;
    let mut k = api_key(None, &random_hash(), T0);
    k.remaining = Some(5);
    s.insert_api_key(&k).await.unwrap();
    assert_eq!(
        s.spend_api_key(&k.id, 3).await.unwrap(),
        Spend::Spent(Some(2))
    );
    assert_eq!(s.spend_api_key(&k.id, 3).await.unwrap(), Spend::Exhausted);
    assert_eq!(
        by_id(s, &k.id).await.remaining,
        Some(2),
        "a refused spend takes nothing"
    );
    assert_eq!(
        s.spend_api_key(&k.id, 2).await.unwrap(),
        Spend::Spent(Some(0))
    );
}

async fn a_patch_reaches_the_keys_in_grace_of_a_roll_into_it(t: Ctx) {
    let s = &t.store;
    let old = full_key(None);
    s.insert_api_key(&old).await.unwrap();
    let new_hash = random_hash();
    let new = RolledKey {
        id: KeyId::generate(),
        start: "pk_new".to_owned(),
        key_hash: new_hash.clone(),
    };
    s.roll_api_key(&old.id, &new, T0 + DAY, T0 + 10)
        .await
        .unwrap();
    let bystander = full_key(None);
    s.insert_api_key(&bystander).await.unwrap();
    let patch = ApiKeyPatch {
        name: Some("renamed".to_owned()),
        scopes: Some(scopes("users:read")),
        meta: Some(None),
        owner_meta: Some(Some("{}".to_owned())),
        expires_at: Some(Some(T0 + 2 * DAY)),
        remaining: Some(Some(1)),
        ratelimit: Some(Some((1, 1_000))),
    };
    let (row, hashes) = s
        .update_api_key(&new.id, &patch, T0 + 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.scopes, scopes("users:read"));
    assert_eq!(hashes, vec![old.key_hash.clone()]);
    let mut want = by_id(s, &old.id).await;
    assert_eq!(
        want.scopes,
        scopes("users:read"),
        "the key in grace narrowed with its successor"
    );
    assert_eq!(want.meta, None);
    assert_eq!(want.owner_meta.as_deref(), Some("{}"));
    assert_eq!(want.expires_at, Some(T0 + 2 * DAY));
    assert_eq!(
        (want.ratelimit_limit, want.ratelimit_duration_ms),
        (Some(1), Some(1_000))
    );
    assert_eq!(want.updated_at, T0 + 20, "other nodes see the change");
    // Not its name, not its own (unused) counter.
    assert_eq!(want.name, old.name);
    assert_eq!(want.remaining, old.remaining);
    want = by_id(s, &bystander.id).await;
    assert_row(&want, &bystander, "bystander");
}
