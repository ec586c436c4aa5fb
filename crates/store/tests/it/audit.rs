use portcullis_core::clock::Millis;
use portcullis_core::ids::EventId;
use portcullis_store::{AuditEvent, AuditFilter, AuditStore};

use crate::support::{Ctx, T0, backend_tests};

backend_tests!(
    insert_batch_and_list_newest_first,
    filters_by_type_actor_and_since,
    before_id_cursor_paginates,
    limit_caps_the_page,
    empty_batch_is_a_no_op,
);

/// `n` events with ids in creation order, one second apart from `start`; types alternate, actors
/// cycle through usr_a, usr_b and none.
pub fn events(n: usize, start: Millis) -> Vec<AuditEvent> {
    let mut ids: Vec<String> = (0..n)
        .map(|_| EventId::generate().as_str().to_owned())
        .collect();
    ids.sort();
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| AuditEvent {
            id,
            kind: if i % 2 == 0 {
                "login.succeeded"
            } else {
                "login.failed"
            }
            .to_owned(),
            actor: match i % 3 {
                0 => Some("usr_a".to_owned()),
                1 => Some("usr_b".to_owned()),
                _ => None,
            },
            subject: Some(format!("subject-{i}")),
            ip: Some("192.0.2.7".to_owned()),
            request_id: Some(format!("req-{i}")),
            data: format!(r#"{{"n":{i}}}"#),
            created_at: start.plus_millis(i as i64 * 1_000).0,
        })
        .collect()
}

fn ids(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// The expected answer: matching events, newest first.
fn newest_first(all: &[AuditEvent], keep: impl Fn(&AuditEvent) -> bool) -> Vec<&str> {
    all.iter()
        .rev()
        .filter(|e| keep(e))
        .map(|e| e.id.as_str())
        .collect()
}

fn filter(limit: u32) -> AuditFilter {
    AuditFilter {
        limit,
        ..AuditFilter::default()
    }
}

async fn insert_batch_and_list_newest_first(t: Ctx) {
    let s = &t.store;
    let all = events(10, T0);
    s.insert_audit_events(&all).await.unwrap();
    let listed = s.list_audit_events(&filter(100)).await.unwrap();
    assert_eq!(ids(&listed), newest_first(&all, |_| true));
    // Every column round-trips.
    let newest = &listed[0];
    let want = &all[9];
    assert_eq!(newest.kind, want.kind);
    assert_eq!(newest.actor, want.actor);
    assert_eq!(newest.subject, want.subject);
    assert_eq!(newest.ip, want.ip);
    assert_eq!(newest.request_id, want.request_id);
    assert_eq!(newest.data, want.data);
    assert_eq!(newest.created_at, want.created_at);

    // A second batch lands in front.
    let more = events(2, T0.plus_millis(60_000));
    s.insert_audit_events(&more).await.unwrap();
    let listed = s.list_audit_events(&filter(3)).await.unwrap();
    assert_eq!(
        ids(&listed),
        vec![more[1].id.as_str(), more[0].id.as_str(), all[9].id.as_str()]
    );
}

async fn filters_by_type_actor_and_since(t: Ctx) {
    let s = &t.store;
    let all = events(10, T0);
    s.insert_audit_events(&all).await.unwrap();

    let by_type = s
        .list_audit_events(&AuditFilter {
            kind: Some("login.failed".to_owned()),
            ..filter(100)
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&by_type),
        newest_first(&all, |e| e.kind == "login.failed")
    );
    assert_eq!(by_type.len(), 5);

    let by_actor = s
        .list_audit_events(&AuditFilter {
            actor: Some("usr_b".to_owned()),
            ..filter(100)
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&by_actor),
        newest_first(&all, |e| e.actor.as_deref() == Some("usr_b"))
    );
    assert_eq!(by_actor.len(), 3);

    // `since` is inclusive.
    let since = T0.plus_millis(6_000);
    let by_since = s
        .list_audit_events(&AuditFilter {
            since: Some(since),
            ..filter(100)
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&by_since),
        newest_first(&all, |e| e.created_at >= since.0)
    );
    assert_eq!(by_since.len(), 4);

    let combined = s
        .list_audit_events(&AuditFilter {
            kind: Some("login.succeeded".to_owned()),
            actor: Some("usr_a".to_owned()),
            since: Some(T0.plus_millis(1_000)),
            ..filter(100)
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&combined),
        newest_first(&all, |e| e.kind == "login.succeeded"
            && e.actor.as_deref() == Some("usr_a")
            && e.created_at >= T0.0 + 1_000)
    );
    assert_eq!(combined.len(), 1); // i = 6 (i = 0 is before `since`)

    let nothing = s
        .list_audit_events(&AuditFilter {
            kind: Some("no.such.type".to_owned()),
            ..filter(100)
        })
        .await
        .unwrap();
    assert!(nothing.is_empty());
}

async fn before_id_cursor_paginates(t: Ctx) {
    let s = &t.store;
    let all = events(10, T0);
    s.insert_audit_events(&all).await.unwrap();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = s
            .list_audit_events(&AuditFilter {
                before_id: before.clone(),
                ..filter(4)
            })
            .await
            .unwrap();
        sizes.push(page.len());
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        seen.extend(page.into_iter().map(|e| e.id));
    }
    assert_eq!(sizes, vec![4, 4, 2, 0]);
    assert_eq!(
        seen.iter().map(String::as_str).collect::<Vec<_>>(),
        newest_first(&all, |_| true)
    );

    // The cursor composes with filters.
    let failed = AuditFilter {
        kind: Some("login.failed".to_owned()),
        ..filter(2)
    };
    let p1 = s.list_audit_events(&failed).await.unwrap();
    let p2 = s
        .list_audit_events(&AuditFilter {
            before_id: Some(p1[1].id.clone()),
            ..failed.clone()
        })
        .await
        .unwrap();
    let p3 = s
        .list_audit_events(&AuditFilter {
            before_id: Some(p2[1].id.clone()),
            ..failed.clone()
        })
        .await
        .unwrap();
    let got: Vec<&str> = ids(&p1)
        .into_iter()
        .chain(ids(&p2))
        .chain(ids(&p3))
        .collect();
    assert_eq!(got, newest_first(&all, |e| e.kind == "login.failed"));
    assert_eq!(p3.len(), 1);
}

async fn limit_caps_the_page(t: Ctx) {
    let s = &t.store;
    let all = events(10, T0);
    s.insert_audit_events(&all).await.unwrap();
    for limit in [1u32, 3, 10] {
        let page = s.list_audit_events(&filter(limit)).await.unwrap();
        assert_eq!(
            ids(&page),
            newest_first(&all, |_| true)[..limit as usize].to_vec()
        );
    }
    assert_eq!(s.list_audit_events(&filter(50)).await.unwrap().len(), 10);
    assert!(s.list_audit_events(&filter(0)).await.unwrap().is_empty());
}

async fn empty_batch_is_a_no_op(t: Ctx) {
    let s = &t.store;
    s.insert_audit_events(&[]).await.unwrap();
    assert!(s.list_audit_events(&filter(10)).await.unwrap().is_empty());
}
