//! OAuth clients (API.md "Clients"): registration checked field by field (core's rules), secrets of
//! 256 bits shown once and kept as SHA-256, and the authentication of a client at the token,
//! introspection and revocation endpoints.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::ids::ClientId;
use portcullis_core::jwt::JwsAlg;
use portcullis_core::oauth::client::{self, AuthMethod, ClientType, GrantType, Registration};
use portcullis_core::oauth::redirect::RedirectUri;
use portcullis_core::scopes::{Scope, is_reserved};
use portcullis_core::secrets::{OpaqueToken, TokenHash};
use portcullis_store::{ClientRow, OAuthStore, Store};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, AuditContext};
use crate::error::{Error, FieldError, Result};
use crate::ratelimit::RateLimiter;

/// Prefix of client secrets.
pub const SECRET_PREFIX: &str = "pcs";
pub const MAX_REDIRECT_URIS: usize = 20;
pub const MAX_CLIENT_SCOPES: usize = 50;
pub const MAX_AUDIENCES: usize = 10;
pub const MAX_NAME_LEN: usize = 100;
pub const MAX_URL_LEN: usize = 2048;

/// The scopes of OpenID Connect, which every client may ask for when it registers them.
pub const OIDC_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

/// A registration as written and stored (the admin API's body and the `settings` column).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// `confidential` or `public`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(confidential|public)$")]
    pub client_type: String,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Defaults to `authorization_code` and `refresh_token`.
    #[serde(default)]
    pub grant_types: Vec<String>,
    /// What the client may ask for (`openid`, `profile`, `email`, `offline_access`, API scopes).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Defaults to `client_secret_basic` (confidential) or `none` (public).
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    /// `jwt` (default) or `opaque`.
    #[serde(default)]
    pub access_token_format: Option<String>,
    /// Audiences of its access tokens when a request names no `resource`; also the resources it may
    /// name.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// First-party clients: no consent page.
    #[serde(default)]
    pub skip_consent: bool,
    /// Its authorization requests must come through `/oauth2/par` (RFC 9126 §6).
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// `RS256` (default), or the server's access-token algorithm (`jwt_alg`).
    #[serde(default)]
    pub id_token_signed_response_alg: Option<String>,
    /// Set by the server for a Client ID Metadata Document client: the URL that is its
    /// `client_id` (read only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_metadata_document: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    Jwt,
    Opaque,
}

/// A client, every field parsed.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: ClientId,
    pub name: String,
    pub client_type: ClientType,
    pub auth_method: AuthMethod,
    pub grant_types: Vec<GrantType>,
    pub redirect_uris: Vec<RedirectUri>,
    pub scopes: Vec<String>,
    pub token_format: TokenFormat,
    pub audiences: Vec<String>,
    pub post_logout_redirect_uris: Vec<RedirectUri>,
    pub backchannel_logout_uri: Option<String>,
    pub skip_consent: bool,
    /// `require_pushed_authorization_requests`.
    pub require_par: bool,
    /// The `client_id` the world knows it by: its id, or a metadata document's URL.
    pub public_id: String,
    /// A Client ID Metadata Document client (unverified: anyone may publish a document).
    pub metadata_document: bool,
    /// What its ID tokens are signed with (RS256 unless it registered the access-token algorithm).
    pub id_token_alg: JwsAlg,
    pub settings: ClientSettings,
    pub secret_hash: Option<TokenHash>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Client {
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    pub fn may_ask(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The registered redirect URI `presented` matches, if any (exact, or loopback but the port).
    pub fn redirect_uri(&self, presented: &str) -> Option<&RedirectUri> {
        self.redirect_uris.iter().find(|r| r.matches(presented))
    }
}

/// The most keys a client's JWK Set may hold.
pub const MAX_CLIENT_KEYS: usize = 10;

/// The public keys of a JWK Set a client registered or publishes (`{"keys": [...]}`), each with a
/// `kid` and of a type we verify; private members refused.
pub fn client_keys(
    jwks: &serde_json::Value,
) -> std::result::Result<Vec<portcullis_core::jwt::VerifyingKey>, String> {
    let keys = jwks
        .get("keys")
        .and_then(|k| k.as_array())
        .filter(|k| !k.is_empty() && k.len() <= MAX_CLIENT_KEYS)
        .ok_or_else(|| {
            format!("jwks is a JWK Set: {{\"keys\": [1 to {MAX_CLIENT_KEYS} public keys]}}")
        })?;
    keys.iter()
        .map(|k| {
            portcullis_core::jwt::VerifyingKey::from_jwk(k)
                .map_err(|e| format!("a key of the JWK Set is not usable: {e}"))
        })
        .collect()
}

/// An absolute URI for an audience or resource (RFC 8707 §2: absolute, no fragment).
pub fn is_resource_uri(raw: &str) -> bool {
    raw.len() <= MAX_URL_LEN
        && !raw.contains('#')
        && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
        && url::Url::parse(raw).is_ok_and(|u| !u.cannot_be_a_base() || u.scheme() == "urn")
}

/// What the server allows of registrations beyond core's rules.
#[derive(Debug, Clone)]
pub struct ClientRules {
    /// `oauth_allow_loopback_backchannel`.
    pub allow_loopback_backchannel: bool,
    /// The algorithms the key ring can sign ID tokens with: RS256, and the access-token algorithm.
    pub id_token_algs: Vec<JwsAlg>,
    /// `oauth_fetch_allow_private_for_tests`: http `jwks_uri`s on local test servers.
    pub allow_private_fetch: bool,
    /// `oauth_client_metadata_documents`: https `client_id`s are fetched.
    pub metadata_documents: bool,
    /// `oauth_client_metadata_allowed_domains` / `_denied_domains`.
    pub metadata_allowed: Vec<String>,
    pub metadata_denied: Vec<String>,
    /// What a document's client may ask for (as a dynamically registered one).
    pub open_scopes: Vec<String>,
}

impl Default for ClientRules {
    fn default() -> Self {
        Self {
            allow_loopback_backchannel: false,
            id_token_algs: vec![JwsAlg::Rs256],
            allow_private_fetch: false,
            metadata_documents: false,
            metadata_allowed: Vec::new(),
            metadata_denied: Vec::new(),
            open_scopes: OIDC_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// Parses and checks a registration; every problem at once.
pub fn parse(
    name: &str,
    s: &ClientSettings,
    rules: &ClientRules,
) -> std::result::Result<ParsedSettings, Vec<FieldError>> {
    let allow_loopback_backchannel = rules.allow_loopback_backchannel;
    let mut errors = Vec::new();
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            "name",
            "invalid",
            format!("name is 1 to {MAX_NAME_LEN} characters, without control characters"),
        ));
    }
    let client_type = ClientType::parse(&s.client_type);
    if client_type.is_none() {
        errors.push(FieldError::new(
            "type",
            "invalid",
            "type is confidential or public",
        ));
    }
    let client_type = client_type.unwrap_or(ClientType::Confidential);
    let auth_method = match s.token_endpoint_auth_method.as_deref() {
        None => AuthMethod::default_for(client_type),
        Some(raw) => match AuthMethod::parse(raw) {
            Some(m) => m,
            None => {
                errors.push(FieldError::new(
                    "token_endpoint_auth_method",
                    "invalid",
                    "token_endpoint_auth_method is client_secret_basic, client_secret_post, private_key_jwt or none",
                ));
                AuthMethod::default_for(client_type)
            }
        },
    };
    let mut grant_types = Vec::new();
    let raw_grants: Vec<&str> = if s.grant_types.is_empty() {
        vec!["authorization_code", "refresh_token"]
    } else {
        s.grant_types.iter().map(String::as_str).collect()
    };
    for raw in raw_grants {
        match GrantType::parse(raw) {
            Some(g) => grant_types.push(g),
            None => errors.push(FieldError::new(
                "grant_types",
                "invalid",
                "grant types are authorization_code, refresh_token, client_credentials, urn:ietf:params:oauth:grant-type:device_code and urn:ietf:params:oauth:grant-type:token-exchange (never implicit or password)",
            )),
        }
    }
    let mut redirect_uris = Vec::new();
    if s.redirect_uris.len() > MAX_REDIRECT_URIS {
        errors.push(FieldError::new(
            "redirect_uris",
            "too_many",
            format!("at most {MAX_REDIRECT_URIS} redirect URIs"),
        ));
    }
    for raw in &s.redirect_uris {
        match RedirectUri::parse(raw) {
            Ok(r) => redirect_uris.push(r),
            Err(e) => errors.push(FieldError::new("redirect_uris", "invalid", e.to_string())),
        }
    }
    let mut post_logout = Vec::new();
    if s.post_logout_redirect_uris.len() > MAX_REDIRECT_URIS {
        errors.push(FieldError::new(
            "post_logout_redirect_uris",
            "too_many",
            format!("at most {MAX_REDIRECT_URIS} post-logout redirect URIs"),
        ));
    }
    for raw in &s.post_logout_redirect_uris {
        match RedirectUri::parse(raw) {
            Ok(r) => post_logout.push(r),
            Err(e) => errors.push(FieldError::new(
                "post_logout_redirect_uris",
                "invalid",
                e.to_string(),
            )),
        }
    }
    let mut scopes: Vec<String> = Vec::new();
    if s.scopes.len() > MAX_CLIENT_SCOPES {
        errors.push(FieldError::new(
            "scopes",
            "too_many",
            format!("at most {MAX_CLIENT_SCOPES} scopes"),
        ));
    }
    for raw in &s.scopes {
        if Scope::parse(raw).is_err() {
            errors.push(FieldError::new(
                "scopes",
                "invalid",
                format!("{raw:?} is not a scope: 1 to 64 characters of A-Z a-z 0-9 _ : . - /"),
            ));
        } else if is_reserved(raw) {
            errors.push(FieldError::new(
                "scopes",
                "reserved",
                format!(
                    "{raw} is Portcullis's own administrative scope; no OAuth client may hold it"
                ),
            ));
        } else if !scopes.contains(raw) {
            scopes.push(raw.clone());
        }
    }
    let token_format = match s.access_token_format.as_deref() {
        None | Some("jwt") => TokenFormat::Jwt,
        Some("opaque") => TokenFormat::Opaque,
        Some(_) => {
            errors.push(FieldError::new(
                "access_token_format",
                "invalid",
                "access_token_format is jwt or opaque",
            ));
            TokenFormat::Jwt
        }
    };
    if s.audiences.len() > MAX_AUDIENCES {
        errors.push(FieldError::new(
            "audiences",
            "too_many",
            format!("at most {MAX_AUDIENCES} audiences"),
        ));
    }
    for a in &s.audiences {
        if !is_resource_uri(a) {
            errors.push(FieldError::new(
                "audiences",
                "invalid",
                "each audience is an absolute URI without a fragment",
            ));
        }
    }
    if let Some(uri) = &s.jwks_uri {
        let https = url::Url::parse(uri).is_ok_and(|u| {
            u.host_str().is_some()
                && (u.scheme() == "https" || (rules.allow_private_fetch && u.scheme() == "http"))
        });
        if uri.len() > MAX_URL_LEN || !https {
            errors.push(FieldError::new(
                "jwks_uri",
                "invalid",
                "jwks_uri is an https URL of at most 2048 bytes",
            ));
        }
    }
    if let Some(jwks) = &s.jwks
        && let Err(why) = client_keys(jwks)
    {
        errors.push(FieldError::new("jwks", "invalid", why));
    }
    if let Some(uri) = &s.backchannel_logout_uri
        && uri.len() > MAX_URL_LEN
    {
        errors.push(FieldError::new(
            "backchannel_logout_uri",
            "too_long",
            "backchannel_logout_uri is at most 2048 bytes",
        ));
    }
    let id_token_alg = match s.id_token_signed_response_alg.as_deref() {
        None => JwsAlg::Rs256,
        Some(raw) => match JwsAlg::parse(raw).filter(|a| rules.id_token_algs.contains(a)) {
            Some(a) => a,
            None => {
                let names: Vec<&str> = rules.id_token_algs.iter().map(|a| a.as_str()).collect();
                errors.push(FieldError::new(
                    "id_token_signed_response_alg",
                    "unsupported",
                    format!(
                        "id_token_signed_response_alg is one of {}",
                        names.join(", ")
                    ),
                ));
                JwsAlg::Rs256
            }
        },
    };
    let registration = Registration {
        client_type,
        auth_method,
        grant_types: &grant_types,
        redirect_uris: &redirect_uris,
        has_jwks: s.jwks.is_some(),
        has_jwks_uri: s.jwks_uri.is_some(),
        backchannel_logout_uri: s.backchannel_logout_uri.as_deref(),
        allow_loopback_backchannel,
    };
    for p in client::check(&registration) {
        errors.push(FieldError::new(p.field, p.code, p.message));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut settings = s.clone();
    settings.name = name.to_owned();
    settings.token_endpoint_auth_method = Some(auth_method.as_str().to_owned());
    settings.grant_types = grant_types.iter().map(|g| g.as_str().to_owned()).collect();
    settings.access_token_format = Some(
        match token_format {
            TokenFormat::Jwt => "jwt",
            TokenFormat::Opaque => "opaque",
        }
        .to_owned(),
    );
    settings.scopes = scopes.clone();
    settings.id_token_signed_response_alg = Some(id_token_alg.as_str().to_owned());
    Ok(ParsedSettings {
        id_token_alg,
        name: name.to_owned(),
        client_type,
        auth_method,
        grant_types,
        redirect_uris,
        scopes,
        token_format,
        post_logout_redirect_uris: post_logout,
        settings,
    })
}

/// [`parse`]'s result: the registration in its types, and as it is stored.
pub struct ParsedSettings {
    pub name: String,
    id_token_alg: JwsAlg,
    client_type: ClientType,
    auth_method: AuthMethod,
    grant_types: Vec<GrantType>,
    redirect_uris: Vec<RedirectUri>,
    scopes: Vec<String>,
    token_format: TokenFormat,
    post_logout_redirect_uris: Vec<RedirectUri>,
    pub settings: ClientSettings,
}

fn from_row(row: ClientRow, rules: &ClientRules) -> Result<Client> {
    let own_id = row.id.to_string();
    let settings: ClientSettings = serde_json::from_str(&row.settings)
        .map_err(|e| Error::internal(format!("client {}: stored settings: {e}", row.id)))?;
    let p = parse(&row.name, &settings, rules).map_err(|errors| {
        Error::internal(format!(
            "client {}: stored settings no longer pass: {:?}",
            row.id,
            errors.first().map(|e| &e.message)
        ))
    })?;
    Ok(Client {
        id: row.id,
        name: p.name,
        client_type: p.client_type,
        auth_method: p.auth_method,
        grant_types: p.grant_types,
        redirect_uris: p.redirect_uris,
        scopes: p.scopes,
        token_format: p.token_format,
        audiences: p.settings.audiences.clone(),
        post_logout_redirect_uris: p.post_logout_redirect_uris,
        backchannel_logout_uri: p.settings.backchannel_logout_uri.clone(),
        skip_consent: p.settings.skip_consent,
        require_par: p.settings.require_pushed_authorization_requests,
        public_id: p
            .settings
            .client_id_metadata_document
            .clone()
            .unwrap_or(own_id),
        metadata_document: p.settings.client_id_metadata_document.is_some(),
        id_token_alg: p.id_token_alg,
        settings: p.settings,
        secret_hash: row.secret_hash,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// How a request to the token endpoint (or introspection, revocation) named its client.
pub enum Presented<'a> {
    /// `Authorization: Basic` (RFC 6749 §2.3.1), already form-decoded.
    Basic { id: String, secret: SecretString },
    /// `client_id` and `client_secret` in the body.
    Post { id: &'a str, secret: SecretString },
    /// `client_id` alone (a public client).
    None { id: &'a str },
}

/// Why a client did not authenticate (all answered `invalid_client`, never telling which).
#[derive(Debug)]
pub struct ClientAuthFailed {
    pub basic: bool,
    pub client_id: Option<String>,
    pub reason: &'static str,
}

/// How long a client read from the store is served from memory. A change made on this node applies
/// at once (the entry is dropped); one made on another node (or by the CLI) within this long.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Clients {
    store: Store,
    audit: Audit,
    /// Clients by id, parsed and checked: every token request authenticates one, and reading and
    /// checking its registration costs more than the rest of a client-credentials grant.
    cache: moka::sync::Cache<ClientId, Arc<Client>>,
    rules: ClientRules,
    /// Fetches metadata documents and clients' `jwks_uri`.
    fetcher: Arc<super::fetch::Fetcher>,
    /// New metadata document clients per site.
    new_documents: crate::ratelimit::Limiter,
}

impl Clients {
    pub fn new(
        store: Store,
        audit: Audit,
        rules: ClientRules,
        redis: Option<&Arc<portcullis_kv::redis::Redis>>,
    ) -> Self {
        Self {
            store,
            audit,
            fetcher: Arc::new(super::fetch::Fetcher::new(rules.allow_private_fetch)),
            new_documents: crate::ratelimit::Limiter::new(
                redis,
                std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(60),
            ),
            rules,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// What a dynamically registered or metadata-document client may ask for.
    pub fn open_scopes(&self) -> &[String] {
        &self.rules.open_scopes
    }

    pub fn fetcher(&self) -> &super::fetch::Fetcher {
        &self.fetcher
    }

    /// Whether https `client_id`s are fetched as metadata documents.
    pub fn metadata_documents(&self) -> bool {
        self.rules.metadata_documents
    }

    /// A client by its id (or, for a metadata document client, its URL); `None` for one that is not
    /// a client here.
    pub async fn get(&self, raw_id: &str) -> Result<Option<Arc<Client>>> {
        if super::metadata_documents::is_document_id(raw_id) {
            return self.document_client(raw_id).await;
        }
        let Ok(id) = ClientId::parse(raw_id) else {
            return Ok(None);
        };
        if let Some(c) = self.cache.get(&id) {
            return Ok(Some(c));
        }
        match self.store.client(&id).await? {
            Some(row) => {
                let c = Arc::new(from_row(row, &self.rules)?);
                self.cache.insert(id, Arc::clone(&c));
                Ok(Some(c))
            }
            None => Ok(None),
        }
    }

    fn forget(&self, id: &ClientId) {
        self.cache.invalidate(id);
    }

    pub async fn list(&self, after: Option<&ClientId>, limit: u32) -> Result<Vec<Client>> {
        self.store
            .list_clients(after, limit)
            .await?
            .into_iter()
            .map(|r| from_row(r, &self.rules))
            .collect()
    }

    /// The client a metadata document at `url` describes, its row kept in step with the document;
    /// `None` when documents are off, the URL or document is not acceptable, or it cannot be fetched
    /// (each logged, none of them a server error).
    async fn document_client(&self, url: &str) -> Result<Option<Arc<Client>>> {
        use super::metadata_documents as md;
        if !self.rules.metadata_documents {
            return Ok(None);
        }
        let refused = |e: md::DocumentError| {
            tracing::info!(client_id = %url.chars().take(200).collect::<String>(), error = %e, "metadata document refused");
            metrics::counter!("portcullis_oauth_metadata_documents_total", "outcome" => "refused")
                .increment(1);
            Ok(None)
        };
        let parsed = match md::check_url(url, self.rules.allow_private_fetch) {
            Ok(u) => u,
            Err(e) => return refused(e),
        };
        let host = parsed.host_str().unwrap_or_default();
        if !md::host_allowed(
            host,
            &self.rules.metadata_allowed,
            &self.rules.metadata_denied,
        ) {
            return refused(md::DocumentError::DomainRefused);
        }
        let doc = match self.fetcher.json(url).await {
            Ok(d) => d,
            Err(e) => return refused(e.into()),
        };
        let settings = match md::settings_of(url, &doc, &self.rules.open_scopes) {
            Ok(s) => s,
            Err(e) => return refused(e),
        };
        let id = md::internal_id(url);
        if let Some(c) = self.cache.get(&id)
            && c.settings.client_id_metadata_document == settings.client_id_metadata_document
            && c.settings.redirect_uris == settings.redirect_uris
            && c.settings.grant_types.len() == settings.grant_types.len()
            && c.name == settings.name
        {
            return Ok(Some(c));
        }
        let p = match parse(&settings.name, &settings, &self.rules) {
            Ok(p) => p,
            Err(errors) => {
                return refused(md::DocumentError::Invalid(
                    errors
                        .first()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .unwrap_or_default(),
                ));
            }
        };
        let json = serde_json::to_string(&p.settings).map_err(Error::internal)?;
        let now = Millis::now();
        let stored = self.store.client(&id).await?;
        let row = match stored {
            Some(row) if row.settings == json && row.name == p.name => row,
            Some(_) => {
                self.store.update_client(&id, &p.name, &json, now).await?;
                self.store
                    .client(&id)
                    .await?
                    .ok_or_else(|| Error::internal("a metadata document client vanished"))?
            }
            None => {
                // Anyone can name a new document; each becomes a row. New ones are limited per
                // site (the host's last two labels), so one domain's documents cannot fill the store.
                let site = md::site_of(host);
                let decision = self.new_documents.check(&site, md::NEW_PER_SITE, 1).await;
                if !decision.allowed {
                    return refused(md::DocumentError::TooManyNew);
                }
                let row = ClientRow {
                    id: id.clone(),
                    name: p.name.clone(),
                    settings: json,
                    secret_hash: None,
                    secret_changed_at: None,
                    created_at: now,
                    updated_at: now,
                };
                match self.store.insert_client(&row).await {
                    // Another request (or node) stored it first: the same document, the same row.
                    Ok(()) | Err(portcullis_store::StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                metrics::counter!("portcullis_oauth_metadata_documents_total", "outcome" => "new")
                    .increment(1);
                row
            }
        };
        let client = Arc::new(from_row(row, &self.rules)?);
        self.cache.insert(id, Arc::clone(&client));
        Ok(Some(client))
    }

    /// Registers a client; a confidential one gets its secret, shown only in this answer.
    pub async fn create(
        &self,
        actor: &str,
        settings: &ClientSettings,
        ctx: &AuditContext,
    ) -> Result<(Client, Option<SecretString>)> {
        if settings.client_id_metadata_document.is_some() {
            return Err(Error::field(
                "client_id_metadata_document",
                "read_only",
                "client_id_metadata_document is set by the server for clients whose client_id is a document's URL",
            ));
        }
        let p = parse(&settings.name, settings, &self.rules).map_err(Error::Validation)?;
        let now = Millis::now();
        let secret = if p.auth_method.uses_secret() {
            Some(OpaqueToken::generate(SECRET_PREFIX).map_err(Error::internal)?)
        } else {
            None
        };
        let row = ClientRow {
            id: ClientId::generate(),
            name: p.name.clone(),
            settings: serde_json::to_string(&p.settings).map_err(Error::internal)?,
            secret_hash: secret.as_ref().map(OpaqueToken::hash),
            secret_changed_at: secret.as_ref().map(|_| now),
            created_at: now,
            updated_at: now,
        };
        self.store.insert_client(&row).await?;
        self.audit.record(
            "client.created",
            Some(actor),
            Some(row.id.as_str()),
            ctx,
            serde_json::json!({ "name": p.name, "type": p.settings.client_type }),
        );
        let client = from_row(row, &self.rules)?;
        Ok((
            client,
            secret.map(|s| SecretString::from(s.expose().to_owned())),
        ))
    }

    /// Replaces a client's registration (its type and authentication method stay).
    pub async fn update(
        &self,
        actor: &str,
        id: &str,
        settings: &ClientSettings,
        ctx: &AuditContext,
    ) -> Result<Arc<Client>> {
        let current = self
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound("no such client".into()))?;
        let p = parse(&settings.name, settings, &self.rules).map_err(Error::Validation)?;
        if p.client_type != current.client_type || p.auth_method != current.auth_method {
            return Err(Error::field(
                "type",
                "immutable",
                "a client's type and token_endpoint_auth_method cannot change: register a new client",
            ));
        }
        let json = serde_json::to_string(&p.settings).map_err(Error::internal)?;
        if !self
            .store
            .update_client(&current.id, &p.name, &json, Millis::now())
            .await?
        {
            return Err(Error::NotFound("no such client".into()));
        }
        self.forget(&current.id);
        self.audit.record(
            "client.updated",
            Some(actor),
            Some(current.id.as_str()),
            ctx,
            serde_json::json!({ "name": p.name }),
        );
        self.get(id)
            .await?
            .ok_or_else(|| Error::NotFound("no such client".into()))
    }

    /// A new secret for a confidential client; the old one stops working at once.
    pub async fn rotate_secret(
        &self,
        actor: &str,
        id: &str,
        ctx: &AuditContext,
    ) -> Result<(Arc<Client>, SecretString)> {
        let client = self
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound("no such client".into()))?;
        if !client.auth_method.uses_secret() {
            return Err(Error::Conflict(
                "no_secret",
                "this client authenticates without a secret".into(),
            ));
        }
        let secret = OpaqueToken::generate(SECRET_PREFIX).map_err(Error::internal)?;
        if !self
            .store
            .set_client_secret(&client.id, &secret.hash(), Millis::now())
            .await?
        {
            return Err(Error::NotFound("no such client".into()));
        }
        self.forget(&client.id);
        self.audit.record(
            "client.secret_rotated",
            Some(actor),
            Some(client.id.as_str()),
            ctx,
            serde_json::json!({}),
        );
        let client = self
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound("no such client".into()))?;
        Ok((client, SecretString::from(secret.expose().to_owned())))
    }

    /// Deletes a client: its codes, consents and opaque tokens go, its refresh families end.
    pub async fn delete(&self, actor: &str, id: &str, ctx: &AuditContext) -> Result<()> {
        let Ok(cid) = ClientId::parse(id) else {
            return Err(Error::NotFound("no such client".into()));
        };
        let deleted = self.store.delete_client(&cid, Millis::now()).await?;
        self.forget(&cid);
        if !deleted {
            return Err(Error::NotFound("no such client".into()));
        }
        self.audit.record(
            "client.deleted",
            Some(actor),
            Some(id),
            ctx,
            serde_json::json!({}),
        );
        Ok(())
    }

    /// The client a request names, authenticated as it registered: its secret compared in constant
    /// time (as SHA-256 digests), a public client refused when it sends a secret, a confidential one
    /// when it sends none.
    pub async fn authenticate(
        &self,
        presented: Presented<'_>,
    ) -> std::result::Result<Arc<Client>, ClientAuthFailed> {
        let (id, secret, method) = match &presented {
            Presented::Basic { id, secret } => {
                (id.as_str(), Some(secret), AuthMethod::ClientSecretBasic)
            }
            Presented::Post { id, secret } => (*id, Some(secret), AuthMethod::ClientSecretPost),
            Presented::None { id } => (*id, None, AuthMethod::None),
        };
        let failed = |reason| ClientAuthFailed {
            basic: method == AuthMethod::ClientSecretBasic,
            client_id: Some(id.chars().take(64).collect()),
            reason,
        };
        let client = match self.get(id).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                // The same work as a real comparison, so that an unknown client takes as long.
                if let Some(s) = secret {
                    let _ = TokenHash::of(s.expose_secret().as_bytes()).ct_eq(&TokenHash([0; 32]));
                }
                return Err(failed("unknown_client"));
            }
            Err(_) => return Err(failed("store_error")),
        };
        if client.auth_method != method {
            return Err(failed(match (client.auth_method, method) {
                (AuthMethod::None, _) => "public_client_sent_secret",
                (_, AuthMethod::None) => "no_client_authentication",
                _ => "wrong_auth_method",
            }));
        }
        if let Some(s) = secret {
            let ok = client
                .secret_hash
                .as_ref()
                .is_some_and(|h| h.ct_eq(&TokenHash::of(s.expose_secret().as_bytes())));
            if !ok {
                return Err(failed("wrong_secret"));
            }
        }
        Ok(client)
    }
}
