//! What makes checking an access token cheap and revocable: a cache of verified tokens keyed by the
//! SHA-256 of the whole token and expiring with it (a signature check costs ~55 µs, a lookup ~0.3 µs),
//! and the per-user watermarks before which tokens are no longer honoured (password change,
//! logout-all, disabling), read by the millisecond in each token's UUIDv7 `jti`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use portcullis_core::clock::Millis;
use portcullis_core::jwt::AccessClaims;

struct UntilExp;

impl Expiry<[u8; 32], Arc<AccessClaims>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        claims: &Arc<AccessClaims>,
        _: Instant,
    ) -> Option<Duration> {
        let left = claims.exp.saturating_sub(Millis::now().as_secs()).max(0);
        Some(Duration::from_secs(left as u64 + 1))
    }
}

pub struct AccessTokens {
    verified: Cache<[u8; 32], Arc<AccessClaims>>,
    watermarks: RwLock<HashMap<String, i64>>,
}

impl Default for AccessTokens {
    fn default() -> Self {
        Self {
            verified: Cache::builder()
                .max_capacity(200_000)
                .expire_after(UntilExp)
                .build(),
            watermarks: RwLock::new(HashMap::new()),
        }
    }
}

impl AccessTokens {
    pub fn cached(&self, hash: &[u8; 32]) -> Option<Arc<AccessClaims>> {
        self.verified.get(hash)
    }

    pub fn remember(&self, hash: [u8; 32], claims: Arc<AccessClaims>) {
        self.verified.insert(hash, claims);
    }

    /// Forgets every verified token, so that each is verified against the key ring again (after a
    /// signing key was revoked: a token it signed must stop working at once, cached or not).
    pub fn forget_verified(&self) {
        self.verified.invalidate_all();
    }

    /// Stop honouring access tokens of `user_id` issued before `at`.
    pub fn revoke_before(&self, user_id: &str, at: Millis) {
        if let Ok(mut w) = self.watermarks.write() {
            let entry = w.entry(user_id.to_owned()).or_insert(at.0);
            *entry = (*entry).max(at.0);
        }
    }

    /// Loads watermarks young enough to matter (tokens issued before them may still be unexpired) and
    /// forgets older ones.
    pub fn load_watermarks(&self, rows: Vec<(String, i64)>, forget_before: Millis) {
        if let Ok(mut w) = self.watermarks.write() {
            w.retain(|_, at| *at >= forget_before.0);
            for (user, at) in rows {
                let entry = w.entry(user).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
    }

    /// Issued before its user's watermark?
    pub fn revoked(&self, claims: &AccessClaims) -> bool {
        let Ok(w) = self.watermarks.read() else {
            return true;
        };
        w.get(&claims.sub)
            .is_some_and(|at| claims.issued_at_ms() < *at)
    }
}
