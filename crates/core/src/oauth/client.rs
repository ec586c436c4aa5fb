//! What an OAuth client is allowed to be (API.md "Clients"): its type, how it authenticates at the
//! token endpoint, the grants it may use, and the rules that make those a coherent whole. The server
//! checks every registration (admin API, CLI, and later dynamic registration) with [`check`], which
//! names each problem by field, so one request learns all of them at once.

use super::redirect::RedirectUri;

/// Confidential clients keep a secret (or a private key); public clients (SPAs, native apps) cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Confidential,
    Public,
}

/// How a client authenticates at the token endpoint (RFC 6749 §2.3, RFC 7523, OIDC Core §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    /// Public clients: no authentication, PKCE instead.
    None,
}

/// The grants Portcullis serves (never implicit, never password).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    DeviceCode,
    TokenExchange,
}

macro_rules! names {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            /// Every value, in the order of its wire names below.
            pub const ALL: &'static [$t] = &[$(<$t>::$v),*];

            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }

            /// The value of a wire name; `None` for anything else (names are case-sensitive).
            pub fn parse(raw: &str) -> Option<Self> {
                match raw { $($s => Some(<$t>::$v),)* _ => None }
            }
        }
    };
}

names!(ClientType { Confidential = "confidential", Public = "public" });
names!(AuthMethod {
    ClientSecretBasic = "client_secret_basic",
    ClientSecretPost = "client_secret_post",
    PrivateKeyJwt = "private_key_jwt",
    None = "none",
});
names!(GrantType {
    AuthorizationCode = "authorization_code",
    RefreshToken = "refresh_token",
    ClientCredentials = "client_credentials",
    DeviceCode = "urn:ietf:params:oauth:grant-type:device_code",
    TokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange",
});

impl AuthMethod {
    /// What a client of `t` uses when its registration names no method.
    pub fn default_for(t: ClientType) -> Self {
        match t {
            ClientType::Confidential => AuthMethod::ClientSecretBasic,
            ClientType::Public => AuthMethod::None,
        }
    }

    /// Does this method need a client secret?
    pub fn uses_secret(self) -> bool {
        matches!(
            self,
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
        )
    }
}

/// A registration's settings that the rules look at, already parsed into their types.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub client_type: ClientType,
    pub auth_method: AuthMethod,
    pub grant_types: &'a [GrantType],
    pub redirect_uris: &'a [RedirectUri],
    /// `jwks` (inline) or `jwks_uri` given, for `private_key_jwt`.
    pub has_jwks: bool,
    pub has_jwks_uri: bool,
    pub backchannel_logout_uri: Option<&'a str>,
    /// Whether `http` on a loopback address is allowed for `backchannel_logout_uri` (a test or
    /// development setup; off by default, since the server itself calls that URL).
    pub allow_loopback_backchannel: bool,
}

/// One problem with a registration: the field it is about, a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: &'static str,
    pub code: &'static str,
    pub message: &'static str,
}

const fn problem(field: &'static str, code: &'static str, message: &'static str) -> Problem {
    Problem {
        field,
        code,
        message,
    }
}

/// Every rule a registration breaks (none: it is coherent).
pub fn check(r: &Registration<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    let has = |g: GrantType| r.grant_types.contains(&g);
    match (r.client_type, r.auth_method) {
        (ClientType::Public, AuthMethod::None) => {}
        (ClientType::Public, _) => out.push(problem(
            "token_endpoint_auth_method",
            "public_client_auth",
            "a public client cannot keep a secret or a key: its token_endpoint_auth_method is none",
        )),
        (ClientType::Confidential, AuthMethod::None) => out.push(problem(
            "token_endpoint_auth_method",
            "confidential_client_auth",
            "a confidential client authenticates: client_secret_basic, client_secret_post or private_key_jwt",
        )),
        (ClientType::Confidential, _) => {}
    }
    if r.auth_method == AuthMethod::PrivateKeyJwt && r.has_jwks == r.has_jwks_uri {
        out.push(problem(
            "jwks",
            "jwks_required",
            "private_key_jwt needs the client's public keys: exactly one of jwks and jwks_uri",
        ));
    }
    if r.auth_method != AuthMethod::PrivateKeyJwt && (r.has_jwks || r.has_jwks_uri) {
        out.push(problem(
            "jwks",
            "jwks_unused",
            "jwks and jwks_uri are for private_key_jwt clients only",
        ));
    }
    if r.grant_types.is_empty() {
        out.push(problem(
            "grant_types",
            "empty",
            "name at least one grant type",
        ));
    }
    if r.grant_types
        .iter()
        .enumerate()
        .any(|(i, g)| r.grant_types.iter().skip(i + 1).any(|h| h == g))
    {
        out.push(problem(
            "grant_types",
            "duplicate",
            "each grant type is named once",
        ));
    }
    if has(GrantType::ClientCredentials) && r.client_type == ClientType::Public {
        out.push(problem(
            "grant_types",
            "public_client_credentials",
            "client_credentials is for confidential clients only (RFC 6749 §4.4)",
        ));
    }
    if has(GrantType::RefreshToken)
        && !has(GrantType::AuthorizationCode)
        && !has(GrantType::DeviceCode)
        && !has(GrantType::TokenExchange)
    {
        out.push(problem(
            "grant_types",
            "refresh_without_grant",
            "refresh_token needs a grant that issues refresh tokens (authorization_code, device_code or token-exchange)",
        ));
    }
    if has(GrantType::AuthorizationCode) && r.redirect_uris.is_empty() {
        out.push(problem(
            "redirect_uris",
            "required",
            "authorization_code needs at least one redirect URI",
        ));
    }
    if !has(GrantType::AuthorizationCode) && !r.redirect_uris.is_empty() {
        out.push(problem(
            "redirect_uris",
            "unused",
            "redirect URIs are for clients with the authorization_code grant",
        ));
    }
    if let Some(uri) = r.backchannel_logout_uri
        && !is_https_url(uri)
        && !(r.allow_loopback_backchannel && is_loopback_http_url(uri))
    {
        out.push(problem(
            "backchannel_logout_uri",
            "invalid_uri",
            "backchannel_logout_uri must be an absolute https URL without a fragment",
        ));
    }
    out
}

fn is_loopback_http_url(raw: &str) -> bool {
    raw.len() <= super::redirect::MAX_LEN
        && !raw.contains('#')
        && url::Url::parse(raw).is_ok_and(|u| {
            u.scheme() == "http"
                && matches!(u.host_str(), Some("127.0.0.1") | Some("[::1]"))
                && u.username().is_empty()
                && u.password().is_none()
        })
}

fn is_https_url(raw: &str) -> bool {
    raw.len() <= super::redirect::MAX_LEN
        && !raw.contains('#')
        && url::Url::parse(raw).is_ok_and(|u| {
            u.scheme() == "https"
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.username().is_empty()
                && u.password().is_none()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(raw: &[&str]) -> Vec<RedirectUri> {
        raw.iter().map(|r| RedirectUri::parse(r).unwrap()).collect()
    }

    fn codes(r: &Registration<'_>) -> Vec<&'static str> {
        check(r).into_iter().map(|p| p.code).collect()
    }

    fn web_app<'a>(grants: &'a [GrantType], redirects: &'a [RedirectUri]) -> Registration<'a> {
        Registration {
            client_type: ClientType::Confidential,
            auth_method: AuthMethod::ClientSecretBasic,
            grant_types: grants,
            redirect_uris: redirects,
            has_jwks: false,
            has_jwks_uri: false,
            backchannel_logout_uri: None,
            allow_loopback_backchannel: false,
        }
    }

    #[test]
    fn wire_names_round_trip_and_are_case_sensitive() {
        for g in GrantType::ALL {
            assert_eq!(GrantType::parse(g.as_str()), Some(*g));
        }
        for m in AuthMethod::ALL {
            assert_eq!(AuthMethod::parse(m.as_str()), Some(*m));
        }
        for t in ClientType::ALL {
            assert_eq!(ClientType::parse(t.as_str()), Some(*t));
        }
        for bad in [
            "password",
            "implicit",
            "Authorization_Code",
            "authorization_code ",
            "",
        ] {
            assert_eq!(GrantType::parse(bad), None, "{bad:?}");
        }
        assert_eq!(AuthMethod::parse("client_secret_jwt"), None);
        assert_eq!(
            AuthMethod::default_for(ClientType::Public),
            AuthMethod::None
        );
        assert!(AuthMethod::default_for(ClientType::Confidential).uses_secret());
        assert!(!AuthMethod::PrivateKeyJwt.uses_secret());
    }

    #[test]
    fn coherent_registrations_pass() {
        let cb = uris(&["https://app.example/cb"]);
        let code_refresh = [GrantType::AuthorizationCode, GrantType::RefreshToken];
        assert!(check(&web_app(&code_refresh, &cb)).is_empty());
        let spa = Registration {
            client_type: ClientType::Public,
            auth_method: AuthMethod::None,
            ..web_app(&code_refresh, &cb)
        };
        assert!(check(&spa).is_empty());
        let service = web_app(&[GrantType::ClientCredentials], &[]);
        assert!(check(&service).is_empty());
        let keyed = Registration {
            auth_method: AuthMethod::PrivateKeyJwt,
            has_jwks_uri: true,
            backchannel_logout_uri: Some("https://app.example/logout"),
            ..web_app(&code_refresh, &cb)
        };
        assert!(check(&keyed).is_empty());
    }

    #[test]
    fn each_rule_names_its_field() {
        let cb = uris(&["https://app.example/cb"]);
        let code = [GrantType::AuthorizationCode];
        let public_with_secret = Registration {
            client_type: ClientType::Public,
            ..web_app(&code, &cb)
        };
        assert_eq!(codes(&public_with_secret), ["public_client_auth"]);
        let confidential_without = Registration {
            auth_method: AuthMethod::None,
            ..web_app(&code, &cb)
        };
        assert_eq!(codes(&confidential_without), ["confidential_client_auth"]);
        let keyless = Registration {
            auth_method: AuthMethod::PrivateKeyJwt,
            ..web_app(&code, &cb)
        };
        assert_eq!(codes(&keyless), ["jwks_required"]);
        let both_keys = Registration {
            has_jwks: true,
            has_jwks_uri: true,
            ..keyless.clone()
        };
        assert_eq!(codes(&both_keys), ["jwks_required"]);
        let stray_keys = Registration {
            has_jwks: true,
            ..web_app(&code, &cb)
        };
        assert_eq!(codes(&stray_keys), ["jwks_unused"]);
        assert_eq!(codes(&web_app(&[], &[])), ["empty"]);
        assert_eq!(
            codes(&web_app(
                &[GrantType::AuthorizationCode, GrantType::AuthorizationCode],
                &cb
            )),
            ["duplicate"]
        );
        let public_cc = Registration {
            client_type: ClientType::Public,
            auth_method: AuthMethod::None,
            ..web_app(&[GrantType::ClientCredentials], &[])
        };
        assert_eq!(codes(&public_cc), ["public_client_credentials"]);
        assert_eq!(
            codes(&web_app(&[GrantType::RefreshToken], &[])),
            ["refresh_without_grant"]
        );
        assert_eq!(codes(&web_app(&code, &[])), ["required"]);
        assert_eq!(
            codes(&web_app(&[GrantType::ClientCredentials], &cb)),
            ["unused"]
        );
        for bad in [
            "http://app.example/logout",
            "https://app.example/logout#x",
            "https://u:p@app.example/logout",
            "/logout",
        ] {
            let r = Registration {
                backchannel_logout_uri: Some(bad),
                ..web_app(&code, &cb)
            };
            assert_eq!(codes(&r), ["invalid_uri"], "{bad}");
        }
        // Loopback http only when the operator allows it, and only on a loopback address.
        let local = Registration {
            backchannel_logout_uri: Some("http://127.0.0.1:8080/logout"),
            ..web_app(&code, &cb)
        };
        assert_eq!(codes(&local), ["invalid_uri"]);
        let allowed = Registration {
            allow_loopback_backchannel: true,
            ..local.clone()
        };
        assert!(codes(&allowed).is_empty());
        let remote = Registration {
            backchannel_logout_uri: Some("http://app.example/logout"),
            ..allowed.clone()
        };
        assert_eq!(codes(&remote), ["invalid_uri"]);
        // Several problems are all named.
        let many = Registration {
            client_type: ClientType::Public,
            ..web_app(
                &[GrantType::ClientCredentials, GrantType::RefreshToken],
                &cb,
            )
        };
        assert_eq!(
            codes(&many),
            [
                "public_client_auth",
                "public_client_credentials",
                "refresh_without_grant",
                "unused"
            ]
        );
    }
}
