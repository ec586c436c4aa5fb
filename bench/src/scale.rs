//! `--scale`: the hot paths on an empty store against the same paths once the store holds a
//! realistic amount of data, in one run. The server is started on a fresh store (SQLite in its data
//! directory, or an empty PostgreSQL database with `--database-url`), the scenarios run, the server
//! stops; the store is then filled directly through `portcullis-store` (1,000,000 users and API keys,
//! 10,000,000 refresh-token rows of which nine in ten are spent, 1,000,000 sessions, 5,000,000 audit
//! events at `--scale-factor 1`), the server starts again on it, and the same scenarios run, plus
//! the cold ones (each request a real key or session the server has never seen). What is seeded is
//! what a janitor leaves behind in a long-lived deployment: live families with their spent chains,
//! sessions within their timeouts, audit events within retention.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use portcullis_core::apikeys::{ApiKey, DEFAULT_PREFIX};
use portcullis_core::clock::Millis;
use portcullis_core::ids::{EventId, FamilyId, KeyId, RefreshTokenId, SessionId, UserId};
use portcullis_core::secrets::{OpaqueToken, TokenHash};
use portcullis_store::bulk::Cell;
use portcullis_store::{Store, StoreOptions};

use crate::Settings;
use crate::load::{self, Stats};
use crate::scenario::{ConnDriver, Ctx, Kind, SESSION_COOKIE, Scenario, Simple, setup};
use crate::server::{Proc, ServerGuard};

pub const BEGIN: &str = "<!-- bench:scale:begin -->";
pub const END: &str = "<!-- bench:scale:end -->";

/// The scenarios measured on both stores unless `--only` names others.
pub const DEFAULT: &[&str] = &[
    "me_jwt",
    "verify_cached",
    "verify_unknown",
    "me_session",
    "refresh",
    "login",
    "oauth_client_credentials",
    "oauth_introspect",
];

/// Rows at `--scale-factor 1`.
const USERS: usize = 1_000_000;
const API_KEYS: usize = 1_000_000;
const REFRESH_ROWS: usize = 10_000_000;
/// Tokens per seeded family: nine spent, the last live.
const CHAIN: usize = 10;
const SESSIONS: usize = 1_000_000;
const AUDIT_EVENTS: usize = 5_000_000;
/// Real keys and sessions the harness keeps for the cold scenarios (each used once per pass).
const COLD: usize = 200_000;
/// Rows generated and handed to the store at a time.
const CHUNK: usize = 50_000;

/// What the seeding wrote and how long it took.
pub struct Seeded {
    pub counts: Vec<(&'static str, i64)>,
    pub bytes: i64,
    pub took: Duration,
    pub cold_keys: Arc<Vec<String>>,
    pub cold_sessions: Arc<Vec<String>>,
}

pub struct Measured {
    pub name: &'static str,
    pub empty: Option<Stats>,
    pub scaled: Stats,
}

fn scaled(n: usize, factor: f64) -> usize {
    ((n as f64 * factor).round() as usize).max(1)
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(Some(s.into()))
}

fn int(v: i64) -> Cell {
    Cell::Int(Some(v))
}

/// Inserts `rows`, each holding a value for every bulk column of `table` in the store's order
/// ([`portcullis_store::bulk::columns`]).
async fn insert(store: &Store, table: &str, rows: &[Vec<Cell>]) -> Result<u64> {
    let columns = portcullis_store::bulk::columns(table)
        .ok_or_else(|| anyhow!("the store has no bulk load into {table}"))?;
    Ok(store.bulk_insert(table, columns, rows).await?)
}

/// Fills `store` (already migrated): users first (everything else belongs to one), then keys,
/// families and their chains, sessions, and audit events spread over the last 30 days.
pub async fn seed(store: &Store, factor: f64, password_hash: &str) -> Result<Seeded> {
    let started = Instant::now();
    store.bulk_loading().await?;
    let now = Millis::now();
    let day = 86_400_000;
    let n_users = scaled(USERS, factor);
    let mut users = Vec::with_capacity(n_users);
    for chunk_start in (0..n_users).step_by(CHUNK) {
        let end = (chunk_start + CHUNK).min(n_users);
        let mut rows = Vec::with_capacity(end - chunk_start);
        for i in chunk_start..end {
            let id = UserId::generate();
            let email = format!("scale-{i}@bench.invalid");
            rows.push(vec![
                text(id.as_str()),
                text(email.clone()),
                text(email),
                Cell::Text(None),
                text(password_hash),
                text(""),
                int(now.0),
                int(now.0),
                int(now.0),
            ]);
            users.push(id);
        }
        insert(store, "users", &rows).await.context("seed users")?;
    }
    eprintln!(
        "[bench] scale: {n_users} users after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let user = |i: usize| users.get(i % users.len()).map(UserId::as_str).unwrap_or("");

    let n_keys = scaled(API_KEYS, factor);
    let mut cold_keys = Vec::with_capacity(COLD.min(n_keys));
    for chunk_start in (0..n_keys).step_by(CHUNK) {
        let end = (chunk_start + CHUNK).min(n_keys);
        let mut rows = Vec::with_capacity(end - chunk_start);
        for i in chunk_start..end {
            let key = ApiKey::generate(DEFAULT_PREFIX).context("generate a key")?;
            rows.push(vec![
                text(KeyId::generate().as_str()),
                text(user(i)),
                text(key.prefix()),
                text(key.start()),
                Cell::Blob(Some(key.hash().as_bytes().to_vec())),
                text(format!("scale key {i}")),
                text("orders:read"),
                int(now.0),
                int(now.0),
                Cell::Int(None),
                Cell::Int(None),
                Cell::Int(None),
            ]);
            if cold_keys.len() < COLD {
                cold_keys.push(key.expose().to_owned());
            }
        }
        insert(store, "api_keys", &rows)
            .await
            .context("seed API keys")?;
    }
    eprintln!(
        "[bench] scale: {n_keys} API keys after {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // Families of CHAIN tokens each: created up to 20 days ago, living 30 days; every token but the
    // last is spent (a day's worth of rotations apart), the spent ones mostly past their own expiry.
    let n_tokens = scaled(REFRESH_ROWS, factor);
    let n_families = n_tokens.div_ceil(CHAIN);
    let families_per_chunk = (CHUNK / CHAIN).max(1);
    for chunk_start in (0..n_families).step_by(families_per_chunk) {
        let end = (chunk_start + families_per_chunk).min(n_families);
        let mut families = Vec::with_capacity(end - chunk_start);
        let mut tokens = Vec::with_capacity((end - chunk_start) * CHAIN);
        for f in chunk_start..end {
            let family = FamilyId::generate();
            let created = now.0 - (f as i64 % 20) * day - 1;
            families.push(vec![
                text(family.as_str()),
                text(user(f)),
                text("portcullis"),
                text(""),
                Cell::Text(None),
                int(created),
                int(created + 30 * day),
                Cell::Int(None),
                Cell::Text(None),
                int(created / 1000),
            ]);
            let mut parent: Option<String> = None;
            for t in 0..CHAIN {
                let id = RefreshTokenId::generate();
                let issued = created + (t as i64) * (now.0 - created) / CHAIN as i64;
                let last = t + 1 == CHAIN;
                let secret = OpaqueToken::generate("prt").context("random")?;
                tokens.push(vec![
                    text(id.as_str()),
                    text(family.as_str()),
                    Cell::Text(parent.take()),
                    Cell::Blob(Some(secret.hash().as_bytes().to_vec())),
                    int(issued),
                    int((issued + 14 * day).min(created + 30 * day)),
                    Cell::Int((!last).then_some(issued + 1)),
                    Cell::Int(None),
                ]);
                parent = Some(id.as_str().to_owned());
            }
        }
        insert(store, "refresh_families", &families)
            .await
            .context("seed refresh families")?;
        insert(store, "refresh_tokens", &tokens)
            .await
            .context("seed refresh tokens")?;
    }
    eprintln!(
        "[bench] scale: {} refresh tokens in {n_families} families after {:.0} s",
        n_families * CHAIN,
        started.elapsed().as_secs_f64()
    );

    let n_sessions = scaled(SESSIONS, factor);
    let mut cold_sessions = Vec::with_capacity(COLD.min(n_sessions));
    for chunk_start in (0..n_sessions).step_by(CHUNK) {
        let end = (chunk_start + CHUNK).min(n_sessions);
        let mut rows = Vec::with_capacity(end - chunk_start);
        for i in chunk_start..end {
            let token = OpaqueToken::generate("pcs").context("random")?;
            rows.push(vec![
                text(SessionId::generate().as_str()),
                Cell::Blob(Some(token.hash().as_bytes().to_vec())),
                text(user(i)),
                int(now.0),
                int(now.0),
                int(now.0 + day),
                Cell::Int(None),
                Cell::Text(None),
                text("127.0.0.1"),
                text("portcullis-bench"),
            ]);
            if cold_sessions.len() < COLD {
                cold_sessions.push(token.expose().to_owned());
            }
        }
        insert(store, "sessions", &rows)
            .await
            .context("seed sessions")?;
    }
    eprintln!(
        "[bench] scale: {n_sessions} sessions after {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let n_events = scaled(AUDIT_EVENTS, factor);
    const KINDS: [&str; 5] = [
        "refresh.rotated",
        "login.succeeded",
        "login.failed",
        "api_key.created",
        "session.started",
    ];
    for chunk_start in (0..n_events).step_by(CHUNK) {
        let end = (chunk_start + CHUNK).min(n_events);
        let mut rows = Vec::with_capacity(end - chunk_start);
        for i in chunk_start..end {
            // Oldest first, as they were written: 30 days up to now.
            let at = now.0 - 30 * day + (i as i64) * (30 * day / n_events as i64);
            rows.push(vec![
                text(EventId::generate().as_str()),
                text(
                    KINDS
                        .get(i % KINDS.len())
                        .copied()
                        .unwrap_or("login.succeeded"),
                ),
                text(user(i)),
                Cell::Text(None),
                text("127.0.0.1"),
                Cell::Text(None),
                text("{}"),
                int(at),
            ]);
        }
        insert(store, "audit_events", &rows)
            .await
            .context("seed audit events")?;
    }
    let took = started.elapsed();
    eprintln!(
        "[bench] scale: {n_events} audit events; seeding took {:.0} s",
        took.as_secs_f64()
    );
    store.bulk_done().await?;
    let (counts, bytes) = store.bulk_counts().await?;
    Ok(Seeded {
        counts,
        bytes,
        took,
        cold_keys: Arc::new(cold_keys),
        cold_sessions: Arc::new(cold_sessions),
    })
}

/// The cold scenarios: every request a different real key (or session) that the server has not
/// seen since it started, so each one is a cache miss and a lookup in the big table.
pub fn cold_scenarios(seeded: &Seeded, s: &Settings) -> Vec<Scenario> {
    let keys = Arc::clone(&seeded.cold_keys);
    let sessions = Arc::clone(&seeded.cold_sessions);
    let next_key = Arc::new(AtomicUsize::new(0));
    let next_session = Arc::new(AtomicUsize::new(0));
    vec![
        Scenario {
            name: "verify_cold",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(move |ctx: Arc<Ctx>, _| {
                    let keys = Arc::clone(&keys);
                    let next = Arc::clone(&next_key);
                    async move {
                        let verifier = ctx.verifier_key().await?.to_owned();
                        let target = ctx.target.clone();
                        Ok(Simple::boxed(move || {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let key = keys.get(i % keys.len().max(1)).cloned().unwrap_or_default();
                            let body = serde_json::to_vec(&serde_json::json!({ "key": key }))
                                .context("encode")?;
                            target.post_json_api_key(
                                "/v1/keys/verify",
                                Bytes::from(body),
                                &verifier,
                            )
                        }) as Box<dyn ConnDriver>)
                    }
                }),
            },
        },
        Scenario {
            name: "me_session_cold",
            kind: Kind::Loop {
                connections: s.connections,
                setup: setup(move |ctx: Arc<Ctx>, _| {
                    let sessions = Arc::clone(&sessions);
                    let next = Arc::clone(&next_session);
                    async move {
                        let target = ctx.target.clone();
                        Ok(Simple::boxed(move || {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let token = sessions
                                .get(i % sessions.len().max(1))
                                .cloned()
                                .unwrap_or_default();
                            target.get_cookie("/v1/me", &format!("{SESSION_COOKIE}={token}"))
                        }) as Box<dyn ConnDriver>)
                    }
                }),
            },
        },
    ]
}

/// One password hash for every seeded user (argon2id of a random password, as the server makes
/// them): hashing a million would take hours and measure nothing.
pub fn password_hash() -> Result<String> {
    use portcullis_core::passwords::{Argon2Params, PasswordHashing};
    let hashing = PasswordHashing::new(Argon2Params::OWASP).map_err(|e| anyhow!("hash: {e}"))?;
    let password = crate::nodes::random_hex(16)?;
    Ok(hashing
        .hash(&secrecy::SecretString::from(password))
        .map_err(|e| anyhow!("hash: {e}"))?
        .as_str()
        .to_owned())
}

async fn measure(
    ctx: &Arc<Ctx>,
    scenarios: &[Scenario],
    settings: &Settings,
    pid: u32,
    label: &str,
) -> Vec<(&'static str, Result<Stats>)> {
    let mut out = Vec::new();
    for sc in scenarios {
        let Kind::Loop { connections, setup } = &sc.kind else {
            continue;
        };
        eprintln!("[bench] {label} {}: {connections} connections", sc.name);
        let res = load::run_loop(ctx, *connections, setup, settings, Proc::Pid(pid)).await;
        if let Ok(s) = &res {
            eprintln!(
                "[bench] {label} {}: {:.0}/s, p99 {:.2} ms, {} non-success",
                sc.name,
                s.per_sec(),
                s.hist.value_at_quantile(0.99) as f64 / 1000.0,
                s.non_success() + s.transport
            );
        }
        out.push((sc.name, res));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out
}

/// Where the run keeps its store.
pub enum Backend<'a> {
    Sqlite,
    Postgres(&'a str),
}

pub struct Outcome {
    pub measured: Vec<Measured>,
    pub seeded: Seeded,
    pub plans: Vec<(&'static str, Vec<String>)>,
    pub backend: &'static str,
}

/// The whole `--scale` run on one backend.
pub async fn run(
    bin: &Path,
    backend: Backend<'_>,
    scenarios: Vec<Scenario>,
    settings: &Settings,
    users: usize,
    factor: f64,
) -> Result<Outcome> {
    let master = crate::nodes::random_hex(32)?;
    let env = [("PORTCULLIS_MASTER_KEY", master.as_str())];
    let data_dir = tempfile::Builder::new()
        .prefix("portcullis-scale-")
        .tempdir()
        .context("create temp dir")?;
    let mut args: Vec<String> = Vec::new();
    if let Backend::Postgres(url) = backend {
        args.extend(["--database-url".to_owned(), url.to_owned()]);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();

    // 1. The empty store.
    let mut guard = ServerGuard::start_on(bin, data_dir.path(), &arg_refs, &env, None)?;
    guard.wait_healthy(Duration::from_secs(30)).await?;
    // The second start keeps the first one's issuer, so that the tokens of the first stay valid.
    let issuer = guard.http.target.base_url();
    let root = guard.root_key(Duration::from_secs(2)).await;
    let seeded_ctx = Ctx::seed(guard.http.target.clone(), users, root)
        .await
        .map_err(|e| anyhow!("seeding users over HTTP failed: {e:#}"))?;
    let ctx = Arc::new(seeded_ctx.on(guard.http.target.clone()));
    let empty = measure(&ctx, &scenarios, settings, guard.http.pid, "empty").await;
    drop(guard);

    // 2. Fill the same store.
    let store = match backend {
        Backend::Sqlite => {
            Store::open_sqlite(
                &data_dir.path().join("portcullis.db"),
                &StoreOptions::default(),
            )
            .await?
        }
        Backend::Postgres(url) => {
            Store::connect_postgres(url, &StoreOptions::default(), None).await?
        }
    };
    store.migrate().await?;
    let seeded = seed(&store, factor, &password_hash()?).await?;
    let plans = explain_hot_paths(&store, &seeded).await?;
    store.close().await;

    // 3. The big store: the same scenarios, then the cold ones.
    let mut guard = ServerGuard::start_on(bin, data_dir.path(), &arg_refs, &env, Some(&issuer))?;
    guard.wait_healthy(Duration::from_secs(60)).await?;
    let ctx = Arc::new(seeded_ctx.on(guard.http.target.clone()));
    let mut big = measure(&ctx, &scenarios, settings, guard.http.pid, "scaled").await;
    big.extend(
        measure(
            &ctx,
            &cold_scenarios(&seeded, settings),
            settings,
            guard.http.pid,
            "scaled",
        )
        .await,
    );
    guard.ensure_alive()?;
    drop(guard);

    let mut measured = Vec::new();
    let mut empty: Vec<(&'static str, Result<Stats>)> = empty;
    for (name, res) in big {
        let scaled = res.with_context(|| format!("{name} on the scaled store"))?;
        let before = empty
            .iter_mut()
            .position(|(n, _)| *n == name)
            .map(|i| empty.swap_remove(i).1);
        let empty = match before {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => bail!("{name} on the empty store: {e:#}"),
            None => None,
        };
        measured.push(Measured {
            name,
            empty,
            scaled,
        });
    }
    Ok(Outcome {
        measured,
        seeded,
        plans,
        backend: match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        },
    })
}

/// The statements of the hot paths and of the janitor, as the store runs them, with real values
/// from the seeded store.
async fn explain_hot_paths(
    store: &Store,
    seeded: &Seeded,
) -> Result<Vec<(&'static str, Vec<String>)>> {
    let key_hash = seeded
        .cold_keys
        .first()
        .and_then(|k| ApiKey::parse(k).ok())
        .map(|k| k.hash())
        .unwrap_or(TokenHash([0; 32]));
    let session_hash = seeded
        .cold_sessions
        .first()
        .and_then(|s| OpaqueToken::parse("pcs", s).ok())
        .map(|t| t.hash())
        .unwrap_or(TokenHash([0; 32]));
    let blob = |h: &TokenHash| Cell::Blob(Some(h.as_bytes().to_vec()));
    let now = int(Millis::now().0);
    let list: Vec<(&'static str, &'static str, Vec<Cell>)> = vec![
        (
            "API key by hash (verify, cold)",
            "SELECT id, owner_id FROM api_keys WHERE key_hash = $1",
            vec![blob(&key_hash)],
        ),
        (
            "session by cookie hash (me_session, cold)",
            "SELECT id, user_id FROM sessions WHERE token_hash = $1",
            vec![blob(&session_hash)],
        ),
        (
            "user by email key (login)",
            "SELECT id, password_hash FROM users WHERE email_key = $1",
            vec![text("scale-1@bench.invalid")],
        ),
        (
            "refresh: token and its family by hash",
            "SELECT t.id, t.family_id, f.user_id, t.spent_at FROM refresh_tokens t \
             JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = $1",
            vec![blob(&key_hash)],
        ),
        (
            "refresh: spend (the rotation's UPDATE)",
            "UPDATE refresh_tokens SET spent_at = $1 WHERE spent_at IS NULL AND revoked_at IS NULL \
             AND expires_at > $1 AND EXISTS (SELECT 1 FROM refresh_families f \
             WHERE f.id = refresh_tokens.family_id AND f.revoked_at IS NULL AND f.expires_at > $1) \
             AND token_hash IN ($2)",
            vec![now.clone(), blob(&key_hash)],
        ),
        (
            "refresh: child of a spent token (grace retry)",
            "SELECT id FROM refresh_tokens WHERE parent_id = $1 AND spent_at IS NOT NULL AND revoked_at IS NOT NULL",
            vec![text("rt_0")],
        ),
        (
            "refresh: revoke a family's tokens (reuse)",
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
            vec![text("fam_0"), now.clone()],
        ),
        (
            "janitor: dead refresh families",
            "SELECT id FROM refresh_families WHERE expires_at < $1 OR revoked_at < $1 LIMIT 1000",
            vec![now.clone()],
        ),
        (
            "janitor: ended or idle sessions",
            "SELECT id FROM sessions WHERE expires_at < $1 OR revoked_at < $1 OR last_seen_at < $1 LIMIT 1000",
            vec![now.clone()],
        ),
        (
            "janitor: expired, revoked or rolled API keys",
            "SELECT id FROM api_keys WHERE expires_at < $1 OR revoked_at < $1 OR grace_until < $1 LIMIT 1000",
            vec![now.clone()],
        ),
        (
            "janitor: old audit events",
            "SELECT id FROM audit_events WHERE created_at < $1 LIMIT 1000",
            vec![now.clone()],
        ),
        (
            "audit: newest events of an actor",
            "SELECT id FROM audit_events WHERE actor = $1 ORDER BY created_at DESC LIMIT 50",
            vec![text("usr_0")],
        ),
    ];
    let mut out = Vec::new();
    for (name, sql, binds) in list {
        let plan = store
            .explain(sql, &binds)
            .await
            .with_context(|| format!("EXPLAIN {name}"))?;
        out.push((name, plan));
    }
    Ok(out)
}

pub fn render(outcomes: &[Outcome], settings: &Settings, machine: &str, factor: f64) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "### Empty store against a scaled one (`--scale`, factor {factor}, {} s per scenario, {machine})\n",
        settings.duration.as_secs()
    );
    for o in outcomes {
        let rows: Vec<String> = o
            .seeded
            .counts
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let _ = writeln!(
            t,
            "**{}**: seeded in {:.0} s through `portcullis-store`; rows: {}; database {:.2} GiB.\n",
            o.backend,
            o.seeded.took.as_secs_f64(),
            rows.join(", "),
            o.seeded.bytes as f64 / f64::from(1u32 << 30)
        );
        let _ = writeln!(
            t,
            "| scenario | empty req/s | scaled req/s | scaled / empty | empty p99 ms | scaled p99 ms | scaled peak RSS MB | non-2xx (empty / scaled) |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for m in &o.measured {
            let p99 = |s: &Stats| format!("{:.2}", s.hist.value_at_quantile(0.99) as f64 / 1000.0);
            let (er, ep, ratio, eerr) = match &m.empty {
                Some(e) => (
                    format!("{:.0}", e.per_sec()),
                    p99(e),
                    if e.per_sec() > 0.0 {
                        format!("{:.2}", m.scaled.per_sec() / e.per_sec())
                    } else {
                        "n/a".into()
                    },
                    (e.non_success() + e.transport).to_string(),
                ),
                None => ("—".into(), "—".into(), "—".into(), "—".into()),
            };
            let _ = writeln!(
                t,
                "| {} | {er} | {:.0} | {ratio} | {ep} | {} | {} | {eerr} / {} |",
                m.name,
                m.scaled.per_sec(),
                p99(&m.scaled),
                m.scaled
                    .peak_kib
                    .map_or_else(|| "?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                m.scaled.non_success() + m.scaled.transport,
            );
        }
        let _ = writeln!(t, "\nQuery plans on the scaled {} store:\n", o.backend);
        for (name, plan) in &o.plans {
            let _ = writeln!(t, "- {name}: `{}`", plan.join(" / ").replace('`', "'"));
        }
        let _ = writeln!(t);
    }
    t
}

/// Replaces the section between [`BEGIN`] and [`END`] of `path` (appending one if missing).
pub fn write(path: &Path, section: &str) -> Result<()> {
    crate::nodes::replace_section(path, BEGIN, END, "At scale", section)
}
