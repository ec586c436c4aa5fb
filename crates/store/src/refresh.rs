//! Refresh tokens, grouped in families (every token descended from one login).
//!
//! Rotation is decided by one conditional `UPDATE … RETURNING` that marks the presented token spent
//! only if it is live: of any number of concurrent uses, exactly one gets the row back. Presenting a
//! spent token afterwards is reuse (OAuth 2.0 Security BCP, RFC 9700 §4.14.2): the whole family is
//! revoked, its newest token included. An optional grace period lets a client that lost the response
//! retry with the token it just spent, once: it gets a fresh token and the unused sibling is
//! superseded (spent and revoked), so a family never holds two live tokens, and presenting the
//! superseded sibling later counts as reuse.

use portcullis_core::clock::Millis;
use portcullis_core::ids::{FamilyId, RefreshTokenId};
use portcullis_core::secrets::TokenHash;

use crate::{Backend, Result, Store, StoreError, with_pool};

/// Revokes a family and every token in it, inside the caller's transaction (a macro because the
/// transaction's type differs per backend).
macro_rules! revoke_family {
    ($tx:expr, $family_id:expr, $now:expr, $reason:expr) => {{
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind($family_id)
        .bind($now.0)
        .bind($reason)
        .execute(&mut *$tx)
        .await?;
        sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL")
            .bind($family_id)
            .bind($now.0)
            .execute(&mut *$tx)
            .await?;
    }};
}

#[derive(Debug, Clone)]
pub struct NewFamily {
    pub id: FamilyId,
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub session_id: Option<String>,
    pub created_at: Millis,
    /// Absolute end of the family: no token of it outlives this.
    pub expires_at: Millis,
    /// The audiences its access tokens carry (JSON array), when not the configured one (OAuth).
    pub audiences: Option<String>,
    /// When the user authenticated (OAuth: `auth_time` of the ID token), seconds.
    pub auth_time: Option<i64>,
    /// The DPoP key its tokens are bound to (a public client's, RFC 9449 §5).
    pub dpop_jkt: Option<String>,
}

/// The token to issue next.
#[derive(Debug, Clone)]
pub struct NextToken {
    pub id: RefreshTokenId,
    pub hash: TokenHash,
    /// Lifetime of one token; capped by the family's absolute expiry.
    pub ttl_ms: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FamilyRow {
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    pub scope: String,
    pub session_id: Option<String>,
    pub expires_at: i64,
    pub audiences: Option<String>,
    pub auth_time: Option<i64>,
    pub dpop_jkt: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Rotation {
    /// The presented token is now spent and `next` was stored, expiring at `expires_at`.
    Rotated {
        family: FamilyRow,
        expires_at: Millis,
    },
    /// A spent token was presented again: the family has been revoked.
    Reused { family_id: String, user_id: String },
    /// Unknown, revoked or expired.
    Invalid,
}

#[derive(sqlx::FromRow)]
struct TokenState {
    id: String,
    family_id: String,
    user_id: String,
    spent_at: Option<i64>,
    revoked_at: Option<i64>,
    expires_at: i64,
    family_revoked_at: Option<i64>,
    family_expires_at: i64,
}

macro_rules! family_columns {
    () => {
        "id, user_id, client_id, scope, session_id, expires_at, audiences, auth_time, dpop_jkt"
    };
}

pub trait RefreshTokenStore {
    /// Stores a new family and its first token; returns the token's expiry.
    fn start_family(
        &self,
        family: &NewFamily,
        first: &NextToken,
    ) -> impl Future<Output = Result<Millis>> + Send;
    fn rotate(
        &self,
        presented: &TokenHash,
        now: Millis,
        grace_ms: i64,
        next: &NextToken,
    ) -> impl Future<Output = Result<Rotation>> + Send;
    /// Revokes the family of any token of it (logout). Returns `(family_id, user_id)` when one was found.
    fn revoke_family_of(
        &self,
        presented: &TokenHash,
        now: Millis,
        reason: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    /// The family of a token, whatever its state, with whether that token is live now (unspent,
    /// unrevoked, unexpired, in a live family): what the token endpoint checks before it rotates, and
    /// what introspection answers.
    fn refresh_token_family(
        &self,
        presented: &TokenHash,
        now: Millis,
    ) -> impl Future<Output = Result<Option<(FamilyRow, bool)>>> + Send;
    /// Revokes one family by id (a replayed authorization code, a session that ended); true when it
    /// was live.
    fn revoke_family(
        &self,
        family_id: &str,
        now: Millis,
        reason: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Revokes the live families bound to a browser session (RP-initiated logout); returns their ids.
    fn revoke_session_families(
        &self,
        session_id: &str,
        now: Millis,
        reason: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// Revokes every family of a user; returns how many were live.
    fn revoke_user_families(
        &self,
        user_id: &str,
        now: Millis,
        reason: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
}

impl RefreshTokenStore for Store {
    async fn start_family(&self, f: &NewFamily, first: &NextToken) -> Result<Millis> {
        let expires_at = Millis(
            f.created_at
                .0
                .saturating_add(first.ttl_ms)
                .min(f.expires_at.0),
        );
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO refresh_families (id, user_id, client_id, scope, session_id, created_at, expires_at, audiences, auth_time, dpop_jkt) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(f.id.as_str())
            .bind(&f.user_id)
            .bind(&f.client_id)
            .bind(&f.scope)
            .bind(&f.session_id)
            .bind(f.created_at.0)
            .bind(f.expires_at.0)
            .bind(&f.audiences)
            .bind(f.auth_time)
            .bind(&f.dpop_jkt)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (id, family_id, parent_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, NULL, $3, $4, $5)",
            )
            .bind(first.id.as_str())
            .bind(f.id.as_str())
            .bind(first.hash.as_bytes())
            .bind(f.created_at.0)
            .bind(expires_at.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(expires_at)
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        now: Millis,
        grace_ms: i64,
        next: &NextToken,
    ) -> Result<Rotation> {
        if let Backend::Sqlite {
            rotations: Some(queue),
            ..
        } = &self.backend
        {
            return queue.rotate(presented, now, grace_ms, next).await;
        }
        self.rotate_one(presented, now, grace_ms, next).await
    }

    async fn revoke_family_of(
        &self,
        presented: &TokenHash,
        now: Millis,
        reason: &str,
    ) -> Result<Option<(String, String)>> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let found = sqlx::query_as::<_, (String, String)>(
                "SELECT f.id, f.user_id FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
                 WHERE t.token_hash = $1",
            )
            .bind(presented.as_bytes())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((family_id, _)) = &found {
                revoke_family!(tx, family_id, now, reason);
            }
            tx.commit().await?;
            Ok(found)
        })
    }

    async fn refresh_token_family(
        &self,
        presented: &TokenHash,
        now: Millis,
    ) -> Result<Option<(FamilyRow, bool)>> {
        let sql = "SELECT f.id, f.user_id, f.client_id, f.scope, f.session_id, f.expires_at, f.audiences, f.auth_time, f.dpop_jkt, \
             t.spent_at, t.revoked_at, t.expires_at AS token_expires_at, f.revoked_at AS family_revoked_at \
             FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id WHERE t.token_hash = $1";
        #[derive(sqlx::FromRow)]
        struct Found {
            #[sqlx(flatten)]
            family: FamilyRow,
            spent_at: Option<i64>,
            revoked_at: Option<i64>,
            token_expires_at: i64,
            family_revoked_at: Option<i64>,
        }
        let found = with_pool!(self, read, p => sqlx::query_as::<_, Found>(sql)
            .bind(presented.as_bytes())
            .fetch_optional(p)
            .await?);
        Ok(found.map(|f| {
            let live = f.spent_at.is_none()
                && f.revoked_at.is_none()
                && f.family_revoked_at.is_none()
                && f.token_expires_at > now.0
                && f.family.expires_at > now.0;
            (f.family, live)
        }))
    }

    async fn revoke_family(&self, family_id: &str, now: Millis, reason: &str) -> Result<bool> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let live = sqlx::query("SELECT 1 FROM refresh_families WHERE id = $1 AND revoked_at IS NULL")
                .bind(family_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            revoke_family!(tx, family_id, now, reason);
            tx.commit().await?;
            Ok(live)
        })
    }

    async fn revoke_session_families(
        &self,
        session_id: &str,
        now: Millis,
        reason: &str,
    ) -> Result<Vec<(String, String)>> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let found = sqlx::query_as::<_, (String, String)>(
                "SELECT id, client_id FROM refresh_families WHERE session_id = $1 AND revoked_at IS NULL",
            )
            .bind(session_id)
            .fetch_all(&mut *tx)
            .await?;
            for (family_id, _) in &found {
                revoke_family!(tx, family_id, now, reason);
            }
            tx.commit().await?;
            Ok(found)
        })
    }

    async fn revoke_user_families(&self, user_id: &str, now: Millis, reason: &str) -> Result<u64> {
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            let families = sqlx::query(
                "UPDATE refresh_families SET revoked_at = $2, revoked_reason = $3 \
                 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user_id)
            .bind(now.0)
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL \
                 AND family_id IN (SELECT id FROM refresh_families WHERE user_id = $1)",
            )
            .bind(user_id)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(families)
        })
    }
}

impl Store {
    /// One rotation in its own transaction: the whole decision, including reuse and grace.
    pub(crate) async fn rotate_one(
        &self,
        presented: &TokenHash,
        now: Millis,
        grace_ms: i64,
        next: &NextToken,
    ) -> Result<Rotation> {
        let family_sql = concat!(
            "SELECT ",
            family_columns!(),
            " FROM refresh_families WHERE id = $1"
        );
        with_pool!(self, write, p => {
            let mut tx = p.begin().await?;
            // Lock order (PostgreSQL): the family row first, then its tokens, as every revocation does.
            // Without it PostgreSQL deadlocks (40P01) under concurrent presentations of one family's
            // tokens: a conditional UPDATE that waited on a row and then found it no longer matching
            // still keeps that row locked, so the reuse and grace paths below (and revocations, which
            // update every token of the family in one statement) would take token rows in conflicting
            // orders. SQLite needs no lock: its single writer already serialises rotations, and the
            // statement would cost every refresh a write.
            if self.is_postgres() {
                sqlx::query(
                    "UPDATE refresh_families SET revoked_reason = revoked_reason \
                     WHERE id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
                )
                .bind(presented.as_bytes())
                .execute(&mut *tx)
                .await?;
            }
            // The decision: only a live token of a live family is spent, and only once.
            let spent = sqlx::query_as::<_, (String, String)>(
                "UPDATE refresh_tokens SET spent_at = $2 \
                 WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
                   AND EXISTS (SELECT 1 FROM refresh_families f WHERE f.id = refresh_tokens.family_id \
                               AND f.revoked_at IS NULL AND f.expires_at > $2) \
                 RETURNING id, family_id",
            )
            .bind(presented.as_bytes())
            .bind(now.0)
            .fetch_optional(&mut *tx)
            .await?;

            let (parent_id, family_id) = match spent {
                Some(ids) => ids,
                None => {
                    let state = sqlx::query_as::<_, TokenState>(
                        "SELECT t.id, t.family_id, f.user_id, t.spent_at, t.revoked_at, t.expires_at, \
                                f.revoked_at AS family_revoked_at, f.expires_at AS family_expires_at \
                         FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
                         WHERE t.token_hash = $1",
                    )
                    .bind(presented.as_bytes())
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(state) = state else {
                        return Ok(Rotation::Invalid);
                    };
                    let Some(spent_at) = state.spent_at else {
                        // Revoked or expired, never used: nothing to detect.
                        return Ok(Rotation::Invalid);
                    };
                    let family_live = state.family_revoked_at.is_none() && state.family_expires_at > now.0;
                    let in_grace = grace_ms > 0
                        && now.0.saturating_sub(spent_at) <= grace_ms
                        && state.revoked_at.is_none()
                        && state.expires_at > now.0;
                    if family_live && in_grace {
                        // A retry after a lost response: valid only while the child issued for this
                        // token is still unused, and only once per token. The child is marked spent
                        // as well as revoked ("superseded"), so whoever holds it (the real client,
                        // when the retry was an attacker's replay) is answered as reuse when they
                        // present it, and the family ends, instead of a quiet `invalid` that would
                        // leave the replayer signed in. A second retry of the same token finds the
                        // superseded child and is reuse too.
                        let retried = sqlx::query_scalar::<_, String>(
                            "SELECT id FROM refresh_tokens \
                             WHERE parent_id = $1 AND spent_at IS NOT NULL AND revoked_at IS NOT NULL",
                        )
                        .bind(&state.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let sibling = if retried.is_some() {
                            None
                        } else {
                            sqlx::query_scalar::<_, String>(
                                "UPDATE refresh_tokens SET revoked_at = $2, spent_at = $2 \
                                 WHERE parent_id = $1 AND spent_at IS NULL AND revoked_at IS NULL RETURNING id",
                            )
                            .bind(&state.id)
                            .bind(now.0)
                            .fetch_optional(&mut *tx)
                            .await?
                        };
                        if sibling.is_some() {
                            (state.id, state.family_id)
                        } else {
                            revoke_family!(tx, &state.family_id, now, "reuse");
                            tx.commit().await?;
                            return Ok(Rotation::Reused { family_id: state.family_id, user_id: state.user_id });
                        }
                    } else {
                        revoke_family!(tx, &state.family_id, now, "reuse");
                        tx.commit().await?;
                        return Ok(Rotation::Reused { family_id: state.family_id, user_id: state.user_id });
                    }
                }
            };

            let family = sqlx::query_as::<_, FamilyRow>(family_sql).bind(&family_id).fetch_one(&mut *tx).await?;
            let expires_at = Millis(now.0.saturating_add(next.ttl_ms).min(family.expires_at));
            sqlx::query(
                "INSERT INTO refresh_tokens (id, family_id, parent_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(next.id.as_str())
            .bind(&family_id)
            .bind(&parent_id)
            .bind(next.hash.as_bytes())
            .bind(now.0)
            .bind(expires_at.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Rotation::Rotated { family, expires_at })
        })
    }
}

/// Group commit for SQLite, whose single writer makes every statement a turn in one queue (measured:
/// 57 µs per statement through the driver, 358 µs per single rotation). Concurrent rotations queue
/// here; one task spends a whole batch with one `UPDATE … WHERE token_hash IN (…) RETURNING`, reads
/// their families with one `SELECT` and stores every successor with one multi-row `INSERT`, in one
/// transaction. A row is spent at most once by that UPDATE, so of several requests presenting the same
/// token in one batch only the first gets it; every request whose token was not spent (duplicates,
/// reuse, grace retries, unknown or dead tokens) then takes [`Store::rotate_one`], which decides it
/// exactly as before.
#[derive(Clone, Debug)]
pub(crate) struct RotationQueue {
    tx: tokio::sync::mpsc::Sender<RotateRequest>,
}

#[derive(Debug)]
struct RotateRequest {
    presented: TokenHash,
    now: Millis,
    grace_ms: i64,
    next: NextToken,
    reply: tokio::sync::oneshot::Sender<Result<Rotation>>,
}

/// Most rotations settled by one transaction.
const BATCH: usize = 128;

impl RotationQueue {
    /// `direct` must be a store whose rotations are not queued (it is the queue's own writer).
    pub(crate) fn spawn(direct: Store) -> std::io::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * BATCH);
        crate::spawn_serial("pc-rotations", run_rotations(direct, rx))?;
        Ok(Self { tx })
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        now: Millis,
        grace_ms: i64,
        next: &NextToken,
    ) -> Result<Rotation> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = RotateRequest {
            presented: presented.clone(),
            now,
            grace_ms,
            next: next.clone(),
            reply,
        };
        self.tx.send(request).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

/// Families the queue remembers. A family's row never changes once stored except for its revocation,
/// which the spending `UPDATE` checks itself, so a remembered row is as good as a read. Bounded:
/// when full it starts over (one read per live family to refill it).
const FAMILY_CACHE: usize = 16_384;

async fn run_rotations(store: Store, mut rx: tokio::sync::mpsc::Receiver<RotateRequest>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut families = std::collections::HashMap::with_capacity(1024);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let requests = std::mem::take(&mut batch);
        let spent = match &store.backend {
            Backend::Sqlite { write, .. } => spend_batch(write, &requests, &mut families).await,
            Backend::Postgres(_) => Ok(vec![None; requests.len()]),
        };
        match spent {
            Ok(outcomes) => {
                // Tokens we never issued need no writer: answer them from a reader, so a flood of
                // made-up (well-formed) tokens cannot queue up behind the single-token path.
                let misses: Vec<&TokenHash> = requests
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| o.is_none())
                    .map(|(r, _)| &r.presented)
                    .collect();
                let known = match known_hashes(&store, &misses).await {
                    Ok(known) => known,
                    Err(_) => misses.iter().map(|h| h.as_bytes().to_vec()).collect(),
                };
                for (request, outcome) in requests.into_iter().zip(outcomes) {
                    let answer = match outcome {
                        Some(rotation) => Ok(rotation),
                        None if !known.contains(request.presented.as_bytes()) => {
                            Ok(Rotation::Invalid)
                        }
                        None => {
                            store
                                .rotate_one(
                                    &request.presented,
                                    request.now,
                                    request.grace_ms,
                                    &request.next,
                                )
                                .await
                        }
                    };
                    let _ = request.reply.send(answer);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for request in requests {
                    let _ = request
                        .reply
                        .send(Err(StoreError::Database(sqlx::Error::Protocol(
                            message.clone(),
                        ))));
                }
            }
        }
    }
}

/// Which of `hashes` belong to a stored token (in any state).
async fn known_hashes(
    store: &Store,
    hashes: &[&TokenHash],
) -> Result<std::collections::HashSet<Vec<u8>>> {
    if hashes.is_empty() {
        return Ok(Default::default());
    }
    let Backend::Sqlite { read, .. } = &store.backend else {
        return Ok(hashes.iter().map(|h| h.as_bytes().to_vec()).collect());
    };
    let mut query =
        sqlx::QueryBuilder::new("SELECT token_hash FROM refresh_tokens WHERE token_hash IN (");
    let mut list = query.separated(", ");
    for h in hashes {
        list.push_bind(h.as_bytes().to_vec());
    }
    query.push(")");
    let rows: Vec<(Vec<u8>,)> = query.build_query_as().fetch_all(read).await?;
    Ok(rows.into_iter().map(|(h,)| h).collect())
}

/// Spends every live token of the batch and stores its successor; `None` where the request must be
/// decided on its own.
async fn spend_batch(
    pool: &sqlx::SqlitePool,
    requests: &[RotateRequest],
    known_families: &mut std::collections::HashMap<String, FamilyRow>,
) -> Result<Vec<Option<Rotation>>> {
    let now = requests
        .iter()
        .map(|r| r.now)
        .max()
        .unwrap_or_else(Millis::now);
    let mut tx = pool.begin().await?;
    let mut update = sqlx::QueryBuilder::new("UPDATE refresh_tokens SET spent_at = ");
    update.push_bind(now.0);
    update.push(" WHERE spent_at IS NULL AND revoked_at IS NULL AND expires_at > ");
    update.push_bind(now.0);
    // A correlated EXISTS, one primary-key probe per spent row: as `family_id IN (SELECT …)` SQLite
    // listed every live family on each batch (measured: refresh at a quarter of its rate with 10,000
    // families, and worse with every family more).
    update.push(
        " AND EXISTS (SELECT 1 FROM refresh_families f WHERE f.id = refresh_tokens.family_id \
         AND f.revoked_at IS NULL AND f.expires_at > ",
    );
    update.push_bind(now.0);
    update.push(") AND token_hash IN (");
    let mut hashes = update.separated(", ");
    for r in requests {
        hashes.push_bind(r.presented.as_bytes().to_vec());
    }
    update.push(") RETURNING token_hash, id, family_id");
    let spent: Vec<(Vec<u8>, String, String)> = update.build_query_as().fetch_all(&mut *tx).await?;
    if spent.is_empty() {
        tx.commit().await?;
        return Ok(requests.iter().map(|_| None).collect());
    }

    // Starting over happens before this batch's families are looked up, never while one is in use.
    if known_families.len() + spent.len() > FAMILY_CACHE {
        known_families.clear();
    }
    let unknown: std::collections::BTreeSet<&String> = spent
        .iter()
        .map(|(_, _, family_id)| family_id)
        .filter(|id| !known_families.contains_key(*id))
        .collect();
    if !unknown.is_empty() {
        let mut families_query = sqlx::QueryBuilder::new(concat!(
            "SELECT ",
            family_columns!(),
            " FROM refresh_families WHERE id IN ("
        ));
        let mut ids = families_query.separated(", ");
        for id in unknown {
            ids.push_bind(id.clone());
        }
        families_query.push(")");
        let read: Vec<FamilyRow> = families_query.build_query_as().fetch_all(&mut *tx).await?;
        known_families.extend(read.into_iter().map(|f| (f.id.clone(), f)));
    }
    let families = &*known_families;

    // Each spent row goes to the first request that presented its hash.
    let mut outcomes: Vec<Option<Rotation>> = requests.iter().map(|_| None).collect();
    let mut children = Vec::with_capacity(spent.len());
    for (hash, parent_id, family_id) in &spent {
        let Some(index) = requests
            .iter()
            .position(|r| r.presented.as_bytes() == hash.as_slice())
        else {
            continue;
        };
        let (Some(request), Some(family)) = (requests.get(index), families.get(family_id)) else {
            continue;
        };
        let expires_at = Millis(
            now.0
                .saturating_add(request.next.ttl_ms)
                .min(family.expires_at),
        );
        children.push((request, parent_id, family_id, expires_at));
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(Rotation::Rotated {
                family: family.clone(),
                expires_at,
            });
        }
    }
    if !children.is_empty() {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO refresh_tokens (id, family_id, parent_id, token_hash, created_at, expires_at) ",
        );
        insert.push_values(
            &children,
            |mut row, (request, parent_id, family_id, expires_at)| {
                row.push_bind(request.next.id.as_str().to_owned())
                    .push_bind((*family_id).clone())
                    .push_bind((*parent_id).clone())
                    .push_bind(request.next.hash.as_bytes().to_vec())
                    .push_bind(now.0)
                    .push_bind(expires_at.0);
            },
        );
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}
