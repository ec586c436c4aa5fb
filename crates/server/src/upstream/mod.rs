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

pub use crate::config::{UpstreamConfig, UpstreamKind, check_url};
pub use service::{UpstreamSettings, Upstreams};

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
