//! RFC 8628 device codes: made by `/oauth2/device_authorization`, found by the user code a person
//! types, decided once by that person, and polled by the device until it is redeemed — once. Each
//! decision is one conditional `UPDATE … RETURNING`: two approvals, or two polls of an approved code,
//! cannot both win.

use portcullis_core::clock::Millis;
use portcullis_core::oauth::device::SLOW_DOWN_S;
use portcullis_core::secrets::TokenHash;

use crate::{Result, Store, StoreError, with_pool};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceCodeRow {
    pub device_code_hash: Vec<u8>,
    pub user_code_hash: Vec<u8>,
    pub client_id: String,
    pub scope: String,
    /// Space-separated RFC 8707 resources.
    pub resources: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub interval_s: i64,
    pub last_polled_at: Option<i64>,
    pub polled_fast: i64,
    /// `None` pending, `approved`, `denied`.
    pub decision: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub decided_at: Option<i64>,
    pub redeemed_at: Option<i64>,
}

macro_rules! device_columns {
    () => {
        "device_code_hash, user_code_hash, client_id, scope, resources, created_at, expires_at, interval_s, \
         last_polled_at, polled_fast, decision, user_id, session_id, decided_at, redeemed_at"
    };
}

/// What a device's poll of the token endpoint finds (RFC 8628 §3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// No such code for this client (another client's code is not one: `invalid_grant`).
    Unknown,
    /// `expired_token`.
    Expired,
    /// `slow_down`: polled sooner than the interval, which is now this much.
    SlowDown { interval_s: i64 },
    /// `authorization_pending`.
    Pending,
    /// `access_denied`.
    Denied,
    /// Approved, and this poll redeemed it: issue the tokens.
    Approved(Box<DeviceCodeRow>),
    /// Approved and already redeemed by an earlier poll: `invalid_grant`.
    Redeemed,
}

/// The person's answer on the device page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceDecision<'a> {
    Approve {
        user_id: &'a str,
        session_id: Option<&'a str>,
    },
    Deny,
}

pub trait DeviceCodeStore {
    fn insert_device_code(&self, row: &DeviceCodeRow) -> impl Future<Output = Result<()>> + Send;
    /// The pending, unexpired code a person typed.
    fn pending_device_code(
        &self,
        user_code: &TokenHash,
        now: Millis,
    ) -> impl Future<Output = Result<Option<DeviceCodeRow>>> + Send;
    /// Records the person's decision on a pending, unexpired code; false when there is none (already
    /// decided, expired, or unknown).
    fn decide_device_code(
        &self,
        user_code: &TokenHash,
        decision: DeviceDecision<'_>,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// One poll by `client_id` at `now`.
    fn poll_device_code(
        &self,
        device_code: &TokenHash,
        client_id: &str,
        now: Millis,
    ) -> impl Future<Output = Result<DevicePoll>> + Send;
}

impl DeviceCodeStore for Store {
    async fn insert_device_code(&self, r: &DeviceCodeRow) -> Result<()> {
        let sql = concat!(
            "INSERT INTO oauth_device_codes (",
            device_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        with_pool!(self, write, p => {
            sqlx::query(sql)
                .bind(&r.device_code_hash)
                .bind(&r.user_code_hash)
                .bind(&r.client_id)
                .bind(&r.scope)
                .bind(&r.resources)
                .bind(r.created_at)
                .bind(r.expires_at)
                .bind(r.interval_s)
                .bind(r.last_polled_at)
                .bind(r.polled_fast)
                .bind(&r.decision)
                .bind(&r.user_id)
                .bind(&r.session_id)
                .bind(r.decided_at)
                .bind(r.redeemed_at)
                .execute(p)
                .await
                .map_err(StoreError::unique("oauth_device_codes_user_code_hash_key"))?;
        });
        Ok(())
    }

    async fn pending_device_code(
        &self,
        user_code: &TokenHash,
        now: Millis,
    ) -> Result<Option<DeviceCodeRow>> {
        let sql = concat!(
            "SELECT ",
            device_columns!(),
            " FROM oauth_device_codes WHERE user_code_hash = $1 AND decision IS NULL AND expires_at > $2"
        );
        Ok(
            with_pool!(self, read, p => sqlx::query_as::<_, DeviceCodeRow>(sql)
            .bind(user_code.as_bytes())
            .bind(now.0)
            .fetch_optional(p)
            .await?),
        )
    }

    async fn decide_device_code(
        &self,
        user_code: &TokenHash,
        decision: DeviceDecision<'_>,
        now: Millis,
    ) -> Result<bool> {
        let (word, user, session) = match decision {
            DeviceDecision::Approve {
                user_id,
                session_id,
            } => ("approved", Some(user_id), session_id),
            DeviceDecision::Deny => ("denied", None, None),
        };
        let done = with_pool!(self, write, p => sqlx::query(
            "UPDATE oauth_device_codes SET decision = $2, user_id = $3, session_id = $4, decided_at = $5 \
             WHERE user_code_hash = $1 AND decision IS NULL AND expires_at > $5",
        )
        .bind(user_code.as_bytes())
        .bind(word)
        .bind(user)
        .bind(session)
        .bind(now.0)
        .execute(p)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    async fn poll_device_code(
        &self,
        device_code: &TokenHash,
        client_id: &str,
        now: Millis,
    ) -> Result<DevicePoll> {
        // One statement records the poll and judges its timing (the interval grows by SLOW_DOWN_S
        // only when this poll came too soon), returning the row as it is now.
        let poll = concat!(
            "UPDATE oauth_device_codes SET \
             polled_fast = CASE WHEN last_polled_at IS NOT NULL AND $3 - last_polled_at < interval_s * 1000 THEN 1 ELSE 0 END, \
             interval_s = CASE WHEN last_polled_at IS NOT NULL AND $3 - last_polled_at < interval_s * 1000 THEN interval_s + $4 ELSE interval_s END, \
             last_polled_at = $3 \
             WHERE device_code_hash = $1 AND client_id = $2 RETURNING ",
            device_columns!()
        );
        let row = with_pool!(self, write, p => sqlx::query_as::<_, DeviceCodeRow>(poll)
            .bind(device_code.as_bytes())
            .bind(client_id)
            .bind(now.0)
            .bind(SLOW_DOWN_S)
            .fetch_optional(p)
            .await?);
        let Some(row) = row else {
            return Ok(DevicePoll::Unknown);
        };
        if row.redeemed_at.is_some() {
            return Ok(DevicePoll::Redeemed);
        }
        if row.expires_at <= now.0 {
            return Ok(DevicePoll::Expired);
        }
        if row.polled_fast == 1 {
            return Ok(DevicePoll::SlowDown {
                interval_s: row.interval_s,
            });
        }
        match row.decision.as_deref() {
            None => Ok(DevicePoll::Pending),
            Some("denied") => Ok(DevicePoll::Denied),
            Some(_) => {
                let redeem = concat!(
                    "UPDATE oauth_device_codes SET redeemed_at = $2 \
                     WHERE device_code_hash = $1 AND decision = 'approved' AND redeemed_at IS NULL RETURNING ",
                    device_columns!()
                );
                let won = with_pool!(self, write, p => sqlx::query_as::<_, DeviceCodeRow>(redeem)
                    .bind(device_code.as_bytes())
                    .bind(now.0)
                    .fetch_optional(p)
                    .await?);
                Ok(match won {
                    Some(row) => DevicePoll::Approved(Box::new(row)),
                    None => DevicePoll::Redeemed,
                })
            }
        }
    }
}
