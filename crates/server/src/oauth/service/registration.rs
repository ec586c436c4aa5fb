//! Dynamic client registration (RFC 7591) and its management protocol (RFC 7592), off unless
//! `oauth_dynamic_registration` is on. A registration is RFC 7591 metadata turned into the same
//! checked registration the admin API makes (so every rule of API.md "Clients" holds), plus a
//! registration access token, kept as SHA-256, with which the client reads, replaces or deletes it.
//! Registrations are rate-limited per address, may require an initial access token, and are audited.

use portcullis_core::clock::Millis;
use portcullis_core::ratelimit::RatePolicy;
use portcullis_core::secrets::{OpaqueToken, TokenHash};
use portcullis_store::{RegistrationRow, RegistrationStore};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::OAuth;
use crate::audit::AuditContext;
use crate::error::Error;
use crate::oauth::clients::{Client, ClientSettings, OIDC_SCOPES};
use crate::ratelimit::{RateLimiter, client_bucket};

/// Prefix of registration access tokens.
pub const REGISTRATION_TOKEN_PREFIX: &str = "prat";
/// The largest registration body we read.
pub const MAX_METADATA_BYTES: usize = 32 * 1024;
/// The longest value of a descriptive metadata field (URIs, names).
const MAX_FIELD_LEN: usize = 2048;

/// What a registration endpoint answers with when it refuses (RFC 7591 §3.2.2, RFC 7592 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationError {
    /// 404: registration is off.
    Disabled,
    /// 401: no or a wrong initial access token / registration access token (never which).
    InvalidToken,
    /// 429, seconds to wait.
    Throttled(u64),
    /// 400 `invalid_redirect_uri`.
    RedirectUri(String),
    /// 400 `invalid_client_metadata`.
    Metadata(String),
    /// 500.
    Internal,
}

impl From<Error> for RegistrationError {
    fn from(e: Error) -> Self {
        match e {
            Error::Validation(errors) => {
                let first = errors.first();
                let message = first.map_or_else(
                    || "the metadata is not valid".to_owned(),
                    |f| format!("{}: {}", f.field, f.message),
                );
                if first.is_some_and(|f| f.field == "redirect_uris") {
                    Self::RedirectUri(message)
                } else {
                    Self::Metadata(message)
                }
            }
            Error::NotFound(_) => Self::InvalidToken,
            _ => Self::Internal,
        }
    }
}

impl From<portcullis_store::StoreError> for RegistrationError {
    fn from(_: portcullis_store::StoreError) -> Self {
        Self::Internal
    }
}

/// A registration's answer: the metadata as registered, with the credentials.
pub struct Registered {
    pub body: Value,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registered([redacted])")
    }
}

fn text<'a>(m: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, RegistrationError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_FIELD_LEN => Ok(Some(s)),
        Some(_) => Err(RegistrationError::Metadata(format!(
            "{name} is a string of at most {MAX_FIELD_LEN} bytes"
        ))),
    }
}

fn strings(m: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, RegistrationError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() <= 50 => items
            .iter()
            .map(|v| match v {
                Value::String(s) if s.len() <= MAX_FIELD_LEN => Ok(s.clone()),
                _ => Err(RegistrationError::Metadata(format!(
                    "{name} is an array of strings"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(RegistrationError::Metadata(format!(
            "{name} is an array of at most 50 strings"
        ))),
    }
}

/// A descriptive URI (`client_uri`, `logo_uri`, `tos_uri`, `policy_uri`): https only, since a
/// consent page may show or link it.
fn https_uri(m: &Map<String, Value>, name: &str) -> Result<Option<String>, RegistrationError> {
    let Some(raw) = text(m, name)? else {
        return Ok(None);
    };
    match url::Url::parse(raw) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Ok(Some(raw.to_owned())),
        _ => Err(RegistrationError::Metadata(format!(
            "{name} is an https URL"
        ))),
    }
}

impl OAuth {
    /// The registration endpoint is served (metadata says `registration_endpoint`).
    pub fn registration_enabled(&self) -> bool {
        self.settings.dynamic_registration
    }

    /// RFC 7591 metadata as a registration of ours, and the metadata to echo (a replacement, RFC
    /// 7592 PUT, that changes the client's type is refused by `Clients::update`).
    fn registration_settings(
        &self,
        m: &Map<String, Value>,
    ) -> Result<(ClientSettings, Map<String, Value>), RegistrationError> {
        let redirect_uris = strings(m, "redirect_uris")?.unwrap_or_default();
        let auth_method = text(m, "token_endpoint_auth_method")?
            .unwrap_or("client_secret_basic")
            .to_owned();
        if !matches!(
            auth_method.as_str(),
            "none" | "client_secret_basic" | "client_secret_post"
        ) {
            return Err(RegistrationError::Metadata(
                "token_endpoint_auth_method is none, client_secret_basic or client_secret_post"
                    .into(),
            ));
        }
        let grant_types =
            strings(m, "grant_types")?.unwrap_or_else(|| vec!["authorization_code".into()]);
        if let Some(types) = strings(m, "response_types")?
            && types.iter().any(|t| t != "code")
        {
            return Err(RegistrationError::Metadata(
                "response_types is [\"code\"]: no implicit or hybrid flows".into(),
            ));
        }
        // RFC 7591 §2: application_type (OpenID Connect Registration §2). Native apps redirect to
        // loopback or private-use schemes, web apps to https; unsaid, it is what the URIs show.
        let is_native_uri = |u: &String| {
            url::Url::parse(u).is_ok_and(|p| p.scheme() == "http" || p.scheme().contains('.'))
        };
        let application_type = match text(m, "application_type")? {
            Some(t @ ("web" | "native")) => t.to_owned(),
            Some(_) => {
                return Err(RegistrationError::Metadata(
                    "application_type is web or native".into(),
                ));
            }
            None if !redirect_uris.is_empty() && redirect_uris.iter().all(is_native_uri) => {
                "native".to_owned()
            }
            None => "web".to_owned(),
        };
        for u in &redirect_uris {
            let native = is_native_uri(u);
            if application_type == "web" && native {
                return Err(RegistrationError::RedirectUri(
                    "a web application's redirect URIs are https; loopback and private-use schemes are for application_type native".into(),
                ));
            }
            if application_type == "native" && !native {
                return Err(RegistrationError::RedirectUri(
                    "a native application redirects to loopback http or a private-use scheme"
                        .into(),
                ));
            }
        }
        let allowed = self.clients.open_scopes();
        let scopes: Vec<String> = match text(m, "scope")? {
            Some(s) => {
                let asked: Vec<String> = super::split(s);
                if let Some(bad) = asked.iter().find(|s| !allowed.contains(s)) {
                    return Err(RegistrationError::Metadata(format!(
                        "scope {} is not one a registered client may ask for",
                        bad.chars().take(64).collect::<String>()
                    )));
                }
                asked
            }
            None => allowed.to_vec(),
        };
        let name = text(m, "client_name")?
            .unwrap_or("Unnamed client")
            .to_owned();
        let mut echo = Map::new();
        for field in ["client_uri", "logo_uri", "tos_uri", "policy_uri"] {
            if let Some(v) = https_uri(m, field)? {
                echo.insert(field.into(), v.into());
            }
        }
        for field in ["software_id", "software_version"] {
            if let Some(v) = text(m, field)? {
                echo.insert(field.into(), v.into());
            }
        }
        if let Some(c) = strings(m, "contacts")? {
            echo.insert("contacts".into(), c.into());
        }
        echo.insert("client_name".into(), name.clone().into());
        echo.insert("redirect_uris".into(), redirect_uris.clone().into());
        echo.insert("grant_types".into(), grant_types.clone().into());
        echo.insert("response_types".into(), json!(["code"]));
        echo.insert(
            "token_endpoint_auth_method".into(),
            auth_method.clone().into(),
        );
        echo.insert("scope".into(), scopes.join(" ").into());
        echo.insert("application_type".into(), application_type.into());
        let settings = ClientSettings {
            name,
            client_type: if auth_method == "none" {
                "public".into()
            } else {
                "confidential".into()
            },
            redirect_uris,
            grant_types,
            scopes,
            token_endpoint_auth_method: Some(auth_method),
            ..ClientSettings::default()
        };
        Ok((settings, echo))
    }

    fn check_initial_token(&self, presented: Option<&str>) -> Result<(), RegistrationError> {
        let Some(expected) = &self.settings.registration_token_hash else {
            return Ok(());
        };
        let ok = presented.is_some_and(|t| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                TokenHash::of(t.as_bytes()).0.as_slice(),
                expected.0.as_slice(),
            ))
        });
        if ok {
            Ok(())
        } else {
            Err(RegistrationError::InvalidToken)
        }
    }

    fn answer(
        &self,
        client: &Client,
        echo: &Map<String, Value>,
        secret: Option<&SecretString>,
        token: Option<&str>,
        issued_at: Millis,
    ) -> Value {
        let mut body = echo.clone();
        body.insert("client_id".into(), client.id.to_string().into());
        body.insert("client_id_issued_at".into(), issued_at.as_secs().into());
        if let Some(s) = secret {
            body.insert("client_secret".into(), s.expose_secret().into());
            body.insert("client_secret_expires_at".into(), 0.into());
        }
        if let Some(t) = token {
            body.insert("registration_access_token".into(), t.into());
        }
        body.insert(
            "registration_client_uri".into(),
            format!("{}/oauth2/register/{}", self.issuer, client.id).into(),
        );
        Value::Object(body)
    }

    /// `POST /oauth2/register` (RFC 7591 §3).
    pub async fn register_client(
        &self,
        metadata: &Map<String, Value>,
        initial_token: Option<&str>,
        ip: Option<std::net::IpAddr>,
        ctx: &AuditContext,
    ) -> Result<Registered, RegistrationError> {
        if !self.settings.dynamic_registration {
            return Err(RegistrationError::Disabled);
        }
        self.check_initial_token(initial_token)?;
        let key = format!(
            "oauth-register:{}",
            ip.map(|i| client_bucket(i).to_string()).unwrap_or_default()
        );
        let policy = self.settings.registration_rate;
        let decision = self.failures.check(&key, policy, 1).await;
        if !decision.allowed {
            return Err(RegistrationError::Throttled(
                decision.retry_after_ms.div_ceil(1000).max(1),
            ));
        }
        let (settings, echo) = match self.registration_settings(metadata) {
            Ok(x) => x,
            Err(e) => {
                // A refused registration costs nothing of the address's allowance.
                self.failures.refund(&key, policy, 1).await;
                return Err(e);
            }
        };
        let (client, secret) = match self.clients.create("registration", &settings, ctx).await {
            Ok(x) => x,
            Err(e) => {
                self.failures.refund(&key, policy, 1).await;
                return Err(e.into());
            }
        };
        let token = OpaqueToken::generate(REGISTRATION_TOKEN_PREFIX)
            .map_err(|_| RegistrationError::Internal)?;
        let now = Millis::now();
        let stored = serde_json::to_string(&echo).map_err(|_| RegistrationError::Internal)?;
        self.store
            .insert_registration(&RegistrationRow {
                client_id: client.id.to_string(),
                token_hash: token.hash(),
                metadata: stored,
                created_at: now,
                updated_at: now,
            })
            .await?;
        self.audit.record(
            "oauth.client_registered",
            None,
            Some(client.id.as_str()),
            ctx,
            json!({
                "client_name": settings.name,
                "type": settings.client_type,
                "redirect_uris": settings.redirect_uris,
            }),
        );
        metrics::counter!("portcullis_oauth_registrations_total", "outcome" => "registered")
            .increment(1);
        Ok(Registered {
            body: self.answer(&client, &echo, secret.as_ref(), Some(token.expose()), now),
        })
    }

    async fn managed(
        &self,
        client_id: &str,
        token: Option<&str>,
    ) -> Result<(std::sync::Arc<Client>, RegistrationRow), RegistrationError> {
        if !self.settings.dynamic_registration {
            return Err(RegistrationError::Disabled);
        }
        let token = token
            .and_then(|t| OpaqueToken::parse(REGISTRATION_TOKEN_PREFIX, t).ok())
            .ok_or(RegistrationError::InvalidToken)?;
        let row = self
            .store
            .registration(client_id, &token.hash())
            .await?
            .ok_or(RegistrationError::InvalidToken)?;
        let client = self
            .clients
            .get(client_id)
            .await?
            .ok_or(RegistrationError::InvalidToken)?;
        Ok((client, row))
    }

    /// `GET /oauth2/register/{client_id}` (RFC 7592 §2.1).
    pub async fn read_registration(
        &self,
        client_id: &str,
        token: Option<&str>,
    ) -> Result<Registered, RegistrationError> {
        let (client, row) = self.managed(client_id, token).await?;
        let echo: Map<String, Value> =
            serde_json::from_str(&row.metadata).map_err(|_| RegistrationError::Internal)?;
        Ok(Registered {
            body: self.answer(&client, &echo, None, None, row.created_at),
        })
    }

    /// `PUT /oauth2/register/{client_id}` (RFC 7592 §2.2): the metadata replaces the registered one.
    pub async fn replace_registration(
        &self,
        client_id: &str,
        token: Option<&str>,
        metadata: &Map<String, Value>,
        ctx: &AuditContext,
    ) -> Result<Registered, RegistrationError> {
        let (client, row) = self.managed(client_id, token).await?;
        if metadata.get("client_id").and_then(Value::as_str) != Some(client_id) {
            return Err(RegistrationError::Metadata(
                "the body's client_id is the registration's".into(),
            ));
        }
        let (settings, echo) = self.registration_settings(metadata)?;
        let client = self
            .clients
            .update("registration", client.id.as_str(), &settings, ctx)
            .await?;
        let stored = serde_json::to_string(&echo).map_err(|_| RegistrationError::Internal)?;
        self.store
            .update_registration(client_id, &stored, Millis::now())
            .await?;
        self.audit.record(
            "oauth.client_registration_updated",
            None,
            Some(client_id),
            ctx,
            json!({ "client_name": settings.name }),
        );
        Ok(Registered {
            body: self.answer(&client, &echo, None, None, row.created_at),
        })
    }

    /// `DELETE /oauth2/register/{client_id}` (RFC 7592 §2.3).
    pub async fn delete_registration(
        &self,
        client_id: &str,
        token: Option<&str>,
        ctx: &AuditContext,
    ) -> Result<(), RegistrationError> {
        let (client, _) = self.managed(client_id, token).await?;
        self.clients
            .delete("registration", client.id.as_str(), ctx)
            .await?;
        Ok(())
    }
}

/// The scopes a dynamically registered client may hold: OpenID Connect's, the configured ones, and
/// those the protected resources' route rules require.
pub fn registration_scopes(
    configured: &[String],
    rules: &[portcullis_core::routes::RouteRule],
) -> Vec<String> {
    let mut out: Vec<String> = OIDC_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    for s in configured
        .iter()
        .chain(rules.iter().flat_map(|r| r.scopes.iter()))
    {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// The per-address allowance of registrations.
pub fn registration_rate(limit: u32, period_s: u64) -> RatePolicy {
    RatePolicy {
        limit,
        period_ms: period_s.saturating_mul(1000),
    }
}
