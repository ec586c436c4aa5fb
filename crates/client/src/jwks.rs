//! The issuer's JWKS, fetched and kept: fresh for the `max-age` its `Cache-Control` gives (within
//! bounds), refetched at most once per `min_refetch_interval` when a token names a key we do not
//! know, and served as last fetched while the issuer cannot be reached.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use portcullis_core::jwt::{Verifier as KeyVerifier, VerifyingKey};

use crate::Error;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 512 * 1024;
/// Longest time a JWKS counts as fresh, whatever its `Cache-Control` says.
const MAX_FRESH: Duration = Duration::from_secs(24 * 3600);

/// One fetched key set, ready to verify with.
pub(crate) struct Snapshot {
    pub verifier: KeyVerifier,
    pub fresh_until: Instant,
    pub fetched_at: Instant,
}

pub(crate) struct Jwks {
    uri: String,
    issuer: String,
    audience: String,
    leeway_s: i64,
    min_interval: Duration,
    default_ttl: Duration,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// When the last fetch began; held across the fetch, so one runs at a time.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    pub fn new(
        uri: String,
        issuer: String,
        audience: String,
        leeway_s: i64,
        min_interval: Duration,
        default_ttl: Duration,
    ) -> Self {
        Self {
            uri,
            issuer,
            audience,
            leeway_s,
            min_interval,
            default_ttl,
            current: RwLock::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
        }
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// The keys to verify with: the cached set while fresh, else a refetch, else (the issuer is
    /// down) the last set we had.
    pub async fn keys(&self, http: &reqwest::Client) -> Result<Arc<Snapshot>, Error> {
        let now = Instant::now();
        let old = self.snapshot();
        if let Some(s) = &old
            && s.fresh_until > now
        {
            return Ok(Arc::clone(s));
        }
        match self.refetch(http, now).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => old.ok_or_else(|| {
                Error::Unavailable(format!(
                    "JWKS {}: the last fetch failed moments ago; retrying after the interval",
                    self.uri
                ))
            }),
            Err(e) => match old {
                Some(s) => {
                    tracing::warn!(error = %e, "JWKS refetch failed; verifying with the keys fetched before");
                    Ok(s)
                }
                None => Err(e),
            },
        }
    }

    /// A fresh fetch because a token named an unknown key; `None` when one ran within the interval
    /// (the key is then unknown for good, until the interval passes).
    pub async fn refetch_for_unknown_kid(
        &self,
        http: &reqwest::Client,
    ) -> Result<Option<Arc<Snapshot>>, Error> {
        self.refetch(http, Instant::now()).await
    }

    /// The key set fetched since `asked_at`: by another caller meanwhile, or now; `None` when the
    /// last attempt was less than the interval ago.
    async fn refetch(
        &self,
        http: &reqwest::Client,
        asked_at: Instant,
    ) -> Result<Option<Arc<Snapshot>>, Error> {
        let mut last = self.last_attempt.lock().await;
        if let Some(s) = self.snapshot()
            && s.fetched_at >= asked_at
        {
            return Ok(Some(s));
        }
        if let Some(at) = *last
            && at.elapsed() < self.min_interval
        {
            return Ok(None);
        }
        *last = Some(Instant::now());
        let snapshot = Arc::new(self.fetch(http).await?);
        if let Ok(mut g) = self.current.write() {
            *g = Some(Arc::clone(&snapshot));
        }
        Ok(Some(snapshot))
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Snapshot, Error> {
        let unavailable = |why: String| Error::Unavailable(format!("JWKS {}: {why}", self.uri));
        let mut r = http
            .get(&self.uri)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !r.status().is_success() {
            return Err(unavailable(format!("answered {}", r.status())));
        }
        let ttl = r
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map_or(self.default_ttl, |cc| freshness(cc, self.default_ttl));
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(unavailable(format!("larger than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| unavailable("not JSON".into()))?;
        let keys: Vec<VerifyingKey> = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| unavailable("no keys array".into()))?
            .iter()
            .filter_map(|jwk| match VerifyingKey::from_jwk(jwk) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "a JWKS key was skipped");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err(unavailable("no usable signing key".into()));
        }
        let now = Instant::now();
        Ok(Snapshot {
            verifier: KeyVerifier::new(
                keys,
                self.issuer.clone(),
                self.audience.clone(),
                self.leeway_s,
            ),
            fresh_until: now + ttl.clamp(self.min_interval, MAX_FRESH),
            fetched_at: now,
        })
    }
}

/// How long a response stays fresh by its `Cache-Control`: `max-age`, or nothing for `no-store` /
/// `no-cache`, or `default` when it says neither.
fn freshness(cache_control: &str, default: Duration) -> Duration {
    let mut out = default;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(v) = lower.strip_prefix("max-age=")
            && let Ok(secs) = v.trim_matches('"').parse::<u64>()
        {
            out = Duration::from_secs(secs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_sets_the_freshness() {
        let d = Duration::from_secs(7);
        assert_eq!(
            freshness("public, max-age=300", d),
            Duration::from_secs(300)
        );
        assert_eq!(freshness("Max-Age=\"60\"", d), Duration::from_secs(60));
        assert_eq!(freshness("no-store", d), Duration::ZERO);
        assert_eq!(freshness("public", d), d);
        assert_eq!(freshness("max-age=junk", d), d);
    }
}
