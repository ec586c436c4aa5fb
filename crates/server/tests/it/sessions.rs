//! Browser sessions over HTTP: the cookie, CSRF (token and Fetch Metadata / Origin), listing and
//! revoking, fixation, timeouts, bad cookies. Cookies are sent by hand so that every attribute and
//! every odd case is under the test's control.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp, assert_problem};

on_both_stores!(
    login_sets_a_host_only_cookie_and_the_session_authenticates,
    unsafe_cookie_requests_need_the_csrf_token_and_a_same_site_origin,
    sessions_are_listed_and_revoked_one_by_one_or_all,
    a_session_presented_at_login_is_replaced,
    idle_and_absolute_timeouts_end_sessions,
    bad_cookies_are_refused_precisely,
    administrators_list_and_end_a_users_sessions,
    cors_answers_only_allowlisted_origins,
    a_session_revoked_on_one_node_ends_on_the_others_within_a_second,
    last_seen_at_is_written_at_most_once_a_minute,
);

async fn last_seen_at_is_written_at_most_once_a_minute(b: Backend) {
    use portcullis_store::SessionStore;
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let s = login(&app, "alice@example.com").await;
    let stored = || async {
        app.store
            .session_by_id(&portcullis_core::ids::SessionId::parse(&s.id).unwrap())
            .await
            .unwrap()
            .unwrap()
            .last_seen_at
    };
    let at_login = stored().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The first use after login is written (in the background, within about a second)…
    assert_eq!(
        with(&app, Method::GET, "/v1/me", &s)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let mut first = at_login;
    for _ in 0..40 {
        first = stored().await;
        if first > at_login {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first > at_login, "last_seen_at was never written");
    // …later uses within the minute are not.
    for _ in 0..5 {
        assert_eq!(
            with(&app, Method::GET, "/v1/me", &s)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(stored().await, first);
}

async fn a_session_revoked_on_one_node_ends_on_the_others_within_a_second(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let a = login(&app, "alice@example.com").await;
    let victim = login(&app, "alice@example.com").await;
    // A second node over the same database, with a store and caches of its own.
    let (node2_base, node2) = app.second_node(|_| {}).await;
    let me2 = || {
        app.client
            .get(format!("{node2_base}/v1/me"))
            .header("cookie", &victim.cookie)
            .send()
    };
    assert_eq!(me2().await.unwrap().status(), StatusCode::OK);
    assert_eq!(me2().await.unwrap().status(), StatusCode::OK);
    let r = unsafe_req(
        &app,
        Method::DELETE,
        &format!("/v1/sessions/{}", victim.id),
        &a,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let started = std::time::Instant::now();
    while me2().await.unwrap().status() == StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_millis(1_000),
            "node 2 still accepts the revoked session"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!(
        "session revocation seen by node 2 after {:?}",
        started.elapsed()
    );
    node2.stop().await;
}

async fn cors_answers_only_allowlisted_origins(b: Backend) {
    const APP: &str = "https://app.example.com";
    let app = TestApp::spawn_with(b, |c| c.cors_allowed_origins = vec![APP.to_owned()]).await;
    app.register("alice@example.com").await;
    let s = login(&app, "alice@example.com").await;

    let r = app
        .client
        .request(Method::OPTIONS, app.url("/v1/keys"))
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, x-csrf-token",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-csrf-token")
    );

    // Another origin gets no CORS headers at all: its pages cannot read our answers.
    let r = app
        .client
        .request(Method::OPTIONS, app.url("/v1/keys"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = with(&app, Method::GET, "/v1/me", &s)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(r.headers()["vary"].to_str().unwrap().contains("Origin"));

    // The allowed origin reads answers and may make cookie changes, with the CSRF token.
    let r = with(&app, Method::GET, "/v1/me", &s)
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    let r = with(&app, Method::POST, "/v1/keys", &s)
        .header("origin", APP)
        .header("sec-fetch-site", "same-site")
        .json(&json!({"name": "spa"}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "csrf_failed").await;
    let r = with(&app, Method::POST, "/v1/keys", &s)
        .header("origin", APP)
        .header("sec-fetch-site", "same-site")
        .header("x-csrf-token", &s.csrf)
        .json(&json!({"name": "spa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = with(&app, Method::POST, "/v1/keys", &s)
        .header("origin", "https://other.example.com")
        .header("sec-fetch-site", "same-site")
        .header("x-csrf-token", &s.csrf)
        .json(&json!({"name": "spa"}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "csrf_failed").await;
}

pub struct Session {
    pub cookie: String,
    pub csrf: String,
    pub id: String,
}

fn cookie_of(r: &Response) -> String {
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let (pair, attrs) = set.split_once(';').unwrap();
    assert_eq!(attrs.trim(), "Path=/; HttpOnly; Secure; SameSite=Lax");
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, "__Host-portcullis");
    assert!(
        value.starts_with("pcs_") && value.len() == 4 + 43,
        "{value}"
    );
    pair.to_owned()
}

/// A browser login through `POST /v1/sessions`: the cookie (`name=value`), its CSRF token, its id.
pub async fn login(app: &TestApp, email: &str) -> Session {
    let r = app
        .post_json(
            "/v1/sessions",
            &json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = cookie_of(&r);
    let body: Value = r.json().await.unwrap();
    Session {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        id: body["session"]["id"].as_str().unwrap().to_owned(),
    }
}

fn with(app: &TestApp, method: Method, path: &str, s: &Session) -> RequestBuilder {
    app.client
        .request(method, app.url(path))
        .header("cookie", &s.cookie)
}

/// An unsafe request as our own page would send it: cookie, token, same-origin.
fn unsafe_req(app: &TestApp, method: Method, path: &str, s: &Session) -> RequestBuilder {
    with(app, method, path, s)
        .header("x-csrf-token", &s.csrf)
        .header("sec-fetch-site", "same-origin")
        .header("origin", &app.base)
}

async fn login_sets_a_host_only_cookie_and_the_session_authenticates(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let r = app
        .post_json(
            "/v1/sessions",
            &json!({"email": "alice@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let cookie = cookie_of(&r);
    let body: Value = r.json().await.unwrap();
    let id = body["session"]["id"].as_str().unwrap();
    assert!(id.starts_with("ses_"));
    assert!(
        body["session"]["expires_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let csrf = body["csrf_token"].as_str().unwrap();
    assert!(csrf.len() >= 43);

    let me: Value = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", format!("theme=dark; {cookie}; other=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["auth"]["method"], "session");
    assert_eq!(me["auth"]["session_id"], id);

    let current: Value = app
        .client
        .get(app.url("/v1/sessions/current"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current["csrf_token"], csrf);
    assert_eq!(current["session"]["id"], id);
    assert_eq!(current["session"]["current"], true);

    // The store has the token's hash only.
    use portcullis_store::SessionStore;
    let token = cookie.split_once('=').unwrap().1;
    let row = app
        .store
        .session_by_hash(&portcullis_core::secrets::TokenHash::of(token.as_bytes()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.id.as_str(), id);
    assert!(!format!("{row:?}").contains(&token[4..]));

    // Form login works too; wrong passwords and unknown accounts look alike and set no cookie.
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .form(&[("email", "alice@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for (email, password) in [
        ("alice@example.com", "not the password at all"),
        ("nobody@example.com", PASSWORD),
    ] {
        let r = app
            .post_json(
                "/v1/sessions",
                &json!({"email": email, "password": password}),
            )
            .await;
        assert!(r.headers().get("set-cookie").is_none());
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    let r = app
        .post_json("/v1/sessions", &json!({"email": "alice@example.com"}))
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    // No session at all.
    let r = app
        .client
        .get(app.url("/v1/sessions/current"))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
}

async fn unsafe_cookie_requests_need_the_csrf_token_and_a_same_site_origin(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let s = login(&app, "alice@example.com").await;
    let other = login(&app, "alice@example.com").await;
    let body = json!({"name": "from the browser"});

    // GET needs no token.
    let r = with(&app, Method::GET, "/v1/keys", &s)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // No token, a token of another session, a made-up token.
    let bad_tokens = [None, Some(other.csrf.clone()), Some("x".repeat(43))];
    for token in bad_tokens {
        let mut req = with(&app, Method::POST, "/v1/keys", &s)
            .header("sec-fetch-site", "same-origin")
            .json(&body);
        if let Some(t) = &token {
            req = req.header("x-csrf-token", t);
        }
        assert_problem(
            req.send().await.unwrap(),
            StatusCode::FORBIDDEN,
            "csrf_failed",
        )
        .await;
    }
    // The right token from another site.
    for (name, value) in [
        ("sec-fetch-site", "cross-site".to_owned()),
        ("sec-fetch-site", "same-site".to_owned()),
        ("origin", "https://evil.example".to_owned()),
        ("origin", "null".to_owned()),
        ("referer", "https://evil.example/page".to_owned()),
    ] {
        let r = with(&app, Method::POST, "/v1/keys", &s)
            .header("x-csrf-token", &s.csrf)
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::FORBIDDEN, "csrf_failed").await;
    }
    // Our own page: token + same origin (by Sec-Fetch-Site, by Origin, by Referer, or a non-browser
    // client that sends none of them).
    for (name, value) in [
        ("sec-fetch-site", "same-origin".to_owned()),
        ("origin", app.base.clone()),
        ("referer", format!("{}/account", app.base)),
        ("x-nothing", "1".to_owned()),
    ] {
        let r = with(&app, Method::POST, "/v1/keys", &s)
            .header("x-csrf-token", &s.csrf)
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // DELETE and PATCH are unsafe too.
    let r = with(
        &app,
        Method::DELETE,
        &format!("/v1/sessions/{}", other.id),
        &s,
    )
    .send()
    .await
    .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "csrf_failed").await;

    // Bearer and API-key requests need no CSRF token: they are not sent by browsers on their own.
    let t = app
        .login("alice@example.com", PASSWORD)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .header("sec-fetch-site", "cross-site")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A login posted from another site is refused (login CSRF).
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("email", "alice@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "csrf_failed").await;
}

async fn sessions_are_listed_and_revoked_one_by_one_or_all(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    app.register("bob@example.com").await;
    // The device's user agent is the one it logged in with.
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .header("user-agent", "test-agent/1.0")
        .json(&json!({"email": "alice@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = cookie_of(&r);
    let body: Value = r.json().await.unwrap();
    let a = Session {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        id: body["session"]["id"].as_str().unwrap().to_owned(),
    };
    let b2 = login(&app, "alice@example.com").await;
    let c = login(&app, "alice@example.com").await;
    let bob = login(&app, "bob@example.com").await;

    let list: Value = with(&app, Method::GET, "/v1/sessions", &b2)
        .header("user-agent", "the listing's own agent")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], b2.id.as_str());
    let first = sessions.iter().find(|s| s["id"] == a.id.as_str()).unwrap();
    assert_eq!(first["user_agent"], "test-agent/1.0");
    assert_eq!(first["ip"], "127.0.0.1");
    assert_eq!(first["current"], false);
    let mut fields: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "created_at",
            "current",
            "expires_at",
            "id",
            "ip",
            "last_seen_at",
            "user_agent"
        ]
    );
    // The defaults: 24 h absolute (expires_at), and the listing of a session seen just now.
    let at = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(
        at(&first["expires_at"]) - at(&first["created_at"]),
        time::Duration::hours(24)
    );
    assert_eq!(
        app.state().config.session_idle_timeout_s,
        30 * 60,
        "and 30 minutes idle, by default"
    );
    assert!(at(&first["last_seen_at"]) >= at(&first["created_at"]));
    assert_eq!(
        sessions.iter().find(|s| s["id"] == c.id.as_str()).unwrap()["user_agent"],
        Value::Null
    );

    // Another user's session is not found; nor is nonsense.
    for id in [bob.id.as_str(), "ses_nonsense"] {
        let r = unsafe_req(&app, Method::DELETE, &format!("/v1/sessions/{id}"), &a)
            .send()
            .await
            .unwrap();
        assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    // Revoke another device: it is logged out at once.
    let r = unsafe_req(&app, Method::DELETE, &format!("/v1/sessions/{}", b2.id), &a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers().get("set-cookie").is_none(), "not this device");
    let r = with(&app, Method::GET, "/v1/me", &b2).send().await.unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let body = assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
    assert_eq!(body["reason"], "revoked");

    // Log out this device: 204, cookie cleared, session gone.
    let r = unsafe_req(&app, Method::DELETE, "/v1/sessions/current", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["set-cookie"],
        "__Host-portcullis=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"
    );
    let r = with(&app, Method::GET, "/v1/me", &a).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;

    // logout-all through a session ends every session of the user (and not Bob's).
    let r = unsafe_req(&app, Method::POST, "/v1/auth/logout-all", &c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(&app, Method::GET, "/v1/me", &c).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
    let r = with(&app, Method::GET, "/v1/me", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A password change ends every other session (API.md), and keeps the one it was made from.
    let d = login(&app, "alice@example.com").await;
    let e = login(&app, "alice@example.com").await;
    let r = unsafe_req(&app, Method::POST, "/v1/me/password", &d)
        .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(&app, Method::GET, "/v1/me", &e).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
    let r = with(&app, Method::GET, "/v1/me", &d).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the changing session stays");
}

async fn a_session_presented_at_login_is_replaced(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let first = login(&app, "alice@example.com").await;
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .header("cookie", &first.cookie)
        .json(&json!({"email": "alice@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let second = cookie_of(&r);
    assert_ne!(
        second, first.cookie,
        "a new session id, never the presented one"
    );
    let r = with(&app, Method::GET, "/v1/me", &first)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A made-up session id in the cookie at login is not adopted either.
    let planted = format!("__Host-portcullis=pcs_{}", "A".repeat(43));
    let r = app
        .client
        .post(app.url("/v1/sessions"))
        .header("cookie", &planted)
        .json(&json!({"email": "alice@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_ne!(cookie_of(&r), planted);
}

async fn idle_and_absolute_timeouts_end_sessions(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.session_idle_timeout_s = 3;
        c.session_absolute_timeout_s = 5;
    })
    .await;
    app.register("alice@example.com").await;
    let me = |s: &Session| with(&app, Method::GET, "/v1/me", s).send();

    // Idle: unused for longer than 3 s.
    let idle = login(&app, "alice@example.com").await;
    let used = portcullis_core::clock::Millis::now().0;
    assert_eq!(me(&idle).await.unwrap().status(), StatusCode::OK);
    crate::support::sleep_until_ms(used + 3_000, 300).await;
    let body = assert_problem(
        me(&idle).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_session",
    )
    .await;
    assert_eq!(body["reason"], "idle");

    // Busy, but past the absolute timeout: used every half second (well inside the idle timeout),
    // until a moment past its `expires_at`.
    let r = app
        .post_json(
            "/v1/sessions",
            &json!({"email": "alice@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = cookie_of(&r);
    let body: Value = r.json().await.unwrap();
    let expires = crate::support::ms_of(&body["session"]["expires_at"]);
    let busy = Session {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        id: body["session"]["id"].as_str().unwrap().to_owned(),
    };
    while portcullis_core::clock::Millis::now().0 < expires - 700 {
        assert_eq!(me(&busy).await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    crate::support::sleep_until_ms(expires, 200).await;
    let body = assert_problem(
        me(&busy).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_session",
    )
    .await;
    assert_eq!(body["reason"], "expired");
}

async fn bad_cookies_are_refused_precisely(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let s = login(&app, "alice@example.com").await;
    let value = s.cookie.split_once('=').unwrap().1.to_owned();
    let mut tampered = value.clone().into_bytes();
    tampered[10] = if tampered[10] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (cookie, reason) in [
        (format!("__Host-portcullis={tampered}"), "unknown"),
        (format!("__Host-portcullis={}", &value[..30]), "malformed"),
        ("__Host-portcullis=".to_owned(), "malformed"),
        ("__Host-portcullis=pcs_!!!".to_owned(), "malformed"),
        (
            format!("__Host-portcullis={value}; __Host-portcullis={value}"),
            "duplicate_cookie",
        ),
        (
            format!("__Host-portcullis={tampered}; __Host-portcullis={value}"),
            "duplicate_cookie",
        ),
    ] {
        let r = app
            .client
            .get(app.url("/v1/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let body = assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
        assert_eq!(body["reason"], reason, "{cookie}");
    }
    // Two Cookie headers count as well.
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &s.cookie)
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
    // A cookie of a similar name is not ours.
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", format!("portcullis={value}"))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // A bad Bearer header does not fall back to the cookie.
    let r = with(&app, Method::GET, "/v1/me", &s)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn administrators_list_and_end_a_users_sessions(b: Backend) {
    let app = TestApp::spawn(b).await;
    let alice = app.register("alice@example.com").await;
    let id = alice["id"].as_str().unwrap();
    let s1 = login(&app, "alice@example.com").await;
    let _s2 = login(&app, "alice@example.com").await;
    let root = app.root_key().await;
    let list: Value = app
        .get_with_key(&format!("/admin/v1/users/{id}/sessions"), &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    let r = app
        .client
        .delete(app.url(&format!("/admin/v1/users/{id}/sessions")))
        .header("x-api-key", &root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(&app, Method::GET, "/v1/me", &s1).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
    let event = app.wait_for_audit(&root, "session.revoked_all").await;
    assert_eq!(event["subject"], id);
    // Disabling a user ends their sessions and stops their keys; enabling lets them log in again.
    let s3 = login(&app, "alice@example.com").await;
    let key: Value = unsafe_req(&app, Method::POST, "/v1/keys", &s3)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_with_key("/v1/me", &key).await.status(),
        StatusCode::OK
    );
    let r = app
        .post_with_key(&format!("/admin/v1/users/{id}/disable"), &root, None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(&app, Method::GET, "/v1/me", &s3).send().await.unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_session").await;
    let r = app.get_with_key("/v1/me", &key).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    let r = app
        .post_json(
            "/v1/sessions",
            &json!({"email": "alice@example.com", "password": PASSWORD}),
        )
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let r = app
        .post_with_key(&format!("/admin/v1/users/{id}/enable"), &root, None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_with_key("/v1/me", &key).await.status(),
        StatusCode::OK
    );
    let r = app
        .post_with_key(
            "/admin/v1/users/usr_00000000000000000000000000000000/disable",
            &root,
            None,
        )
        .await;
    assert_problem(r, StatusCode::NOT_FOUND, "not_found").await;

    // Users themselves cannot use the admin endpoint.
    let s3 = login(&app, "alice@example.com").await;
    let r = with(
        &app,
        Method::GET,
        &format!("/admin/v1/users/{id}/sessions"),
        &s3,
    )
    .send()
    .await
    .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
}
