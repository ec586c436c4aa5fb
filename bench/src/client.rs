//! In-process scenarios of `portcullis-client`: verifying a cached token, verifying with the
//! signature checked every time (its token cache off), and a bare `jsonwebtoken` verify of the same
//! ES256 token, on one thread per core. The JWKS comes from a tiny axum server in this process,
//! fetched once before the measurement.

use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use portcullis_core::clock::Millis;
use portcullis_core::jwt::{AccessClaims, JwsAlg, SigningKey};

use crate::Settings;
use crate::load::{Stats, new_histogram};

const ISSUER: &str = "http://bench.invalid";
const AUDIENCE: &str = "https://orders.example.test";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cached,
    Uncached,
    JsonWebToken,
}

pub fn cached(s: &Settings) -> Result<Stats> {
    run(s, Mode::Cached)
}

pub fn uncached(s: &Settings) -> Result<Stats> {
    run(s, Mode::Uncached)
}

pub fn jsonwebtoken(s: &Settings) -> Result<Stats> {
    run(s, Mode::JsonWebToken)
}

/// The token every thread verifies and the public JWK that checks it.
fn token() -> Result<(String, serde_json::Value)> {
    let (key, _) = SigningKey::generate(JwsAlg::Es256).map_err(|e| anyhow!("{e}"))?;
    let now = Millis::now().as_secs();
    let claims = AccessClaims {
        iss: ISSUER.into(),
        sub: "cli_bench".into(),
        aud: vec![AUDIENCE.into()],
        exp: now + 3600,
        iat: now,
        nbf: None,
        jti: "bench".into(),
        client_id: "cli_bench".into(),
        scope: "orders:read".into(),
        sid: None,
        cnf: None,
        act: None,
    };
    let token = key.sign("at+jwt", &claims).map_err(|e| anyhow!("{e}"))?;
    let jwk = key
        .verifying_key()
        .map_err(|e| anyhow!("{e}"))?
        .jwk()
        .clone();
    Ok((token, jwk))
}

/// Serves `{"keys": [jwk]}` on a loopback port from a runtime of its own; returns its URL.
fn jwks_server(rt: &tokio::runtime::Runtime, jwk: serde_json::Value) -> Result<String> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("bind the JWKS server")?;
    let addr = listener.local_addr()?;
    let doc = serde_json::json!({ "keys": [jwk] }).to_string();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { ([("content-type", "application/json")], doc) }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/jwks.json"))
}

fn run(s: &Settings, mode: Mode) -> Result<Stats> {
    let (token, jwk) = token()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let jwks_uri = jwks_server(&rt, jwk.clone())?;
    let mut config = portcullis_client::Config::new(ISSUER, AUDIENCE);
    config.jwks_uri = Some(jwks_uri);
    if mode == Mode::Uncached {
        config.token_cache_capacity = 0;
    }
    let verifier = portcullis_client::Verifier::new(config).map_err(|e| anyhow!("{e}"))?;
    rt.block_on(verifier.verify(&token))
        .map_err(|e| anyhow!("the first verify failed: {e}"))?;
    let x = jwk.get("x").and_then(|v| v.as_str()).context("jwk x")?;
    let y = jwk.get("y").and_then(|v| v.as_str()).context("jwk y")?;
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(x, y)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
        .context("jsonwebtoken refused the token")?;

    let stats = crate::load::in_process(s, "verifies/s", |measure_start, end| {
        let local = tokio::runtime::Builder::new_current_thread().build()?;
        local.block_on(async {
            let mut hist = new_histogram()?;
            let mut ok = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let good = match mode {
                    Mode::Cached | Mode::Uncached => verifier.verify(&token).await.is_ok(),
                    Mode::JsonWebToken => {
                        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
                            .is_ok()
                    }
                };
                let done = Instant::now();
                if good && t0 >= measure_start && done <= end {
                    ok += 1;
                    let us = u64::try_from((done - t0).as_micros()).unwrap_or(u64::MAX);
                    hist.saturating_record(us.max(1));
                }
            }
            Ok((ok, hist))
        })
    });
    drop(rt);
    stats
}
