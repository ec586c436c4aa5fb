//! OpenID Connect Back-Channel Logout 1.0: when a browser session ends through RP-initiated logout,
//! every client holding a grant bound to it that registered a `backchannel_logout_uri` is sent a
//! logout token (`typ: logout+jwt`, signed with the ID-token key) by a background task, retried with
//! backoff, never on the logout's own request path and never blocking it.

use std::time::Duration;

use portcullis_core::clock::Millis;
use serde_json::json;

use crate::signing_keys::KeyRing;

/// Attempts per logout token, and the first wait between them (doubled each time).
pub const ATTEMPTS: u32 = 5;
pub const FIRST_WAIT: Duration = Duration::from_millis(500);
/// How long one POST may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The event of a logout token (Back-Channel Logout §2.4).
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

pub struct Backchannel {
    http: reqwest::Client,
}

impl Backchannel {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self { http }
    }

    /// The logout token for `client_id` about user `sub`'s session `sid`, signed as that client's
    /// ID tokens are (`alg`).
    pub fn token(
        keys: &KeyRing,
        alg: portcullis_core::jwt::JwsAlg,
        issuer: &str,
        client_id: &str,
        sub: &str,
        sid: &str,
    ) -> Option<String> {
        let now = Millis::now().as_secs();
        let claims = json!({
            "iss": issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + 120,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": sub,
            "sid": sid,
            "events": { EVENT: {} },
        });
        keys.sign_with(alg, "logout+jwt", &claims).ok()
    }

    /// Posts `logout_token` to `uri` in the background: up to [`ATTEMPTS`] times, waiting
    /// [`FIRST_WAIT`] doubled after each failure (a transport error or an answer other than 200 or
    /// 204). The outcome is counted and logged, with the client but never the token.
    pub fn send(&self, client_id: String, uri: String, logout_token: String) {
        let http = self.http.clone();
        tokio::spawn(async move {
            let mut wait = FIRST_WAIT;
            for attempt in 1..=ATTEMPTS {
                let sent = http
                    .post(&uri)
                    .form(&[("logout_token", logout_token.as_str())])
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 200 || r.status().as_u16() == 204 => {
                        metrics::counter!("portcullis_oauth_backchannel_logouts_total", "outcome" => "delivered").increment(1);
                        return;
                    }
                    Ok(r) => {
                        tracing::warn!(client = %client_id, status = r.status().as_u16(), attempt, "back-channel logout refused")
                    }
                    Err(e) => {
                        tracing::warn!(client = %client_id, error = %e.without_url(), attempt, "back-channel logout failed")
                    }
                }
                if attempt < ATTEMPTS {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
            metrics::counter!("portcullis_oauth_backchannel_logouts_total", "outcome" => "gave_up")
                .increment(1);
            tracing::error!(client = %client_id, "back-channel logout not delivered after {ATTEMPTS} attempts");
        });
    }
}

impl Default for Backchannel {
    fn default() -> Self {
        Self::new()
    }
}
