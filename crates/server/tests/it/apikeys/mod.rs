//! API keys over HTTP, one file per behaviour: lifecycle, verify, limits, rolling, bad input. This
//! file holds what they share: the server they run against and the requests they make.

use std::time::Duration;

use portcullis_core::apikeys::ApiKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Auth, Backend, TestApp, assert_problem};

/// The operator's scopes that these tests let users put on their own keys (`self_service_scopes`).
const SELF_SERVICE: &[&str] = &[
    "orders:read",
    "orders:write",
    "billing:read",
    "billing:write",
];

async fn spawn(b: Backend) -> TestApp {
    TestApp::spawn_with(b, |c| {
        c.self_service_scopes = SELF_SERVICE.iter().map(|s| (*s).to_owned()).collect();
    })
    .await
}

async fn create(app: &TestApp, auth: &Auth, body: Value) -> Value {
    let r = app.call(Method::POST, "/v1/keys", auth, Some(&body)).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    r.json().await.unwrap()
}

async fn user(app: &TestApp, email: &str) -> (Auth, String) {
    let t = app.user_with_tokens(email).await;
    let token = t["access_token"].as_str().unwrap().to_owned();
    let me: Value = app.get_bearer("/v1/me", &token).await.json().await.unwrap();
    (Auth::Bearer(token), me["id"].as_str().unwrap().to_owned())
}

/// The root key and a service key holding `keys:verify`.
async fn verifier(app: &TestApp) -> (Auth, Auth) {
    let root = Auth::Key(app.root_key().await);
    let v = create(
        app,
        &root,
        json!({"name": "verifier", "scopes": ["keys:verify"]}),
    )
    .await;
    (root, Auth::Key(v["key"].as_str().unwrap().to_owned()))
}

async fn verify(app: &TestApp, verifier: &Auth, body: Value) -> Value {
    let r = app
        .call(Method::POST, "/v1/keys/verify", verifier, Some(&body))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn code(app: &TestApp, verifier: &Auth, key: &str) -> String {
    verify(app, verifier, json!({"key": key})).await["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn key_of(v: &Value) -> String {
    v["key"].as_str().unwrap().to_owned()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn rfc3339_in(ms: i64) -> String {
    portcullis_core::clock::Millis::now()
        .plus_millis(ms)
        .rfc3339()
}

mod input;
mod lifecycle;
mod limits;
mod rolling;
mod verify;
