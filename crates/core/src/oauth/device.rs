//! The device authorization grant's rules with no I/O (RFC 8628): user codes, and the `slow_down`
//! step (the polling rule itself is one conditional `UPDATE` in the store, which records each poll).
//!
//! A user code is what a person reads off a television and types on a phone, so (§6.1) it comes from
//! 20 consonants — no vowels, so no words; no digits, so no 0/O or 1/I — 8 of them (34.6 bits), shown
//! as `XXXX-XXXX` and accepted in any case, with or without the dash or spaces. It is looked up by its
//! SHA-256, and guessing is throttled by the caller: with 34.6 bits and codes alive 10 minutes, even
//! 10,000 live codes leave an attacker ~1 in 2.5 million per guess.

use crate::secrets::{RandomUnavailable, TokenHash, fill_random};

/// The alphabet of user codes (RFC 8628 §6.1's example).
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Characters in a user code.
pub const USER_CODE_LEN: usize = 8;
/// What `slow_down` adds to the interval (§3.5), for a client that polls sooner than its interval.
pub const SLOW_DOWN_S: i64 = 5;

/// A user code in canonical form: 8 characters of [`USER_CODE_ALPHABET`].
#[derive(Clone, PartialEq, Eq)]
pub struct UserCode(String);

impl std::fmt::Debug for UserCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserCode([redacted])")
    }
}

impl UserCode {
    /// A fresh code, each character uniform over the alphabet (bytes of 240 and up are drawn again,
    /// so that no character is likelier than another).
    pub fn generate() -> Result<Self, RandomUnavailable> {
        let mut code = String::with_capacity(USER_CODE_LEN);
        let mut pool = [0u8; 32];
        while code.len() < USER_CODE_LEN {
            fill_random(&mut pool)?;
            for b in pool {
                if code.len() == USER_CODE_LEN {
                    break;
                }
                if b < 240
                    && let Some(c) =
                        USER_CODE_ALPHABET.get(usize::from(b) % USER_CODE_ALPHABET.len())
                {
                    code.push(char::from(*c));
                }
            }
        }
        Ok(Self(code))
    }

    /// What a person typed: any case, dashes and spaces ignored; `None` unless it is 8 characters of
    /// the alphabet.
    pub fn parse(typed: &str) -> Option<Self> {
        if typed.len() > 32 {
            return None;
        }
        let code: String = typed
            .chars()
            .filter(|c| !matches!(c, '-' | ' ' | '\u{2010}'..='\u{2015}'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
            .then_some(Self(code))
    }

    /// `XXXX-XXXX`, for people.
    pub fn display(&self) -> String {
        let (a, b) = self.0.split_at(USER_CODE_LEN / 2);
        format!("{a}-{b}")
    }

    /// The canonical form, for `verification_uri_complete`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.0.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_are_eight_consonants_shown_in_two_halves() {
        let code = UserCode::generate().unwrap();
        assert_eq!(code.as_str().len(), 8);
        assert!(
            code.as_str()
                .bytes()
                .all(|b| USER_CODE_ALPHABET.contains(&b))
        );
        let shown = code.display();
        assert_eq!(shown.len(), 9);
        assert_eq!(&shown[4..5], "-");
        assert_eq!(UserCode::parse(&shown), Some(code.clone()));
        assert_ne!(UserCode::generate().unwrap(), code);
    }

    #[test]
    fn what_people_type_is_read_kindly_and_nothing_else() {
        let code = UserCode::parse("WDJB-MJHT").unwrap();
        for typed in ["wdjb-mjht", "WDJBMJHT", " wdjb mjht ", "Wdjb\u{2013}Mjht"] {
            assert_eq!(UserCode::parse(typed), Some(code.clone()), "{typed}");
        }
        for bad in [
            "",
            "WDJB-MJH",
            "WDJB-MJHTX",
            "WDJB-MJH0",
            "AEIO-UAEI",
            "WDJB_MJHT",
            &"B".repeat(40),
        ] {
            assert_eq!(UserCode::parse(bad), None, "{bad}");
        }
        assert_eq!(format!("{code:?}"), "UserCode([redacted])");
    }

    #[test]
    fn every_character_is_equally_likely() {
        let mut counts = [0u32; 20];
        for _ in 0..2_000 {
            for b in UserCode::generate().unwrap().as_str().bytes() {
                let i = USER_CODE_ALPHABET.iter().position(|c| *c == b).unwrap();
                counts[i] += 1;
            }
        }
        // 16,000 draws, 800 expected per character: ±25% is over 8 standard deviations.
        assert!(
            counts.iter().all(|n| (600..=1000).contains(n)),
            "{counts:?}"
        );
    }

    proptest! {
        #[test]
        fn any_typed_text_is_answered(typed in "\\PC{0,40}") {
            if let Some(code) = UserCode::parse(&typed) {
                prop_assert_eq!(UserCode::parse(&code.display()), Some(code));
            }
        }
    }
}
