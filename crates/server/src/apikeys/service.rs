//! API keys (API.md "API keys"): create, list, read, change, revoke, roll and verify, for their owners
//! under `/v1/keys` and for administrators under `/admin/v1/keys`.
//!
//! Who may do what (API.md "Who may grant what"):
//! * Administrators (users with role `admin`, keys with scope `admin`) grant any scope, and write
//!   `meta`, which verify returns as the operator's word about a key.
//! * A user's own login (password → token, session) manages that user's keys, granting only
//!   Portcullis's self-service scopes (`keys:read`, `keys:write`) and those the operator lists in
//!   `self_service_scopes`, and writes `owner_meta` (never `meta`). So a fresh account cannot mint
//!   a key that a gateway would take for one its operator issued.
//! * An API key manages its owner's keys only with scope `keys:write` (`keys:read` to list and read),
//!   and only keys whose scopes are a subset of its own; it may grant only scopes it holds itself.
//!   Its limits are part of its grant: whatever it creates, rolls or changes ends no later than it
//!   does, is rate-limited no looser (and shares its rate-limit state), and takes `remaining` out of
//!   its own; it never loosens its own limits.
//! * Scopes `admin` and `keys:verify` are granted only by administrators; Portcullis's own scopes in
//!   another letter case (`Admin`, `keys:Verify`) are refused to everyone, as confusable.
//! * A root key (scope `admin`, no owner) manages the keys that belong to nobody (service keys).
//! * Verifying needs scope `keys:verify` (or an administrator).
//!
//! Another owner's key is answered 404, as if it did not exist.

use std::sync::Arc;

use portcullis_core::apikeys::{ApiKey, VerifyCode, validate_prefix};
use portcullis_core::clock::Millis;
use portcullis_core::ids::{KeyId, UserId};
use portcullis_core::page;
use portcullis_core::principal::Principal;
use portcullis_core::scopes::{
    RESERVED as RESERVED_SCOPES, SELF_SERVICE as SELF_SERVICE_SCOPES, Scope, Scopes,
    confusable_with,
};
use portcullis_core::secrets::TokenHash;
use portcullis_core::text::MAX_DISPLAY_NAME_CHARS;
use portcullis_store::{
    ApiKeyPatch, ApiKeyRow, ApiKeyStore, KeyOwner, RolledKey, Spend, Store, StoreError,
};
use serde_json::Value;

use super::verify::{KeyCache, KeyCheck};
use crate::audit::{Audit, AuditContext, AuditCounts};
use crate::coalesce::OncePerMinute;
use crate::error::{Error, FieldError, Result};
use crate::invalidation::{Bus, Invalidation};
use crate::ratelimit::Limiter;
use crate::users::Users;

/// The longest rate-limit window a key may have.
pub const MAX_RATELIMIT_DURATION_MS: i64 = 24 * 3600 * 1000;
const MIN_RATELIMIT_DURATION_MS: i64 = 1000;
const MAX_RATELIMIT_LIMIT: i64 = 1_000_000;
const MAX_SCOPES: usize = 64;
const VERIFY_SCOPE: &str = Scope::KEYS_VERIFY;
const WRITE_SCOPE: &str = Scope::KEYS_WRITE;
const READ_SCOPE: &str = Scope::KEYS_READ;

// ---- input rules -------------------------------------------------------------------------------

pub fn check_name(raw: &str, errors: &mut Vec<FieldError>) -> String {
    let name = portcullis_core::text::display_name(raw);
    if name.is_none() {
        errors.push(FieldError::new(
            "name",
            "invalid_name",
            format!(
                "name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters without control, invisible or text-direction characters"
            ),
        ));
    }
    name.unwrap_or(raw.trim()).to_owned()
}

pub fn check_scopes(raw: &[String], errors: &mut Vec<FieldError>) -> Scopes {
    if raw.len() > MAX_SCOPES {
        errors.push(FieldError::new(
            "scopes",
            "too_many",
            format!("a key may hold at most {MAX_SCOPES} scopes"),
        ));
        return Scopes::default();
    }
    // Each scope on its own: joining first would let "a b" pass as two scopes and "" vanish.
    if let Some(bad) = raw.iter().find(|r| Scope::parse(r).is_err()) {
        let message = Scope::parse(bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        errors.push(FieldError::new("scopes", "invalid_scope", message));
        return Scopes::default();
    }
    Scopes::parse_space_separated(&raw.join(" ")).unwrap_or_default()
}

fn check_expiry(raw: &str, now: Millis, errors: &mut Vec<FieldError>) -> Option<Millis> {
    match time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339) {
        Ok(at) => {
            let at = Millis::from_datetime(at);
            if at <= now {
                errors.push(FieldError::new(
                    "expires_at",
                    "in_the_past",
                    "expires_at must be in the future",
                ));
            }
            Some(at)
        }
        Err(_) => {
            errors.push(FieldError::new(
                "expires_at",
                "invalid_datetime",
                "expires_at must be an RFC 3339 date-time, e.g. 2030-01-01T00:00:00Z",
            ));
            None
        }
    }
}

fn check_ratelimit(r: (i64, i64), errors: &mut Vec<FieldError>) -> (i64, i64) {
    let (limit, duration_ms) = r;
    if !(MIN_RATELIMIT_DURATION_MS..=MAX_RATELIMIT_DURATION_MS).contains(&duration_ms) {
        errors.push(FieldError::new(
            "ratelimit.duration_ms",
            "out_of_range",
            format!(
                "ratelimit.duration_ms must be between {MIN_RATELIMIT_DURATION_MS} and {MAX_RATELIMIT_DURATION_MS}"
            ),
        ));
    } else if !(1..=MAX_RATELIMIT_LIMIT.min(duration_ms)).contains(&limit) {
        errors.push(FieldError::new(
            "ratelimit.limit",
            "out_of_range",
            format!(
                "ratelimit.limit must be at least 1 and at most {} (one request per millisecond of the window)",
                MAX_RATELIMIT_LIMIT.min(duration_ms)
            ),
        ));
    }
    (limit, duration_ms)
}

fn check_remaining(n: i64, errors: &mut Vec<FieldError>) -> i64 {
    if n < 0 {
        errors.push(FieldError::new(
            "remaining",
            "negative",
            "remaining must be 0 or more",
        ));
    }
    n
}

fn check_meta(field: &str, meta: &Value, max: usize, errors: &mut Vec<FieldError>) -> String {
    let text = meta.to_string();
    if !meta.is_object() {
        errors.push(FieldError::new(
            field,
            "not_an_object",
            format!("{field} must be a JSON object"),
        ));
    } else if text.len() > max {
        errors.push(FieldError::new(
            field,
            "too_large",
            format!("{field} must be at most {max} bytes of JSON"),
        ));
    }
    text
}

fn key_not_found() -> Error {
    Error::NotFound("no such API key".into())
}

/// Whose keys a filter names (`owner`): `none` for keys of nobody, or a user id; anything else is
/// the field error `code`.
pub fn parse_owner(raw: Option<&str>, code: &'static str) -> Result<Option<Option<UserId>>> {
    match raw {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(u) => UserId::parse(u)
            .map(|u| Some(Some(u)))
            .map_err(|_| Error::field("owner", code, "owner must be a user id (usr_…) or none")),
    }
}

/// The key a path names: an id that is no key's is a key not found, like an unknown one.
pub fn key_id(raw: &str) -> Result<KeyId> {
    KeyId::parse(raw).map_err(|_| key_not_found())
}

/// A key to create, as a request gave it: checked by [`ApiKeys::create`], which names every bad field.
#[derive(Debug, Default)]
pub struct KeyDraft {
    pub name: String,
    pub scopes: Vec<String>,
    /// RFC 3339, in the future.
    pub expires_at: Option<String>,
    /// `(limit, duration_ms)`.
    pub ratelimit: Option<(i64, i64)>,
    pub remaining: Option<i64>,
    pub meta: Option<Value>,
    pub owner_meta: Option<Value>,
    pub prefix: Option<String>,
}

/// Changes to a key: `None` leaves a field alone, `Some(None)` clears a nullable one.
#[derive(Debug, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub meta: Option<Option<Value>>,
    pub owner_meta: Option<Option<Value>>,
    pub expires_at: Option<Option<String>>,
    pub ratelimit: Option<Option<(i64, i64)>>,
    pub remaining: Option<Option<i64>>,
}

/// What [`ApiKeys`] is built from.
pub struct KeySettings {
    /// Prefix of new keys when the request names none.
    pub api_key_prefix: String,
    pub api_key_meta_max_bytes: usize,
    pub api_key_max_grace_s: i64,
    /// Scopes users may put on their own keys besides `keys:read` and `keys:write`.
    pub self_service_scopes: Vec<String>,
    pub cache_ttl: std::time::Duration,
    /// Redis, when several nodes share per-key rate limits.
    pub redis: Option<Arc<portcullis_kv::redis::Redis>>,
}

pub struct ApiKeys {
    pub(super) store: Store,
    pub(super) users: Arc<Users>,
    pub(super) cache: KeyCache,
    /// Per-key rate limits.
    pub(super) limits: Limiter,
    /// `last_used_at`, written at most once a minute per key.
    pub(super) usage: OncePerMinute<KeyId>,
    counts: Arc<AuditCounts>,
    audit: Audit,
    bus: Arc<Bus>,
    settings: KeySettings,
}

/// A page of keys, and the cursor of the next.
pub struct KeyPage {
    pub keys: Vec<ApiKeyRow>,
    pub next_cursor: Option<String>,
}

/// Whose keys a caller manages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manager {
    /// `None`: the keys that belong to nobody (only administrators get here without a user).
    owner: Option<UserId>,
    admin: bool,
}

impl Manager {
    fn owns(&self, row: &ApiKeyRow) -> bool {
        row.owner_id == self.owner
    }

    fn listing(&self) -> KeyOwner<'_> {
        match &self.owner {
            Some(u) => KeyOwner::User(u),
            None => KeyOwner::Nobody,
        }
    }
}

/// The limits of the API key making a request (not an administrator's): whatever it creates, rolls
/// or changes must stay within them.
#[derive(Debug, Clone)]
struct Bounds {
    id: KeyId,
    scopes: Scopes,
    /// When it stops working: its expiry, or the end of its grace period.
    end: Option<Millis>,
    /// `(limit, duration_ms)`.
    rate: Option<(i64, i64)>,
    /// Uses left on its counter.
    remaining: Option<i64>,
    counter_id: KeyId,
    bucket_id: KeyId,
}

fn beyond(message: String) -> Error {
    Error::Forbidden("limit_exceeded", message)
}

impl Bounds {
    /// No later than this key's own end.
    fn check_end(&self, end: Option<Millis>) -> Result<()> {
        match (self.end, end) {
            (Some(own), None) => Err(beyond(format!(
                "this API key stops working at {}; a key it makes or changes must expire by then",
                own.rfc3339()
            ))),
            (Some(own), Some(e)) if e > own => Err(beyond(format!(
                "expires_at may be at most {}, when this API key itself stops working",
                own.rfc3339()
            ))),
            _ => Ok(()),
        }
    }

    /// No burst larger and no rate faster than this key's own.
    fn check_rate(&self, rate: Option<(i64, i64)>) -> Result<()> {
        match (self.rate, rate) {
            (Some((l, d)), None) => Err(beyond(format!(
                "this API key is limited to {l} requests per {d} ms; a key it makes or changes must be limited as strictly"
            ))),
            (Some((l, d)), Some((rl, rd)))
                if rl > l || i128::from(rl) * i128::from(d) > i128::from(l) * i128::from(rd) =>
            {
                Err(beyond(format!(
                    "ratelimit may be at most {l} requests per {d} ms (and no faster), this API key's own"
                )))
            }
            _ => Ok(()),
        }
    }

    /// No more uses than this key has left.
    fn check_remaining(&self, remaining: Option<i64>) -> Result<()> {
        match (self.remaining, remaining) {
            (Some(own), None) => Err(beyond(format!(
                "this API key has {own} uses left; a key it makes or changes must have at most as many (set remaining)"
            ))),
            (Some(own), Some(r)) if r > own => Err(beyond(format!(
                "remaining may be at most {own}, the uses this API key has left"
            ))),
            _ => Ok(()),
        }
    }

    /// A key the caller may change: itself, or one whose scopes are a subset of its own.
    fn check_target(&self, row: &ApiKeyRow) -> Result<()> {
        if row.id == self.id {
            return Ok(());
        }
        match row.scopes.iter().find(|s| !self.scopes.contains(s)) {
            Some(s) => Err(Error::Forbidden(
                "insufficient_scope",
                format!(
                    "this API key may change only keys whose scopes it holds itself, and it lacks {s}"
                ),
            )),
            None => Ok(()),
        }
    }

    /// `row`'s settings as they are, within these bounds (rolling copies them).
    fn check_within(&self, row: &ApiKeyRow) -> Result<()> {
        self.check_end(end_of(row))?;
        self.check_rate(rate_of(row))?;
        self.check_remaining(row.remaining)
    }
}

fn end_of(row: &ApiKeyRow) -> Option<Millis> {
    match (row.expires_at, row.grace_until) {
        (Some(e), Some(g)) => Some(e.min(g)),
        (e, g) => e.or(g),
    }
}

fn rate_of(row: &ApiKeyRow) -> Option<(i64, i64)> {
    row.ratelimit_limit.zip(row.ratelimit_duration_ms)
}

impl ApiKeys {
    pub fn new(
        store: Store,
        users: Arc<Users>,
        counts: Arc<AuditCounts>,
        audit: Audit,
        bus: Arc<Bus>,
        settings: KeySettings,
    ) -> Self {
        Self {
            cache: KeyCache::new(settings.cache_ttl),
            // A key's limiter state is forgotten after a day idle: the longest period a key may have.
            limits: Limiter::new(
                settings.redis.as_ref(),
                std::time::Duration::from_millis(MAX_RATELIMIT_DURATION_MS as u64),
                std::time::Duration::from_secs(60),
            ),
            usage: OncePerMinute::default(),
            store,
            users,
            counts,
            audit,
            bus,
            settings,
        }
    }

    /// Drops what `event` makes stale (a change here or on another node).
    pub fn apply(&self, event: &Invalidation) {
        self.cache.apply(event);
    }

    /// This node forgets the keys with these stored hashes at once; the bus tells whoever else
    /// listens.
    fn changed(&self, hashes: &[TokenHash]) {
        for event in Invalidation::of_hashes(hashes, Invalidation::ApiKey) {
            self.apply(&event);
            self.bus.send(event);
        }
    }

    /// Writes the `last_used_at` values gathered since the last flush (once a second).
    pub async fn flush_usage(&self) {
        let used = self.usage.take();
        if !used.is_empty()
            && let Err(e) = self.store.touch_api_keys(&used).await
        {
            tracing::warn!(error = %e, keys = used.len(), "recording API key use failed");
        }
    }

    async fn key_manager(&self, p: &Principal, write: bool) -> Result<Manager> {
        let admin = self.users.is_admin(p).await?;
        let allowed = p.first_party
            || admin
            || p.scopes.contains(WRITE_SCOPE)
            || (!write && p.scopes.contains(READ_SCOPE));
        if !allowed {
            return Err(Error::Forbidden(
                "insufficient_scope",
                format!(
                    "managing API keys needs scope {WRITE_SCOPE} ({READ_SCOPE} to list and read them)"
                ),
            ));
        }
        match &p.user_id {
            Some(u) => Ok(Manager {
                owner: Some(u.clone()),
                admin,
            }),
            None if admin => Ok(Manager { owner: None, admin }),
            None => Err(Error::Forbidden(
                "not_a_user",
                "this credential belongs to no user, so it has no keys to manage".into(),
            )),
        }
    }

    /// The bounds of the API key behind `p`, unless it is an administrator (or not a key).
    async fn bounds(&self, p: &Principal, m: &Manager) -> Result<Option<Bounds>> {
        let (Some(key_id), false) = (&p.key_id, m.admin) else {
            return Ok(None);
        };
        let row = self
            .store
            .api_key_by_id(key_id)
            .await?
            .ok_or(Error::InvalidApiKey)?;
        let remaining = match &row.rolled_to {
            Some(counter) => self
                .store
                .api_key_by_id(counter)
                .await?
                .and_then(|c| c.remaining),
            None => row.remaining,
        };
        Ok(Some(Bounds {
            id: row.id.clone(),
            end: end_of(&row),
            rate: rate_of(&row),
            remaining,
            counter_id: row.counter_id().clone(),
            bucket_id: row.bucket_id().clone(),
            scopes: row.scopes,
        }))
    }

    /// May `p` hand out `scopes`? Look-alikes of Portcullis's own scopes are refused to everyone;
    /// reserved scopes need an administrator; a user's own login grants only self-service scopes; a
    /// key (or any credential that is not the user's own login) only scopes it holds itself.
    pub(crate) fn check_grant(&self, p: &Principal, admin: bool, scopes: &Scopes) -> Result<()> {
        for s in scopes.iter() {
            if let Some(own) = confusable_with(s) {
                return Err(Error::Validation(vec![FieldError::new(
                    "scopes",
                    "confusable_scope",
                    format!(
                        "scope {s} differs from Portcullis's own {own} only in letter case; scopes are case-sensitive, so it is refused"
                    ),
                )]));
            }
            if admin {
                continue;
            }
            if RESERVED_SCOPES.contains(&s) {
                return Err(Error::Forbidden(
                    "insufficient_scope",
                    format!("only administrators may grant scope {s}"),
                ));
            }
            if p.first_party {
                let self_service = SELF_SERVICE_SCOPES.contains(&s)
                    || self.settings.self_service_scopes.iter().any(|x| x == s);
                if !self_service {
                    return Err(Error::Forbidden(
                        "insufficient_scope",
                        format!(
                            "your own keys may carry {} and the scopes the operator lists in self_service_scopes; {s} is granted by administrators",
                            SELF_SERVICE_SCOPES.join(", ")
                        ),
                    ));
                }
            } else if !p.scopes.contains(s) {
                return Err(Error::Forbidden(
                    "insufficient_scope",
                    format!("a key may only grant scopes it holds itself, and this one lacks {s}"),
                ));
            }
        }
        Ok(())
    }

    /// The key `id` if `m` may see it.
    async fn managed_key(&self, m: &Manager, id: &KeyId) -> Result<ApiKeyRow> {
        match self.store.api_key_by_id(id).await? {
            Some(row) if m.owns(&row) => Ok(row),
            _ => Err(key_not_found()),
        }
    }

    fn admin_only_meta(m: &Manager) -> Result<()> {
        if m.admin {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "insufficient_scope",
                "meta is written by administrators only (verify returns it as the operator's word); put your own notes in owner_meta".into(),
            ))
        }
    }

    /// Creates a key for the caller (or, for an administrator without a user, a key of nobody's).
    pub async fn create(
        &self,
        p: &Principal,
        req: KeyDraft,
        ctx: &AuditContext,
    ) -> Result<(ApiKey, ApiKeyRow)> {
        let m = self.key_manager(p, true).await?;
        let now = Millis::now();
        let mut errors = Vec::new();
        let name = check_name(&req.name, &mut errors);
        let scopes = check_scopes(&req.scopes, &mut errors);
        let mut expires_at = req
            .expires_at
            .as_deref()
            .and_then(|e| check_expiry(e, now, &mut errors));
        let mut ratelimit = req.ratelimit.map(|r| check_ratelimit(r, &mut errors));
        let remaining = req.remaining.map(|n| check_remaining(n, &mut errors));
        let max_meta = self.settings.api_key_meta_max_bytes;
        let meta = req
            .meta
            .as_ref()
            .map(|v| check_meta("meta", v, max_meta, &mut errors));
        let owner_meta = req
            .owner_meta
            .as_ref()
            .map(|v| check_meta("owner_meta", v, max_meta, &mut errors));
        let prefix = req
            .prefix
            .unwrap_or_else(|| self.settings.api_key_prefix.clone());
        if validate_prefix(&prefix).is_err() {
            errors.push(FieldError::new(
                "prefix",
                "invalid_prefix",
                "prefix must be 2 to 20 characters of a-z, 0-9 and _, not starting or ending with _, and not pat, prt, pcs or pac (the prefixes of our other tokens)",
            ));
        }
        Error::check(errors)?;
        self.check_grant(p, m.admin, &scopes)?;
        if meta.is_some() {
            Self::admin_only_meta(&m)?;
        }
        // A limited key passes on its limits: what it leaves out, the new key inherits.
        let bounds = self.bounds(p, &m).await?;
        let mut bucket = None;
        if let Some(b) = &bounds {
            expires_at = expires_at.or(b.end);
            ratelimit = ratelimit.or(b.rate);
            b.check_end(expires_at)?;
            b.check_rate(ratelimit)?;
            b.check_remaining(remaining)?;
            if b.rate.is_some() {
                bucket = Some(b.bucket_id.clone());
            }
        }

        let key = ApiKey::generate(&prefix).map_err(Error::internal)?;
        let row = ApiKeyRow {
            id: KeyId::generate(),
            owner_id: m.owner.clone(),
            prefix: key.prefix().to_owned(),
            start: key.start(),
            key_hash: key.hash(),
            name,
            scopes,
            meta,
            owner_meta,
            created_at: now,
            updated_at: now,
            expires_at,
            revoked_at: None,
            remaining,
            ratelimit_limit: ratelimit.map(|r| r.0),
            ratelimit_duration_ms: ratelimit.map(|r| r.1),
            last_used_at: None,
            rolled_to: None,
            grace_until: None,
            ratelimit_bucket: bucket,
        };
        // The new key's uses come out of its maker's: taken (all or nothing) before it exists.
        if let Some(b) = bounds.as_ref().filter(|b| b.remaining.is_some()) {
            let uses = remaining.unwrap_or(0);
            if uses > 0 && self.store.spend_api_key(&b.counter_id, uses).await? == Spend::Exhausted
            {
                return Err(beyond(
                    "this API key no longer has that many uses left".into(),
                ));
            }
        }
        self.store.insert_api_key(&row).await?;
        // Should somebody have presented this exact key before (they cannot have), forget the miss.
        self.changed(&[key.hash()]);
        if let Some(b) = &bounds
            && b.remaining.is_some()
        {
            // The maker's counter changed: its cached row (with `remaining`) is stale.
            self.invalidate_key_id(&b.id).await?;
        }
        self.audit.record(
            "api_key.created",
            Some(&p.subject),
            Some(row.id.as_str()),
            ctx,
            serde_json::json!({ "name": row.name, "scopes": row.scopes.to_string(), "owner_id": row.owner_id, "start": row.start }),
        );
        Ok((key, row))
    }

    /// Drops the cached row of the key `id` (by id: the cache is keyed by hash).
    async fn invalidate_key_id(&self, id: &KeyId) -> Result<()> {
        if let Some(row) = self.store.api_key_by_id(id).await? {
            self.changed(std::slice::from_ref(&row.key_hash));
        }
        Ok(())
    }

    /// Changes one of the caller's keys.
    pub async fn patch(
        &self,
        p: &Principal,
        id: &KeyId,
        req: KeyChanges,
        ctx: &AuditContext,
    ) -> Result<ApiKeyRow> {
        let m = self.key_manager(p, true).await?;
        let current = self.managed_key(&m, id).await?;
        let now = Millis::now();
        let mut errors = Vec::new();
        let max_meta = self.settings.api_key_meta_max_bytes;
        let mut patch = ApiKeyPatch {
            name: req.name.as_deref().map(|n| check_name(n, &mut errors)),
            ..ApiKeyPatch::default()
        };
        let scopes = req.scopes.as_deref().map(|s| check_scopes(s, &mut errors));
        patch.scopes = scopes.clone();
        patch.meta = req
            .meta
            .map(|v| v.map(|v| check_meta("meta", &v, max_meta, &mut errors)));
        patch.owner_meta = req
            .owner_meta
            .map(|v| v.map(|v| check_meta("owner_meta", &v, max_meta, &mut errors)));
        patch.expires_at = req
            .expires_at
            .map(|e| e.and_then(|e| check_expiry(&e, now, &mut errors)));
        patch.remaining = req
            .remaining
            .map(|r| r.map(|r| check_remaining(r, &mut errors)));
        patch.ratelimit = req
            .ratelimit
            .map(|r| r.map(|r| check_ratelimit(r, &mut errors)));
        let nothing = patch.name.is_none()
            && patch.scopes.is_none()
            && patch.meta.is_none()
            && patch.owner_meta.is_none()
            && patch.expires_at.is_none()
            && patch.remaining.is_none()
            && patch.ratelimit.is_none();
        if nothing && errors.is_empty() {
            errors.push(FieldError::new(
                "",
                "empty_patch",
                "name at least one of name, scopes, meta, owner_meta, expires_at, ratelimit, remaining",
            ));
        }
        Error::check(errors)?;
        if let Some(scopes) = &scopes {
            self.check_grant(p, m.admin, scopes)?;
        }
        if patch.meta.is_some() {
            Self::admin_only_meta(&m)?;
        }
        if let Some(b) = self.bounds(p, &m).await? {
            b.check_target(&current)?;
            if let Some(end) = patch.expires_at {
                b.check_end(end)?;
            }
            if let Some(rate) = patch.ratelimit {
                b.check_rate(rate)?;
            }
            // A metered key's uses are only ever taken away: it cannot top up itself or a sibling.
            if let Some(remaining) = patch.remaining
                && b.remaining.is_some()
                && !matches!((current.remaining, remaining), (Some(cur), Some(r)) if r <= cur)
            {
                return Err(beyond(
                    "a metered API key may only lower remaining, never raise or clear it".into(),
                ));
            }
        }
        let Some((row, predecessors)) = self.store.update_api_key(id, &patch, now).await? else {
            return Err(Error::Conflict(
                "key_revoked",
                "this API key is revoked and can no longer be changed".into(),
            ));
        };
        self.changed(std::slice::from_ref(&current.key_hash));
        self.changed(&predecessors);
        let changed: Vec<&str> = [
            ("name", patch.name.is_some()),
            ("scopes", patch.scopes.is_some()),
            ("meta", patch.meta.is_some()),
            ("owner_meta", patch.owner_meta.is_some()),
            ("expires_at", patch.expires_at.is_some()),
            ("remaining", patch.remaining.is_some()),
            ("ratelimit", patch.ratelimit.is_some()),
        ]
        .iter()
        .filter(|(_, c)| *c)
        .map(|(f, _)| *f)
        .collect();
        self.audit.record(
            "api_key.updated",
            Some(&p.subject),
            Some(row.id.as_str()),
            ctx,
            serde_json::json!({ "fields": changed }),
        );
        Ok(row)
    }

    async fn revoke_row(&self, p: &Principal, row: &ApiKeyRow, ctx: &AuditContext) -> Result<()> {
        let hashes = self.store.revoke_api_key(&row.id, Millis::now()).await?;
        self.changed(&hashes);
        // Also when it was revoked already (nothing changed): the cached row may be older.
        self.changed(std::slice::from_ref(&row.key_hash));
        if !hashes.is_empty() {
            self.audit.record(
                "api_key.revoked",
                Some(&p.subject),
                Some(row.id.as_str()),
                ctx,
                serde_json::json!({ "keys": hashes.len() }),
            );
        }
        Ok(())
    }

    /// Revokes one of the caller's keys (the API and the account page's button).
    pub async fn revoke(&self, p: &Principal, id: &KeyId, ctx: &AuditContext) -> Result<()> {
        let m = self.key_manager(p, true).await?;
        let row = self.managed_key(&m, id).await?;
        if let Some(b) = self.bounds(p, &m).await? {
            b.check_target(&row)?;
        }
        self.revoke_row(p, &row, ctx).await
    }

    /// Replaces one of the caller's keys with a new one with the same settings; the old one works
    /// for `grace_period_s` (default 0) more.
    pub async fn roll(
        &self,
        p: &Principal,
        id: &KeyId,
        grace_period_s: Option<i64>,
        ctx: &AuditContext,
    ) -> Result<(ApiKey, ApiKeyRow, Millis)> {
        let m = self.key_manager(p, true).await?;
        let old = self.managed_key(&m, id).await?;
        let grace = grace_period_s.unwrap_or(0);
        if !(0..=self.settings.api_key_max_grace_s).contains(&grace) {
            return Err(Error::Validation(vec![FieldError::new(
                "grace_period_s",
                "out_of_range",
                format!(
                    "grace_period_s must be between 0 and {}",
                    self.settings.api_key_max_grace_s
                ),
            )]));
        }
        // Rolling hands the caller a key with the old key's scopes and limits. For a user's own
        // login it replaces a key they hold already (only reserved scopes need an administrator);
        // for a key it is a grant like any other.
        let scopes = &old.scopes;
        if p.first_party && !m.admin {
            if let Some(s) = scopes.iter().find(|s| RESERVED_SCOPES.contains(s)) {
                return Err(Error::Forbidden(
                    "insufficient_scope",
                    format!("only administrators may grant scope {s}"),
                ));
            }
        } else {
            self.check_grant(p, m.admin, scopes)?;
        }
        if let Some(b) = self.bounds(p, &m).await? {
            b.check_target(&old)?;
            b.check_within(&old)?;
        }
        let now = Millis::now();
        let grace_until = now.plus_secs(grace);
        let key = ApiKey::generate(&old.prefix).map_err(Error::internal)?;
        let new = RolledKey {
            id: KeyId::generate(),
            start: key.start(),
            key_hash: key.hash(),
        };
        let (row, changed) = match self
            .store
            .roll_api_key(&old.id, &new, grace_until, now)
            .await
        {
            Ok(done) => done,
            Err(StoreError::NotFound) => {
                return Err(Error::Conflict(
                    "key_not_rollable",
                    "this API key is revoked or was already rolled; roll its newest key instead"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.changed(&changed);
        self.audit.record(
            "api_key.rolled",
            Some(&p.subject),
            Some(old.id.as_str()),
            ctx,
            serde_json::json!({ "new_key_id": row.id, "grace_until": grace_until.rfc3339() }),
        );
        Ok((key, row, grace_until))
    }

    /// One of the caller's keys.
    pub async fn get(&self, p: &Principal, id: &KeyId) -> Result<ApiKeyRow> {
        let m = self.key_manager(p, false).await?;
        self.managed_key(&m, id).await
    }

    /// The caller's keys, a page.
    pub async fn list(&self, p: &Principal, cursor: Option<&KeyId>, limit: u32) -> Result<KeyPage> {
        let m = self.key_manager(p, false).await?;
        self.page(m.listing(), cursor, limit).await
    }

    /// Every key, or every key of `owner` (`Some(None)`: nobody's), a page (administrators).
    pub async fn list_all(
        &self,
        owner: Option<Option<&UserId>>,
        cursor: Option<&KeyId>,
        limit: u32,
    ) -> Result<KeyPage> {
        let owner = match owner {
            None => KeyOwner::All,
            Some(None) => KeyOwner::Nobody,
            Some(Some(u)) => KeyOwner::User(u),
        };
        self.page(owner, cursor, limit).await
    }

    /// Any key (administrators).
    pub async fn get_any(&self, id: &KeyId) -> Result<ApiKeyRow> {
        self.store
            .api_key_by_id(id)
            .await?
            .ok_or_else(key_not_found)
    }

    /// Revokes any key (administrators).
    pub async fn revoke_any(&self, p: &Principal, id: &KeyId, ctx: &AuditContext) -> Result<()> {
        let row = self.get_any(id).await?;
        self.revoke_row(p, &row, ctx).await
    }

    async fn page(
        &self,
        owner: KeyOwner<'_>,
        cursor: Option<&KeyId>,
        limit: u32,
    ) -> Result<KeyPage> {
        let mut rows = self
            .store
            .list_api_keys(owner, cursor, i64::from(page::fetch(limit)))
            .await?;
        let next_cursor = page::cut(&mut rows, limit, |r| r.id.to_string());
        Ok(KeyPage {
            keys: rows,
            next_cursor,
        })
    }

    /// Verifies a key for a service holding `keys:verify` (API.md "verify"): the whole order, with
    /// `required_scopes` and, when given, `owner` (`none` or a user id). Failures are counted for the
    /// audit log, one event per caller and code per interval.
    pub async fn verify(
        &self,
        p: &Principal,
        raw: &str,
        required_scopes: &[String],
        owner: Option<&str>,
    ) -> Result<KeyCheck> {
        if !(p.scopes.contains(VERIFY_SCOPE) || self.users.is_admin(p).await?) {
            return Err(Error::Forbidden(
                "insufficient_scope",
                format!("verifying keys needs scope {VERIFY_SCOPE}"),
            ));
        }
        let mut required = Vec::new();
        for s in required_scopes {
            required
                .push(Scope::parse(s).map_err(|e| {
                    Error::field("required_scopes", "invalid_scope", e.to_string())
                })?);
        }
        let owner = parse_owner(owner, "invalid_owner")?;
        let check = self
            .check(raw, &required, owner.as_ref().map(Option::as_ref))
            .await?;
        let code = check.code;
        metrics::counter!("portcullis_api_key_verifications_total", "code" => code.as_str())
            .increment(1);
        if code != VerifyCode::Valid {
            self.counts
                .verify_failed(&p.subject, code, check.row.as_ref().map(|r| r.id.as_str()));
        }
        Ok(check)
    }
}
