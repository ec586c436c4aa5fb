//! The one way the authorization server fetches a document a client names (a Client ID Metadata
//! Document, a `jwks_uri`): https only, no redirects, a few seconds and a few KiB at most, JSON only,
//! and never to a private, loopback or otherwise non-public address — checked on every address a
//! name resolves to, by the resolver the connection itself uses, so DNS cannot rebind around it.
//! Answers are cached as their `Cache-Control` says (bounded). `allow_private` (the test-only
//! `oauth_fetch_allow_private_for_tests`) lifts the address and https rules for local test servers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;

/// The largest document read.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// How long one fetch may take, end to end.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Cached for at least / at most this long, whatever the document says (no-store: not cached).
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Without a `max-age`.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the URL is not an https URL with a host")]
    NotHttps,
    #[error("the URL's host is not a public address")]
    PrivateAddress,
    #[error("the server answered with a redirect, which is not followed")]
    Redirect,
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the server did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("the document is not a JSON object")]
    NotJson,
    #[error("the server could not be reached")]
    Unreachable,
}

/// Is this an address anyone on the internet could reach? Loopback, private (RFC 1918, ULA),
/// link-local, CGNAT, documentation, benchmarking, multicast, broadcast, reserved and unspecified
/// addresses are not, nor IPv4 ones hidden in IPv6 (mapped, NAT64).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b {
                let v4 = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return is_public(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// The resolver's refusal, found again in the error chain of the request it failed.
#[derive(Debug)]
struct NoPublicAddress;

impl std::fmt::Display for NoPublicAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the name resolves to no public address")
    }
}

impl std::error::Error for NoPublicAddress {}

/// Resolves names as the system does, keeping public addresses only.
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(NoPublicAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

struct Cached {
    value: Arc<Value>,
    until: Instant,
}

pub struct Fetcher {
    http: reqwest::Client,
    allow_private: bool,
    cache: moka::sync::Cache<String, Arc<Cached>>,
}

impl Fetcher {
    pub fn new(allow_private: bool) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            // A proxy from the environment would resolve names itself, past the address check.
            .no_proxy()
            .dns_resolver(Arc::new(PublicOnly { allow_private }))
            .danger_accept_invalid_certs(allow_private)
            .user_agent("portcullis")
            .build()
            .unwrap_or_default();
        Self {
            http,
            allow_private,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(MAX_TTL)
                .build(),
        }
    }

    /// Whether `raw` is a URL this fetcher would fetch (before any network).
    pub fn check_url(&self, raw: &str) -> Result<url::Url, FetchError> {
        let url = url::Url::parse(raw).map_err(|_| FetchError::NotHttps)?;
        let scheme_ok = url.scheme() == "https" || (self.allow_private && url.scheme() == "http");
        if !scheme_ok
            || url.host_str().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(FetchError::NotHttps);
        }
        // An address written as the host never goes through the resolver: judged here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(FetchError::PrivateAddress);
        }
        Ok(url)
    }

    /// The JSON object at `raw`, from the cache while it is fresh.
    pub async fn json(&self, raw: &str) -> Result<Arc<Value>, FetchError> {
        if let Some(c) = self.cache.get(raw)
            && c.until > Instant::now()
        {
            return Ok(Arc::clone(&c.value));
        }
        let url = self.check_url(raw)?;
        let mut res = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                let mut source = std::error::Error::source(&e);
                let refused = std::iter::from_fn(|| {
                    let s = source?;
                    source = s.source();
                    Some(s)
                })
                .any(|s| s.is::<NoPublicAddress>());
                if e.is_timeout() {
                    FetchError::Timeout
                } else if refused {
                    FetchError::PrivateAddress
                } else {
                    FetchError::Unreachable
                }
            })?;
        let status = res.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect);
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let ttl = ttl(res.headers().get(reqwest::header::CACHE_CONTROL));
        let mut body = BytesMut::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| {
            if e.is_timeout() {
                FetchError::Timeout
            } else {
                FetchError::Unreachable
            }
        })? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let value: Value = serde_json::from_slice(&body).map_err(|_| FetchError::NotJson)?;
        if !value.is_object() {
            return Err(FetchError::NotJson);
        }
        let value = Arc::new(value);
        if let Some(ttl) = ttl {
            self.cache.insert(
                raw.to_owned(),
                Arc::new(Cached {
                    value: Arc::clone(&value),
                    until: Instant::now() + ttl,
                }),
            );
        }
        Ok(value)
    }

    /// Drops a cached document (a key that no longer verifies may have rotated).
    pub fn forget(&self, raw: &str) {
        self.cache.invalidate(raw);
    }
}

/// How long an answer may be reused: its `max-age`, bounded; `None` for `no-store`/`no-cache`.
fn ttl(header: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let Some(v) = header.and_then(|v| v.to_str().ok()) else {
        return Some(DEFAULT_TTL);
    };
    let mut max_age = None;
    for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if d == "no-store" || d == "no-cache" {
            return None;
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            max_age = n.trim_matches('"').parse::<u64>().ok();
        }
    }
    Some(
        max_age
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TTL)
            .clamp(MIN_TTL, MAX_TTL),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "64:ff9b::101:101",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_https_with_a_public_host() {
        let f = Fetcher::new(false);
        assert!(f.check_url("https://client.example/meta.json").is_ok());
        assert_eq!(
            f.check_url("http://client.example/m"),
            Err(FetchError::NotHttps)
        );
        assert_eq!(
            f.check_url("https://127.0.0.1/m"),
            Err(FetchError::PrivateAddress)
        );
        assert_eq!(
            f.check_url("https://[::1]/m"),
            Err(FetchError::PrivateAddress)
        );
        assert_eq!(
            f.check_url("https://u:p@client.example/m"),
            Err(FetchError::NotHttps)
        );
        assert_eq!(f.check_url("file:///etc/passwd"), Err(FetchError::NotHttps));
        assert!(Fetcher::new(true).check_url("http://127.0.0.1:9/m").is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_resolve_to_nothing() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let strict = PublicOnly {
            allow_private: false,
        };
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        assert!(strict.resolve(name).await.is_err(), "localhost is loopback");
        let lenient = PublicOnly {
            allow_private: true,
        };
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        assert!(lenient.resolve(name).await.is_ok());
        // And a fetch of such a name never connects.
        let f = Fetcher::new(false);
        assert_eq!(
            f.json("https://localhost:1/jwks.json").await,
            Err(FetchError::PrivateAddress)
        );
    }

    #[test]
    fn cache_lifetimes_follow_cache_control_within_bounds() {
        let h = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(ttl(None), Some(DEFAULT_TTL));
        assert_eq!(ttl(Some(&h("no-store"))), None);
        assert_eq!(
            ttl(Some(&h("public, max-age=600"))),
            Some(Duration::from_secs(600))
        );
        assert_eq!(ttl(Some(&h("max-age=1"))), Some(MIN_TTL));
        assert_eq!(ttl(Some(&h("max-age=99999999"))), Some(MAX_TTL));
    }
}
