//! Verified emails and password reset by email (API.md "Email verification, password reset,
//! upstream sign-in").
//!
//! * A link is a signed one-time token ([`portcullis_core::links`]) stored as SHA-256, bound to the
//!   address it was sent to, spent by one conditional `UPDATE`: verification links live 24 h, reset
//!   links 30 min.
//! * Asking for a reset answers alike for known and unknown addresses, and in the same time: the
//!   lookup, the link and the mail all happen after the answer, off the request.
//! * A reset checks the new password against the policy before spending the link (a weak one can be
//!   replaced on the same link), then ends every session, refresh family and access token of the
//!   user, and every other reset link. Receiving the link proves the address, so it is verified too.
//! * Links per user are limited (one a minute, five an hour, per purpose) in the store, so the limit
//!   holds across nodes; requests per client address are limited beside it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::clock::Millis;
use portcullis_core::links::LinkKey;
use portcullis_core::ratelimit::{RateDecision, RatePolicy};
use portcullis_store::{AccountStore, EmailLinkRow, LinkPurpose, Store, UserRow, UserStore};
use secrecy::{ExposeSecret, SecretString};

use super::mailer::{Mail, Outbox};
use crate::audit::{Audit, AuditContext};
use crate::error::{Error, Result, Throttled};
use crate::ratelimit::{Limiter, RateLimiter, client_bucket};
use crate::sessions::Sessions;
use crate::users::{Users, parse_email};

pub const VERIFY_TTL_S: i64 = 24 * 3600;
pub const RESET_TTL_S: i64 = 30 * 60;
/// Links of one purpose a user may be sent: one per minute, five per hour.
const LINKS_PER_MINUTE: i64 = 1;
const LINKS_PER_HOUR: i64 = 5;

/// What [`Accounts`] is built from.
pub struct AccountSettings {
    /// Redis, when several nodes share the per-address limit.
    pub redis: Option<Arc<portcullis_kv::redis::Redis>>,
    /// Links point here (`<issuer>/verify?token=…`).
    pub issuer: String,
    /// Requests for a link (verification resend, reset) one client address may make per period.
    pub ip_policy: RatePolicy,
}

pub struct Accounts {
    store: Store,
    users: Arc<Users>,
    sessions: Arc<Sessions>,
    outbox: Outbox,
    links: LinkKey,
    limiter: Limiter,
    audit: Audit,
    settings: AccountSettings,
}

fn prefix(purpose: LinkPurpose) -> &'static str {
    match purpose {
        LinkPurpose::Verify => "pcv",
        LinkPurpose::Reset => "pcr",
    }
}

impl Accounts {
    pub fn new(
        store: Store,
        users: Arc<Users>,
        sessions: Arc<Sessions>,
        outbox: Outbox,
        links: LinkKey,
        audit: Audit,
        settings: AccountSettings,
    ) -> Self {
        Self {
            store,
            users,
            sessions,
            outbox,
            links,
            limiter: Limiter::new(
                settings.redis.as_ref(),
                Duration::from_millis(settings.ip_policy.period_ms.max(1000)),
                Duration::from_secs(60),
            ),
            audit,
            settings,
        }
    }

    /// The per-address limit on asking for links.
    async fn check_ip(&self, ip: IpAddr) -> Result<()> {
        let policy = self.settings.ip_policy;
        let decision = self
            .limiter
            .check(&format!("links:ip:{}", client_bucket(ip)), policy, 1)
            .await;
        if decision.allowed {
            Ok(())
        } else {
            Err(Error::RateLimited(Throttled {
                policy: "email-links-ip",
                limit: policy.limit,
                window_s: policy.period_ms / 1000,
                decision,
            }))
        }
    }

    /// Whether the user may be sent another link of `purpose` now: `Err` with the wait if not.
    async fn check_user(&self, user_id: &str, purpose: LinkPurpose) -> Result<()> {
        let now = Millis::now();
        let limited = |window_s: i64, limit: i64| {
            Error::RateLimited(Throttled {
                policy: "email-links-user",
                limit: limit as u32,
                window_s: window_s as u64,
                decision: RateDecision {
                    allowed: false,
                    remaining: 0,
                    reset_ms: (window_s * 1000) as u64,
                    retry_after_ms: (window_s * 1000) as u64,
                },
            })
        };
        for (window_s, limit) in [(60, LINKS_PER_MINUTE), (3600, LINKS_PER_HOUR)] {
            let sent = self
                .store
                .count_email_links_since(user_id, purpose, now.plus_secs(-window_s))
                .await?;
            if sent >= limit {
                return Err(limited(window_s, limit));
            }
        }
        Ok(())
    }

    /// Makes a link for `user` and queues the mail that carries it.
    async fn send_link(&self, user: &UserRow, purpose: LinkPurpose) -> Result<()> {
        let (token, hash) = self.links.issue(prefix(purpose)).map_err(Error::internal)?;
        let now = Millis::now();
        let ttl = match purpose {
            LinkPurpose::Verify => VERIFY_TTL_S,
            LinkPurpose::Reset => RESET_TTL_S,
        };
        self.store
            .insert_email_link(&EmailLinkRow {
                token_hash: hash,
                user_id: user.id.clone(),
                purpose,
                email_key: user.email_key.clone(),
                created_at: now,
                expires_at: now.plus_secs(ttl),
            })
            .await?;
        let issuer = &self.settings.issuer;
        let token = token.expose_secret();
        let mail = match purpose {
            LinkPurpose::Verify => Mail {
                to: user.email.clone(),
                subject: "Verify your email address".into(),
                text: format!(
                    "Hello,\r\n\r\nTo confirm that {} is your address, open this link within 24 hours:\r\n\r\n\
                     {issuer}/verify?token={token}\r\n\r\nIf you did not create an account, ignore this message.\r\n",
                    user.email
                ),
            },
            LinkPurpose::Reset => Mail {
                to: user.email.clone(),
                subject: "Reset your password".into(),
                text: format!(
                    "Hello,\r\n\r\nSomeone (we hope you) asked to reset the password of {}. To choose a new one, \
                     open this link within 30 minutes:\r\n\r\n{issuer}/reset?token={token}\r\n\r\n\
                     If it was not you, ignore this message: your password stays as it is.\r\n",
                    user.email
                ),
            },
        };
        self.outbox.enqueue(mail);
        Ok(())
    }

    /// A verification link for a newly registered user (no limit: the registration limit holds).
    pub async fn welcome(&self, user: &UserRow) {
        if let Err(e) = self.send_link(user, LinkPurpose::Verify).await {
            tracing::error!(error = %e, "could not send the verification link of a new account");
        }
    }

    /// `POST /v1/me/email/verify`: another verification link for the caller.
    pub async fn resend_verification(
        &self,
        user_id: &str,
        ip: IpAddr,
        ctx: &AuditContext,
    ) -> Result<()> {
        let user = self
            .users
            .active(user_id)
            .await?
            .ok_or(Error::Unauthenticated)?;
        if user.email_verified_at.is_some() {
            return Err(Error::Conflict(
                "already_verified",
                "this email address is verified already".into(),
            ));
        }
        self.check_ip(ip).await?;
        self.check_user(&user.id, LinkPurpose::Verify).await?;
        self.send_link(&user, LinkPurpose::Verify).await?;
        self.audit.record(
            "email.verification_sent",
            Some(&user.id),
            Some(&user.id),
            ctx,
            serde_json::json!({}),
        );
        Ok(())
    }

    /// A verification link for whoever owns `email`, answered alike whether or not anyone does (for
    /// a login refused by `require_verified_email`, which has no session to ask with).
    pub async fn resend_verification_to(self: &Arc<Self>, email: &str, ip: IpAddr) -> Result<()> {
        let email = parse_email(email)?;
        self.check_ip(ip).await?;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(Some(user)) = this.store.user_by_email_key(&email.key()).await else {
                return;
            };
            if user.disabled_at.is_some()
                || user.email_verified_at.is_some()
                || this
                    .check_user(&user.id, LinkPurpose::Verify)
                    .await
                    .is_err()
            {
                return;
            }
            if let Err(e) = this.send_link(&user, LinkPurpose::Verify).await {
                tracing::error!(error = %e, "could not send a verification link");
            }
        });
        Ok(())
    }

    /// `POST /v1/email/verify`: spends a verification link.
    pub async fn verify(&self, token: &str, ctx: &AuditContext) -> Result<()> {
        let hash = self
            .links
            .check(prefix(LinkPurpose::Verify), token.trim())
            .ok_or(Error::InvalidLink)?;
        let now = Millis::now();
        let (user_id, email_key) = self
            .store
            .spend_email_link(&hash, LinkPurpose::Verify, now)
            .await?
            .ok_or(Error::InvalidLink)?;
        let user = self
            .users
            .active(&user_id)
            .await?
            .ok_or(Error::InvalidLink)?;
        if user.email_key != email_key {
            return Err(Error::InvalidLink);
        }
        if self
            .store
            .set_email_verified(&user_id, &email_key, now)
            .await?
        {
            self.users.changed(&user_id);
            self.audit.record(
                "email.verified",
                Some(&user_id),
                Some(&user_id),
                ctx,
                serde_json::json!({}),
            );
        }
        Ok(())
    }

    /// `POST /v1/password-reset`: answers at once, alike for every address; the link, if there is an
    /// account, is made and mailed afterwards.
    pub async fn request_reset(
        self: &Arc<Self>,
        email: &str,
        ip: IpAddr,
        ctx: &AuditContext,
    ) -> Result<()> {
        let email = parse_email(email)?;
        self.check_ip(ip).await?;
        let this = Arc::clone(self);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let key = email.key();
            let user = match this.store.user_by_email_key(&key).await {
                Ok(Some(u)) if u.disabled_at.is_none() => u,
                Ok(_) => {
                    this.audit.record(
                        "password.reset_requested",
                        None,
                        None,
                        &ctx,
                        serde_json::json!({ "email": key, "known": false }),
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "password reset lookup failed");
                    return;
                }
            };
            let sent = match this.check_user(&user.id, LinkPurpose::Reset).await {
                Ok(()) => this.send_link(&user, LinkPurpose::Reset).await.is_ok(),
                Err(_) => false,
            };
            this.audit.record(
                "password.reset_requested",
                None,
                Some(&user.id),
                &ctx,
                serde_json::json!({ "email": key, "known": true, "sent": sent }),
            );
        });
        Ok(())
    }

    /// `POST /v1/password-reset/confirm`: a new password on a live reset link; then nothing the user
    /// held before is honoured.
    pub async fn confirm_reset(
        &self,
        token: &str,
        new_password: SecretString,
        ctx: &AuditContext,
    ) -> Result<()> {
        let hash = self
            .links
            .check(prefix(LinkPurpose::Reset), token.trim())
            .ok_or(Error::InvalidLink)?;
        let now = Millis::now();
        let (user_id, email_key) = self
            .store
            .email_link(&hash, LinkPurpose::Reset, now)
            .await?
            .ok_or(Error::InvalidLink)?;
        let user = self
            .users
            .active(&user_id)
            .await?
            .ok_or(Error::InvalidLink)?;
        if user.email_key != email_key {
            return Err(Error::InvalidLink);
        }
        let new_hash = self.users.hash_new_password(&user, new_password).await?;
        // Spent only now, once: of two confirmations at once, one wins.
        self.store
            .spend_email_link(&hash, LinkPurpose::Reset, Millis::now())
            .await?
            .ok_or(Error::InvalidLink)?;
        self.users.reset_password(&user, &new_hash).await?;
        let uid = portcullis_core::ids::UserId::parse(&user.id).map_err(Error::internal)?;
        self.sessions
            .end_every_login(&uid, "password_reset", None)
            .await?;
        self.store
            .spend_user_email_links(&user.id, LinkPurpose::Reset, Millis::now())
            .await?;
        if self
            .store
            .set_email_verified(&user.id, &email_key, Millis::now())
            .await?
        {
            self.users.changed(&user.id);
        }
        self.audit.record(
            "password.reset",
            Some(&user.id),
            Some(&user.id),
            ctx,
            serde_json::json!({}),
        );
        Ok(())
    }
}
