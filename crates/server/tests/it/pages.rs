//! The login and account pages over HTTP (the browser tests in `interop` drive them in Chromium).

use reqwest::{Client, StatusCode, redirect};

use crate::on_both_stores;
use crate::support::{Backend, PASSWORD, TestApp};

on_both_stores!(
    login_page_signs_in_and_honours_only_same_origin_return_to,
    login_page_errors_are_inline_and_reveal_nothing,
    account_page_needs_a_live_session,
    account_forms_need_the_csrf_field_and_our_origin,
    account_page_creates_rolls_and_revokes_keys_and_logs_out,
);

fn no_redirects() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Logs in through the form; returns the cookie pair.
async fn form_login(app: &TestApp, email: &str) -> String {
    let r = no_redirects()
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
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn hidden_csrf(page: &str) -> String {
    let at = page.find("name=\"csrf_token\" value=\"").unwrap() + 25;
    page[at..].split('"').next().unwrap().to_owned()
}

async fn account(app: &TestApp, cookie: &str) -> (StatusCode, String) {
    let r = no_redirects()
        .get(app.url("/account"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn login_page_signs_in_and_honours_only_same_origin_return_to(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let r = app.client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["content-security-policy"], PAGE_CSP);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let html = r.text().await.unwrap();
    assert!(html.contains("<label for=\"email\">Email</label>"));
    assert!(html.contains("<label for=\"password\">Password</label>"));
    assert!(!html.contains("<script"), "no script at all");
    assert!(
        !html.contains("style="),
        "no inline styles (the CSP forbids them)"
    );
    let css = app
        .client
        .get(app.url("/assets/portcullis.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    for (return_to, expect) in [
        ("/account?tab=keys", "/account?tab=keys"),
        ("https://evil.example/", "/account"),
        ("//evil.example", "/account"),
        ("/\\evil.example", "/account"),
    ] {
        let r = no_redirects()
            .post(app.url("/login"))
            .header("sec-fetch-site", "same-origin")
            .form(&[
                ("email", "alice@example.com"),
                ("password", PASSWORD),
                ("return_to", return_to),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{return_to}");
        assert_eq!(r.headers()["location"], expect, "{return_to}");
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.starts_with("__Host-portcullis=pcs_"));
        assert!(cookie.ends_with("; Path=/; HttpOnly; Secure; SameSite=Lax"));
    }
    // Already signed in: the login page sends you on.
    let cookie = form_login(&app, "alice@example.com").await;
    let r = no_redirects()
        .get(app.url("/login?return_to=//evil.example"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/account");
}

async fn login_page_errors_are_inline_and_reveal_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let mut answers = Vec::new();
    for (email, password) in [
        ("alice@example.com", "the wrong password entirely"),
        ("nobody@example.com", PASSWORD),
    ] {
        let r = no_redirects()
            .post(app.url("/login"))
            .form(&[
                ("email", email),
                ("password", password),
                ("return_to", "/account"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get("set-cookie").is_none());
        let html = r.text().await.unwrap();
        assert!(html.contains("The email or password is wrong."));
        // The page echoes the email back (escaped) so that only the password needs retyping.
        answers.push(html.replace(email, "EMAIL"));
    }
    assert_eq!(
        answers[0], answers[1],
        "unknown account and wrong password look the same"
    );
    for form in [
        vec![("email", "alice@example.com")],
        vec![("password", PASSWORD)],
        vec![],
    ] {
        let r = no_redirects()
            .post(app.url("/login"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{form:?}");
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("Enter your email and your password.")
        );
    }
    // A malformed email is named; an over-long password is just wrong.
    let long = "p".repeat(5000);
    for (email, password, status, text) in [
        (
            "not-an-email",
            PASSWORD,
            StatusCode::BAD_REQUEST,
            "Enter a valid email address.",
        ),
        (
            "alice@example.com",
            long.as_str(),
            StatusCode::UNAUTHORIZED,
            "The email or password is wrong.",
        ),
    ] {
        let r = no_redirects()
            .post(app.url("/login"))
            .form(&[("email", email), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{email}");
        assert!(r.text().await.unwrap().contains(text), "{email}");
    }
    // Markup in the email is escaped, not rendered.
    let r = no_redirects()
        .post(app.url("/login"))
        .form(&[
            ("email", "<script>x</script>@e.com"),
            ("password", "whatever it is"),
        ])
        .send()
        .await
        .unwrap();
    let html = r.text().await.unwrap();
    assert!(!html.contains("<script>x"));
    // Posted from another site: refused.
    let r = no_redirects()
        .post(app.url("/login"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("email", "alice@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());
    // Throttled like the API: after the free failures, a wait, shown inline.
    let mut last = StatusCode::OK;
    for i in 0..8 {
        let r = no_redirects()
            .post(app.url("/login"))
            .form(&[
                ("email", "alice@example.com"),
                ("password", &format!("wrong guess number {i}")),
            ])
            .send()
            .await
            .unwrap();
        last = r.status();
        if last == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            assert!(r.text().await.unwrap().contains("Too many attempts"));
            break;
        }
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

async fn account_page_needs_a_live_session(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let r = no_redirects()
        .get(app.url("/account"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/login?return_to=/account");

    let cookie = form_login(&app, "alice@example.com").await;
    let (status, html) = account(&app, &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("alice@example.com"));
    assert!(html.contains("This device"));

    // Tampered, and revoked: back to the login page, with the cookie cleared.
    let mut tampered = cookie.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let r = no_redirects()
        .get(app.url("/account"))
        .header("cookie", &tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let root = app.root_key().await;
    let me: serde_json::Value = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = me["id"].as_str().unwrap();
    app.client
        .delete(app.url(&format!("/admin/v1/users/{user_id}/sessions")))
        .header("x-api-key", &root)
        .send()
        .await
        .unwrap();
    let (status, _) = account(&app, &cookie).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

async fn account_forms_need_the_csrf_field_and_our_origin(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.register("alice@example.com").await;
    let cookie = form_login(&app, "alice@example.com").await;
    let other = form_login(&app, "alice@example.com").await;
    let (_, html) = account(&app, &cookie).await;
    let csrf = hidden_csrf(&html);
    let (_, other_html) = account(&app, &other).await;
    let other_csrf = hidden_csrf(&other_html);

    let post = |fields: Vec<(&'static str, String)>, site: &'static str| {
        no_redirects()
            .post(app.url("/account/keys"))
            .header("cookie", &cookie)
            .header("sec-fetch-site", site)
            .form(&fields)
            .send()
    };
    for (fields, site) in [
        (vec![("name", "k".to_owned())], "same-origin"),
        (
            vec![("name", "k".to_owned()), ("csrf_token", other_csrf.clone())],
            "same-origin",
        ),
        (
            vec![("name", "k".to_owned()), ("csrf_token", csrf.clone())],
            "cross-site",
        ),
    ] {
        let r = post(fields, site).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()["x-portcullis-error"], "csrf_failed");
    }
    let keys: serde_json::Value = app
        .client
        .get(app.url("/v1/keys"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys["keys"].as_array().unwrap().len(),
        0,
        "nothing was created"
    );
    // Another site's post arrives without the cookie (SameSite=Lax): refused, and it must not clear
    // the browser's cookie either (that would let any site log people out).
    let r = no_redirects()
        .post(app.url("/account/logout"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());
    let r = no_redirects()
        .post(app.url("/account/keys"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("name", "k")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers().get("set-cookie").is_none(),
        "no cookie was sent, none to clear"
    );
    // A form without a name is a precise error on the page.
    let r = post(vec![("csrf_token", csrf.clone())], "same-origin")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("Give the key a name."));
    let r = post(
        vec![
            ("csrf_token", csrf.clone()),
            ("name", "k".into()),
            ("scopes", "admin".into()),
        ],
        "same-origin",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("only administrators may grant scope admin")
    );
    // Nor any scope the operator did not open to users.
    let r = post(
        vec![
            ("csrf_token", csrf.clone()),
            ("name", "k".into()),
            ("scopes", "billing:admin".into()),
        ],
        "same-origin",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("granted by administrators")
    );
}

async fn account_page_creates_rolls_and_revokes_keys_and_logs_out(b: Backend) {
    // The operator lets users give their keys the orders scopes (self_service_scopes).
    let app = TestApp::spawn_with(b, |c| {
        c.self_service_scopes = vec!["orders:read".into(), "orders:write".into()];
    })
    .await;
    app.register("alice@example.com").await;
    let cookie = form_login(&app, "alice@example.com").await;
    let (_, html) = account(&app, &cookie).await;
    let csrf = hidden_csrf(&html);
    let form = |path: &str, fields: Vec<(&str, &str)>| {
        let mut fields = fields;
        fields.push(("csrf_token", &csrf));
        no_redirects()
            .post(app.url(path))
            .header("cookie", &cookie)
            .header("origin", &app.base)
            .form(&fields)
            .send()
    };
    let r = form(
        "/account/keys",
        vec![
            ("name", "laptop script"),
            ("scopes", "orders:read  orders:write"),
            ("expires", "2099-12-31"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    let at = html.find("<code id=\"new-key\">").unwrap() + 19;
    let key = html[at..].split('<').next().unwrap().to_owned();
    assert!(key.starts_with("pk_live_"));
    // The key works, and the page lists it by its start only.
    let me = app.get_with_key("/v1/me", &key).await;
    assert_eq!(me.status(), StatusCode::OK);
    let (_, html) = account(&app, &cookie).await;
    assert!(!html.contains(&key));
    assert!(html.contains(&key[..12]));
    assert!(html.contains("orders:read orders:write"));
    assert!(html.contains("2099-12-31 23:59 UTC"));
    let at = html.find("data-key-id=\"").unwrap() + 13;
    let id = html[at..].split('"').next().unwrap().to_owned();

    let r = form(&format!("/account/keys/{id}/roll"), vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let html = r.text().await.unwrap();
    let at = html.find("<code id=\"new-key\">").unwrap() + 19;
    let rolled = html[at..].split('<').next().unwrap().to_owned();
    assert_ne!(rolled, key);
    assert_eq!(
        app.get_with_key("/v1/me", &key).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_with_key("/v1/me", &rolled).await.status(),
        StatusCode::OK
    );
    let (_, html) = account(&app, &cookie).await;
    let at = html.find("data-key-id=\"").unwrap() + 13;
    let rolled_id = html[at..].split('"').next().unwrap().to_owned();

    let r = form(&format!("/account/keys/{rolled_id}/revoke"), vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/account?done=key_revoked");
    assert_eq!(
        app.get_with_key("/v1/me", &rolled).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Password change: other sessions end, this browser gets a new session.
    let other = form_login(&app, "alice@example.com").await;
    let r = form(
        "/account/password",
        vec![
            ("current_password", PASSWORD),
            ("new_password", "an entirely new passphrase"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let fresh = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(account(&app, &other).await.0, StatusCode::SEE_OTHER);
    assert_eq!(account(&app, &cookie).await.0, StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/account?done=password_changed");
    let r = no_redirects()
        .get(app.url("/account?done=password_changed"))
        .header("cookie", &fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("Your password was changed"));

    // Log out.
    let csrf = hidden_csrf(&html);
    let r = no_redirects()
        .post(app.url("/account/logout"))
        .header("cookie", &fresh)
        .header("origin", &app.base)
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/login");
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(account(&app, &fresh).await.0, StatusCode::SEE_OTHER);
}
