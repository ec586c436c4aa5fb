//! Configuration. Every setting comes from, highest first: a command-line flag, an environment variable
//! `PORTCULLIS_<NAME>`, the TOML file named by `--config` / `PORTCULLIS_CONFIG`, the built-in default.
//! Unknown keys in the file are an error that names the key. Every limit has a safe default.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use portcullis_core::jwt::{JwsAlg, MAX_LEEWAY_S};
use portcullis_core::passwords::{Argon2Params, PasswordPolicy};
use serde::{Deserialize, Serialize};

/// A secret given in configuration (the master key, an initial access token): redacted in `Debug`
/// and never serialized.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretSetting(secrecy::SecretString);

/// The master key, as hex.
pub type MasterKeyHex = SecretSetting;

impl SecretSetting {
    pub fn new(hex: String) -> Self {
        Self(secrecy::SecretString::from(hex))
    }

    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl Serialize for SecretSetting {
    /// Configuration is serialized only for its defaults (where this is unset) and its key list; a
    /// set key is written as `[redacted]`, never as itself.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Whether anyone may create an account with `POST /v1/users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    Closed,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder for the SQLite file and the master key (created with mode 0700).
    pub data_dir: PathBuf,
    /// `postgres://…` selects PostgreSQL; unset means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Redis, for several nodes: shared rate limits, replay caches and invalidations.
    pub redis_url: Option<String>,
    /// Every Redis key and channel of this deployment starts with this (several deployments may
    /// share one Redis).
    pub redis_prefix: String,
    /// Public base URL; the `iss` of every token. Default `http://<listen>`.
    pub issuer: Option<String>,
    /// `aud` of access tokens. Default: the issuer.
    pub audience: Option<String>,
    /// Master key as 64 hex digits (for nodes without a data folder). Default: `<data_dir>/master.key`.
    pub master_key: Option<MasterKeyHex>,
    /// `open` or `closed`.
    pub registration: Registration,

    /// Signing algorithm for new keys: ES256, RS256 or EdDSA.
    pub jwt_alg: JwsAlg,
    /// Access-token lifetime (seconds). 15 minutes.
    pub access_token_ttl_s: i64,
    /// Lifetime of one refresh token (seconds). 7 days.
    pub refresh_token_ttl_s: i64,
    /// Absolute lifetime of a refresh family (seconds). 30 days.
    pub refresh_family_ttl_s: i64,
    /// A just-spent refresh token may be retried this long (seconds) if its child is unused. 0 = never.
    pub refresh_reuse_grace_s: i64,
    /// Clock skew tolerated on `exp`/`nbf` (seconds, at most 60).
    pub jwt_leeway_s: i64,
    /// Rotate signing keys this often (days); 0 disables automatic rotation.
    pub signing_key_rotation_days: i64,
    /// A new key is in the JWKS this long (seconds) before it signs.
    pub signing_key_publish_lead_s: i64,
    /// `client_id` claim of tokens issued by password login.
    pub first_party_client_id: String,
    /// The `scope` claim of access tokens from password login: what the user's own login grants
    /// (RFC 9068 §2.2.3). Our own endpoints give a user's own login the user's full self-service
    /// rights whatever it says; resource servers read it.
    pub login_scopes: Vec<String>,

    /// Minimum password length in code points (never below 8).
    pub password_min_length: usize,
    /// Maximum password length in code points (at least 64).
    pub password_max_length: usize,
    /// argon2id memory (KiB), iterations and lanes; never below OWASP's m=19456, t=2, p=1.
    pub argon2_m_kib: u32,
    pub argon2_t: u32,
    pub argon2_p: u32,
    /// Password hashes computed at once; 0 = one per CPU core.
    pub hash_concurrency: usize,
    /// Hash requests allowed to wait; beyond it requests get 503 at once.
    pub hash_queue_limit: usize,

    /// Failed logins allowed per client IP per `login_ip_period_s` (GCRA).
    pub login_ip_limit: u32,
    pub login_ip_period_s: u64,
    /// Failed logins of one account before waits begin; waits then double from 1 s.
    pub login_free_failures: u32,
    /// Longest wait after failed logins of one account (seconds).
    pub login_max_wait_s: u64,

    /// Largest request body (bytes).
    pub max_body_bytes: usize,
    /// Largest page of a list endpoint.
    pub max_page_size: u32,
    /// Connections (PostgreSQL) or readers (SQLite).
    pub db_pool_size: u32,
    /// How long a request waits for a database connection before it is answered 503 `unavailable`
    /// (milliseconds): while the database restarts or fails over, requests fail fast instead of piling up.
    pub db_timeout_ms: u64,
    /// Audit events older than this are deleted (days).
    pub audit_retention_days: i64,
    /// How often the janitor runs (seconds) and how many rows of each kind it deletes per statement.
    pub janitor_interval_s: u64,
    pub janitor_batch: u32,
    /// `json` (default) or `pretty`.
    pub log_format: LogFormat,

    /// Prefix of new API keys when a request names none.
    pub api_key_prefix: String,
    /// How long a looked-up API key is served from memory. Changes made on this node apply at once;
    /// this bounds how stale another node's view can be until the Redis bus arrives.
    pub api_key_cache_ttl_s: u64,
    /// Largest `meta` of an API key (bytes of JSON).
    pub api_key_meta_max_bytes: usize,
    /// How many RFC 9421 nonces (and nonce-less signatures) one node remembers at once, each for the
    /// 5-minute window: 2,000,000 covers ~6,600 signed requests/s. When full of live entries, signed
    /// requests get 503 rather than a forgotten nonce.
    pub signature_nonce_capacity: usize,
    /// Revoked and expired API keys are deleted this many days later; until then a verify answers
    /// REVOKED or EXPIRED rather than NOT_FOUND.
    pub api_key_retention_days: i64,
    /// Longest grace period of a roll (seconds).
    pub api_key_max_grace_s: i64,
    /// Verify failures are audited as one event per caller and code per this interval (ms).
    pub verify_audit_interval_ms: u64,

    /// A folder whose files replace the built-in page templates of the same name (`base.html`,
    /// `login.html`, `account.html`, `message.html`, `consent.html`, `device.html`, `logout.html`,
    /// `form_post.html`, `portcullis.css`).
    pub templates_dir: Option<PathBuf>,
    /// Origins (`https://app.example.com`) whose pages may call the API from the browser with
    /// credentials (CORS). Default: none. Their cookie requests still need the CSRF token.
    pub cors_allowed_origins: Vec<String>,
    /// Accept `http://127.0.0.1…` and `http://[::1]…` as an OAuth client's `backchannel_logout_uri`
    /// (development and tests); off by default, since the server itself posts to that URL.
    pub oauth_allow_loopback_backchannel: bool,
    /// The polling interval a device is given by `/oauth2/device_authorization` (RFC 8628 §3.2,
    /// seconds); each too-early poll adds 5 s to it for that device.
    pub oauth_device_poll_interval_s: i64,
    /// Every client must push its authorization requests to `/oauth2/par` (RFC 9126); otherwise only
    /// those registered with `require_pushed_authorization_requests`.
    pub oauth_require_par: bool,
    /// Require DPoP server nonces (RFC 9449 §8) at the token endpoint: a proof without this
    /// server's current nonce is answered `use_dpop_nonce` with one in `DPoP-Nonce`.
    pub oauth_dpop_nonce: bool,
    /// Serve RFC 7591 dynamic client registration at `/oauth2/register` (and RFC 7592 management).
    pub oauth_dynamic_registration: bool,
    /// TESTS ONLY: let the server fetch client documents (`jwks_uri`, Client ID Metadata
    /// Documents) over http, from loopback and private addresses, and with any TLS certificate.
    /// Never turn this on in production: it opens the server to SSRF.
    pub oauth_fetch_allow_private_for_tests: bool,
    /// Accept Client ID Metadata Documents: an https `client_id` is fetched and is the client it
    /// describes (MCP clients use them). On by default.
    pub oauth_client_metadata_documents: bool,
    /// Only documents from these domains (and their subdomains); empty: any.
    pub oauth_client_metadata_allowed_domains: Vec<String>,
    /// Never documents from these domains (and their subdomains).
    pub oauth_client_metadata_denied_domains: Vec<String>,
    /// When set, registrations must present it as `Authorization: Bearer` (an initial access
    /// token, RFC 7591 §3). Kept in memory as SHA-256 only.
    pub oauth_registration_token: Option<SecretSetting>,
    /// Scopes a dynamically registered client may ask for, beyond OpenID Connect's and those the
    /// route rules require.
    pub oauth_registration_scopes: Vec<String>,
    /// Registrations one address may make per `oauth_registration_ip_period_s`.
    pub oauth_registration_ip_limit: u32,
    pub oauth_registration_ip_period_s: u64,
    /// A session unused for this long ends (seconds).
    pub session_idle_timeout_s: i64,
    /// A session ends this long after login, however busy (seconds).
    pub session_absolute_timeout_s: i64,

    /// Addresses or CIDR ranges of reverse proxies in front of us (`10.0.0.0/8`, `::1`). Only from
    /// them is `X-Forwarded-For` believed: the client is the right-most address not in this list.
    /// Default: none (the peer address is the client).
    pub trusted_proxies: Vec<String>,
    /// Failed logins of one account from all clients together before waits begin (≥
    /// `login_free_failures`). A device that signed in before is not held by it.
    pub login_account_free_failures: u32,
    /// How long a known-device cookie lasts (days); 0 turns known devices off.
    pub known_device_ttl_days: i64,
    /// Registrations allowed per client IP (an IPv6 /64 counts as one) per `registration_ip_period_s`.
    pub registration_ip_limit: u32,
    pub registration_ip_period_s: u64,
    /// Scopes a user may put on their own keys besides `keys:read` and `keys:write`. Default: none;
    /// every other scope is granted by administrators only.
    pub self_service_scopes: Vec<String>,
    /// Time allowed for a request's headers to arrive, counted from the connection's start or the end
    /// of the previous response, so it is also how long an idle keep-alive connection stays open
    /// (seconds).
    pub header_read_timeout_s: u64,
    /// Time allowed for a whole request body to arrive (seconds); slower bodies get 408.
    pub request_body_timeout_s: u64,
    /// Connections open at once; 0 derives it from the open-file limit (raised to its maximum at
    /// start), keeping room for the database and files.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64 counts as one); trusted proxies
    /// are exempt.
    pub max_connections_per_ip: usize,
    /// Serve `/metrics` on this separate address instead of the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Clients (addresses or CIDR ranges) that may read `/metrics` on the main listener. Default:
    /// loopback only.
    pub metrics_allowed_ips: Vec<String>,
    /// Add `includeSubDomains` to HSTS (sent when the issuer is https).
    pub hsts_include_subdomains: bool,

    /// Outgoing mail (verification and password-reset links): `smtp://host:port` (STARTTLS, which
    /// only a loopback server may go without) or `smtps://user:password@host:465`. Unset: mail is
    /// not sent, only logged (without its link at info level).
    pub smtp_url: Option<SecretSetting>,
    /// The `From` of our mail. Default: `Portcullis <no-reply@<issuer host>>`.
    pub mail_from: Option<String>,
    /// DEVELOPMENT ONLY: without `smtp_url`, log the body of each message (with its secret link) at
    /// debug level, target `portcullis::mail_body`. Off: only recipient and subject are logged.
    pub mail_log_links: bool,
    /// Refuse password logins until the account's email is verified.
    pub require_verified_email: bool,
    /// Requests for emailed links (verification resends, password resets) one client address may
    /// make per `email_link_ip_period_s`.
    pub email_link_ip_limit: u32,
    pub email_link_ip_period_s: u64,
    /// Upstream sign-in providers (`[[upstream]]` tables): "Continue with …" on `/login`.
    pub upstream: Vec<UpstreamConfig>,

    /// Forward auth: what `/v1/authorize` needs of a request no `[[route]]` matches —
    /// `authenticated` (a valid credential; the default) or `deny` (403).
    pub default_policy: portcullis_core::routes::DefaultPolicy,
    /// Forward-auth route rules (`[[route]]` tables), first match wins.
    pub route: Vec<portcullis_core::routes::RouteRule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: PathBuf::from("portcullis-data"),
            database_url: None,
            redis_url: None,
            redis_prefix: "portcullis".into(),
            issuer: None,
            audience: None,
            master_key: None,
            registration: Registration::Open,
            jwt_alg: JwsAlg::Es256,
            access_token_ttl_s: 15 * 60,
            refresh_token_ttl_s: 7 * 24 * 3600,
            refresh_family_ttl_s: 30 * 24 * 3600,
            refresh_reuse_grace_s: 0,
            jwt_leeway_s: 30,
            signing_key_rotation_days: 30,
            signing_key_publish_lead_s: 3600,
            first_party_client_id: "portcullis".to_owned(),
            login_scopes: vec!["keys:read".to_owned(), "keys:write".to_owned()],
            password_min_length: 12,
            password_max_length: 128,
            argon2_m_kib: Argon2Params::OWASP.m_kib,
            argon2_t: Argon2Params::OWASP.t,
            argon2_p: Argon2Params::OWASP.p,
            hash_concurrency: 0,
            hash_queue_limit: 512,
            login_ip_limit: 30,
            login_ip_period_s: 60,
            login_free_failures: 5,
            login_max_wait_s: 20 * 60,
            max_body_bytes: 64 * 1024,
            max_page_size: 100,
            db_pool_size: 8,
            db_timeout_ms: 5000,
            audit_retention_days: 90,
            janitor_interval_s: 300,
            janitor_batch: 1000,
            log_format: LogFormat::Json,
            api_key_prefix: portcullis_core::apikeys::DEFAULT_PREFIX.to_owned(),
            api_key_cache_ttl_s: 60,
            api_key_meta_max_bytes: 8 * 1024,
            signature_nonce_capacity: 2_000_000,
            api_key_retention_days: 30,
            api_key_max_grace_s: 30 * 24 * 3600,
            verify_audit_interval_ms: 60_000,
            templates_dir: None,
            cors_allowed_origins: Vec::new(),
            oauth_allow_loopback_backchannel: false,
            oauth_device_poll_interval_s: 5,
            oauth_require_par: false,
            oauth_dpop_nonce: false,
            oauth_dynamic_registration: false,
            oauth_fetch_allow_private_for_tests: false,
            oauth_client_metadata_documents: true,
            oauth_client_metadata_allowed_domains: Vec::new(),
            oauth_client_metadata_denied_domains: Vec::new(),
            oauth_registration_token: None,
            oauth_registration_scopes: Vec::new(),
            oauth_registration_ip_limit: 10,
            oauth_registration_ip_period_s: 3600,
            session_idle_timeout_s: 30 * 60,
            session_absolute_timeout_s: 24 * 3600,
            trusted_proxies: Vec::new(),
            login_account_free_failures: 10,
            known_device_ttl_days: 180,
            registration_ip_limit: 20,
            registration_ip_period_s: 3600,
            self_service_scopes: Vec::new(),
            header_read_timeout_s: 20,
            request_body_timeout_s: 30,
            max_connections: 0,
            max_connections_per_ip: 256,
            metrics_listen: None,
            metrics_allowed_ips: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            hsts_include_subdomains: true,
            smtp_url: None,
            mail_from: None,
            mail_log_links: false,
            require_verified_email: false,
            email_link_ip_limit: 20,
            email_link_ip_period_s: 3600,
            upstream: Vec::new(),
            default_policy: portcullis_core::routes::DefaultPolicy::Authenticated,
            route: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| redact_url(u)),
            )
            .field("issuer", &self.issuer())
            .field("redis_url", &self.redis_url.as_ref().map(|u| redact_url(u)))
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

/// Hides every password a connection URL can carry: the userinfo's (`scheme://user:password@host`)
/// and any query parameter naming one (`?password=`, `sslpassword=`, `pass=`, `secret=`, `token=`…),
/// so that a URL can be logged.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = base.get(s + 3..at).unwrap_or_default();
            match creds.split_once(':') {
                Some((user, _)) => format!(
                    "{}{}:[redacted]{}",
                    base.get(..s + 3).unwrap_or_default(),
                    user,
                    base.get(at..).unwrap_or_default()
                ),
                None => base.to_owned(),
            }
        }
        _ => base.to_owned(),
    };
    let Some(query) = query else {
        return base;
    };
    let secret_name = |name: &str| {
        let name = name.to_ascii_lowercase();
        ["pass", "pwd", "secret", "token", "key", "auth"]
            .iter()
            .any(|s| name.contains(s))
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_name(name) => format!("{name}=[redacted]"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Every setting's name, from the struct itself (its serialized defaults), so no list is kept by hand:
/// the environment may set exactly these (other `PORTCULLIS_*` variables, such as test settings and
/// `CONFIG`, are not ours).
pub fn keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    })
}

/// Where outgoing mail goes: `smtp://host[:port]` (STARTTLS, required unless the host is loopback;
/// default port 587) or `smtps://host[:port]` (TLS from the start; default port 465), either with
/// `user:password@` (percent-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtps://`: TLS from the first byte.
    Wrapper,
    /// `smtp://` to anything but loopback: STARTTLS, required.
    StartTls,
    /// `smtp://` to a loopback address: plain.
    None,
}

impl SmtpTarget {
    pub fn parse(smtp_url: &str) -> Result<Self, String> {
        let url = url::Url::parse(smtp_url).map_err(|e| {
            format!(
                "smtp_url is not a URL ({e}); use smtp://host:port or smtps://user:password@host"
            )
        })?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("smtp_url has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if url.query().is_some() || !matches!(url.path(), "" | "/") {
            return Err(
                "smtp_url takes no path or query: smtp://host:port or smtps://host:port".into(),
            );
        }
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let (tls, port) = match url.scheme() {
            "smtps" => (SmtpTls::Wrapper, url.port().unwrap_or(465)),
            "smtp" if loopback => (SmtpTls::None, url.port().unwrap_or(587)),
            "smtp" => (SmtpTls::StartTls, url.port().unwrap_or(587)),
            other => {
                return Err(format!(
                    "smtp_url scheme must be smtp or smtps, got {other:?}"
                ));
            }
        };
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let credentials = (!url.username().is_empty()).then(|| {
            (
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        Ok(Self {
            host,
            port,
            tls,
            credentials,
        })
    }
}

/// The address in a `From` such as `Name <a@b.example>` or `a@b.example`.
pub fn mail_address(from: &str) -> Result<String, String> {
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(l), Some(r)) if l < r && r == from.trim_end().len() - 1 => &from[l + 1..r],
        (None, None) => from.trim(),
        _ => return Err(format!("mail_from {from:?} is not an address")),
    };
    portcullis_core::email::Email::parse(addr)
        .map(|e| e.as_str().to_owned())
        .map_err(|_| format!("mail_from {from:?} is not an address"))
}

/// `oidc` (any OpenID provider, by discovery) or `github`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    Oidc,
    Github,
}

/// One `[[upstream]]` table.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// In URLs (`/v1/upstream/<id>/callback`) and identities: 1 to 32 of `a-z`, `0-9`, `-`, `_`.
    pub id: String,
    pub kind: UpstreamKind,
    /// The button text: "Continue with <name>".
    pub name: String,
    /// `oidc`: the issuer, found by discovery (`<issuer>/.well-known/openid-configuration`). https;
    /// plain http only on a loopback address (tests).
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    /// Also from the environment: `PORTCULLIS_UPSTREAM_<ID>_CLIENT_SECRET` (ID upper-cased, `-` as
    /// `_`), which wins over the file. Without one, `oidc` acts as a public client (PKCE only).
    #[serde(default)]
    pub client_secret: Option<SecretSetting>,
    /// Default: `openid email profile` (oidc), `read:user user:email` (github).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// A first sign-in whose email matches an existing account links to it only when this is on
    /// (the default) and the provider says the email is verified (and the account's is too).
    #[serde(default = "yes")]
    pub link_by_email: bool,
    /// Keep the provider's tokens, sealed under the master key (off: they are used once and
    /// dropped).
    #[serde(default)]
    pub store_tokens: bool,
    /// `oidc`: the one algorithm ID tokens must be signed with. Default: what the provider's
    /// discovery document lists, of RS256, ES256 and EdDSA (never `none` or HMAC).
    #[serde(default)]
    pub id_token_alg: Option<String>,
    /// `github`: its endpoints, for GitHub Enterprise Server (or a test double). Defaults:
    /// `https://github.com/login/oauth/authorize`, `https://github.com/login/oauth/access_token`,
    /// `https://api.github.com`.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.clone().unwrap_or_else(|| {
            match self.kind {
                UpstreamKind::Oidc => vec!["openid", "email", "profile"],
                UpstreamKind::Github => vec!["read:user", "user:email"],
            }
            .into_iter()
            .map(str::to_owned)
            .collect()
        })
    }

    /// The environment variable that may hold the client secret.
    pub fn secret_env(&self) -> String {
        format!(
            "PORTCULLIS_UPSTREAM_{}_CLIENT_SECRET",
            self.id.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// An upstream URL we will call: https, or http to a loopback address.
pub fn check_url(what: &str, raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{what} {raw:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => {}
        "http" if loopback => {}
        _ => {
            return Err(format!(
                "{what} must be an https URL (plain http only on a loopback address), got {raw:?}"
            ));
        }
    }
    if url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("{what} must have no fragment or user name"));
    }
    Ok(url)
}

/// Checks every `[[upstream]]` table, naming the one at fault.
pub fn validate_upstreams(all: &[UpstreamConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for u in all {
        let at = |m: String| format!("[[upstream]] {:?}: {m}", u.id);
        if u.id.is_empty()
            || u.id.len() > 32
            || !u
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(at("id must be 1 to 32 of a-z, 0-9, - and _".into()));
        }
        if !seen.insert(u.id.clone()) {
            return Err(at("this id is used twice".into()));
        }
        if u.name.trim().is_empty() || portcullis_core::text::display_name(&u.name).is_none() {
            return Err(at(
                "name (the button text) must be set, at most 200 plain characters".into(),
            ));
        }
        if u.client_id.trim().is_empty() {
            return Err(at("client_id must be set".into()));
        }
        if u.scopes().iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err(at("scopes must be single words".into()));
        }
        match u.kind {
            UpstreamKind::Oidc => {
                let issuer = u
                    .issuer
                    .as_deref()
                    .ok_or_else(|| at("kind = \"oidc\" needs issuer".into()))?;
                check_url("issuer", issuer).map_err(at)?;
                if !u.scopes().iter().any(|s| s == "openid") {
                    return Err(at("scopes must include openid".into()));
                }
                if let Some(alg) = &u.id_token_alg
                    && JwsAlg::parse(alg).is_none()
                {
                    return Err(at("id_token_alg must be one of RS256, ES256, EdDSA".into()));
                }
                if u.authorization_endpoint.is_some()
                    || u.token_endpoint.is_some()
                    || u.api_url.is_some()
                {
                    return Err(at("an oidc provider's endpoints come from its discovery document; remove authorization_endpoint, token_endpoint and api_url".into()));
                }
            }
            UpstreamKind::Github => {
                if u.issuer.is_some() || u.id_token_alg.is_some() {
                    return Err(at(
                        "kind = \"github\" takes no issuer or id_token_alg".into()
                    ));
                }
                if u.client_secret.is_none() {
                    return Err(at(format!(
                        "kind = \"github\" needs client_secret (or {})",
                        u.secret_env()
                    )));
                }
                for (what, v) in [
                    ("authorization_endpoint", &u.authorization_endpoint),
                    ("token_endpoint", &u.token_endpoint),
                    ("api_url", &u.api_url),
                ] {
                    if let Some(v) = v {
                        check_url(what, v).map_err(at)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A configuration that cannot be used; the message says what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The `From` of our mail.
    pub fn mail_from(&self) -> String {
        self.mail_from.clone().unwrap_or_else(|| {
            let host = url::Url::parse(&self.issuer())
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .filter(|h| h.contains('.') && h.parse::<std::net::IpAddr>().is_err())
                .unwrap_or_else(|| "localhost.localdomain".into());
            format!("Portcullis <no-reply@{host}>")
        })
    }

    /// Layers defaults, the file, the environment and `overrides` (the flags given).
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &figment::value::Dict,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(
                Env::prefixed("PORTCULLIS_")
                    .filter(|k| keys().iter().any(|n| *n == k.as_str().to_ascii_lowercase())),
            )
            .merge(Serialized::defaults(overrides.clone()));
        let mut config: Config = fig.extract().map_err(|e| ConfigError(describe(e)))?;
        for u in &mut config.upstream {
            if let Ok(secret) = std::env::var(u.secret_env())
                && !secret.is_empty()
            {
                u.client_secret = Some(SecretSetting::new(secret));
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if let Some(issuer) = &self.issuer
            && (!(issuer.starts_with("http://") || issuer.starts_with("https://"))
                || issuer.ends_with('/'))
        {
            return err(format!(
                "issuer must be an http(s) URL without a trailing slash, got {issuer:?}"
            ));
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return err(
                "database_url must start with postgres:// (leave it unset for SQLite)".into(),
            );
        }
        portcullis_core::routes::Rules::compile(&self.route, self.default_policy)
            .map_err(ConfigError)?;
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || !self
                .redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return err("redis_prefix must be 1 to 64 of a-z, A-Z, 0-9, -, _ and .".into());
        }
        if self.email_link_ip_limit == 0 || self.email_link_ip_period_s == 0 {
            return err("email_link_ip_limit and email_link_ip_period_s must be positive".into());
        }
        if let Some(url) = &self.smtp_url {
            SmtpTarget::parse(url.expose()).map_err(ConfigError)?;
        }
        mail_address(&self.mail_from()).map_err(ConfigError)?;
        validate_upstreams(&self.upstream).map_err(ConfigError)?;
        if !(60..=24 * 3600).contains(&self.access_token_ttl_s) {
            return err("access_token_ttl_s must be between 60 and 86400".into());
        }
        if self.refresh_token_ttl_s < 60 || self.refresh_family_ttl_s < self.refresh_token_ttl_s {
            return err(
                "refresh_token_ttl_s must be ≥ 60 and refresh_family_ttl_s ≥ refresh_token_ttl_s"
                    .into(),
            );
        }
        if !(0..=300).contains(&self.refresh_reuse_grace_s) {
            return err("refresh_reuse_grace_s must be between 0 and 300".into());
        }
        if !(0..=MAX_LEEWAY_S).contains(&self.jwt_leeway_s) {
            return err(format!("jwt_leeway_s must be between 0 and {MAX_LEEWAY_S}"));
        }
        if self.signing_key_rotation_days < 0 || self.signing_key_publish_lead_s < 0 {
            return err(
                "signing_key_rotation_days and signing_key_publish_lead_s must not be negative"
                    .into(),
            );
        }
        if self.signing_key_rotation_days > 0
            && self.signing_key_publish_lead_s >= self.signing_key_rotation_days * 86400
        {
            return err(
                "signing_key_publish_lead_s must be shorter than the rotation interval".into(),
            );
        }
        PasswordPolicy::new(self.password_min_length, self.password_max_length)
            .map_err(|e| ConfigError(e.to_string()))?;
        self.argon2().validate().map_err(ConfigError)?;
        if self.hash_queue_limit == 0 || self.login_ip_limit == 0 || self.login_ip_period_s == 0 {
            return err(
                "hash_queue_limit, login_ip_limit and login_ip_period_s must be positive".into(),
            );
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return err("max_body_bytes must be between 1024 and 16777216".into());
        }
        if !(100..=60_000).contains(&self.db_timeout_ms) {
            return err("db_timeout_ms must be 100..=60000".into());
        }
        if !(1..=1000).contains(&self.max_page_size)
            || self.janitor_batch == 0
            || self.janitor_interval_s == 0
        {
            return err(
                "max_page_size must be 1..=1000; janitor_batch and janitor_interval_s positive"
                    .into(),
            );
        }
        if let Some(k) = &self.master_key
            && (k.expose().len() != 64 || hex::decode(k.expose()).is_err())
        {
            return err("master_key must be 64 hex digits (32 bytes)".into());
        }
        if portcullis_core::apikeys::validate_prefix(&self.api_key_prefix).is_err() {
            return err(format!(
                "api_key_prefix must be 2 to 20 characters of a-z, 0-9 and _ (not at either end), and not pat, prt, pcs or pac (our other tokens), got {:?}",
                self.api_key_prefix
            ));
        }
        if !(1..=3600).contains(&self.api_key_cache_ttl_s)
            || !(64..=65536).contains(&self.api_key_meta_max_bytes)
            || !(0..=365 * 24 * 3600).contains(&self.api_key_max_grace_s)
            || !(0..=3650).contains(&self.api_key_retention_days)
            || !(100..=3_600_000).contains(&self.verify_audit_interval_ms)
        {
            return err("api_key_cache_ttl_s must be 1..=3600, api_key_meta_max_bytes 64..=65536, \
                 api_key_max_grace_s 0..=31536000, api_key_retention_days 0..=3650 and verify_audit_interval_ms 100..=3600000"
                .into());
        }
        if self.oauth_registration_ip_limit == 0 || self.oauth_registration_ip_period_s == 0 {
            return err(
                "oauth_registration_ip_limit and oauth_registration_ip_period_s must be positive"
                    .into(),
            );
        }
        if self
            .oauth_registration_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 32)
        {
            return err("oauth_registration_token must be at least 32 characters".into());
        }
        if !(1..=60).contains(&self.oauth_device_poll_interval_s) {
            return err("oauth_device_poll_interval_s must be 1..=60".into());
        }
        if !(1000..=100_000_000).contains(&self.signature_nonce_capacity) {
            return err("signature_nonce_capacity must be 1000..=100000000".into());
        }
        if !(1..=90 * 24 * 3600).contains(&self.session_absolute_timeout_s)
            || !(1..=self.session_absolute_timeout_s).contains(&self.session_idle_timeout_s)
        {
            return err(
                "session_absolute_timeout_s must be 1..=7776000 and session_idle_timeout_s 1..=session_absolute_timeout_s"
                    .into(),
            );
        }
        for origin in &self.cors_allowed_origins {
            if portcullis_core::csrf::origin_of(origin).as_deref() != Some(origin.as_str())
                || !(origin.starts_with("https://") || origin.starts_with("http://"))
            {
                return err(format!(
                    "cors_allowed_origins entries must be origins like https://app.example.com (lowercase, no path), got {origin:?}"
                ));
            }
        }
        if self.first_party_client_id.is_empty() {
            return err("first_party_client_id must not be empty".into());
        }
        if self.issuer.is_none() && !self.listen.ip().is_loopback() {
            return err(format!(
                "issuer must be set when listening on {} (not a loopback address): it is the public \
                 URL clients use and the `iss` of every token, e.g. issuer = \"https://auth.example.com\"",
                self.listen
            ));
        }
        parse_nets("trusted_proxies", &self.trusted_proxies)?;
        parse_nets("metrics_allowed_ips", &self.metrics_allowed_ips)?;
        if self.login_account_free_failures < self.login_free_failures {
            return err("login_account_free_failures must be at least login_free_failures".into());
        }
        if !(0..=3650).contains(&self.known_device_ttl_days) {
            return err("known_device_ttl_days must be 0..=3650".into());
        }
        if self.registration_ip_limit == 0 || self.registration_ip_period_s == 0 {
            return err(
                "registration_ip_limit and registration_ip_period_s must be positive".into(),
            );
        }
        for scope in &self.login_scopes {
            if portcullis_core::scopes::Scope::parse(scope).is_err() {
                return err(format!(
                    "login_scopes entries must be scopes, got {scope:?}"
                ));
            }
        }
        for scope in &self.self_service_scopes {
            if portcullis_core::scopes::Scope::parse(scope).is_err()
                || portcullis_core::scopes::is_reserved(scope)
            {
                return err(format!(
                    "self_service_scopes entries must be scopes ([A-Za-z0-9_:.-/], 1 to 64) and not one \
                     of Portcullis's own (admin, keys:verify …), got {scope:?}"
                ));
            }
        }
        if !(1..=300).contains(&self.header_read_timeout_s)
            || !(1..=600).contains(&self.request_body_timeout_s)
        {
            return err(
                "header_read_timeout_s must be 1..=300 and request_body_timeout_s 1..=600".into(),
            );
        }
        if self.max_connections_per_ip == 0
            || (self.max_connections != 0 && self.max_connections < self.max_connections_per_ip)
        {
            return err(
                "max_connections_per_ip must be positive and at most max_connections (0 = derived)"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        parse_nets("trusted_proxies", &self.trusted_proxies).unwrap_or_default()
    }

    pub fn metrics_allowed(&self) -> Vec<ipnet::IpNet> {
        parse_nets("metrics_allowed_ips", &self.metrics_allowed_ips).unwrap_or_default()
    }

    pub fn issuer(&self) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }

    /// The origin browsers use for us: the issuer's.
    pub fn origin(&self) -> String {
        let issuer = self.issuer();
        portcullis_core::csrf::origin_of(&issuer).unwrap_or(issuer)
    }

    /// The issuer's scheme and authority: the `@scheme` and `@authority` of signed direct requests.
    pub fn issuer_origin(&self) -> (String, String) {
        let issuer = self.issuer();
        match url::Url::parse(&issuer) {
            Ok(u) => {
                let host = u.host_str().unwrap_or_default();
                let authority = match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                (u.scheme().to_owned(), authority)
            }
            Err(_) => ("http".to_owned(), self.listen.to_string()),
        }
    }

    /// The HSTS header, when served over TLS (the issuer is https).
    pub fn hsts(&self) -> Option<axum::http::HeaderValue> {
        self.issuer().starts_with("https://").then(|| {
            axum::http::HeaderValue::from_static(if self.hsts_include_subdomains {
                "max-age=31536000; includeSubDomains"
            } else {
                "max-age=31536000"
            })
        })
    }

    pub fn audience(&self) -> String {
        self.audience.clone().unwrap_or_else(|| self.issuer())
    }

    pub fn argon2(&self) -> Argon2Params {
        Argon2Params {
            m_kib: self.argon2_m_kib,
            t: self.argon2_t,
            p: self.argon2_p,
        }
    }

    pub fn password_policy(&self) -> PasswordPolicy {
        PasswordPolicy {
            min_len: self.password_min_length,
            max_len: self.password_max_length,
        }
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("portcullis.db")
    }
}

/// Addresses (`10.1.2.3`, `::1`) and CIDR ranges (`10.0.0.0/8`); the error names the setting and entry.
fn parse_nets(setting: &str, entries: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    entries
        .iter()
        .map(|e| {
            e.parse::<ipnet::IpNet>()
                .or_else(|_| e.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError(format!(
                        "{setting} entries must be IP addresses or CIDR ranges like 10.0.0.0/8, got {e:?}"
                    ))
                })
        })
        .collect()
}

/// figment's errors name the key and the source; keep them on one line.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_in_the_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nacess_token_ttl_s = 5\n",
        )
        .unwrap();
        let e = Config::load(Some(&path), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("acess_token_ttl_s"), "{e}");
    }

    #[test]
    fn flags_beat_the_file_and_bad_values_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\npassword_min_length = 7\n",
        )
        .unwrap();
        let e = Config::load(Some(&path), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 8"), "{e}");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n").unwrap();
        let mut flags = figment::value::Dict::new();
        flags.insert("listen".into(), "127.0.0.1:9001".into());
        assert_eq!(
            Config::load(Some(&path), &flags).unwrap().listen.port(),
            9001
        );
    }

    #[test]
    fn api_key_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        for (line, expect) in [
            ("api_key_prefix = \"PK\"", "api_key_prefix"),
            ("api_key_cache_ttl_s = 0", "api_key_cache_ttl_s"),
            ("api_key_meta_max_bytes = 10", "api_key_meta_max_bytes"),
            ("verify_audit_interval_ms = 5", "verify_audit_interval_ms"),
            (
                "cors_allowed_origins = [\"https://app.example.com/x\"]",
                "cors_allowed_origins",
            ),
            ("session_idle_timeout_s = 0", "session_idle_timeout_s"),
        ] {
            std::fs::write(&path, format!("{line}\n")).unwrap();
            let e = Config::load(Some(&path), &Default::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{line}: {e}");
        }
        std::fs::write(&path, "api_key_prefix = \"sk_test\"\n").unwrap();
        let c = Config::load(Some(&path), &Default::default()).unwrap();
        assert_eq!(c.api_key_prefix, "sk_test");
    }

    #[test]
    fn every_setting_may_come_from_the_environment_and_the_master_key_is_a_secret() {
        let keys = keys();
        for k in [
            "listen",
            "master_key",
            "trusted_proxies",
            "login_scopes",
            "session_idle_timeout_s",
        ] {
            assert!(keys.iter().any(|n| n == k), "{k} missing from {keys:?}");
        }
        assert_eq!(
            keys.len(),
            serde_json::to_value(Config::default())
                .unwrap()
                .as_object()
                .unwrap()
                .len()
        );
        let c = Config {
            master_key: Some(MasterKeyHex::new("ab".repeat(32))),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("abab"));
        assert!(!serde_json::to_string(&c).unwrap().contains("abab"));
    }

    #[test]
    fn database_passwords_are_redacted() {
        for (url, want) in [
            ("postgres://u:secret@h/db", "postgres://u:[redacted]@h/db"),
            (
                "postgres://u@h/db?password=secret&sslmode=require",
                "postgres://u@h/db?password=[redacted]&sslmode=require",
            ),
            (
                "postgresql://h/db?user=u&sslpassword=secret",
                "postgresql://h/db?user=u&sslpassword=[redacted]",
            ),
            ("redis://:secret@h:6379/0", "redis://:[redacted]@h:6379/0"),
            ("postgres://u:p@ss@h/db", "postgres://u:[redacted]@h/db"),
            ("postgres://h/db", "postgres://h/db"),
        ] {
            assert_eq!(redact_url(url), want);
            assert!(!redact_url(url).contains("secret"), "{url}");
        }
    }

    #[test]
    fn an_issuer_is_required_off_loopback_and_network_lists_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        for (text, expect) in [
            ("listen = \"0.0.0.0:8787\"\n", Some("issuer must be set")),
            (
                "listen = \"0.0.0.0:8787\"\nissuer = \"https://auth.example.com\"\n",
                None,
            ),
            (
                "trusted_proxies = [\"10.0.0.0/33\"]\n",
                Some("trusted_proxies"),
            ),
            ("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n", None),
            (
                "metrics_allowed_ips = [\"nope\"]\n",
                Some("metrics_allowed_ips"),
            ),
            (
                "self_service_scopes = [\"Admin\"]\n",
                Some("self_service_scopes"),
            ),
            ("self_service_scopes = [\"orders:read\"]\n", None),
            (
                "login_account_free_failures = 2\n",
                Some("login_account_free_failures"),
            ),
            ("header_read_timeout_s = 0\n", Some("header_read_timeout_s")),
            (
                "max_connections_per_ip = 0\n",
                Some("max_connections_per_ip"),
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            match (Config::load(Some(&path), &Default::default()), expect) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{text}: {e}"),
                (r, _) => panic!("{text}: {:?}", r.map(|_| ())),
            }
        }
    }
}
