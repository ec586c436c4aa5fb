//! Sign-in with upstream providers (API.md "Email verification, password reset, upstream sign-in"):
//! any OpenID provider by discovery (Google, Microsoft, Keycloak, another Portcullis…) and GitHub
//! (OAuth 2.0 and its user and emails API), configured as `[[upstream]]` tables.
//!
//! * [`provider`]: what we know of each provider (discovery document, JWKS, cached with bounds) and
//!   the HTTP calls we make to it, each with bounded time and size.
//! * [`service`]: the flow (start, callback) and the accounts it leads to (identities linked to
//!   users, safely), with their audit events.
//! * `handlers`: `/v1/me/identities`; the browser's `/v1/upstream/{id}/start` and `/callback` are
//!   pages (`pages::upstream`), since a person reads what they answer.

pub mod handlers;
pub mod provider;
pub mod service;

use serde::{Deserialize, Serialize};

use crate::config::SecretSetting;

pub use service::{UpstreamSettings, Upstreams};

/// `oidc` (any OpenID provider, by discovery) or `github`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    Oidc,
    Github,
}

/// One `[[upstream]]` table.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// In URLs (`/v1/upstream/<id>/callback`) and identities: 1 to 32 of `a-z`, `0-9`, `-`, `_`.
    pub id: String,
    pub kind: UpstreamKind,
    /// The button text: "Continue with <name>".
    pub name: String,
    /// `oidc`: the issuer, found by discovery (`<issuer>/.well-known/openid-configuration`). https;
    /// plain http only on a loopback address (tests).
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    /// Also from the environment: `PORTCULLIS_UPSTREAM_<ID>_CLIENT_SECRET` (ID upper-cased, `-` as
    /// `_`), which wins over the file. Without one, `oidc` acts as a public client (PKCE only).
    #[serde(default)]
    pub client_secret: Option<SecretSetting>,
    /// Default: `openid email profile` (oidc), `read:user user:email` (github).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// A first sign-in whose email matches an existing account links to it only when this is on
    /// (the default) and the provider says the email is verified (and the account's is too).
    #[serde(default = "yes")]
    pub link_by_email: bool,
    /// Keep the provider's tokens, sealed under the master key (off: they are used once and
    /// dropped).
    #[serde(default)]
    pub store_tokens: bool,
    /// `oidc`: the one algorithm ID tokens must be signed with. Default: what the provider's
    /// discovery document lists, of RS256, ES256 and EdDSA (never `none` or HMAC).
    #[serde(default)]
    pub id_token_alg: Option<String>,
    /// `github`: its endpoints, for GitHub Enterprise Server (or a test double). Defaults:
    /// `https://github.com/login/oauth/authorize`, `https://github.com/login/oauth/access_token`,
    /// `https://api.github.com`.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.clone().unwrap_or_else(|| {
            match self.kind {
                UpstreamKind::Oidc => vec!["openid", "email", "profile"],
                UpstreamKind::Github => vec!["read:user", "user:email"],
            }
            .into_iter()
            .map(str::to_owned)
            .collect()
        })
    }

    /// The environment variable that may hold the client secret.
    pub fn secret_env(&self) -> String {
        format!(
            "PORTCULLIS_UPSTREAM_{}_CLIENT_SECRET",
            self.id.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// An upstream URL we will call: https, or http to a loopback address.
pub fn check_url(what: &str, raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{what} {raw:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => {}
        "http" if loopback => {}
        _ => {
            return Err(format!(
                "{what} must be an https URL (plain http only on a loopback address), got {raw:?}"
            ));
        }
    }
    if url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("{what} must have no fragment or user name"));
    }
    Ok(url)
}

/// Checks every `[[upstream]]` table, naming the one at fault.
pub fn validate(all: &[UpstreamConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for u in all {
        let at = |m: String| format!("[[upstream]] {:?}: {m}", u.id);
        if u.id.is_empty()
            || u.id.len() > 32
            || !u
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(at("id must be 1 to 32 of a-z, 0-9, - and _".into()));
        }
        if !seen.insert(u.id.clone()) {
            return Err(at("this id is used twice".into()));
        }
        if u.name.trim().is_empty() || portcullis_core::text::display_name(&u.name).is_none() {
            return Err(at(
                "name (the button text) must be set, at most 200 plain characters".into(),
            ));
        }
        if u.client_id.trim().is_empty() {
            return Err(at("client_id must be set".into()));
        }
        if u.scopes().iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err(at("scopes must be single words".into()));
        }
        match u.kind {
            UpstreamKind::Oidc => {
                let issuer = u
                    .issuer
                    .as_deref()
                    .ok_or_else(|| at("kind = \"oidc\" needs issuer".into()))?;
                check_url("issuer", issuer).map_err(at)?;
                if !u.scopes().iter().any(|s| s == "openid") {
                    return Err(at("scopes must include openid".into()));
                }
                if let Some(alg) = &u.id_token_alg
                    && !provider::ID_TOKEN_ALGS.contains(&alg.as_str())
                {
                    return Err(at(format!(
                        "id_token_alg must be one of {}",
                        provider::ID_TOKEN_ALGS.join(", ")
                    )));
                }
                if u.authorization_endpoint.is_some()
                    || u.token_endpoint.is_some()
                    || u.api_url.is_some()
                {
                    return Err(at("an oidc provider's endpoints come from its discovery document; remove authorization_endpoint, token_endpoint and api_url".into()));
                }
            }
            UpstreamKind::Github => {
                if u.issuer.is_some() || u.id_token_alg.is_some() {
                    return Err(at(
                        "kind = \"github\" takes no issuer or id_token_alg".into()
                    ));
                }
                if u.client_secret.is_none() {
                    return Err(at(format!(
                        "kind = \"github\" needs client_secret (or {})",
                        u.secret_env()
                    )));
                }
                for (what, v) in [
                    ("authorization_endpoint", &u.authorization_endpoint),
                    ("token_endpoint", &u.token_endpoint),
                    ("api_url", &u.api_url),
                ] {
                    if let Some(v) = v {
                        check_url(what, v).map_err(at)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(toml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path), &figment::value::Dict::new()).map_err(|e| e.0)
    }

    #[test]
    fn upstream_tables_load_with_their_defaults_and_secrets_from_the_environment() {
        // SAFETY: tests of this module are the only readers of this variable.
        unsafe { std::env::set_var("PORTCULLIS_UPSTREAM_CORP_SSO_CLIENT_SECRET", "from-the-env") };
        let c = load(
            r#"
            [[upstream]]
            id = "google"
            kind = "oidc"
            name = "Google"
            issuer = "https://accounts.google.com"
            client_id = "123.apps.googleusercontent.com"
            client_secret = "in-the-file"

            [[upstream]]
            id = "corp-sso"
            kind = "oidc"
            name = "Corp"
            issuer = "http://127.0.0.1:8080/realms/corp"
            client_id = "portcullis"
            client_secret = "in-the-file"
            link_by_email = false

            [[upstream]]
            id = "github"
            kind = "github"
            name = "GitHub"
            client_id = "Iv1.abc"
            client_secret = "gh"
            "#,
        )
        .unwrap();
        let [google, corp, github] = c.upstream.as_slice() else {
            panic!("three providers")
        };
        assert_eq!(google.scopes(), ["openid", "email", "profile"]);
        assert!(google.link_by_email && !corp.link_by_email);
        assert_eq!(
            google.client_secret.as_ref().unwrap().expose(),
            "in-the-file"
        );
        assert_eq!(
            corp.client_secret.as_ref().unwrap().expose(),
            "from-the-env"
        );
        assert_eq!(github.scopes(), ["read:user", "user:email"]);
        assert!(!format!("{google:?}").contains("in-the-file"));
    }

    #[test]
    fn bad_upstream_tables_are_refused_naming_the_table() {
        let table = |extra: &str| {
            format!(
                "[[upstream]]\nid = \"x\"\nname = \"X\"\nclient_id = \"c\"\nclient_secret = \"s\"\n{extra}"
            )
        };
        for (extra, want) in [
            ("kind = \"oidc\"", "needs issuer"),
            (
                "kind = \"oidc\"\nissuer = \"http://idp.example.com\"",
                "https URL",
            ),
            (
                "kind = \"oidc\"\nissuer = \"https://idp.example.com\"\nscopes = [\"email\"]",
                "openid",
            ),
            (
                "kind = \"oidc\"\nissuer = \"https://idp.example.com\"\nid_token_alg = \"HS256\"",
                "id_token_alg",
            ),
            (
                "kind = \"oidc\"\nissuer = \"https://idp.example.com\"\ntoken_endpoint = \"https://x\"",
                "discovery",
            ),
            (
                "kind = \"github\"\nissuer = \"https://github.com\"",
                "no issuer",
            ),
            (
                "kind = \"github\"\napi_url = \"http://api.github.example\"",
                "api_url",
            ),
            ("kind = \"saml\"", "kind"),
            (
                "kind = \"oidc\"\nissuer = \"https://idp.example.com\"\nsurprise = 1",
                "surprise",
            ),
        ] {
            let err = load(&table(extra))
                .err()
                .unwrap_or_else(|| panic!("{extra} was accepted"));
            assert!(err.contains(want), "{extra}: {err}");
        }
        let twice = format!(
            "{}\n{}",
            table("kind = \"github\""),
            table("kind = \"github\"")
        );
        assert!(load(&twice).unwrap_err().contains("used twice"));
        let bad_id = table("kind = \"github\"").replace("id = \"x\"", "id = \"Not OK\"");
        assert!(load(&bad_id).unwrap_err().contains("id must be"));
        let no_secret = table("kind = \"github\"").replace("client_secret = \"s\"\n", "");
        assert!(
            load(&no_secret)
                .unwrap_err()
                .contains("PORTCULLIS_UPSTREAM_X_CLIENT_SECRET")
        );
    }
}
