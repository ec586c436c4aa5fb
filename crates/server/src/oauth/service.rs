//! The OAuth 2.0 authorization server and OpenID Provider (API.md "OAuth 2.0 and OpenID Connect"):
//! what an authorization request asks and whether it may be granted, the codes, the token endpoint's
//! grants, introspection, revocation, userinfo, discovery and logout. Rules that need no I/O are in
//! `portcullis_core::oauth`; this decides with the store, and answers in OAuth's own errors, which
//! the edges (`oauth::handlers`, `pages::authorize`) render.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::ids::{ClientId, FamilyId, SessionId, UserId};
use portcullis_core::jwt::{AccessClaims, Audience};
use portcullis_core::oauth::client::{ClientType, GrantType};
use portcullis_core::oauth::pkce::{CodeChallenge, is_valid_verifier};
use portcullis_core::principal::Principal;
use portcullis_core::ratelimit::LoginBackoff;
use portcullis_core::secrets::{OpaqueToken, TokenHash};
use portcullis_store::{
    CodeRow, NewFamily, OAuthStore, OpaqueAccessRow, ParRow, ParStore, Produced, Redemption,
    RefreshTokenStore, Store, UserRow,
};
use secrecy::SecretString;
use serde_json::{Value, json};

mod assertion;
mod device;
mod exchange;
pub mod registration;

pub use device::{DEVICE_CODE_PREFIX, DeviceAuthorization, DeviceRequest, UserCodeRefused};

use super::backchannel::Backchannel;
use super::clients::{Client, ClientAuthFailed, Clients, Presented, TokenFormat, is_resource_uri};
use super::error::{OAuthError, OAuthResult};
use super::params::Params;
use crate::apikeys::ApiKeys;
use crate::audit::{Audit, AuditContext, AuditCounts};
use crate::ratelimit::{Limiter, RateLimiter};
use crate::signing_keys::KeyRing;
use crate::tokens::{AccessGrant, REFRESH_PREFIX, Tokens};
use crate::users::Users;

/// Prefix of authorization codes.
pub const CODE_PREFIX: &str = "pac";
/// Prefix of opaque access tokens.
pub const OPAQUE_PREFIX: &str = "pat";
/// `request_uri`s of pushed requests start with this (RFC 9126 §2.2).
pub const REQUEST_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";
/// A pushed request must be used this soon (API.md: 60 s).
pub const PAR_TTL_S: i64 = 60;
/// Once opened, a pushed request waits this long for the login and consent.
pub const PAR_OPEN_S: i64 = 600;
/// Codes live this long (API.md: 60 s).
pub const CODE_TTL_S: i64 = 60;
pub const MAX_STATE_LEN: usize = 1024;
pub const MAX_NONCE_LEN: usize = 512;
pub const MAX_SCOPES: usize = 50;
pub const MAX_SCOPE_LEN: usize = 2048;
pub const MAX_RESOURCES: usize = 10;
pub const MAX_LOGIN_HINT_LEN: usize = 256;
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The scope that lets an API key or token call introspection.
pub const INTROSPECT_SCOPE: &str = "oauth:introspect";

/// How the authorization response travels back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    Query,
    FormPost,
}

/// An authorization request that named a valid client and redirect URI: from here on, errors go
/// back to the client.
#[derive(Debug, Clone)]
pub struct AuthzRequest {
    pub client: Arc<Client>,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub response_mode: ResponseMode,
    pub scopes: Vec<String>,
    pub nonce: Option<String>,
    pub code_challenge: CodeChallenge,
    pub prompt_none: bool,
    pub prompt_login: bool,
    pub prompt_consent: bool,
    pub max_age_s: Option<i64>,
    pub login_hint: Option<String>,
    pub resources: Vec<String>,
    /// A login newer than this (ms) satisfies `prompt=login` and `max_age` (set when we send the
    /// browser to log in, so that coming back does not ask again).
    pub auth_after: Option<i64>,
    /// The pushed request this came from (RFC 9126), spent by the code or the denial.
    pub par: Option<TokenHash>,
    /// RFC 9449 §10: the DPoP key the code is bound to (`dpop_jkt`, or the key of the proof sent
    /// with the pushed request).
    pub dpop_jkt: Option<String>,
}

/// An authorization request that failed.
#[derive(Debug, Clone)]
pub enum AuthzError {
    /// Client or redirect URI unknown: an error page, never a redirect (RFC 6749 §4.1.2.1).
    Page(String),
    /// Anything else: back to the client.
    Redirect(AuthzReply),
}

/// Where and how to send the browser back to the client.
#[derive(Debug, Clone)]
pub struct AuthzReply {
    pub redirect_uri: String,
    pub mode: ResponseMode,
    pub params: Vec<(&'static str, String)>,
}

/// What a browser with this request needs next.
#[derive(Debug)]
pub enum Next {
    /// To log in (again, when `force`).
    Login { force: bool },
    /// To approve the scopes.
    Consent,
    /// Nothing: a code can be issued.
    Issue,
}

/// The browser session an authorization runs in.
#[derive(Debug, Clone)]
pub struct Browser {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// When the user logged in (ms).
    pub logged_in_at: Millis,
}

/// A successful token response (RFC 6749 §5.1).
pub struct TokenResponse {
    pub access_token: String,
    /// `Bearer`, or `DPoP` for a token bound to the proof's key (RFC 9449 §5).
    pub token_type: &'static str,
    /// RFC 8693 §2.2.1 `issued_token_type`, for a token exchange.
    pub issued_token_type: Option<&'static str>,
    pub expires_in: i64,
    pub scope: String,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenResponse([redacted])")
    }
}

/// What [`OAuth::user_tokens`] issues from.
struct UserGrant<'a> {
    user: &'a UserRow,
    scope: &'a str,
    session_id: Option<String>,
    /// The requested resources; empty: the client's audiences.
    audiences: Vec<String>,
    auth_time: i64,
    nonce: Option<&'a str>,
    jti: String,
    family_id: Option<FamilyId>,
    now: Millis,
    /// The DPoP key the tokens are bound to (the access token always; the refresh token for a
    /// public client, RFC 9449 §5).
    jkt: Option<String>,
}

/// Who may call introspection.
pub enum Introspector {
    /// A confidential client: about tokens issued to it.
    Client(Arc<Client>),
    /// An API key or token with scope `oauth:introspect`: about any token.
    Principal(Principal),
}

/// The server's OAuth configuration beyond clients' own.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// `oauth_device_poll_interval_s`.
    pub device_poll_interval_s: i64,
    /// `oauth_require_par`: every client must push its authorization requests.
    pub require_par: bool,
    /// `oauth_dynamic_registration`.
    pub dynamic_registration: bool,
    /// SHA-256 of `oauth_registration_token`, the initial access token registrations need.
    pub registration_token_hash: Option<TokenHash>,
    /// Registrations per address.
    pub registration_rate: portcullis_core::ratelimit::RatePolicy,
    /// Redis, when several nodes share the client-assertion replay cache and the limits.
    pub redis: Option<Arc<portcullis_kv::redis::Redis>>,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            device_poll_interval_s: 5,
            require_par: false,
            dynamic_registration: false,
            registration_token_hash: None,
            registration_rate: registration::registration_rate(10, 3600),
            redis: None,
        }
    }
}

pub struct OAuth {
    settings: OAuthSettings,
    /// `jti`s of client assertions, each good once until its `exp`.
    assertion_jtis: Arc<dyn crate::signatures::NonceCache>,
    /// The resources forward-auth route rules protect: any client may ask for tokens meant for
    /// them (RFC 8707), as RFC 9728 metadata tells clients to.
    protected_resources: Vec<String>,
    store: Store,
    pub clients: Clients,
    tokens: Arc<Tokens>,
    users: Arc<Users>,
    keys: Arc<KeyRing>,
    apikeys: Arc<ApiKeys>,
    audit: Audit,
    counts: Arc<AuditCounts>,
    issuer: String,
    /// Failed client authentications, per client and address, backing off like failed logins.
    failures: Limiter,
    backoff: LoginBackoff,
    /// Wrong user codes typed on `/device`, per address (in `failures`).
    user_code_backoff: LoginBackoff,
    /// Remembered consents by (user, client), for [`clients::CACHE_TTL`]: every authorization of a
    /// signed-in user reads one. Granting or withdrawing here drops the entry at once; another
    /// node's change applies within the TTL.
    consents: moka::sync::Cache<(UserId, ClientId), Arc<Vec<String>>>,
    backchannel: Backchannel,
}

/// The static name of an authorization error this server produces, for the PAR endpoint's JSON.
fn authz_error_code(code: &str) -> &'static str {
    [
        "invalid_request",
        "unauthorized_client",
        "unsupported_response_type",
        "invalid_scope",
        "invalid_target",
        "request_not_supported",
        "server_error",
    ]
    .into_iter()
    .find(|c| *c == code)
    .unwrap_or("invalid_request")
}

/// Whether a user's grant of `scopes` to `client` comes with a refresh token: `offline_access`, or
/// (without `openid`) the client's `refresh_token` grant.
fn issues_refresh(client: &Client, scopes: &[String]) -> bool {
    client.allows(GrantType::RefreshToken)
        && (has(scopes, "offline_access") || !has(scopes, "openid"))
}

fn token_type(jkt: Option<&str>) -> &'static str {
    if jkt.is_some() { "DPoP" } else { "Bearer" }
}

fn has(scopes: &[String], s: &str) -> bool {
    scopes.iter().any(|x| x == s)
}

fn join(scopes: &[String]) -> String {
    scopes.join(" ")
}

fn split(scope: &str) -> Vec<String> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl OAuth {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        tokens: Arc<Tokens>,
        users: Arc<Users>,
        keys: Arc<KeyRing>,
        apikeys: Arc<ApiKeys>,
        audit: Audit,
        counts: Arc<AuditCounts>,
        backoff: LoginBackoff,
        rules: super::clients::ClientRules,
        protected_resources: Vec<String>,
        settings: OAuthSettings,
    ) -> Self {
        let issuer = tokens.issuer().to_owned();
        Self {
            assertion_jtis: crate::signatures::replay_cache(
                settings.redis.as_ref(),
                &store,
                200_000,
            ),
            clients: Clients::new(store.clone(), audit.clone(), rules, settings.redis.as_ref()),
            failures: Limiter::new(
                settings.redis.as_ref(),
                std::time::Duration::from_secs(3600),
                std::time::Duration::from_millis(backoff.forget_after_ms.max(1000)),
            ),
            settings,
            protected_resources,
            backchannel: Backchannel::new(),
            store,
            tokens,
            users,
            keys,
            apikeys,
            audit,
            counts,
            issuer,
            backoff,
            user_code_backoff: LoginBackoff {
                free_failures: 10,
                base_wait_ms: 1_000,
                max_wait_ms: 15 * 60 * 1000,
                forget_after_ms: 3600 * 1000,
            },
            consents: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(super::clients::CACHE_TTL)
                .build(),
        }
    }

    /// The scopes `user` granted `client` (empty: none).
    async fn remembered(&self, user: &UserId, client: &ClientId) -> OAuthResult<Arc<Vec<String>>> {
        let key = (user.clone(), client.clone());
        if let Some(s) = self.consents.get(&key) {
            return Ok(s);
        }
        let scopes = Arc::new(
            self.store
                .consent(user, client)
                .await?
                .map(|s| split(&s))
                .unwrap_or_default(),
        );
        self.consents.insert(key, Arc::clone(&scopes));
        Ok(scopes)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    // ---- authorization requests ------------------------------------------------------------

    /// Reads an authorization request. Until client and redirect URI are known good, every error is
    /// a page; after that, a redirect to the client with `error`, `state` and `iss`.
    pub async fn authorization_request(&self, p: &Params) -> Result<AuthzRequest, AuthzError> {
        let Some(uri) = p.get("request_uri") else {
            return self.read_request(p, false).await;
        };
        // RFC 9126 §4: a pushed request; only client_id (and our own _auth_after) travel beside it.
        let expired = || {
            AuthzError::Page(
                "This sign-in request has expired or was used already. Go back to the application and start again."
                    .into(),
            )
        };
        if p.repeats("request_uri") || p.repeats("client_id") {
            return Err(AuthzError::Page(
                "The request names request_uri or client_id more than once.".into(),
            ));
        }
        let Some(client_id) = p.get("client_id") else {
            return Err(AuthzError::Page(
                "The request names no client (client_id).".into(),
            ));
        };
        let Some(random) = uri.strip_prefix(REQUEST_URI_PREFIX) else {
            return Err(expired());
        };
        let hash = TokenHash::of(random.as_bytes());
        let now = Millis::now();
        // The push was stored under the client's own id; the browser names it as the world does.
        let internal = match self.clients.get(client_id).await {
            Ok(Some(c)) => c.id.to_string(),
            _ => return Err(expired()),
        };
        let raw = match self
            .store
            .open_par(&hash, &internal, now, now.plus_secs(PAR_OPEN_S))
            .await
        {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(expired()),
            Err(_) => {
                return Err(AuthzError::Page(
                    "The server could not read the request; try again.".into(),
                ));
            }
        };
        let extra: Vec<(&str, String)> = p
            .get("_auth_after")
            .map(|v| ("_auth_after", v.to_owned()))
            .into_iter()
            .collect();
        let pushed = Params::parse(raw.as_bytes())
            .and_then(|q| Params::parse(q.encode_without(&["_auth_after"], &extra).as_bytes()))
            .map_err(|_| expired())?;
        let mut req = self.read_request(&pushed, true).await?;
        req.par = Some(hash);
        Ok(req)
    }

    /// RFC 9126 §2: checks a pushed request as its authorization request would be, and keeps it for
    /// 60 s. Errors are JSON (nothing redirects from here).
    pub async fn push_authorization_request(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
        dpop: Option<&str>,
    ) -> OAuthResult<(String, i64)> {
        if p.get("request_uri").is_some() {
            return Err(OAuthError::invalid_request(
                "a pushed request cannot itself name a request_uri",
            ));
        }
        // RFC 9449 §10.1: a proof with the push binds the code to its key (as dpop_jkt would).
        let mut extra = vec![("client_id", client.id.to_string())];
        if let Some(jkt) = dpop {
            if p.get("dpop_jkt").is_some_and(|j| j != jkt) {
                return Err(OAuthError::new(
                    "invalid_dpop_proof",
                    "dpop_jkt is not the thumbprint of the DPoP proof's key",
                ));
            }
            if p.get("dpop_jkt").is_none() {
                extra.push(("dpop_jkt", jkt.to_owned()));
            }
        }
        let encoded = p.encode_without(
            &[
                "client_id",
                "client_secret",
                "client_assertion",
                "client_assertion_type",
                "_auth_after",
            ],
            &extra,
        );
        let params = Params::parse(encoded.as_bytes())?;
        if let Err(e) = self.read_request(&params, true).await {
            return Err(match e {
                AuthzError::Page(text) => OAuthError::invalid_request(text),
                AuthzError::Redirect(reply) => {
                    let get = |k: &str| {
                        reply
                            .params
                            .iter()
                            .find(|(n, _)| *n == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    OAuthError::new(authz_error_code(&get("error")), get("error_description"))
                }
            });
        }
        let random = OpaqueToken::generate("par").map_err(|_| OAuthError::server_error())?;
        let random = random.expose().to_owned();
        let now = Millis::now();
        self.store
            .insert_par(&ParRow {
                request_hash: TokenHash::of(random.as_bytes()),
                client_id: client.id.to_string(),
                params: encoded,
                created_at: now,
                expires_at: now.plus_secs(PAR_TTL_S),
            })
            .await?;
        metrics::counter!("portcullis_oauth_par_total", "outcome" => "pushed").increment(1);
        self.counts.record(
            "oauth.par_pushed",
            Some(client.id.as_str()),
            json!({}),
            "ips",
            ctx.ip.as_deref(),
        );
        Ok((format!("{REQUEST_URI_PREFIX}{random}"), PAR_TTL_S))
    }

    /// Reads the parameters of an authorization request (`pushed`: they came through PAR).
    async fn read_request(&self, p: &Params, pushed: bool) -> Result<AuthzRequest, AuthzError> {
        for name in ["client_id", "redirect_uri"] {
            if p.repeats(name) {
                return Err(AuthzError::Page(format!(
                    "The request names {name} more than once."
                )));
            }
        }
        let Some(client_id) = p.get("client_id") else {
            return Err(AuthzError::Page(
                "The request names no client (client_id).".into(),
            ));
        };
        let client = match self.clients.get(client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(AuthzError::Page(
                    "The application that sent you here is not registered with this server.".into(),
                ));
            }
            Err(_) => {
                return Err(AuthzError::Page(
                    "The server could not read the request; try again.".into(),
                ));
            }
        };
        let redirect_uri = match p.get("redirect_uri") {
            Some(r) if client.redirect_uri(r).is_some() => r.to_owned(),
            Some(_) => {
                return Err(AuthzError::Page(
                    "The address this application asked to return to is not one it registered."
                        .into(),
                ));
            }
            None => match client.redirect_uris.as_slice() {
                [only] if !only.is_loopback() => only.as_str().to_owned(),
                _ => {
                    return Err(AuthzError::Page(
                        "The request names no redirect_uri, and this application registered more than one (or a loopback one).".into(),
                    ));
                }
            },
        };
        let state = p.get("state").map(str::to_owned);
        let mode = match p.get("response_mode") {
            Some("form_post") => ResponseMode::FormPost,
            _ => ResponseMode::Query,
        };
        let fail = |code: &'static str, description: String| {
            AuthzError::Redirect(self.error_reply(
                &redirect_uri,
                mode,
                state.as_deref(),
                code,
                &description,
            ))
        };
        if let Some(name) = p.duplicated() {
            return Err(fail(
                "invalid_request",
                format!("{name} is given more than once"),
            ));
        }
        if state.as_ref().is_some_and(|s| s.len() > MAX_STATE_LEN) {
            return Err(fail(
                "invalid_request",
                format!("state is at most {MAX_STATE_LEN} bytes"),
            ));
        }
        match p.get("response_mode") {
            None | Some("query") | Some("form_post") => {}
            Some(_) => {
                return Err(fail(
                    "invalid_request",
                    "response_mode is query or form_post".into(),
                ));
            }
        }
        if p.get("request").is_some() {
            return Err(fail(
                "request_not_supported",
                "request objects are not supported".into(),
            ));
        }
        if p.get("request_uri").is_some() {
            return Err(fail(
                "invalid_request",
                "a pushed request cannot itself name a request_uri".into(),
            ));
        }
        if !pushed && (client.require_par || self.settings.require_par) {
            return Err(fail(
                "invalid_request",
                "this client pushes its authorization requests to /oauth2/par first (RFC 9126)"
                    .into(),
            ));
        }
        match p.get("response_type") {
            Some("code") => {}
            None => {
                return Err(fail(
                    "invalid_request",
                    "response_type is required (code)".into(),
                ));
            }
            Some(_) => {
                return Err(fail(
                    "unsupported_response_type",
                    "only response_type=code is served".into(),
                ));
            }
        }
        if !client.allows(GrantType::AuthorizationCode) {
            return Err(fail(
                "unauthorized_client",
                "this client may not use the authorization code grant".into(),
            ));
        }
        let challenge =
            match CodeChallenge::parse(p.get("code_challenge"), p.get("code_challenge_method")) {
                Ok(c) => c,
                Err(e) => return Err(fail("invalid_request", e.to_string())),
            };
        let scope_raw = p.get("scope").unwrap_or_default();
        if scope_raw.len() > MAX_SCOPE_LEN {
            return Err(fail(
                "invalid_scope",
                format!("scope is at most {MAX_SCOPE_LEN} bytes"),
            ));
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in scope_raw.split(' ').filter(|s| !s.is_empty()) {
            if !client.may_ask(s) {
                return Err(fail(
                    "invalid_scope",
                    format!(
                        "this client may not ask for {}",
                        s.chars().take(64).collect::<String>()
                    ),
                ));
            }
            if !has(&scopes, s) {
                scopes.push(s.to_owned());
            }
        }
        if scopes.len() > MAX_SCOPES {
            return Err(fail(
                "invalid_scope",
                format!("at most {MAX_SCOPES} scopes"),
            ));
        }
        let nonce = p.get("nonce").map(str::to_owned);
        if nonce.as_ref().is_some_and(|n| n.len() > MAX_NONCE_LEN) {
            return Err(fail(
                "invalid_request",
                format!("nonce is at most {MAX_NONCE_LEN} bytes"),
            ));
        }
        let (mut none, mut login, mut consent) = (false, false, false);
        for v in p
            .get("prompt")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
        {
            match v {
                "none" => none = true,
                "login" => login = true,
                "consent" => consent = true,
                "select_account" => {}
                _ => {
                    return Err(fail(
                        "invalid_request",
                        "prompt is none, login, consent or select_account".into(),
                    ));
                }
            }
        }
        if none && (login || consent) {
            return Err(fail(
                "invalid_request",
                "prompt=none cannot be combined with another prompt".into(),
            ));
        }
        let max_age_s = match p.get("max_age") {
            None => None,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (0..=10 * 365 * 86_400).contains(&n) => Some(n),
                _ => {
                    return Err(fail(
                        "invalid_request",
                        "max_age is a number of seconds".into(),
                    ));
                }
            },
        };
        let login_hint = match p.get("login_hint") {
            Some(h) if h.len() > MAX_LOGIN_HINT_LEN => {
                return Err(fail(
                    "invalid_request",
                    format!("login_hint is at most {MAX_LOGIN_HINT_LEN} bytes"),
                ));
            }
            other => other.map(str::to_owned),
        };
        let resources = match self.resources(&client, &p.all("resource")) {
            Ok(r) => r,
            Err(e) => return Err(fail(e.code, e.description)),
        };
        let auth_after = p.get("_auth_after").and_then(|v| v.parse::<i64>().ok());
        let dpop_jkt = match p.get("dpop_jkt") {
            None => None,
            // An RFC 7638 SHA-256 thumbprint: 43 base64url characters.
            Some(j)
                if j.len() == 43
                    && j.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Some(j.to_owned())
            }
            Some(_) => {
                return Err(fail(
                    "invalid_request",
                    "dpop_jkt is the base64url SHA-256 JWK thumbprint of a DPoP key".into(),
                ));
            }
        };
        Ok(AuthzRequest {
            client,
            redirect_uri,
            state,
            response_mode: mode,
            scopes,
            nonce,
            code_challenge: challenge,
            prompt_none: none,
            prompt_login: login,
            prompt_consent: consent,
            max_age_s,
            login_hint,
            resources,
            auth_after,
            par: None,
            dpop_jkt,
        })
    }

    /// An error answer to `req`'s client.
    pub fn refuse(&self, req: &AuthzRequest, code: &'static str, description: &str) -> AuthzReply {
        self.error_reply(
            &req.redirect_uri,
            req.response_mode,
            req.state.as_deref(),
            code,
            description,
        )
    }

    /// RFC 6749 §4.1.2.1: `error`, `error_description`, `state` when given, and `iss` (RFC 9207).
    fn error_reply(
        &self,
        redirect_uri: &str,
        mode: ResponseMode,
        state: Option<&str>,
        code: &'static str,
        description: &str,
    ) -> AuthzReply {
        let mut params = vec![
            ("error", code.to_owned()),
            ("error_description", description.to_owned()),
        ];
        if let Some(s) = state {
            params.push(("state", s.to_owned()));
        }
        params.push(("iss", self.issuer.clone()));
        AuthzReply {
            redirect_uri: redirect_uri.to_owned(),
            mode,
            params,
        }
    }

    /// What the browser must do before a code can be issued: log in, approve, or nothing. With
    /// `prompt=none`, anything but nothing is an error for the client.
    pub async fn next_step(
        &self,
        req: &AuthzRequest,
        browser: Option<&Browser>,
    ) -> Result<Next, AuthzReply> {
        let Some(b) = browser else {
            return if req.prompt_none {
                Err(self.refuse(req, "login_required", "the user is not logged in"))
            } else {
                Ok(Next::Login { force: false })
            };
        };
        let fresh = req
            .auth_after
            .is_some_and(|after| b.logged_in_at.0 >= after);
        let too_old = req
            .max_age_s
            .is_some_and(|age| Millis::now().0 - b.logged_in_at.0 > age.saturating_mul(1000));
        if (req.prompt_login || too_old) && !fresh {
            return if req.prompt_none {
                Err(self.refuse(req, "login_required", "the login is older than max_age"))
            } else {
                Ok(Next::Login { force: true })
            };
        }
        if req.client.skip_consent && !req.prompt_consent {
            return Ok(Next::Issue);
        }
        let remembered = self
            .remembered(&b.user_id, &req.client.id)
            .await
            .map_err(|_| {
                self.refuse(req, "server_error", "the server could not read the consent")
            })?;
        let covered = req.scopes.iter().all(|s| has(&remembered, s));
        if covered && !req.prompt_consent {
            return Ok(Next::Issue);
        }
        if req.prompt_none {
            return Err(self.refuse(
                req,
                "consent_required",
                "the user has not approved these scopes",
            ));
        }
        Ok(Next::Consent)
    }

    /// The user approved: remembers the consent (with what was granted before) and issues a code.
    pub async fn approve(
        &self,
        req: &AuthzRequest,
        b: &Browser,
        ctx: &AuditContext,
    ) -> OAuthResult<AuthzReply> {
        let mut granted = self
            .store
            .consent(&b.user_id, &req.client.id)
            .await?
            .map(|s| split(&s))
            .unwrap_or_default();
        for s in &req.scopes {
            if !has(&granted, s) {
                granted.push(s.clone());
            }
        }
        self.store
            .grant_consent(&b.user_id, &req.client.id, &join(&granted), Millis::now())
            .await?;
        self.consents
            .invalidate(&(b.user_id.clone(), req.client.id.clone()));
        self.audit.record(
            "oauth.consent_given",
            Some(b.user_id.as_str()),
            Some(req.client.id.as_str()),
            ctx,
            json!({ "scope": join(&req.scopes) }),
        );
        self.issue_code(req, b, ctx).await
    }

    /// The user said no.
    pub async fn deny(&self, req: &AuthzRequest, b: &Browser, ctx: &AuditContext) -> AuthzReply {
        if let Some(h) = &req.par
            && let Err(e) = self.store.spend_par(h, Millis::now()).await
        {
            tracing::warn!(error = %e, "could not spend a pushed request");
        }
        self.audit.record(
            "oauth.consent_denied",
            Some(b.user_id.as_str()),
            Some(req.client.id.as_str()),
            ctx,
            json!({}),
        );
        self.refuse(req, "access_denied", "the user denied the request")
    }

    /// A code for `req`, bound to its client, redirect URI, PKCE challenge, the browser's session
    /// and login time; the reply carries it with `state` and `iss`.
    pub async fn issue_code(
        &self,
        req: &AuthzRequest,
        b: &Browser,
        ctx: &AuditContext,
    ) -> OAuthResult<AuthzReply> {
        let now = Millis::now();
        // A pushed request leads to one code (RFC 9126 §4: single use).
        if let Some(h) = &req.par
            && !self.store.spend_par(h, now).await?
        {
            return Err(OAuthError::invalid_request(
                "this request_uri was used already",
            ));
        }
        let code = OpaqueToken::generate(CODE_PREFIX).map_err(|_| OAuthError::server_error())?;
        let row = CodeRow {
            code_hash: code.hash(),
            client_id: req.client.id.clone(),
            user_id: b.user_id.clone(),
            session_id: Some(b.session_id.to_string()),
            redirect_uri: req.redirect_uri.clone(),
            code_challenge: req.code_challenge.as_str().to_owned(),
            scope: join(&req.scopes),
            resources: serde_json::to_string(&req.resources).unwrap_or_else(|_| "[]".into()),
            nonce: req.nonce.clone(),
            auth_time: b.logged_in_at.as_secs(),
            created_at: now,
            expires_at: now.plus_secs(CODE_TTL_S),
            redeemed_at: None,
            dpop_jkt: req.dpop_jkt.clone(),
        };
        self.store.insert_code(&row).await?;
        metrics::counter!("portcullis_oauth_codes_total", "outcome" => "issued").increment(1);
        self.audit.record(
            "oauth.code_issued",
            Some(b.user_id.as_str()),
            Some(req.client.id.as_str()),
            ctx,
            json!({ "scope": row.scope }),
        );
        let mut params = vec![("code", code.expose().to_owned())];
        if let Some(s) = &req.state {
            params.push(("state", s.clone()));
        }
        params.push(("iss", self.issuer.clone()));
        Ok(AuthzReply {
            redirect_uri: req.redirect_uri.clone(),
            mode: req.response_mode,
            params,
        })
    }

    /// The scopes of `req` with a word for the consent page each.
    pub fn describe(scope: &str) -> &'static str {
        match scope {
            "openid" => "Know who you are (your account id)",
            "profile" => "See your name",
            "email" => "See your email address",
            "offline_access" => "Stay signed in when you are away (a refresh token)",
            _ => "",
        }
    }

    /// The audiences a request may name (RFC 8707): each an absolute URI the client registered as an
    /// audience, or the server's configured audience.
    fn resources(&self, client: &Client, requested: &[&str]) -> OAuthResult<Vec<String>> {
        if requested.len() > MAX_RESOURCES {
            return Err(OAuthError::invalid_target(format!(
                "at most {MAX_RESOURCES} resources"
            )));
        }
        let mut out: Vec<String> = Vec::new();
        for r in requested {
            if !is_resource_uri(r) {
                return Err(OAuthError::invalid_target(
                    "a resource is an absolute URI without a fragment",
                ));
            }
            let allowed = client.audiences.iter().any(|a| a == r)
                || *r == self.tokens.audience()
                || self.protected_resources.iter().any(|p| p == r);
            if !allowed {
                return Err(OAuthError::invalid_target(
                    "this client may not ask for that resource",
                ));
            }
            if !has(&out, r) {
                out.push((*r).to_owned());
            }
        }
        Ok(out)
    }

    // ---- client authentication ------------------------------------------------------------------

    /// Authenticates the client of a token-endpoint request: `Authorization: Basic` (`basic`, the
    /// decoded id and secret), or `client_id` with or without `client_secret` in the body. Failed
    /// attempts back off per client and address, like failed logins.
    pub async fn authenticate_client(
        &self,
        basic: Option<(String, SecretString)>,
        p: &Params,
        ip: Option<std::net::IpAddr>,
        ctx: &AuditContext,
    ) -> OAuthResult<Arc<Client>> {
        let body_id = p.get("client_id");
        let body_secret = p.get("client_secret");
        if p.get("client_assertion").is_some() || p.get("client_assertion_type").is_some() {
            return self
                .authenticate_by_assertion(basic.is_some() || body_secret.is_some(), p, ip, ctx)
                .await;
        }
        let presented = match (&basic, body_id, body_secret) {
            (Some(_), _, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method, not Basic and client_secret both",
                ));
            }
            (Some((id, _)), Some(body), None) if body != id => {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the Basic credentials",
                ));
            }
            (Some((id, secret)), _, None) => Presented::Basic {
                id: id.clone(),
                secret: secret.clone(),
            },
            (None, Some(id), Some(secret)) => Presented::Post {
                id,
                secret: SecretString::from(secret.to_owned()),
            },
            (None, Some(id), None) => Presented::None { id },
            (None, None, _) => return Err(OAuthError::invalid_client(false)),
        };
        let (id, is_basic) = match &presented {
            Presented::Basic { id, .. } => (id.clone(), true),
            Presented::Post { id, .. } | Presented::None { id } => ((*id).to_owned(), false),
        };
        // Our ids are short; a metadata document's is its URL, up to 2048 bytes.
        if id.len() > super::clients::MAX_URL_LEN {
            return Err(OAuthError::invalid_client(is_basic));
        }
        let key = format!(
            "oauth-client:{id}:{}",
            ip.map(|i| i.to_string()).unwrap_or_default()
        );
        let wait = self.failures.reserve_failure(&key, self.backoff).await;
        if wait > 0 {
            metrics::counter!("portcullis_oauth_client_auth_total", "outcome" => "throttled")
                .increment(1);
            let mut e = OAuthError::invalid_client(is_basic);
            e.status = 429;
            e.description = format!(
                "too many failed client authentications; try again in {} s",
                wait.div_ceil(1000)
            );
            return Err(e);
        }
        match self.clients.authenticate(presented).await {
            Ok(client) => {
                // Clearing the run also takes back the failure reserved for this attempt.
                self.failures.clear_failures(&key).await;
                Ok(client)
            }
            Err(ClientAuthFailed {
                basic,
                client_id,
                reason,
            }) => {
                metrics::counter!("portcullis_oauth_client_auth_total", "outcome" => reason)
                    .increment(1);
                self.audit.record(
                    "oauth.client_auth_failed",
                    None,
                    client_id.as_deref(),
                    ctx,
                    json!({ "reason": reason }),
                );
                Err(OAuthError::invalid_client(basic))
            }
        }
    }

    /// `private_key_jwt`: the assertion names the client, whose keys verify it; failures back off
    /// as any other client authentication's.
    async fn authenticate_by_assertion(
        &self,
        other_method: bool,
        p: &Params,
        ip: Option<std::net::IpAddr>,
        ctx: &AuditContext,
    ) -> OAuthResult<Arc<Client>> {
        if other_method {
            return Err(OAuthError::invalid_request(
                "use one client authentication method: a client_assertion, or a secret",
            ));
        }
        if p.get("client_assertion_type") != Some(assertion::JWT_BEARER) {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type is {}",
                assertion::JWT_BEARER
            )));
        }
        let raw = p
            .get("client_assertion")
            .ok_or_else(|| OAuthError::invalid_request("client_assertion is required"))?;
        let Some(id) = assertion::asserted_client(raw) else {
            return Err(OAuthError::invalid_client(false));
        };
        if p.get("client_id").is_some_and(|body| body != id) {
            return Err(OAuthError::invalid_request(
                "client_id differs from the client_assertion's sub",
            ));
        }
        let key = format!(
            "oauth-client:{id}:{}",
            ip.map(|i| i.to_string()).unwrap_or_default()
        );
        let wait = self.failures.reserve_failure(&key, self.backoff).await;
        if wait > 0 {
            let mut e = OAuthError::invalid_client(false);
            e.status = 429;
            e.description = format!(
                "too many failed client authentications; try again in {} s",
                wait.div_ceil(1000)
            );
            return Err(e);
        }
        match self.assertion_client(&id, raw).await {
            Ok(client) => {
                self.failures.clear_failures(&key).await;
                Ok(client)
            }
            Err(ClientAuthFailed {
                client_id, reason, ..
            }) => {
                metrics::counter!("portcullis_oauth_client_auth_total", "outcome" => reason)
                    .increment(1);
                self.audit.record(
                    "oauth.client_auth_failed",
                    None,
                    client_id.as_deref(),
                    ctx,
                    json!({ "reason": reason }),
                );
                Err(OAuthError::invalid_client(false))
            }
        }
    }

    // ---- the token endpoint ---------------------------------------------------------------------

    /// `POST /oauth2/token` once the client is known.
    pub async fn token(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
        dpop: Option<&str>,
    ) -> OAuthResult<TokenResponse> {
        p.once()?;
        let grant = match p.get("grant_type") {
            None => return Err(OAuthError::invalid_request("grant_type is required")),
            Some(raw) => match GrantType::parse(raw) {
                Some(
                    g @ (GrantType::AuthorizationCode
                    | GrantType::RefreshToken
                    | GrantType::ClientCredentials
                    | GrantType::DeviceCode
                    | GrantType::TokenExchange),
                ) => g,
                _ => {
                    return Err(OAuthError::new(
                        "unsupported_grant_type",
                        "grant_type is authorization_code, refresh_token, client_credentials, urn:ietf:params:oauth:grant-type:device_code or urn:ietf:params:oauth:grant-type:token-exchange",
                    ));
                }
            },
        };
        if !client.allows(grant) {
            return Err(OAuthError::unauthorized_client(format!(
                "this client may not use the {} grant",
                grant.as_str()
            )));
        }
        let answer = match grant {
            GrantType::AuthorizationCode => self.code_grant(client, p, ctx, dpop).await,
            GrantType::RefreshToken => self.refresh_grant(client, p, ctx, dpop).await,
            GrantType::DeviceCode => self.device_grant(client, p, ctx, dpop).await,
            GrantType::TokenExchange => self.exchange_grant(client, p, ctx, dpop).await,
            _ => self.client_credentials_grant(client, p, ctx, dpop).await,
        };
        let outcome = match &answer {
            Ok(_) => "issued",
            Err(e) => e.code,
        };
        metrics::counter!("portcullis_oauth_tokens_total", "grant" => grant.as_str(), "outcome" => outcome).increment(1);
        answer
    }

    async fn code_grant(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
        dpop: Option<&str>,
    ) -> OAuthResult<TokenResponse> {
        let code = p
            .bounded("code", 256)?
            .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
        let verifier = p
            .bounded("code_verifier", 256)?
            .ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
        let redirect_uri = p.bounded("redirect_uri", 4096)?;
        let bad = || OAuthError::invalid_grant("the authorization code is not valid");
        let code = OpaqueToken::parse(CODE_PREFIX, code).map_err(|_| bad())?;
        let hash = code.hash();
        let now = Millis::now();
        // Omitted: only when the client has exactly one redirect URI (it was implied).
        let redirect_uri = match (redirect_uri, client.redirect_uris.as_slice()) {
            (Some(r), _) => r,
            (None, [only]) => only.as_str(),
            (None, _) => return Err(OAuthError::invalid_request("redirect_uri is required")),
        };
        let challenge = CodeChallenge::of_verifier(verifier);
        // The family and access token this redemption will make are named before it happens, so
        // that a replay racing it can revoke them (the family may never be made: then there is
        // nothing to revoke).
        let family_id = FamilyId::generate();
        let jti = Tokens::new_jti(now);
        let produced = Produced {
            family_id: Some(family_id.to_string()),
            access_jti: jti.clone(),
            access_exp: now.as_secs() + self.tokens.access_ttl_s(),
        };
        let expect = Redemption {
            client_id: &client.id,
            redirect_uri,
            code_challenge: challenge.as_str(),
        };
        // The happy path is this one statement (client, redirect URI, verifier, expiry and single
        // use all in its WHERE); when it matches nothing, the code is read to say why.
        let redeemed = if is_valid_verifier(verifier) {
            self.store
                .redeem_code(&hash, now, &expect, &produced)
                .await?
        } else {
            None
        };
        let Some(row) = redeemed else {
            let row = self.store.code(&hash).await?.ok_or_else(bad)?;
            let reason = if row.client_id != client.id {
                "other_client"
            } else if row.redeemed_at.is_some() {
                // A second redemption (or one that lost the race to the first): it revokes what the
                // first produced.
                self.replayed(&hash, client, ctx).await?;
                return Err(bad());
            } else if row.expires_at <= now {
                "expired"
            } else if row.redirect_uri != redirect_uri {
                "redirect_uri_mismatch"
            } else {
                "wrong_verifier"
            };
            metrics::counter!("portcullis_oauth_codes_total", "outcome" => reason).increment(1);
            self.audit.record(
                "oauth.code_refused",
                Some(row.user_id.as_str()),
                Some(client.id.as_str()),
                ctx,
                json!({ "reason": reason }),
            );
            return Err(bad());
        };
        // RFC 9449 §10: a bound code is redeemed only with a proof by its key.
        if let Some(bound) = &row.dpop_jkt
            && dpop != Some(bound.as_str())
        {
            self.audit.record(
                "oauth.code_refused",
                Some(row.user_id.as_str()),
                Some(client.id.as_str()),
                ctx,
                json!({ "reason": "dpop_key" }),
            );
            return Err(OAuthError::new(
                "invalid_dpop_proof",
                "this code is bound to a DPoP key: send a proof made with it",
            ));
        }
        let granted: Vec<String> = serde_json::from_str(&row.resources).unwrap_or_default();
        let asked = p.all("resource");
        let audiences = if asked.is_empty() {
            granted.clone()
        } else {
            let asked = self.resources(client, &asked)?;
            if !granted.is_empty() && !asked.iter().all(|a| has(&granted, a)) {
                return Err(OAuthError::invalid_target(
                    "the resource was not part of the authorization",
                ));
            }
            asked
        };
        let Some(user) = self.users.active(row.user_id.as_str()).await? else {
            return Err(bad());
        };
        let refresh = issues_refresh(client, &split(&row.scope));
        let answer = self
            .user_tokens(
                client,
                UserGrant {
                    user: &user,
                    scope: &row.scope,
                    session_id: row.session_id.clone(),
                    audiences,
                    auth_time: row.auth_time,
                    nonce: row.nonce.as_deref(),
                    jti,
                    family_id: refresh.then_some(family_id.clone()),
                    now,
                    jkt: dpop.map(str::to_owned),
                },
            )
            .await?;
        // A replay that raced this redemption found the family not yet stored: end it now.
        if refresh && self.store.code_replayed(&hash).await? {
            self.store
                .revoke_family(family_id.as_str(), Millis::now(), "code_replayed")
                .await?;
        }
        metrics::counter!("portcullis_oauth_codes_total", "outcome" => "redeemed").increment(1);
        self.audit.record(
            "oauth.code_redeemed",
            Some(user.id.as_str()),
            Some(client.id.as_str()),
            ctx,
            json!({ "scope": row.scope, "refresh": refresh }),
        );
        Ok(answer)
    }

    /// The tokens of a grant a user made (a code, a device approval): the access token, a refresh
    /// token when `family_id` is named, an ID token when `openid` was granted.
    async fn user_tokens(&self, client: &Client, g: UserGrant<'_>) -> OAuthResult<TokenResponse> {
        let scopes = split(g.scope);
        let audiences = if g.audiences.is_empty() {
            client.audiences.clone()
        } else {
            g.audiences
        };
        let (access_token, expires_in) = self
            .access_token(
                client,
                &g.user.id,
                g.scope,
                g.session_id.clone(),
                audiences.clone(),
                g.jti,
                g.family_id.as_ref().map(|f| f.to_string()),
                g.now,
                g.jkt.as_deref(),
            )
            .await?;
        let refresh_token = match &g.family_id {
            Some(id) => {
                let family = NewFamily {
                    id: id.clone(),
                    user_id: g.user.id.clone(),
                    client_id: client.id.to_string(),
                    scope: g.scope.to_owned(),
                    session_id: g.session_id.clone(),
                    created_at: g.now,
                    expires_at: g.now.plus_secs(self.tokens.family_ttl_s()),
                    audiences: Some(
                        serde_json::to_string(&audiences).unwrap_or_else(|_| "[]".into()),
                    ),
                    auth_time: Some(g.auth_time),
                    dpop_jkt: g
                        .jkt
                        .clone()
                        .filter(|_| client.client_type == ClientType::Public),
                };
                Some(self.tokens.start_family(&family).await?.0)
            }
            None => None,
        };
        let id_token = if has(&scopes, "openid") {
            Some(self.id_token(
                client,
                g.user,
                &scopes,
                g.auth_time,
                g.nonce,
                g.session_id.as_deref(),
                &access_token,
                g.now,
            )?)
        } else {
            None
        };
        Ok(TokenResponse {
            issued_token_type: None,
            token_type: token_type(g.jkt.as_deref()),
            access_token,
            expires_in,
            scope: g.scope.to_owned(),
            refresh_token,
            id_token,
        })
    }

    /// A code presented again: everything its first redemption produced is revoked (RFC 6749
    /// §4.1.2, RFC 9700 §4.2.4).
    async fn replayed(
        &self,
        hash: &TokenHash,
        client: &Client,
        ctx: &AuditContext,
    ) -> OAuthResult<()> {
        let Some(r) = self.store.replay_code(hash, Millis::now()).await? else {
            return Ok(());
        };
        if let Some(family) = &r.family_id {
            self.store
                .revoke_family(family, Millis::now(), "code_replayed")
                .await?;
        }
        if let (Some(jti), Some(exp)) = (&r.access_jti, r.access_exp) {
            self.tokens.deny_access(jti, exp).await?;
        }
        metrics::counter!("portcullis_oauth_codes_total", "outcome" => "replayed").increment(1);
        tracing::warn!(client = %client.id, user = %r.user_id, "authorization code replayed; its tokens are revoked");
        self.audit.record(
            "oauth.code_replayed",
            Some(&r.user_id),
            Some(client.id.as_str()),
            ctx,
            json!({ "family_id": r.family_id }),
        );
        Ok(())
    }

    async fn refresh_grant(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
        dpop: Option<&str>,
    ) -> OAuthResult<TokenResponse> {
        let raw = p
            .bounded("refresh_token", 256)?
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let bad = || OAuthError::invalid_grant("the refresh token is not valid");
        let presented = OpaqueToken::parse(REFRESH_PREFIX, raw).map_err(|_| bad())?;
        let (family, _) = self
            .store
            .refresh_token_family(&presented.hash(), Millis::now())
            .await?
            .ok_or_else(bad)?;
        // Another client's token is refused before anything is spent or revoked.
        if family.client_id != client.id.as_str() {
            self.audit.record(
                "oauth.refresh_refused",
                Some(&family.user_id),
                Some(client.id.as_str()),
                ctx,
                json!({ "reason": "other_client" }),
            );
            return Err(bad());
        }
        // A bound family (a public client's, RFC 9449 §5) rotates only with a proof by its key;
        // checked before anything is spent, so a stolen token alone cannot end the family.
        if let Some(bound) = &family.dpop_jkt
            && !dpop.is_some_and(|jkt| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    jkt.as_bytes(),
                    bound.as_bytes(),
                ))
            })
        {
            self.audit.record(
                "oauth.refresh_refused",
                Some(&family.user_id),
                Some(client.id.as_str()),
                ctx,
                json!({ "reason": "dpop_key" }),
            );
            return Err(OAuthError::new(
                "invalid_dpop_proof",
                "this refresh token is bound to a DPoP key: send a proof made with it",
            ));
        }
        let granted = split(&family.scope);
        let scopes = match p.bounded("scope", MAX_SCOPE_LEN)? {
            None => granted.clone(),
            Some(asked) => {
                let asked = split(asked);
                if let Some(extra) = asked.iter().find(|s| !has(&granted, s)) {
                    return Err(OAuthError::invalid_scope(format!(
                        "{} was not granted; a refresh may narrow the scope, never widen it",
                        extra.chars().take(64).collect::<String>()
                    )));
                }
                asked
            }
        };
        let rotated = self
            .tokens
            .rotate(&SecretString::from(raw.to_owned()), ctx)
            .await
            .map_err(OAuthError::from)?;
        let user = self
            .users
            .active(&rotated.family.user_id)
            .await?
            .ok_or_else(bad)?;
        let audiences: Vec<String> = rotated
            .family
            .audiences
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        let audiences = if audiences.is_empty() {
            client.audiences.clone()
        } else {
            audiences
        };
        let now = rotated.now;
        let scope = join(&scopes);
        let (access_token, expires_in) = self
            .access_token(
                client,
                &user.id,
                &scope,
                rotated.family.session_id.clone(),
                audiences,
                Tokens::new_jti(now),
                Some(rotated.family.id.clone()),
                now,
                dpop,
            )
            .await?;
        let id_token = if has(&scopes, "openid") {
            let auth_time = rotated.family.auth_time.unwrap_or(now.as_secs());
            Some(self.id_token(
                client,
                &user,
                &scopes,
                auth_time,
                None,
                rotated.family.session_id.as_deref(),
                &access_token,
                now,
            )?)
        } else {
            None
        };
        Ok(TokenResponse {
            issued_token_type: None,
            token_type: token_type(dpop),
            access_token,
            expires_in,
            scope,
            refresh_token: Some(rotated.refresh_token),
            id_token,
        })
    }

    async fn client_credentials_grant(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
        dpop: Option<&str>,
    ) -> OAuthResult<TokenResponse> {
        if client.client_type != ClientType::Confidential {
            return Err(OAuthError::unauthorized_client(
                "client_credentials is for confidential clients",
            ));
        }
        let own: Vec<String> = client
            .scopes
            .iter()
            .filter(|s| !super::clients::OIDC_SCOPES.contains(&s.as_str()))
            .cloned()
            .collect();
        let scopes = match p.bounded("scope", MAX_SCOPE_LEN)? {
            None => own,
            Some(asked) => {
                let asked = split(asked);
                if asked.len() > MAX_SCOPES {
                    return Err(OAuthError::invalid_scope(format!(
                        "at most {MAX_SCOPES} scopes"
                    )));
                }
                if let Some(bad) = asked.iter().find(|s| !has(&own, s)) {
                    return Err(OAuthError::invalid_scope(format!(
                        "this client may not ask for {}",
                        bad.chars().take(64).collect::<String>()
                    )));
                }
                asked
            }
        };
        let audiences = self.resources(client, &p.all("resource"))?;
        let audiences = if audiences.is_empty() {
            client.audiences.clone()
        } else {
            audiences
        };
        let now = Millis::now();
        let scope = join(&scopes);
        let (access_token, expires_in) = self
            .access_token(
                client,
                client.id.as_str(),
                &scope,
                None,
                audiences,
                Tokens::new_jti(now),
                None,
                now,
                dpop,
            )
            .await?;
        // Machine tokens are many: counted per client and interval, not written one by one.
        self.counts.record(
            "oauth.token_issued",
            Some(client.id.as_str()),
            json!({ "grant": "client_credentials" }),
            "ips",
            ctx.ip.as_deref(),
        );
        Ok(TokenResponse {
            issued_token_type: None,
            token_type: token_type(dpop),
            access_token,
            expires_in,
            scope,
            refresh_token: None,
            id_token: None,
        })
    }

    /// An access token in the client's format: an RFC 9068 JWT, or an opaque `pat_…` stored by hash.
    #[allow(clippy::too_many_arguments)]
    async fn access_token(
        &self,
        client: &Client,
        subject: &str,
        scope: &str,
        sid: Option<String>,
        audiences: Vec<String>,
        jti: String,
        family_id: Option<String>,
        now: Millis,
        jkt: Option<&str>,
    ) -> OAuthResult<(String, i64)> {
        let ttl = self.tokens.access_ttl_s();
        match client.token_format {
            TokenFormat::Jwt => {
                let grant = AccessGrant {
                    subject: subject.to_owned(),
                    client_id: client.public_id.clone(),
                    scope: scope.to_owned(),
                    sid,
                    audiences,
                    jkt: jkt.map(str::to_owned),
                    act: None,
                };
                let (token, _) = self.tokens.sign_access(grant, jti, now)?;
                Ok((token, ttl))
            }
            TokenFormat::Opaque => {
                let token =
                    OpaqueToken::generate(OPAQUE_PREFIX).map_err(|_| OAuthError::server_error())?;
                let aud = if audiences.is_empty() {
                    vec![self.tokens.audience().to_owned()]
                } else {
                    audiences
                };
                let row = OpaqueAccessRow {
                    token_hash: token.hash(),
                    jti,
                    client_id: client.id.clone(),
                    subject: subject.to_owned(),
                    scope: scope.to_owned(),
                    audiences: serde_json::to_string(&aud).unwrap_or_else(|_| "[]".into()),
                    session_id: sid,
                    family_id,
                    created_at: now,
                    expires_at: now.plus_secs(ttl),
                    revoked_at: None,
                    dpop_jkt: jkt.map(str::to_owned),
                };
                self.store.insert_opaque_access(&row).await?;
                metrics::counter!("portcullis_tokens_issued_total", "kind" => "opaque_access")
                    .increment(1);
                Ok((token.expose().to_owned(), ttl))
            }
        }
    }

    /// An ID token (OIDC Core §2, §3.1.3.6), RS256, with the claims its scopes release.
    #[allow(clippy::too_many_arguments)]
    fn id_token(
        &self,
        client: &Client,
        user: &UserRow,
        scopes: &[String],
        auth_time: i64,
        nonce: Option<&str>,
        sid: Option<&str>,
        access_token: &str,
        now: Millis,
    ) -> OAuthResult<String> {
        let mut claims = json!({
            "iss": self.issuer,
            "sub": user.id,
            "aud": client.public_id,
            "azp": client.public_id,
            "exp": now.as_secs() + self.tokens.access_ttl_s(),
            "iat": now.as_secs(),
            "auth_time": auth_time,
            "amr": ["pwd"],
        });
        if let Some(obj) = claims.as_object_mut() {
            if let Some(n) = nonce {
                obj.insert("nonce".into(), n.into());
            }
            if let Some(s) = sid {
                obj.insert("sid".into(), s.into());
            }
            obj.insert(
                "at_hash".into(),
                portcullis_core::jwt::at_hash(client.id_token_alg, access_token).into(),
            );
            for (k, v) in user_claims(user, scopes) {
                obj.insert(k.into(), v);
            }
        }
        metrics::counter!("portcullis_tokens_issued_total", "kind" => "id").increment(1);
        self.keys
            .sign_with(client.id_token_alg, "JWT", &claims)
            .map_err(|_| OAuthError::server_error())
    }

    // ---- introspection, revocation, userinfo --------------------------------------------------

    /// RFC 7662: what a token is, for a caller allowed to know. Anything else is `{"active": false}`.
    pub async fn introspect(&self, caller: &Introspector, token: &str) -> OAuthResult<Value> {
        let inactive = json!({ "active": false });
        if token.len() > MAX_TOKEN_LEN {
            return Ok(inactive);
        }
        let mine = |client_id: &str| match caller {
            Introspector::Client(c) => c.id.as_str() == client_id || c.public_id == client_id,
            Introspector::Principal(_) => true,
        };
        let prefixed = |prefix: &str| {
            token
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('_'))
        };
        let answer = if prefixed(REFRESH_PREFIX) {
            let Ok(t) = OpaqueToken::parse(REFRESH_PREFIX, token) else {
                return Ok(inactive);
            };
            match self
                .store
                .refresh_token_family(&t.hash(), Millis::now())
                .await?
            {
                Some((f, true))
                    if mine(&f.client_id) && self.users.active(&f.user_id).await?.is_some() =>
                {
                    json!({
                        "active": true,
                        "token_type": "refresh_token",
                        "client_id": f.client_id,
                        "sub": f.user_id,
                        "scope": f.scope,
                        "exp": f.expires_at / 1000,
                        "iss": self.issuer,
                    })
                }
                _ => inactive,
            }
        } else if prefixed(OPAQUE_PREFIX) {
            let Ok(t) = OpaqueToken::parse(OPAQUE_PREFIX, token) else {
                return Ok(inactive);
            };
            match self.opaque_claims(&t).await? {
                Some(c) if mine(&c.client_id) => access_view(&c, "Bearer"),
                _ => inactive,
            }
        } else if token.matches('.').count() == 2 {
            match self.tokens.verify_for(token, Audience::Any).await {
                Ok(c) if mine(&c.client_id) => access_view(&c, "Bearer"),
                _ => inactive,
            }
        } else if matches!(caller, Introspector::Principal(_)) {
            match self.apikeys.peek(token).await? {
                Some(k) => {
                    let mut v = json!({
                        "active": true,
                        "token_type": "api_key",
                        "sub": k.owner_id.as_ref().map_or_else(|| k.id.to_string(), |o| o.to_string()),
                        "scope": k.scopes.to_string(),
                        "iat": k.created_at.as_secs(),
                        "key_id": k.id.as_str(),
                        "iss": self.issuer,
                    });
                    if let (Some(exp), Some(obj)) = (k.expires_at, v.as_object_mut()) {
                        obj.insert("exp".into(), exp.as_secs().into());
                    }
                    v
                }
                None => inactive,
            }
        } else {
            inactive
        };
        let outcome = if answer.get("active") == Some(&Value::Bool(true)) {
            "active"
        } else {
            "inactive"
        };
        metrics::counter!("portcullis_oauth_introspections_total", "outcome" => outcome)
            .increment(1);
        let caller_id = match caller {
            Introspector::Client(c) => c.id.to_string(),
            Introspector::Principal(p) => p.subject.clone(),
        };
        self.counts.record(
            "oauth.token_introspected",
            Some(&caller_id),
            json!({ "outcome": outcome }),
            "ips",
            None,
        );
        Ok(answer)
    }

    /// The claims of a live opaque access token (`pat_…`), or `None` for any other string; what
    /// forward auth checks such a token with.
    pub async fn opaque_access(&self, token: &str) -> OAuthResult<Option<AccessClaims>> {
        match OpaqueToken::parse(OPAQUE_PREFIX, token) {
            Ok(t) => self.opaque_claims(&t).await,
            Err(_) => Ok(None),
        }
    }

    /// The claims of a live opaque access token.
    async fn opaque_claims(&self, t: &OpaqueToken) -> OAuthResult<Option<AccessClaims>> {
        let Some(row) = self.store.opaque_access(&t.hash()).await? else {
            return Ok(None);
        };
        let now = Millis::now();
        if row.revoked_at.is_some() || row.expires_at <= now || self.tokens.is_denied(&row.jti) {
            return Ok(None);
        }
        if UserId::parse(&row.subject).is_ok() && self.users.active(&row.subject).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(AccessClaims {
            iss: self.issuer.clone(),
            sub: row.subject,
            aud: serde_json::from_str(&row.audiences).unwrap_or_default(),
            exp: row.expires_at.as_secs(),
            iat: row.created_at.as_secs(),
            nbf: None,
            jti: row.jti,
            client_id: row.client_id.to_string(),
            scope: row.scope,
            sid: row.session_id,
            cnf: row
                .dpop_jkt
                .map(|jkt| portcullis_core::jwt::Confirmation { jkt }),
            act: None,
        }))
    }

    /// RFC 7009: revokes an access or refresh token issued to `client`. Unknown tokens, and tokens
    /// of other clients, are accepted and left alone (§2.2).
    pub async fn revoke(
        &self,
        client: &Client,
        token: &str,
        ctx: &AuditContext,
    ) -> OAuthResult<()> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(OAuthError::invalid_request(format!(
                "token is at most {MAX_TOKEN_LEN} bytes"
            )));
        }
        let now = Millis::now();
        let mut revoked: Option<&'static str> = None;
        if let Ok(t) = OpaqueToken::parse(REFRESH_PREFIX, token) {
            if let Some((f, _)) = self.store.refresh_token_family(&t.hash(), now).await?
                && f.client_id == client.id.as_str()
                && self.store.revoke_family(&f.id, now, "revoked").await?
            {
                revoked = Some("refresh_token");
            }
        } else if let Ok(t) = OpaqueToken::parse(OPAQUE_PREFIX, token) {
            if let Some(row) = self.store.opaque_access(&t.hash()).await?
                && row.client_id == client.id
                && self.store.revoke_opaque_access(&t.hash(), now).await?
            {
                revoked = Some("access_token");
            }
        } else if let Ok(c) = self.tokens.verify_for(token, Audience::Any).await
            && c.client_id == client.public_id
        {
            self.tokens.deny_access(&c.jti, c.exp).await?;
            revoked = Some("access_token");
        }
        if let Some(kind) = revoked {
            metrics::counter!("portcullis_oauth_revocations_total", "kind" => kind).increment(1);
            self.audit.record(
                "oauth.token_revoked",
                None,
                Some(client.id.as_str()),
                ctx,
                json!({ "token_type": kind }),
            );
        }
        Ok(())
    }

    /// OIDC Core §5.3: the claims of the user an access token with `openid` speaks for, and the
    /// token's client.
    pub async fn userinfo(
        &self,
        token: &str,
        dpop: Option<(&str, &crate::auth::Auth, crate::auth::Target<'_>)>,
    ) -> OAuthResult<(Value, String)> {
        let invalid = || OAuthError::bearer(401, "invalid_token", "the access token is not valid");
        let claims = if let Ok(t) = OpaqueToken::parse(OPAQUE_PREFIX, token) {
            self.opaque_claims(&t).await?.ok_or_else(invalid)?
        } else {
            (*self
                .tokens
                .verify_for(token, Audience::Any)
                .await
                .map_err(|_| invalid())?)
            .clone()
        };
        match (dpop, &claims.cnf) {
            (None, None) => {}
            (None, Some(_)) => {
                let mut e = OAuthError::bearer(
                    401,
                    "invalid_token",
                    "this access token is bound to a DPoP key: present it with the DPoP scheme and a proof",
                );
                e.challenge = e
                    .challenge
                    .map(|c| format!("{c}, {}", crate::tokens::dpop::CHALLENGE));
                return Err(e);
            }
            (Some((proof, auth, target)), _) => {
                if let Err(e) = auth.check_dpop(&claims, token, proof, target).await {
                    let mut err = OAuthError::new("invalid_dpop_proof", e.to_string());
                    err.status = 401;
                    err.challenge = Some(crate::tokens::dpop::INVALID_CHALLENGE.into());
                    return Err(err);
                }
            }
        }
        let scopes = split(&claims.scope);
        if !has(&scopes, "openid") {
            return Err(OAuthError::bearer(
                403,
                "insufficient_scope",
                "the access token lacks the openid scope",
            ));
        }
        let user = self.users.active(&claims.sub).await?.ok_or_else(invalid)?;
        let mut out = json!({ "sub": user.id });
        if let Some(obj) = out.as_object_mut() {
            for (k, v) in user_claims(&user, &scopes) {
                obj.insert(k.into(), v);
            }
        }
        Ok((out, claims.client_id))
    }

    // ---- logout ---------------------------------------------------------------------------------

    /// The claims of an `id_token_hint` we issued (expired ones too), or `None`.
    pub fn id_token_hint(&self, hint: &str) -> Option<Value> {
        self.keys.current().verifier.verify_signed(hint, "JWT").ok()
    }

    /// Ends the OAuth grants bound to a browser session (RP-initiated logout): their refresh
    /// families. Returns the clients whose grants ended.
    pub async fn end_session_grants(
        &self,
        session_id: &str,
        user_id: &str,
        ctx: &AuditContext,
    ) -> OAuthResult<Vec<String>> {
        let ended = self
            .store
            .revoke_session_families(session_id, Millis::now(), "logout")
            .await?;
        // The clients with a grant bound to the session: those holding a refresh family from it, and
        // every client that redeemed a code in it (an ID token alone is a login at that client).
        let mut clients: Vec<String> = ended.into_iter().map(|(_, c)| c).collect();
        clients.extend(self.store.session_clients(session_id).await?);
        clients.sort();
        clients.dedup();
        // Back-Channel Logout: each of them that asked to be told is sent a logout token, off
        // this request's path.
        for client_id in &clients {
            let Ok(Some(client)) = self.clients.get(client_id).await else {
                continue;
            };
            let Some(uri) = client.backchannel_logout_uri.clone() else {
                continue;
            };
            if let Some(token) = Backchannel::token(
                &self.keys,
                client.id_token_alg,
                &self.issuer,
                &client.public_id,
                user_id,
                session_id,
            ) {
                self.backchannel.send(client_id.clone(), uri, token);
            }
        }
        self.audit.record(
            "oauth.logout",
            Some(user_id),
            Some(session_id),
            ctx,
            json!({ "clients": clients }),
        );
        Ok(clients)
    }

    // ---- consents on /account -------------------------------------------------------------------

    pub async fn consents(
        &self,
        user_id: &UserId,
    ) -> OAuthResult<Vec<portcullis_store::ConsentRow>> {
        Ok(self.store.list_consents(user_id).await?)
    }

    pub async fn withdraw_consent(
        &self,
        user_id: &UserId,
        client_id: &str,
        ctx: &AuditContext,
    ) -> OAuthResult<bool> {
        let Ok(cid) = ClientId::parse(client_id) else {
            return Ok(false);
        };
        let done = self.store.withdraw_consent(user_id, &cid).await?;
        self.consents.invalidate(&(user_id.clone(), cid.clone()));
        if done {
            self.audit.record(
                "oauth.consent_withdrawn",
                Some(user_id.as_str()),
                Some(client_id),
                ctx,
                json!({}),
            );
        }
        Ok(done)
    }
}

/// An access token's RFC 7662 answer.
fn access_view(c: &AccessClaims, token_type: &str) -> Value {
    let mut v = json!({
        "active": true,
        "token_type": token_type,
        "client_id": c.client_id,
        "sub": c.sub,
        "scope": c.scope,
        "exp": c.exp,
        "iat": c.iat,
        "iss": c.iss,
        "jti": c.jti,
        "aud": match c.aud.as_slice() { [one] => json!(one), many => json!(many) },
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(sid) = &c.sid {
            obj.insert("sid".into(), sid.clone().into());
        }
        // RFC 9449 §6.2: a bound token says so, and by which key.
        if let Some(cnf) = &c.cnf {
            obj.insert("token_type".into(), "DPoP".into());
            obj.insert("cnf".into(), json!({ "jkt": cnf.jkt }));
        }
    }
    v
}

/// The user claims `scopes` release (OIDC Core §5.4).
fn user_claims(user: &UserRow, scopes: &[String]) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    if has(scopes, "email") {
        out.push(("email", Value::from(user.email.clone())));
        out.push((
            "email_verified",
            Value::from(user.email_verified_at.is_some()),
        ));
    }
    if has(scopes, "profile")
        && let Some(name) = &user.name
    {
        out.push(("name", Value::from(name.clone())));
    }
    out
}
