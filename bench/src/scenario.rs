//! What a scenario is, the shared context the scenarios draw on (seeded users, tokens), and the
//! list of scenarios.
//!
//! To add a scenario: write a [`ConnDriver`] (or reuse [`Simple`]), then add an entry to
//! [`all`] with a name, a connection count and a setup closure that builds one driver per
//! connection. The runner in `load.rs` takes care of connections, warm-up, timing, histograms,
//! error counting and peak RSS.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, SET_COOKIE};
use hyper::{Request, StatusCode};
use portcullis_core::apikeys::{ApiKey, DEFAULT_PREFIX};
use serde::Deserialize;
use tokio::sync::{OnceCell, Semaphore};

use crate::Settings;
use crate::http::{Target, body_snippet};

/// Connections of the API-key scenarios and `me_session`, whatever `--connections` says: their
/// targets (cached verify ≥ 40% of the `/healthz` ceiling, p99 < 5 ms; `me_session` ≥ 40%) are
/// stated at 64.
pub const FIXED_CONNECTIONS: usize = 64;

/// The server's browser-session cookie (`crates/server/src/sessions.rs`).
pub const SESSION_COOKIE: &str = "__Host-portcullis";

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Req = Request<Full<Bytes>>;

/// One connection's behaviour in a closed-loop scenario: build the next request, judge the
/// response, and optionally repair its state after a failure (e.g. log in again after a broken
/// refresh-token chain).
pub trait ConnDriver: Send {
    fn request(&mut self) -> Result<Req>;

    /// Whether this response counts as a success. May update state from the body.
    fn check(&mut self, status: StatusCode, _body: &Bytes) -> bool {
        status == StatusCode::OK
    }

    /// [`Self::check`] for drivers that read the response headers too (a redirect's `Location`).
    fn check_full(&mut self, status: StatusCode, _headers: &HeaderMap, body: &Bytes) -> bool {
        self.check(status, body)
    }

    /// Called after a failed request or transport error, outside the timed measurement.
    fn recover(&mut self) -> BoxFut<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Builds the driver for connection number `i` (setup is not timed; it may log in etc.).
pub type Setup =
    Arc<dyn Fn(Arc<Ctx>, usize) -> BoxFut<'static, Result<Box<dyn ConnDriver>>> + Send + Sync>;

pub fn setup<F, Fut>(f: F) -> Setup
where
    F: Fn(Arc<Ctx>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Box<dyn ConnDriver>>> + Send + 'static,
{
    Arc::new(move |ctx, i| Box::pin(f(ctx, i)))
}

pub enum Kind {
    /// `connections` connections, each sending requests back to back for warm-up + duration.
    Loop { connections: usize, setup: Setup },
    /// A [`Kind::Loop`] against the bare axum hello (`portcullis-bench-ceiling`) instead of the
    /// server: the harness starts it for this scenario alone, before the server, and stops it after.
    Ceiling { connections: usize, setup: Setup },
    /// `connections` connections each send exactly one request, all at the same instant.
    Burst { connections: usize, setup: Setup },
    /// A [`Kind::Loop`] against node-oidc-provider (`bench/oidc-provider/server.mjs`), the reference
    /// OpenID Provider, started for this scenario alone like the ceiling.
    OidcProvider { connections: usize, setup: Setup },
    /// Runs inside the harness, no server involved.
    InProcess {
        threads: usize,
        run: fn(&Settings) -> Result<crate::load::Stats>,
    },
}

pub struct Scenario {
    pub name: &'static str,
    pub kind: Kind,
}

impl Scenario {
    pub fn needs_server(&self) -> bool {
        matches!(self.kind, Kind::Loop { .. } | Kind::Burst { .. })
    }

    /// For the table's "connections" column.
    pub fn concurrency_label(&self) -> String {
        match &self.kind {
            Kind::Loop { connections, .. }
            | Kind::Ceiling { connections, .. }
            | Kind::OidcProvider { connections, .. }
            | Kind::Burst { connections, .. } => connections.to_string(),
            Kind::InProcess { threads, .. } => format!("{threads} threads"),
        }
    }
}

/// `GET /healthz`, expecting 200: the same requests for the server and for the ceiling.
fn get_healthz() -> Setup {
    setup(|ctx, _| async move {
        let t = ctx.target.clone();
        Ok(Simple::boxed(move || t.get("/healthz", None)))
    })
}

/// `GET path` signed (RFC 9421) for the server's issuer, with a fresh nonce and `created`.
pub fn signed_get(
    t: &Target,
    signer: &portcullis_client::RequestSigner,
    path: &str,
) -> Result<Req> {
    let url = hyper_url(t, path)?;
    let mut headers = HeaderMap::new();
    signer
        .sign_parts("GET", &url, &mut headers, None)
        .map_err(|e| anyhow!("sign: {e}"))?;
    t.get_with_headers(path, &headers)
}

/// Signed `GET /v1/me` requests, each with its own nonce, made in the (untimed) setup: the load
/// generator shares the machine with the server, and a real signer signs on its own machine, so the
/// measurement is of verifying, not of signing. Enough for [`PRESIGN_RATE`] requests/s over warm-up
/// and measurement; a connection that runs out signs the rest as it goes.
fn presigned(ed25519: bool, s: &Settings) -> Setup {
    let seconds = (s.warmup + s.duration).as_secs_f64() + 1.0;
    let connections = s.connections.max(1);
    setup(move |ctx, _| async move {
        let t = ctx.target.clone();
        let signer = ctx.signer(ed25519).await?;
        let count = (PRESIGN_RATE * seconds / connections as f64).ceil() as usize;
        // The two field values only (a HeaderMap each would take ~4× the memory).
        let url = hyper_url(&t, "/v1/me")?;
        let mut ready = Vec::with_capacity(count);
        for _ in 0..count {
            let mut headers = HeaderMap::new();
            signer
                .sign_parts("GET", &url, &mut headers, None)
                .map_err(|e| anyhow!("sign: {e}"))?;
            let field = |name: &str| {
                headers
                    .get(name)
                    .cloned()
                    .with_context(|| format!("the signer sent no {name}"))
            };
            ready.push((field("signature-input")?, field("signature")?));
        }
        Ok(Simple::boxed(move || match ready.pop() {
            Some((input, signature)) => {
                let mut headers = HeaderMap::with_capacity(2);
                headers.insert("signature-input", input);
                headers.insert("signature", signature);
                t.get_with_headers("/v1/me", &headers)
            }
            None => signed_get(&t, &signer, "/v1/me"),
        }))
    })
}

/// The request rate [`presigned`] signs ahead for (above what this harness reaches on 2 cores).
const PRESIGN_RATE: f64 = 35_000.0;

/// Device-code polls answered (`authorization_pending` or `slow_down`) by `me_jwt_beside_polls`'
/// pollers, over its warm-up and measurement.
pub static DEVICE_POLLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// How many of `me_jwt_beside_polls`'s connections poll a device code (the rest ask `/v1/me`).
pub const DEVICE_POLLERS: usize = 4;

/// A device that polls the token endpoint as fast as it can with a code nobody approves: each poll
/// is answered `slow_down` (or, the first, `authorization_pending`) and records itself in the code's
/// row, the most a device can make the server do.
struct DevicePoller {
    target: Target,
    form: Bytes,
}

impl ConnDriver for DevicePoller {
    fn request(&mut self) -> Result<Req> {
        self.target
            .post_form("/oauth2/token", self.form.clone(), None, None)
    }

    fn check(&mut self, status: StatusCode, body: &Bytes) -> bool {
        let answered = status == StatusCode::BAD_REQUEST
            && (contains(body, b"slow_down") || contains(body, b"authorization_pending"));
        if answered {
            DEVICE_POLLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        answered
    }
}

/// `me_jwt` on all but [`DEVICE_POLLERS`] connections, which poll a pending device code meanwhile.
fn me_jwt_beside_polls() -> Setup {
    setup(|ctx, i| async move {
        let t = ctx.target.clone();
        if i >= DEVICE_POLLERS {
            let token = ctx.access_token.clone();
            return Ok(Simple::boxed(move || t.get("/v1/me", Some(&token))));
        }
        let body = serde_json::json!({
            "name": format!("bench device {i}"), "type": "public",
            "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"], "scopes": ["orders:read"],
        });
        let req = t.post_json_api_key("/admin/v1/clients", json_bytes(&body)?, ctx.root()?)?;
        let (status, body) = t.once(req).await.context("POST /admin/v1/clients")?;
        if status != StatusCode::CREATED {
            bail!(
                "POST /admin/v1/clients answered {status}: {}",
                body_snippet(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body).context("client JSON")?;
        let client_id = v
            .get("client_id")
            .and_then(|x| x.as_str())
            .context("client_id")?
            .to_owned();
        let req = t.post_form(
            "/oauth2/device_authorization",
            Bytes::from(format!("client_id={client_id}&scope=orders%3Aread")),
            None,
            None,
        )?;
        let (status, body) = t
            .once(req)
            .await
            .context("POST /oauth2/device_authorization")?;
        if status != StatusCode::OK {
            bail!(
                "device_authorization answered {status}: {}",
                body_snippet(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body).context("device JSON")?;
        let code = v
            .get("device_code")
            .and_then(|x| x.as_str())
            .context("device_code")?;
        Ok(Box::new(DevicePoller {
            target: t,
            form: Bytes::from(format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&client_id={client_id}&device_code={code}"
            )),
        }) as Box<dyn ConnDriver>)
    })
}

/// The rate [`dpop_me`] makes proofs ahead for (its requests check an ES256 signature each, so they
/// run well below [`PRESIGN_RATE`]).
const DPOP_PRESIGN_RATE: f64 = 15_000.0;

/// A DPoP proof (RFC 9449 §4.2) by `key` for `method` `url`, with `ath` when a token goes with it.
fn dpop_proof(
    key: &portcullis_core::jwt::SigningKey,
    jwk: &serde_json::Value,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> Result<String> {
    let mut jti = [0u8; 16];
    portcullis_core::secrets::fill_random(&mut jti).map_err(|_| anyhow!("no randomness"))?;
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let mut claims = serde_json::json!({
        "jti": jti,
        "htm": method,
        "htu": url,
        "iat": portcullis_core::clock::Millis::now().as_secs(),
    });
    if let (Some(t), Some(obj)) = (token, claims.as_object_mut()) {
        obj.insert("ath".into(), portcullis_core::oauth::dpop::ath(t).into());
    }
    let mut header = serde_json::Map::new();
    header.insert("typ".into(), "dpop+jwt".into());
    header.insert("jwk".into(), jwk.clone());
    key.sign_with_header(header, &claims)
        .map_err(|e| anyhow!("sign a DPoP proof: {e}"))
}

/// `GET /v1/me` with a DPoP-bound access token (`Authorization: DPoP`) and a fresh proof each time,
/// which the server checks in full (signature, `htm`/`htu`, `iat`, `ath`, `jti` single use). Each
/// connection gets its own key and token by a code flow redeemed with a proof; the proofs are made
/// in the untimed setup, as [`presigned`] does for signatures.
fn dpop_me(s: &Settings) -> Setup {
    let seconds = (s.warmup + s.duration).as_secs_f64() + 1.0;
    let connections = s.connections.max(1);
    setup(move |ctx, _| async move {
        use hyper::header::{AUTHORIZATION, HeaderValue, LOCATION};
        let t = ctx.target.clone();
        let o = ctx.oauth().await?.clone();
        let cookie = ctx.session_cookie().await?.to_owned();
        let (verifier, challenge) = pkce_pair()?;
        let (status, headers, body) = t
            .once_full(t.get_cookie(&authorize_path(&o.web_id, &challenge, WEB_SCOPE), &cookie)?)
            .await?;
        if status != StatusCode::SEE_OTHER {
            bail!(
                "GET /oauth2/authorize answered {status}: {}",
                body_snippet(&body)
            );
        }
        let code = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.split(['?', '&']).find_map(|p| p.strip_prefix("code=")))
            .context("no code in the redirect")?
            .to_owned();
        let (key, _) =
            portcullis_core::jwt::SigningKey::generate(portcullis_core::jwt::JwsAlg::Es256)
                .map_err(|e| anyhow!("{e}"))?;
        let jwk = key.public_jwk().map_err(|e| anyhow!("{e}"))?;
        let base = t.base_url();
        let form = format!(
            "grant_type=authorization_code&code={code}&code_verifier={verifier}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb"
        );
        let mut req = t.post_form("/oauth2/token", Bytes::from(form), Some(&o.web_basic), None)?;
        let proof = dpop_proof(&key, &jwk, "POST", &format!("{base}/oauth2/token"), None)?;
        req.headers_mut().insert(
            "dpop",
            HeaderValue::from_str(&proof).context("proof header")?,
        );
        let (status, body) = t.once(req).await.context("POST /oauth2/token")?;
        if status != StatusCode::OK {
            bail!(
                "the DPoP token request answered {status}: {}",
                body_snippet(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body).context("token JSON")?;
        if v.get("token_type").and_then(|x| x.as_str()) != Some("DPoP") {
            bail!("the token is not DPoP-bound: {}", body_snippet(&body));
        }
        let token = v
            .get("access_token")
            .and_then(|x| x.as_str())
            .context("access_token")?
            .to_owned();
        let me = format!("{base}/v1/me");
        let authorization =
            HeaderValue::from_str(&format!("DPoP {token}")).context("authorization header")?;
        let count = (DPOP_PRESIGN_RATE * seconds / connections as f64).ceil() as usize;
        let mut ready = Vec::with_capacity(count);
        for _ in 0..count {
            let p = dpop_proof(&key, &jwk, "GET", &me, Some(&token))?;
            ready.push(HeaderValue::from_str(&p).context("proof header")?);
        }
        Ok(Simple::boxed(move || {
            let proof = match ready.pop() {
                Some(p) => p,
                None => HeaderValue::from_str(&dpop_proof(&key, &jwk, "GET", &me, Some(&token))?)
                    .context("proof header")?,
            };
            let mut headers = HeaderMap::with_capacity(2);
            headers.insert(AUTHORIZATION, authorization.clone());
            headers.insert("dpop", proof);
            t.get_with_headers("/v1/me", &headers)
        }))
    })
}

fn hyper_url(t: &Target, path: &str) -> Result<url::Url> {
    url::Url::parse(&format!("{}{path}", t.base_url())).context("the target URL")
}

/// Every scenario, in the order they run. `ceiling` comes first, so that the server is started
/// only after it (the server starts before the first scenario that needs it).
pub fn all(s: &Settings) -> Vec<Scenario> {
    vec![
        Scenario {
            name: "ceiling",
            kind: Kind::Ceiling {
                connections: s.connections,
                setup: get_healthz(),
            },
        },
        Scenario {
            name: "healthz",
            kind: Kind::Loop {
                connections: s.connections,
                setup: get_healthz(),
            },
        },
        Scenario {
            name: "me_jwt",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let token = ctx.access_token.clone();
                    Ok(Simple::boxed(move || t.get("/v1/me", Some(&token))))
                }),
            },
        },
        Scenario {
            name: "refresh",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, i| async move {
                    let user = i % ctx.users.len().max(1);
                    let tokens = ctx.login(user).await?;
                    Ok(Box::new(RefreshChain {
                        ctx,
                        user,
                        refresh_token: tokens.refresh_token,
                    }) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "login",
            kind: Kind::Loop {
                connections: 8,
                setup: setup(|ctx, i| async move {
                    let t = ctx.target.clone();
                    let body = ctx.user(i)?.login_body.clone();
                    Ok(Simple::boxed(move || {
                        t.post_json("/v1/auth/login", body.clone(), None)
                    }))
                }),
            },
        },
        Scenario {
            name: "verify_cached",
            kind: Kind::Loop {
                connections: FIXED_CONNECTIONS,
                setup: setup(|ctx, _| async move {
                    let verifier = ctx.verifier_key().await?.to_owned();
                    let body = verify_body(ctx.valid_key().await?)?;
                    Ok(Box::new(Verify {
                        target: ctx.target.clone(),
                        verifier,
                        body,
                        expect: Expected::new(true, "VALID"),
                    }) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "verify_unknown",
            kind: Kind::Loop {
                connections: FIXED_CONNECTIONS,
                setup: setup(|ctx, _| async move {
                    let verifier = ctx.verifier_key().await?.to_owned();
                    // Well-formed, checksum right, never issued: passes the offline format check
                    // and ends at the lookup (the server remembers misses).
                    let unknown = ApiKey::generate(DEFAULT_PREFIX).context("generate a key")?;
                    let body = verify_body(unknown.expose())?;
                    Ok(Box::new(Verify {
                        target: ctx.target.clone(),
                        verifier,
                        body,
                        expect: Expected::new(false, "NOT_FOUND"),
                    }) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "me_api_key",
            kind: Kind::Loop {
                connections: FIXED_CONNECTIONS,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let key = ctx.user_key().await?.to_owned();
                    Ok(Simple::boxed(move || t.get_api_key("/v1/me", &key)))
                }),
            },
        },
        Scenario {
            name: "me_session",
            kind: Kind::Loop {
                connections: FIXED_CONNECTIONS,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let cookie = ctx.session_cookie().await?.to_owned();
                    Ok(Simple::boxed(move || t.get_cookie("/v1/me", &cookie)))
                }),
            },
        },
        Scenario {
            name: "oauth_client_credentials",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let o = ctx.oauth().await?.clone();
                    let body =
                        Bytes::from_static(b"grant_type=client_credentials&scope=orders%3Aread");
                    Ok(Box::new(TokenAnswer {
                        make: Box::new(move || {
                            t.post_form("/oauth2/token", body.clone(), Some(&o.machine_basic), None)
                        }),
                    }) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "oidc_provider_client_credentials",
            kind: Kind::OidcProvider {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let basic = format!(
                        "Basic {}",
                        base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            format!("{OIDC_PROVIDER_CLIENT}:{OIDC_PROVIDER_SECRET}")
                        )
                    );
                    let body =
                        Bytes::from_static(b"grant_type=client_credentials&scope=orders%3Aread");
                    Ok(Box::new(TokenAnswer {
                        make: Box::new(move || {
                            t.post_form("/token", body.clone(), Some(&basic), None)
                        }),
                    }) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "oauth_introspect",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let o = ctx.oauth().await?.clone();
                    let body = Bytes::from(format!("token={}", o.machine_token));
                    Ok(Box::new(Introspect {
                        make: Box::new(move || {
                            t.post_form(
                                "/oauth2/introspect",
                                body.clone(),
                                Some(&o.machine_basic),
                                None,
                            )
                        }),
                    }) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "oauth_code_flow",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let o = ctx.oauth().await?.clone();
                    let cookie = ctx.session_cookie().await?.to_owned();
                    Ok(Box::new(CodeFlow::new(
                        ctx.target.clone(),
                        &o.web_id,
                        o.web_basic,
                        cookie,
                    )?) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "oauth_code_flow_es256",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let o = ctx.oauth().await?.clone();
                    let cookie = ctx.session_cookie().await?.to_owned();
                    Ok(Box::new(CodeFlow::new(
                        ctx.target.clone(),
                        &o.web_es256_id,
                        o.web_es256_basic,
                        cookie,
                    )?) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "oauth_refresh",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let basic = ctx.oauth().await?.refresh_basic.clone();
                    let refresh_token = ctx.oauth_refresh_token().await?;
                    Ok(Box::new(OAuthRefreshChain {
                        ctx,
                        basic,
                        refresh_token,
                    }) as Box<dyn ConnDriver>)
                }),
            },
        },
        Scenario {
            name: "authorize_jwt",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let token = ctx.access_token.clone();
                    Ok(Simple::boxed(move || {
                        forwarded(t.get("/v1/authorize", Some(&token))?)
                    }))
                }),
            },
        },
        Scenario {
            name: "authorize_api_key",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    let key = ctx.user_key().await?.to_owned();
                    Ok(Simple::boxed(move || {
                        forwarded(t.get_api_key("/v1/authorize", &key)?)
                    }))
                }),
            },
        },
        Scenario {
            name: "client_verify_cached",
            kind: Kind::InProcess {
                threads: crate::argon::threads(),
                run: crate::client::cached,
            },
        },
        Scenario {
            name: "client_verify_uncached",
            kind: Kind::InProcess {
                threads: crate::argon::threads(),
                run: crate::client::uncached,
            },
        },
        Scenario {
            name: "jsonwebtoken_verify",
            kind: Kind::InProcess {
                threads: crate::argon::threads(),
                run: crate::client::jsonwebtoken,
            },
        },
        Scenario {
            name: "argon2_raw",
            kind: Kind::InProcess {
                threads: crate::argon::threads(),
                run: crate::argon::run,
            },
        },
        Scenario {
            name: "login_inflight_rss",
            kind: Kind::Burst {
                connections: 200,
                setup: setup(|ctx, i| async move {
                    let t = ctx.target.clone();
                    let body = ctx.user(i)?.login_body.clone();
                    Ok(Simple::boxed(move || {
                        t.post_json("/v1/auth/login", body.clone(), None)
                    }))
                }),
            },
        },
        // Last: their presigned requests take harness memory, which would show in the harness's
        // peak RSS of the in-process rows.
        Scenario {
            name: "me_signed_hmac",
            kind: Kind::Loop {
                connections: s.connections,
                setup: presigned(false, s),
            },
        },
        Scenario {
            name: "me_signed_ed25519",
            kind: Kind::Loop {
                connections: s.connections,
                setup: presigned(true, s),
            },
        },
        Scenario {
            name: "me_jwt_beside_polls",
            kind: Kind::Loop {
                connections: s.connections.max(DEVICE_POLLERS + 1),
                setup: me_jwt_beside_polls(),
            },
        },
        Scenario {
            name: "me_dpop",
            kind: Kind::Loop {
                connections: s.connections,
                setup: dpop_me(s),
            },
        },
    ]
}

/// A forward-auth question as Caddy asks it: the original request in `X-Forwarded-*`.
fn forwarded(mut req: Req) -> Result<Req> {
    let h = req.headers_mut();
    h.insert(
        "x-forwarded-method",
        hyper::header::HeaderValue::from_static("GET"),
    );
    h.insert(
        "x-forwarded-proto",
        hyper::header::HeaderValue::from_static("https"),
    );
    h.insert(
        "x-forwarded-host",
        hyper::header::HeaderValue::from_static("api.example.test"),
    );
    h.insert(
        "x-forwarded-uri",
        hyper::header::HeaderValue::from_static("/orders/1?expand=items"),
    );
    Ok(req)
}

/// What the OAuth scenarios share: a web client whose consent user 0 has given, a machine client,
/// and a client-credentials JWT of the machine client (to introspect).
#[derive(Clone)]
pub struct OAuthSetup {
    pub web_id: String,
    pub web_basic: String,
    /// The web client again, registered with ES256 ID tokens (the access tokens' algorithm) instead
    /// of the RS256 that OIDC makes the default.
    pub web_es256_id: String,
    pub web_es256_basic: String,
    /// A client with the `refresh_token` grant (and no `openid`), so its codes yield refresh tokens.
    pub refresh_id: String,
    pub refresh_basic: String,
    pub machine_basic: String,
    pub machine_token: String,
}

/// The client of `bench/oidc-provider/server.mjs` (a benchmark fixture, not a credential).
pub const OIDC_PROVIDER_CLIENT: &str = "bench";
pub const OIDC_PROVIDER_SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";

/// A token request, counted only when the answer is 200 with an access token.
struct TokenAnswer {
    make: Box<dyn FnMut() -> Result<Req> + Send>,
}

impl ConnDriver for TokenAnswer {
    fn request(&mut self) -> Result<Req> {
        (self.make)()
    }

    fn check(&mut self, status: StatusCode, body: &Bytes) -> bool {
        status == StatusCode::OK && contains(body, b"\"access_token\"")
    }
}

/// `POST /oauth2/introspect` of a live JWT, counted only when the answer says `"active":true`.
struct Introspect {
    make: Box<dyn FnMut() -> Result<Req> + Send>,
}

impl ConnDriver for Introspect {
    fn request(&mut self) -> Result<Req> {
        (self.make)()
    }

    fn check(&mut self, status: StatusCode, body: &Bytes) -> bool {
        status == StatusCode::OK && contains(body, b"\"active\":true")
    }
}

/// A whole authorization code flow per two requests, with a live browser session whose consent is
/// remembered: `GET /oauth2/authorize` (303 to the redirect URI with a code), then the code redeemed
/// at `POST /oauth2/token` (200). The table counts requests: flows are half of them.
struct CodeFlow {
    target: Target,
    /// The client's `Authorization: Basic`.
    basic: String,
    cookie: String,
    authorize: String,
    verifier: String,
    code: Option<String>,
}

pub const BENCH_REDIRECT: &str = "http://127.0.0.1:9/cb";

fn pkce_pair() -> Result<(String, String)> {
    use base64::Engine;
    let mut raw = [0u8; 32];
    portcullis_core::secrets::fill_random(&mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let challenge = portcullis_core::oauth::pkce::CodeChallenge::of_verifier(&verifier);
    Ok((verifier, challenge.as_str().to_owned()))
}

/// The scope the code-flow scenario asks for (an ID token, no refresh token).
const WEB_SCOPE: &str = "openid%20orders%3Aread";
/// The scope of the refresh client's codes (no `openid`: its `refresh_token` grant yields one).
const REFRESH_SCOPE: &str = "orders%3Aread";

fn authorize_path(client_id: &str, challenge: &str, scope: &str) -> String {
    format!(
        "/oauth2/authorize?response_type=code&client_id={client_id}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb\
         &scope={scope}&state=bench&nonce=n&code_challenge={challenge}&code_challenge_method=S256"
    )
}

/// The `code` of an authorization redirect's `Location`.
fn code_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.split(['?', '&']).find_map(|p| p.strip_prefix("code=")))
        .map(str::to_owned)
}

/// The `refresh_token` of a token response.
fn refresh_token_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("refresh_token")?
        .as_str()
        .map(str::to_owned)
}

impl CodeFlow {
    /// Flows of the client `client_id` (whose `Authorization: Basic` is `basic`).
    fn new(target: Target, client_id: &str, basic: String, cookie: String) -> Result<Self> {
        let (verifier, challenge) = pkce_pair()?;
        Ok(Self {
            authorize: authorize_path(client_id, &challenge, WEB_SCOPE),
            target,
            basic,
            cookie,
            verifier,
            code: None,
        })
    }
}

impl ConnDriver for CodeFlow {
    fn request(&mut self) -> Result<Req> {
        match self.code.take() {
            None => self.target.get_cookie(&self.authorize, &self.cookie),
            Some(code) => {
                let body = format!(
                    "grant_type=authorization_code&code={code}&code_verifier={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb",
                    self.verifier
                );
                self.target
                    .post_form("/oauth2/token", Bytes::from(body), Some(&self.basic), None)
            }
        }
    }

    fn check_full(&mut self, status: StatusCode, headers: &HeaderMap, body: &Bytes) -> bool {
        if status == StatusCode::SEE_OTHER {
            let code = code_of(headers);
            let ok = code.is_some();
            self.code = code;
            return ok;
        }
        status == StatusCode::OK && body.starts_with(b"{\"access_token\"")
    }
}

/// A driver that sends the same kind of request every time and expects 200.
pub struct Simple<F> {
    make: F,
}

impl<F: FnMut() -> Result<Req> + Send + 'static> Simple<F> {
    pub fn boxed(make: F) -> Box<dyn ConnDriver> {
        Box::new(Self { make })
    }
}

impl<F: FnMut() -> Result<Req> + Send> ConnDriver for Simple<F> {
    fn request(&mut self) -> Result<Req> {
        (self.make)()
    }
}

/// Each request spends the refresh token returned by the previous response (rotation). When the
/// chain breaks (non-200, bad body, transport error), the connection logs in again.
struct RefreshChain {
    ctx: Arc<Ctx>,
    user: usize,
    refresh_token: String,
}

impl ConnDriver for RefreshChain {
    fn request(&mut self) -> Result<Req> {
        let body = serde_json::to_vec(&serde_json::json!({ "refresh_token": self.refresh_token }))
            .context("encode refresh body")?;
        self.ctx
            .target
            .post_json("/v1/auth/refresh", Bytes::from(body), None)
    }

    fn check(&mut self, status: StatusCode, body: &Bytes) -> bool {
        if status != StatusCode::OK {
            return false;
        }
        match serde_json::from_slice::<Tokens>(body) {
            Ok(tokens) => {
                self.refresh_token = tokens.refresh_token;
                true
            }
            Err(_) => false,
        }
    }

    fn recover(&mut self) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            let tokens = self.ctx.login(self.user).await?;
            self.refresh_token = tokens.refresh_token;
            Ok(())
        })
    }
}

/// OAuth's `refresh_token` grant: each request spends the refresh token of the previous answer, as
/// [`RefreshChain`] does on `/v1/auth/refresh`; a broken chain starts over with a new code.
struct OAuthRefreshChain {
    ctx: Arc<Ctx>,
    basic: String,
    refresh_token: String,
}

impl ConnDriver for OAuthRefreshChain {
    fn request(&mut self) -> Result<Req> {
        let body = serde_urlencoded::to_string([
            ("grant_type", "refresh_token"),
            ("refresh_token", self.refresh_token.as_str()),
        ])
        .context("encode the refresh form")?;
        self.ctx
            .target
            .post_form("/oauth2/token", Bytes::from(body), Some(&self.basic), None)
    }

    fn check(&mut self, status: StatusCode, body: &Bytes) -> bool {
        if status != StatusCode::OK || !body.starts_with(b"{\"access_token\"") {
            return false;
        }
        match refresh_token_of(body) {
            Some(next) => {
                self.refresh_token = next;
                true
            }
            None => false,
        }
    }

    fn recover(&mut self) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            self.refresh_token = self.ctx.oauth_refresh_token().await?;
            Ok(())
        })
    }
}

/// `POST /v1/keys/verify` of one key by a service key holding `keys:verify`; a response counts only
/// if it is 200 with the expected `valid` and `code`.
struct Verify {
    target: Target,
    verifier: String,
    /// Pre-serialized `{"key": …}`.
    body: Bytes,
    expect: Expected,
}

impl ConnDriver for Verify {
    fn request(&mut self) -> Result<Req> {
        self.target
            .post_json_api_key("/v1/keys/verify", self.body.clone(), &self.verifier)
    }

    fn check(&mut self, status: StatusCode, body: &Bytes) -> bool {
        status == StatusCode::OK && self.expect.matches(body)
    }
}

fn verify_body(key: &str) -> Result<Bytes> {
    json_bytes(&serde_json::json!({ "key": key }))
}

fn json_bytes(v: &serde_json::Value) -> Result<Bytes> {
    Ok(Bytes::from(
        serde_json::to_vec(v).context("encode JSON body")?,
    ))
}

/// What a verify answer must say. Checked cheaply: the server writes compact JSON, so both fields
/// are looked for as bytes first (no parsing on the load generator's hot path); only when that fails
/// is the body parsed, so that a different layout of the same answer still counts.
struct Expected {
    valid: bool,
    code: &'static str,
    needles: [Vec<u8>; 2],
}

#[derive(Deserialize)]
struct VerifyAnswer {
    valid: bool,
    code: String,
}

impl Expected {
    fn new(valid: bool, code: &'static str) -> Self {
        Self {
            valid,
            code,
            needles: [
                format!("\"valid\":{valid}").into_bytes(),
                format!("\"code\":\"{code}\"").into_bytes(),
            ],
        }
    }

    fn matches(&self, body: &[u8]) -> bool {
        if self.needles.iter().all(|n| contains(body, n)) {
            return true;
        }
        serde_json::from_slice::<VerifyAnswer>(body)
            .is_ok_and(|a| a.valid == self.valid && a.code == self.code)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Deserialize)]
struct CreatedKey {
    key: String,
}

/// The `name=value` pair of the session cookie in a response's `Set-Cookie` headers, as a browser
/// would send it back in `Cookie`. An empty value (the server clearing the cookie) is no session.
fn session_cookie_pair(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (name, value) = v.split(';').next()?.split_once('=')?;
            let value = value.trim();
            (name.trim() == SESSION_COOKIE && !value.is_empty())
                .then(|| format!("{SESSION_COOKIE}={value}"))
        })
}

/// The part of a `GET /v1/me` answer that says how the caller authenticated.
#[derive(Deserialize)]
struct MeAnswer {
    auth: MeAuth,
}

#[derive(Deserialize)]
struct MeAuth {
    method: String,
}

/// Whether a `GET /v1/me` body says the caller authenticated by `method` (e.g. `session`).
fn authenticated_by(body: &[u8], method: &str) -> bool {
    serde_json::from_slice::<MeAnswer>(body).is_ok_and(|me| me.auth.method == method)
}

#[derive(Clone)]
pub struct User {
    pub email: String,
    pub password: String,
    /// Pre-serialized `{"email","password"}` for `POST /v1/auth/login`.
    pub login_body: Bytes,
}

#[derive(Debug, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
}

/// Shared, read-only state for the HTTP scenarios.
pub struct Ctx {
    pub target: Target,
    pub users: Vec<User>,
    /// Access token of user 0 (the server caches verified tokens, so sharing one is fine).
    pub access_token: String,
    /// The root API key the server printed on first start (creates the key scenarios' keys).
    pub root_key: Option<String>,
    /// Logins are slow (argon2); setup and recovery run at most this many at once.
    login_gate: Semaphore,
    /// API keys of the key scenarios, each made (and tried once) by the first connection that
    /// needs it; the other connections wait for it and share it.
    verifier_key: OnceCell<String>,
    valid_key: OnceCell<String>,
    user_key: OnceCell<String>,
    /// RFC 9421 signers of user 0: hmac-sha256 and ed25519 keys, made like the keys above.
    hmac_signer: OnceCell<Arc<portcullis_client::RequestSigner>>,
    ed25519_signer: OnceCell<Arc<portcullis_client::RequestSigner>>,
    /// `__Host-portcullis=pcs_…` of a browser session of user 0, made like the keys above.
    session_cookie: OnceCell<String>,
    oauth: OnceCell<OAuthSetup>,
}

const SETUP_LOGIN_CONCURRENCY: usize = 3;

impl Ctx {
    fn new(target: Target, users: Vec<User>, root_key: Option<String>) -> Self {
        Self {
            target,
            users,
            access_token: String::new(),
            root_key,
            login_gate: Semaphore::new(SETUP_LOGIN_CONCURRENCY),
            verifier_key: OnceCell::new(),
            valid_key: OnceCell::new(),
            user_key: OnceCell::new(),
            hmac_signer: OnceCell::new(),
            ed25519_signer: OnceCell::new(),
            session_cookie: OnceCell::new(),
            oauth: OnceCell::new(),
        }
    }

    /// The same users, token and root key, aimed at another node of the same store (its keys and
    /// sessions are made there when a scenario first needs them).
    pub fn on(&self, target: Target) -> Self {
        let mut ctx = Self::new(target, self.users.clone(), self.root_key.clone());
        ctx.access_token = self.access_token.clone();
        ctx
    }

    /// A context without users, tokens or keys, for scenarios that need only the target (the
    /// `ceiling` scenario's `GET /healthz`).
    pub fn bare(target: Target) -> Self {
        Self::new(target, Vec::new(), None)
    }

    /// Creates `n_users` users (`bench<i>@example.com`) and logs in user 0.
    pub async fn seed(target: Target, n_users: usize, root_key: Option<String>) -> Result<Self> {
        let n_users = n_users.max(1);
        let mut users = Vec::with_capacity(n_users);
        for i in 0..n_users {
            let email = format!("bench{i}@example.com");
            let password = random_password()?;
            let login_body = Bytes::from(
                serde_json::to_vec(&serde_json::json!({ "email": email, "password": password }))
                    .context("encode login body")?,
            );
            users.push(User {
                email,
                password,
                login_body,
            });
        }
        let ctx = Self::new(target, users, root_key);
        // Creating a user hashes its password too: a few at a time.
        let mut set = tokio::task::JoinSet::new();
        let ctx = Arc::new(ctx);
        for i in 0..ctx.users.len() {
            let ctx = Arc::clone(&ctx);
            set.spawn(async move {
                let _permit = ctx
                    .login_gate
                    .acquire()
                    .await
                    .context("login gate closed")?;
                ctx.create_user(i).await
            });
        }
        while let Some(res) = set.join_next().await {
            res.context("seeding task panicked")??;
        }
        let tokens = ctx.login(0).await?;
        let mut ctx =
            Arc::try_unwrap(ctx).map_err(|_| anyhow::anyhow!("seeding ctx still shared"))?;
        ctx.access_token = tokens.access_token;
        Ok(ctx)
    }

    pub fn user(&self, i: usize) -> Result<&User> {
        let n = self.users.len();
        if n == 0 {
            bail!("no users seeded");
        }
        self.users.get(i % n).context("user index")
    }

    async fn create_user(&self, i: usize) -> Result<()> {
        let user = self.user(i)?;
        let body = Bytes::from(
            serde_json::to_vec(
                &serde_json::json!({ "email": user.email, "password": user.password }),
            )
            .context("encode user body")?,
        );
        let req = self.target.post_json("/v1/users", body.clone(), None)?;
        let (mut status, mut resp) = self.target.once(req).await.context("POST /v1/users")?;
        // If sign-up turns out to need admin rights, try once more with the root API key.
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            && let Some(key) = &self.root_key
        {
            let req = self.target.post_json("/v1/users", body, Some(key))?;
            (status, resp) = self
                .target
                .once(req)
                .await
                .context("POST /v1/users (root key)")?;
        }
        if status != StatusCode::CREATED {
            bail!(
                "POST /v1/users for {} answered {status} (expected 201): {}",
                user.email,
                body_snippet(&resp)
            );
        }
        Ok(())
    }

    fn root(&self) -> Result<&str> {
        self.root_key.as_deref().context(
            "no root API key (the server printed no `root API key:` line), so no keys can be made",
        )
    }

    /// Sends a `POST /v1/keys` and returns the new key (expects 201).
    async fn create_key(&self, req: Req, what: &str) -> Result<String> {
        let (status, body) = self
            .target
            .once(req)
            .await
            .with_context(|| format!("POST /v1/keys ({what})"))?;
        if status != StatusCode::CREATED {
            bail!(
                "POST /v1/keys ({what}) answered {status} (expected 201): {}",
                body_snippet(&body)
            );
        }
        let created: CreatedKey = serde_json::from_slice(&body).with_context(|| {
            format!(
                "POST /v1/keys ({what}) answered 201 without a `key`: {}",
                body_snippet(&body)
            )
        })?;
        Ok(created.key)
    }

    /// A request signer of user 0 (`ed25519`: else hmac-sha256), its key made with user 0's access
    /// token and tried once on `GET /v1/me`.
    pub async fn signer(&self, ed25519: bool) -> Result<Arc<portcullis_client::RequestSigner>> {
        let cell = if ed25519 {
            &self.ed25519_signer
        } else {
            &self.hmac_signer
        };
        let signer = cell
            .get_or_try_init(|| async {
                let (body, seed) = if ed25519 {
                    let (seed, public) = portcullis_client::generate_ed25519()
                        .map_err(|e| anyhow!("{e}"))?;
                    (
                        serde_json::json!({"name": "bench-ed25519", "alg": "ed25519", "public_key": public}),
                        Some(seed),
                    )
                } else {
                    (
                        serde_json::json!({"name": "bench-hmac", "alg": "hmac-sha256"}),
                        None,
                    )
                };
                let req = self.target.post_json(
                    "/v1/signing-keys",
                    json_bytes(&body)?,
                    Some(&self.access_token),
                )?;
                let (status, body) = self.target.once(req).await.context("POST /v1/signing-keys")?;
                if status != StatusCode::CREATED {
                    bail!(
                        "POST /v1/signing-keys answered {status} (expected 201): {}",
                        body_snippet(&body)
                    );
                }
                let made: serde_json::Value =
                    serde_json::from_slice(&body).context("POST /v1/signing-keys: not JSON")?;
                let keyid = made.get("keyid").and_then(|v| v.as_str()).context("no keyid")?;
                let signer = match seed {
                    Some(seed) => portcullis_client::RequestSigner::ed25519(keyid, &seed),
                    None => portcullis_client::RequestSigner::hmac(
                        keyid,
                        made.get("secret").and_then(|v| v.as_str()).context("no secret")?,
                    ),
                }
                .map_err(|e| anyhow!("{e}"))?;
                let signer = Arc::new(signer);
                let req = signed_get(&self.target, &signer, "/v1/me")?;
                let (status, body) = self.target.once(req).await.context("signed GET /v1/me")?;
                if status != StatusCode::OK {
                    bail!(
                        "signed GET /v1/me answered {status} (expected 200): {}",
                        body_snippet(&body)
                    );
                }
                Ok::<_, anyhow::Error>(signer)
            })
            .await?;
        Ok(Arc::clone(signer))
    }

    /// An ownerless service key with scope `keys:verify`, made with the root key.
    pub async fn verifier_key(&self) -> Result<&str> {
        let key = self
            .verifier_key
            .get_or_try_init(|| async {
                let body = json_bytes(
                    &serde_json::json!({ "name": "bench-verifier", "scopes": ["keys:verify"] }),
                )?;
                let req = self
                    .target
                    .post_json_api_key("/v1/keys", body, self.root()?)?;
                self.create_key(req, "verifier, with the root key").await
            })
            .await?;
        Ok(key)
    }

    /// An ownerless key without scopes, `remaining` or rate limit (the cached verify path), made
    /// with the root key and verified once by [`Self::verifier_key`] before it is handed out.
    pub async fn valid_key(&self) -> Result<&str> {
        let key = self
            .valid_key
            .get_or_try_init(|| async {
                let body = json_bytes(&serde_json::json!({ "name": "bench-verified" }))?;
                let req = self
                    .target
                    .post_json_api_key("/v1/keys", body, self.root()?)?;
                let key = self
                    .create_key(req, "key to verify, with the root key")
                    .await?;
                let req = self.target.post_json_api_key(
                    "/v1/keys/verify",
                    verify_body(&key)?,
                    self.verifier_key().await?,
                )?;
                let (status, body) = self
                    .target
                    .once(req)
                    .await
                    .context("POST /v1/keys/verify (trial)")?;
                if status != StatusCode::OK || !Expected::new(true, "VALID").matches(&body) {
                    bail!(
                        "verifying the new key answered {status} (expected 200, valid): {}",
                        body_snippet(&body)
                    );
                }
                Ok::<_, anyhow::Error>(key)
            })
            .await?;
        Ok(key)
    }

    /// A key owned by user 0, made with that user's access token; tried once on `GET /v1/me`.
    pub async fn user_key(&self) -> Result<&str> {
        let key = self
            .user_key
            .get_or_try_init(|| async {
                let body = json_bytes(&serde_json::json!({ "name": "bench-me" }))?;
                let req = self
                    .target
                    .post_json("/v1/keys", body, Some(&self.access_token))?;
                let key = self
                    .create_key(req, "user 0's, with its access token")
                    .await?;
                let req = self.target.get_api_key("/v1/me", &key)?;
                let (status, body) = self
                    .target
                    .once(req)
                    .await
                    .context("GET /v1/me with the key (trial)")?;
                if status != StatusCode::OK {
                    bail!(
                        "GET /v1/me with user 0's new key answered {status} (expected 200): {}",
                        body_snippet(&body)
                    );
                }
                Ok::<_, anyhow::Error>(key)
            })
            .await?;
        Ok(key)
    }

    /// The OAuth scenarios' clients (made with the root key), user 0's consent to the web client
    /// (given once through the consent form), and a client-credentials token.
    pub async fn oauth(&self) -> Result<&OAuthSetup> {
        self.oauth
            .get_or_try_init(|| async {
                use base64::Engine;
                let basic = |id: &str, secret: &str| {
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
                    )
                };
                let register = |body: serde_json::Value| async move {
                    let req = self.target.post_json_api_key(
                        "/admin/v1/clients",
                        json_bytes(&body)?,
                        self.root()?,
                    )?;
                    let (status, body) = self
                        .target
                        .once(req)
                        .await
                        .context("POST /admin/v1/clients")?;
                    if status != StatusCode::CREATED {
                        bail!(
                            "POST /admin/v1/clients answered {status}: {}",
                            body_snippet(&body)
                        );
                    }
                    let v: serde_json::Value =
                        serde_json::from_slice(&body).context("client JSON")?;
                    let id = v
                        .get("client_id")
                        .and_then(|x| x.as_str())
                        .context("client_id")?
                        .to_owned();
                    let secret = v
                        .get("client_secret")
                        .and_then(|x| x.as_str())
                        .context("client_secret")?
                        .to_owned();
                    Ok::<_, anyhow::Error>((id, secret))
                };
                let (web_id, web_secret) = register(serde_json::json!({
                    "name": "bench web", "type": "confidential", "redirect_uris": [BENCH_REDIRECT],
                    "scopes": ["openid", "orders:read"],
                }))
                .await?;
                let (web_es256_id, web_es256_secret) = register(serde_json::json!({
                    "name": "bench web es256", "type": "confidential", "redirect_uris": [BENCH_REDIRECT],
                    "scopes": ["openid", "orders:read"], "id_token_signed_response_alg": "ES256",
                }))
                .await?;
                let (m_id, m_secret) = register(serde_json::json!({
                    "name": "bench machine", "type": "confidential",
                    "grant_types": ["client_credentials"], "scopes": ["orders:read"],
                }))
                .await?;
                let (refresh_id, refresh_secret) = register(serde_json::json!({
                    "name": "bench refresh", "type": "confidential", "redirect_uris": [BENCH_REDIRECT],
                    "grant_types": ["authorization_code", "refresh_token"], "scopes": ["orders:read"],
                }))
                .await?;
                // User 0 approves both browser clients once, through the consent form.
                self.approve(&authorize_path(&web_id, &pkce_pair()?.1, WEB_SCOPE)).await?;
                self.approve(&authorize_path(&web_es256_id, &pkce_pair()?.1, WEB_SCOPE)).await?;
                self.approve(&authorize_path(&refresh_id, &pkce_pair()?.1, REFRESH_SCOPE)).await?;
                let machine_basic = basic(&m_id, &m_secret);
                let req = self.target.post_form(
                    "/oauth2/token",
                    Bytes::from_static(b"grant_type=client_credentials"),
                    Some(&machine_basic),
                    None,
                )?;
                let (status, body) = self.target.once(req).await.context("client credentials")?;
                if status != StatusCode::OK {
                    bail!(
                        "client credentials answered {status}: {}",
                        body_snippet(&body)
                    );
                }
                let v: serde_json::Value = serde_json::from_slice(&body).context("token JSON")?;
                Ok(OAuthSetup {
                    web_basic: basic(&web_id, &web_secret),
                    web_id,
                    web_es256_basic: basic(&web_es256_id, &web_es256_secret),
                    web_es256_id,
                    refresh_basic: basic(&refresh_id, &refresh_secret),
                    refresh_id,
                    machine_basic,
                    machine_token: v
                        .get("access_token")
                        .and_then(|x| x.as_str())
                        .context("access_token")?
                        .to_owned(),
                })
            })
            .await
    }

    /// User 0 approves the authorization request at `path` through the consent form (200, then 303).
    async fn approve(&self, path: &str) -> Result<()> {
        let cookie = self.session_cookie().await?.to_owned();
        let req = self.target.get_cookie(path, &cookie)?;
        let (status, page) = self
            .target
            .once(req)
            .await
            .context("GET /oauth2/authorize")?;
        if status != StatusCode::OK {
            bail!(
                "the first authorization answered {status}, not the consent page: {}",
                body_snippet(&page)
            );
        }
        let page = String::from_utf8_lossy(&page).into_owned();
        let field = |name: &str| -> Result<String> {
            let key = format!("name=\"{name}\" value=\"");
            let at = page
                .find(&key)
                .with_context(|| format!("no {name} on the consent page"))?
                + key.len();
            let end = page[at..].find('"').context("unterminated value")?;
            Ok(page[at..at + end]
                .replace("&#x2f;", "/")
                .replace("&amp;", "&"))
        };
        let form = serde_urlencoded::to_string([
            ("csrf_token", field("csrf_token")?),
            ("request", field("request")?),
            ("decision", "approve".to_owned()),
        ])
        .context("encode the consent form")?;
        let req = self
            .target
            .post_form("/consent", Bytes::from(form), None, Some(&cookie))?;
        let (status, body) = self.target.once(req).await.context("POST /consent")?;
        if status != StatusCode::SEE_OTHER {
            bail!("POST /consent answered {status}: {}", body_snippet(&body));
        }
        Ok(())
    }

    /// A refresh token of the `bench refresh` client, by the code flow (authorize with user 0's
    /// session, then redeem the code).
    pub async fn oauth_refresh_token(&self) -> Result<String> {
        let o = self.oauth().await?;
        let cookie = self.session_cookie().await?;
        let (verifier, challenge) = pkce_pair()?;
        let req = self.target.get_cookie(
            &authorize_path(&o.refresh_id, &challenge, REFRESH_SCOPE),
            cookie,
        )?;
        let (status, headers, body) = self.target.once_full(req).await.context("authorize")?;
        if status != StatusCode::SEE_OTHER {
            bail!("authorize answered {status}: {}", body_snippet(&body));
        }
        let code = code_of(&headers).context("no code in the redirect")?;
        let form = format!(
            "grant_type=authorization_code&code={code}&code_verifier={verifier}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb"
        );
        let req = self.target.post_form(
            "/oauth2/token",
            Bytes::from(form),
            Some(&o.refresh_basic),
            None,
        )?;
        let (status, body) = self.target.once(req).await.context("code redemption")?;
        if status != StatusCode::OK {
            bail!("code redemption answered {status}: {}", body_snippet(&body));
        }
        refresh_token_of(&body).context("no refresh_token in the token response")
    }

    /// A browser session of user 0: logs in with `POST /v1/sessions` (201), takes the cookie pair
    /// from `Set-Cookie`, and tries it once on `GET /v1/me` (200, authenticated by `session`). The
    /// harness sends neither `Sec-Fetch-Site` nor `Origin`, so the login-CSRF check lets it in.
    pub async fn session_cookie(&self) -> Result<&str> {
        let cookie = self
            .session_cookie
            .get_or_try_init(|| async {
                let (headers, body) = self
                    .post_credentials(0, "/v1/sessions", StatusCode::CREATED)
                    .await?;
                let cookie = session_cookie_pair(&headers).with_context(|| {
                    format!(
                        "POST /v1/sessions answered 201 without a `{SESSION_COOKIE}=…` Set-Cookie: {}",
                        body_snippet(&body)
                    )
                })?;
                let req = self.target.get_cookie("/v1/me", &cookie)?;
                let (status, body) = self
                    .target
                    .once(req)
                    .await
                    .context("GET /v1/me with the session cookie (trial)")?;
                if status != StatusCode::OK || !authenticated_by(&body, "session") {
                    bail!(
                        "GET /v1/me with user 0's session cookie answered {status} (expected 200, \
                         auth method session): {}",
                        body_snippet(&body)
                    );
                }
                Ok::<_, anyhow::Error>(cookie)
            })
            .await?;
        Ok(cookie)
    }

    /// Logs user `i` in (at most [`SETUP_LOGIN_CONCURRENCY`] at a time) and returns the tokens.
    pub async fn login(&self, i: usize) -> Result<Tokens> {
        let (_, body) = self
            .post_credentials(i, "/v1/auth/login", StatusCode::OK)
            .await?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "login response is not the expected JSON: {}",
                body_snippet(&body)
            )
        })
    }

    /// Posts user `i`'s `{"email","password"}` to a login endpoint (at most
    /// [`SETUP_LOGIN_CONCURRENCY`] at a time) and returns the answer's headers and body if its
    /// status is `expect`.
    async fn post_credentials(
        &self,
        i: usize,
        path: &str,
        expect: StatusCode,
    ) -> Result<(HeaderMap, Bytes)> {
        let user = self.user(i)?;
        let _permit = self
            .login_gate
            .acquire()
            .await
            .context("login gate closed")?;
        let mut last = String::new();
        // A busy server may shed load with 429/503: retry a few times with a pause.
        for attempt in 0..5u32 {
            let req = self.target.post_json(path, user.login_body.clone(), None)?;
            let (status, headers, body) = self
                .target
                .once_full(req)
                .await
                .with_context(|| format!("POST {path}"))?;
            match status {
                s if s == expect => return Ok((headers, body)),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    last = format!("{status}: {}", body_snippet(&body));
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
                _ => bail!(
                    "POST {path} (login of {}) answered {status} (expected {expect}): {}",
                    user.email,
                    body_snippet(&body)
                ),
            }
        }
        bail!("POST {path} (login of {}) kept failing: {last}", user.email)
    }
}

/// 20 characters, `Bench-` and 14 random hex digits: fresh every run, in no common-password list.
fn random_password() -> Result<String> {
    let mut raw = [0u8; 7];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("Bench-{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_shape() -> Result<()> {
        let p = random_password()?;
        assert_eq!(p.len(), 20);
        assert!(p.starts_with("Bench-"));
        assert_ne!(p, random_password()?);
        Ok(())
    }

    #[test]
    fn scenario_names_are_unique() {
        let s = Settings::for_tests();
        let scenarios = all(&s);
        let mut names: Vec<_> = scenarios.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), scenarios.len());
    }

    #[test]
    fn ceiling_runs_first_without_the_server() {
        let s = Settings::for_tests();
        let scenarios = all(&s);
        let first = scenarios.first();
        assert!(first.is_some_and(|sc| sc.name == "ceiling"
            && !sc.needs_server()
            && sc.concurrency_label() == s.connections.to_string()));
    }

    #[test]
    fn key_and_session_scenarios_use_64_connections() {
        let s = Settings::for_tests();
        let scenarios = all(&s);
        for name in [
            "verify_cached",
            "verify_unknown",
            "me_api_key",
            "me_session",
        ] {
            let sc = scenarios.iter().find(|sc| sc.name == name);
            assert!(
                sc.is_some_and(|sc| sc.needs_server() && sc.concurrency_label() == "64"),
                "{name}"
            );
        }
    }

    #[test]
    fn verify_answers_are_judged_by_valid_and_code() {
        let valid = Expected::new(true, "VALID");
        let not_found = Expected::new(false, "NOT_FOUND");
        let ok = br#"{"valid":true,"code":"VALID","key_id":"k","name":"n","scopes":[]}"#;
        let missing = br#"{"valid":false,"code":"NOT_FOUND"}"#;
        assert!(valid.matches(ok));
        assert!(!valid.matches(missing));
        assert!(not_found.matches(missing));
        assert!(!not_found.matches(ok));
        // Same answer, other layout: parsed instead.
        assert!(valid.matches(b"{ \"code\": \"VALID\", \"valid\": true }"));
        assert!(!valid.matches(br#"{"valid":false,"code":"REVOKED"}"#));
        assert!(!valid.matches(b"not json"));
    }

    #[test]
    fn session_cookie_is_taken_from_set_cookie() -> Result<()> {
        let mut h = HeaderMap::new();
        assert_eq!(session_cookie_pair(&h), None);
        h.append(SET_COOKIE, "other=1; Path=/".parse()?);
        // The server clearing the cookie is no session.
        h.append(
            SET_COOKIE,
            "__Host-portcullis=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0".parse()?,
        );
        assert_eq!(session_cookie_pair(&h), None);
        h.append(
            SET_COOKIE,
            "__Host-portcullis=pcs_abc123; Path=/; HttpOnly; Secure; SameSite=Lax".parse()?,
        );
        assert_eq!(
            session_cookie_pair(&h).as_deref(),
            Some("__Host-portcullis=pcs_abc123")
        );
        Ok(())
    }

    #[test]
    fn me_answers_say_how_the_caller_authenticated() {
        let body = br#"{"id":"u","email":"e","roles":[],"auth":{"method":"session","scopes":[],"session_id":"s"}}"#;
        assert!(authenticated_by(body, "session"));
        assert!(!authenticated_by(body, "api_key"));
        assert!(!authenticated_by(
            br#"{"auth":{"method":"jwt"}}"#,
            "session"
        ));
        assert!(!authenticated_by(b"not json", "session"));
    }

    #[test]
    fn unknown_keys_pass_the_format_check() -> Result<()> {
        let key = ApiKey::generate(DEFAULT_PREFIX)?;
        assert!(ApiKey::parse(key.expose()).is_ok());
        Ok(())
    }
}
