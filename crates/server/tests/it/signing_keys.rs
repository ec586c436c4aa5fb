//! Signing keys over HTTP: the public, cacheable JWKS; rotation with and without lead time, on
//! schedule and as configured; the signing-key endpoints for administrators only.

use portcullis_core::clock::Millis;
use reqwest::StatusCode;
use serde_json::Value;

use crate::on_both_stores;
use crate::support::{Backend, TestApp, assert_problem};

on_both_stores!(
    jwks_is_public_and_cacheable,
    rotation_publishes_the_next_key_before_it_signs,
    without_lead_time_the_new_key_signs_and_the_old_one_still_verifies,
    scheduled_rotation_runs_when_due,
    the_rotation_loop_follows_its_configuration,
    signing_key_admin_needs_an_admin,
);

fn header_kid(token: &str) -> String {
    use base64::Engine;
    let head = token.split('.').next().unwrap();
    let h: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "ES256");
    h["kid"].as_str().unwrap().to_owned()
}

/// The access-token (ES256) keys the JWKS publishes; the RS256 ID-token keys beside them are
/// checked apart ([`id_token_kids`]).
async fn jwks(app: &TestApp) -> Vec<String> {
    jwks_of(app, "ES256").await
}

async fn id_token_kids(app: &TestApp) -> Vec<String> {
    jwks_of(app, "RS256").await
}

async fn jwks_of(app: &TestApp, alg: &str) -> Vec<String> {
    let r = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    let body: Value = r.json().await.unwrap();
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|k| {
            assert!(k.get("d").is_none(), "private part published");
            assert!(k.get("p").is_none(), "private part published");
        })
        .filter(|k| k["alg"] == alg)
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn jwks_is_public_and_cacheable(b: Backend) {
    let app = TestApp::spawn(b).await;
    let kids = jwks(&app).await;
    assert_eq!(kids.len(), 1);
    // Beside it, the RS256 key that signs ID tokens (OIDC Core §3.1.3.7), with its own schedule.
    assert_eq!(id_token_kids(&app).await.len(), 1);
    let t = app.user_with_tokens("ken@example.com").await;
    assert_eq!(header_kid(t["access_token"].as_str().unwrap()), kids[0]);
    app.stop().await;
}

async fn rotation_publishes_the_next_key_before_it_signs(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let before = jwks(&app).await;
    let r = app
        .post_with_key("/admin/v1/signing-keys/rotate", &root, None)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let key: Value = r.json().await.unwrap();
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["state"], "next");
    let publish = time::OffsetDateTime::parse(
        key["publish_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let activate = time::OffsetDateTime::parse(
        key["activate_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((activate - publish).whole_seconds(), 3600);
    let after = jwks(&app).await;
    assert_eq!(after.len(), 2, "the next key is published at once");
    assert!(after.contains(&before[0]) && after.contains(&key["kid"].as_str().unwrap().to_owned()));
    // Tokens are still signed by the current key until the next one activates.
    let t = app.user_with_tokens("leo@example.com").await;
    assert_eq!(header_kid(t["access_token"].as_str().unwrap()), before[0]);
    let list: Value = app
        .get_with_key("/admin/v1/signing-keys", &root)
        .await
        .json()
        .await
        .unwrap();
    let states: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["next", "current", "current"], "{list}");
    app.wait_for_audit(&root, "signing_key.rotated").await;
    app.stop().await;
}

async fn without_lead_time_the_new_key_signs_and_the_old_one_still_verifies(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.signing_key_publish_lead_s = 0).await;
    let root = app.root_key().await;
    let old = app.user_with_tokens("mia@example.com").await;
    let old_kid = header_kid(old["access_token"].as_str().unwrap());
    let r = app
        .post_with_key("/admin/v1/signing-keys/rotate", &root, None)
        .await;
    let key: Value = r.json().await.unwrap();
    let fresh: Value = app
        .login("mia@example.com", crate::support::PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        header_kid(fresh["access_token"].as_str().unwrap()),
        key["kid"].as_str().unwrap()
    );
    // The retired key stays published until its last token has expired.
    assert!(jwks(&app).await.contains(&old_kid));
    assert_eq!(
        app.get_bearer("/v1/me", old["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_bearer("/v1/me", fresh["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let list: Value = app
        .get_with_key("/admin/v1/signing-keys", &root)
        .await
        .json()
        .await
        .unwrap();
    let old_entry = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == old_kid.as_str())
        .unwrap()
        .clone();
    assert_eq!(old_entry["state"], "retiring");
    let retire = time::OffsetDateTime::parse(
        old_entry["retire_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expire = time::OffsetDateTime::parse(
        old_entry["expire_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        (expire - retire).whole_seconds() >= 900,
        "published at least one access-token lifetime after retiring"
    );
    app.stop().await;
}

async fn scheduled_rotation_runs_when_due(b: Backend) {
    let app = TestApp::spawn(b).await;
    let keys = &app.state().keys;
    assert!(
        keys.rotate_if_due(30 * 86_400, 3600)
            .await
            .unwrap()
            .is_none(),
        "a fresh key is not due"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let made = keys
        .rotate_if_due(1, 0)
        .await
        .unwrap()
        .expect("due after its interval");
    assert!(made.activate_at <= Millis::now().0);
    assert_eq!(jwks(&app).await.len(), 2);
    assert_eq!(
        id_token_kids(&app).await.len(),
        2,
        "the ID-token key rotates too"
    );
    app.stop().await;
}

/// The background loop rotates on schedule by itself: a node that starts beside a signing key older
/// than `signing_key_rotation_days` makes its successor on its first tick, published with the
/// configured lead, and audits it; with rotation off (0 days) it does not.
async fn the_rotation_loop_follows_its_configuration(b: Backend) {
    let app = TestApp::spawn(b).await;
    let month = 31 * 86_400_000_i64;
    app.execute_sql(&format!(
        "UPDATE signing_keys SET created_at = created_at - {month}, publish_at = publish_at - {month}, activate_at = activate_at - {month}"
    ))
    .await;
    // Rotation off: a node over this store leaves the old key be.
    let (off, running) = app.second_node(|c| c.signing_key_rotation_days = 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let keys: Value = app
        .client
        .get(format!("{off}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["alg"] == "ES256")
            .count(),
        1
    );
    running.stop().await;
    // Rotation on (30 days, the default) with a 10-minute lead: the next key appears, not yet signing.
    let (on, running) = app
        .second_node(|c| c.signing_key_publish_lead_s = 600)
        .await;
    let root = app.root_key().await;
    crate::support::until(
        "the scheduled rotation",
        std::time::Duration::from_secs(5),
        async || {
            let keys: Value = app
                .client
                .get(format!("{on}/.well-known/jwks.json"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            keys["keys"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|k| k["alg"] == "ES256")
                .count()
                == 2
        },
    )
    .await;
    let list: Value = app
        .get_with_key("/admin/v1/signing-keys", &root)
        .await
        .json()
        .await
        .unwrap();
    let next: Vec<&Value> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["state"] == "next" && k["alg"] == "ES256")
        .collect();
    assert_eq!(next.len(), 1, "{list}");
    let at = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(
        (at(&next[0]["activate_at"]) - at(&next[0]["publish_at"])).whole_seconds(),
        600
    );
    let event = app.wait_for_audit(&root, "signing_key.rotated").await;
    assert_eq!(event["data"]["scheduled"], true);
    running.stop().await;
    app.stop().await;
}

async fn signing_key_admin_needs_an_admin(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("ned@example.com").await;
    let r = app
        .client
        .post(app.url("/admin/v1/signing-keys/rotate"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(jwks(&app).await.len(), 1);
    app.stop().await;
}
