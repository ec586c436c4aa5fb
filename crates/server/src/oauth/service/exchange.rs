//! Token exchange (RFC 8693): a client allowed the `urn:ietf:params:oauth:grant-type:token-exchange`
//! grant trades an access token of ours (the subject's, a JWT or an opaque `pat_…`) for one meant
//! for another resource, with the same or fewer scopes, never more. With an `actor_token` it is
//! delegation: the new token's `act` names the actor (nesting any earlier `act`, §4.1).

use portcullis_core::clock::Millis;
use portcullis_core::jwt::{AccessClaims, Audience};
use portcullis_core::secrets::OpaqueToken;
use serde_json::{Value, json};

use super::{
    MAX_SCOPE_LEN, MAX_TOKEN_LEN, OAuth, OPAQUE_PREFIX, TokenResponse, has, join, split, token_type,
};
use crate::audit::AuditContext;
use crate::oauth::clients::{Client, TokenFormat};
use crate::oauth::error::{OAuthError, OAuthResult};
use crate::oauth::params::Params;
use crate::tokens::{AccessGrant, Tokens};

/// The one token type exchanged here, both ways (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

impl OAuth {
    /// An access token we issued, still good (not expired, revoked or of a deleted user).
    async fn live_access(&self, token: &str) -> OAuthResult<Option<AccessClaims>> {
        if token.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        if let Ok(t) = OpaqueToken::parse(OPAQUE_PREFIX, token) {
            return self.opaque_claims(&t).await;
        }
        let Ok(claims) = self.tokens.verify_for(token, Audience::Any).await else {
            return Ok(None);
        };
        if portcullis_core::ids::UserId::parse(&claims.sub).is_ok()
            && self.users.active(&claims.sub).await?.is_none()
        {
            return Ok(None);
        }
        Ok(Some((*claims).clone()))
    }

    /// `token_type` parameters name the one type served.
    fn exchanged_type(p: &Params, name: &str, required: bool) -> OAuthResult<()> {
        match p.get(name) {
            Some(ACCESS_TOKEN_TYPE) => Ok(()),
            None if !required => Ok(()),
            None => Err(OAuthError::invalid_request(format!("{name} is required"))),
            Some(_) => Err(OAuthError::invalid_request(format!(
                "{name} is {ACCESS_TOKEN_TYPE}: only access tokens are exchanged here"
            ))),
        }
    }

    pub(super) async fn exchange_grant(
        &self,
        client: &Client,
        p: &Params,
        ctx: &AuditContext,
        dpop: Option<&str>,
    ) -> OAuthResult<TokenResponse> {
        let subject_token = p
            .get("subject_token")
            .ok_or_else(|| OAuthError::invalid_request("subject_token is required"))?;
        Self::exchanged_type(p, "subject_token_type", true)?;
        Self::exchanged_type(p, "requested_token_type", false)?;
        let actor_token = p.get("actor_token");
        if actor_token.is_some() != p.get("actor_token_type").is_some() {
            return Err(OAuthError::invalid_request(
                "actor_token and actor_token_type come together",
            ));
        }
        if actor_token.is_some() {
            Self::exchanged_type(p, "actor_token_type", true)?;
        }
        let subject = self
            .live_access(subject_token)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("the subject_token is not valid"))?;
        // A bound subject token is exchanged only by the holder of its key.
        if let Some(cnf) = &subject.cnf
            && dpop != Some(cnf.jkt.as_str())
        {
            return Err(OAuthError::invalid_grant(
                "the subject_token is bound to a DPoP key: send a proof made with it",
            ));
        }
        let actor = match actor_token {
            Some(t) => Some(
                self.live_access(t)
                    .await?
                    .ok_or_else(|| OAuthError::invalid_grant("the actor_token is not valid"))?,
            ),
            None => None,
        };
        // Scopes: what was asked, each held by the subject token and registered by this client;
        // unasked, what both have.
        let held = split(&subject.scope);
        let scopes = match p.bounded("scope", MAX_SCOPE_LEN)? {
            Some(asked) => {
                let asked = split(asked);
                if let Some(extra) = asked.iter().find(|s| !has(&held, s) || !client.may_ask(s)) {
                    return Err(OAuthError::invalid_scope(format!(
                        "{} is not in the subject_token's scope (or this client's): an exchange never widens it",
                        extra.chars().take(64).collect::<String>()
                    )));
                }
                asked
            }
            None => held.into_iter().filter(|s| client.may_ask(s)).collect(),
        };
        let mut asked = p.all("resource");
        asked.extend(p.all("audience"));
        let audiences = self.resources(client, &asked)?;
        let audiences = if audiences.is_empty() {
            client.audiences.clone()
        } else {
            audiences
        };
        // RFC 8693 §4.1: the current actor outermost, earlier ones nested inside.
        let act = actor.as_ref().map(|a| {
            let mut act = json!({ "sub": a.sub, "client_id": a.client_id });
            if let (Some(prior), Some(obj)) = (&subject.act, act.as_object_mut()) {
                obj.insert("act".into(), prior.clone());
            }
            act
        });
        let act = act.or_else(|| subject.act.clone());
        let now = Millis::now();
        let scope = join(&scopes);
        let (access_token, expires_in) = match client.token_format {
            TokenFormat::Jwt => {
                let grant = AccessGrant {
                    subject: subject.sub.clone(),
                    client_id: client.public_id.clone(),
                    scope: scope.clone(),
                    sid: None,
                    audiences: audiences.clone(),
                    jkt: dpop.map(str::to_owned),
                    act: act.clone(),
                };
                let (token, _) = self.tokens.sign_access(grant, Tokens::new_jti(now), now)?;
                (token, self.tokens.access_ttl_s())
            }
            TokenFormat::Opaque => {
                self.access_token(
                    client,
                    &subject.sub,
                    &scope,
                    None,
                    audiences.clone(),
                    Tokens::new_jti(now),
                    None,
                    now,
                    dpop,
                )
                .await?
            }
        };
        self.audit.record(
            "oauth.token_exchanged",
            actor
                .as_ref()
                .map(|a| a.sub.as_str())
                .or(Some(client.id.as_str())),
            Some(subject.sub.as_str()),
            ctx,
            json!({
                "client_id": client.id.as_str(),
                "scope": scope,
                "aud": audiences,
                "act": act.as_ref().map(|a| a.get("sub").cloned().unwrap_or(Value::Null)),
            }),
        );
        metrics::counter!("portcullis_oauth_exchanges_total", "outcome" => "issued").increment(1);
        Ok(TokenResponse {
            issued_token_type: Some(ACCESS_TOKEN_TYPE),
            token_type: token_type(dpop),
            access_token,
            expires_in,
            scope,
            refresh_token: None,
            id_token: None,
        })
    }
}
