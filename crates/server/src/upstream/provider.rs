//! One upstream provider as we use it: its endpoints (an OpenID provider's from its discovery
//! document, cached for an hour; GitHub's from configuration), its signing keys (the JWKS, cached for
//! ten minutes and fetched again, at most every 30 s, when an ID token names a key we do not know),
//! and the calls of a sign-in: the code exchange, UserInfo, GitHub's user and emails. Every call has
//! a bounded time (5 s to connect, 10 s in all) and a bounded answer (256 KiB), follows no redirect,
//! and says what went wrong in words a person can be shown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::jwt::{JwsAlg, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::{UpstreamConfig, UpstreamKind, check_url};

const MAX_ANSWER: usize = 256 * 1024;
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
const JWKS_TTL: Duration = Duration::from_secs(600);
const JWKS_REFETCH_GAP: Duration = Duration::from_secs(30);
const MAX_KEYS: usize = 50;

/// What went wrong talking to a provider; `reason` goes to the audit log, `Display` to the person.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("it did not answer in time, or could not be reached")]
    Unreachable(&'static str),
    #[error("its answer was not what a sign-in needs: {1}")]
    BadAnswer(&'static str, String),
    #[error("it refused: {1}")]
    Refused(&'static str, String),
}

impl UpstreamError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(r) | Self::BadAnswer(r, _) | Self::Refused(r, _) => r,
        }
    }
}

/// Where a provider's sign-in happens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `None` for GitHub (OAuth 2.0, no issuer).
    pub issuer: Option<String>,
    pub authorization: String,
    pub token: String,
    pub userinfo: Option<String>,
    pub jwks_uri: Option<String>,
    /// RFC 9207: the provider says it sends `iss` with every authorization response.
    pub iss_parameter: bool,
    /// `client_secret_post` when the provider lists it and not `client_secret_basic`.
    pub secret_in_body: bool,
    pub id_token_algs: Vec<JwsAlg>,
}

pub struct Provider {
    pub config: UpstreamConfig,
    http: reqwest::Client,
    endpoints: Mutex<Option<(Instant, Arc<Endpoints>)>>,
    keys: Mutex<Option<(Instant, Arc<Vec<VerifyingKey>>)>>,
}

/// What the token endpoint gave.
pub struct TokenAnswer {
    pub access_token: SecretString,
    pub id_token: Option<String>,
    /// The whole answer, for providers whose tokens are kept (sealed).
    pub raw: Value,
}

/// A GitHub account as its API describes it.
pub struct GithubAccount {
    pub id: String,
    pub login: String,
    pub name: Option<String>,
    /// The primary verified address, else any verified one, else the primary (unverified).
    pub email: Option<(String, bool)>,
}

fn transport(e: &reqwest::Error) -> UpstreamError {
    UpstreamError::Unreachable(if e.is_timeout() {
        "upstream_timeout"
    } else {
        "upstream_unreachable"
    })
}

/// The body of `res` as JSON, at most [`MAX_ANSWER`] bytes.
async fn json_of(mut res: reqwest::Response, what: &'static str) -> Result<Value, UpstreamError> {
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| transport(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(UpstreamError::BadAnswer(
                what,
                "the answer is too large".into(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|_| UpstreamError::BadAnswer(what, "the answer is not JSON".into()))
}

impl Provider {
    pub fn new(config: UpstreamConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            http,
            endpoints: Mutex::new(None),
            keys: Mutex::new(None),
        })
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The provider's endpoints, from the cache or (for an OpenID provider) its discovery document.
    pub async fn endpoints(&self) -> Result<Arc<Endpoints>, UpstreamError> {
        let mut cached = self.endpoints.lock().await;
        if let Some((at, e)) = cached.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(Arc::clone(e));
        }
        let fresh = Arc::new(match self.config.kind {
            UpstreamKind::Github => self.github_endpoints(),
            UpstreamKind::Oidc => self.discover().await?,
        });
        *cached = Some((Instant::now(), Arc::clone(&fresh)));
        Ok(fresh)
    }

    fn github_endpoints(&self) -> Endpoints {
        let c = &self.config;
        Endpoints {
            issuer: None,
            authorization: c
                .authorization_endpoint
                .clone()
                .unwrap_or_else(|| "https://github.com/login/oauth/authorize".into()),
            token: c
                .token_endpoint
                .clone()
                .unwrap_or_else(|| "https://github.com/login/oauth/access_token".into()),
            userinfo: None,
            jwks_uri: None,
            iss_parameter: false,
            secret_in_body: true,
            id_token_algs: Vec::new(),
        }
    }

    async fn discover(&self) -> Result<Endpoints, UpstreamError> {
        let issuer = self.config.issuer.clone().unwrap_or_default();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let bad = |m: String| UpstreamError::BadAnswer("discovery", m);
        let res = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        if !res.status().is_success() {
            return Err(bad(format!(
                "its discovery document answered {}",
                res.status()
            )));
        }
        let doc = json_of(res, "discovery").await?;
        let text = |n: &str| doc.get(n).and_then(Value::as_str).map(str::to_owned);
        // OIDC Discovery §4.3: the document's issuer is exactly the one we were configured with.
        if text("issuer").as_deref() != Some(issuer.as_str()) {
            return Err(bad(format!(
                "its discovery document names the issuer {:?}, not {issuer:?}",
                text("issuer").unwrap_or_default()
            )));
        }
        let endpoint = |n: &str, required: bool| -> Result<Option<String>, UpstreamError> {
            match text(n) {
                Some(v) => check_url(n, &v).map(|_| Some(v)).map_err(bad),
                None if required => Err(bad(format!("its discovery document has no {n}"))),
                None => Ok(None),
            }
        };
        let methods: Vec<String> = doc
            .get("token_endpoint_auth_methods_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_else(|| vec!["client_secret_basic".into()]);
        let listed: Vec<JwsAlg> = doc
            .get("id_token_signing_alg_values_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(JwsAlg::parse)
                    .collect()
            })
            .unwrap_or_else(|| vec![JwsAlg::Rs256]);
        let id_token_algs = match &self.config.id_token_alg {
            Some(pinned) => JwsAlg::parse(pinned).into_iter().collect(),
            None => listed,
        };
        if id_token_algs.is_empty() {
            return Err(bad(
                "it signs ID tokens with no algorithm we accept (RS256, ES256, EdDSA)".into(),
            ));
        }
        Ok(Endpoints {
            issuer: Some(issuer),
            authorization: endpoint("authorization_endpoint", true)?.unwrap_or_default(),
            token: endpoint("token_endpoint", true)?.unwrap_or_default(),
            userinfo: endpoint("userinfo_endpoint", false)?,
            jwks_uri: endpoint("jwks_uri", true)?,
            iss_parameter: doc
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            secret_in_body: methods.iter().any(|m| m == "client_secret_post")
                && !methods.iter().any(|m| m == "client_secret_basic"),
            id_token_algs,
        })
    }

    /// The provider's signing keys; `refresh` fetches them again (an ID token named a key we do not
    /// have), at most once per [`JWKS_REFETCH_GAP`].
    pub async fn keys(&self, refresh: bool) -> Result<Arc<Vec<VerifyingKey>>, UpstreamError> {
        let mut cached = self.keys.lock().await;
        if let Some((at, keys)) = cached.as_ref()
            && (at.elapsed() < JWKS_REFETCH_GAP || (!refresh && at.elapsed() < JWKS_TTL))
        {
            return Ok(Arc::clone(keys));
        }
        let endpoints = self.endpoints().await?;
        let url = endpoints
            .jwks_uri
            .clone()
            .ok_or_else(|| UpstreamError::BadAnswer("jwks", "it publishes no keys".into()))?;
        let res = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        if !res.status().is_success() {
            return Err(UpstreamError::BadAnswer(
                "jwks",
                format!("its JWKS answered {}", res.status()),
            ));
        }
        let doc = json_of(res, "jwks").await?;
        let keys: Vec<VerifyingKey> = doc
            .get("keys")
            .and_then(Value::as_array)
            .map(|all| {
                all.iter()
                    .take(MAX_KEYS)
                    .filter_map(|k| {
                        VerifyingKey::from_jwk(k)
                            .or_else(|_| VerifyingKey::from_presented_jwk(k))
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let keys = Arc::new(keys);
        *cached = Some((Instant::now(), Arc::clone(&keys)));
        Ok(keys)
    }

    /// Exchanges the code (with the PKCE verifier) at the token endpoint.
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &SecretString,
        redirect_uri: &str,
    ) -> Result<TokenAnswer, UpstreamError> {
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("code_verifier", verifier.expose_secret().to_owned()),
        ];
        let mut req = self
            .http
            .post(&endpoints.token)
            .header(reqwest::header::ACCEPT, "application/json");
        match &self.config.client_secret {
            Some(secret) if !endpoints.secret_in_body => {
                // RFC 6749 §2.3.1: both halves form-encoded before Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.config.client_id), Some(enc(secret.expose())));
            }
            Some(secret) => {
                form.push(("client_id", self.config.client_id.clone()));
                form.push(("client_secret", secret.expose().to_owned()));
            }
            None => form.push(("client_id", self.config.client_id.clone())),
        }
        let res = req.form(&form).send().await.map_err(|e| transport(&e))?;
        let status = res.status();
        let body = json_of(res, "token").await?;
        let text = |n: &str| body.get(n).and_then(Value::as_str).map(str::to_owned);
        if let Some(error) = text("error") {
            return Err(UpstreamError::Refused(
                "token_refused",
                format!("{error} {}", text("error_description").unwrap_or_default())
                    .trim()
                    .to_owned(),
            ));
        }
        if !status.is_success() {
            return Err(UpstreamError::Refused(
                "token_refused",
                format!("the token endpoint answered {status}"),
            ));
        }
        let access_token = text("access_token").ok_or_else(|| {
            UpstreamError::BadAnswer("token", "no access_token in the token answer".into())
        })?;
        Ok(TokenAnswer {
            access_token: SecretString::from(access_token),
            id_token: text("id_token"),
            raw: body,
        })
    }

    /// The UserInfo claims (OIDC Core §5.3), when the provider has the endpoint.
    pub async fn userinfo(
        &self,
        access_token: &SecretString,
    ) -> Result<Option<Value>, UpstreamError> {
        let endpoints = self.endpoints().await?;
        let Some(url) = &endpoints.userinfo else {
            return Ok(None);
        };
        let res = self
            .http
            .get(url)
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport(&e))?;
        if !res.status().is_success() {
            return Err(UpstreamError::BadAnswer(
                "userinfo",
                format!("UserInfo answered {}", res.status()),
            ));
        }
        json_of(res, "userinfo").await.map(Some)
    }

    /// GitHub's `GET /user` and `GET /user/emails`, as documented.
    pub async fn github_account(
        &self,
        token: &SecretString,
    ) -> Result<GithubAccount, UpstreamError> {
        let base = self
            .config
            .api_url
            .clone()
            .unwrap_or_else(|| "https://api.github.com".into());
        let base = base.trim_end_matches('/');
        let get = |path: &str| {
            self.http
                .get(format!("{base}{path}"))
                .bearer_auth(token.expose_secret())
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
                .send()
        };
        let res = get("/user").await.map_err(|e| transport(&e))?;
        if !res.status().is_success() {
            return Err(UpstreamError::BadAnswer(
                "github_user",
                format!("GET /user answered {}", res.status()),
            ));
        }
        let user = json_of(res, "github_user").await?;
        let id = match user.get("id") {
            Some(Value::Number(n)) if n.as_u64().is_some() => n.to_string(),
            _ => {
                return Err(UpstreamError::BadAnswer(
                    "github_user",
                    "GET /user has no numeric id".into(),
                ));
            }
        };
        let login = user
            .get("login")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = user.get("name").and_then(Value::as_str).map(str::to_owned);
        let res = get("/user/emails").await.map_err(|e| transport(&e))?;
        let emails = if res.status().is_success() {
            json_of(res, "github_emails").await?
        } else {
            Value::Array(Vec::new())
        };
        let listed: Vec<(String, bool, bool)> = emails
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        Some((
                            e.get("email")?.as_str()?.to_owned(),
                            e.get("primary").and_then(Value::as_bool).unwrap_or(false),
                            e.get("verified").and_then(Value::as_bool).unwrap_or(false),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let email = listed
            .iter()
            .find(|(_, primary, verified)| *primary && *verified)
            .or_else(|| listed.iter().find(|(_, _, verified)| *verified))
            .or_else(|| listed.iter().find(|(_, primary, _)| *primary))
            .map(|(e, _, verified)| (e.clone(), *verified));
        Ok(GithubAccount {
            id,
            login,
            name,
            email,
        })
    }
}
