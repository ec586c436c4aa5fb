//! DPoP (RFC 9449) at our edges: a proof checked per §4.3 by core, its `jti` remembered per key for
//! the proof window (the same replay cache as request signatures), and server nonces (§8) when
//! `oauth_dpop_nonce` asks for them. The token endpoint binds what it issues to the proof's key; our
//! own API, userinfo and forward auth check a bound token's proof against the request it came with.

use std::sync::Arc;

use portcullis_core::clock::Millis;
use portcullis_core::oauth::dpop::{self, DpopError, Expected, NonceKey};

use crate::signatures::{FirstUse, NonceCache};

/// How old a proof's `iat` may be (s); its `jti` is remembered this long (plus the skew). Proofs are
/// made per request, so a minute is plenty (RFC 9449 §11.1: "seconds or minutes"), and it bounds the
/// replay cache: with the default capacity (`signature_nonce_capacity`, 2,000,000) ~22,000 proofs/s
/// can be remembered for their whole window; beyond, requests get 503 rather than a forgotten `jti`.
pub const MAX_AGE_S: i64 = 60;
/// How far ahead of our clock a proof's `iat` may be (s).
pub const MAX_SKEW_S: i64 = 30;
/// The algorithms a proof may use (`dpop_signing_alg_values_supported`).
pub const ALGS: &[&str] = &["ES256", "RS256", "EdDSA"];
/// The DPoP challenge (RFC 9449 §7.1), beside Bearer's for a bound token presented as Bearer.
pub const CHALLENGE: &str = "DPoP algs=\"ES256 RS256 EdDSA\"";
/// The challenge of a refused proof.
pub const INVALID_CHALLENGE: &str = "DPoP error=\"invalid_dpop_proof\", algs=\"ES256 RS256 EdDSA\"";

/// Why a proof was refused: `invalid_dpop_proof`, or `use_dpop_nonce` with the nonce to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Invalid(&'static str),
    UseNonce(String),
    /// The replay cache is full or unreachable.
    Unavailable,
}

impl Refused {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_dpop_proof",
            Self::UseNonce(_) => "use_dpop_nonce",
            Self::Unavailable => "temporarily_unavailable",
        }
    }

    pub fn description(&self) -> String {
        match self {
            Self::Invalid(why) => format!("the DPoP proof is not valid: {why}"),
            Self::UseNonce(_) => "send a DPoP proof with the nonce in the DPoP-Nonce header".into(),
            Self::Unavailable => "DPoP proofs cannot be checked right now; try again".into(),
        }
    }

    /// The `DPoP-Nonce` to send with the refusal.
    pub fn nonce(&self) -> Option<&str> {
        match self {
            Self::UseNonce(n) => Some(n),
            _ => None,
        }
    }
}

fn reason(e: &DpopError) -> &'static str {
    match e {
        DpopError::Malformed => "malformed",
        DpopError::WrongType => "wrong_typ",
        DpopError::UnsupportedAlg => "unsupported_alg",
        DpopError::BadKey(_) => "bad_jwk",
        DpopError::BadSignature => "bad_signature",
        DpopError::MissingClaim(_) => "missing_claim",
        DpopError::WrongMethod => "wrong_htm",
        DpopError::WrongUri => "wrong_htu",
        DpopError::Stale => "stale_iat",
        DpopError::WrongAth => "wrong_ath",
        DpopError::UseNonce => "use_nonce",
    }
}

pub struct Dpop {
    replay: Arc<dyn NonceCache>,
    nonces: NonceKey,
    require_nonce: bool,
}

impl Dpop {
    pub fn new(replay: Arc<dyn NonceCache>, master: &[u8], require_nonce: bool) -> Self {
        Self {
            replay,
            nonces: NonceKey::derive(master),
            require_nonce,
        }
    }

    pub fn requires_nonce(&self) -> bool {
        self.require_nonce
    }

    /// A nonce for the next proof, when the server requires them.
    pub fn fresh_nonce(&self) -> Option<String> {
        self.require_nonce
            .then(|| self.nonces.issue(Millis::now().as_secs()))
    }

    /// Checks the proof of a request to `method` `uri` (with `access_token` at a resource) and spends
    /// its `jti`; the proof key's thumbprint.
    pub async fn check(
        &self,
        proof: &str,
        method: &str,
        uri: &str,
        access_token: Option<&str>,
    ) -> Result<String, Refused> {
        let now = Millis::now().as_secs();
        let expected = Expected {
            method,
            uri,
            now,
            max_age_s: MAX_AGE_S,
            max_skew_s: MAX_SKEW_S,
            access_token,
            nonce: self.require_nonce.then_some(&self.nonces),
        };
        let p = match dpop::verify(proof, &expected) {
            Ok(p) => p,
            Err(DpopError::UseNonce) => {
                metrics::counter!("portcullis_dpop_proofs_total", "outcome" => "use_nonce")
                    .increment(1);
                return Err(Refused::UseNonce(self.nonces.issue(now)));
            }
            Err(e) => {
                let why = reason(&e);
                metrics::counter!("portcullis_dpop_proofs_total", "outcome" => why).increment(1);
                return Err(Refused::Invalid(why));
            }
        };
        let until = p.iat.max(now) + MAX_AGE_S + MAX_SKEW_S;
        match self
            .replay
            .first_use(&format!("dpop:{}", p.jkt), p.jti.as_bytes(), now, until)
            .await
        {
            FirstUse::Yes => Ok(p.jkt),
            FirstUse::Replayed => {
                metrics::counter!("portcullis_dpop_proofs_total", "outcome" => "replayed")
                    .increment(1);
                Err(Refused::Invalid("replayed_jti"))
            }
            FirstUse::Unavailable => Err(Refused::Unavailable),
        }
    }
}
