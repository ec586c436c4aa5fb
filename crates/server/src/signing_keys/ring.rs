//! The signing-key ring: which key signs now, which keys the JWKS publishes, and their rotation.
//!
//! A new key is published `publish_lead` before it starts signing, so every client that caches our JWKS
//! (for up to `max-age=300` s, and usually longer) already knows it by the time a token it signed shows up.
//! A replaced key keeps being published until the last token it signed has expired. Private keys are
//! sealed under the master key in the store and kept parsed in memory here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use portcullis_core::clock::Millis;
use portcullis_core::jwt::{
    AccessClaims, JwsAlg, JwtError, KeySchedule, SigningKey, Verifier, current_signer,
};
use portcullis_core::seal::MasterKey;
use portcullis_store::{SigningKeyRow, SigningKeyStore, Store, StoreError};
use secrecy::ExposeSecret;

/// What the ring knows at one moment; replaced whole on every change.
pub struct RingState {
    /// The algorithm of access tokens (`jwt_alg`); ID tokens are signed with [`ID_TOKEN_ALG`].
    primary: JwsAlg,
    schedules: Vec<KeySchedule>,
    keys: HashMap<String, Arc<SigningKey>>,
    pub verifier: Verifier,
    pub jwks: Bytes,
}

impl RingState {
    /// The key to sign access tokens with now. Called for every token issued: no allocation.
    pub fn signer(&self, now: Millis) -> Option<&Arc<SigningKey>> {
        self.signer_for(self.primary, now)
    }

    /// The key of `alg` to sign with now.
    pub fn signer_for(&self, alg: JwsAlg, now: Millis) -> Option<&Arc<SigningKey>> {
        current_signer(&self.schedules, alg, now).and_then(|s| self.keys.get(&s.kid))
    }

    /// Is `kid` one of the keys loaded (published, signing or retiring)?
    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key {kid}: {reason}")]
    Key { kid: String, reason: String },
    #[error("no signing key is active")]
    NoActiveKey,
}

/// ID tokens are RS256 (OIDC Core §3.1.3.7: the algorithm every relying party supports).
pub const ID_TOKEN_ALG: JwsAlg = JwsAlg::Rs256;

/// The algorithms a ring with access-token algorithm `jwt_alg` holds keys of: it first, then RS256
/// for ID tokens when that is another one.
pub fn ring_algs(jwt_alg: JwsAlg) -> Vec<JwsAlg> {
    if jwt_alg == ID_TOKEN_ALG {
        vec![jwt_alg]
    } else {
        vec![jwt_alg, ID_TOKEN_ALG]
    }
}

pub struct KeyRing {
    store: Store,
    master: MasterKey,
    /// Access tokens' algorithm, first; then RS256 for ID tokens when that is another one. Each
    /// algorithm has its own schedule and rotates apart.
    algs: Vec<JwsAlg>,
    issuer: String,
    audience: String,
    leeway_s: i64,
    /// How long a retired key stays published: the longest access-token lifetime plus leeway.
    overlap_ms: i64,
    state: RwLock<Arc<RingState>>,
}

fn seal_context(kid: &str) -> String {
    format!("portcullis:signing_key:{kid}")
}

impl KeyRing {
    pub async fn load(
        store: Store,
        master: MasterKey,
        alg: JwsAlg,
        issuer: String,
        audience: String,
        leeway_s: i64,
        access_ttl_s: i64,
    ) -> Result<Self, KeyError> {
        let overlap_ms = (access_ttl_s + leeway_s + 60) * 1000;
        let algs = ring_algs(alg);
        let empty = Arc::new(RingState {
            primary: alg,
            schedules: Vec::new(),
            keys: HashMap::new(),
            verifier: Verifier::new([], issuer.clone(), audience.clone(), leeway_s),
            jwks: Bytes::from_static(b"{\"keys\":[]}"),
        });
        let ring = Self {
            store,
            master,
            algs,
            issuer,
            audience,
            leeway_s,
            overlap_ms,
            state: RwLock::new(empty),
        };
        ring.reload().await?;
        for alg in ring.algs.clone() {
            if ring.current().signer_for(alg, Millis::now()).is_none() {
                ring.create_key_for(alg, Millis::now(), 0).await?;
            }
        }
        Ok(ring)
    }

    /// The ring the configuration describes.
    pub async fn from_config(
        store: Store,
        master: MasterKey,
        config: &crate::Config,
    ) -> Result<Self, KeyError> {
        Self::load(
            store,
            master,
            config.jwt_alg,
            config.issuer(),
            config.audience(),
            config.jwt_leeway_s,
            config.access_token_ttl_s,
        )
        .await
    }

    pub fn current(&self) -> Arc<RingState> {
        match self.state.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the keys from the store (another node or the CLI may have rotated).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let now = Millis::now();
        let rows = self.store.live_signing_keys(now).await?;
        let mut schedules = Vec::with_capacity(rows.len());
        let mut keys = HashMap::with_capacity(rows.len());
        for row in rows {
            let alg = JwsAlg::parse(&row.alg).ok_or_else(|| KeyError::Key {
                kid: row.kid.clone(),
                reason: format!("unknown alg {}", row.alg),
            })?;
            let der = self
                .master
                .open(&seal_context(&row.kid), &row.private_key)
                .map_err(|e| KeyError::Key {
                    kid: row.kid.clone(),
                    reason: format!("{e}; start with the master key this store was created with (master.key in the data folder, or master_key)"),
                })?;
            let key = SigningKey::from_pkcs8(alg, &der).map_err(|e| KeyError::Key {
                kid: row.kid.clone(),
                reason: e.to_string(),
            })?;
            let schedule = KeySchedule {
                kid: row.kid.clone(),
                alg,
                publish_at: Millis(row.publish_at),
                activate_at: Millis(row.activate_at),
                retire_at: row.retire_at.map(Millis),
                expire_at: row.expire_at.map(Millis),
            };
            keys.insert(schedule.kid.clone(), Arc::new(key));
            schedules.push(schedule);
        }
        let mut published = Vec::new();
        let mut jwks = Vec::new();
        for schedule in &schedules {
            let Some(key) = keys.get(&schedule.kid) else {
                continue;
            };
            if schedule.is_published(now) {
                let vk = key.verifying_key().map_err(|e| KeyError::Key {
                    kid: key.kid().into(),
                    reason: e.to_string(),
                })?;
                jwks.push(vk.jwk().clone());
                published.push(vk);
            }
        }
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwks })).unwrap_or_default();
        let state = Arc::new(RingState {
            primary: self.primary(),
            schedules,
            keys,
            verifier: Verifier::new(
                published,
                self.issuer.clone(),
                self.audience.clone(),
                self.leeway_s,
            ),
            jwks: Bytes::from(jwks),
        });
        match self.state.write() {
            Ok(mut s) => *s = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
        Ok(())
    }

    fn primary(&self) -> JwsAlg {
        self.algs.first().copied().unwrap_or(JwsAlg::Es256)
    }

    /// Creates an access-token key published now that signs from `now + lead_s`; older keys of its
    /// algorithm retire when it activates.
    pub async fn create_key(&self, now: Millis, lead_s: i64) -> Result<SigningKeyRow, KeyError> {
        self.create_key_for(self.primary(), now, lead_s).await
    }

    /// [`Self::create_key`] for a key of `alg`.
    pub async fn create_key_for(
        &self,
        alg: JwsAlg,
        now: Millis,
        lead_s: i64,
    ) -> Result<SigningKeyRow, KeyError> {
        let (key, der) = SigningKey::generate(alg).map_err(|e| KeyError::Key {
            kid: String::new(),
            reason: e.to_string(),
        })?;
        let kid = key.kid().to_owned();
        let sealed = self
            .master
            .seal(&seal_context(&kid), der.0.expose_secret())
            .map_err(|e| KeyError::Key {
                kid: kid.clone(),
                reason: e.to_string(),
            })?;
        let jwk = key.verifying_key().map_err(|e| KeyError::Key {
            kid: kid.clone(),
            reason: e.to_string(),
        })?;
        let row = SigningKeyRow {
            kid,
            alg: alg.as_str().to_owned(),
            private_key: sealed,
            public_jwk: jwk.jwk().to_string(),
            created_at: now.0,
            publish_at: now.0,
            activate_at: now.plus_secs(lead_s).0,
            retire_at: None,
            expire_at: None,
        };
        self.store.add_signing_key(&row, self.overlap_ms).await?;
        self.reload().await?;
        Ok(row)
    }

    /// Rotates each algorithm's keys when its newest key has signed for `interval_s - lead_s`, so
    /// that its successor is published `lead_s` before the interval ends. Returns the new access-token
    /// key, if one was made.
    pub async fn rotate_if_due(
        &self,
        interval_s: i64,
        lead_s: i64,
    ) -> Result<Option<SigningKeyRow>, KeyError> {
        if interval_s <= 0 {
            return Ok(None);
        }
        let mut made = None;
        for alg in self.algs.clone() {
            let now = Millis::now();
            let newest = self
                .current()
                .schedules
                .iter()
                .filter(|s| s.alg == alg)
                .map(|s| s.activate_at)
                .max();
            let due = !matches!(newest, Some(activated) if now < activated.plus_secs(interval_s - lead_s));
            if due {
                let row = self.create_key_for(alg, now, lead_s).await?;
                if alg == self.primary() {
                    made = Some(row);
                }
            }
        }
        Ok(made)
    }

    /// Ends `kid` now, everywhere (it may be compromised): it stops signing and verifying, and when it
    /// was the one signing, a new key takes over at once (published now: there is no time for a
    /// lead). Returns the replacement, if one was made; `Ok(None)` with `false` when no such live key.
    pub async fn revoke(&self, kid: &str) -> Result<(bool, Option<SigningKeyRow>), KeyError> {
        let now = Millis::now();
        let state = self.current();
        let alg = state
            .schedules
            .iter()
            .find(|s| s.kid == kid)
            .map_or(self.primary(), |s| s.alg);
        let was_signing = state.signer_for(alg, now).is_some_and(|k| k.kid() == kid);
        drop(state);
        if !self.store.revoke_signing_key(kid, now).await? {
            return Ok((false, None));
        }
        self.reload().await?;
        let replacement = if was_signing || self.current().signer_for(alg, Millis::now()).is_none()
        {
            Some(self.create_key_for(alg, Millis::now(), 0).await?)
        } else {
            None
        };
        Ok((true, replacement))
    }

    /// Every key, newest first (for the admin listing and `signing-keys list`).
    pub async fn all(&self) -> Result<Vec<SigningKeyRow>, KeyError> {
        Ok(self.store.all_signing_keys().await?)
    }

    /// Signs a JWT of `typ` with the current key of `alg` (an ID token of a client that asked for
    /// the access-token algorithm).
    pub fn sign_with(
        &self,
        alg: JwsAlg,
        typ: &str,
        claims: &serde_json::Value,
    ) -> Result<String, KeyError> {
        let state = self.current();
        let key = state
            .signer_for(alg, Millis::now())
            .ok_or(KeyError::NoActiveKey)?;
        key.sign(typ, claims).map_err(|e: JwtError| KeyError::Key {
            kid: key.kid().into(),
            reason: e.to_string(),
        })
    }

    /// The algorithms ID tokens may be signed with: RS256 and the access-token algorithm.
    pub fn algs(&self) -> &[JwsAlg] {
        &self.algs
    }

    pub fn sign_access_token(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let state = self.current();
        let key = state.signer(Millis::now()).ok_or(KeyError::NoActiveKey)?;
        key.sign(portcullis_core::jwt::ACCESS_TOKEN_TYP, claims)
            .map_err(|e: JwtError| KeyError::Key {
                kid: key.kid().into(),
                reason: e.to_string(),
            })
    }
}
