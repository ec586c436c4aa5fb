//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document): a client whose
//! `client_id` is an https URL is the document at that URL. It is fetched by the guarded fetcher
//! (bounded size and time, no redirects, public addresses only, HTTP-cached), must name itself
//! (`client_id` equal to the URL), may not use a shared secret, and its `redirect_uris` bind its
//! requests. Inside, such a client is an ordinary row whose id is derived from the URL (so codes,
//! consents and refresh families refer to it as to any other), kept in step with the document;
//! outside, in tokens and on the consent page, it is the URL.

use portcullis_core::ids::ClientId;
use portcullis_core::secrets::TokenHash;
use serde_json::Value;

use super::clients::{ClientSettings, MAX_URL_LEN};

/// Why a URL or document is not a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("the client_id URL is not one a metadata document may have: {0}")]
    BadUrl(&'static str),
    #[error("metadata documents from this domain are not accepted")]
    DomainRefused,
    #[error("the document could not be fetched: {0}")]
    Fetch(#[from] super::fetch::FetchError),
    #[error("the document is not a client's metadata: {0}")]
    Invalid(String),
    #[error("too many new metadata documents from this site; try again later")]
    TooManyNew,
}

/// New metadata-document clients one site may bring per hour (a client seen before does not count).
pub const NEW_PER_SITE: portcullis_core::ratelimit::RatePolicy =
    portcullis_core::ratelimit::RatePolicy {
        limit: 20,
        period_ms: 3_600_000,
    };

/// What the per-site limit counts by: an address as itself, a name by its last two labels
/// (`a.b.example.com` → `example.com`; without the public suffix list, `co.uk`-style names share).
pub fn site_of(host: &str) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return format!("cimd:{host}");
    }
    let labels: Vec<&str> = host.trim_end_matches('.').rsplit('.').take(2).collect();
    let site: Vec<&str> = labels.into_iter().rev().collect();
    format!("cimd:{}", site.join(".").to_ascii_lowercase())
}

/// Does this look like a metadata-document client id (rather than one of ours)?
pub fn is_document_id(raw: &str) -> bool {
    raw.starts_with("https://") || raw.starts_with("http://")
}

/// The URL rules of the draft (§3): https, a host, a path other than `/`, no fragment, no
/// credentials, no dot segments; we refuse a query too.
pub fn check_url(raw: &str, allow_http: bool) -> Result<url::Url, DocumentError> {
    if raw.len() > MAX_URL_LEN {
        return Err(DocumentError::BadUrl("longer than 2048 bytes"));
    }
    let u = url::Url::parse(raw).map_err(|_| DocumentError::BadUrl("not a URL"))?;
    if u.scheme() != "https" && !(allow_http && u.scheme() == "http") {
        return Err(DocumentError::BadUrl("not https"));
    }
    if u.host_str().is_none() || !u.username().is_empty() || u.password().is_some() {
        return Err(DocumentError::BadUrl("no host, or credentials in it"));
    }
    if u.fragment().is_some() || u.query().is_some() {
        return Err(DocumentError::BadUrl("a query or fragment"));
    }
    if u.path() == "/" || u.path().is_empty() {
        return Err(DocumentError::BadUrl("no path"));
    }
    // The parsed URL has its dot segments resolved: they were there if it changed.
    if u.as_str() != raw || raw.contains("/./") || raw.contains("/../") {
        return Err(DocumentError::BadUrl(
            "not in its normal form (dot segments, case)",
        ));
    }
    Ok(u)
}

/// Whether `host` passes the allow list (empty: any) and the deny list (suffix matches on labels:
/// `example.com` covers `a.example.com`).
pub fn host_allowed(host: &str, allow: &[String], deny: &[String]) -> bool {
    let covered = |d: &String| {
        let d = d.trim_start_matches("*.").to_ascii_lowercase();
        host == d || host.ends_with(&format!(".{d}"))
    };
    (allow.is_empty() || allow.iter().any(covered)) && !deny.iter().any(covered)
}

/// The internal id of the document's client: derived from its URL, stable across nodes.
pub fn internal_id(url: &str) -> ClientId {
    let hash = TokenHash::of(url.as_bytes()).0;
    let hex: String = hash.iter().take(16).map(|b| format!("{b:02x}")).collect();
    ClientId::parse(&format!("cli_{hex}")).unwrap_or_else(|_| ClientId::generate())
}

/// The registration a document makes (checked further by the ordinary registration rules).
pub fn settings_of(
    url: &str,
    doc: &Value,
    scopes_allowed: &[String],
) -> Result<ClientSettings, DocumentError> {
    let invalid = |s: &str| DocumentError::Invalid(s.to_owned());
    let m = doc
        .as_object()
        .ok_or_else(|| invalid("not a JSON object"))?;
    if m.get("client_id").and_then(Value::as_str) != Some(url) {
        return Err(invalid("its client_id is not the URL it was fetched from"));
    }
    if m.contains_key("client_secret") || m.contains_key("client_secret_expires_at") {
        return Err(invalid("a metadata document cannot carry a client secret"));
    }
    let text = |n: &str| m.get(n).and_then(Value::as_str);
    let list = |n: &str| -> Result<Option<Vec<String>>, DocumentError> {
        match m.get(n) {
            None => Ok(None),
            Some(Value::Array(a)) if a.len() <= 20 => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| invalid(n)))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(DocumentError::Invalid(format!(
                "{n} is an array of at most 20 strings"
            ))),
        }
    };
    let auth = text("token_endpoint_auth_method").unwrap_or("none");
    let client_type = match auth {
        "none" => "public",
        "private_key_jwt" => "confidential",
        _ => {
            return Err(invalid(
                "token_endpoint_auth_method is none or private_key_jwt: no shared secrets",
            ));
        }
    };
    let redirect_uris =
        list("redirect_uris")?.ok_or_else(|| invalid("redirect_uris is required"))?;
    let grant_types = list("grant_types")?.unwrap_or_else(|| vec!["authorization_code".into()]);
    if grant_types
        .iter()
        .any(|g| g != "authorization_code" && g != "refresh_token")
    {
        return Err(invalid(
            "grant_types are authorization_code and refresh_token",
        ));
    }
    if let Some(types) = list("response_types")?
        && types.iter().any(|t| t != "code")
    {
        return Err(invalid("response_types is [\"code\"]"));
    }
    let scopes: Vec<String> = match text("scope") {
        Some(s) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .filter(|s| scopes_allowed.iter().any(|a| a == s))
            .map(str::to_owned)
            .collect(),
        None => scopes_allowed.to_vec(),
    };
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let name: String = text("client_name")
        .unwrap_or(&host)
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    Ok(ClientSettings {
        name: if name.trim().is_empty() { host } else { name },
        client_type: client_type.into(),
        redirect_uris,
        grant_types,
        scopes,
        token_endpoint_auth_method: Some(auth.into()),
        jwks: m.get("jwks").cloned(),
        jwks_uri: text("jwks_uri").map(str::to_owned),
        client_id_metadata_document: Some(url.to_owned()),
        ..ClientSettings::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn document_urls_follow_the_draft() {
        assert!(check_url("https://app.example/oauth/client.json", false).is_ok());
        for bad in [
            "http://app.example/client.json",
            "https://app.example/",
            "https://app.example",
            "https://app.example/c.json#x",
            "https://app.example/c.json?v=1",
            "https://u:p@app.example/c.json",
            "https://app.example/a/../c.json",
            "https://APP.example/c.json",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9/c.json", true).is_ok());
    }

    #[test]
    fn sites_are_the_last_two_labels_or_the_address() {
        assert_eq!(site_of("a.b.example.com"), "cimd:example.com");
        assert_eq!(site_of("Example.COM"), "cimd:example.com");
        assert_eq!(site_of("127.0.0.1"), "cimd:127.0.0.1");
        assert_eq!(site_of("localhost"), "cimd:localhost");
    }

    #[test]
    fn allow_and_deny_lists_match_domains_and_their_subdomains() {
        let l = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(host_allowed("a.example.com", &[], &[]));
        assert!(host_allowed("a.example.com", &l(&["example.com"]), &[]));
        assert!(!host_allowed("evilexample.com", &l(&["example.com"]), &[]));
        assert!(!host_allowed("a.bad.example", &[], &l(&["bad.example"])));
        assert!(!host_allowed(
            "x.example.com",
            &l(&["example.com"]),
            &l(&["x.example.com"])
        ));
    }

    #[test]
    fn documents_name_themselves_and_hold_no_secret() {
        let url = "https://app.example/client.json";
        let ok = json!({ "client_id": url, "client_name": "App", "redirect_uris": ["http://127.0.0.1/cb"] });
        let s = settings_of(url, &ok, &["openid".into()]).unwrap();
        assert_eq!(s.client_type, "public");
        assert_eq!(s.client_id_metadata_document.as_deref(), Some(url));
        let mut other = ok.clone();
        other["client_id"] = json!("https://app.example/other.json");
        assert!(settings_of(url, &other, &[]).is_err());
        let mut secret = ok.clone();
        secret["token_endpoint_auth_method"] = json!("client_secret_basic");
        assert!(settings_of(url, &secret, &[]).is_err());
        let mut no_redirects = ok;
        no_redirects
            .as_object_mut()
            .unwrap()
            .remove("redirect_uris");
        assert!(settings_of(url, &no_redirects, &[]).is_err());
        assert_eq!(internal_id(url), internal_id(url));
        assert_ne!(
            internal_id(url),
            internal_id("https://app.example/other.json")
        );
    }
}
