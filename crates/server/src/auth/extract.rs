//! The `Principal` and `Admin` extractors: every `/v1` and `/admin/v1` handler takes one.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use portcullis_core::apikeys::ApiKey;
use portcullis_core::principal::Principal;

use super::credential;
use crate::app::state::AppState;
use crate::error::Error;
use crate::http::ApiError;

/// Query parameters that carry credentials in other products' APIs.
const CREDENTIAL_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "x_api_key",
    "key",
    "access_token",
    "token",
];

/// True when the query string carries a credential: a parameter named like one, or any value that is
/// one of our API keys. URLs end up in proxy and server logs, browser history and `Referer` headers, so
/// such requests are refused rather than served (OWASP ASVS 5.0 V14.2.1).
pub fn credential_in_query(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = name.to_ascii_lowercase();
        CREDENTIAL_PARAMS.contains(&name.as_str())
            || (value.len() <= 128
                && ApiKey::parse(&value.replace("%5F", "_").replace("%5f", "_")).is_ok())
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        if credential_in_query(parts.uri.query()) {
            return Err(ApiError::BadRequest(
                "credential_in_query",
                "credentials belong in a header (X-API-Key or Authorization), never in the URL, \
                 where proxies, logs and browser history keep them; this request was refused"
                    .into(),
            ));
        }
        let credential = credential::from_headers(&parts.method, &parts.headers)?;
        let principal = match credential {
            c @ credential::Credential::Dpop { .. } => {
                // The proof names the URI the client used: our origin and this path.
                let htu = format!("{}{}", state.config.origin(), parts.uri.path());
                let target = super::Target {
                    method: parts.method.as_str(),
                    uri: &htu,
                };
                state.auth.authenticate_at(c, target).await?
            }
            c => state.auth.authenticate(c).await?,
        };
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// A principal that passed the admin check.
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = Principal::from_request_parts(parts, state).await?;
        if state.auth.is_admin(&p).await? {
            Ok(Admin(p))
        } else {
            Err(Error::Forbidden("forbidden", "this endpoint is for administrators".into()).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any query string is judged without panicking; one that names a credential parameter, in
        /// any letter case, is always caught.
        #[test]
        fn credentials_in_the_query_are_found(
            pairs in proptest::collection::vec(("[A-Za-z_\\-]{0,12}", "[A-Za-z0-9%_.=-]{0,40}"), 0..6),
            name in proptest::sample::select(vec!["api_key", "API_KEY", "apikey", "X-Api-Key", "token", "access_token", "key"]),
            at in 0usize..6,
        ) {
            let mut parts: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let _ = credential_in_query(Some(&parts.join("&")));
            let at = at.min(parts.len());
            parts.insert(at, format!("{name}=whatever"));
            prop_assert!(credential_in_query(Some(&parts.join("&"))));
        }

        /// A real key is caught as any parameter's value, also with its underscores percent-encoded.
        #[test]
        fn a_key_as_any_value_is_found(param in "[a-z]{1,10}", encode in any::<bool>()) {
            let key = ApiKey::generate("pk_live").unwrap().expose().to_owned();
            let value = if encode { key.replace('_', "%5F") } else { key };
            let query = format!("{param}={value}&x=1");
            prop_assert!(credential_in_query(Some(&query)));
        }
    }

    #[test]
    fn ordinary_queries_pass() {
        for q in [
            "",
            "limit=10&cursor=key_0193",
            "type=login.failed",
            "owner=none",
        ] {
            assert!(!credential_in_query(Some(q)), "{q}");
        }
        assert!(!credential_in_query(None));
    }
}
