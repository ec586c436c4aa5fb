//! Accounts and passwords (API.md "Users and passwords"): registration, imports of bcrypt/argon2
//! hashes that are upgraded on first login, the password check of every login (throttled, see
//! [`super::throttle`]), password changes, disabling, and the user cache every credential check reads.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::devices::{DeviceId, DeviceKey};
use portcullis_core::email::Email;
use portcullis_core::ids::UserId;
use portcullis_core::passwords::{PasswordHashing, PasswordPolicy, StoredHash, Verification};
use portcullis_core::principal::Principal;
use portcullis_store::{NewUser, Store, StoreError, UserRow, UserStore};
use secrecy::{ExposeSecret, SecretString};

use super::hashing::HashPool;
use super::throttle::{Attempt, LoginThrottle};
use crate::audit::{Audit, AuditContext, AuditCounts};
use crate::config::Registration;
use crate::error::{Error, Result};
use crate::invalidation::{Bus, Invalidation};
use crate::ratelimit::{Limiter, client_bucket};

/// Login passwords longer than this are refused before hashing: no policy allows them.
const MAX_LOGIN_PASSWORD_BYTES: usize = 4096;

/// An email as a request gave it, parsed (the field error names `email`).
pub fn parse_email(raw: &str) -> Result<Email> {
    Email::parse(raw).map_err(|e| Error::field("email", "invalid_email", e.to_string()))
}

/// A display name: trimmed; empty means none; at most 200 characters, none of them control,
/// invisible or text-direction characters.
pub fn parse_name(name: Option<&str>) -> Result<Option<String>> {
    let Some(name) = name.filter(|n| !n.trim().is_empty()) else {
        return Ok(None);
    };
    match portcullis_core::text::display_name(name) {
        Some(name) => Ok(Some(name.to_owned())),
        None => Err(Error::field(
            "name",
            "invalid_name",
            "name must be at most 200 characters without control, invisible or text-direction characters",
        )),
    }
}

/// The principal's user, or 403 `not_a_user` for credentials that belong to none (root keys).
pub fn require_user(p: &Principal) -> Result<&UserId> {
    p.user_id.as_ref().ok_or_else(|| {
        Error::Forbidden(
            "not_a_user",
            "this credential does not belong to a user".into(),
        )
    })
}

/// Only the user's own login (not a key, not a third party's token) may do `what`.
pub fn require_own_login(p: &Principal, what: &str) -> Result<()> {
    if p.first_party {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "insufficient_scope",
            format!("only the user's own login may {what}"),
        ))
    }
}

/// What [`Users`] is built from.
pub struct UsersSettings {
    pub registration: Registration,
    pub policy: PasswordPolicy,
    /// `None`: known devices are off.
    pub devices: Option<DeviceKey>,
    pub device_ttl_days: i64,
    /// How long a user row is served from memory (other nodes' changes also arrive by poll).
    pub cache_ttl: Duration,
    /// Refuse logins (after the password checks out) until the email is verified.
    pub require_verified_email: bool,
}

pub struct Users {
    store: Store,
    hashing: HashPool,
    /// The hashing parameters, for checks that run no hash (the cost cap of imported hashes).
    rules: PasswordHashing,
    throttle: LoginThrottle<Limiter>,
    audit: Audit,
    counts: Arc<AuditCounts>,
    bus: Arc<Bus>,
    cache: Cache<String, Arc<UserRow>>,
    settings: UsersSettings,
}

/// A password login to check.
pub struct PasswordLogin {
    pub email: Email,
    pub password: SecretString,
    pub ip: IpAddr,
    /// The known device the request proved for this account ([`Users::known_device`]).
    pub device: Option<DeviceId>,
}

impl Users {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        hashing: HashPool,
        rules: PasswordHashing,
        throttle: LoginThrottle<Limiter>,
        audit: Audit,
        counts: Arc<AuditCounts>,
        bus: Arc<Bus>,
        settings: UsersSettings,
    ) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.cache_ttl)
                .build(),
            store,
            hashing,
            rules,
            throttle,
            audit,
            counts,
            bus,
            settings,
        }
    }

    /// Password hashes queued or running (for `/metrics`).
    pub fn hashes_in_flight(&self) -> usize {
        self.hashing.in_flight()
    }

    /// A user by id, cached briefly; invalidated on every change (here at once, elsewhere by poll).
    pub async fn user(&self, id: &str) -> Result<Option<Arc<UserRow>>> {
        if let Some(u) = self.cache.get(id) {
            return Ok(Some(u));
        }
        let Some(row) = self.store.user_by_id(id).await? else {
            return Ok(None);
        };
        let row = Arc::new(row);
        self.cache.insert(id.to_owned(), Arc::clone(&row));
        Ok(Some(row))
    }

    /// The user if it exists and is not disabled.
    pub async fn active(&self, id: &str) -> Result<Option<Arc<UserRow>>> {
        Ok(self.user(id).await?.filter(|u| u.disabled_at.is_none()))
    }

    /// Administrators: users with role `admin` (when the credential is their own login), or any
    /// credential holding scope `admin`.
    pub async fn is_admin(&self, p: &Principal) -> Result<bool> {
        if p.scopes.is_admin() {
            return Ok(true);
        }
        if !p.first_party {
            return Ok(false);
        }
        match &p.user_id {
            Some(id) => Ok(self
                .active(id.as_str())
                .await?
                .is_some_and(|u| u.has_role("admin"))),
            None => Ok(false),
        }
    }

    /// Drops what `event` makes stale (a change here or on another node).
    pub fn apply(&self, event: &Invalidation) {
        if let Invalidation::User(id) = event {
            self.cache.invalidate(id);
        }
    }

    /// This node forgets the user at once; the bus tells whoever else listens.
    pub fn changed(&self, id: &str) {
        let event = Invalidation::User(id.to_owned());
        self.apply(&event);
        self.bus.send(event);
    }

    /// Creates an account. Each client address may register `registration_ip_limit` accounts per
    /// `registration_ip_period_s`, counted before any hashing (invalid attempts count too).
    ///
    /// An email already in use answers `EmailTaken` (409): a documented trade-off. It tells whoever
    /// asks that an account exists, which answering alike would hide only with a verification email
    /// that the user must click before the account is usable; until email verification lands, the
    /// per-address registration limit bounds how fast anyone can ask.
    pub async fn register(
        &self,
        email: &str,
        password: SecretString,
        name: Option<&str>,
        ip: IpAddr,
        ctx: &AuditContext,
    ) -> Result<UserRow> {
        if self.settings.registration == Registration::Closed {
            return Err(Error::RegistrationClosed);
        }
        if let Err(e) = self.throttle.register(ip).await {
            self.counts.record(
                "registration.throttled",
                None,
                serde_json::json!({ "ip": client_bucket(ip).to_string() }),
                "emails",
                None,
            );
            return Err(e);
        }
        let email = parse_email(email)?;
        let name = parse_name(name)?;
        let hash = self.checked_hash(&email, password).await?;
        self.create(&email, name, hash, "user.registered", None, ctx)
            .await
    }

    /// Stores a user with a password hash and records `event` by `actor` (the user themself when
    /// `None`).
    async fn create(
        &self,
        email: &Email,
        name: Option<String>,
        hash: StoredHash,
        event: &str,
        actor: Option<&str>,
        ctx: &AuditContext,
    ) -> Result<UserRow> {
        let user = insert_user(
            &self.store,
            email,
            name,
            Some(hash.as_str().to_owned()),
            "",
            None,
        )
        .await?;
        self.audit.record(
            event,
            Some(actor.unwrap_or(&user.id)),
            Some(&user.id),
            ctx,
            serde_json::json!({}),
        );
        Ok(user)
    }

    /// Creates a user with an existing bcrypt or argon2 hash (an administrator's import), whose cost
    /// must stay within the cap.
    pub async fn import(
        &self,
        admin: &Principal,
        email: &str,
        name: Option<&str>,
        password_hash: &SecretString,
        ctx: &AuditContext,
    ) -> Result<UserRow> {
        let email = parse_email(email)?;
        let name = parse_name(name)?;
        let hash = StoredHash::parse_import(password_hash.expose_secret(), &self.rules)
            .map_err(|e| Error::field("password_hash", "invalid_hash", e.to_string()))?;
        self.create(
            &email,
            name,
            hash,
            "user.imported",
            Some(&admin.subject),
            ctx,
        )
        .await
    }

    /// The hashing pool's answer for `attempt`, which comes back with it; when the pool was full the
    /// check never ran, so the attempt is given back and the answer is `Overloaded`.
    async fn ran<T, E>(
        &self,
        attempt: Attempt,
        answer: std::result::Result<T, E>,
    ) -> Result<(T, Attempt)> {
        match answer {
            Ok(v) => Ok((v, attempt)),
            Err(_) => {
                self.throttle.abandon(attempt).await;
                Err(Error::Overloaded)
            }
        }
    }

    /// A password login of `email` from `ip`, with the known device its cookie proves, if any.
    pub fn password_login(
        &self,
        email: Email,
        password: SecretString,
        ip: IpAddr,
        device_cookie: Option<&str>,
    ) -> PasswordLogin {
        let device = self.known_device(device_cookie, &email.key());
        PasswordLogin {
            email,
            password,
            ip,
            device,
        }
    }

    /// The known device a cookie proves for the account `email_key`, if any.
    pub fn known_device(&self, cookie: Option<&str>, email_key: &str) -> Option<DeviceId> {
        let devices = self.settings.devices.as_ref()?;
        devices.verify(
            cookie?,
            email_key,
            Millis::now(),
            self.settings.device_ttl_days * 86_400_000,
        )
    }

    /// A known-device cookie value for `user` and its lifetime in seconds (after a successful
    /// login), unless known devices are off.
    pub fn device_cookie(&self, user: &UserRow) -> Option<(String, i64)> {
        let value = self
            .settings
            .devices
            .as_ref()?
            .issue(&user.email_key, Millis::now())
            .ok()?;
        Some((value, self.settings.device_ttl_days * 86_400))
    }

    /// Checks a password login: the attempt is reserved with the throttle before any hashing, then
    /// settled by the verdict. Upgrades old hashes. Unknown accounts verify against a dummy hash so
    /// that both answers cost the same.
    pub async fn login(&self, login: PasswordLogin, ctx: &AuditContext) -> Result<UserRow> {
        if login.password.expose_secret().len() > MAX_LOGIN_PASSWORD_BYTES {
            return Err(Error::field("password", "too_long", "password is too long"));
        }
        let key = login.email.key();
        let attempt = match self
            .throttle
            .begin(login.ip, &key, login.device.as_ref())
            .await
        {
            Ok(attempt) => attempt,
            Err(e) => {
                metrics::counter!("portcullis_logins_total", "outcome" => "throttled").increment(1);
                // Refused before any work, so counted rather than written one by one.
                self.counts.record(
                    "login.throttled",
                    None,
                    serde_json::json!({ "email": key, "policy": super::throttle::refused_policy(&e) }),
                    "ips",
                    Some(&client_bucket(login.ip).to_string()),
                );
                return Err(e);
            }
        };
        let user = self.store.user_by_email_key(&key).await?;
        let stored = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .map(StoredHash::from_stored);
        let password = login.password;
        let verdict = self
            .hashing
            .run(
                move |h| match (h.verify_or_dummy(&password, stored.as_ref()), stored) {
                    (Verification::Match { needs_rehash: true }, Some(stored)) => {
                        (true, h.hash(&password).ok().map(|n| (stored, n)))
                    }
                    (Verification::Match { .. }, _) => (true, None),
                    (Verification::Mismatch, _) => (false, None),
                },
            )
            .await;
        let ((verdict, upgraded), attempt) = self.ran(attempt, verdict).await?;
        match user {
            Some(user) if verdict && user.disabled_at.is_none() => {
                self.throttle.succeeded(attempt).await;
                if self.settings.require_verified_email && user.email_verified_at.is_none() {
                    metrics::counter!("portcullis_logins_total", "outcome" => "unverified")
                        .increment(1);
                    self.audit.record(
                        "login.refused_unverified",
                        Some(&user.id),
                        Some(&user.id),
                        ctx,
                        serde_json::json!({}),
                    );
                    return Err(Error::EmailNotVerified);
                }
                if let Some((old, new)) = upgraded
                    && self
                        .store
                        .upgrade_password_hash(&user.id, old.as_str(), new.as_str(), Millis::now())
                        .await?
                {
                    self.changed(&user.id);
                    self.audit.record(
                        "password.upgraded",
                        Some(&user.id),
                        Some(&user.id),
                        ctx,
                        serde_json::json!({}),
                    );
                }
                metrics::counter!("portcullis_logins_total", "outcome" => "success").increment(1);
                self.audit.record(
                    "login.succeeded",
                    Some(&user.id),
                    Some(&user.id),
                    ctx,
                    serde_json::json!({ "known_device": login.device.is_some() }),
                );
                Ok(user)
            }
            user => {
                self.throttle.failed(attempt);
                metrics::counter!("portcullis_logins_total", "outcome" => "failure").increment(1);
                self.audit.record(
                    "login.failed",
                    None,
                    user.as_ref().map(|u| u.id.as_str()),
                    ctx,
                    serde_json::json!({ "email": key }),
                );
                Err(Error::InvalidCredentials)
            }
        }
    }

    /// Replaces the password after checking the current one (throttled like a login, the attempt
    /// reserved before hashing). Ending the user's other ways in is the caller's (`sessions`).
    pub async fn change_password(
        &self,
        user_id: &str,
        current: SecretString,
        new: SecretString,
        ip: IpAddr,
        device_cookie: Option<&str>,
        ctx: &AuditContext,
    ) -> Result<()> {
        let user = self.user(user_id).await?.ok_or(Error::Unauthenticated)?;
        let email = Email::parse(&user.email).map_err(Error::internal)?;
        self.settings
            .policy
            .check(new.expose_secret(), &email)
            .map_err(Error::WeakPassword)?;
        let device = self.known_device(device_cookie, &user.email_key);
        let attempt = self
            .throttle
            .begin(ip, &user.email_key, device.as_ref())
            .await?;
        let stored = user.password_hash.clone().map(StoredHash::from_stored);
        let verdict = self
            .hashing
            .run(
                move |h| match h.verify_or_dummy(&current, stored.as_ref()) {
                    Verification::Match { .. } => (true, h.hash(&new).ok()),
                    Verification::Mismatch => (false, None),
                },
            )
            .await;
        let ((verdict, new_hash), attempt) = self.ran(attempt, verdict).await?;
        if !verdict {
            self.throttle.failed(attempt);
            self.audit.record(
                "password.change_failed",
                Some(&user.id),
                Some(&user.id),
                ctx,
                serde_json::json!({}),
            );
            return Err(Error::field(
                "current_password",
                "incorrect",
                "the current password is wrong",
            ));
        }
        self.throttle.succeeded(attempt).await;
        let new_hash =
            new_hash.ok_or_else(|| Error::internal("hashing the new password failed"))?;
        self.store
            .set_password_hash(&user.id, new_hash.as_str(), Millis::now(), None)
            .await?;
        self.changed(&user.id);
        self.audit.record(
            "password.changed",
            Some(&user.id),
            Some(&user.id),
            ctx,
            serde_json::json!({}),
        );
        Ok(())
    }

    /// A new password for `user` (a reset), checked against the policy and hashed.
    pub async fn hash_new_password(&self, user: &UserRow, new: SecretString) -> Result<StoredHash> {
        let email = Email::parse(&user.email).map_err(Error::internal)?;
        self.checked_hash(&email, new).await
    }

    /// A new password of `email`'s account, checked against the policy, then hashed.
    async fn checked_hash(&self, email: &Email, password: SecretString) -> Result<StoredHash> {
        self.settings
            .policy
            .check(password.expose_secret(), email)
            .map_err(Error::WeakPassword)?;
        self.hashing
            .run(move |h| h.hash(&password))
            .await
            .map_err(|_| Error::Overloaded)?
            .map_err(Error::internal)
    }

    /// Replaces the password of `user` (a reset: no current password to check). Ending what the user
    /// held is the caller's.
    pub async fn reset_password(&self, user: &UserRow, hash: &StoredHash) -> Result<()> {
        self.store
            .set_password_hash(&user.id, hash.as_str(), Millis::now(), None)
            .await?;
        self.changed(&user.id);
        Ok(())
    }

    /// Disables (`true`) or enables a user; `NotFound` when there is no such user. Ending what a
    /// disabled user held is the caller's (`sessions`).
    pub async fn set_disabled(&self, id: &str, disabled: bool) -> Result<()> {
        let now = Millis::now();
        if !self
            .store
            .set_user_disabled(id, disabled.then_some(now), now)
            .await?
        {
            return Err(Error::NotFound("no such user".into()));
        }
        self.changed(id);
        Ok(())
    }

    /// Users ordered by id after `cursor`, at most `limit`.
    pub async fn list(&self, cursor: Option<&str>, limit: u32) -> Result<Vec<UserRow>> {
        Ok(self.store.list_users(cursor, limit).await?)
    }
}

/// Stores a new user (the API and the CLI both come here); `EmailTaken` when the email is in use.
pub async fn insert_user(
    store: &Store,
    email: &Email,
    name: Option<String>,
    hash: Option<String>,
    roles: &str,
    email_verified_at: Option<Millis>,
) -> Result<UserRow> {
    let new = NewUser {
        id: UserId::generate(),
        email: email.as_str().to_owned(),
        email_key: email.key(),
        name,
        password_hash: hash,
        roles: roles.to_owned(),
        created_at: Millis::now(),
        email_verified_at,
    };
    match store.create_user(&new).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Err(Error::EmailTaken),
        Err(e) => return Err(e.into()),
    }
    store
        .user_by_id(new.id.as_str())
        .await?
        .ok_or_else(|| Error::internal("user vanished after insert"))
}
