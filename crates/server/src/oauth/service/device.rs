//! The device authorization grant (RFC 8628): `/oauth2/device_authorization` makes a device code and
//! a user code, a person finds the request on `/device` by the user code and decides it, and the
//! device polls the token endpoint until the decision is there. User codes are hashed at rest and
//! their guessing is throttled per address; a device code is redeemed by one poll of its own client.

use std::net::IpAddr;

use portcullis_core::clock::Millis;
use portcullis_core::ids::{FamilyId, SessionId};
use portcullis_core::oauth::client::GrantType;
use portcullis_core::oauth::device::UserCode;
use portcullis_core::secrets::OpaqueToken;
use portcullis_store::{
    DeviceCodeRow, DeviceCodeStore, DeviceDecision, DevicePoll, SessionStore, StoreError,
};
use serde_json::json;

use super::{
    Browser, MAX_SCOPE_LEN, MAX_SCOPES, OAuth, TokenResponse, UserGrant, has, join, split,
};
use crate::audit::AuditContext;
use crate::oauth::clients::Client;
use crate::oauth::error::{OAuthError, OAuthResult};
use crate::oauth::params::Params;
use crate::ratelimit::{RateLimiter, client_bucket};
use crate::tokens::Tokens;

/// Prefix of device codes.
pub const DEVICE_CODE_PREFIX: &str = "pdc";
/// Device codes live this long (RFC 8628 §3.2 `expires_in`).
pub const DEVICE_CODE_TTL_S: i64 = 600;

/// The answer of `/oauth2/device_authorization` (RFC 8628 §3.2).
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: i64,
    pub interval: i64,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceAuthorization([redacted])")
    }
}

/// A pending device request, as the person deciding it sees it.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    pub client: std::sync::Arc<Client>,
    pub user_code: UserCode,
    pub scopes: Vec<String>,
}

/// Why a typed user code found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCodeRefused {
    /// Not a code, unknown, expired or already decided (never told apart).
    NotFound,
    /// Too many wrong codes from this address: wait this many seconds.
    Throttled(u64),
}

impl OAuth {
    /// `POST /oauth2/device_authorization` by an authenticated client.
    pub async fn device_authorization(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
    ) -> OAuthResult<DeviceAuthorization> {
        p.once()?;
        if !client.allows(GrantType::DeviceCode) {
            return Err(OAuthError::unauthorized_client(
                "this client may not use the device authorization grant",
            ));
        }
        let asked = split(p.bounded("scope", MAX_SCOPE_LEN)?.unwrap_or_default());
        if asked.len() > MAX_SCOPES {
            return Err(OAuthError::invalid_scope(format!(
                "at most {MAX_SCOPES} scopes"
            )));
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in asked {
            if !client.may_ask(&s) {
                return Err(OAuthError::invalid_scope(format!(
                    "this client may not ask for {}",
                    s.chars().take(64).collect::<String>()
                )));
            }
            if !has(&scopes, &s) {
                scopes.push(s);
            }
        }
        let resources = self.resources(client, &p.all("resource"))?;
        let device_code =
            OpaqueToken::generate(DEVICE_CODE_PREFIX).map_err(|_| OAuthError::server_error())?;
        let now = Millis::now();
        // 20^8 user codes: a collision with a live one is rare, and answered by drawing again.
        for _ in 0..4 {
            let user_code = UserCode::generate().map_err(|_| OAuthError::server_error())?;
            let row = DeviceCodeRow {
                device_code_hash: device_code.hash().as_bytes().to_vec(),
                user_code_hash: user_code.hash().as_bytes().to_vec(),
                client_id: client.id.to_string(),
                scope: join(&scopes),
                resources: resources.join(" "),
                created_at: now.0,
                expires_at: now.plus_secs(DEVICE_CODE_TTL_S).0,
                interval_s: self.settings.device_poll_interval_s,
                last_polled_at: None,
                polled_fast: 0,
                decision: None,
                user_id: None,
                session_id: None,
                decided_at: None,
                redeemed_at: None,
            };
            match self.store.insert_device_code(&row).await {
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
                Ok(()) => {}
            }
            metrics::counter!("portcullis_oauth_device_codes_total", "outcome" => "issued")
                .increment(1);
            self.audit.record(
                "oauth.device_code_issued",
                None,
                Some(client.id.as_str()),
                ctx,
                json!({ "scope": row.scope }),
            );
            let verification_uri = format!("{}/device", self.issuer);
            return Ok(DeviceAuthorization {
                device_code: device_code.expose().to_owned(),
                verification_uri_complete: format!(
                    "{verification_uri}?user_code={}",
                    user_code.as_str()
                ),
                user_code: user_code.display(),
                verification_uri,
                expires_in: DEVICE_CODE_TTL_S,
                interval: self.settings.device_poll_interval_s,
            });
        }
        Err(OAuthError::server_error())
    }

    /// The pending request a person typed the user code of. Wrong codes count against the address:
    /// after a few free ones, each further try waits twice as long (RFC 8628 §5.1).
    pub async fn device_request(
        &self,
        typed: &str,
        ip: Option<IpAddr>,
    ) -> Result<DeviceRequest, UserCodeRefused> {
        let key = format!(
            "device-user-code:{}",
            ip.map(|i| client_bucket(i).to_string()).unwrap_or_default()
        );
        let wait = self
            .failures
            .reserve_failure(&key, self.user_code_backoff)
            .await;
        if wait > 0 {
            metrics::counter!("portcullis_oauth_device_codes_total", "outcome" => "throttled")
                .increment(1);
            return Err(UserCodeRefused::Throttled(wait.div_ceil(1000)));
        }
        let found = match UserCode::parse(typed) {
            Some(code) => match self
                .store
                .pending_device_code(&code.hash(), Millis::now())
                .await
            {
                Ok(Some(row)) => match self.clients.get(&row.client_id).await {
                    Ok(Some(client)) => Some(DeviceRequest {
                        client,
                        user_code: code,
                        scopes: split(&row.scope),
                    }),
                    _ => None,
                },
                _ => None,
            },
            None => None,
        };
        match found {
            Some(r) => {
                // A right code takes back the failure reserved for it; the run of wrong ones stays.
                self.failures.release_failure(&key).await;
                Ok(r)
            }
            None => {
                metrics::counter!("portcullis_oauth_device_codes_total", "outcome" => "unknown_user_code")
                    .increment(1);
                Err(UserCodeRefused::NotFound)
            }
        }
    }

    /// The person's decision on a pending request; false when it was no longer pending (decided in
    /// another tab, or expired).
    pub async fn decide_device(
        &self,
        req: &DeviceRequest,
        approve: bool,
        b: &Browser,
        ctx: &AuditContext,
    ) -> OAuthResult<bool> {
        let session = b.session_id.to_string();
        let decision = if approve {
            DeviceDecision::Approve {
                user_id: b.user_id.as_str(),
                session_id: Some(&session),
            }
        } else {
            DeviceDecision::Deny
        };
        let done = self
            .store
            .decide_device_code(&req.user_code.hash(), decision, Millis::now())
            .await?;
        if done {
            self.audit.record(
                if approve {
                    "oauth.device_approved"
                } else {
                    "oauth.device_denied"
                },
                Some(b.user_id.as_str()),
                Some(req.client.id.as_str()),
                ctx,
                json!({ "scope": join(&req.scopes) }),
            );
        }
        Ok(done)
    }

    /// The token endpoint's `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 §3.4, §3.5).
    pub(super) async fn device_grant(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
        dpop: Option<&str>,
    ) -> OAuthResult<TokenResponse> {
        let raw = p
            .bounded("device_code", 256)?
            .ok_or_else(|| OAuthError::invalid_request("device_code is required"))?;
        let bad = || OAuthError::invalid_grant("the device code is not valid");
        let code = OpaqueToken::parse(DEVICE_CODE_PREFIX, raw).map_err(|_| bad())?;
        let now = Millis::now();
        let row = match self
            .store
            .poll_device_code(&code.hash(), client.id.as_str(), now)
            .await?
        {
            DevicePoll::Unknown => return Err(bad()),
            DevicePoll::Redeemed => {
                self.audit.record(
                    "oauth.device_code_replayed",
                    None,
                    Some(client.id.as_str()),
                    ctx,
                    json!({}),
                );
                return Err(bad());
            }
            DevicePoll::Expired => {
                return Err(OAuthError::new(
                    "expired_token",
                    "the device code has expired; start again",
                ));
            }
            DevicePoll::SlowDown { interval_s } => {
                return Err(OAuthError::new(
                    "slow_down",
                    format!("poll at most every {interval_s} s"),
                ));
            }
            DevicePoll::Pending => {
                return Err(OAuthError::new(
                    "authorization_pending",
                    "the user has not decided yet",
                ));
            }
            DevicePoll::Denied => {
                return Err(OAuthError::new(
                    "access_denied",
                    "the user denied the request",
                ));
            }
            DevicePoll::Approved(row) => row,
        };
        let user_id = row.user_id.clone().unwrap_or_default();
        let Some(user) = self.users.active(&user_id).await? else {
            return Err(bad());
        };
        let auth_time = match &row.session_id {
            Some(id) => match SessionId::parse(id).ok() {
                Some(sid) => self
                    .store
                    .session_by_id(&sid)
                    .await?
                    .map(|s| s.created_at.as_secs()),
                None => None,
            },
            None => None,
        }
        .unwrap_or(row.decided_at.unwrap_or(now.0) / 1000);
        let refresh = super::issues_refresh(client, &split(&row.scope));
        let answer = self
            .user_tokens(
                client,
                UserGrant {
                    user: &user,
                    scope: &row.scope,
                    session_id: row.session_id.clone(),
                    audiences: split(&row.resources),
                    auth_time,
                    nonce: None,
                    jti: Tokens::new_jti(now),
                    family_id: refresh.then(FamilyId::generate),
                    now,
                    jkt: dpop.map(str::to_owned),
                },
            )
            .await?;
        metrics::counter!("portcullis_oauth_device_codes_total", "outcome" => "redeemed")
            .increment(1);
        self.audit.record(
            "oauth.device_code_redeemed",
            Some(user.id.as_str()),
            Some(client.id.as_str()),
            ctx,
            json!({ "scope": row.scope, "refresh": refresh }),
        );
        Ok(answer)
    }
}
