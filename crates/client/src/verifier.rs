//! [`Verifier`]: a token → the [`Principal`] it speaks for, checked with the server's own rules.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use portcullis_core::bearer;
use portcullis_core::clock::Millis;
use portcullis_core::ids::{SessionId, UserId};
use portcullis_core::jwt::{AccessClaims, Audience, JwtError};
use portcullis_core::principal::{AuthMethod, Principal};
use portcullis_core::scopes::Scopes;
use portcullis_core::secrets::TokenHash;

use crate::Error;
use crate::jwks::Jwks;

/// Longest token looked at.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Largest introspection answer read.
const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;

/// What a resource server needs to know about its issuer.
#[derive(Debug, Clone)]
pub struct Config {
    /// The issuer (`iss` of its tokens), e.g. `https://auth.example.com`.
    pub issuer: String,
    /// This service's audience: tokens must carry it in `aud`.
    pub audience: String,
    /// Default: `<issuer>/.well-known/jwks.json`.
    pub jwks_uri: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf` (seconds, at most 60).
    pub leeway_s: i64,
    /// A token naming an unknown key refetches the JWKS at most this often.
    pub min_refetch_interval: Duration,
    /// How long a JWKS without `Cache-Control: max-age` stays fresh.
    pub default_jwks_ttl: Duration,
    /// Time allowed for one request to the issuer.
    pub timeout: Duration,
    /// Verified tokens kept in memory (each until it expires).
    pub token_cache_capacity: usize,
    /// Opaque tokens (`pat_…`) are checked by RFC 7662 introspection when this is set.
    pub introspection: Option<Introspection>,
    /// The URL of this resource's RFC 9728 metadata, named in 401 challenges.
    pub resource_metadata: Option<String>,
}

impl Config {
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            audience: audience.into(),
            jwks_uri: None,
            leeway_s: 30,
            min_refetch_interval: Duration::from_secs(10),
            default_jwks_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
            token_cache_capacity: 10_000,
            introspection: None,
            resource_metadata: None,
        }
    }
}

/// A confidential client of the issuer that may introspect.
#[derive(Clone)]
pub struct Introspection {
    pub client_id: String,
    pub client_secret: String,
    /// Default: `<issuer>/oauth2/introspect`.
    pub endpoint: Option<String>,
    /// An active answer is reused this long (never past the token's `exp`): a revoked opaque token
    /// may pass this much longer here.
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Introspection {
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            endpoint: None,
            cache_ttl: Duration::from_secs(30),
        }
    }
}

/// A checked token's principal, the second the token expires and the instant the entry stops being
/// trusted.
type Entry = (i64, Instant, Arc<Principal>);

/// Principals of tokens already checked, by the token's SHA-256.
struct Cache {
    capacity: usize,
    entries: RwLock<HashMap<[u8; 32], Entry>>,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, key: &[u8; 32], now_s: i64, leeway_s: i64) -> Option<Arc<Principal>> {
        let g = self.entries.read().ok()?;
        let (exp, until, p) = g.get(key)?;
        (*exp + leeway_s > now_s && *until > Instant::now()).then(|| Arc::clone(p))
    }

    fn put(&self, key: [u8; 32], exp: i64, until: Instant, p: Arc<Principal>) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut g) = self.entries.write() {
            if g.len() >= self.capacity {
                let now = Millis::now().as_secs();
                g.retain(|_, (exp, until, _)| *exp > now && *until > Instant::now());
                if g.len() >= self.capacity {
                    g.clear();
                }
            }
            g.insert(key, (exp, until, p));
        }
    }

    fn clear(&self) {
        if let Ok(mut g) = self.entries.write() {
            g.clear();
        }
    }
}

struct Inner {
    config: Config,
    http: reqwest::Client,
    jwks: Jwks,
    verified: Cache,
    introspected: Cache,
}

/// Verifies Portcullis access tokens inside a service. Cheap to clone; share one per issuer.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl Verifier {
    pub fn new(config: Config) -> Result<Self, Error> {
        if !(config.issuer.starts_with("https://") || config.issuer.starts_with("http://")) {
            return Err(Error::Config("issuer must be an http(s) URL".into()));
        }
        if config.audience.is_empty() {
            return Err(Error::Config(
                "audience must be set: the aud this service's tokens carry".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let jwks_uri = config
            .jwks_uri
            .clone()
            .unwrap_or_else(|| format!("{}/.well-known/jwks.json", config.issuer));
        let jwks = Jwks::new(
            jwks_uri,
            config.issuer.clone(),
            config.audience.clone(),
            config.leeway_s.clamp(0, 60),
            config.min_refetch_interval,
            config.default_jwks_ttl,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                verified: Cache::new(config.token_cache_capacity),
                introspected: Cache::new(config.token_cache_capacity),
                config,
                http,
                jwks,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The principal an access token speaks for: an RFC 9068 JWT verified locally (algorithm pinned
    /// to the key, `typ` `at+jwt`, `iss`, `aud`, `exp`/`nbf` with leeway), or an opaque token by
    /// introspection when configured. A DPoP-bound token (`cnf`) is refused (`dpop_bound`): it is
    /// good only with a proof of its key, which this Bearer verifier does not check.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, Error> {
        let inner = &self.inner;
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(Error::InvalidToken("malformed"));
        }
        let now = Millis::now();
        let leeway = inner.config.leeway_s.clamp(0, 60);
        let key = TokenHash::of(token.as_bytes()).0;
        if token.starts_with("pat_") {
            if let Some(p) = inner.introspected.get(&key, now.as_secs(), 0) {
                return Ok(p);
            }
            return self.introspect(token, key).await;
        }
        if let Some(p) = inner.verified.get(&key, now.as_secs(), leeway) {
            return Ok(p);
        }
        let keys = inner.jwks.keys(&inner.http).await?;
        let claims = match keys.verifier.verify_for(token, now, Audience::Ours) {
            Err(JwtError::UnknownKid) => {
                match inner.jwks.refetch_for_unknown_kid(&inner.http).await? {
                    Some(fresh) => {
                        // The key set changed: what was verified with keys now gone must be checked again.
                        inner.verified.clear();
                        fresh.verifier.verify_for(token, now, Audience::Ours)
                    }
                    None => Err(JwtError::UnknownKid),
                }
            }
            other => other,
        }
        .map_err(|e| Error::InvalidToken(e.reason()))?;
        // A DPoP-bound token (RFC 9449) is good only with a proof by its key, which a Bearer
        // verifier does not see: refused, as the server refuses it as Bearer.
        if claims.cnf.is_some() {
            return Err(Error::InvalidToken("dpop_bound"));
        }
        let p = Arc::new(principal(&claims, AuthMethod::Jwt));
        inner.verified.put(
            key,
            claims.exp,
            Instant::now() + Duration::from_secs(24 * 3600),
            Arc::clone(&p),
        );
        Ok(p)
    }

    /// The principal of a request's `Authorization: Bearer` token (exactly one such header).
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Arc<Principal>, Error> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(Error::Missing)?;
        if values.next().is_some() {
            return Err(Error::InvalidRequest("send one Authorization header"));
        }
        let value = value
            .to_str()
            .map_err(|_| Error::InvalidToken("malformed"))?;
        let token = bearer::token(value).map_err(|e| Error::InvalidToken(e.reason()))?;
        self.verify(token).await
    }

    async fn introspect(&self, token: &str, key: [u8; 32]) -> Result<Arc<Principal>, Error> {
        let inner = &self.inner;
        let Some(intro) = &inner.config.introspection else {
            return Err(Error::InvalidToken("opaque_token_without_introspection"));
        };
        let endpoint = intro
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("{}/oauth2/introspect", inner.config.issuer));
        let unavailable = |why: String| Error::Unavailable(format!("introspection: {why}"));
        let mut r = inner
            .http
            .post(&endpoint)
            .basic_auth(&intro.client_id, Some(&intro.client_secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !r.status().is_success() {
            return Err(unavailable(format!("answered {}", r.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len() + chunk.len() > MAX_INTROSPECTION_BYTES {
                return Err(unavailable("answer too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| unavailable("not JSON".into()))?;
        if v.get("cnf").is_some() {
            return Err(Error::InvalidToken("dpop_bound"));
        }
        if v.get("active").and_then(|a| a.as_bool()) != Some(true) {
            return Err(Error::InvalidToken("inactive"));
        }
        let text = |name: &str| v.get(name).and_then(|x| x.as_str());
        if text("iss").is_some_and(|iss| iss != inner.config.issuer) {
            return Err(Error::InvalidToken("wrong_issuer"));
        }
        let aud_ok = match v.get("aud") {
            Some(serde_json::Value::String(a)) => *a == inner.config.audience,
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str() == Some(inner.config.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(Error::InvalidToken("wrong_audience"));
        }
        let exp = v
            .get("exp")
            .and_then(|e| e.as_i64())
            .ok_or(Error::InvalidToken("no_exp"))?;
        let claims = AccessClaims {
            iss: inner.config.issuer.clone(),
            sub: text("sub").unwrap_or_default().to_owned(),
            aud: vec![inner.config.audience.clone()],
            exp,
            iat: v.get("iat").and_then(|e| e.as_i64()).unwrap_or_default(),
            nbf: None,
            jti: text("jti").unwrap_or_default().to_owned(),
            client_id: text("client_id").unwrap_or_default().to_owned(),
            scope: text("scope").unwrap_or_default().to_owned(),
            sid: text("sid").map(str::to_owned),
            cnf: v
                .get("cnf")
                .and_then(|c| c.get("jkt"))
                .and_then(|j| j.as_str())
                .map(|jkt| portcullis_core::jwt::Confirmation {
                    jkt: jkt.to_owned(),
                }),
            act: v.get("act").filter(|a| a.is_object()).cloned(),
        };
        let p = Arc::new(principal(&claims, AuthMethod::OAuth));
        inner
            .introspected
            .put(key, exp, Instant::now() + intro.cache_ttl, Arc::clone(&p));
        Ok(p)
    }
}

fn principal(claims: &AccessClaims, method: AuthMethod) -> Principal {
    Principal {
        subject: claims.sub.clone(),
        user_id: UserId::parse(&claims.sub).ok(),
        method,
        scopes: Scopes::parse_space_separated(&claims.scope).unwrap_or_default(),
        session_id: claims.sid.as_deref().and_then(|s| SessionId::parse(s).ok()),
        key_id: None,
        signature_key_id: None,
        client_id: Some(claims.client_id.clone()),
        first_party: false,
    }
}
