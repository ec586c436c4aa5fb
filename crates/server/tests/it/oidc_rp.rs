//! The `openidconnect` crate (a Rust relying party) against the provider: discovery, the code flow
//! with PKCE through our login and consent forms, the ID token verified by the crate against our
//! JWKS (signature, issuer, audience, nonce, `at_hash`), userinfo, refresh, introspection,
//! revocation and client credentials. Its HTTP goes through our own reqwest.

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IntrospectionUrl,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, RevocationUrl, Scope,
    TokenIntrospectionResponse, TokenResponse,
};
use serde_json::json;

use crate::oauth::{Browser, REDIRECT, client, no_redirects};
use crate::support::{Backend, TestApp};

/// The crate's HTTP client: one request through reqwest, redirects not followed (as it asks).
async fn http(
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, reqwest::Error> {
    let (parts, body) = req.into_parts();
    let resp = no_redirects()
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut out = openidconnect::http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    let body = resp.bytes().await?.to_vec();
    Ok(out.body(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openidconnect_crate_runs_the_code_flow_and_verifies_the_id_token() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let root = app.root_key().await;
    let web = client(
        &app,
        &root,
        &json!({
            "name": "Rust RP", "type": "confidential", "redirect_uris": [REDIRECT],
            "scopes": ["openid", "email", "profile", "offline_access"],
        }),
    )
    .await;
    app.register("rp@example.com").await;
    let meta =
        CoreProviderMetadata::discover_async(IssuerUrl::new(app.base.clone()).unwrap(), &http)
            .await
            .expect("discovery");
    let rp = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(web["client_id"].as_str().unwrap().to_owned()),
        Some(ClientSecret::new(
            web["client_secret"].as_str().unwrap().to_owned(),
        )),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.to_owned()).unwrap())
    .set_introspection_url(IntrospectionUrl::new(app.url("/oauth2/introspect")).unwrap())
    .set_revocation_url(RevocationUrl::new(app.url("/oauth2/revoke")).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("offline_access".into()))
        .set_pkce_challenge(challenge)
        .url();
    // The browser half, through the forms.
    let mut b = Browser::new(&app);
    let r = b.get(url.as_str()).await;
    assert_eq!(r.status(), 303);
    let login = reqwest::Url::parse(&app.url(r.headers()["location"].to_str().unwrap())).unwrap();
    let return_to = login
        .query_pairs()
        .find(|(k, _)| k == "return_to")
        .unwrap()
        .1
        .into_owned();
    let page = b
        .log_in("rp@example.com", &return_to)
        .await
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        let at = page.find(&format!("name=\"{name}\" value=\"")).unwrap() + name.len() + 15;
        let raw = &page[at..at + page[at..].find('"').unwrap()];
        raw.replace("&#x2f;", "/").replace("&amp;", "&")
    };
    let r = b
        .post(
            "/consent",
            &[
                ("csrf_token", &value("csrf_token")),
                ("request", &value("request")),
                ("decision", "approve"),
            ],
        )
        .await;
    let back = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("state").as_deref(), Some(state.secret().as_str()));
    assert_eq!(param("iss").as_deref(), Some(app.base.as_str()));
    // The crate redeems the code and verifies the ID token against the JWKS it discovered.
    let token = rp
        .exchange_code(AuthorizationCode::new(param("code").unwrap()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("the code redeems");
    let id_token = token.id_token().expect("an ID token");
    let verifier = rp.id_token_verifier();
    let claims = id_token
        .claims(&verifier, &nonce)
        .expect("the ID token verifies");
    assert_eq!(claims.email().unwrap().as_str(), "rp@example.com");
    let at_hash = AccessTokenHash::from_token(
        token.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&at_hash));
    // Userinfo, refresh, introspection, revocation.
    let info: CoreUserInfoClaims = rp
        .user_info(token.access_token().clone(), Some(claims.subject().clone()))
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(info.email().unwrap().as_str(), "rp@example.com");
    let refreshed = rp
        .exchange_refresh_token(token.refresh_token().unwrap())
        .unwrap()
        .request_async(&http)
        .await
        .expect("refresh");
    assert_ne!(
        refreshed.refresh_token().unwrap().secret(),
        token.refresh_token().unwrap().secret()
    );
    let intro = rp
        .introspect(refreshed.access_token())
        .request_async(&http)
        .await
        .expect("introspection");
    assert!(intro.active());
    // The crate sends revocations over https only (RFC 7009 §2), which this test server is not:
    // the same request, by hand.
    assert!(matches!(
        rp.revoke_token(refreshed.access_token().clone().into()),
        Err(openidconnect::ConfigurationError::InsecureUrl("revocation"))
    ));
    let r = app
        .client
        .post(app.url("/oauth2/revoke"))
        .basic_auth(
            web["client_id"].as_str().unwrap(),
            web["client_secret"].as_str(),
        )
        .form(&[("token", refreshed.access_token().secret())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let intro = rp
        .introspect(refreshed.access_token())
        .request_async(&http)
        .await
        .unwrap();
    assert!(!intro.active(), "revoked at once");
    // Client credentials, with a machine client.
    let machine = client(
        &app,
        &root,
        &json!({"name": "Rust service", "type": "confidential", "grant_types": ["client_credentials"], "scopes": ["orders:read"]}),
    )
    .await;
    let meta =
        CoreProviderMetadata::discover_async(IssuerUrl::new(app.base.clone()).unwrap(), &http)
            .await
            .unwrap();
    let svc = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(machine["client_id"].as_str().unwrap().to_owned()),
        Some(ClientSecret::new(
            machine["client_secret"].as_str().unwrap().to_owned(),
        )),
    );
    let cc = svc
        .exchange_client_credentials()
        .unwrap()
        .add_scope(Scope::new("orders:read".into()))
        .request_async(&http)
        .await
        .expect("client credentials");
    assert!(cc.refresh_token().is_none());
    app.stop().await;
}
