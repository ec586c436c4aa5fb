//! The forward-auth decision: the original request a gateway asks about, the one credential it
//! carried, the first route rule that matches → a [`Verdict`]. The credential goes through the same
//! verifiers as our own endpoints ([`Auth`]): an API key spends its uses and its rate here exactly as
//! on `/v1/keys/verify`, a revoked token or key is refused as soon as this node's caches hear of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis_core::principal::{AuthMethod, Principal};

use crate::auth::{Auth, Credential, Target};
use crate::error::{Error, Result, Throttled};
use crate::oauth::OAuth;
use crate::signatures::{Signatures, SignedRequest};
use portcullis_core::httpsig::Message;
use portcullis_core::httpsig::verify::Body;
use portcullis_core::routes::{DefaultPolicy, Rule, Rules};

/// Longest original URI (path and query) considered.
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Longest original host.
const MAX_HOST_LEN: usize = 255;

/// A request the gateway's description of which cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOriginal {
    /// 400 when the gateway sent too little (its configuration is wrong), 403 when the client's own
    /// request is refused (its URI), so gateways that only pass 401 and 403 on still answer clients
    /// with a refusal rather than an error.
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
}

fn gateway(detail: impl Into<String>) -> BadOriginal {
    BadOriginal {
        status: 400,
        code: "bad_forwarded_request",
        detail: detail.into(),
    }
}

fn refused(code: &'static str, detail: impl Into<String>) -> BadOriginal {
    BadOriginal {
        status: 403,
        code,
        detail: detail.into(),
    }
}

/// The original request, as the gateway described it.
#[derive(Debug, Clone)]
pub struct Original {
    pub method: String,
    /// `X-Forwarded-Proto`, lowercased; `None` when the gateway did not say.
    pub scheme: Option<String>,
    pub host: String,
    /// The path, percent-decoded, free of `.`/`..` segments: what the rules match.
    pub path: String,
    /// The path and query as sent: where a login sends the browser back to.
    pub uri: String,
}

impl Original {
    /// Reads the gateway's description. `uri` is `X-Forwarded-Uri` / `X-Original-URI` (a path and
    /// query, `/…`).
    pub fn parse(method: &str, uri: &str, host: &str) -> std::result::Result<Self, BadOriginal> {
        if method.is_empty()
            || method.len() > 32
            || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
        {
            return Err(gateway(format!(
                "the original method {:?} is not an HTTP method",
                method.chars().take(40).collect::<String>()
            )));
        }
        let host = host.split(',').next().unwrap_or_default().trim();
        if host.is_empty()
            || host.len() > MAX_HOST_LEN
            || !host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
            })
        {
            return Err(gateway(
                "the original host (X-Forwarded-Host, or Host) is missing or not a host name",
            ));
        }
        if uri.len() > MAX_URI_LEN {
            return Err(refused(
                "uri_too_long",
                format!("the request URI is longer than {MAX_URI_LEN} bytes"),
            ));
        }
        if !uri.starts_with('/') {
            return Err(gateway(
                "the original URI (X-Forwarded-Uri or X-Original-URI) must be a path starting with /",
            ));
        }
        let raw_path = uri.split(['?', '#']).next().unwrap_or_default();
        let path = percent_decode(raw_path).ok_or_else(|| {
            refused(
                "bad_path",
                "the request path has a bad percent-escape, or is not UTF-8 once decoded",
            )
        })?;
        if path.chars().any(|c| c.is_control() || c == '\\') {
            return Err(refused(
                "bad_path",
                "the request path holds control characters or a backslash",
            ));
        }
        if path.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(refused(
                "bad_path",
                "the request path has . or .. segments; send the resolved path",
            ));
        }
        Ok(Self {
            method: method.to_ascii_uppercase(),
            scheme: None,
            host: host.to_owned(),
            path,
            uri: uri.to_owned(),
        })
    }

    /// The path as sent (percent-encoded), without the query.
    pub fn raw_path(&self) -> &str {
        self.uri.split(['?', '#']).next().unwrap_or_default()
    }

    /// The query string as sent, if any.
    pub fn query(&self) -> Option<&str> {
        self.uri
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or_default())
    }
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What forward auth answers.
#[derive(Debug)]
pub enum Verdict {
    /// 200, with the principal's identity headers (none for an anonymous pass), and for a signed
    /// request whose body we did not see, the `Content-Digest` the upstream must check it against.
    Allow(Option<Principal>, Option<String>),
    /// 401 with `WWW-Authenticate`: no credential (no `error`), or a bad one.
    Challenge {
        error: Option<(&'static str, String)>,
        resource: Option<String>,
    },
    /// 302 to the login page, back to `return_to` afterwards.
    Login { return_to: String },
    /// 403 with `code` (`insufficient_scope` names the missing `scope`).
    Refuse {
        code: &'static str,
        detail: String,
        scope: Option<String>,
        resource: Option<String>,
    },
    /// 429, with the limit that was spent.
    Throttled(Throttled),
    /// 401 `signature_invalid` with the RFC 9421 `reason`.
    Unsigned(portcullis_core::httpsig::Reason),
}

impl Verdict {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Allow(Some(_), _) => "allowed",
            Self::Allow(None, _) => "anonymous",
            Self::Challenge { .. } => "unauthenticated",
            Self::Login { .. } => "login",
            Self::Refuse { .. } => "forbidden",
            Self::Throttled(_) => "rate_limited",
            Self::Unsigned(_) => "unauthenticated",
        }
    }
}

/// The kind a presented credential is, before it is checked.
fn kind(c: &Credential<'_>) -> AuthMethod {
    match c {
        Credential::ApiKey(_) => AuthMethod::ApiKey,
        Credential::Bearer(t) if t.starts_with("pat_") => AuthMethod::OAuth,
        Credential::Bearer(_) => AuthMethod::Jwt,
        Credential::Dpop { token, .. } if token.starts_with("pat_") => AuthMethod::OAuth,
        Credential::Dpop { .. } => AuthMethod::Jwt,
        Credential::Session { .. } => AuthMethod::Session,
        Credential::Signature(_) => AuthMethod::Signature,
    }
}

/// One protected resource, as RFC 9728 metadata describes it.
#[derive(Debug, Clone)]
pub struct ProtectedResource {
    pub resource: String,
    /// Scopes any rule of this resource requires.
    pub scopes: Vec<String>,
    /// The path RFC 9728 §3.1 puts after `/.well-known/oauth-protected-resource`.
    pub metadata_suffix: String,
    /// `host[:port]` of the resource.
    pub authority: String,
    /// Where its metadata is: the resource's origin with the well-known path inserted.
    pub metadata_url: String,
}

pub struct ForwardAuth {
    auth: Arc<Auth>,
    oauth: Arc<OAuth>,
    signatures: Arc<Signatures>,
    rules: Rules,
    /// Tokens on requests no rule gives a `resource` must carry this audience (ours).
    audience: String,
    resources: Vec<ProtectedResource>,
}

impl ForwardAuth {
    pub fn new(
        auth: Arc<Auth>,
        oauth: Arc<OAuth>,
        signatures: Arc<Signatures>,
        rules: Rules,
        audience: String,
    ) -> Self {
        let mut by_resource: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in rules.iter() {
            if let Some(res) = &r.resource {
                let scopes = by_resource.entry(res.clone()).or_default();
                for s in &r.scopes {
                    if !scopes.contains(s) {
                        scopes.push(s.clone());
                    }
                }
            }
        }
        let resources = by_resource
            .into_iter()
            .filter_map(|(resource, mut scopes)| {
                scopes.sort();
                let url = url::Url::parse(&resource).ok()?;
                let suffix = match url.path() {
                    "/" => String::new(),
                    p => p.to_owned(),
                };
                let authority = match url.port() {
                    Some(port) => format!("{}:{port}", url.host_str()?),
                    None => url.host_str()?.to_owned(),
                };
                let metadata_url = format!(
                    "{}://{authority}/.well-known/oauth-protected-resource{suffix}",
                    url.scheme()
                );
                Some(ProtectedResource {
                    resource,
                    scopes,
                    metadata_suffix: suffix,
                    authority,
                    metadata_url,
                })
            })
            .collect();
        Self {
            auth,
            oauth,
            signatures,
            rules,
            audience,
            resources,
        }
    }

    /// The resource whose metadata lives at `/.well-known/oauth-protected-resource<suffix>`; when
    /// several share the suffix, the one on `host`.
    pub fn resource_at(&self, suffix: &str, host: Option<&str>) -> Option<&ProtectedResource> {
        let mut found = self
            .resources
            .iter()
            .filter(|r| r.metadata_suffix == suffix);
        let first = found.next()?;
        let Some(second) = found.next() else {
            return Some(first);
        };
        let host = host?.to_ascii_lowercase();
        [first, second]
            .into_iter()
            .chain(found)
            .find(|r| r.authority.eq_ignore_ascii_case(&host))
    }

    /// The RFC 9728 metadata URL of `rule`'s resource: borrowed, so an allowed request allocates
    /// nothing for it.
    fn metadata_url(&self, rule: Option<&Rule>) -> Option<&str> {
        let resource = rule?.resource.as_deref()?;
        self.resources
            .iter()
            .find(|r| r.resource == resource)
            .map(|r| r.metadata_url.as_str())
    }

    /// The answer for `original` carrying `credential` (as parsed from its headers).
    pub async fn decide(
        &self,
        original: &Original,
        credential: Result<Credential<'_>>,
    ) -> Result<Verdict> {
        let rule = self
            .rules
            .find(&original.method, &original.host, &original.path);
        if rule.is_none() && self.rules.default_policy == DefaultPolicy::Deny {
            return Ok(Verdict::Refuse {
                code: "no_route",
                detail: "no route rule lets this request through (default_policy = \"deny\")"
                    .into(),
                scope: None,
                resource: None,
            });
        }
        let resource = self.metadata_url(rule);
        // A kind of credential the rule does not take is refused before it is checked, so an API key
        // shown to a JWT-only route spends nothing.
        if let (Ok(c), Some(allowed)) = (&credential, rule.and_then(|r| r.allowed.as_ref()))
            && !allowed.contains(&kind(c))
        {
            return Ok(if rule.is_some_and(|r| r.anonymous) {
                Verdict::Allow(None, None)
            } else {
                Verdict::Challenge {
                    error: Some((
                        "invalid_token",
                        format!(
                            "this route does not accept {} credentials",
                            kind(c).as_str()
                        ),
                    )),
                    resource: resource.map(str::to_owned),
                }
            });
        }
        let verdict = match self.principal(original, rule, credential).await {
            Ok((p, digest)) => self.check_scopes(rule, p, digest, resource),
            Err(e) => self.refusal(rule, original, e, resource)?,
        };
        Ok(verdict)
    }

    async fn principal(
        &self,
        original: &Original,
        rule: Option<&Rule>,
        credential: Result<Credential<'_>>,
    ) -> Result<(Principal, Option<String>)> {
        let credential = credential?;
        let kind = kind(&credential);
        let audience = rule
            .and_then(|r| r.resource.as_deref())
            .unwrap_or(&self.audience);
        match credential {
            Credential::Bearer(token) if kind == AuthMethod::OAuth => {
                let claims = self.opaque_for(token, audience).await?;
                crate::auth::refuse_bound_as_bearer(&claims)?;
                Ok((self.auth.claims_principal(&claims, AuthMethod::OAuth), None))
            }
            Credential::Bearer(token) => {
                Ok((self.auth.access_token_for(token, audience).await?, None))
            }
            Credential::Dpop { token, proof } => {
                // The proof names the URI the client called: the original request's.
                let (default_scheme, _) = self.signatures.origin();
                let htu = format!(
                    "{}://{}{}",
                    original.scheme.as_deref().unwrap_or(default_scheme),
                    original.host,
                    original.raw_path()
                );
                let target = Target {
                    method: &original.method,
                    uri: &htu,
                };
                if kind == AuthMethod::OAuth {
                    let claims = self.opaque_for(token, audience).await?;
                    self.auth.check_dpop(&claims, token, proof, target).await?;
                    return Ok((self.auth.claims_principal(&claims, AuthMethod::OAuth), None));
                }
                Ok((
                    self.auth
                        .dpop_token_for(token, proof, audience, target)
                        .await?,
                    None,
                ))
            }
            Credential::Signature(headers) => {
                let (default_scheme, _) = self.signatures.origin();
                let msg = Message {
                    method: &original.method,
                    scheme: original.scheme.as_deref().unwrap_or(default_scheme),
                    authority: &original.host,
                    path: original.raw_path(),
                    query: original.query(),
                    headers,
                };
                // The gateway sends no body: a method that carries one must cover content-digest,
                // which the upstream then checks against the body (X-Auth-Content-Digest).
                let expected = !matches!(
                    original.method.as_str(),
                    "GET" | "HEAD" | "OPTIONS" | "DELETE"
                );
                let signed = self
                    .signatures
                    .verify(&SignedRequest {
                        msg,
                        body: Body::NotSeen { expected },
                    })
                    .await?;
                Ok((signed.principal, signed.content_digest))
            }
            other => Ok((self.auth.authenticate(other).await?, None)),
        }
    }

    /// An opaque access token's claims, for `audience`.
    async fn opaque_for(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<portcullis_core::jwt::AccessClaims> {
        let claims = self
            .oauth
            .opaque_access(token)
            .await
            .map_err(|e| Error::Internal(e.description))?
            .ok_or(Error::InvalidToken("unknown_or_expired"))?;
        if !claims.aud.iter().any(|a| a == audience) {
            return Err(Error::InvalidToken("wrong_audience"));
        }
        Ok(claims)
    }

    fn check_scopes(
        &self,
        rule: Option<&Rule>,
        p: Principal,
        digest: Option<String>,
        resource: Option<&str>,
    ) -> Verdict {
        let missing: Vec<&str> = rule
            .map(|r| r.scopes.iter().map(String::as_str))
            .into_iter()
            .flatten()
            .filter(|s| !p.scopes.contains(s))
            .collect();
        if missing.is_empty() {
            return Verdict::Allow(Some(p), digest);
        }
        let required = rule.map(|r| r.scopes.join(" ")).unwrap_or_default();
        Verdict::Refuse {
            code: "insufficient_scope",
            detail: format!(
                "this request needs the scopes {required:?}; the credential lacks {:?}",
                missing.join(" ")
            ),
            scope: Some(required),
            resource: resource.map(str::to_owned),
        }
    }

    /// What a failed verification answers. Server faults stay errors.
    fn refusal(
        &self,
        rule: Option<&Rule>,
        original: &Original,
        e: Error,
        resource: Option<&str>,
    ) -> Result<Verdict> {
        let resource = || resource.map(str::to_owned);
        let anonymous = rule.is_some_and(|r| r.anonymous);
        let login = rule.is_some_and(|r| r.login_redirect);
        let challenge = |code: &'static str, detail: String| {
            if anonymous {
                Verdict::Allow(None, None)
            } else {
                Verdict::Challenge {
                    error: Some((code, detail)),
                    resource: resource(),
                }
            }
        };
        Ok(match e {
            Error::Internal(_) | Error::Overloaded | Error::Unavailable => return Err(e),
            Error::RateLimited(t) => Verdict::Throttled(t),
            Error::Unauthenticated if anonymous => Verdict::Allow(None, None),
            Error::Unauthenticated | Error::InvalidSession(_) if login => Verdict::Login {
                return_to: original.uri.clone(),
            },
            Error::Unauthenticated => Verdict::Challenge {
                error: None,
                resource: resource(),
            },
            Error::CsrfFailed(detail) if !anonymous => Verdict::Refuse {
                code: "csrf_failed",
                detail: detail.into(),
                scope: None,
                resource: None,
            },
            Error::Forbidden(code, detail) if !anonymous => Verdict::Refuse {
                code,
                detail,
                scope: None,
                resource: None,
            },
            Error::MultipleCredentials => challenge("invalid_request", e.to_string()),
            Error::InvalidDpopProof(_) => challenge("invalid_dpop_proof", e.to_string()),
            Error::SignatureInvalid(reason) if !anonymous => Verdict::Unsigned(reason),
            other => challenge("invalid_token", other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originals_are_read_and_bad_ones_refused() {
        let o = Original::parse("get", "/orders/%31?x=1", "API.example.com:8080").unwrap();
        assert_eq!((o.method.as_str(), o.path.as_str()), ("GET", "/orders/1"));
        assert_eq!(o.query(), Some("x=1"));
        assert_eq!(o.host, "API.example.com:8080");
        assert_eq!(Original::parse("GET", "/a", "h1, h2").unwrap().host, "h1");

        for (uri, status) in [
            ("orders", 400),
            ("http://evil/x", 400),
            ("", 400),
            ("/public/../admin", 403),
            ("/public/%2e%2e/admin", 403),
            ("/public/%2E%2E%2Fadmin", 403),
            ("/a/./b", 403),
            ("/bad%zz", 403),
            ("/bad%", 403),
            ("/%ff%fe", 403),
            ("/a%00b", 403),
            ("/a\\b", 403),
        ] {
            assert_eq!(
                Original::parse("GET", uri, "h").unwrap_err().status,
                status,
                "{uri}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_URI_LEN));
        assert_eq!(
            Original::parse("GET", &long, "h").unwrap_err().code,
            "uri_too_long"
        );
        assert!(Original::parse("GE T", "/", "h").is_err());
        assert!(Original::parse("GET", "/", "").is_err());
        assert!(Original::parse("GET", "/", "bad host").is_err());
    }
}
