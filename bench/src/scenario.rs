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

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::Settings;
use crate::http::{Target, body_snippet};

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

    /// Called after a failed request or transport error, outside the timed measurement.
    fn recover(&mut self) -> BoxFut<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Builds the driver for connection number `i` (setup is not timed; it may log in etc.).
pub type Setup =
    Arc<dyn Fn(Arc<Ctx>, usize) -> BoxFut<'static, Result<Box<dyn ConnDriver>>> + Send + Sync>;

fn setup<F, Fut>(f: F) -> Setup
where
    F: Fn(Arc<Ctx>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Box<dyn ConnDriver>>> + Send + 'static,
{
    Arc::new(move |ctx, i| Box::pin(f(ctx, i)))
}

pub enum Kind {
    /// `connections` connections, each sending requests back to back for warm-up + duration.
    Loop { connections: usize, setup: Setup },
    /// `connections` connections each send exactly one request, all at the same instant.
    Burst { connections: usize, setup: Setup },
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
        !matches!(self.kind, Kind::InProcess { .. })
    }

    /// For the table's "connections" column.
    pub fn concurrency_label(&self) -> String {
        match &self.kind {
            Kind::Loop { connections, .. } | Kind::Burst { connections, .. } => {
                connections.to_string()
            }
            Kind::InProcess { threads, .. } => format!("{threads} threads"),
        }
    }
}

/// Every scenario, in the order they run.
pub fn all(s: &Settings) -> Vec<Scenario> {
    vec![
        Scenario {
            name: "healthz",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(|ctx, _| async move {
                    let t = ctx.target.clone();
                    Ok(Simple::boxed(move || t.get("/healthz", None)))
                }),
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
    ]
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
    /// The root API key the server printed on first start (unused by today's scenarios).
    pub root_key: Option<String>,
    /// Logins are slow (argon2); setup and recovery run at most this many at once.
    login_gate: Semaphore,
}

const SETUP_LOGIN_CONCURRENCY: usize = 3;

impl Ctx {
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
        let ctx = Self {
            target,
            users,
            access_token: String::new(),
            root_key,
            login_gate: Semaphore::new(SETUP_LOGIN_CONCURRENCY),
        };
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

    /// Logs user `i` in (at most [`SETUP_LOGIN_CONCURRENCY`] at a time) and returns the tokens.
    pub async fn login(&self, i: usize) -> Result<Tokens> {
        let user = self.user(i)?;
        let _permit = self
            .login_gate
            .acquire()
            .await
            .context("login gate closed")?;
        let mut last = String::new();
        // A busy server may shed load with 429/503: retry a few times with a pause.
        for attempt in 0..5u32 {
            let req = self
                .target
                .post_json("/v1/auth/login", user.login_body.clone(), None)?;
            let (status, body) = self.target.once(req).await.context("POST /v1/auth/login")?;
            match status {
                StatusCode::OK => {
                    return serde_json::from_slice(&body).with_context(|| {
                        format!(
                            "login response is not the expected JSON: {}",
                            body_snippet(&body)
                        )
                    });
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    last = format!("{status}: {}", body_snippet(&body));
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
                _ => bail!(
                    "login of {} answered {status}: {}",
                    user.email,
                    body_snippet(&body)
                ),
            }
        }
        bail!("login of {} kept failing: {last}", user.email)
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
}
