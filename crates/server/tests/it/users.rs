//! Accounts over HTTP: registration and `/v1/me`, the password policy, email and name validation,
//! closed registration, password changes (and what they revoke), imported bcrypt and argon2 hashes,
//! and the administrators' paged list of users.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp, assert_problem};

on_both_stores!(
    register_then_me_shows_the_user_and_how_they_authenticated,
    weak_passwords_are_refused_with_every_reason,
    bad_emails_and_names_are_validation_errors,
    an_email_is_taken_whatever_its_case,
    closed_registration_refuses_new_accounts,
    password_change_revokes_refresh_and_access_tokens,
    wrong_current_password_changes_nothing,
    imported_bcrypt_and_argon2_hashes_log_in_and_are_upgraded,
    import_needs_an_admin_and_a_valid_hash,
    admins_list_users_page_by_page,
);

async fn register_then_me_shows_the_user_and_how_they_authenticated(b: Backend) {
    let app = TestApp::spawn(b).await;
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "Alice@Example.COM", "password": PASSWORD, "name": "Alice"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    assert!(user["id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(user["email"], "Alice@example.com");
    let tokens: Value = app
        .login("alice@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let me: Value = app
        .get_bearer("/v1/me", tokens["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["name"], "Alice");
    assert_eq!(me["auth"]["method"], "jwt");
    assert_eq!(me["auth"]["client_id"], "portcullis");
    assert_eq!(me["roles"], json!([]));
    let root = app.root_key().await;
    let event = app.wait_for_audit(&root, "user.registered").await;
    assert_eq!(event["subject"], user["id"]);
    app.stop().await;
}

async fn weak_passwords_are_refused_with_every_reason(b: Backend) {
    let app = TestApp::spawn(b).await;
    let cases = [
        ("short pw", "too_short"),
        ("password1234", "common_password"),
        ("i am carol.jones for sure", "contains_email"),
    ];
    for (password, code) in cases {
        let r = app
            .post_json(
                "/v1/users",
                &json!({"email": "carol.jones@example.com", "password": password}),
            )
            .await;
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "weak_password").await;
        let codes: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["code"].as_str().unwrap())
            .collect();
        assert!(codes.contains(&code), "{password}: {codes:?}");
    }
    let long = "x".repeat(129);
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "carol.jones@example.com", "password": long}),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "weak_password").await;
    assert_eq!(body["errors"][0]["code"], "too_long");
    // 12 code points of multi-byte text is long enough: length is counted in characters.
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "carol.jones@example.com", "password": "日本語のパスワードです。"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Nothing was written for the refused attempts.
    assert_eq!(
        portcullis_store::UserStore::count_users(&app.store)
            .await
            .unwrap(),
        1
    );
    app.stop().await;
}

async fn bad_emails_and_names_are_validation_errors(b: Backend) {
    let app = TestApp::spawn(b).await;
    for email in [
        "not-an-email",
        "a@b",
        "two@@example.com",
        " ",
        "x@-bad-.com",
    ] {
        let r = app
            .post_json("/v1/users", &json!({"email": email, "password": PASSWORD}))
            .await;
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "email");
    }
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "n@example.com", "password": PASSWORD, "name": "a\u{0007}b"}),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "name");
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "n@example.com", "password": PASSWORD, "admin": true}),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["errors"][0]["code"], "unknown_field");
    assert_eq!(body["errors"][0]["field"], "admin");
    let r = app
        .post_json("/v1/users", &json!({"email": "n@example.com"}))
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["errors"][0]["code"], "required");
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "n@example.com", "password": 12345678901234_i64}),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert!(
        !body.to_string().contains("12345678901234"),
        "input values are never echoed: {body}"
    );
    assert_eq!(
        portcullis_store::UserStore::count_users(&app.store)
            .await
            .unwrap(),
        0
    );
    app.stop().await;
}

async fn an_email_is_taken_whatever_its_case(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("dave@example.com").await;
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "DAVE@example.com", "password": PASSWORD}),
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "email_taken").await;
    app.stop().await;
}

async fn closed_registration_refuses_new_accounts(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.registration = portcullis_server::config::Registration::Closed
    })
    .await;
    let r = app
        .post_json(
            "/v1/users",
            &json!({"email": "erin@example.com", "password": PASSWORD}),
        )
        .await;
    assert_problem(r, StatusCode::FORBIDDEN, "registration_closed").await;
    app.stop().await;
}

async fn password_change_revokes_refresh_and_access_tokens(b: Backend) {
    let app = TestApp::spawn(b).await;
    let first = app.user_with_tokens("frank@example.com").await;
    let second: Value = app
        .login("frank@example.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let access = first["access_token"].as_str().unwrap();
    let r = app
        .client
        .post(app.url("/v1/me/password"))
        .bearer_auth(access)
        .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Every refresh family is revoked and old access tokens stop working at once.
    for t in [&first, &second] {
        let r = app
            .post_json(
                "/v1/auth/refresh",
                &json!({"refresh_token": t["refresh_token"]}),
            )
            .await;
        assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_refresh_token").await;
        let body = assert_problem(
            app.get_bearer("/v1/me", t["access_token"].as_str().unwrap())
                .await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_eq!(body["reason"], "revoked");
    }
    assert_problem(
        app.login("frank@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let fresh: Value = app
        .login("frank@example.com", "a brand new passphrase")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        app.get_bearer("/v1/me", fresh["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let root = app.root_key().await;
    app.wait_for_audit(&root, "password.changed").await;
    app.stop().await;
}

async fn wrong_current_password_changes_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("gina@example.com").await;
    let r = app
        .client
        .post(app.url("/v1/me/password"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .json(&json!({"current_password": "not my password at all", "new_password": "a brand new passphrase"}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "current_password");
    assert_eq!(
        app.login("gina@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    let r = app
        .post_json(
            "/v1/auth/refresh",
            &json!({"refresh_token": t["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn imported_bcrypt_and_argon2_hashes_log_in_and_are_upgraded(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let bcrypt_hash = bcrypt::hash("legacy bcrypt passphrase", 6).unwrap();
    // argon2id at weaker parameters than ours, as another system might have stored it.
    let argon_hash = {
        use argon2::password_hash::PasswordHasher;
        let params = argon2::Params::new(4096, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        a.hash_password_with_salt(b"legacy argon passphrase", b"somesaltsomesalt")
            .unwrap()
            .to_string()
    };
    for (email, hash, password) in [
        (
            "bc@example.com",
            bcrypt_hash.as_str(),
            "legacy bcrypt passphrase",
        ),
        (
            "ar@example.com",
            argon_hash.as_str(),
            "legacy argon passphrase",
        ),
    ] {
        let r = app
            .post_with_key(
                "/admin/v1/users/import",
                &root,
                Some(&json!({"email": email, "password_hash": hash})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_problem(
            app.login(email, "wrong password here").await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
        assert_eq!(app.login(email, password).await.status(), StatusCode::OK);
        let row = portcullis_store::UserStore::user_by_id(&app.store, &id)
            .await
            .unwrap()
            .unwrap();
        let stored = row.password_hash.unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "not upgraded: {stored}"
        );
        assert_eq!(app.login(email, password).await.status(), StatusCode::OK);
    }
    app.wait_for_audit(&root, "password.upgraded").await;
    app.stop().await;
}

async fn import_needs_an_admin_and_a_valid_hash(b: Backend) {
    let app = TestApp::spawn(b).await;
    let t = app.user_with_tokens("hank@example.com").await;
    let r = app
        .client
        .post(app.url("/admin/v1/users/import"))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .json(&json!({"email": "x@example.com", "password_hash": bcrypt::hash("whatever it is", 4).unwrap()}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    let root = app.root_key().await;
    for bad in ["plaintext-password", "$2b$10$tooshort", "$1$md5$legacy"] {
        let r = app
            .post_with_key(
                "/admin/v1/users/import",
                &root,
                Some(&json!({"email": "x@example.com", "password_hash": bad})),
            )
            .await;
        let body = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "password_hash");
        assert!(!body.to_string().contains(bad), "the hash is not echoed");
    }
    let r = app
        .client
        .post(app.url("/admin/v1/users/import"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    app.stop().await;
}

async fn admins_list_users_page_by_page(b: Backend) {
    let app = TestApp::spawn(b).await;
    for i in 0..3 {
        app.register(&format!("user{i}@example.com")).await;
    }
    let root = app.root_key().await;
    let page: Value = app
        .get_with_key("/admin/v1/users?limit=2", &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .get_with_key(&format!("/admin/v1/users?limit=2&cursor={cursor}"), &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["users"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    app.stop().await;
}
