//! Forward auth over HTTP (API.md "Forward auth for gateways"): `/v1/authorize` as a gateway calls
//! it, with every credential kind, the route rules, API-key metering, revocation, RFC 9728 metadata
//! and the bad input a gateway can pass on, on both stores. Real nginx and Caddy in front of an
//! upstream are in `gateways.rs`.

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, TestApp};
use portcullis_server::Config;
use portcullis_server::forward_auth::{DefaultPolicy, RouteRule};

on_both_stores!(
    every_credential_kind_gets_identity_headers,
    route_rules_pick_scopes_kinds_audiences_and_anonymous_routes,
    api_keys_spend_their_uses_and_rate_and_revocations_apply_at_once,
    bad_forwarded_requests_get_clear_answers,
    protected_resource_metadata_names_us,
    default_policy_deny_refuses_unmatched_requests,
);

pub const RESOURCE: &str = "https://api.example.test/orders";

/// The rules these tests (and the gateway tests) run with.
pub fn rules(config: &mut Config) {
    let rule = |path: &str| RouteRule {
        path: path.into(),
        ..RouteRule::default()
    };
    config.route = vec![
        RouteRule {
            methods: Some(vec!["GET".into()]),
            scopes: vec!["orders:read".into()],
            resource: Some(RESOURCE.into()),
            ..rule("/orders/*")
        },
        RouteRule {
            scopes: vec!["orders:write".into()],
            resource: Some(RESOURCE.into()),
            ..rule("/orders/*")
        },
        RouteRule {
            anonymous: true,
            ..rule("/public/*")
        },
        RouteRule {
            methods_allowed: Some(vec!["api_key".into()]),
            ..rule("/keys-only/*")
        },
        RouteRule {
            login_redirect: true,
            ..rule("/app/*")
        },
    ];
}

/// A forward-auth call as Caddy and Traefik make it (redirects are answers here, not followed).
pub fn ask(app: &TestApp, method: &str, uri: &str) -> RequestBuilder {
    crate::oauth::no_redirects()
        .get(app.url("/v1/authorize"))
        .header("x-forwarded-method", method)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "api.example.test")
        .header("x-forwarded-uri", uri)
}

/// [`ask`] with an API key.
async fn ask_key(app: &TestApp, method: &str, uri: &str, key: &str) -> Response {
    ask(app, method, uri)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

/// [`ask`] with a Bearer token.
async fn ask_bearer(app: &TestApp, method: &str, uri: &str, token: &str) -> Response {
    ask(app, method, uri)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// A response header; identity headers that do not apply are sent empty, which reads as `None`.
fn h<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .filter(|v| !v.is_empty())
}

async fn problem_code(r: Response) -> String {
    let body: Value = r.json().await.unwrap();
    body["code"].as_str().unwrap().to_owned()
}

async fn key(app: &TestApp, root: &str, body: Value) -> (String, String) {
    let r = app.post_with_key("/v1/keys", root, Some(&body)).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let k: Value = r.json().await.unwrap();
    (
        k["key"].as_str().unwrap().to_owned(),
        k["id"].as_str().unwrap().to_owned(),
    )
}

/// A confidential client that may ask for `RESOURCE` tokens; returns (id, secret).
pub async fn orders_client(app: &TestApp, root: &str, format: &str) -> (String, String) {
    let r = app
        .post_with_key(
            "/admin/v1/clients",
            root,
            Some(&json!({
                "name": "orders-svc", "type": "confidential", "grant_types": ["client_credentials"],
                "scopes": ["orders:read", "orders:write"],
                "token_endpoint_auth_method": "client_secret_post", "access_token_format": format,
            })),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let c: Value = r.json().await.unwrap();
    (
        c["client_id"].as_str().unwrap().to_owned(),
        c["client_secret"].as_str().unwrap().to_owned(),
    )
}

/// A client-credentials token for `RESOURCE` (named by RFC 8707 `resource`, allowed because a route
/// rule protects it).
pub async fn resource_token(app: &TestApp, id: &str, secret: &str, scope: &str) -> String {
    let r = app
        .client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", scope),
            ("resource", RESOURCE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let t: Value = r.json().await.unwrap();
    t["access_token"].as_str().unwrap().to_owned()
}

async fn every_credential_kind_gets_identity_headers(b: Backend) {
    let app = TestApp::spawn_with(b, rules).await;
    let root = app.root_key().await;
    let user = app.user_with_tokens("fa@example.com").await;
    let jwt = user["access_token"].as_str().unwrap();
    let uid = crate::support::jwt_claims(jwt)["sub"]
        .as_str()
        .unwrap()
        .to_owned();

    // No credential: a bare challenge.
    let r = ask(&app, "GET", "/anything").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(h(&r, "www-authenticate"), Some("Bearer"));
    assert!(h(&r, "x-auth-subject").is_none());

    // The user's own access JWT (our audience) on a route without a resource.
    let r = ask_bearer(&app, "GET", "/anything?x=1", jwt).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h(&r, "x-auth-subject"), Some(uid.as_str()));
    assert_eq!(h(&r, "x-auth-method"), Some("jwt"));
    assert_eq!(h(&r, "x-auth-scopes"), Some("keys:read keys:write"));
    assert_eq!(h(&r, "x-auth-client-id"), Some("portcullis"));
    assert_eq!(h(&r, "cache-control"), Some("no-store"));

    // An API key, in either header.
    let (k, kid) = key(
        &app,
        &root,
        json!({"name": "fa", "scopes": ["orders:read"]}),
    )
    .await;
    for req in [
        ask(&app, "GET", "/orders/1").header("x-api-key", &k),
        ask(&app, "GET", "/orders/1").bearer_auth(&k),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(h(&r, "x-auth-method"), Some("api_key"));
        assert_eq!(h(&r, "x-auth-key-id"), Some(kid.as_str()));
        assert_eq!(h(&r, "x-auth-subject"), Some(kid.as_str()));
        assert_eq!(h(&r, "x-auth-scopes"), Some("orders:read"));
    }

    // OAuth client-credentials tokens for the protected resource: a JWT and an opaque token.
    for (format, method) in [("jwt", "jwt"), ("opaque", "oauth")] {
        let (id, secret) = orders_client(&app, &root, format).await;
        let t = resource_token(&app, &id, &secret, "orders:read").await;
        let r = ask_bearer(&app, "GET", "/orders/7", &t).await;
        assert_eq!(r.status(), StatusCode::OK, "{format}");
        assert_eq!(h(&r, "x-auth-method"), Some(method));
        assert_eq!(h(&r, "x-auth-client-id"), Some(id.as_str()));
        assert_eq!(h(&r, "x-auth-subject"), Some(id.as_str()));
        // The same token lacks orders:write for a POST.
        let r = ask_bearer(&app, "POST", "/orders/7", &t).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let challenge = h(&r, "www-authenticate").unwrap().to_owned();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(challenge.contains("scope=\"orders:write\""), "{challenge}");
        assert_eq!(problem_code(r).await, "insufficient_scope");
        // And is meant for the orders API only, not for routes of our own audience.
        let r = ask_bearer(&app, "GET", "/elsewhere", &t).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{format}");
    }

    // A session cookie.
    let crate::sessions::Session {
        cookie, id: sid, ..
    } = crate::sessions::login(&app, "fa@example.com").await;
    let r = ask(&app, "GET", "/anything")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(h(&r, "x-auth-method"), Some("session"));
    assert_eq!(h(&r, "x-auth-session-id"), Some(sid.as_str()));
    assert_eq!(h(&r, "x-auth-subject"), Some(uid.as_str()));
    // A cookie-authenticated change needs the CSRF token, as on our own API.
    let r = ask(&app, "POST", "/anything")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_code(r).await, "csrf_failed");

    // nginx's form: X-Original-URI / X-Original-Method with Host.
    let r = app
        .client
        .get(app.url("/v1/authorize"))
        .header("x-original-method", "GET")
        .header("x-original-uri", "/orders/1")
        .header("x-api-key", &k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Envoy's form: the original method and path under /v1/authorize.
    let r = app
        .client
        .post(app.url("/v1/authorize/orders/1"))
        .header("x-api-key", &k)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a POST needs orders:write"
    );
    let r = app
        .client
        .get(app.url("/v1/authorize/orders/1?x=2"))
        .header("x-api-key", &k)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn route_rules_pick_scopes_kinds_audiences_and_anonymous_routes(b: Backend) {
    let app = TestApp::spawn_with(b, rules).await;
    let root = app.root_key().await;
    let user = app.user_with_tokens("rr@example.com").await;
    let jwt = user["access_token"].as_str().unwrap();

    // A protected resource's 401 points at its RFC 9728 metadata.
    let r = ask(&app, "GET", "/orders/1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        h(&r, "www-authenticate"),
        Some(
            "Bearer resource_metadata=\"https://api.example.test/.well-known/oauth-protected-resource/orders\""
        )
    );
    // Our own login's token is not meant for the orders API.
    let r = ask_bearer(&app, "GET", "/orders/1", jwt).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = h(&r, "www-authenticate").unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(challenge.contains("wrong_audience"), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");

    // A key without the scope: 403, and a key of another scope cannot write.
    let (plain, _) = key(&app, &root, json!({"name": "plain"})).await;
    let r = ask_key(&app, "GET", "/orders/1", &plain).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        h(&r, "www-authenticate")
            .unwrap()
            .contains("scope=\"orders:read\"")
    );

    // methods_allowed: a JWT is refused where only keys are accepted, before anything is spent.
    let r = ask_bearer(&app, "GET", "/keys-only/x", jwt).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = ask_key(&app, "GET", "/keys-only/x", &plain).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Anonymous routes: through without a credential, with identity when one is good, and as
    // anonymous when it is not.
    let r = ask(&app, "GET", "/public/doc").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(h(&r, "x-auth-subject").is_none() && h(&r, "x-auth-method").is_none());
    assert_eq!(
        r.headers()["x-auth-subject"],
        "",
        "sent empty, so gateways overwrite"
    );
    let r = ask_key(&app, "GET", "/public/doc", &plain).await;
    assert_eq!(h(&r, "x-auth-method"), Some("api_key"));
    let r = ask_bearer(&app, "GET", "/public/doc", "garbage.token.here").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(h(&r, "x-auth-subject").is_none());

    // Browser routes send people without a session to log in, and back afterwards.
    let r = ask(&app, "GET", "/app/inbox?tab=2").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        h(&r, "location"),
        Some("/login?return_to=%2Fapp%2Finbox%3Ftab%3D2")
    );
    let r = ask(&app, "GET", "/app/inbox")
        .header("cookie", "__Host-portcullis=pcs_AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "a dead session logs in again"
    );
    let r = ask_bearer(&app, "GET", "/app/inbox", jwt).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The login page takes that return_to.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/login?return_to=%2Fapp%2Finbox%3Ftab%3D2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn api_keys_spend_their_uses_and_rate_and_revocations_apply_at_once(b: Backend) {
    let app = TestApp::spawn_with(b, rules).await;
    let root = app.root_key().await;
    let (metered, _) = key(&app, &root, json!({"name": "m", "remaining": 2})).await;
    for _ in 0..2 {
        let r = ask_key(&app, "GET", "/x", &metered).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = ask_key(&app, "GET", "/x", &metered).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_code(r).await, "usage_exceeded");
    // The uses forward auth spent are the key's: verify sees none left.
    let r = app
        .post_with_key("/v1/keys/verify", &root, Some(&json!({"key": metered})))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "USAGE_EXCEEDED", "{v}");

    let (limited, _) = key(
        &app,
        &root,
        json!({"name": "r", "ratelimit": {"limit": 2, "duration_ms": 60000}}),
    )
    .await;
    for _ in 0..2 {
        let r = ask_key(&app, "GET", "/x", &limited).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = ask_key(&app, "GET", "/x", &limited).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(h(&r, "retry-after").is_some());
    assert_eq!(h(&r, "ratelimit-policy"), Some("\"api-key\";q=2;w=60"));
    assert!(h(&r, "ratelimit").unwrap().contains(";r=0;"));

    // Revoking a key, logging out a token: refused on the next request.
    let (k, kid) = key(&app, &root, json!({"name": "gone"})).await;
    let r = ask_key(&app, "GET", "/x", &k).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{kid}"),
            &crate::support::Auth::Key(root.clone()),
            None,
        )
        .await;
    assert!(r.status().is_success(), "{:?}", r.status());
    let r = ask_key(&app, "GET", "/x", &k).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let user = app.user_with_tokens("rv@example.com").await;
    let jwt = user["access_token"].as_str().unwrap();
    let r = ask_bearer(&app, "GET", "/x", jwt).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .post(app.url("/v1/auth/logout-all"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.status());
    let r = ask_bearer(&app, "GET", "/x", jwt).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An opaque token revoked by its client.
    let (id, secret) = orders_client(&app, &root, "opaque").await;
    let t = resource_token(&app, &id, &secret, "orders:read").await;
    let r = ask_bearer(&app, "GET", "/orders/1", &t).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .post(app.url("/oauth2/revoke"))
        .form(&[
            ("token", t.as_str()),
            ("client_id", &id),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = ask_bearer(&app, "GET", "/orders/1", &t).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn bad_forwarded_requests_get_clear_answers(b: Backend) {
    let app = TestApp::spawn_with(b, rules).await;
    let root = app.root_key().await;
    // The gateway said nothing about the request.
    let r = app
        .client
        .get(app.url("/v1/authorize"))
        .header("x-api-key", &root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(r).await, "bad_forwarded_request");
    for uri in ["orders/1", "http://evil.example/x"] {
        let r = ask_key(&app, "GET", uri, &root).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{uri}");
    }
    // The client's request is refused: paths that could mean another route, credentials in the URL.
    for (uri, code) in [
        ("/public/../orders/1", "bad_path"),
        ("/public/%2e%2e/orders/1", "bad_path"),
        ("/public%2F..%2Forders", "bad_path"),
        ("/x?api_key=whatever", "credential_in_query"),
        (&format!("/x?k={root}"), "credential_in_query"),
        (&format!("/{}", "a".repeat(9000)), "uri_too_long"),
    ] {
        let r = ask(&app, "GET", uri).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(problem_code(r).await, code, "{uri}");
    }
    // Two Authorization headers, or two credentials: which was meant cannot be known.
    let r = ask(&app, "GET", "/x")
        .header("authorization", format!("Bearer {root}"))
        .header("authorization", "Bearer other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        h(&r, "www-authenticate")
            .unwrap()
            .contains("invalid_request")
    );
    let r = ask(&app, "GET", "/x")
        .header("x-api-key", &root)
        .bearer_auth("another")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Two forwarded URIs.
    let r = ask(&app, "GET", "/x")
        .header("x-forwarded-uri", "/y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Absurdly long headers are refused by the listener, and the server keeps serving.
    let r = ask(&app, "GET", "/x")
        .header("x-junk", "j".repeat(200_000))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "{:?}", r.status());
    }
    let r = ask_key(&app, "GET", "/x", &root).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn protected_resource_metadata_names_us(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        rules(c);
        c.route.push(RouteRule {
            path: "/v2/*".into(),
            host: Some("other.example.test".into()),
            scopes: vec!["v2:use".into()],
            resource: Some("https://other.example.test/orders".into()),
            ..RouteRule::default()
        });
        c.route.push(RouteRule {
            path: "/root/*".into(),
            resource: Some("https://root.example.test".into()),
            ..RouteRule::default()
        });
    })
    .await;
    let r = app
        .client
        .get(app.url("/.well-known/oauth-protected-resource/orders"))
        .header("x-forwarded-host", "api.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["resource"], RESOURCE);
    assert_eq!(m["authorization_servers"], json!([app.base]));
    assert_eq!(
        m["scopes_supported"],
        json!(["orders:read", "orders:write"])
    );
    assert_eq!(m["bearer_methods_supported"], json!(["header"]));
    // Two resources share the path; the host tells them apart.
    let r = app
        .client
        .get(app.url("/.well-known/oauth-protected-resource/orders"))
        .header("x-forwarded-host", "other.example.test")
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["resource"], "https://other.example.test/orders");
    assert_eq!(m["scopes_supported"], json!(["v2:use"]));
    let r = app
        .client
        .get(app.url("/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["resource"], "https://root.example.test");
    assert_eq!(m["scopes_supported"], json!([]));
    let r = app
        .client
        .get(app.url("/.well-known/oauth-protected-resource/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The authorization server the metadata names issues tokens for that resource.
    let r = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

async fn default_policy_deny_refuses_unmatched_requests(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        rules(c);
        c.default_policy = DefaultPolicy::Deny;
    })
    .await;
    let root = app.root_key().await;
    let r = ask_key(&app, "GET", "/unlisted", &root).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem_code(r).await, "no_route");
    let r = ask(&app, "GET", "/public/x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}
