//! The signatures capability: signing keys (made, listed, revoked; an HMAC secret sealed under the
//! master key, an Ed25519 public key as given) and the verification of a signed request, with the
//! key's owner checked and the nonce spent.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use portcullis_core::clock::Millis;
use portcullis_core::httpsig::keys::{self, VerifyingKey};
use portcullis_core::httpsig::verify::{self as check, Body};
use portcullis_core::httpsig::{Algorithm, Message, Reason, fields};
use portcullis_core::ids::{SignatureKeyId, UserId};
use portcullis_core::principal::{AuthMethod, Principal};
use portcullis_core::scopes::Scopes;
use portcullis_core::seal::MasterKey;
use portcullis_store::{KeyOwner, SignatureKeyRow, SignatureKeyStore, Store};

use super::replay::{FirstUse, NonceCache};
use crate::apikeys::{ApiKeys, check_name, check_scopes};
use crate::audit::{Audit, AuditContext};
use crate::error::{Error, FieldError, Result};
use crate::invalidation::{Bus, Invalidation};
use crate::users::Users;

/// The sealing context of an HMAC secret: bound to its key id, so a sealed secret copied onto another
/// row does not open.
fn seal_context(id: &str) -> String {
    format!("signature-key:{id}")
}

pub struct SignatureSettings {
    /// The scheme of `issuer`: the `@scheme` of direct requests.
    pub scheme: String,
    /// The authority of `issuer`: the `@authority` of direct requests.
    pub authority: String,
    /// How long a key stays cached (revocations elsewhere are polled within a second anyway).
    pub cache_ttl: Duration,
    /// `trusted_proxies`: peers whose `X-Forwarded-Proto` / `X-Forwarded-Host` describe the request.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A key as the verifier needs it.
struct LiveKey {
    id: SignatureKeyId,
    owner: Option<UserId>,
    scopes: Scopes,
    key: VerifyingKey,
}

pub struct Signatures {
    store: Store,
    users: Arc<Users>,
    apikeys: Arc<ApiKeys>,
    master: MasterKey,
    audit: Audit,
    bus: Arc<Bus>,
    nonces: Arc<dyn NonceCache>,
    cache: moka::sync::Cache<String, Arc<LiveKey>>,
    settings: SignatureSettings,
}

/// What to make.
pub struct NewSignatureKey {
    pub name: String,
    pub alg: String,
    pub public_key: Option<String>,
    pub scopes: Vec<String>,
    /// For administrators: whose key (`None`: nobody's).
    pub owner: Option<Option<UserId>>,
}

/// A request to verify.
pub struct SignedRequest<'a> {
    pub msg: Message<'a>,
    pub body: Body<'a>,
}

/// A signed request that verified: who signed it, and the `Content-Digest` the upstream must check
/// when we did not see the body.
#[derive(Debug, Clone)]
pub struct SignatureAuth {
    pub principal: Principal,
    pub key_id: SignatureKeyId,
    pub owner_id: Option<UserId>,
    pub content_digest: Option<String>,
}

/// A page of keys.
pub struct SignatureKeyPage {
    pub keys: Vec<SignatureKeyRow>,
    pub next_cursor: Option<String>,
}

impl Signatures {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        users: Arc<Users>,
        apikeys: Arc<ApiKeys>,
        master: MasterKey,
        audit: Audit,
        bus: Arc<Bus>,
        nonces: Arc<dyn NonceCache>,
        settings: SignatureSettings,
    ) -> Self {
        Self {
            store,
            users,
            apikeys,
            master,
            audit,
            bus,
            nonces,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(settings.cache_ttl)
                .build(),
            settings,
        }
    }

    /// Drops a revoked key from the cache (a change here or on another node).
    pub fn apply(&self, event: &Invalidation) {
        // A user's change (disabled, deleted) is checked on every request: nothing of it is cached.
        if let Invalidation::SignatureKey(id) = event {
            self.cache.invalidate(id);
        }
    }

    /// The `@scheme` and `@authority` of the issuer.
    pub fn origin(&self) -> (&str, &str) {
        (&self.settings.scheme, &self.settings.authority)
    }

    /// The `@scheme` and `@authority` of a request made to us directly: the issuer's, unless the peer
    /// is a trusted proxy that says otherwise with `X-Forwarded-Proto` / `X-Forwarded-Host`.
    pub fn direct_origin(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> (String, String) {
        let trusted = peer.is_some_and(|ip| {
            self.settings
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&ip))
        });
        let forwarded = |name: &str| {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(v), None) => v.to_str().ok().map(|v| v.trim().to_owned()),
                _ => None,
            }
        };
        let (mut scheme, mut authority) = (
            self.settings.scheme.clone(),
            self.settings.authority.clone(),
        );
        if trusted {
            if let Some(p) = forwarded("x-forwarded-proto").filter(|p| p == "http" || p == "https")
            {
                scheme = p;
            }
            if let Some(h) = forwarded("x-forwarded-host").filter(|h| !h.is_empty()) {
                authority = h;
            }
        }
        (scheme, authority)
    }

    /// Makes a key. For hmac-sha256 the secret (base64) is returned once and kept only sealed.
    pub async fn create(
        &self,
        p: &Principal,
        req: NewSignatureKey,
        ctx: &AuditContext,
    ) -> Result<(SignatureKeyRow, Option<String>)> {
        let admin = self.users.is_admin(p).await?;
        let owner = match req.owner {
            Some(owner) if admin => owner,
            Some(_) => {
                return Err(Error::Forbidden(
                    "forbidden",
                    "only administrators choose a key's owner".into(),
                ));
            }
            None => Some(self.manager(p, true, admin)?),
        };
        let mut errors = Vec::new();
        let name = check_name(&req.name, &mut errors);
        let scopes = check_scopes(&req.scopes, &mut errors);
        let alg = Algorithm::parse(&req.alg);
        if alg.is_none() {
            errors.push(FieldError::new(
                "alg",
                "unsupported_alg",
                "alg must be hmac-sha256 or ed25519",
            ));
        }
        let public = match (alg, req.public_key.as_deref()) {
            (Some(Algorithm::Ed25519), Some(text)) => match keys::parse_ed25519_public_key(text) {
                Ok(pk) => Some(pk),
                Err(e) => {
                    errors.push(FieldError::new(
                        "public_key",
                        "invalid_public_key",
                        e.to_string(),
                    ));
                    None
                }
            },
            (Some(Algorithm::Ed25519), None) => {
                errors.push(FieldError::new(
                    "public_key",
                    "required",
                    "an ed25519 key needs public_key: we never see its private half",
                ));
                None
            }
            (Some(Algorithm::HmacSha256), Some(_)) => {
                errors.push(FieldError::new(
                    "public_key",
                    "not_allowed",
                    "hmac-sha256 secrets are generated by the server and shown once; send no public_key",
                ));
                None
            }
            _ => None,
        };
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        self.apikeys.check_grant(p, admin, &scopes)?;
        let id = SignatureKeyId::generate();
        let (alg, material, secret) = match (alg, public) {
            (Some(Algorithm::Ed25519), Some(pk)) => (Algorithm::Ed25519, pk.to_vec(), None),
            _ => {
                let secret =
                    keys::generate_hmac_secret().map_err(|e| Error::Internal(e.to_string()))?;
                let sealed = self
                    .master
                    .seal(&seal_context(id.as_str()), &secret)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                (
                    Algorithm::HmacSha256,
                    sealed,
                    Some(STANDARD.encode(&secret)),
                )
            }
        };
        let row = SignatureKeyRow {
            id: id.to_string(),
            owner_id: owner.as_ref().map(ToString::to_string),
            name,
            alg: alg.as_str().to_owned(),
            key_material: material,
            scopes: scopes.to_string(),
            created_at: Millis::now().0,
            revoked_at: None,
        };
        self.store.insert_signature_key(&row).await?;
        self.audit.record(
            "signature_key.created",
            Some(&p.subject),
            Some(&row.id),
            ctx,
            serde_json::json!({ "name": row.name, "alg": row.alg, "scopes": row.scopes, "owner_id": row.owner_id }),
        );
        Ok((row, secret))
    }

    /// Whose keys `p` manages: its own user. Signing keys need the user's own login or `keys:write`
    /// (`keys:read` to list), like API keys.
    fn manager(&self, p: &Principal, write: bool, admin: bool) -> Result<UserId> {
        let allowed = p.first_party
            || admin
            || p.scopes.contains("keys:write")
            || (!write && p.scopes.contains("keys:read"));
        if !allowed {
            return Err(Error::Forbidden(
                "insufficient_scope",
                "managing signing keys needs scope keys:write (keys:read to list them)".into(),
            ));
        }
        p.user_id.clone().ok_or_else(|| {
            Error::Forbidden(
                "not_a_user",
                "this credential belongs to no user, so it has no keys to manage".into(),
            )
        })
    }

    /// The caller's keys, a page.
    pub async fn list(
        &self,
        p: &Principal,
        cursor: Option<&SignatureKeyId>,
        limit: u32,
    ) -> Result<SignatureKeyPage> {
        let admin = self.users.is_admin(p).await?;
        let owner = self.manager(p, false, admin)?;
        self.page(KeyOwner::User(&owner), cursor, limit).await
    }

    /// Every key, or `owner`'s (administrators).
    pub async fn list_all(
        &self,
        owner: Option<Option<&UserId>>,
        cursor: Option<&SignatureKeyId>,
        limit: u32,
    ) -> Result<SignatureKeyPage> {
        let owner = match owner {
            None => KeyOwner::All,
            Some(None) => KeyOwner::Nobody,
            Some(Some(u)) => KeyOwner::User(u),
        };
        self.page(owner, cursor, limit).await
    }

    async fn page(
        &self,
        owner: KeyOwner<'_>,
        cursor: Option<&SignatureKeyId>,
        limit: u32,
    ) -> Result<SignatureKeyPage> {
        let mut keys = self
            .store
            .list_signature_keys(
                owner,
                cursor,
                i64::from(portcullis_core::page::fetch(limit)),
            )
            .await?;
        let next_cursor = portcullis_core::page::cut(&mut keys, limit, |k| k.id.clone());
        Ok(SignatureKeyPage { keys, next_cursor })
    }

    /// Revokes one of the caller's keys (`admin_any`: any key).
    pub async fn revoke(
        &self,
        p: &Principal,
        id: &SignatureKeyId,
        admin_any: bool,
        ctx: &AuditContext,
    ) -> Result<()> {
        let owner;
        let scope = if admin_any {
            KeyOwner::All
        } else {
            let admin = self.users.is_admin(p).await?;
            owner = self.manager(p, true, admin)?;
            KeyOwner::User(&owner)
        };
        let revoked = self
            .store
            .revoke_signature_key(id, scope, Millis::now())
            .await?
            .ok_or_else(|| Error::NotFound("no live signing key with this id".into()))?;
        // This node forgets the key before answering; others poll the revocation within a second.
        let event = Invalidation::SignatureKey(revoked.id.clone());
        self.apply(&event);
        self.bus.send(event);
        self.audit.record(
            "signature_key.revoked",
            Some(&p.subject),
            Some(&revoked.id),
            ctx,
            serde_json::json!({ "name": revoked.name, "owner_id": revoked.owner_id }),
        );
        Ok(())
    }

    /// A live key by its `keyid`: cached, else read and (for HMAC) unsealed. `None` for anything that
    /// is not an active key whose owner is active.
    async fn live_key(&self, keyid: &str) -> Result<Option<Arc<LiveKey>>> {
        // Only our id shape reaches the store: a flood of made-up keyids costs no query.
        let Ok(id) = SignatureKeyId::parse(keyid) else {
            return Ok(None);
        };
        let key = match self.cache.get(keyid) {
            Some(key) => key,
            None => {
                let Some(row) = self.store.signature_key(&id).await? else {
                    return Ok(None);
                };
                if row.revoked_at.is_some() {
                    return Ok(None);
                }
                let key = Arc::new(self.unseal(id, &row)?);
                self.cache.insert(keyid.to_owned(), Arc::clone(&key));
                key
            }
        };
        if let Some(owner) = &key.owner
            && self.users.active(owner.as_str()).await?.is_none()
        {
            return Ok(None);
        }
        Ok(Some(key))
    }

    fn unseal(&self, id: SignatureKeyId, row: &SignatureKeyRow) -> Result<LiveKey> {
        let corrupt = |what: &str| Error::Internal(format!("signature key {}: {what}", row.id));
        let key = match Algorithm::parse(&row.alg) {
            Some(Algorithm::HmacSha256) => {
                let secret = self
                    .master
                    .open(&seal_context(&row.id), &row.key_material)
                    .map_err(|_| {
                        corrupt("the sealed secret does not open under this master key")
                    })?;
                VerifyingKey::hmac(&secret).map_err(|_| corrupt("short secret"))?
            }
            Some(Algorithm::Ed25519) => VerifyingKey::ed25519(
                row.key_material
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("public key is not 32 bytes"))?,
            ),
            None => return Err(corrupt("unknown alg")),
        };
        Ok(LiveKey {
            id,
            owner: row
                .owner_id
                .as_deref()
                .map(UserId::parse)
                .transpose()
                .map_err(|_| corrupt("owner id"))?,
            scopes: Scopes::parse_space_separated(&row.scopes).map_err(|_| corrupt("scopes"))?,
            key,
        })
    }

    /// Verifies a signed request (RFC 9421 §3.2) and spends its nonce. Several signatures may be
    /// present: the first that verifies under a key we know wins; otherwise the answer is the most
    /// telling failure (that of a known key before `unknown_key`).
    pub async fn verify(&self, req: &SignedRequest<'_>) -> Result<SignatureAuth> {
        let refuse = |r: Reason| Error::SignatureInvalid(r);
        let signed = fields::signatures(req.msg.headers).map_err(refuse)?;
        let now_ms = Millis::now().0;
        let now = now_ms.div_euclid(1000);
        let policy = check::Policy {
            now,
            body: req.body,
        };
        // The first failure under a key we know says more than any other (an `unknown_key` beside it
        // is likely a second signature meant for another verifier).
        let (mut known_failure, mut other_failure) = (None, None);
        let mut note = |r: Reason, known: bool| {
            let slot = if known {
                &mut known_failure
            } else {
                &mut other_failure
            };
            slot.get_or_insert(r);
        };
        for s in &signed {
            let pre = match check::precheck(s, &policy) {
                Ok(pre) => pre,
                Err(r) => {
                    note(r, false);
                    continue;
                }
            };
            let Some(key) = self.live_key(pre.keyid()).await? else {
                note(Reason::UnknownKey, false);
                continue;
            };
            let verified = match check::check(pre, &key.key, &req.msg, &policy) {
                Ok(v) => v,
                Err(r) => {
                    note(r, true);
                    continue;
                }
            };
            match self
                .nonces
                .first_use(
                    &verified.keyid,
                    verified.replay_key(),
                    now,
                    verified.remember_until,
                )
                .await
            {
                FirstUse::Yes => {}
                FirstUse::Replayed => {
                    note(Reason::Replayed, true);
                    continue;
                }
                FirstUse::Unavailable => return Err(Error::Overloaded),
            }
            count(true);
            return Ok(SignatureAuth {
                principal: Principal {
                    subject: key
                        .owner
                        .as_ref()
                        .map_or_else(|| key.id.to_string(), ToString::to_string),
                    user_id: key.owner.clone(),
                    method: AuthMethod::Signature,
                    scopes: key.scopes.clone(),
                    session_id: None,
                    key_id: None,
                    signature_key_id: Some(key.id.clone()),
                    client_id: None,
                    first_party: false,
                },
                key_id: key.id.clone(),
                owner_id: key.owner.clone(),
                content_digest: verified.content_digest,
            });
        }
        count(false);
        Err(refuse(
            known_failure
                .or(other_failure)
                .unwrap_or(Reason::MissingSignature),
        ))
    }
}

/// Counts a verification; the two counters are registered once, not looked up per request.
fn count(valid: bool) {
    static COUNTERS: std::sync::OnceLock<[metrics::Counter; 2]> = std::sync::OnceLock::new();
    let [ok, refused] = COUNTERS.get_or_init(|| {
        [
            metrics::counter!("portcullis_signatures_total", "outcome" => "valid"),
            metrics::counter!("portcullis_signatures_total", "outcome" => "refused"),
        ]
    });
    if valid { ok } else { refused }.increment(1);
}
