//! RFC 9421 request signatures over HTTP (API.md "HMAC request signatures"): signing keys made,
//! listed and revoked; signed requests as a credential on `/v1/*`, at `/v1/authorize` and through
//! `/v1/signatures/verify`; every refusal with its precise `reason`; replay; revocation on a second
//! node within a second; on both stores.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue};
use portcullis_client::RequestSigner;
use portcullis_core::httpsig::Message;
use portcullis_core::httpsig::digest::{DigestAlg, content_digest};
use portcullis_core::httpsig::keys::SigningKey;
use portcullis_core::httpsig::sign::{Signing, sign};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, TestApp, assert_problem, until};

on_both_stores!(
    signing_keys_are_made_listed_and_revoked,
    signed_requests_are_a_credential_and_faults_have_reasons,
    bad_signature_input_is_refused_and_the_server_keeps_serving,
    forward_auth_takes_signed_requests,
    services_verify_signatures_through_the_api,
    a_revocation_reaches_another_node_within_a_second,
);

/// A user with a session-less login token; returns the access token.
async fn user(app: &TestApp, email: &str) -> String {
    let t = app.user_with_tokens(email).await;
    t["access_token"].as_str().unwrap().to_owned()
}

async fn create_key(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/signing-keys"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// An hmac key of the user behind `token`, with `scopes`: (keyid, secret base64).
async fn hmac_key(app: &TestApp, token: &str, scopes: &[&str]) -> (String, String) {
    let r = create_key(
        app,
        token,
        json!({"name": "ci", "alg": "hmac-sha256", "scopes": scopes}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    (
        v["keyid"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// What to sign and how to break it.
#[derive(Clone)]
struct Spec<'a> {
    method: &'a str,
    /// The target URI the signer signs (normally the URL the request goes to).
    target: String,
    components: Vec<&'a str>,
    created: i64,
    nonce: Option<String>,
    keyid: String,
    with_alg: bool,
}

fn now() -> i64 {
    portcullis_core::clock::Millis::now().0 / 1000
}

fn fresh_nonce() -> String {
    crate::support::uuid_hex()
}

impl<'a> Spec<'a> {
    fn new(method: &'a str, target: String, keyid: &str) -> Self {
        Self {
            method,
            target,
            components: vec!["@method", "@target-uri"],
            created: now(),
            nonce: Some(fresh_nonce()),
            keyid: keyid.to_owned(),
            with_alg: true,
        }
    }

    /// The headers of the signed request: `extra` plus Signature-Input and Signature.
    fn headers(&self, key: &SigningKey, extra: &[(&str, &str)]) -> HeaderMap {
        let url = url::Url::parse(&self.target).unwrap();
        let mut headers = HeaderMap::new();
        for (n, v) in extra {
            headers.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap()),
            None => url.host_str().unwrap().to_owned(),
        };
        let msg = Message {
            method: self.method,
            scheme: url.scheme(),
            authority: &authority,
            path: url.path(),
            query: url.query(),
            headers: &headers,
        };
        let (input, signature) = sign(
            key,
            &Signing {
                label: "sig1",
                components: &self.components,
                keyid: &self.keyid,
                created: self.created,
                expires: None,
                nonce: self.nonce.as_deref(),
                with_alg: self.with_alg,
            },
            &msg,
        )
        .unwrap();
        headers.insert("signature-input", input.parse().unwrap());
        headers.insert("signature", signature.parse().unwrap());
        headers
    }
}

fn hmac(secret: &str) -> SigningKey {
    SigningKey::hmac(STANDARD.decode(secret).unwrap()).unwrap()
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: HeaderMap,
    body: &[u8],
) -> reqwest::Response {
    let mut req = app
        .client
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(path),
        )
        .headers(headers);
    if !body.is_empty() {
        req = req.body(body.to_vec());
    }
    req.send().await.unwrap()
}

/// A 401 `signature_invalid` with `reason`.
async fn refused(r: reqwest::Response, reason: &str) {
    let body = assert_problem(r, StatusCode::UNAUTHORIZED, "signature_invalid").await;
    assert_eq!(body["reason"], reason, "{body}");
}

async fn signing_keys_are_made_listed_and_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;

    let r = create_key(&app, &alice, json!({"name": "ci", "alg": "hmac-sha256"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let made: Value = r.json().await.unwrap();
    let keyid = made["keyid"].as_str().unwrap().to_owned();
    assert!(keyid.starts_with("sig_"), "{made}");
    assert_eq!(made["alg"], "hmac-sha256");
    assert_eq!(
        STANDARD
            .decode(made["secret"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );

    // ed25519: raw base64 and PEM SPKI.
    let pair = SigningKey::generate_ed25519().unwrap();
    let raw = STANDARD.encode(pair.ed25519_public_key().unwrap());
    let r = create_key(
        &app,
        &alice,
        json!({"name": "laptop", "alg": "ed25519", "public_key": raw}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let ed: Value = r.json().await.unwrap();
    assert!(ed.get("secret").is_none(), "{ed}");
    assert_eq!(ed["public_key"], raw.as_str());
    let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
    let r = create_key(
        &app,
        &alice,
        json!({"name": "rfc", "alg": "ed25519", "public_key": pem}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    for (body, field) in [
        (json!({"name": "x", "alg": "rsa-pss-sha512"}), "alg"),
        (json!({"name": "x", "alg": "ed25519"}), "public_key"),
        (
            json!({"name": "x", "alg": "ed25519", "public_key": "AAAA"}),
            "public_key",
        ),
        (
            json!({"name": "x", "alg": "hmac-sha256", "public_key": raw}),
            "public_key",
        ),
        (json!({"name": "", "alg": "hmac-sha256"}), "name"),
        (
            json!({"name": "x", "alg": "hmac-sha256", "scopes": ["bad scope"]}),
            "scopes",
        ),
    ] {
        let r = create_key(&app, &alice, body.clone()).await;
        let v = assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(v["errors"][0]["field"], field, "{body}: {v}");
    }
    // Administrators' scopes are not for users to grant.
    let r = create_key(
        &app,
        &alice,
        json!({"name": "x", "alg": "hmac-sha256", "scopes": ["signatures:verify"]}),
    )
    .await;
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;

    let r = app.get_bearer("/v1/signing-keys", &alice).await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    assert!(items.iter().all(|k| k.get("secret").is_none()), "{list}");
    let listed: Value = app
        .get_bearer("/v1/signing-keys", &bob)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
    let page: Value = app
        .get_bearer("/v1/signing-keys?limit=2", &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_string());

    // Bob cannot revoke Alice's key, and cannot tell it from an absent one.
    let del = |token: &str, id: &str| {
        app.client
            .delete(app.url(&format!("/v1/signing-keys/{id}")))
            .bearer_auth(token)
            .send()
    };
    assert_problem(
        del(&bob, &keyid).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        del(&bob, "sig_nope").await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        del(&alice, &keyid).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        del(&alice, &keyid).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let list: Value = app
        .get_bearer("/v1/signing-keys", &alice)
        .await
        .json()
        .await
        .unwrap();
    let revoked = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["keyid"] == keyid.as_str())
        .unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // Administrators: keys for anyone or no one, listed by owner, revoked.
    let root = app.root_key().await;
    let r = app
        .post_with_key(
            "/admin/v1/signature-keys",
            &root,
            Some(&json!({"name": "svc", "alg": "hmac-sha256", "scopes": ["signatures:verify"]})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let svc: Value = r.json().await.unwrap();
    assert!(svc["owner_id"].is_null(), "{svc}");
    let nobody: Value = app
        .get_with_key("/admin/v1/signature-keys?owner=none", &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(nobody["items"].as_array().unwrap().len(), 1, "{nobody}");
    let all: Value = app
        .get_with_key("/admin/v1/signature-keys", &root)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 4, "{all}");
    let r = app
        .client
        .delete(app.url(&format!(
            "/admin/v1/signature-keys/{}",
            svc["keyid"].as_str().unwrap()
        )))
        .header("x-api-key", &root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let audit = app.wait_for_audit(&root, "signature_key.revoked").await;
    assert!(audit.to_string().find("secret").is_none(), "{audit}");
    // No user reaches the admin routes.
    let r = app.get_bearer("/admin/v1/signature-keys", &alice).await;
    assert_problem(r, StatusCode::FORBIDDEN, "forbidden").await;
    app.stop().await;
}

async fn signed_requests_are_a_credential_and_faults_have_reasons(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = user(&app, "alice@example.com").await;
    let (keyid, secret) = hmac_key(&app, &alice, &["keys:write"]).await;
    let key = hmac(&secret);
    let me = app.url("/v1/me");

    // GET /v1/me, signed.
    let spec = Spec::new("GET", me.clone(), &keyid);
    let headers = spec.headers(&key, &[]);
    let r = send(&app, "GET", "/v1/me", headers.clone(), b"").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["email"], "alice@example.com");
    assert_eq!(v["auth"]["method"], "signature", "{v}");
    assert_eq!(v["auth"]["key_id"], keyid.as_str(), "{v}");
    // The same request again is a replay, by its nonce.
    refused(send(&app, "GET", "/v1/me", headers, b"").await, "replayed").await;
    // Without a nonce, the signature's own bytes are remembered.
    let bare = Spec {
        nonce: None,
        ..Spec::new("GET", me.clone(), &keyid)
    };
    let headers = bare.headers(&key, &[]);
    assert_eq!(
        send(&app, "GET", "/v1/me", headers.clone(), b"")
            .await
            .status(),
        StatusCode::OK
    );
    refused(send(&app, "GET", "/v1/me", headers, b"").await, "replayed").await;

    // POST with a body, covered by Content-Digest: an API key made by a signed request.
    let body = br#"{"name":"made by a signature"}"#;
    let digest = content_digest(DigestAlg::Sha256, body);
    let post = Spec {
        components: vec!["@method", "@target-uri", "content-digest", "content-type"],
        ..Spec::new("POST", app.url("/v1/keys"), &keyid)
    };
    let extra = [
        ("content-type", "application/json"),
        ("content-digest", digest.as_str()),
    ];
    let r = send(&app, "POST", "/v1/keys", post.headers(&key, &extra), body).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    // The body changed after signing: the signature still holds over the digest header, the digest
    // does not hold over the body.
    let post = Spec {
        nonce: Some(fresh_nonce()),
        ..post
    };
    let r = send(
        &app,
        "POST",
        "/v1/keys",
        post.headers(&key, &extra),
        br#"{"name":"tampered!!!!!!!!!!!!"}"#,
    )
    .await;
    refused(r, "digest_mismatch").await;
    // A body without content-digest covered.
    let plain = Spec::new("POST", app.url("/v1/keys"), &keyid);
    let r = send(
        &app,
        "POST",
        "/v1/keys",
        plain.headers(&key, &[("content-type", "application/json")]),
        body,
    )
    .await;
    refused(r, "missing_component:content-digest").await;

    // Each fault, its reason.
    let cases: Vec<(Spec, &str)> = vec![
        (
            Spec {
                created: now() - 301,
                ..Spec::new("GET", me.clone(), &keyid)
            },
            "expired",
        ),
        (
            Spec {
                created: now() + 60,
                ..Spec::new("GET", me.clone(), &keyid)
            },
            "future",
        ),
        (
            Spec {
                components: vec!["@target-uri"],
                ..Spec::new("GET", me.clone(), &keyid)
            },
            "missing_component:@method",
        ),
        (
            Spec {
                components: vec!["@method", "@authority", "@path"],
                ..Spec::new("GET", me.clone(), &keyid)
            },
            "missing_component:@query",
        ),
        (
            Spec::new("GET", me.replace("/v1/me", "/v1/other"), &keyid),
            "bad_signature",
        ),
        (Spec::new("POST", me.clone(), &keyid), "bad_signature"),
        (
            Spec::new("GET", me.replace("127.0.0.1", "localhost"), &keyid),
            "bad_signature",
        ),
        (
            Spec::new("GET", me.clone(), "sig_00000000000000000000000000000000"),
            "unknown_key",
        ),
        (Spec::new("GET", me.clone(), "made-up"), "unknown_key"),
    ];
    for (spec, reason) in cases {
        let r = send(&app, "GET", "/v1/me", spec.headers(&key, &[]), b"").await;
        refused(r, reason).await;
    }
    // @authority + @path + @query is as good as @target-uri.
    let parts = Spec {
        components: vec!["@method", "@authority", "@path", "@query"],
        ..Spec::new("GET", me.clone(), &keyid)
    };
    assert_eq!(
        send(&app, "GET", "/v1/me", parts.headers(&key, &[]), b"")
            .await
            .status(),
        StatusCode::OK
    );

    // Another user's keyid with one's own secret; an ed25519 key's public key used as an HMAC secret.
    let bob = user(&app, "bob@example.com").await;
    let (bob_key, _) = hmac_key(&app, &bob, &[]).await;
    let r = send(
        &app,
        "GET",
        "/v1/me",
        Spec::new("GET", me.clone(), &bob_key).headers(&key, &[]),
        b"",
    )
    .await;
    refused(r, "bad_signature").await;
    let pair = SigningKey::generate_ed25519().unwrap();
    let public = pair.ed25519_public_key().unwrap();
    let r = create_key(
        &app,
        &alice,
        json!({"name": "ed", "alg": "ed25519", "public_key": STANDARD.encode(public)}),
    )
    .await;
    let ed_id = r.json::<Value>().await.unwrap()["keyid"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged_key = SigningKey::hmac(public.to_vec()).unwrap();
    let forged = Spec::new("GET", me.clone(), &ed_id);
    refused(
        send(&app, "GET", "/v1/me", forged.headers(&forged_key, &[]), b"").await,
        "alg_mismatch",
    )
    .await;
    let forged = Spec {
        with_alg: false,
        ..Spec::new("GET", me.clone(), &ed_id)
    };
    refused(
        send(&app, "GET", "/v1/me", forged.headers(&forged_key, &[]), b"").await,
        "bad_signature",
    )
    .await;
    // The real ed25519 key works, through portcullis-client's signer.
    let signer = RequestSigner::ed25519(&ed_id, &[]).err();
    assert!(signer.is_some(), "an empty private key is refused");
    let ed = Spec::new("GET", me.clone(), &ed_id);
    assert_eq!(
        send(&app, "GET", "/v1/me", ed.headers(&pair, &[]), b"")
            .await
            .status(),
        StatusCode::OK
    );
    let client_signer = RequestSigner::hmac(&keyid, &secret).unwrap();
    let mut req = app
        .client
        .post(app.url("/v1/keys"))
        .json(&json!({"name": "client crate"}))
        .build()
        .unwrap();
    client_signer.sign(&mut req).unwrap();
    let r = app.client.execute(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);

    // A signature beside another credential is refused before either is checked.
    let mut headers = Spec::new("GET", me.clone(), &keyid).headers(&key, &[]);
    headers.insert("authorization", format!("Bearer {alice}").parse().unwrap());
    let r = send(&app, "GET", "/v1/me", headers, b"").await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "multiple_credentials").await;

    // A revoked key is an unknown key, at once.
    let r = app
        .client
        .delete(app.url(&format!("/v1/signing-keys/{keyid}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    refused(
        send(
            &app,
            "GET",
            "/v1/me",
            Spec::new("GET", me.clone(), &keyid).headers(&key, &[]),
            b"",
        )
        .await,
        "unknown_key",
    )
    .await;
    // A disabled owner's keys stop working too.
    let root = app.root_key().await;
    let ed = Spec::new("GET", me.clone(), &ed_id);
    let alice_id = app
        .get_bearer("/v1/me", &alice)
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .call(
            Method::POST,
            &format!("/admin/v1/users/{alice_id}/disable"),
            &crate::support::Auth::Key(root),
            None,
        )
        .await;
    assert!(r.status().is_success(), "{:?}", r.text().await);
    refused(
        send(&app, "GET", "/v1/me", ed.headers(&pair, &[]), b"").await,
        "unknown_key",
    )
    .await;
    app.stop().await;
}

async fn bad_signature_input_is_refused_and_the_server_keeps_serving(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = user(&app, "alice@example.com").await;
    let (keyid, secret) = hmac_key(&app, &alice, &[]).await;
    let key = hmac(&secret);
    let me = app.url("/v1/me");
    let raw = |input: String, sig: &str| {
        let mut h = HeaderMap::new();
        h.insert("signature-input", HeaderValue::from_str(&input).unwrap());
        h.insert("signature", HeaderValue::from_str(sig).unwrap());
        h
    };
    let created = now();
    let cases = [
        (
            raw("sig1=(\"@method\"".into(), "sig1=:AA==:"),
            "malformed_signature_input",
        ),
        (
            raw(
                format!(
                    "sig1=(\"@method\" \"@method\" \"@target-uri\");created={created};keyid=\"{keyid}\""
                ),
                "sig1=:AA==:",
            ),
            "duplicate_component:\"@method\"",
        ),
        (
            raw(
                format!(
                    "sig1=(\"@method\" \"@target-uri\" \"@nonsense\");created={created};keyid=\"{keyid}\""
                ),
                "sig1=:AA==:",
            ),
            "unknown_component:@nonsense",
        ),
        (
            raw(
                format!(
                    "sig1=(\"@method\" \"@target-uri\" \"@status\");created={created};keyid=\"{keyid}\""
                ),
                "sig1=:AA==:",
            ),
            "unknown_component:@status",
        ),
        (
            raw(
                format!("sig1=(\"@method\" \"@target-uri\");created={created}"),
                "sig1=:AA==:",
            ),
            "missing_param:keyid",
        ),
        (
            raw(
                format!("sig1=(\"@method\" \"@target-uri\");keyid=\"{keyid}\""),
                "sig1=:AA==:",
            ),
            "missing_param:created",
        ),
        (
            raw(
                format!("sig1=(\"@method\" \"@target-uri\");created={created};keyid=\"{keyid}\""),
                "sig1=notbytes",
            ),
            "malformed_signature",
        ),
        (
            raw(
                format!(
                    "sig1=(\"@method\" \"@target-uri\");created={created};keyid=\"{keyid}\";k=\"{}\"",
                    "a".repeat(10 * 1024)
                ),
                "sig1=:AA==:",
            ),
            "too_large:signature-input",
        ),
    ];
    for (headers, reason) in cases {
        refused(send(&app, "GET", "/v1/me", headers, b"").await, reason).await;
    }
    // A covered header with a non-ASCII value must be covered with `bs`.
    let spec = Spec {
        components: vec!["@method", "@target-uri", "x-name"],
        ..Spec::new("GET", me.clone(), &keyid)
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-name",
        HeaderValue::from_bytes("Grüße".as_bytes()).unwrap(),
    );
    let sig_only = {
        // Sign over an ASCII stand-in (the base cannot hold the real value), then send the real one.
        let mut h = spec.headers(&key, &[("x-name", "Grusse")]);
        h.insert(
            "x-name",
            HeaderValue::from_bytes("Grüße".as_bytes()).unwrap(),
        );
        h
    };
    refused(
        send(&app, "GET", "/v1/me", sig_only, b"").await,
        "invalid_component:\"x-name\"",
    )
    .await;
    let spec = Spec {
        components: vec!["@method", "@target-uri", "\"x-name\";bs"],
        ..spec
    };
    let _ = headers;
    let h = {
        let url = url::Url::parse(&spec.target).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-name",
            HeaderValue::from_bytes("Grüße".as_bytes()).unwrap(),
        );
        let authority = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
        let msg = Message {
            method: "GET",
            scheme: "http",
            authority: &authority,
            path: url.path(),
            query: None,
            headers: &h,
        };
        let (input, sig) = sign(
            &key,
            &Signing {
                label: "sig1",
                components: &spec.components,
                keyid: &keyid,
                created: now(),
                expires: None,
                nonce: Some(&fresh_nonce()),
                with_alg: false,
            },
            &msg,
        )
        .unwrap();
        h.insert("signature-input", input.parse().unwrap());
        h.insert("signature", sig.parse().unwrap());
        h
    };
    assert_eq!(
        send(&app, "GET", "/v1/me", h, b"").await.status(),
        StatusCode::OK
    );
    // Nothing was stored: no signing key beyond the one made, and the server still serves.
    let list: Value = app
        .get_bearer("/v1/signing-keys", &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Several signatures: one that verifies for a key we know is enough.
    let good = Spec::new("GET", me.clone(), &keyid).headers(&key, &[]);
    let mut two = HeaderMap::new();
    two.insert(
        "signature-input",
        format!(
            "other=(\"@method\");created={created};keyid=\"elsewhere\", {}",
            good["signature-input"].to_str().unwrap()
        )
        .parse()
        .unwrap(),
    );
    two.insert(
        "signature",
        format!("other=:AAAA:, {}", good["signature"].to_str().unwrap())
            .parse()
            .unwrap(),
    );
    assert_eq!(
        send(&app, "GET", "/v1/me", two, b"").await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn forward_auth_takes_signed_requests(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = user(&app, "alice@example.com").await;
    let (keyid, secret) = hmac_key(&app, &alice, &[]).await;
    let key = hmac(&secret);
    let target = "https://api.example.test/orders/7?full=1";
    let ask = |headers: HeaderMap, method: &str| {
        app.client
            .get(app.url("/v1/authorize"))
            .header("x-forwarded-method", method)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.test")
            .header("x-forwarded-uri", "/orders/7?full=1")
            .headers(headers)
            .send()
    };
    let r = ask(
        Spec::new("GET", target.into(), &keyid).headers(&key, &[]),
        "GET",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-method"], "signature");
    assert_eq!(r.headers()["x-auth-key-id"], keyid.as_str());
    assert!(
        r.headers()["x-auth-subject"]
            .to_str()
            .unwrap()
            .starts_with("usr_")
    );
    assert_eq!(r.headers()["x-auth-content-digest"], "");
    // The gateway sends no body: the covered digest is verified as sent and handed on.
    let digest = content_digest(DigestAlg::Sha256, b"{\"qty\":2}");
    let post = Spec {
        components: vec!["@method", "@target-uri", "content-digest"],
        ..Spec::new("POST", target.into(), &keyid)
    };
    let r = ask(post.headers(&key, &[("content-digest", &digest)]), "POST")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-content-digest"], digest.as_str());
    portcullis_client::check_content_digest(
        r.headers()["x-auth-content-digest"].to_str().unwrap(),
        b"{\"qty\":2}",
    )
    .unwrap();
    assert!(portcullis_client::check_content_digest(&digest, b"{\"qty\":3}").is_err());
    let r = ask(
        Spec::new("POST", target.into(), &keyid).headers(&key, &[]),
        "POST",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["x-auth-signature-reason"],
        "missing_component:content-digest"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "signature_invalid");
    // Signed for another host, or replayed: refused.
    let r = ask(
        Spec::new(
            "GET",
            "https://evil.example.test/orders/7?full=1".into(),
            &keyid,
        )
        .headers(&key, &[]),
        "GET",
    )
    .await
    .unwrap();
    assert_eq!(r.headers()["x-auth-signature-reason"], "bad_signature");
    let once = Spec::new("GET", target.into(), &keyid).headers(&key, &[]);
    assert_eq!(
        ask(once.clone(), "GET").await.unwrap().status(),
        StatusCode::OK
    );
    let r = ask(once, "GET").await.unwrap();
    assert_eq!(r.headers()["x-auth-signature-reason"], "replayed");
    app.stop().await;
}

async fn services_verify_signatures_through_the_api(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = user(&app, "alice@example.com").await;
    let (keyid, secret) = hmac_key(&app, &alice, &["keys:read"]).await;
    let key = hmac(&secret);
    let root = app.root_key().await;
    let svc = app
        .post_with_key(
            "/v1/keys",
            &root,
            Some(&json!({"name": "verifier", "scopes": ["signatures:verify"]})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let target = "https://orders.internal/items?x=1";
    let body = b"{\"a\":1}";
    let digest = content_digest(DigestAlg::Sha512, body);
    let spec = Spec {
        components: vec!["@method", "@target-uri", "content-digest"],
        ..Spec::new("PUT", target.into(), &keyid)
    };
    let headers = spec.headers(&key, &[("Content-Digest", &digest)]);
    let as_json = |h: &HeaderMap| -> Value {
        h.iter()
            .map(|(n, v)| (n.as_str().to_owned(), Value::from(v.to_str().unwrap())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let ask = |key: String, body_b64: Option<String>| {
        let mut req = json!({"method": "PUT", "target_uri": target, "headers": as_json(&headers)});
        if let Some(b) = body_b64 {
            req["body_base64"] = b.into();
        }
        let app = &app;
        async move {
            app.post_with_key("/v1/signatures/verify", &key, Some(&req))
                .await
        }
    };
    // Wrong body first: nothing is spent by a refusal.
    let v: Value = ask(svc.clone(), Some(STANDARD.encode(b"{\"a\":2}")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"valid": false, "reason": "digest_mismatch"}));
    let r = ask(svc.clone(), Some(STANDARD.encode(body))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["keyid"], keyid.as_str());
    assert!(v["owner_id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(v["scopes"], json!(["keys:read"]));
    let v: Value = ask(svc.clone(), Some(STANDARD.encode(body)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["reason"], "replayed", "{v}");
    // Without the body: the digest comes back to be checked.
    let spec = Spec {
        nonce: Some(fresh_nonce()),
        ..spec
    };
    let headers2 = spec.headers(&key, &[("Content-Digest", &digest)]);
    let req = json!({"method": "PUT", "target_uri": target, "headers": as_json(&headers2)});
    let v: Value = app
        .post_with_key("/v1/signatures/verify", &svc, Some(&req))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["content_digest"], digest.as_str(), "{v}");
    // Callers without the scope are refused; bad input is a validation error.
    let r = app
        .client
        .post(app.url("/v1/signatures/verify"))
        .bearer_auth(&alice)
        .json(&json!({"method": "GET", "target_uri": target, "headers": {}}))
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::FORBIDDEN, "insufficient_scope").await;
    for req in [
        json!({"method": "GET", "target_uri": "/relative", "headers": {}}),
        json!({"method": "G T", "target_uri": target, "headers": {}}),
        json!({"method": "GET", "target_uri": target, "headers": {"bad name": "x"}}),
        json!({"method": "GET", "target_uri": target, "headers": {}, "body_base64": "***"}),
    ] {
        let r = app
            .post_with_key("/v1/signatures/verify", &svc, Some(&req))
            .await;
        assert_problem(r, StatusCode::BAD_REQUEST, "validation_failed").await;
    }
    let v: Value = app
        .post_with_key(
            "/v1/signatures/verify",
            &svc,
            Some(&json!({"method": "GET", "target_uri": target, "headers": {}})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"valid": false, "reason": "missing_signature"}));
    app.stop().await;
}

async fn a_revocation_reaches_another_node_within_a_second(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = user(&app, "alice@example.com").await;
    let (keyid, secret) = hmac_key(&app, &alice, &[]).await;
    let key = hmac(&secret);
    let (other, node) = app.second_node(|_| {}).await;
    // Requests reach the second node as through a load balancer: signed for the issuer's address.
    let me = app.url("/v1/me");
    let at_other = |headers: HeaderMap| {
        app.client
            .get(format!("{other}/v1/me"))
            .headers(headers)
            .send()
    };
    let r = at_other(Spec::new("GET", me.clone(), &keyid).headers(&key, &[]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    let r = app
        .client
        .delete(app.url(&format!("/v1/signing-keys/{keyid}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let took = until(
        "the second node refuses the revoked key",
        std::time::Duration::from_millis(1500),
        async || {
            let r = at_other(Spec::new("GET", me.clone(), &keyid).headers(&key, &[]))
                .await
                .unwrap();
            r.status() == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    assert!(
        took < std::time::Duration::from_millis(1100),
        "took {took:?}"
    );
    node.stop().await;
    app.stop().await;
}
