//! Known-device cookies (OWASP "Slow Down Online Guessing Attacks with Device Cookies").
//!
//! After a successful login the browser (or any client that keeps cookies) receives a cookie that
//! proves "this device has signed in to this account before". A later login to the same account that
//! presents it is throttled only by its own failures, so an attacker who exhausts an account's
//! allowance (or a shared IP's) locks out their own attempts, not the real user's device.
//!
//! The cookie is `<nonce>.<issued_ms>.<mac>`: 128 random bits naming the device, the time it was
//! issued, and `HMAC-SHA256(device key, nonce | issued | account key)`. The account key (the
//! normalised email) is not in the cookie, so the cookie reveals nothing; a cookie for one account
//! is worthless for another; nothing is stored server-side.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::clock::Millis;
use crate::secrets::{RandomUnavailable, fill_random};

const LABEL: &[u8] = b"portcullis device-cookie v1";
/// Longest cookie value we look at; anything longer is not ours.
const MAX_LEN: usize = 128;

/// The key device cookies are signed with, derived from the master key so that every node agrees.
pub struct DeviceKey(hmac::Key);

/// The device a valid cookie names (its nonce, base64url): what per-device throttling is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId(pub String);

impl DeviceKey {
    pub fn derive(master: &[u8]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, master);
        let derived = hmac::sign(&root, LABEL);
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// What the MAC covers: `nonce | issued | account key`.
    fn signed(nonce: &str, issued: &str, account_key: &str) -> Vec<u8> {
        [nonce.as_bytes(), issued.as_bytes(), account_key.as_bytes()].join(&b'|')
    }

    /// A new cookie value for `account_key`, issued `now`.
    pub fn issue(&self, account_key: &str, now: Millis) -> Result<String, RandomUnavailable> {
        let mut raw = [0u8; 16];
        fill_random(&mut raw)?;
        let nonce = B64.encode(raw);
        let issued = now.0.to_string();
        let mac = hmac::sign(&self.0, &Self::signed(&nonce, &issued, account_key));
        Ok(format!("{nonce}.{issued}.{}", B64.encode(mac.as_ref())))
    }

    /// The device named by `raw` if it is a cookie we issued for `account_key`, no older than
    /// `max_age_ms`. The MAC is compared in constant time.
    pub fn verify(
        &self,
        raw: &str,
        account_key: &str,
        now: Millis,
        max_age_ms: i64,
    ) -> Option<DeviceId> {
        if raw.len() > MAX_LEN {
            return None;
        }
        let mut parts = raw.split('.');
        let (Some(nonce), Some(issued), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let issued_ms: i64 = issued.parse().ok()?;
        if issued != issued_ms.to_string() || issued_ms > now.0 || now.0 - issued_ms > max_age_ms {
            return None;
        }
        let presented = B64.decode(mac).ok()?;
        hmac::verify(
            &self.0,
            &Self::signed(nonce, issued, account_key),
            &presented,
        )
        .ok()?;
        Some(DeviceId(nonce.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn a_cookie_names_its_device_for_its_account_only() {
        let key = DeviceKey::derive(&[7u8; 32]);
        let now = Millis(1_000 * DAY);
        let cookie = key.issue("alice@example.com", now).unwrap();
        let device = key.verify(&cookie, "alice@example.com", now, DAY).unwrap();
        assert_eq!(cookie.split('.').next(), Some(device.0.as_str()));
        assert_eq!(key.verify(&cookie, "bob@example.com", now, DAY), None);
        assert_eq!(
            key.verify(&cookie, "alice@example.com", now.plus_millis(DAY + 1), DAY),
            None
        );
        // Another master key, a changed nonce or time, a truncated MAC: all refused.
        let other = DeviceKey::derive(&[8u8; 32]);
        assert_eq!(other.verify(&cookie, "alice@example.com", now, DAY), None);
        let (nonce, rest) = cookie.split_once('.').unwrap();
        let first = if nonce.starts_with('A') { 'B' } else { 'A' };
        let flipped = format!("{first}{}.{rest}", &nonce[1..]);
        assert_ne!(flipped, cookie);
        assert_eq!(key.verify(&flipped, "alice@example.com", now, DAY), None);
        let (head, mac) = cookie.rsplit_once('.').unwrap();
        let (_, issued) = head.split_once('.').unwrap();
        let moved = format!("{nonce}.{}.{mac}", issued.parse::<i64>().unwrap() - 1);
        assert_eq!(key.verify(&moved, "alice@example.com", now, DAY), None);
        assert_eq!(
            key.verify(
                &format!("{head}.{}", &mac[..20]),
                "alice@example.com",
                now,
                DAY
            ),
            None
        );
    }

    proptest! {
        #[test]
        fn verify_never_panics_or_accepts_garbage(raw in ".{0,200}") {
            let key = DeviceKey::derive(&[1u8; 32]);
            prop_assert!(key.verify(&raw, "a@b.co", Millis(10 * DAY), DAY).is_none());
        }
    }
}
