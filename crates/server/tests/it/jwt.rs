//! Bad access tokens of every kind get 401 `invalid_token` with a precise `reason`, and the server keeps
//! serving.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_core::clock::Millis;
use portcullis_core::jwt::{AccessClaims, JwsAlg, SigningKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::on_both_stores;
use crate::support::{Backend, TestApp, assert_problem};

on_both_stores!(
    bad_tokens_are_refused_with_a_precise_reason,
    cached_tokens_still_expire_and_stay_revocable
);

pub(crate) fn b64json(v: &Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap())
}

pub(crate) fn claims(app: &TestApp, sub: &str) -> AccessClaims {
    let now = Millis::now().as_secs();
    AccessClaims {
        iss: app.base.clone(),
        sub: sub.into(),
        aud: vec![app.base.clone()],
        exp: now + 600,
        iat: now,
        nbf: None,
        jti: uuid_v7(),
        client_id: "portcullis".into(),
        scope: String::new(),
        sid: None,
        cnf: None,
        act: None,
    }
}

fn uuid_v7() -> String {
    // The server reads issuance time from a UUIDv7 jti; build one from the current time.
    let ms = Millis::now().0 as u64;
    let mut rand = [0u8; 10];
    portcullis_core::secrets::fill_random(&mut rand).unwrap();
    let hex: String = rand.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{:08x}-{:04x}-7{}-8{}-{}",
        ms >> 16,
        ms & 0xffff,
        &hex[0..3],
        &hex[3..6],
        &hex[6..18]
    )
}

async fn bad_tokens_are_refused_with_a_precise_reason(b: Backend) {
    let app = TestApp::spawn(b).await;
    let tokens = app.user_with_tokens("tom@example.com").await;
    let good = tokens["access_token"].as_str().unwrap().to_owned();
    let me: Value = app.get_bearer("/v1/me", &good).await.json().await.unwrap();
    let sub = me["id"].as_str().unwrap().to_owned();
    let ring = app.state().keys.current();
    let key = ring.signer(Millis::now()).unwrap().clone();
    let kid = key.kid().to_owned();
    let sign = |c: &AccessClaims| key.sign("at+jwt", c).unwrap();
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();

    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_jwk = jwks["keys"][0].to_string();
    let hs_input = format!(
        "{}.{}",
        b64json(&json!({"alg":"HS256","typ":"at+jwt","kid":kid})),
        payload
    );
    let hs_sig = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, public_jwk.as_bytes()),
        hs_input.as_bytes(),
    );
    let hs256_with_public_key = format!("{hs_input}.{}", B64.encode(hs_sig.as_ref()));

    let mut tampered_claims = claims(&app, "usr_0000000000000000000000000000000a");
    tampered_claims.exp += 1;
    let tampered = format!(
        "{head}.{}.{sig}",
        B64.encode(serde_json::to_vec(&tampered_claims).unwrap())
    );
    let (other, _) = SigningKey::generate(JwsAlg::Es256).unwrap();
    let foreign = other.sign("at+jwt", &claims(&app, &sub)).unwrap();
    let foreign_with_our_kid = {
        let (_, rest) = foreign.split_once('.').unwrap();
        format!(
            "{}.{rest}",
            b64json(&json!({"alg":"ES256","typ":"at+jwt","kid":kid}))
        )
    };
    let with_header = |h: Value| {
        let input = format!(
            "{}.{}",
            b64json(&h),
            B64.encode(serde_json::to_vec(&claims(&app, &sub)).unwrap())
        );
        format!("{input}.{sig}")
    };
    let mut expired = claims(&app, &sub);
    expired.exp = Millis::now().as_secs() - 120;
    let mut wrong_iss = claims(&app, &sub);
    wrong_iss.iss = "https://evil.example".into();
    let mut wrong_aud = claims(&app, &sub);
    wrong_aud.aud = vec!["https://another-api.example".into()];
    let mut not_yet = claims(&app, &sub);
    not_yet.nbf = Some(Millis::now().as_secs() + 600);

    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "garbage".into(), "malformed"),
        (
            // 86 base64url characters less one: a length no base64 decodes, so always malformed
            // (cutting 4 would decode whenever the leftover bits happen to be zero).
            "truncated signature",
            good[..good.len() - 1].to_owned(),
            "malformed",
        ),
        (
            "truncated payload",
            format!("{head}.{}.{sig}", &payload[..payload.len() - 4]),
            "bad_signature",
        ),
        ("two parts", format!("{head}.{payload}"), "malformed"),
        (
            "alg none",
            format!(
                "{}.{payload}.",
                b64json(&json!({"alg":"none","typ":"at+jwt","kid":kid}))
            ),
            "unsupported_alg",
        ),
        (
            "HS256 keyed with our public key",
            hs256_with_public_key,
            "unsupported_alg",
        ),
        (
            "unknown kid",
            with_header(json!({"alg":"ES256","typ":"at+jwt","kid":"nope"})),
            "unknown_kid",
        ),
        (
            "path-like kid",
            with_header(json!({"alg":"ES256","typ":"at+jwt","kid":"../../../../etc/passwd"})),
            "unknown_kid",
        ),
        (
            "no kid",
            with_header(json!({"alg":"ES256","typ":"at+jwt"})),
            "missing_kid",
        ),
        (
            "jku header",
            with_header(
                json!({"alg":"ES256","typ":"at+jwt","kid":kid,"jku":"https://evil.example/jwks"}),
            ),
            "forbidden_header",
        ),
        (
            "embedded jwk",
            with_header(json!({"alg":"ES256","typ":"at+jwt","kid":kid,"jwk":{"kty":"EC"}})),
            "forbidden_header",
        ),
        (
            "typ JWT",
            with_header(json!({"alg":"ES256","typ":"JWT","kid":kid})),
            "wrong_typ",
        ),
        ("tampered payload", tampered, "bad_signature"),
        (
            "another key, our kid",
            foreign_with_our_kid,
            "bad_signature",
        ),
        ("another key, its kid", foreign, "unknown_kid"),
        ("expired", sign(&expired), "expired"),
        ("wrong iss", sign(&wrong_iss), "wrong_issuer"),
        ("wrong aud", sign(&wrong_aud), "wrong_audience"),
        ("not yet valid", sign(&not_yet), "not_yet_valid"),
    ];
    for (name, token, reason) in cases {
        let r = app.get_bearer("/v1/me", &token).await;
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{name}"
        );
        let body = assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
        assert_eq!(body["reason"], reason, "{name}");
    }
    let r = app
        .client
        .get(app.url("/v1/me"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_problem(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let r = app.client.get(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // Still serving, and the good token still works.
    assert_eq!(
        app.get_bearer("/v1/me", &good).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn cached_tokens_still_expire_and_stay_revocable(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.jwt_leeway_s = 0).await;
    let t = app.user_with_tokens("uma@example.com").await;
    let access = t["access_token"].as_str().unwrap();
    let me: Value = app.get_bearer("/v1/me", access).await.json().await.unwrap();
    let sub = me["id"].as_str().unwrap().to_owned();
    let key = app
        .state()
        .keys
        .current()
        .signer(Millis::now())
        .unwrap()
        .clone();
    let mut short = claims(&app, &sub);
    // Five seconds of life: the two uses below fit however slow the machine is, and the wait
    // after them is to a moment past `exp`, not a guess at one.
    short.exp = Millis::now().as_secs() + 5;
    let exp_ms = short.exp * 1000;
    let short = key.sign("at+jwt", &short).unwrap();
    assert_eq!(
        app.get_bearer("/v1/me", &short).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_bearer("/v1/me", &short).await.status(),
        StatusCode::OK,
        "served from the cache"
    );
    crate::support::sleep_until_ms(exp_ms + 1000, 100).await;
    let body = assert_problem(
        app.get_bearer("/v1/me", &short).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(body["reason"], "expired");
    // A cached, unexpired token is refused as soon as its user logs out everywhere.
    assert_eq!(
        app.get_bearer("/v1/me", access).await.status(),
        StatusCode::OK
    );
    let r = app
        .client
        .post(app.url("/v1/auth/logout-all"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let body = assert_problem(
        app.get_bearer("/v1/me", access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(body["reason"], "revoked");
    app.stop().await;
}
