//! The upstream sign-in flow and the accounts it leads to.
//!
//! Start: a random `state` (its SHA-256 stored with the provider, the `return_to` and, when a
//! signed-in user links another identity, that user) and a random browser-binding value (its SHA-256
//! stored; the value in a short-lived `__Host-` cookie). The `nonce` and the PKCE S256 verifier are
//! derived from the state under the master key, so neither is stored.
//!
//! Callback: the state is spent once and must come back to the browser it was given to; `iss` must
//! be the provider's (RFC 9207 when it sends one, and required when its metadata says it always
//! does: against mix-up, RFC 9700 §4.4); the code is exchanged with the verifier; the ID token is
//! checked (`portcullis_core::oauth::id_token`); UserInfo fills in what it leaves out. Then:
//!
//! * an identity already linked signs its user in;
//! * while linking, the identity is linked to the signed-in user (unless another user has it);
//! * a first sign-in whose email belongs to an account links to it only when the provider allows
//!   linking by email, says the email is verified, and the account's own email is verified (else an
//!   unverified address, upstream or here, would hand one person's account to another);
//! * otherwise a new account is created when registration is open.
//!
//! Every refusal is audited (`upstream.login_failed` with its reason) and links nothing.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_core::clock::Millis;
use portcullis_core::ids::{IdentityId, UserId};
use portcullis_core::links::LinkKey;
use portcullis_core::oauth::id_token::{self, Expected, IdTokenError};
use portcullis_core::oauth::pkce::CodeChallenge;
use portcullis_core::seal::MasterKey;
use portcullis_core::secrets::{OpaqueToken, TokenHash, fill_random};
use portcullis_store::{
    AccountStore, IdentityRow, Store, StoreError, UpstreamLoginRow, UserRow, UserStore,
};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::provider::{Provider, UpstreamError};
use crate::audit::{Audit, AuditContext};
use crate::config::Registration;
use crate::config::{UpstreamConfig, UpstreamKind};
use crate::error::{Error, Result};
use crate::sessions::Sessions;
use crate::users::{Users, insert_user, parse_email};

/// How long a sign-in may take at the provider.
pub const LOGIN_TTL_S: i64 = 600;

pub struct UpstreamSettings {
    pub issuer: String,
    pub registration: Registration,
    pub require_verified_email: bool,
    pub leeway_s: i64,
}

pub struct Upstreams {
    providers: Vec<Arc<Provider>>,
    store: Store,
    users: Arc<Users>,
    sessions: Arc<Sessions>,
    links: LinkKey,
    seal: MasterKey,
    audit: Audit,
    settings: UpstreamSettings,
}

/// Whose fault a refusal is: what the page's status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request, the browser, or what the provider vouched for (400).
    Request,
    /// No such provider (404).
    UnknownProvider,
    /// The provider was down, slow or answered nonsense (502).
    Upstream,
    /// Ours (500, logged).
    Internal,
}

/// A sign-in refused: `reason` for the audit log and metrics, `message` for the person.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
    pub fault: Fault,
}

impl Refused {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            fault: Fault::Request,
        }
    }

    fn unknown_provider() -> Self {
        Self {
            fault: Fault::UnknownProvider,
            ..Self::new("unknown_provider", "There is no such sign-in provider.")
        }
    }

    /// A call to the provider `name` failed, while `starting` the sign-in or completing it.
    fn upstream(name: &str, e: &UpstreamError, starting: bool) -> Self {
        let message = if starting {
            format!("{name} cannot be reached right now ({e}). Try again in a moment.")
        } else {
            format!("{name} could not complete the sign-in: {e}. Try again in a moment.")
        };
        Self {
            reason: e.reason(),
            message,
            // The provider's own refusal of the code is about this sign-in, not an outage.
            fault: match e {
                UpstreamError::Refused(..) => Fault::Request,
                UpstreamError::Unreachable(_) | UpstreamError::BadAnswer(..) => Fault::Upstream,
            },
        }
    }
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "upstream sign-in failed");
        Self {
            reason: "internal",
            message: "Something went wrong on our side. Try again in a moment.".into(),
            fault: Fault::Internal,
        }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Error::from(e).into()
    }
}

/// Where to send the browser to start, and the cookie that binds the sign-in to it.
pub struct Started {
    pub location: String,
    pub browser: String,
}

/// The callback's query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// The browser the callback came from.
pub struct CallbackBrowser<'a> {
    /// The binding cookie's value.
    pub binding: Option<&'a str>,
    /// The session cookie it presented (ended if a new session starts).
    pub session: Option<&'a str>,
    pub ip: IpAddr,
    pub user_agent: Option<&'a str>,
}

/// How a callback ended.
pub enum Outcome {
    /// A new browser session for the user.
    SignedIn {
        user: Box<UserRow>,
        token: OpaqueToken,
        return_to: String,
    },
    /// The identity was linked to the signed-in user.
    Linked {
        provider_name: String,
        return_to: String,
    },
}

/// One provider, as the login page shows it.
pub struct ProviderButton {
    pub id: String,
    pub name: String,
}

/// What the upstream said about the person.
struct Person {
    subject: String,
    email: Option<String>,
    email_verified: bool,
    name: Option<String>,
}

fn random_b64() -> Result<String> {
    let mut raw = [0u8; 32];
    fill_random(&mut raw).map_err(Error::internal)?;
    Ok(B64.encode(raw))
}

/// `email_verified` as providers send it: a boolean, or (some) the string "true".
fn truthy(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true))) || v.and_then(Value::as_str) == Some("true")
}

impl Upstreams {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        configs: &[UpstreamConfig],
        store: Store,
        users: Arc<Users>,
        sessions: Arc<Sessions>,
        links: LinkKey,
        seal: MasterKey,
        audit: Audit,
        settings: UpstreamSettings,
    ) -> std::result::Result<Self, String> {
        let providers = configs
            .iter()
            .map(|c| Provider::new(c.clone()).map(Arc::new))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self {
            providers,
            store,
            users,
            sessions,
            links,
            seal,
            audit,
            settings,
        })
    }

    pub fn buttons(&self) -> Vec<ProviderButton> {
        self.providers
            .iter()
            .map(|p| ProviderButton {
                id: p.config.id.clone(),
                name: p.config.name.clone(),
            })
            .collect()
    }

    pub fn name_of(&self, id: &str) -> Option<String> {
        self.provider(id).map(|p| p.config.name.clone())
    }

    fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.id() == id)
    }

    /// Fetches every provider's discovery document and keys once (at start), so that a
    /// misconfigured one is reported in the log before anyone clicks its button.
    pub async fn warm(&self) {
        for p in &self.providers {
            let checked = match p.endpoints().await {
                Ok(_) if p.config.kind == UpstreamKind::Oidc => p.keys(false).await.map(|_| ()),
                other => other.map(|_| ()),
            };
            match checked {
                Ok(()) => tracing::info!(upstream = %p.id(), "upstream provider ready"),
                Err(e) => {
                    tracing::warn!(upstream = %p.id(), reason = e.reason(), error = %e, "upstream provider not reachable yet; sign-ins through it will retry")
                }
            }
        }
    }

    fn redirect_uri(&self, id: &str) -> String {
        format!("{}/v1/upstream/{id}/callback", self.settings.issuer)
    }

    fn failed(&self, provider: &str, reason: &'static str, user: Option<&str>, ctx: &AuditContext) {
        // Providers are configured and reasons a fixed set: the labels stay few.
        let provider_label = if self.provider(provider).is_some() {
            provider.to_owned()
        } else {
            "unknown".to_owned()
        };
        metrics::counter!("portcullis_upstream_logins_total", "provider" => provider_label, "outcome" => "failed", "reason" => reason).increment(1);
        self.audit.record(
            "upstream.login_failed",
            user,
            None,
            ctx,
            serde_json::json!({ "provider": provider, "reason": reason }),
        );
    }

    /// Starts a sign-in (or, with `link_user`, the linking of another identity to that user).
    pub async fn start(
        &self,
        id: &str,
        return_to: &str,
        link_user: Option<&UserId>,
        ctx: &AuditContext,
    ) -> std::result::Result<Started, Refused> {
        let provider = self.provider(id).ok_or_else(Refused::unknown_provider)?;
        let name = &provider.config.name;
        let endpoints = provider.endpoints().await.map_err(|e| {
            self.failed(id, e.reason(), link_user.map(UserId::as_str), ctx);
            Refused::upstream(name, &e, true)
        })?;
        let state = random_b64()?;
        let browser = random_b64()?;
        let now = Millis::now();
        self.store
            .insert_upstream_login(&UpstreamLoginRow {
                state_hash: TokenHash::of(state.as_bytes()),
                provider: id.to_owned(),
                browser_hash: TokenHash::of(browser.as_bytes()),
                return_to: return_to.to_owned(),
                link_user_id: link_user.map(|u| u.as_str().to_owned()),
                created_at: now,
                expires_at: now.plus_secs(LOGIN_TTL_S),
            })
            .await?;
        let verifier = self.links.derive_secret("upstream-pkce", &state);
        let mut url = url::Url::parse(&endpoints.authorization).map_err(|_| {
            Refused::new(
                "discovery",
                format!("{name} has an unusable sign-in address."),
            )
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &provider.config.client_id)
                .append_pair("redirect_uri", &self.redirect_uri(id))
                .append_pair("scope", &provider.config.scopes().join(" "))
                .append_pair("state", &state)
                .append_pair(
                    "code_challenge",
                    CodeChallenge::of_verifier(verifier.expose_secret()).as_str(),
                )
                .append_pair("code_challenge_method", "S256");
            if provider.config.kind == UpstreamKind::Oidc {
                q.append_pair(
                    "nonce",
                    self.links
                        .derive_secret("upstream-nonce", &state)
                        .expose_secret(),
                );
            }
        }
        metrics::counter!("portcullis_upstream_logins_total", "provider" => id.to_owned(), "outcome" => "started", "reason" => "").increment(1);
        self.audit.record(
            "upstream.login_started",
            link_user.map(UserId::as_str),
            None,
            ctx,
            serde_json::json!({ "provider": id, "link": link_user.is_some() }),
        );
        Ok(Started {
            location: url.into(),
            browser,
        })
    }

    /// The provider's redirect back.
    pub async fn callback(
        &self,
        id: &str,
        q: &CallbackQuery,
        browser: CallbackBrowser<'_>,
        ctx: &AuditContext,
    ) -> std::result::Result<Outcome, Refused> {
        let outcome = self.complete(id, q, &browser, ctx).await;
        match &outcome {
            Ok(Outcome::SignedIn { .. }) => {
                metrics::counter!("portcullis_upstream_logins_total", "provider" => id.to_owned(), "outcome" => "succeeded", "reason" => "").increment(1);
            }
            Ok(Outcome::Linked { .. }) => {}
            Err(r) => self.failed(id, r.reason, None, ctx),
        }
        outcome
    }

    async fn complete(
        &self,
        id: &str,
        q: &CallbackQuery,
        browser: &CallbackBrowser<'_>,
        ctx: &AuditContext,
    ) -> std::result::Result<Outcome, Refused> {
        let provider = self.provider(id).ok_or_else(Refused::unknown_provider)?;
        let name = provider.config.name.clone();
        let expired = || {
            Refused::new(
                "state",
                "This sign-in has expired or was already used. Start again from the login page.",
            )
        };
        let state = q
            .state
            .as_deref()
            .filter(|s| s.len() <= 256)
            .ok_or_else(expired)?;
        let login = self
            .store
            .take_upstream_login(&TokenHash::of(state.as_bytes()), Millis::now())
            .await?
            .filter(|l| l.provider == id)
            .ok_or_else(expired)?;
        let bound = browser
            .binding
            .is_some_and(|b| TokenHash::of(b.as_bytes()).ct_eq(&login.browser_hash));
        if !bound {
            return Err(Refused::new(
                "browser_mismatch",
                "This sign-in was started in another browser. Start again from the login page.",
            ));
        }
        if let Some(error) = &q.error {
            let said = q.error_description.as_deref().unwrap_or(error.as_str());
            let said: String = said.chars().filter(|c| !c.is_control()).take(200).collect();
            return Err(Refused::new(
                if error == "access_denied" {
                    "upstream_denied"
                } else {
                    "upstream_error"
                },
                format!("{name} did not sign you in: {said}"),
            ));
        }
        let endpoints = provider
            .endpoints()
            .await
            .map_err(|e| Refused::upstream(&name, &e, true))?;
        // RFC 9207 §2.4: an `iss` must be the provider's; one that promises it must send it.
        match (&q.iss, &endpoints.issuer) {
            (Some(iss), Some(expected)) if iss == expected => {}
            (None, Some(_)) if !endpoints.iss_parameter => {}
            (None, None) => {}
            _ => {
                return Err(Refused::new(
                    "issuer_mismatch",
                    format!(
                        "The answer did not come from {name}. Start again from the login page."
                    ),
                ));
            }
        }
        let code = q
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 2048)
            .ok_or_else(|| {
                Refused::new("no_code", format!("{name} sent no authorization code."))
            })?;
        let verifier = self.links.derive_secret("upstream-pkce", state);
        let unreachable = |e: UpstreamError| Refused::upstream(&name, &e, false);
        let tokens = provider
            .exchange(code, &verifier, &self.redirect_uri(id))
            .await
            .map_err(unreachable)?;
        let person = match provider.config.kind {
            UpstreamKind::Oidc => {
                self.oidc_person(provider, &endpoints.id_token_algs, state, &tokens)
                    .await?
            }
            UpstreamKind::Github => {
                let account = provider
                    .github_account(&tokens.access_token)
                    .await
                    .map_err(unreachable)?;
                Person {
                    subject: account.id,
                    email_verified: account.email.as_ref().is_some_and(|(_, v)| *v),
                    email: account.email.map(|(e, _)| e),
                    name: account
                        .name
                        .or(Some(account.login).filter(|l| !l.is_empty())),
                }
            }
        };
        let sealed = if provider.config.store_tokens {
            let raw = serde_json::to_vec(&tokens.raw).map_err(Error::internal)?;
            Some(
                self.seal
                    .seal(&format!("upstream-tokens:{id}"), &raw)
                    .map_err(Error::internal)?,
            )
        } else {
            None
        };
        let return_to = login.return_to.clone();
        if let Some(link_user) = &login.link_user_id {
            self.link(id, &name, link_user, &person, sealed, ctx)
                .await?;
            return Ok(Outcome::Linked {
                provider_name: name,
                return_to,
            });
        }
        let user = self.account_for(provider, &person, sealed, ctx).await?;
        if user.disabled_at.is_some() {
            return Err(Refused::new("disabled", "This account cannot sign in."));
        }
        if self.settings.require_verified_email && user.email_verified_at.is_none() {
            return Err(Refused::new(
                "email_not_verified",
                "Verify your email address first: open the link we sent you.",
            ));
        }
        self.sessions.end_presented(browser.session).await;
        let (row, token) = self
            .sessions
            .start(&user, browser.ip, browser.user_agent)
            .await?;
        self.audit.record(
            "upstream.login_succeeded",
            Some(&user.id),
            Some(&user.id),
            ctx,
            serde_json::json!({ "provider": id }),
        );
        self.audit.record(
            "session.started",
            Some(&user.id),
            Some(row.id.as_str()),
            ctx,
            serde_json::json!({ "via": format!("upstream:{id}") }),
        );
        Ok(Outcome::SignedIn {
            user: Box::new(user),
            token,
            return_to,
        })
    }

    /// The person an OpenID provider vouches for: the ID token checked, UserInfo for the rest.
    async fn oidc_person(
        &self,
        provider: &Provider,
        algs: &[portcullis_core::jwt::JwsAlg],
        state: &str,
        tokens: &super::provider::TokenAnswer,
    ) -> std::result::Result<Person, Refused> {
        let name = &provider.config.name;
        let refused = |e: IdTokenError| {
            Refused::new(
                e.reason(),
                format!(
                    "{name} sent an identity we cannot accept ({}).",
                    e.reason().replace('_', " ")
                ),
            )
        };
        let raw = tokens
            .id_token
            .as_deref()
            .ok_or_else(|| Refused::new("no_id_token", format!("{name} sent no ID token.")))?;
        let nonce = self.links.derive_secret("upstream-nonce", state);
        let issuer = provider.config.issuer.clone().unwrap_or_default();
        let want = Expected {
            issuer: &issuer,
            client_id: &provider.config.client_id,
            nonce: nonce.expose_secret(),
            algs,
            now_s: Millis::now().as_secs(),
            leeway_s: self.settings.leeway_s,
        };
        let unreachable = |e: UpstreamError| Refused::upstream(name, &e, false);
        let keys = provider.keys(false).await.map_err(unreachable)?;
        let claims = match id_token::verify(raw, &keys, &want) {
            Err(IdTokenError::UnknownKey) => {
                let keys = provider.keys(true).await.map_err(unreachable)?;
                id_token::verify(raw, &keys, &want).map_err(refused)?
            }
            other => other.map_err(refused)?,
        };
        let text = |m: &serde_json::Map<String, Value>, n: &str| {
            m.get(n).and_then(Value::as_str).map(str::to_owned)
        };
        let subject = text(&claims, "sub").unwrap_or_default();
        let mut person = Person {
            email: text(&claims, "email"),
            email_verified: truthy(claims.get("email_verified")),
            name: text(&claims, "name").or_else(|| text(&claims, "preferred_username")),
            subject,
        };
        if person.email.is_none()
            && let Some(info) = provider
                .userinfo(&tokens.access_token)
                .await
                .map_err(unreachable)?
        {
            // OIDC Core §5.3.4: UserInfo about anyone else is not about this person.
            let info = info.as_object().cloned().unwrap_or_default();
            if text(&info, "sub").as_deref() != Some(person.subject.as_str()) {
                return Err(Refused::new(
                    "userinfo_subject",
                    format!("{name} described someone else than who signed in."),
                ));
            }
            person.email = text(&info, "email");
            person.email_verified = truthy(info.get("email_verified"));
            person.name = person
                .name
                .or_else(|| text(&info, "name"))
                .or_else(|| text(&info, "preferred_username"));
        }
        Ok(person)
    }

    /// The account an identity signs in to: linked already, linked now by a verified email, or new.
    async fn account_for(
        &self,
        provider: &Provider,
        person: &Person,
        sealed: Option<Vec<u8>>,
        ctx: &AuditContext,
    ) -> std::result::Result<UserRow, Refused> {
        let id = provider.id();
        let pname = &provider.config.name;
        let now = Millis::now();
        if let Some(identity) = self.store.identity_by_subject(id, &person.subject).await? {
            self.store
                .identity_used(&identity.id, now, sealed.as_deref())
                .await?;
            return self
                .users
                .user(&identity.user_id)
                .await?
                .map(|u| (*u).clone())
                .ok_or_else(|| Refused::new("disabled", "This account cannot sign in."));
        }
        let email = person
            .email
            .as_deref()
            .and_then(|e| parse_email(e).ok())
            .ok_or_else(|| {
                Refused::new(
                    "no_email",
                    format!(
                        "{pname} did not share an email address with us, so no account can be made."
                    ),
                )
            })?;
        if let Some(existing) = self.store.user_by_email_key(&email.key()).await? {
            let allowed = provider.config.link_by_email
                && person.email_verified
                && existing.email_verified_at.is_some();
            if !allowed {
                let reason = if !person.email_verified {
                    "email_unverified_upstream"
                } else if existing.email_verified_at.is_none() {
                    "email_unverified_here"
                } else {
                    "link_by_email_off"
                };
                return Err(Refused::new(
                    reason,
                    format!(
                        "An account with this email address already exists. Sign in with your password, then link {pname} from your account page."
                    ),
                ));
            }
            self.insert_identity(&existing.id, id, person, sealed, ctx, "email")
                .await?;
            return Ok(existing);
        }
        if self.settings.registration == Registration::Closed {
            return Err(Refused::new(
                "registration_closed",
                "There is no account for you here, and this server does not create accounts.",
            ));
        }
        let name = crate::users::service::parse_name(person.name.as_deref()).unwrap_or(None);
        let user = match insert_user(
            &self.store,
            &email,
            name,
            None,
            "",
            person.email_verified.then_some(now),
        )
        .await
        {
            Ok(u) => u,
            Err(Error::EmailTaken) => {
                return Err(Refused::new(
                    "email_taken",
                    "An account with this email address was just created. Try again.",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.audit.record(
            "user.registered",
            Some(&user.id),
            Some(&user.id),
            ctx,
            serde_json::json!({ "via": format!("upstream:{id}") }),
        );
        self.insert_identity(&user.id, id, person, sealed, ctx, "new_account")
            .await?;
        Ok(user)
    }

    async fn insert_identity(
        &self,
        user_id: &str,
        provider: &str,
        person: &Person,
        sealed: Option<Vec<u8>>,
        ctx: &AuditContext,
        how: &str,
    ) -> std::result::Result<(), Refused> {
        let now = Millis::now();
        let row = IdentityRow {
            id: IdentityId::generate().as_str().to_owned(),
            user_id: user_id.to_owned(),
            provider: provider.to_owned(),
            subject: person.subject.clone(),
            email: person.email.clone(),
            sealed_tokens: sealed,
            created_at: now.0,
            last_login_at: now.0,
        };
        match self.store.insert_identity(&row).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Refused::new(
                    "identity_taken",
                    "This sign-in is already linked to another account.",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("portcullis_identities_total", "event" => "linked").increment(1);
        self.audit.record(
            "identity.linked",
            Some(user_id),
            Some(&row.id),
            ctx,
            serde_json::json!({ "provider": provider, "how": how }),
        );
        Ok(())
    }

    /// Links the identity to the signed-in user who started the flow.
    async fn link(
        &self,
        id: &str,
        name: &str,
        user_id: &str,
        person: &Person,
        sealed: Option<Vec<u8>>,
        ctx: &AuditContext,
    ) -> std::result::Result<(), Refused> {
        if self.users.active(user_id).await?.is_none() {
            return Err(Refused::new(
                "disabled",
                "This account cannot link sign-ins.",
            ));
        }
        match self.store.identity_by_subject(id, &person.subject).await? {
            Some(existing) if existing.user_id == user_id => {
                self.store
                    .identity_used(&existing.id, Millis::now(), sealed.as_deref())
                    .await?;
                Ok(())
            }
            Some(_) => Err(Refused::new(
                "identity_taken",
                format!("This {name} account is already linked to another account here."),
            )),
            None => {
                self.insert_identity(user_id, id, person, sealed, ctx, "signed_in")
                    .await
            }
        }
    }

    /// The user's linked identities.
    pub async fn identities(&self, user_id: &str) -> Result<Vec<IdentityRow>> {
        Ok(self.store.user_identities(user_id).await?)
    }

    /// Unlinks one identity, never the last way to sign in.
    pub async fn unlink(&self, user_id: &str, identity: &str, ctx: &AuditContext) -> Result<()> {
        match self
            .store
            .unlink_identity(user_id, identity, Millis::now())
            .await?
        {
            None => Err(Error::NotFound("no such linked identity".into())),
            Some(false) => Err(Error::Conflict(
                "last_sign_in_method",
                "this is the account's only way to sign in: set a password or link another provider first".into(),
            )),
            Some(true) => {
                self.users.changed(user_id);
                metrics::counter!("portcullis_identities_total", "event" => "unlinked").increment(1);
                self.audit.record(
                    "identity.unlinked",
                    Some(user_id),
                    Some(identity),
                    ctx,
                    serde_json::json!({}),
                );
                Ok(())
            }
        }
    }
}
