//! The main response shapes, as snapshots: the token pair, an API key (created, read, verified), a
//! session (created, listed) and problem JSON (unauthenticated, a validation failure). Both stores
//! must give the same snapshot. Ids, times, clocked milliseconds and secrets are redacted, so a new
//! field, a renamed one or a changed type shows up as a snapshot difference.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Auth, Backend, PASSWORD, TestApp};

on_both_stores!(the_main_responses_keep_their_shape);

/// Replaces what differs from run to run: secrets and clocked milliseconds by field name, prefixed
/// ids and RFC 3339 times by their form. Everything else (field names, types, fixed values) stays for the snapshot.
fn redact(v: Value) -> Value {
    const SECRETS: &[&str] = &[
        "access_token",
        "refresh_token",
        "key",
        "csrf_token",
        "start",
    ];
    // Milliseconds that depend on when the request landed.
    const CLOCKED: &[&str] = &["reset_ms"];
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(_) if SECRETS.contains(&k.as_str()) => {
                            Value::String(format!("[{k}]"))
                        }
                        Value::Number(_) if CLOCKED.contains(&k.as_str()) => {
                            Value::String("[ms]".into())
                        }
                        other => redact(other),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::String(s) if is_id(&s) => Value::String(format!("[{}_id]", id_kind(&s))),
        Value::String(s) if is_time(&s) => Value::String("[time]".into()),
        other => other,
    }
}

fn id_kind(s: &str) -> &str {
    s.split('_').next().unwrap_or_default()
}

fn is_id(s: &str) -> bool {
    s.split_once('_').is_some_and(|(kind, body)| {
        (3..=4).contains(&kind.len())
            && kind.bytes().all(|b| b.is_ascii_lowercase())
            && body.len() == 32
            && body.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn is_time(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

async fn json_of(r: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    redact(r.json().await.unwrap())
}

async fn the_main_responses_keep_their_shape(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("shape@example.com").await;

    let login = app
        .post_json(
            "/v1/auth/login",
            &json!({"email": "shape@example.com", "password": PASSWORD}),
        )
        .await;
    let pair: Value = login.json().await.unwrap();
    let user = Auth::Bearer(pair["access_token"].as_str().unwrap().to_owned());
    insta::assert_json_snapshot!("token_pair", redact(pair));

    let created = app
        .call(
            Method::POST,
            "/v1/keys",
            &user,
            Some(
                &json!({"name": "ci", "scopes": ["keys:read"], "remaining": 5,
                          "ratelimit": {"limit": 10, "duration_ms": 60000}}),
            ),
        )
        .await;
    let created: Value = created.json().await.unwrap();
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    insta::assert_json_snapshot!("key_created", redact(created));
    let read = app
        .call(Method::GET, &format!("/v1/keys/{id}"), &user, None)
        .await;
    insta::assert_json_snapshot!("key", json_of(read, StatusCode::OK).await);
    let root = app.root_key().await;
    let verified = app
        .post_with_key("/v1/keys/verify", &root, Some(&json!({"key": secret})))
        .await;
    insta::assert_json_snapshot!("key_verified", json_of(verified, StatusCode::OK).await);

    let session = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": "shape@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = session
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    insta::assert_json_snapshot!("session", json_of(session, StatusCode::CREATED).await);
    let listed = app
        .client
        .get(app.url("/v1/sessions"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    insta::assert_json_snapshot!("sessions", json_of(listed, StatusCode::OK).await);

    let unauthenticated = app.client.get(app.url("/v1/me")).send().await.unwrap();
    insta::assert_json_snapshot!(
        "problem_unauthenticated",
        json_of(unauthenticated, StatusCode::UNAUTHORIZED).await
    );
    let invalid = app
        .call(
            Method::POST,
            "/v1/keys",
            &user,
            Some(&json!({"name": "", "remaining": -1})),
        )
        .await;
    insta::assert_json_snapshot!(
        "problem_validation",
        json_of(invalid, StatusCode::BAD_REQUEST).await
    );
    app.stop().await;
}
