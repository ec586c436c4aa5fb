//! Forward-auth route rules (API.md "Forward auth for gateways"): the `[[route]]` tables of the
//! config file, checked once at start and matched first-match-wins against the original request a
//! gateway asks about. Pure data and matching; the server's `forward_auth` applies them.
//!
//! Globs: `*` matches any run of characters, `/` included (as Caddy's path matcher does), so
//! `/orders/*` covers `/orders/1` and `/orders/1/items` but not `/orders` itself. Hosts match without
//! letter case, and without the port unless the rule names one. Paths are matched after the original
//! URI is percent-decoded, and paths with `.`/`..` segments never reach the rules (the service refuses
//! them), so `/public/%2e%2e/admin` cannot slip under `/public/*`.

use crate::principal::AuthMethod;
use crate::scopes::Scope;
use serde::{Deserialize, Serialize};

/// Longest path or host glob.
const MAX_GLOB_LEN: usize = 512;
/// Most `*` in one glob: matching stays cheap whatever the request.
const MAX_STARS: usize = 8;

/// One `[[route]]` table, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Host glob (`api.example.com`, `*.example.com`); any host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path glob (`/orders/*`).
    pub path: String,
    /// The rule applies to these methods only; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Scopes the credential must carry, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Credential kinds accepted (`jwt`, `oauth`, `api_key`, `session`, `signature`); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods_allowed: Option<Vec<String>>,
    /// The protected resource: the audience its tokens must carry, published by RFC 9728 metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Let requests without a (valid) credential through, with identity headers when there is one.
    #[serde(default)]
    pub anonymous: bool,
    /// Answer a request without a credential with 302 to `/login?return_to=<the original URI>`
    /// instead of 401 (browser pages).
    #[serde(default)]
    pub login_redirect: bool,
}

/// What a request that no rule matches needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// A valid credential, and nothing more.
    #[default]
    Authenticated,
    /// Nothing lets it through: 403.
    Deny,
}

/// A rule, checked.
#[derive(Debug, Clone)]
pub struct Rule {
    /// 1-based position in the file, for messages.
    pub number: usize,
    host: Option<Glob>,
    path: Glob,
    methods: Option<Vec<String>>,
    pub scopes: Vec<String>,
    pub allowed: Option<Vec<AuthMethod>>,
    pub resource: Option<String>,
    pub anonymous: bool,
    pub login_redirect: bool,
}

impl Rule {
    fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.as_str() == method))
            && self.host.as_ref().is_none_or(|h| {
                let host = host.to_ascii_lowercase();
                if h.text.contains(':') {
                    h.matches(&host)
                } else {
                    h.matches(strip_port(&host))
                }
            })
            && self.path.matches(path)
    }

    /// Does this rule take every request `later` would?
    fn shadows(&self, later: &Rule) -> bool {
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        methods && host && self.path.covers(&later.path)
    }
}

/// The checked rules and the default policy.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    pub default_policy: DefaultPolicy,
}

impl Rules {
    /// Checks every rule; the error names the first bad one. The warnings name rules that can never
    /// be reached because an earlier one takes all their requests.
    pub fn compile(
        written: &[RouteRule],
        default_policy: DefaultPolicy,
    ) -> Result<(Self, Vec<String>), String> {
        let rules = written
            .iter()
            .enumerate()
            .map(|(i, r)| {
                compile_one(i + 1, r)
                    .map_err(|why| format!("route #{} (path {:?}): {why}", i + 1, r.path))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut warnings = Vec::new();
        for (i, later) in rules.iter().enumerate() {
            if let Some(earlier) = rules.iter().take(i).find(|e| e.shadows(later)) {
                warnings.push(format!(
                    "route #{} (path {:?}) is never used: route #{} (path {:?}) comes first and \
                     matches every request it would; reorder them or remove one",
                    later.number, later.path.text, earlier.number, earlier.path.text
                ));
            }
        }
        Ok((
            Self {
                rules,
                default_policy,
            },
            warnings,
        ))
    }

    /// The first rule that matches.
    pub fn find(&self, method: &str, host: &str, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(method, host, path))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }
}

fn compile_one(number: usize, r: &RouteRule) -> Result<Rule, String> {
    let path = Glob::new(&r.path)?;
    if !(path.text.starts_with('/') || path.text.starts_with('*')) {
        return Err(
            "a path glob starts with / (request paths always do), so this one can never match"
                .into(),
        );
    }
    if path.text.contains(['?', '#']) {
        return Err("a path glob cannot hold ? or #: rules match the path, never the query".into());
    }
    if path.text.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("requests with . or .. segments are refused before the rules, so a glob with them can never match".into());
    }
    let host = match &r.host {
        None => None,
        Some(h) => {
            let g = Glob::new(&h.to_ascii_lowercase())?;
            if g.text.is_empty()
                || !g.text.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'-' | b'*' | b':' | b'[' | b']')
                })
            {
                return Err(format!(
                    "host {h:?} is not a host name glob (letters, digits, . - : and *)"
                ));
            }
            Some(g)
        }
    };
    let methods = match &r.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(
                "methods = [] matches no request; leave methods out to match them all".into(),
            );
        }
        Some(list) => Some(
            list.iter()
                .map(|m| {
                    if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(format!(
                            "method {m:?} is not an upper-case HTTP method such as \"GET\""
                        ));
                    }
                    Ok(m.clone())
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    for s in &r.scopes {
        Scope::parse(s)
            .map_err(|_| format!("scope {s:?} is not a scope (letters, digits, _ : . - /)"))?;
    }
    let allowed = match &r.methods_allowed {
        None => None,
        Some(list) if list.is_empty() => {
            return Err("methods_allowed = [] accepts no credential; leave it out to accept them all".into());
        }
        Some(list) => Some(
            list.iter()
                .map(|m| {
                    AuthMethod::parse(m).ok_or_else(|| {
                        format!("methods_allowed names {m:?}; the kinds are jwt, oauth, api_key, session, signature")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    if let Some(resource) = &r.resource {
        check_resource(resource)?;
    }
    if r.anonymous && !r.scopes.is_empty() {
        return Err("an anonymous rule lets requests without a credential through, so it cannot also require scopes".into());
    }
    if r.anonymous && r.login_redirect {
        return Err("an anonymous rule lets requests without a credential through, so it never sends them to log in".into());
    }
    if r.login_redirect
        && allowed
            .as_ref()
            .is_some_and(|a| !a.contains(&AuthMethod::Session))
    {
        return Err("login_redirect sends people to log in for a session, but methods_allowed refuses sessions".into());
    }
    Ok(Rule {
        number,
        host,
        path,
        methods,
        scopes: r.scopes.clone(),
        allowed,
        resource: r.resource.clone(),
        anonymous: r.anonymous,
        login_redirect: r.login_redirect,
    })
}

/// RFC 9728 §1.2: a resource identifier is an absolute URL without a fragment (https in production;
/// http is accepted for local setups).
fn check_resource(resource: &str) -> Result<(), String> {
    let url = url::Url::parse(resource)
        .map_err(|_| format!("resource {resource:?} is not an absolute URL"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(format!(
            "resource {resource:?} must be an http(s) URL with a host"
        ));
    }
    if url.fragment().is_some() || url.query().is_some() {
        return Err(format!(
            "resource {resource:?} cannot carry a query or fragment (RFC 9728 §1.2)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "resource {resource:?} cannot carry user information"
        ));
    }
    Ok(())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.get(1..).unwrap_or(h));
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// A glob of literal text and `*`.
#[derive(Debug, Clone)]
struct Glob {
    text: String,
}

impl Glob {
    fn new(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("the glob is empty".into());
        }
        if raw.len() > MAX_GLOB_LEN {
            return Err(format!("a glob is at most {MAX_GLOB_LEN} bytes"));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("a glob cannot hold spaces or control characters".into());
        }
        // Runs of stars mean what one does.
        let mut text = String::with_capacity(raw.len());
        for c in raw.chars() {
            if !(c == '*' && text.ends_with('*')) {
                text.push(c);
            }
        }
        if text.matches('*').count() > MAX_STARS {
            return Err(format!("a glob has at most {MAX_STARS} *"));
        }
        Ok(Self { text })
    }

    /// Wildcard match with one backtrack point: linear in practice, O(n·m) at worst, and `m` is short.
    fn matches(&self, s: &str) -> bool {
        let (p, s) = (self.text.as_bytes(), s.as_bytes());
        let (mut pi, mut si) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, si));
                    pi += 1;
                }
                Some(c) if Some(c) == s.get(si) => {
                    pi += 1;
                    si += 1;
                }
                _ => match star {
                    Some((sp, ss)) => {
                        pi = sp + 1;
                        si = ss + 1;
                        star = Some((sp, ss + 1));
                    }
                    None => return false,
                },
            }
        }
        p.get(pi..)
            .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
    }

    /// Does every string `other` matches also match this? Exact for the shapes rules use (equal
    /// globs, `*`, literal or prefix globs under a prefix glob); otherwise "no", so the check only
    /// ever warns when it is sure.
    fn covers(&self, other: &Glob) -> bool {
        if self.text == other.text || self.text == "*" {
            return true;
        }
        if !other.text.contains('*') {
            return self.matches(&other.text);
        }
        match self.text.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => other.text.starts_with(prefix),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str) -> RouteRule {
        RouteRule {
            path: path.into(),
            ..RouteRule::default()
        }
    }

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn globs_match_as_documented() {
        let g = glob("/orders/*");
        assert!(g.matches("/orders/1"));
        assert!(g.matches("/orders/1/items"));
        assert!(g.matches("/orders/"));
        assert!(!g.matches("/orders"));
        assert!(!g.matches("/orders2/1"));
        assert!(glob("/v*/users/*/keys").matches("/v1/users/usr_1/keys"));
        assert!(!glob("/v*/users/*/keys").matches("/v1/users/usr_1/keys/x"));
        assert!(glob("*").matches("/anything"));
        assert!(glob("/a**b").matches("/a/x/b"));
        assert!(glob("/exact").matches("/exact"));
        assert!(!glob("/exact").matches("/exact/"));
    }

    #[test]
    fn hosts_match_without_case_and_port() {
        let (rules, _) = Rules::compile(
            &[RouteRule {
                host: Some("*.Example.com".into()),
                ..rule("/*")
            }],
            DefaultPolicy::Authenticated,
        )
        .unwrap();
        assert!(rules.find("GET", "API.example.com:8443", "/x").is_some());
        assert!(rules.find("GET", "example.org", "/x").is_none());
        let (rules, _) = Rules::compile(
            &[RouteRule {
                host: Some("127.0.0.1:9000".into()),
                ..rule("/*")
            }],
            DefaultPolicy::Authenticated,
        )
        .unwrap();
        assert!(rules.find("GET", "127.0.0.1:9000", "/x").is_some());
        assert!(rules.find("GET", "127.0.0.1:9001", "/x").is_none());
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn first_match_wins_and_methods_narrow_a_rule() {
        let (rules, warnings) = Rules::compile(
            &[
                RouteRule {
                    methods: Some(vec!["GET".into()]),
                    scopes: vec!["orders:read".into()],
                    ..rule("/orders/*")
                },
                RouteRule {
                    scopes: vec!["orders:write".into()],
                    ..rule("/orders/*")
                },
            ],
            DefaultPolicy::Deny,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(rules.find("GET", "h", "/orders/1").unwrap().number, 1);
        assert_eq!(rules.find("POST", "h", "/orders/1").unwrap().number, 2);
        assert!(rules.find("GET", "h", "/other").is_none());
    }

    #[test]
    fn shadowed_rules_are_warned_about() {
        let (_, warnings) = Rules::compile(
            &[
                rule("/api/*"),
                rule("/api/orders/*"),
                rule("/api/orders"),
                rule("/other"),
            ],
            DefaultPolicy::Authenticated,
        )
        .unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("route #2") && warnings[0].contains("route #1"));
        assert!(warnings[1].contains("route #3"));
        // A method-narrowed earlier rule does not shadow a broader later one.
        let (_, warnings) = Rules::compile(
            &[
                RouteRule {
                    methods: Some(vec!["GET".into()]),
                    ..rule("/api/*")
                },
                rule("/api/*"),
            ],
            DefaultPolicy::Authenticated,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn bad_rules_are_refused_by_number() {
        let bad = [
            rule("orders/*"),
            rule(""),
            rule("/a b"),
            rule("/orders?x=1"),
            rule("/public/../admin"),
            RouteRule {
                methods: Some(vec![]),
                ..rule("/x")
            },
            RouteRule {
                methods: Some(vec!["get".into()]),
                ..rule("/x")
            },
            RouteRule {
                scopes: vec!["bad scope".into()],
                ..rule("/x")
            },
            RouteRule {
                methods_allowed: Some(vec!["password".into()]),
                ..rule("/x")
            },
            RouteRule {
                resource: Some("api.example.com".into()),
                ..rule("/x")
            },
            RouteRule {
                resource: Some("https://api.example.com/#x".into()),
                ..rule("/x")
            },
            RouteRule {
                anonymous: true,
                scopes: vec!["a".into()],
                ..rule("/x")
            },
            RouteRule {
                anonymous: true,
                login_redirect: true,
                ..rule("/x")
            },
            RouteRule {
                host: Some("bad host/".into()),
                ..rule("/x")
            },
            rule(&format!("/{}", "*a".repeat(20))),
        ];
        for r in bad {
            let e = Rules::compile(&[rule("/ok"), r.clone()], DefaultPolicy::Authenticated)
                .unwrap_err();
            assert!(e.starts_with("route #2"), "{r:?}: {e}");
        }
    }
}
