//! Token exchange (RFC 8693) over HTTP: a client allowed the grant trades a user's access token for
//! one meant for another resource, never with more scope; with an actor token, the new token's `act`
//! says who acts (nested for a chain); every refusal answers the RFC's error. Both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oauth::{Browser, authorize, client, redeem, token, web_client};
use crate::on_both_stores;
use crate::support::{Backend, TestApp, jwt_claims};

on_both_stores!(exchanges_narrow_retarget_and_delegate);

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn exchange(app: &TestApp, c: &Value, form: &[(&str, &str)]) -> reqwest::Response {
    let mut f = vec![("grant_type", GRANT)];
    f.extend_from_slice(form);
    token(app, c, &f).await
}

async fn exchange_error(app: &TestApp, c: &Value, form: &[(&str, &str)]) -> String {
    let r = exchange(app, c, form).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{form:?}");
    r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn exchanges_narrow_retarget_and_delegate(b: Backend) {
    let app = TestApp::spawn(b).await;
    let root = app.root_key().await;
    let web = web_client(&app, &root).await;
    let user = app.register("ada@example.com").await;
    let mut browser = Browser::new(&app);
    let cid = web["client_id"].as_str().unwrap();
    let a = authorize(
        &app,
        &mut browser,
        cid,
        "orders:read orders:write",
        "ada@example.com",
    )
    .await;
    let t: Value = redeem(&app, &web, &a).await.json().await.unwrap();
    let subject = t["access_token"].as_str().unwrap().to_owned();
    let gateway = client(
        &app,
        &root,
        &json!({
            "name": "Billing gateway",
            "type": "confidential",
            "grant_types": [GRANT, "client_credentials"],
            "scopes": ["orders:read"],
            "audiences": ["https://billing.example.com"],
        }),
    )
    .await;
    let gid = gateway["client_id"].as_str().unwrap();

    // Retargeted and narrowed: the user's token becomes one for billing, with orders:read only.
    let r = exchange(
        &app,
        &gateway,
        &[
            ("subject_token", &subject),
            ("subject_token_type", AT),
            ("resource", "https://billing.example.com"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["issued_token_type"], AT);
    assert_eq!(e["token_type"], "Bearer");
    assert_eq!(e["scope"], "orders:read");
    assert!(e.get("refresh_token").is_none());
    let c = jwt_claims(e["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["client_id"], gid);
    assert_eq!(c["aud"], "https://billing.example.com");
    assert!(c.get("act").is_none(), "no actor token: no act");

    // Delegation: the gateway's own token as the actor; exchanged again, the chain nests.
    let cc: Value = token(&app, &gateway, &[("grant_type", "client_credentials")])
        .await
        .json()
        .await
        .unwrap();
    let actor = cc["access_token"].as_str().unwrap();
    let r = exchange(
        &app,
        &gateway,
        &[
            ("subject_token", &subject),
            ("subject_token_type", AT),
            ("actor_token", actor),
            ("actor_token_type", AT),
            ("scope", "orders:read"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let delegated: Value = r.json().await.unwrap();
    let delegated = delegated["access_token"].as_str().unwrap().to_owned();
    let c = jwt_claims(&delegated);
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["act"]["sub"], gid);
    let r = exchange(
        &app,
        &gateway,
        &[
            ("subject_token", &delegated),
            ("subject_token_type", AT),
            ("actor_token", actor),
            ("actor_token_type", AT),
        ],
    )
    .await;
    let c = jwt_claims(
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(c["act"]["sub"], gid);
    assert_eq!(c["act"]["act"]["sub"], gid, "the earlier actor, nested");

    // Refusals, each the RFC's error.
    let s = subject.as_str();
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", s),
                ("subject_token_type", AT),
                ("scope", "orders:write")
            ]
        )
        .await,
        "invalid_scope",
        "the subject has it, this client does not"
    );
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", s),
                ("subject_token_type", AT),
                ("scope", "orders:admin")
            ]
        )
        .await,
        "invalid_scope"
    );
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", s),
                ("subject_token_type", AT),
                ("resource", "https://elsewhere.example")
            ]
        )
        .await,
        "invalid_target"
    );
    assert_eq!(
        exchange_error(&app, &gateway, &[("subject_token", s)]).await,
        "invalid_request"
    );
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", s),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token"
                )
            ]
        )
        .await,
        "invalid_request"
    );
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", s),
                ("subject_token_type", AT),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:id_token"
                )
            ]
        )
        .await,
        "invalid_request"
    );
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", s),
                ("subject_token_type", AT),
                ("actor_token", actor)
            ]
        )
        .await,
        "invalid_request"
    );
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", "eyJnot.a.token"),
                ("subject_token_type", AT)
            ]
        )
        .await,
        "invalid_grant"
    );
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[
                ("subject_token", s),
                ("subject_token_type", AT),
                ("actor_token", "garbage"),
                ("actor_token_type", AT)
            ]
        )
        .await,
        "invalid_grant"
    );
    // Which clients may exchange is their registration: the web client may not.
    assert_eq!(
        exchange_error(
            &app,
            &web,
            &[("subject_token", s), ("subject_token_type", AT)]
        )
        .await,
        "unauthorized_client"
    );
    // A revoked subject token is exchanged no more.
    let r = app
        .client
        .post(app.url("/oauth2/revoke"))
        .header(
            "authorization",
            crate::oauth::basic(cid, web["client_secret"].as_str().unwrap()),
        )
        .form(&[("token", s)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        exchange_error(
            &app,
            &gateway,
            &[("subject_token", s), ("subject_token_type", AT)]
        )
        .await,
        "invalid_grant"
    );
    let audit = app.wait_for_audit(&root, "oauth.token_exchanged").await;
    assert_eq!(audit["subject"], user["id"]);
}
