//! Verified emails and password reset by email, with real mail: the server sends through SMTP to a
//! real local server (aiosmtpd, [`crate::mail::SmtpSink`]) and the tests follow the link in the
//! message they received.

use std::time::Duration;

use portcullis_server::config::SecretSetting;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mail::{SmtpSink, link_in};
use crate::oauth::no_redirects;
use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp, assert_problem};

const NEW_PASSWORD: &str = "copper lantern meadow";

async fn mailing_app(
    backend: Backend,
    sink: &SmtpSink,
    tweak: impl FnOnce(&mut portcullis_server::Config),
) -> TestApp {
    let url = sink.url();
    TestApp::spawn_with(backend, |c| {
        c.smtp_url = Some(SecretSetting::new(url));
        c.mail_from = Some("Portcullis Tests <auth@example.test>".into());
        tweak(c);
    })
    .await
}

async fn me(app: &TestApp, token: &str) -> Value {
    let r = app.get_bearer("/v1/me", token).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn access_token(app: &TestApp, email: &str, password: &str) -> Value {
    let r = app.login(email, password).await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    r.json().await.unwrap()
}

on_both_stores!(
    a_new_account_gets_a_verification_link_that_works_once,
    resending_a_verification_link_is_limited,
    logins_wait_for_a_verified_email_when_the_server_requires_it,
    a_password_reset_answers_alike_and_ends_every_way_in,
    reset_links_expire_and_weak_passwords_keep_the_link,
);

async fn a_new_account_gets_a_verification_link_that_works_once(backend: Backend) {
    let Some(sink) = SmtpSink::start().await else {
        return;
    };
    let app = mailing_app(backend, &sink, |_| {}).await;
    let email = "verify-me@example.com";
    let user = app.register(email).await;
    assert_eq!(user["email_verified"], false);
    let mail = sink.wait_for(email, 1).await;
    assert_eq!(mail["subject"], "Verify your email address");
    assert_eq!(mail["from"], "Portcullis Tests <auth@example.test>");
    let (link, token) = link_in(&mail, "/verify");
    assert!(link.starts_with(&app.base), "{link}");
    // Only the SHA-256 of the link is stored.
    let stored = app
        .scalar_i64(&format!(
            "SELECT COUNT(*) FROM email_tokens WHERE purpose = 'verify' AND user_id = '{}'",
            user["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stored, 1);
    let t = access_token(&app, email, PASSWORD).await;
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(me(&app, at).await["email_verified"], false);

    // Following the link shows a button and changes nothing (mail scanners follow links).
    let page = no_redirects().get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("action=\"/verify\"") && html.contains(&token),
        "{html}"
    );
    assert_eq!(me(&app, at).await["email_verified"], false);

    // The page's button posts the token (a form, from our own origin).
    let r = no_redirects()
        .post(app.url("/verify"))
        .header("origin", &app.base)
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Email verified"));
    assert_eq!(me(&app, at).await["email_verified"], true);

    // Once only, on the page and on the API.
    let again = app
        .post_json("/v1/email/verify", &json!({ "token": token }))
        .await;
    assert_problem(again, StatusCode::BAD_REQUEST, "invalid_link").await;
    // Garbage and a forged tag are refused the same way.
    for bad in [
        "nonsense",
        &token.replace('.', "x"),
        &format!("{}A", &token[..token.len() - 1]),
    ] {
        let r = app
            .post_json("/v1/email/verify", &json!({ "token": bad }))
            .await;
        assert_problem(r, StatusCode::BAD_REQUEST, "invalid_link").await;
    }
    // Verified already: no more links.
    let r = app
        .call(
            reqwest::Method::POST,
            "/v1/me/email/verify",
            &crate::support::Auth::Bearer(at.into()),
            None,
        )
        .await;
    assert_problem(r, StatusCode::CONFLICT, "already_verified").await;
    let root = app.root_key().await;
    let event = app.wait_for_audit(&root, "email.verified").await;
    assert_eq!(event["actor"], user["id"]);
    app.stop().await;
}

async fn resending_a_verification_link_is_limited(backend: Backend) {
    let Some(sink) = SmtpSink::start().await else {
        return;
    };
    let app = mailing_app(backend, &sink, |_| {}).await;
    let email = "resend@example.com";
    app.register(email).await;
    sink.wait_for(email, 1).await;
    let at = access_token(&app, email, PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = crate::support::Auth::Bearer(at.clone());
    let resend = || app.call(reqwest::Method::POST, "/v1/me/email/verify", &auth, None);
    // One link a minute: the one registration sent counts.
    let r = resend().await;
    assert!(r.headers().contains_key("retry-after"));
    assert_problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    app.execute_sql("UPDATE email_tokens SET created_at = created_at - 120000")
        .await;
    assert_eq!(resend().await.status(), StatusCode::ACCEPTED);
    let second = sink.wait_for(email, 2).await;
    assert_eq!(resend().await.status(), StatusCode::TOO_MANY_REQUESTS);
    // Both links work until one is used; they verify the same address.
    let (_, token) = link_in(&second, "/verify");
    let r = app
        .post_json("/v1/email/verify", &json!({ "token": token }))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Five an hour at most.
    app.execute_sql("UPDATE users SET email_verified_at = NULL")
        .await;
    app.execute_sql("UPDATE email_tokens SET created_at = created_at - 120000")
        .await;
    for _ in 0..3 {
        assert_eq!(resend().await.status(), StatusCode::ACCEPTED);
        app.execute_sql("UPDATE email_tokens SET created_at = created_at - 61000")
            .await;
    }
    assert_eq!(resend().await.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

async fn logins_wait_for_a_verified_email_when_the_server_requires_it(backend: Backend) {
    let Some(sink) = SmtpSink::start().await else {
        return;
    };
    let app = mailing_app(backend, &sink, |c| c.require_verified_email = true).await;
    let email = "strict@example.com";
    app.register(email).await;
    let r = app.login(email, PASSWORD).await;
    assert_problem(r, StatusCode::FORBIDDEN, "email_not_verified").await;
    // A wrong password still says only that.
    let r = app.login(email, "not the password at all").await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    // The login page says what to do and offers a new link.
    let page = no_redirects()
        .post(app.url("/login"))
        .header("origin", &app.base)
        .form(&[
            ("email", email),
            ("password", PASSWORD),
            ("return_to", "/account"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Verify your email address first") && html.contains("href=\"/verify\""),
        "{html}"
    );
    // The resend form answers alike for any address, and sends only to the account.
    for who in [email, "nobody-here@example.com"] {
        app.execute_sql("UPDATE email_tokens SET created_at = created_at - 120000")
            .await;
        let r = app
            .post_json("/v1/email/verify/resend", &json!({ "email": who }))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let mail = sink.wait_for(email, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.messages_to("nobody-here@example.com").is_empty());
    let (_, token) = link_in(&mail, "/verify");
    let r = app
        .post_json("/v1/email/verify", &json!({ "token": token }))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
    app.stop().await;
}

async fn a_password_reset_answers_alike_and_ends_every_way_in(backend: Backend) {
    let Some(sink) = SmtpSink::start().await else {
        return;
    };
    let app = mailing_app(backend, &sink, |_| {}).await;
    let email = "forgetful@example.com";
    app.register(email).await;
    sink.wait_for(email, 1).await;
    let tokens = access_token(&app, email, PASSWORD).await;
    let at = tokens["access_token"].as_str().unwrap().to_owned();
    let rt = tokens["refresh_token"].as_str().unwrap().to_owned();
    let session = app
        .post_json(
            "/v1/sessions",
            &json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    assert_eq!(session.status(), StatusCode::CREATED);
    let cookie = session.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    // Known and unknown addresses get the same answer, JSON or form.
    let known = app
        .post_json("/v1/password-reset", &json!({ "email": email }))
        .await;
    let unknown = app
        .client
        .post(app.url("/v1/password-reset"))
        .form(&[("email", "no-such-person@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(known.text().await.unwrap(), unknown.text().await.unwrap());
    let bad = app
        .post_json("/v1/password-reset", &json!({ "email": "not an email" }))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let mail = sink.wait_for(email, 2).await;
    assert_eq!(mail["subject"], "Reset your password");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.messages_to("no-such-person@example.com").is_empty());
    let (link, token) = link_in(&mail, "/reset");
    assert!(
        link.starts_with(&format!("{}/reset?token=pcr_", app.base)),
        "{link}"
    );

    let r = app
        .post_json(
            "/v1/password-reset/confirm",
            &json!({ "token": token, "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Every way in from before is over: access token, refresh token, session.
    let r = app.get_bearer("/v1/me", &at).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .post_json("/v1/auth/refresh", &json!({ "refresh_token": rt }))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The old password is gone, the new one works, and the address counts as verified.
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let t = access_token(&app, email, NEW_PASSWORD).await;
    assert_eq!(
        me(&app, t["access_token"].as_str().unwrap()).await["email_verified"],
        true
    );
    // The link worked once.
    let again = app
        .post_json(
            "/v1/password-reset/confirm",
            &json!({ "token": token, "new_password": "another fine passphrase" }),
        )
        .await;
    assert_problem(again, StatusCode::BAD_REQUEST, "invalid_link").await;
    let root = app.root_key().await;
    app.wait_for_audit(&root, "password.reset").await;
    let requested = app.wait_for_audit(&root, "password.reset_requested").await;
    assert!(requested.to_string().contains("\"known\""), "{requested}");
    app.stop().await;
}

async fn reset_links_expire_and_weak_passwords_keep_the_link(backend: Backend) {
    let Some(sink) = SmtpSink::start().await else {
        return;
    };
    let app = mailing_app(backend, &sink, |_| {}).await;
    let email = "careful@example.com";
    app.register(email).await;
    let r = app
        .post_json("/v1/password-reset", &json!({ "email": email }))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mail = sink.wait_for(email, 2).await;
    let (_, token) = link_in(&mail, "/reset");
    // A weak password is refused with the policy's reasons, and the link still works.
    let r = app
        .post_json(
            "/v1/password-reset/confirm",
            &json!({ "token": token, "new_password": "password" }),
        )
        .await;
    let body = assert_problem(r, StatusCode::BAD_REQUEST, "weak_password").await;
    assert!(body.to_string().contains("too_short"), "{body}");
    // The page shows the reasons inline.
    let page = no_redirects()
        .post(app.url("/reset"))
        .header("origin", &app.base)
        .form(&[
            ("token", token.as_str()),
            ("new_password", "careful-passphrase"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("id=\"password-reasons\"") && html.contains("before the @"),
        "{html}"
    );
    // From another site, the form is refused.
    let r = no_redirects()
        .post(app.url("/reset"))
        .header("origin", "https://evil.example")
        .form(&[("token", token.as_str()), ("new_password", NEW_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Thirty minutes, then it is dead.
    let lifetime = app
        .scalar_i64("SELECT MAX(expires_at - created_at) FROM email_tokens WHERE purpose = 'reset'")
        .await;
    assert!(
        lifetime <= 30 * 60 * 1000 && lifetime > 29 * 60 * 1000,
        "{lifetime}"
    );
    app.execute_sql(&format!(
        "UPDATE email_tokens SET expires_at = {} WHERE purpose = 'reset'",
        portcullis_core::clock::Millis::now().0 - 1
    ))
    .await;
    let r = app
        .post_json(
            "/v1/password-reset/confirm",
            &json!({ "token": token, "new_password": NEW_PASSWORD }),
        )
        .await;
    assert_problem(r, StatusCode::BAD_REQUEST, "invalid_link").await;
    assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
    app.stop().await;
}
