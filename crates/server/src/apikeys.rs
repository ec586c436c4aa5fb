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

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use portcullis_core::apikeys::{ApiKey, VerifyCode, validate_prefix};
use portcullis_core::clock::{Millis, rfc3339};
use portcullis_core::ids::{KeyId, UserId};
use portcullis_core::scopes::{Scope, Scopes};
use portcullis_store::{
    ApiKeyPatch, ApiKeyRow, ApiKeyStore, KeyOwner, RolledKey, Spend, StoreError,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::audit::AuditContext;
use crate::auth::{Admin, Principal};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::extract::{ClientIp, Json, OptionalJson, RequestId};
use crate::invalidation::Invalidation;
use crate::state::AppState;
use crate::users::audit_context;

/// The longest rate-limit window a key may have.
pub const MAX_RATELIMIT_DURATION_MS: i64 = 24 * 3600 * 1000;
const MIN_RATELIMIT_DURATION_MS: i64 = 1000;
const MAX_RATELIMIT_LIMIT: i64 = 1_000_000;
const MAX_SCOPES: usize = 64;
const MAX_NAME_CHARS: usize = 200;
/// Scopes only administrators may grant.
const RESERVED_SCOPES: &[&str] = &[Scope::ADMIN, VERIFY_SCOPE];
/// Scopes a user may always grant their own keys.
const SELF_SERVICE_SCOPES: &[&str] = &[READ_SCOPE, WRITE_SCOPE];
/// Portcullis's own scopes: no other scope may equal one of them in another letter case.
const OWN_SCOPES: &[&str] = &[Scope::ADMIN, VERIFY_SCOPE, READ_SCOPE, WRITE_SCOPE];
const VERIFY_SCOPE: &str = "keys:verify";
const WRITE_SCOPE: &str = "keys:write";
const READ_SCOPE: &str = "keys:read";

/// Portcullis's own scope this one imitates in another letter case (`Admin`, `KEYS:VERIFY`).
fn confusable_with(scope: &str) -> Option<&'static str> {
    OWN_SCOPES
        .iter()
        .find(|own| **own != scope && own.eq_ignore_ascii_case(scope))
        .copied()
}

/// Scopes nobody may list in `self_service_scopes`: the administrators' own, and look-alikes of
/// Portcullis's scopes.
pub fn is_reserved_scope(scope: &str) -> bool {
    RESERVED_SCOPES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(scope))
        || confusable_with(scope).is_some()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatelimitSettings {
    /// Requests allowed per window (bursts up to this many).
    limit: i64,
    /// The window, in milliseconds (1 000 to 86 400 000).
    duration_ms: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    name: String,
    scopes: Option<Vec<String>>,
    /// RFC 3339, in the future.
    expires_at: Option<String>,
    ratelimit: Option<RatelimitSettings>,
    /// Uses allowed; each successful verification (or request made with the key) spends one.
    remaining: Option<i64>,
    /// A JSON object returned by verify as the operator's word: administrators only.
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
    /// A JSON object of the owner's own notes, returned by verify apart from `meta`.
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Value>,
    /// `[a-z0-9_]{2,20}`; the server's default (`pk_live`) when left out.
    prefix: Option<String>,
}

/// `null` clears a field; leaving a field out leaves it alone.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchKeyRequest {
    name: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    meta: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<RatelimitSettings>)]
    ratelimit: Option<Option<RatelimitSettings>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    remaining: Option<Option<i64>>,
}

/// Tells "absent" (`None`, by `#[serde(default)]`) from "null" (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RollRequest {
    /// How long the old key keeps working (seconds, default 0: it stops at once).
    grace_period_s: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    key: String,
    /// Scopes the key must hold, all of them.
    required_scopes: Option<Vec<String>>,
    /// Accept only keys of this owner: a user id (`usr_…`), or `none` for keys that belong to no
    /// user (the ones administrators issue). A key of anyone else answers NOT_FOUND.
    owner: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AdminListQuery {
    /// Only this user's keys; `none` for keys that belong to nobody.
    owner: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    id: String,
    /// The first 12 characters of the key, for display.
    start: String,
    name: String,
    scopes: Vec<String>,
    /// Written by administrators.
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
    /// Written by the key's owner.
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Value>,
    /// `null` for keys that belong to no user.
    owner_id: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: Millis,
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: Millis,
    #[serde(with = "rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_used_at: Option<Millis>,
    #[serde(with = "rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Millis>,
    #[serde(with = "rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    revoked_at: Option<Millis>,
    remaining: Option<i64>,
    ratelimit: Option<RatelimitSettings>,
    /// Set once the key was rolled: the id of its successor.
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_to: Option<String>,
    /// When a rolled key stops working.
    #[serde(
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    grace_until: Option<Millis>,
}

impl From<&ApiKeyRow> for KeyView {
    fn from(r: &ApiKeyRow) -> Self {
        Self {
            id: r.id.clone(),
            start: r.start.clone(),
            name: r.name.clone(),
            scopes: split_scopes(&r.scopes),
            meta: parse_meta(r.meta.as_deref()),
            owner_meta: parse_meta(r.owner_meta.as_deref()),
            owner_id: r.owner_id.clone(),
            created_at: Millis(r.created_at),
            updated_at: Millis(r.updated_at),
            last_used_at: r.last_used_at.map(Millis),
            expires_at: r.expires_at.map(Millis),
            revoked_at: r.revoked_at.map(Millis),
            remaining: r.remaining,
            ratelimit: ratelimit_of(r),
            rolled_to: r.rolled_to.clone(),
            grace_until: r.grace_until.map(Millis),
        }
    }
}

/// A new key: the secret, shown only in this response, and its settings.
#[derive(Serialize, ToSchema)]
pub struct CreatedKeyView {
    /// The key itself. Store it now: it is never shown again.
    key: String,
    #[serde(flatten)]
    view: KeyView,
}

#[derive(Serialize, ToSchema)]
pub struct RolledKeyView {
    key: String,
    #[serde(flatten)]
    view: KeyView,
    /// The key this one replaces.
    rolled_from: String,
    /// When the old key stops working.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    old_key_expires_at: Millis,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RatelimitState {
    limit: i64,
    /// Requests still allowed now.
    remaining: i64,
    /// Milliseconds until the full limit is available again.
    reset_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    valid: bool,
    /// One of VALID, MALFORMED, NOT_FOUND, REVOKED, EXPIRED, INSUFFICIENT_SCOPE, USAGE_EXCEEDED,
    /// RATE_LIMITED — the first check that failed, in that order.
    #[schema(value_type = String)]
    code: VerifyCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    /// Always present: the owner's user id, or `null` for a key that belongs to no user (or when no
    /// key was found). A gateway that accepts only its operator's keys checks this, or passes
    /// `owner`.
    owner_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
    /// Written by administrators only: the operator's word about the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    meta: Option<Value>,
    /// Written by the key's owner: never to be taken as the operator's.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    owner_meta: Option<Value>,
    #[serde(
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratelimit: Option<RatelimitState>,
}

fn split_scopes(raw: &str) -> Vec<String> {
    raw.split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_meta(raw: Option<&str>) -> Option<Value> {
    raw.and_then(|m| serde_json::from_str(m).ok())
}

fn ratelimit_of(r: &ApiKeyRow) -> Option<RatelimitSettings> {
    match (r.ratelimit_limit, r.ratelimit_duration_ms) {
        (Some(limit), Some(duration_ms)) => Some(RatelimitSettings { limit, duration_ms }),
        _ => None,
    }
}

// ---- input rules -------------------------------------------------------------------------------

fn check_name(raw: &str, errors: &mut Vec<FieldError>) -> String {
    let name = raw.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name
            .chars()
            .any(portcullis_core::text::is_forbidden_in_display)
    {
        errors.push(FieldError::new(
            "name",
            "invalid_name",
            format!(
                "name must be 1 to {MAX_NAME_CHARS} characters without control, invisible or text-direction characters"
            ),
        ));
    }
    name.to_owned()
}

fn check_scopes(raw: &[String], errors: &mut Vec<FieldError>) -> Scopes {
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

fn check_expiry(raw: &str, now: Millis, errors: &mut Vec<FieldError>) -> Option<i64> {
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
            Some(at.0)
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

fn check_ratelimit(r: RatelimitSettings, errors: &mut Vec<FieldError>) -> (i64, i64) {
    if !(MIN_RATELIMIT_DURATION_MS..=MAX_RATELIMIT_DURATION_MS).contains(&r.duration_ms) {
        errors.push(FieldError::new(
            "ratelimit.duration_ms",
            "out_of_range",
            format!(
                "ratelimit.duration_ms must be between {MIN_RATELIMIT_DURATION_MS} and {MAX_RATELIMIT_DURATION_MS}"
            ),
        ));
    } else if !(1..=MAX_RATELIMIT_LIMIT.min(r.duration_ms)).contains(&r.limit) {
        errors.push(FieldError::new(
            "ratelimit.limit",
            "out_of_range",
            format!(
                "ratelimit.limit must be at least 1 and at most {} (one request per millisecond of the window)",
                MAX_RATELIMIT_LIMIT.min(r.duration_ms)
            ),
        ));
    }
    (r.limit, r.duration_ms)
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

fn validation(errors: Vec<FieldError>) -> ApiResult<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn key_not_found() -> ApiError {
    ApiError::NotFound("no such API key".into())
}

/// Whose keys a caller manages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manager {
    /// `None`: the keys that belong to nobody (only administrators get here without a user).
    owner: Option<String>,
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
    id: String,
    scopes: Scopes,
    /// When it stops working: its expiry, or the end of its grace period.
    end: Option<i64>,
    /// `(limit, duration_ms)`.
    rate: Option<(i64, i64)>,
    /// Uses left on its counter.
    remaining: Option<i64>,
    counter_id: String,
    bucket_id: String,
}

fn beyond(message: String) -> ApiError {
    ApiError::Forbidden("limit_exceeded", message)
}

impl Bounds {
    /// No later than this key's own end.
    fn check_end(&self, end: Option<i64>) -> ApiResult<()> {
        match (self.end, end) {
            (Some(own), None) => Err(beyond(format!(
                "this API key stops working at {}; a key it makes or changes must expire by then",
                Millis(own).rfc3339()
            ))),
            (Some(own), Some(e)) if e > own => Err(beyond(format!(
                "expires_at may be at most {}, when this API key itself stops working",
                Millis(own).rfc3339()
            ))),
            _ => Ok(()),
        }
    }

    /// No burst larger and no rate faster than this key's own.
    fn check_rate(&self, rate: Option<(i64, i64)>) -> ApiResult<()> {
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
    fn check_remaining(&self, remaining: Option<i64>) -> ApiResult<()> {
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
    fn check_target(&self, row: &ApiKeyRow) -> ApiResult<()> {
        if row.id == self.id {
            return Ok(());
        }
        let theirs = Scopes::parse_space_separated(&row.scopes).unwrap_or_default();
        match theirs.iter().find(|s| !self.scopes.contains(s)) {
            Some(s) => Err(ApiError::Forbidden(
                "insufficient_scope",
                format!(
                    "this API key may change only keys whose scopes it holds itself, and it lacks {s}"
                ),
            )),
            None => Ok(()),
        }
    }

    /// `row`'s settings as they are, within these bounds (rolling copies them).
    fn check_within(&self, row: &ApiKeyRow) -> ApiResult<()> {
        self.check_end(end_of(row))?;
        self.check_rate(rate_of(row))?;
        self.check_remaining(row.remaining)
    }
}

fn end_of(row: &ApiKeyRow) -> Option<i64> {
    match (row.expires_at, row.grace_until) {
        (Some(e), Some(g)) => Some(e.min(g)),
        (e, g) => e.or(g),
    }
}

fn rate_of(row: &ApiKeyRow) -> Option<(i64, i64)> {
    row.ratelimit_limit.zip(row.ratelimit_duration_ms)
}

impl AppState {
    async fn key_manager(&self, p: &Principal, write: bool) -> ApiResult<Manager> {
        let admin = self.is_admin(p).await?;
        let allowed = p.first_party
            || admin
            || p.scopes.contains(WRITE_SCOPE)
            || (!write && p.scopes.contains(READ_SCOPE));
        if !allowed {
            return Err(ApiError::Forbidden(
                "insufficient_scope",
                format!(
                    "managing API keys needs scope {WRITE_SCOPE} ({READ_SCOPE} to list and read them)"
                ),
            ));
        }
        match &p.user_id {
            Some(u) => Ok(Manager {
                owner: Some(u.as_str().to_owned()),
                admin,
            }),
            None if admin => Ok(Manager { owner: None, admin }),
            None => Err(ApiError::Forbidden(
                "not_a_user",
                "this credential belongs to no user, so it has no keys to manage".into(),
            )),
        }
    }

    /// The bounds of the API key behind `p`, unless it is an administrator (or not a key).
    async fn bounds(&self, p: &Principal, m: &Manager) -> ApiResult<Option<Bounds>> {
        let (Some(key_id), false) = (&p.key_id, m.admin) else {
            return Ok(None);
        };
        let row = self
            .store
            .api_key_by_id(key_id)
            .await?
            .ok_or(ApiError::InvalidApiKey)?;
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
            scopes: Scopes::parse_space_separated(&row.scopes).unwrap_or_default(),
            end: end_of(&row),
            rate: rate_of(&row),
            remaining,
            counter_id: row.counter_id().to_owned(),
            bucket_id: row.bucket_id().to_owned(),
        }))
    }

    /// May `p` hand out `scopes`? Look-alikes of Portcullis's own scopes are refused to everyone;
    /// reserved scopes need an administrator; a user's own login grants only self-service scopes; a
    /// key (or any credential that is not the user's own login) only scopes it holds itself.
    fn check_grant(&self, p: &Principal, admin: bool, scopes: &Scopes) -> ApiResult<()> {
        for s in scopes.iter() {
            if let Some(own) = confusable_with(s) {
                return Err(ApiError::Validation(vec![FieldError::new(
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
                return Err(ApiError::Forbidden(
                    "insufficient_scope",
                    format!("only administrators may grant scope {s}"),
                ));
            }
            if p.first_party {
                let self_service = SELF_SERVICE_SCOPES.contains(&s)
                    || self.config.self_service_scopes.iter().any(|x| x == s);
                if !self_service {
                    return Err(ApiError::Forbidden(
                        "insufficient_scope",
                        format!(
                            "your own keys may carry {} and the scopes the operator lists in self_service_scopes; {s} is granted by administrators",
                            SELF_SERVICE_SCOPES.join(", ")
                        ),
                    ));
                }
            } else if !p.scopes.contains(s) {
                return Err(ApiError::Forbidden(
                    "insufficient_scope",
                    format!("a key may only grant scopes it holds itself, and this one lacks {s}"),
                ));
            }
        }
        Ok(())
    }

    /// The key `id` if `m` may see it.
    async fn managed_key(&self, m: &Manager, id: &str) -> ApiResult<ApiKeyRow> {
        if KeyId::parse(id).is_err() {
            return Err(key_not_found());
        }
        match self.store.api_key_by_id(id).await? {
            Some(row) if m.owns(&row) => Ok(row),
            _ => Err(key_not_found()),
        }
    }

    fn admin_only_meta(m: &Manager) -> ApiResult<()> {
        if m.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "insufficient_scope",
                "meta is written by administrators only (verify returns it as the operator's word); put your own notes in owner_meta".into(),
            ))
        }
    }

    pub async fn create_key(
        &self,
        p: &Principal,
        req: CreateKeyRequest,
        ctx: &AuditContext,
    ) -> ApiResult<(ApiKey, ApiKeyRow)> {
        let m = self.key_manager(p, true).await?;
        let now = Millis::now();
        let mut errors = Vec::new();
        let name = check_name(&req.name, &mut errors);
        let scopes = check_scopes(req.scopes.as_deref().unwrap_or_default(), &mut errors);
        let mut expires_at = req
            .expires_at
            .as_deref()
            .and_then(|e| check_expiry(e, now, &mut errors));
        let mut ratelimit = req.ratelimit.map(|r| check_ratelimit(r, &mut errors));
        let remaining = req.remaining.map(|n| check_remaining(n, &mut errors));
        let max_meta = self.config.api_key_meta_max_bytes;
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
            .unwrap_or_else(|| self.config.api_key_prefix.clone());
        if validate_prefix(&prefix).is_err() {
            errors.push(FieldError::new(
                "prefix",
                "invalid_prefix",
                "prefix must be 2 to 20 characters of a-z, 0-9 and _, not starting or ending with _",
            ));
        }
        validation(errors)?;
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

        let key = ApiKey::generate(&prefix).map_err(ApiError::internal)?;
        let row = ApiKeyRow {
            id: KeyId::generate().to_string(),
            owner_id: m.owner.clone(),
            prefix: key.prefix().to_owned(),
            start: key.start(),
            key_hash: key.hash().0.to_vec(),
            name,
            scopes: scopes.to_string(),
            meta,
            owner_meta,
            created_at: now.0,
            updated_at: now.0,
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
        self.invalidate(Invalidation::ApiKey(key.hash().0));
        if let Some(b) = &bounds
            && b.remaining.is_some()
        {
            // The maker's counter changed: its cached row (with `remaining`) is stale.
            self.invalidate_key_id(&b.id).await?;
        }
        self.audit.record(
            "api_key.created",
            Some(&p.subject),
            Some(&row.id),
            ctx,
            serde_json::json!({ "name": row.name, "scopes": row.scopes, "owner_id": row.owner_id, "start": row.start }),
        );
        Ok((key, row))
    }

    /// Drops the cached row of the key `id` (by id: the cache is keyed by hash).
    async fn invalidate_key_id(&self, id: &str) -> ApiResult<()> {
        if let Some(row) = self.store.api_key_by_id(id).await? {
            self.invalidate_hashes(std::slice::from_ref(&row.key_hash), Invalidation::ApiKey);
        }
        Ok(())
    }

    pub async fn patch_key(
        &self,
        p: &Principal,
        id: &str,
        req: PatchKeyRequest,
        ctx: &AuditContext,
    ) -> ApiResult<ApiKeyRow> {
        let m = self.key_manager(p, true).await?;
        let current = self.managed_key(&m, id).await?;
        let now = Millis::now();
        let mut errors = Vec::new();
        let max_meta = self.config.api_key_meta_max_bytes;
        let mut patch = ApiKeyPatch {
            name: req.name.as_deref().map(|n| check_name(n, &mut errors)),
            ..ApiKeyPatch::default()
        };
        let scopes = req.scopes.as_deref().map(|s| check_scopes(s, &mut errors));
        patch.scopes = scopes.as_ref().map(Scopes::to_string);
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
        validation(errors)?;
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
        let Some((row, predecessors)) = self.store.update_api_key(id, &patch, now.0).await? else {
            return Err(ApiError::Conflict(
                "key_revoked",
                "this API key is revoked and can no longer be changed".into(),
            ));
        };
        self.invalidate_hashes(
            std::slice::from_ref(&current.key_hash),
            Invalidation::ApiKey,
        );
        self.invalidate_hashes(&predecessors, Invalidation::ApiKey);
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
            Some(&row.id),
            ctx,
            serde_json::json!({ "fields": changed }),
        );
        Ok(row)
    }

    async fn revoke_row(
        &self,
        p: &Principal,
        row: &ApiKeyRow,
        ctx: &AuditContext,
    ) -> ApiResult<()> {
        let hashes = self.store.revoke_api_key(&row.id, Millis::now().0).await?;
        self.invalidate_hashes(&hashes, Invalidation::ApiKey);
        // Also when it was revoked already (nothing changed): the cached row may be older.
        self.invalidate_hashes(std::slice::from_ref(&row.key_hash), Invalidation::ApiKey);
        if !hashes.is_empty() {
            self.audit.record(
                "api_key.revoked",
                Some(&p.subject),
                Some(&row.id),
                ctx,
                serde_json::json!({ "keys": hashes.len() }),
            );
        }
        Ok(())
    }

    /// Revokes one of the caller's keys (the API and the account page's button).
    pub(crate) async fn revoke_own_key(
        &self,
        p: &Principal,
        id: &str,
        ctx: &AuditContext,
    ) -> ApiResult<()> {
        let m = self.key_manager(p, true).await?;
        let row = self.managed_key(&m, id).await?;
        if let Some(b) = self.bounds(p, &m).await? {
            b.check_target(&row)?;
        }
        self.revoke_row(p, &row, ctx).await
    }

    pub async fn roll_key(
        &self,
        p: &Principal,
        id: &str,
        req: RollRequest,
        ctx: &AuditContext,
    ) -> ApiResult<(ApiKey, ApiKeyRow, Millis)> {
        let m = self.key_manager(p, true).await?;
        let old = self.managed_key(&m, id).await?;
        let grace = req.grace_period_s.unwrap_or(0);
        if !(0..=self.config.api_key_max_grace_s).contains(&grace) {
            return Err(ApiError::Validation(vec![FieldError::new(
                "grace_period_s",
                "out_of_range",
                format!(
                    "grace_period_s must be between 0 and {}",
                    self.config.api_key_max_grace_s
                ),
            )]));
        }
        // Rolling hands the caller a key with the old key's scopes and limits. For a user's own
        // login it replaces a key they hold already (only reserved scopes need an administrator);
        // for a key it is a grant like any other.
        let scopes = Scopes::parse_space_separated(&old.scopes).unwrap_or_default();
        if p.first_party && !m.admin {
            if let Some(s) = scopes.iter().find(|s| RESERVED_SCOPES.contains(s)) {
                return Err(ApiError::Forbidden(
                    "insufficient_scope",
                    format!("only administrators may grant scope {s}"),
                ));
            }
        } else {
            self.check_grant(p, m.admin, &scopes)?;
        }
        if let Some(b) = self.bounds(p, &m).await? {
            b.check_target(&old)?;
            b.check_within(&old)?;
        }
        let now = Millis::now();
        let grace_until = now.plus_secs(grace);
        let key = ApiKey::generate(&old.prefix).map_err(ApiError::internal)?;
        let new = RolledKey {
            id: KeyId::generate().to_string(),
            start: key.start(),
            key_hash: key.hash().0.to_vec(),
        };
        let (row, changed) = match self
            .store
            .roll_api_key(&old.id, &new, grace_until.0, now.0)
            .await
        {
            Ok(done) => done,
            Err(StoreError::NotFound) => {
                return Err(ApiError::Conflict(
                    "key_not_rollable",
                    "this API key is revoked or was already rolled; roll its newest key instead"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.invalidate_hashes(&changed, Invalidation::ApiKey);
        self.audit.record(
            "api_key.rolled",
            Some(&p.subject),
            Some(&old.id),
            ctx,
            serde_json::json!({ "new_key_id": row.id, "grace_until": grace_until.rfc3339() }),
        );
        Ok((key, row, grace_until))
    }

    /// The caller's keys, first page (the account page).
    pub(crate) async fn own_keys(&self, p: &Principal) -> ApiResult<Vec<KeyView>> {
        let m = self.key_manager(p, false).await?;
        Ok(self.list_keys(m.listing(), None, None).await?.keys)
    }

    async fn list_keys(
        &self,
        owner: KeyOwner<'_>,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> ApiResult<KeyList> {
        let max = self.config.max_page_size;
        let limit = limit.unwrap_or(max);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::Validation(vec![FieldError::new(
                "limit",
                "out_of_range",
                format!("limit must be between 1 and {max}"),
            )]));
        }
        if let Some(c) = &cursor
            && KeyId::parse(c).is_err()
        {
            return Err(ApiError::Validation(vec![FieldError::new(
                "cursor",
                "invalid_cursor",
                "cursor must be the next_cursor of a previous page",
            )]));
        }
        let mut rows = self
            .store
            .list_api_keys(owner, cursor.as_deref(), i64::from(limit) + 1)
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(KeyList {
            keys: rows.iter().map(KeyView::from).collect(),
            next_cursor,
        })
    }

    pub async fn verify_key(&self, p: &Principal, req: VerifyRequest) -> ApiResult<VerifyResponse> {
        if !(p.scopes.contains(VERIFY_SCOPE) || self.is_admin(p).await?) {
            return Err(ApiError::Forbidden(
                "insufficient_scope",
                format!("verifying keys needs scope {VERIFY_SCOPE}"),
            ));
        }
        let mut required = Vec::new();
        if let Some(list) = &req.required_scopes {
            for s in list {
                required.push(Scope::parse(s).map_err(|e| {
                    ApiError::Validation(vec![FieldError::new(
                        "required_scopes",
                        "invalid_scope",
                        e.to_string(),
                    )])
                })?);
            }
        }
        let owner = match req.owner.as_deref() {
            None => None,
            Some("none") => Some(None),
            Some(u) if UserId::parse(u).is_ok() => Some(Some(u)),
            Some(_) => {
                return Err(ApiError::Validation(vec![FieldError::new(
                    "owner",
                    "invalid_owner",
                    "owner must be a user id (usr_…) or none",
                )]));
            }
        };
        let check = self.check_api_key(&req.key, &required, owner).await?;
        let code = check.code;
        metrics::counter!("portcullis_api_key_verifications_total", "code" => code.as_str())
            .increment(1);
        if code != VerifyCode::Valid {
            self.audit_counts.verify_failed(
                &p.subject,
                code,
                check.row.as_ref().map(|r| r.id.as_str()),
            );
        }
        let mut res = VerifyResponse {
            valid: code == VerifyCode::Valid,
            code,
            key_id: None,
            owner_id: None,
            name: None,
            scopes: None,
            meta: None,
            owner_meta: None,
            expires_at: None,
            remaining: None,
            ratelimit: None,
        };
        if let Some(row) = &check.row {
            res.key_id = Some(row.id.clone());
            res.owner_id = row.owner_id.clone();
            res.name = Some(row.name.clone());
            res.scopes = Some(split_scopes(&row.scopes));
            res.meta = parse_meta(row.meta.as_deref());
            res.owner_meta = parse_meta(row.owner_meta.as_deref());
            res.expires_at = row.expires_at.map(Millis);
            res.remaining = check.remaining;
            res.ratelimit = check.ratelimit.map(|(policy, d)| RatelimitState {
                limit: i64::from(policy.limit),
                remaining: i64::from(d.remaining),
                reset_ms: i64::try_from(d.reset_ms).unwrap_or(i64::MAX),
            });
        }
        Ok(res)
    }
}

/// Create a key. The key is in this response only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKeyView), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
    Json(req): Json<CreateKeyRequest>,
) -> ApiResult<impl IntoResponse> {
    let (key, row) = state.create_key(&p, req, &audit_context(&ip, &rid)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKeyView {
            key: key.expose().to_owned(),
            view: KeyView::from(&row),
        }),
    ))
}

/// The caller's keys, oldest first.
#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(ListQuery),
    responses((status = 200, body = KeyList), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<KeyList>> {
    let m = state.key_manager(&p, false).await?;
    Ok(axum::Json(
        state.list_keys(m.listing(), q.cursor, q.limit).await?,
    ))
}

/// One of the caller's keys.
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys",
    responses((status = 200, body = KeyView), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<KeyView>> {
    let m = state.key_manager(&p, false).await?;
    let row = state.managed_key(&m, &id).await?;
    Ok(axum::Json(KeyView::from(&row)))
}

/// Change a key's name, scopes, meta, expiry, rate limit or remaining uses.
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", request_body = PatchKeyRequest,
    responses((status = 200, body = KeyView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
    Json(req): Json<PatchKeyRequest>,
) -> ApiResult<axum::Json<KeyView>> {
    let row = state
        .patch_key(&p, &id, req, &audit_context(&ip, &rid))
        .await?;
    Ok(axum::Json(KeyView::from(&row)))
}

/// Revoke a key (and any older key still in the grace period of a roll into it).
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    responses((status = 204), (status = 404, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .revoke_own_key(&p, &id, &audit_context(&ip, &rid))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a key with a new one with the same settings; the old one works until the grace period ends.
#[utoipa::path(post, path = "/v1/keys/{id}/roll", tag = "keys", request_body(content = RollRequest, description = "optional"),
    responses((status = 201, body = RolledKeyView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn roll(
    State(state): State<AppState>,
    p: Principal,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<RollRequest>,
) -> ApiResult<impl IntoResponse> {
    let (key, row, grace_until) = state
        .roll_key(&p, &id, req, &audit_context(&ip, &rid))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(RolledKeyView {
            key: key.expose().to_owned(),
            view: KeyView::from(&row),
            rolled_from: id,
            old_key_expires_at: grace_until,
        }),
    ))
}

/// Verify a key (for services holding scope `keys:verify`). Always 200: `valid` and `code` say how it
/// went. Checks run in this order: format → exists → revoked → expired → scopes → remaining → rate
/// limit; a valid key with `remaining` set spends one use.
#[utoipa::path(post, path = "/v1/keys/verify", tag = "keys", request_body = VerifyRequest,
    responses((status = 200, body = VerifyResponse), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<VerifyRequest>,
) -> ApiResult<axum::Json<VerifyResponse>> {
    Ok(axum::Json(state.verify_key(&p, req).await?))
}

/// Every key (administrators).
#[utoipa::path(get, path = "/admin/v1/keys", tag = "admin", params(AdminListQuery),
    responses((status = 200, body = KeyList), (status = 403, body = Problem)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: Admin,
    Query(q): Query<AdminListQuery>,
) -> ApiResult<axum::Json<KeyList>> {
    let owner = match q.owner.as_deref() {
        None => KeyOwner::All,
        Some("none") => KeyOwner::Nobody,
        Some(u) if UserId::parse(u).is_ok() => KeyOwner::User(u),
        Some(_) => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "owner",
                "invalid_id",
                "owner must be a user id (usr_…) or none",
            )]));
        }
    };
    Ok(axum::Json(state.list_keys(owner, q.cursor, q.limit).await?))
}

/// Any key (administrators).
#[utoipa::path(get, path = "/admin/v1/keys/{id}", tag = "admin",
    responses((status = 200, body = KeyView), (status = 404, body = Problem)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn admin_get(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<KeyView>> {
    let row = admin_key(&state, &id).await?;
    Ok(axum::Json(KeyView::from(&row)))
}

/// Revoke any key (administrators).
#[utoipa::path(delete, path = "/admin/v1/keys/{id}", tag = "admin",
    responses((status = 204), (status = 404, body = Problem)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn admin_revoke(
    State(state): State<AppState>,
    Admin(p): Admin,
    ip: ClientIp,
    rid: RequestId,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let row = admin_key(&state, &id).await?;
    state
        .revoke_row(&p, &row, &audit_context(&ip, &rid))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_key(state: &AppState, id: &str) -> ApiResult<ApiKeyRow> {
    if KeyId::parse(id).is_err() {
        return Err(key_not_found());
    }
    state
        .store
        .api_key_by_id(id)
        .await?
        .ok_or_else(key_not_found)
}
