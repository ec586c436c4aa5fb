//! The one verification pipeline (DESIGN.md "The one idea"): a credential — an API key, an access
//! token, a session cookie — becomes a [`Principal`], or the reason it does not. Our own endpoints take
//! a `Principal` through [`extract`] and never look at credentials themselves; forward auth and
//! introspection will come through the same door.

pub mod credential;
pub mod extract;

use std::sync::Arc;

use portcullis_core::apikeys::VerifyCode;
use portcullis_core::ids::{SessionId, UserId};
use portcullis_core::jwt::{AccessClaims, Audience};
use portcullis_core::principal::{AuthMethod, Principal};
use portcullis_core::scopes::Scopes;

pub use credential::Credential;

use crate::tokens::dpop::Dpop;

/// A DPoP-bound token is good only with its proof (RFC 9449 §7.1): as a Bearer token it is refused.
pub fn refuse_bound_as_bearer(claims: &AccessClaims) -> Result<()> {
    if claims.cnf.is_some() {
        return Err(Error::InvalidToken("dpop_bound"));
    }
    Ok(())
}
pub use extract::Admin;

use crate::apikeys::ApiKeys;
use crate::error::{Error, Result, Throttled};
use crate::sessions::{CookieSession, Sessions};
use crate::tokens::Tokens;
use crate::users::Users;

pub struct Auth {
    users: Arc<Users>,
    tokens: Arc<Tokens>,
    sessions: Arc<Sessions>,
    apikeys: Arc<ApiKeys>,
    dpop: Arc<Dpop>,
}

/// Where a request went, as a DPoP proof must name it (`htm`, `htu`).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    /// Scheme, authority and path, without the query.
    pub uri: &'a str,
}

impl Auth {
    pub fn new(
        users: Arc<Users>,
        tokens: Arc<Tokens>,
        sessions: Arc<Sessions>,
        apikeys: Arc<ApiKeys>,
        dpop: Arc<Dpop>,
    ) -> Self {
        Self {
            users,
            tokens,
            sessions,
            apikeys,
            dpop,
        }
    }

    /// [`Self::authenticate`] for a request whose target is known, which a DPoP-bound token needs.
    pub async fn authenticate_at(
        &self,
        credential: Credential<'_>,
        target: Target<'_>,
    ) -> Result<Principal> {
        match credential {
            Credential::Dpop { token, proof } => {
                let claims = self.tokens.verify(token).await?;
                self.check_dpop(&claims, token, proof, target).await?;
                Ok(self.claims_principal(&claims, AuthMethod::Jwt))
            }
            other => self.authenticate(other).await,
        }
    }

    /// A DPoP-bound token's proof: good for this request, by the key the token is bound to. A
    /// token that is not bound is not accepted under the DPoP scheme either (§7.1).
    pub async fn check_dpop(
        &self,
        claims: &AccessClaims,
        token: &str,
        proof: &str,
        target: Target<'_>,
    ) -> Result<()> {
        let Some(cnf) = &claims.cnf else {
            return Err(Error::InvalidDpopProof("token_not_bound"));
        };
        let jkt = self
            .dpop
            .check(proof, target.method, target.uri, Some(token))
            .await
            .map_err(|e| match e {
                crate::tokens::dpop::Refused::Invalid(why) => Error::InvalidDpopProof(why),
                crate::tokens::dpop::Refused::UseNonce(_) => Error::InvalidDpopProof("use_nonce"),
                crate::tokens::dpop::Refused::Unavailable => Error::Overloaded,
            })?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            jkt.as_bytes(),
            cnf.jkt.as_bytes(),
        )) {
            return Err(Error::InvalidDpopProof("wrong_key"));
        }
        Ok(())
    }

    /// The principal a credential proves, or why not.
    pub async fn authenticate(&self, credential: Credential<'_>) -> Result<Principal> {
        match credential {
            Credential::ApiKey(raw) => self.api_key(raw).await,
            Credential::Bearer(token) => self.access_token(token).await,
            // A proof names the request it came with; without the request there is nothing to check
            // it against (see `authenticate_at`).
            Credential::Dpop { .. } => Err(Error::InvalidDpopProof("no_request_target")),
            // Only the whole request can be verified: the signature middleware does it before any
            // handler runs, so a signed request that reaches this point was not verified anywhere.
            Credential::Signature(_) => Err(Error::SignatureInvalid(
                portcullis_core::httpsig::Reason::MissingSignature,
            )),
            Credential::Session {
                cookie,
                unsafe_method,
                csrf,
                site,
            } => {
                let s = self.sessions.cookie_session(cookie).await?;
                if unsafe_method {
                    self.sessions.check_same_site(&site)?;
                    self.sessions.check_csrf(&s, csrf)?;
                }
                Ok(self.session_principal(&s))
            }
        }
    }

    /// The principal of a checked session (the user's own login, full self-service rights); notes
    /// the session's use.
    pub fn session_principal(&self, s: &CookieSession) -> Principal {
        self.sessions.seen(s);
        Principal {
            subject: s.row.user_id.to_string(),
            user_id: Some(s.row.user_id.clone()),
            method: AuthMethod::Session,
            scopes: Scopes::default(),
            session_id: Some(s.row.id.clone()),
            key_id: None,
            signature_key_id: None,
            client_id: None,
            first_party: true,
        }
    }

    /// Administrators: users with role `admin` (through their own login), or credentials with scope
    /// `admin`.
    pub async fn is_admin(&self, p: &Principal) -> Result<bool> {
        self.users.is_admin(p).await
    }

    async fn access_token(&self, token: &str) -> Result<Principal> {
        let claims = self.tokens.verify(token).await?;
        refuse_bound_as_bearer(&claims)?;
        Ok(self.claims_principal(&claims, AuthMethod::Jwt))
    }

    /// An access JWT meant for `audience` (a protected resource behind forward auth): every check of
    /// [`Tokens::verify`], with that audience instead of ours.
    pub async fn access_token_for(&self, token: &str, audience: &str) -> Result<Principal> {
        let claims = self.claims_for(token, audience).await?;
        refuse_bound_as_bearer(&claims)?;
        Ok(self.claims_principal(&claims, AuthMethod::Jwt))
    }

    /// An access JWT's claims, checked as [`Tokens::verify`] does but for `audience`.
    async fn claims_for(&self, token: &str, audience: &str) -> Result<Arc<AccessClaims>> {
        let claims = self.tokens.verify_for(token, Audience::Any).await?;
        if !claims.aud.iter().any(|a| a == audience) {
            return Err(Error::InvalidToken("wrong_audience"));
        }
        Ok(claims)
    }

    /// [`Self::access_token_for`] presented under the DPoP scheme, with its proof for `target`.
    pub async fn dpop_token_for(
        &self,
        token: &str,
        proof: &str,
        audience: &str,
        target: Target<'_>,
    ) -> Result<Principal> {
        let claims = self.claims_for(token, audience).await?;
        self.check_dpop(&claims, token, proof, target).await?;
        Ok(self.claims_principal(&claims, AuthMethod::Jwt))
    }

    /// The principal an access token's claims speak for (a JWT, or an opaque token's row).
    pub fn claims_principal(&self, claims: &AccessClaims, method: AuthMethod) -> Principal {
        Principal {
            subject: claims.sub.clone(),
            user_id: UserId::parse(&claims.sub).ok(),
            method,
            scopes: Scopes::parse_space_separated(&claims.scope).unwrap_or_default(),
            session_id: claims
                .sid
                .as_deref()
                .and_then(|sid| SessionId::parse(sid).ok()),
            key_id: None,
            signature_key_id: None,
            first_party: claims.client_id == self.tokens.first_party_client_id(),
            client_id: Some(claims.client_id.clone()),
        }
    }

    /// A key as a credential goes through the verify order and spends its uses and rate like a verify.
    async fn api_key(&self, raw: &str) -> Result<Principal> {
        let check = self.apikeys.check(raw, &[], None).await?;
        let row = match check.code {
            VerifyCode::Valid => check.row.ok_or(Error::InvalidApiKey)?,
            VerifyCode::UsageExceeded => {
                return Err(Error::Forbidden(
                    "usage_exceeded",
                    "this API key has no uses left".into(),
                ));
            }
            VerifyCode::RateLimited => {
                let (policy, decision) = check.ratelimit.ok_or(Error::InvalidApiKey)?;
                return Err(Error::RateLimited(Throttled {
                    policy: "api-key",
                    limit: policy.limit,
                    window_s: policy.period_ms.div_ceil(1000),
                    decision,
                }));
            }
            _ => return Err(Error::InvalidApiKey),
        };
        Ok(Principal {
            subject: match &row.owner_id {
                Some(owner) => owner.to_string(),
                None => row.id.to_string(),
            },
            user_id: row.owner_id.clone(),
            method: AuthMethod::ApiKey,
            scopes: row.scopes.clone(),
            session_id: None,
            key_id: Some(row.id.clone()),
            signature_key_id: None,
            client_id: None,
            first_party: false,
        })
    }
}
