//! Bulk loading (`portcullis-bench --scale`): rows land as given, across statement and transaction
//! boundaries, and a wrong table, column or row width is refused before anything is written.

use portcullis_core::clock::Millis;
use portcullis_core::ids::UserId;
use portcullis_store::UserStore;
use portcullis_store::bulk::Cell;

use crate::support::{Ctx, backend_tests};

backend_tests!(
    bulk_rows_are_stored_as_given,
    bulk_refuses_what_it_does_not_load,
    explain_takes_one_statement
);

const USER_COLUMNS: [&str; 6] = [
    "id",
    "email",
    "email_key",
    "roles",
    "created_at",
    "updated_at",
];

fn user_row(i: usize, at: Millis) -> (UserId, Vec<Cell>) {
    let id = UserId::generate();
    let email = format!("bulk-{i}@example.test");
    let row = vec![
        Cell::Text(Some(id.as_str().to_owned())),
        Cell::Text(Some(email.clone())),
        Cell::Text(Some(email)),
        Cell::Text(Some(String::new())),
        Cell::Int(Some(at.0)),
        Cell::Int(Some(at.0)),
    ];
    (id, row)
}

async fn bulk_rows_are_stored_as_given(t: Ctx) {
    let s = &t.store;
    let at = Millis(1_700_000_000_000);
    // More than one statement's worth (30,000 binds / 6 columns) and more than one transaction.
    let (ids, rows): (Vec<UserId>, Vec<Vec<Cell>>) = (0..45_000).map(|i| user_row(i, at)).unzip();
    assert_eq!(
        s.bulk_insert("users", &USER_COLUMNS, &rows).await.unwrap(),
        45_000
    );
    s.bulk_done().await.unwrap();
    assert_eq!(s.count_users().await.unwrap(), 45_000);
    let last = s.user_by_id(ids[44_999].as_str()).await.unwrap().unwrap();
    assert_eq!(last.email, "bulk-44999@example.test");
    assert_eq!((last.created_at, last.password_hash), (at.0, None));
    let (counts, bytes) = s.bulk_counts().await.unwrap();
    assert!(counts.contains(&("users", 45_000)), "{counts:?}");
    assert!(bytes > 0);
    // A unique rule still holds: the same email key again fails.
    let (_, again) = user_row(7, at);
    assert!(
        s.bulk_insert("users", &USER_COLUMNS, &[again])
            .await
            .is_err()
    );
    assert_eq!(s.count_users().await.unwrap(), 45_000);
}

async fn bulk_refuses_what_it_does_not_load(t: Ctx) {
    let s = &t.store;
    let at = Millis(1_700_000_000_000);
    let (_, row) = user_row(0, at);
    let refused = [
        s.bulk_insert("signing_keys", &USER_COLUMNS, std::slice::from_ref(&row))
            .await,
        s.bulk_insert(
            "users; DROP TABLE users",
            &USER_COLUMNS,
            std::slice::from_ref(&row),
        )
        .await,
        s.bulk_insert(
            "users",
            &[
                "id",
                "email",
                "email_key",
                "roles",
                "created_at",
                "disabled_at",
            ],
            std::slice::from_ref(&row),
        )
        .await,
        s.bulk_insert("users", &USER_COLUMNS[..5], std::slice::from_ref(&row))
            .await,
        s.bulk_insert("users", &[], &[]).await,
    ];
    for r in refused {
        assert!(
            matches!(r, Err(portcullis_store::StoreError::Invalid(_))),
            "{r:?}"
        );
    }
    assert_eq!(s.count_users().await.unwrap(), 0);
}

async fn explain_takes_one_statement(t: Ctx) {
    let s = &t.store;
    let plan = s
        .explain(
            "SELECT id FROM users WHERE email_key = $1",
            &[Cell::Text(Some("a@b.test".into()))],
        )
        .await
        .unwrap();
    assert!(!plan.is_empty());
    assert!(plan.join(" ").to_lowercase().contains("users"), "{plan:?}");
    let refused = s.explain("SELECT 1; DELETE FROM users", &[]).await;
    assert!(matches!(
        refused,
        Err(portcullis_store::StoreError::Invalid(_))
    ));
}
