//! Browser sessions (API.md "Sessions and CSRF"): a server-side session per login, carried in the
//! cookie `__Host-portcullis`, and everything that ends the ways a user is signed in.
//!
//! * The cookie holds a 256-bit random token from the OS CSPRNG; the store keeps only its SHA-256.
//! * Every login makes a new session; a session presented at login is revoked, never adopted.
//! * A session ends when revoked, after the idle timeout without use, or at the absolute timeout.
//! * Cookie-authenticated unsafe requests need the session's CSRF token (see
//!   `portcullis_core::csrf`) and must not come from another site; a login posted from another site
//!   is refused the same way.
//! * [`Sessions::end_every_login`] ends families, sessions and access tokens in the one safe order,
//!   for password changes, logout-all and disabling.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::csrf;
use portcullis_core::ids::{SessionId, UserId};
use portcullis_core::principal::Principal;
use portcullis_core::secrets::{OpaqueToken, TokenHash};
use portcullis_store::{SessionRow, SessionStore, Store, UserRow};
use secrecy::{ExposeSecret, SecretString};

use super::activity::SessionActivity;
use crate::audit::{Audit, AuditContext};
use crate::error::{Error, Result};
use crate::invalidation::{Bus, Invalidation};
use crate::tokens::Tokens;
use crate::users::service::{require_own_login, require_user};
use crate::users::{PasswordLogin, Users};

/// Prefix of session tokens (inside the cookie).
pub const TOKEN_PREFIX: &str = "pcs";
const MAX_USER_AGENT: usize = 256;

/// What [`Sessions`] is built from.
pub struct SessionSettings {
    pub idle_timeout_s: i64,
    pub absolute_timeout_s: i64,
    /// The origin browsers use for us (the issuer's).
    pub origin: String,
    /// Pages of these origins count as ours for the same-site check (the token is still needed).
    pub cors_allowed_origins: Vec<String>,
    /// How long a looked-up session is served from memory.
    pub cache_ttl: Duration,
}

/// What the browser says about where a request came from (`Sec-Fetch-Site`, `Origin`, `Referer`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SiteHints<'a> {
    pub sec_fetch_site: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
}

/// A session found from the cookie, before the CSRF check.
pub struct CookieSession {
    pub row: Arc<SessionRow>,
    pub token: SecretString,
}

impl CookieSession {
    pub fn csrf_token(&self) -> String {
        csrf::token_for(self.token.expose_secret())
    }
}

/// A session as its owner sees it listed.
pub struct SessionSummary {
    pub row: SessionRow,
    /// The latest use this node or the store knows of.
    pub last_seen_at: Millis,
    /// The session this request came with.
    pub current: bool,
}

/// A browser login that succeeded.
pub struct StartedSession {
    pub row: SessionRow,
    pub token: OpaqueToken,
    pub user: UserRow,
}

pub struct Sessions {
    store: Store,
    users: Arc<Users>,
    tokens: Arc<Tokens>,
    activity: SessionActivity,
    cache: Cache<[u8; 32], Arc<SessionRow>>,
    bus: Arc<Bus>,
    audit: Audit,
    settings: SessionSettings,
}

impl Sessions {
    pub fn new(
        store: Store,
        users: Arc<Users>,
        tokens: Arc<Tokens>,
        bus: Arc<Bus>,
        audit: Audit,
        settings: SessionSettings,
    ) -> Self {
        Self {
            activity: SessionActivity::new(Duration::from_secs(
                settings.idle_timeout_s.unsigned_abs(),
            )),
            cache: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(settings.cache_ttl)
                .build(),
            store,
            users,
            tokens,
            bus,
            audit,
            settings,
        }
    }

    /// Drops what `event` makes stale.
    pub fn apply(&self, event: &Invalidation) {
        if let Invalidation::Session(hash) = event {
            self.cache.invalidate(hash);
        }
    }

    fn ended(&self, hashes: &[TokenHash]) {
        for event in Invalidation::of_hashes(hashes, Invalidation::Session) {
            self.apply(&event);
            self.bus.send(event);
        }
    }

    /// The `last_seen_at` writes to make now (the flush loop calls this once a second).
    pub async fn flush_activity(&self) {
        let seen = self.activity.take();
        if !seen.is_empty()
            && let Err(e) = self.store.touch_sessions(&seen).await
        {
            tracing::warn!(error = %e, sessions = seen.len(), "recording session use failed");
        }
    }

    /// Refuses requests that the browser says come from another site.
    pub fn check_same_site(&self, hints: &SiteHints) -> Result<()> {
        // Pages of an origin the operator allowed for CORS count as ours (the token is still needed).
        if hints
            .origin
            .is_some_and(|o| self.settings.cors_allowed_origins.iter().any(|a| a == o))
        {
            return Ok(());
        }
        if csrf::is_cross_site(
            hints.sec_fetch_site,
            hints.origin,
            hints.referer,
            &self.settings.origin,
        ) {
            return Err(Error::CsrfFailed(
                "this request came from another site; cookie-authenticated changes must come from our own pages",
            ));
        }
        Ok(())
    }

    /// Does `presented` belong to the session? Constant-time.
    pub fn check_csrf(&self, s: &CookieSession, presented: Option<&str>) -> Result<()> {
        if csrf::token_matches(s.token.expose_secret(), presented.unwrap_or_default()) {
            Ok(())
        } else {
            Err(Error::CsrfFailed(
                "a cookie-authenticated change needs this session's X-CSRF-Token",
            ))
        }
    }

    /// The live session the cookie value names, or why not.
    pub async fn cookie_session(&self, raw: &str) -> Result<CookieSession> {
        let token = OpaqueToken::parse(TOKEN_PREFIX, raw)
            .map_err(|_| Error::InvalidSession("malformed"))?;
        let hash = token.hash();
        let row = match self.cache.get(&hash.0) {
            Some(row) => row,
            None => {
                let row = self
                    .store
                    .session_by_hash(&hash)
                    .await?
                    .ok_or(Error::InvalidSession("unknown"))?;
                let row = Arc::new(row);
                self.cache.insert(hash.0, Arc::clone(&row));
                row
            }
        };
        let now = Millis::now();
        if row.revoked_at.is_some() {
            return Err(Error::InvalidSession("revoked"));
        }
        if row.expires_at <= now {
            return Err(Error::InvalidSession("expired"));
        }
        let last_seen = self.activity.last_seen(&row.id).max(row.last_seen_at);
        if now.0 - last_seen.0 > self.settings.idle_timeout_s * 1000 {
            return Err(Error::InvalidSession("idle"));
        }
        if self.users.active(row.user_id.as_str()).await?.is_none() {
            return Err(Error::InvalidSession("revoked"));
        }
        Ok(CookieSession {
            row,
            token: SecretString::from(token.expose().to_owned()),
        })
    }

    /// Notes a use of the session (its idle timeout starts again).
    pub fn seen(&self, s: &CookieSession) {
        self.activity.seen(&s.row.id);
    }

    /// When this node or the store last saw the session used.
    pub fn last_seen(&self, s: &CookieSession) -> Millis {
        self.activity.last_seen(&s.row.id).max(s.row.last_seen_at)
    }

    /// Starts a session for `user` and returns it with its cookie token.
    pub async fn start(
        &self,
        user: &UserRow,
        ip: IpAddr,
        user_agent: Option<&str>,
    ) -> Result<(SessionRow, OpaqueToken)> {
        let token = OpaqueToken::generate(TOKEN_PREFIX).map_err(Error::internal)?;
        let now = Millis::now();
        let row = SessionRow {
            id: SessionId::generate(),
            token_hash: token.hash(),
            user_id: UserId::parse(&user.id).map_err(Error::internal)?,
            created_at: now,
            last_seen_at: now,
            expires_at: now.plus_secs(self.settings.absolute_timeout_s),
            revoked_at: None,
            revoked_reason: None,
            ip: Some(ip.to_string()),
            user_agent: user_agent.map(|ua| ua.chars().take(MAX_USER_AGENT).collect()),
        };
        self.store.insert_session(&row).await?;
        metrics::counter!("portcullis_sessions_started_total").increment(1);
        Ok((row, token))
    }

    /// The one browser login (the API's `/v1/sessions` and the `/login` page): not from another site
    /// (login CSRF), the password checked, the session the browser presented ended (fixation), a new
    /// one started.
    pub async fn login(
        &self,
        hints: &SiteHints<'_>,
        login: PasswordLogin,
        presented: Option<&str>,
        user_agent: Option<&str>,
        via: &str,
        ctx: &AuditContext,
    ) -> Result<StartedSession> {
        // Login CSRF: nobody else's page may sign this browser in (to the attacker's account, say).
        self.check_same_site(hints)?;
        let ip = login.ip;
        let user = self.users.login(login, ctx).await?;
        self.end_presented(presented).await;
        let (row, token) = self.start(&user, ip, user_agent).await?;
        self.audit.record(
            "session.started",
            Some(&user.id),
            Some(row.id.as_str()),
            ctx,
            serde_json::json!({ "via": via }),
        );
        Ok(StartedSession { row, token, user })
    }

    /// A session presented at login is ended: a new login always gets a new session (fixation).
    pub async fn end_presented(&self, raw: Option<&str>) {
        let Some(Ok(token)) = raw.map(|r| OpaqueToken::parse(TOKEN_PREFIX, r)) else {
            return;
        };
        let hash = token.hash();
        if let Ok(Some(row)) = self.store.session_by_hash(&hash).await {
            let _ = self
                .store
                .revoke_session(&row.id, &row.user_id, Millis::now(), "replaced")
                .await;
            self.ended(&[hash]);
        }
    }

    /// Revokes every session of the user but `except`, here at once (other nodes within a second).
    pub async fn end_user_sessions(
        &self,
        user_id: &UserId,
        reason: &str,
        except: Option<&SessionId>,
    ) -> Result<usize> {
        let hashes = self
            .store
            .revoke_user_sessions(user_id, Millis::now(), reason, except)
            .await?;
        self.ended(&hashes);
        Ok(hashes.len())
    }

    /// Ends every way the user is signed in: all refresh families, every session (but `keep`), and
    /// every access token issued before the moment they were revoked, in that order. The watermark is
    /// written last, at a time taken after the revocations: a refresh racing this call either found
    /// its family revoked, or rotated before and signed its token with a `jti` time from before the
    /// rotation, so the watermark covers it. (Writing the watermark first, as an earlier release did,
    /// let a refresh in between sign a token that outlived the password change.) Returns how many
    /// families were live.
    pub async fn end_every_login(
        &self,
        user_id: &UserId,
        reason: &str,
        keep: Option<&SessionId>,
    ) -> Result<u64> {
        let families = self
            .tokens
            .revoke_families(user_id.as_str(), reason)
            .await?;
        self.end_user_sessions(user_id, reason, keep).await?;
        self.tokens
            .revoke_access_before(user_id.as_str(), Millis::now())
            .await?;
        Ok(families)
    }

    /// Changes the password of the caller (their own login only) and ends every other way in; the
    /// session `keep` (the one the change was made from) stays.
    #[allow(clippy::too_many_arguments)]
    pub async fn change_password(
        &self,
        p: &Principal,
        current: SecretString,
        new: SecretString,
        ip: IpAddr,
        device_cookie: Option<&str>,
        keep: Option<&SessionId>,
        ctx: &AuditContext,
    ) -> Result<()> {
        let user_id = require_user(p)?;
        require_own_login(p, "change the password")?;
        self.users
            .change_password(user_id.as_str(), current, new, ip, device_cookie, ctx)
            .await?;
        self.end_every_login(user_id, "password_change", keep)
            .await?;
        Ok(())
    }

    /// Logout-all: every refresh token, session and access token of the caller.
    pub async fn logout_all(&self, p: &Principal, ctx: &AuditContext) -> Result<()> {
        let user_id = require_user(p)?;
        require_own_login(p, "log out everywhere")?;
        let families = self.end_every_login(user_id, "logout_all", None).await?;
        self.audit.record(
            "logout.all",
            Some(user_id.as_str()),
            Some(user_id.as_str()),
            ctx,
            serde_json::json!({ "families": families }),
        );
        Ok(())
    }

    /// Disables a user (an administrator): disabled first, so no new login, refresh or session starts
    /// from here on, then everything they held ends. Enabling one again leaves their old sessions and
    /// tokens ended.
    pub async fn set_disabled(
        &self,
        admin: &Principal,
        id: &UserId,
        disabled: bool,
        ctx: &AuditContext,
    ) -> Result<()> {
        self.users.set_disabled(id.as_str(), disabled).await?;
        if disabled {
            self.end_every_login(id, "disabled", None).await?;
        }
        self.audit.record(
            if disabled {
                "user.disabled"
            } else {
                "user.enabled"
            },
            Some(&admin.subject),
            Some(id.as_str()),
            ctx,
            serde_json::json!({}),
        );
        Ok(())
    }

    /// The user's live sessions, `current` marked.
    pub async fn list(
        &self,
        user_id: &UserId,
        current: Option<&SessionId>,
    ) -> Result<Vec<SessionSummary>> {
        let now = Millis::now();
        let idle_before = now.plus_secs(-self.settings.idle_timeout_s);
        let rows = self
            .store
            .list_user_sessions(user_id, now, idle_before.plus_millis(-60_000))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let seen = self.activity.last_seen(&row.id).max(row.last_seen_at);
                (row, seen)
            })
            .filter(|(_, seen)| *seen >= idle_before)
            .map(|(row, last_seen_at)| SessionSummary {
                current: current == Some(&row.id),
                row,
                last_seen_at,
            })
            .collect())
    }

    /// Revokes one session of `user_id`; false when it has no such live session.
    pub async fn revoke(
        &self,
        user_id: &UserId,
        id: &SessionId,
        reason: &str,
        actor: &str,
        ctx: &AuditContext,
    ) -> Result<bool> {
        let Some(hash) = self
            .store
            .revoke_session(id, user_id, Millis::now(), reason)
            .await?
        else {
            return Ok(false);
        };
        self.ended(&[hash]);
        self.audit.record(
            "session.revoked",
            Some(actor),
            Some(id.as_str()),
            ctx,
            serde_json::json!({ "reason": reason }),
        );
        Ok(true)
    }

    /// Every session of a user ends (an administrator).
    pub async fn revoke_all(
        &self,
        admin: &Principal,
        user_id: &UserId,
        ctx: &AuditContext,
    ) -> Result<usize> {
        let n = self.end_user_sessions(user_id, "admin", None).await?;
        self.audit.record(
            "session.revoked_all",
            Some(&admin.subject),
            Some(user_id.as_str()),
            ctx,
            serde_json::json!({ "sessions": n }),
        );
        Ok(n)
    }
}
