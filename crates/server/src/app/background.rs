//! Background work: signing-key rotation and reload, the janitor, and picking up what other nodes
//! changed (token watermarks, API keys). Each loop is independent and survives store errors (logged, retried next tick).

use std::time::Duration;

use portcullis_core::clock::Millis;
use portcullis_core::secrets::TokenHash;
use portcullis_store::{
    AccountStore, ApiKeyStore, Maintenance, NonceStore, OAuthStore, SessionStore,
    SignatureKeyStore, SigningKeyStore, UserStore,
};

use super::AppState;
use crate::coalesce::FLUSH_EVERY;
use crate::invalidation::Invalidation;

/// With Redis, this node's invalidations go to the other nodes and theirs are applied here.
fn spawn_redis_bus(state: &AppState) {
    let Some(redis) = state.redis.clone() else {
        return;
    };
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<String>(4096);
    let (in_tx, mut in_rx) = tokio::sync::mpsc::unbounded_channel();
    portcullis_kv::bus::spawn(redis, state.node_id.clone(), out_rx, in_tx);
    let mut local = state.bus.subscribe();
    tokio::spawn(async move {
        loop {
            match local.recv().await {
                Ok(event) => {
                    if out_tx.try_send(event.encode()).is_err() {
                        metrics::counter!("portcullis_redis_errors_total", "op" => "publish_queue")
                            .increment(1);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    // Weak: a stopping node drops its state (and with it the audit writer's last sender) while this
    // task still waits for events.
    let weak = std::sync::Arc::downgrade(&state.0);
    tokio::spawn(async move {
        while let Some(incoming) = in_rx.recv().await {
            match incoming {
                portcullis_kv::bus::Incoming::Event(raw) => {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    if let Some(event) = Invalidation::decode(&raw) {
                        metrics::counter!("portcullis_invalidations_received_total").increment(1);
                        let state = AppState(inner);
                        if event == Invalidation::SigningKeys {
                            // Another node made or ended a key: know it before anyone signs with it.
                            tokio::spawn(async move { reload_signing_keys(&state).await });
                        } else {
                            state.apply(&event);
                        }
                    }
                }
                portcullis_kv::bus::Incoming::Resubscribed => {
                    tracing::info!("subscribed to other nodes' invalidations");
                    // Key changes sent while the subscription was down are not replayed.
                    if let Some(inner) = weak.upgrade() {
                        let state = AppState(inner);
                        tokio::spawn(async move { reload_signing_keys(&state).await });
                    }
                }
            }
        }
    });
}

pub fn spawn(state: AppState) -> Vec<tokio::task::JoinHandle<()>> {
    spawn_redis_bus(&state);
    vec![
        tokio::spawn(keys_loop(state.clone())),
        tokio::spawn(janitor_loop(state.clone())),
        tokio::spawn(usage_loop(state.clone())),
        tokio::spawn(audit_counts_loop(state.clone())),
        tokio::spawn(key_changes_loop(state.clone())),
        tokio::spawn(database_probe_loop(state.clone())),
        tokio::spawn(metrics_upkeep_loop(state)),
    ]
}

/// Times one round trip to the store every five seconds (`portcullis_db_seconds{op="ping"}`,
/// `portcullis_db_up`), so that a slow or lost database shows on the dashboard before requests fail.
async fn database_probe_loop(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut was_up = true;
    loop {
        tick.tick().await;
        let began = std::time::Instant::now();
        let up = state.store.ping().await.is_ok();
        metrics::histogram!("portcullis_db_seconds", "op" => "ping")
            .record(began.elapsed().as_secs_f64());
        metrics::gauge!("portcullis_db_up").set(if up { 1.0 } else { 0.0 });
        if up != was_up {
            if up {
                tracing::info!("the store answers again");
            } else {
                tracing::warn!("the store does not answer");
            }
            was_up = up;
        }
    }
}

/// Drains the Prometheus histograms' buckets into their summaries every few seconds, so that their
/// memory stays bounded however long the process runs.
async fn metrics_upkeep_loop(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        state.metrics.run_upkeep();
    }
}

/// How far back each poll for API-key changes looks before the previous one: covers clock skew between
/// nodes and changes committed after a poll that started before them. Re-dropping a cached key is
/// harmless.
const KEY_CHANGES_LOOKBACK_MS: i64 = 5_000;
const KEY_CHANGES_BATCH: i64 = 10_000;

/// Picks up what other nodes (or the CLI) changed in the shared store, so that it is honoured here
/// within a second (polled twice a second): API keys changed or revoked, sessions revoked, users
/// changed (disabled, roles, passwords), access-token watermarks, and signing keys revoked in an
/// emergency, and RFC 9421 signing keys revoked. Changes made on this node were applied already, before they were acknowledged. (With
/// Redis, the bus will push them instead.)
async fn key_changes_loop(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let start = Millis::now().0;
    let (mut keys_since, mut sessions_since, mut users_since, mut marks_since) =
        (start, start, start, start);
    let mut signing_since = start;
    let mut denied_since = start;
    let mut signature_keys_since = start;
    loop {
        tick.tick().await;
        let started = Millis::now().0;
        let keys = state
            .store
            .api_keys_changed_since(
                Millis(keys_since - KEY_CHANGES_LOOKBACK_MS),
                KEY_CHANGES_BATCH,
            )
            .await;
        match keys {
            Ok(rows) => {
                apply(&state, &rows, Invalidation::ApiKey);
                keys_since = next_since(&rows, started);
            }
            Err(e) => tracing::error!(error = %e, "polling API-key changes failed"),
        }
        let sessions = state
            .store
            .sessions_revoked_since(
                Millis(sessions_since - KEY_CHANGES_LOOKBACK_MS),
                KEY_CHANGES_BATCH,
            )
            .await;
        match sessions {
            Ok(rows) => {
                apply(&state, &rows, Invalidation::Session);
                sessions_since = next_since(&rows, started);
            }
            Err(e) => tracing::error!(error = %e, "polling session revocations failed"),
        }
        match state
            .store
            .users_changed_since(users_since - KEY_CHANGES_LOOKBACK_MS, KEY_CHANGES_BATCH)
            .await
        {
            Ok(rows) => {
                for (id, _) in &rows {
                    state.apply(&Invalidation::User(id.clone()));
                }
                users_since = match rows.last() {
                    Some((_, at)) if rows.len() as i64 == KEY_CHANGES_BATCH => {
                        at + KEY_CHANGES_LOOKBACK_MS
                    }
                    _ => started,
                };
            }
            Err(e) => tracing::error!(error = %e, "polling user changes failed"),
        }
        let forget_before = Millis::now()
            .plus_secs(-(state.config.access_token_ttl_s + state.config.jwt_leeway_s + 60));
        let marks_from = Millis((marks_since - KEY_CHANGES_LOOKBACK_MS).max(forget_before.0));
        match state.store.token_watermarks_since(marks_from).await {
            Ok(rows) => {
                state.tokens.load_watermarks(rows, forget_before);
                marks_since = started;
            }
            Err(e) => tracing::error!(error = %e, "polling token watermarks failed"),
        }
        match state
            .tokens
            .load_denied_since(Millis(denied_since - KEY_CHANGES_LOOKBACK_MS))
            .await
        {
            Ok(()) => denied_since = started,
            Err(e) => tracing::error!(error = %e, "polling revoked access tokens failed"),
        }
        match state
            .store
            .signature_keys_revoked_since(
                Millis(signature_keys_since - KEY_CHANGES_LOOKBACK_MS),
                KEY_CHANGES_BATCH,
            )
            .await
        {
            Ok(rows) => {
                for (id, _) in &rows {
                    state.apply(&Invalidation::SignatureKey(id.clone()));
                }
                signature_keys_since = match rows.last() {
                    Some((_, at)) if rows.len() as i64 == KEY_CHANGES_BATCH => {
                        at.0 + KEY_CHANGES_LOOKBACK_MS
                    }
                    _ => started,
                };
            }
            Err(e) => {
                tracing::error!(error = %e, "polling signing-key (RFC 9421) revocations failed")
            }
        }
        let revoked = state
            .store
            .signing_keys_expired_between(
                Millis(signing_since - KEY_CHANGES_LOOKBACK_MS),
                Millis(started),
            )
            .await;
        match revoked {
            Ok(kids) => {
                if kids.iter().any(|k| state.keys.current().knows(k)) {
                    reload_signing_keys(&state).await;
                }
                signing_since = started;
            }
            Err(e) => tracing::error!(error = %e, "polling signing-key revocations failed"),
        }
    }
}

/// Re-reads the signing keys; when a key this node knew has gone, every cached verification is
/// dropped, so tokens it signed stop working at once.
pub async fn reload_signing_keys(state: &AppState) {
    let before = state.keys.current();
    if let Err(e) = state.keys.reload().await {
        tracing::error!(error = %e, "reloading signing keys failed");
        return;
    }
    let after = state.keys.current();
    if before.kids().any(|k| !after.knows(k)) {
        state.tokens.forget_verified();
    }
}

/// Applies changes made elsewhere to this node's caches (not onto the bus: they are not ours).
fn apply(state: &AppState, rows: &[(TokenHash, Millis)], kind: fn([u8; 32]) -> Invalidation) {
    for event in Invalidation::of_hashes(rows.iter().map(|(h, _)| h), kind) {
        state.apply(&event);
    }
}

/// Where the next poll starts (before the lookback is taken off): after a full batch, at its last
/// change with no lookback, so that a burst larger than one batch is read in pieces instead of again
/// and again; else at this poll's start.
fn next_since(rows: &[(TokenHash, Millis)], started: i64) -> i64 {
    match rows.last() {
        Some((_, at)) if rows.len() as i64 == KEY_CHANGES_BATCH => at.0 + KEY_CHANGES_LOOKBACK_MS,
        _ => started,
    }
}

async fn keys_loop(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let interval_s = state.config.signing_key_rotation_days * 86_400;
        // One node at a time decides whether a rotation is due, so two nodes never both rotate; a
        // node that does not hold the lock only reloads what the holder made.
        let rotated = match state
            .store
            .try_job_lock(portcullis_store::Job::KeyRotation)
            .await
        {
            Ok(Some(lock)) => {
                let r = state
                    .keys
                    .rotate_if_due(interval_s, state.config.signing_key_publish_lead_s)
                    .await;
                lock.release().await;
                r
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the key rotation's lock");
                Ok(None)
            }
        };
        match rotated {
            Ok(Some(row)) => {
                tracing::info!(kid = %row.kid, activate_at = %Millis(row.activate_at).rfc3339(), "signing key rotated on schedule");
                state.bus.send(Invalidation::SigningKeys);
                state.audit.record(
                    "signing_key.rotated",
                    Some("system"),
                    Some(&row.kid),
                    &Default::default(),
                    serde_json::json!({ "scheduled": true }),
                );
            }
            Ok(None) => {
                // Picks up keys made by another node or the CLI, and moves keys between states.
                reload_signing_keys(&state).await;
            }
            Err(e) => tracing::error!(error = %e, "scheduled signing-key rotation failed"),
        }
    }
}

/// Runs one janitor pass: deletes in batches until a batch comes back short.
/// Runs `purge` (a bounded delete) until a batch comes back short of `batch` rows, yielding between
/// batches; the rows deleted. A failure is logged (as `failed`) and ends it: the next pass retries.
async fn purge_until_short<F, Fut>(batch: u32, failed: &str, mut purge: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = portcullis_store::Result<u64>>,
{
    let mut total = 0;
    loop {
        match purge().await {
            Ok(n) => {
                total += n;
                if n < u64::from(batch) {
                    return total;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "{failed}");
                return total;
            }
        }
    }
}

pub async fn janitor_pass(state: &AppState) -> u64 {
    let now = Millis::now();
    let audit_before = now.plus_secs(-state.config.audit_retention_days * 86_400);
    let keys_before = now.plus_secs(-state.config.api_key_retention_days * 86_400);
    let mut total = 0;
    loop {
        match state
            .store
            .purge_expired(now, audit_before, keys_before, state.config.janitor_batch)
            .await
        {
            Ok(purged) => {
                total += purged.total();
                let batch = u64::from(state.config.janitor_batch);
                let full = [
                    purged.refresh_families,
                    purged.audit_events,
                    purged.signing_keys,
                    purged.api_keys,
                    purged.signature_keys,
                ]
                .iter()
                .any(|n| *n >= batch);
                if !full {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "janitor pass failed");
                break;
            }
        }
    }
    // Replay nonces recorded in the store while Redis was away, a minute past their expiry.
    total += purge_until_short(
        state.config.janitor_batch,
        "purging replay nonces failed",
        || {
            state
                .store
                .purge_nonces(now.as_secs() - 60, state.config.janitor_batch)
        },
    )
    .await;
    // OAuth: codes, denied jtis and opaque tokens a minute past their expiry.
    total += purge_until_short(
        state.config.janitor_batch,
        "janitor pass over OAuth rows failed",
        || {
            state
                .store
                .purge_oauth(now.plus_secs(-60), state.config.janitor_batch)
        },
    )
    .await;
    // Emailed links and upstream sign-ins a minute past their expiry.
    total += purge_until_short(
        state.config.janitor_batch,
        "janitor pass over emailed links failed",
        || {
            state
                .store
                .purge_accounts(now.plus_secs(-60), state.config.janitor_batch)
        },
    )
    .await;
    // Sessions: ended a day ago, or idle for the idle timeout.
    let idle_before = now
        .plus_secs(-state.config.session_idle_timeout_s)
        .plus_millis(-60_000);
    total += purge_until_short(
        state.config.janitor_batch,
        "janitor pass over sessions failed",
        || {
            state.store.purge_sessions(
                now.plus_secs(-86_400),
                idle_before,
                state.config.janitor_batch,
            )
        },
    )
    .await;
    if total > 0 {
        tracing::info!(rows = total, "janitor removed expired rows");
        metrics::counter!("portcullis_janitor_rows_deleted_total").increment(total);
    }
    total
}

async fn janitor_loop(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(state.config.janitor_interval_s));
    loop {
        tick.tick().await;
        // One node at a time (several nodes on PostgreSQL); the others skip this round.
        match state
            .store
            .try_job_lock(portcullis_store::Job::Janitor)
            .await
        {
            Ok(Some(lock)) => {
                janitor_pass(&state).await;
                lock.release().await;
            }
            Ok(None) => tracing::debug!("another node is running the janitor"),
            Err(e) => tracing::warn!(error = %e, "cannot take the janitor's lock"),
        }
    }
}

/// `last_used_at` of keys and `last_seen_at` of sessions, written once a second.
async fn usage_loop(state: AppState) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        flush_usage(&state).await;
    }
}

/// Writes what the coalescers gathered (also on stop).
pub async fn flush_usage(state: &AppState) {
    state.apikeys.flush_usage().await;
    state.sessions.flush_activity().await;
}

/// Aggregated audit events, once per `verify_audit_interval_ms`.
async fn audit_counts_loop(state: AppState) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(state.config.verify_audit_interval_ms));
    loop {
        tick.tick().await;
        state.counts.flush(&state.audit);
    }
}
