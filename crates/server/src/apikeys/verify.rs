//! The verify order of API keys (API.md "API keys"), shared by `/v1/keys/verify` and by every request
//! a key authenticates: format → exists (and its owner, when asked) → revoked (or its owner disabled)
//! → expired → scopes → remaining → rate limit. The first that fails is the answer.
//!
//! Format and checksum come first, so a made-up key costs no lookup at all. A key in use is served
//! from memory (misses too); only a key with `remaining` set costs a store write (one conditional
//! UPDATE).

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use portcullis_core::apikeys::{ApiKey, VerifyCode, lifetime_code};
use portcullis_core::clock::Millis;
use portcullis_core::ids::UserId;
use portcullis_core::ratelimit::{RateDecision, RatePolicy};
use portcullis_core::scopes::Scope;
use portcullis_core::secrets::TokenHash;
use portcullis_store::{ApiKeyRow, ApiKeyStore, Spend};

use super::service::ApiKeys;
use crate::error::Result;
use crate::invalidation::Invalidation;
use crate::ratelimit::RateLimiter;

/// Looked-up keys by hash, and well-formed keys that do not exist, so that guessing costs no store
/// reads. (Safe to cache a miss: a new key has 196 random bits, so nobody presents it before it
/// exists.)
pub struct KeyCache {
    rows: Cache<[u8; 32], Arc<ApiKeyRow>>,
    unknown: Cache<[u8; 32], ()>,
}

impl KeyCache {
    /// `ttl`: how long a looked-up key (or a miss) is kept.
    pub fn new(ttl: Duration) -> Self {
        Self {
            rows: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            unknown: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub fn apply(&self, event: &Invalidation) {
        if let Invalidation::ApiKey(hash) = event {
            self.rows.invalidate(hash);
            self.unknown.invalidate(hash);
        }
    }
}

/// The outcome of [`ApiKeys::check`].
#[derive(Debug)]
pub struct KeyCheck {
    pub code: VerifyCode,
    /// The stored key, when it exists.
    pub row: Option<Arc<ApiKeyRow>>,
    /// Uses left after this one (`None`: unlimited).
    pub remaining: Option<i64>,
    /// The key's rate limit and this request's decision, when the key has one and got that far.
    pub ratelimit: Option<(RatePolicy, RateDecision)>,
}

impl ApiKeys {
    /// A stored key by hash: from memory when it was looked up recently (misses too), else the store.
    async fn api_key_row(&self, hash: &TokenHash) -> Result<Option<Arc<ApiKeyRow>>> {
        if let Some(row) = self.cache.rows.get(&hash.0) {
            return Ok(Some(row));
        }
        if self.cache.unknown.contains_key(&hash.0) {
            return Ok(None);
        }
        match self.store.api_key_by_hash(hash).await? {
            Some(row) => {
                let row = Arc::new(row);
                self.cache.rows.insert(hash.0, Arc::clone(&row));
                Ok(Some(row))
            }
            None => {
                self.cache.unknown.insert(hash.0, ());
                Ok(None)
            }
        }
    }

    /// A key that works now (well-formed, known, neither revoked nor expired, its owner active),
    /// spending nothing: what introspection (RFC 7662) reports, which is a look, not a use.
    pub async fn peek(&self, raw: &str) -> Result<Option<Arc<ApiKeyRow>>> {
        let Ok(key) = ApiKey::parse(raw) else {
            return Ok(None);
        };
        let Some(row) = self.api_key_row(&key.hash()).await? else {
            return Ok(None);
        };
        if lifetime_code(
            row.revoked_at,
            row.expires_at,
            row.grace_until,
            Millis::now(),
        )
        .is_some()
            || row.remaining == Some(0) && row.rolled_to.is_none()
        {
            return Ok(None);
        }
        if let Some(owner) = &row.owner_id
            && self.users.active(owner.as_str()).await?.is_none()
        {
            return Ok(None);
        }
        Ok(Some(row))
    }

    /// Every check of an API key, in the documented order: format → exists → revoked (or its owner
    /// disabled) → expired → scopes → remaining → rate limit. The first that fails is the answer.
    ///
    /// Format and checksum come first, so a made-up key costs no lookup at all. A key in use is served
    /// from memory; only a key with `remaining` set costs a store write (one conditional UPDATE). The
    /// rate limit is taken before `remaining` is spent, so a request refused for its rate does not use
    /// up one of the key's uses; a key whose cached `remaining` is already 0 answers USAGE_EXCEEDED
    /// without touching either.
    ///
    /// `owner`: `Some(None)` accepts only keys that belong to no user, `Some(Some(id))` only that
    /// user's; a key of anyone else is NOT_FOUND, as if it did not exist, and nothing is spent.
    pub async fn check(
        &self,
        raw: &str,
        required_scopes: &[Scope],
        owner: Option<Option<&UserId>>,
    ) -> Result<KeyCheck> {
        let mut check = KeyCheck {
            code: VerifyCode::Malformed,
            row: None,
            remaining: None,
            ratelimit: None,
        };
        let Ok(key) = ApiKey::parse(raw) else {
            return Ok(check);
        };
        let Some(row) = self.api_key_row(&key.hash()).await? else {
            check.code = VerifyCode::NotFound;
            return Ok(check);
        };
        if owner.is_some_and(|o| o != row.owner_id.as_ref()) {
            check.code = VerifyCode::NotFound;
            return Ok(check);
        }
        check.row = Some(Arc::clone(&row));
        check.remaining = row.remaining;
        let now = Millis::now();
        if let Some(code) = lifetime_code(row.revoked_at, row.expires_at, row.grace_until, now) {
            check.code = code;
            return Ok(check);
        }
        if let Some(owner) = &row.owner_id
            && self.users.active(owner.as_str()).await?.is_none()
        {
            check.code = VerifyCode::Revoked;
            return Ok(check);
        }
        if !required_scopes
            .iter()
            .all(|s| row.scopes.contains(s.as_str()))
        {
            check.code = VerifyCode::InsufficientScope;
            return Ok(check);
        }
        if row.remaining == Some(0) && row.rolled_to.is_none() {
            check.code = VerifyCode::UsageExceeded;
            return Ok(check);
        }
        if let (Some(limit), Some(period)) = (row.ratelimit_limit, row.ratelimit_duration_ms) {
            let policy = RatePolicy {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                period_ms: u64::try_from(period).unwrap_or(1000),
            };
            let decision = self
                .limits
                .check(&format!("key:{}", row.bucket_id()), policy, 1)
                .await;
            check.ratelimit = Some((policy, decision));
            if !decision.allowed {
                // The cached `remaining` is as of the lookup; USAGE_EXCEEDED comes first in the order,
                // so a metered key refused for its rate asks the store how many uses are left.
                if row.remaining.is_some()
                    && let Some(counter) = self.store.api_key_by_id(row.counter_id()).await?
                {
                    check.remaining = counter.remaining;
                    if counter.remaining == Some(0) {
                        check.code = VerifyCode::UsageExceeded;
                        return Ok(check);
                    }
                }
                check.code = VerifyCode::RateLimited;
                return Ok(check);
            }
        }
        if row.remaining.is_some() {
            match self.store.spend_api_key(row.counter_id(), 1).await? {
                Spend::Spent(left) => check.remaining = left,
                Spend::Exhausted => {
                    check.remaining = Some(0);
                    check.code = VerifyCode::UsageExceeded;
                    return Ok(check);
                }
            }
        }
        self.usage.note(&row.id, now);
        check.code = VerifyCode::Valid;
        Ok(check)
    }
}
