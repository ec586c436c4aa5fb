//! Email addresses. We check shape, not deliverability: one `@`, a non-empty local part, a domain of
//! dot-separated labels, no whitespace or control characters, at most 254 bytes (RFC 5321 §4.5.3.1.3).
//!
//! Two addresses that a person cannot tell apart must not be two accounts, so before anything else the
//! address is put in Unicode normal form NFKC (fullwidth `ａ` and `＠` become `a` and `@`, `ﬁ` becomes
//! `fi`), and characters that render as nothing or reorder text, and words that mix scripts, are
//! refused (see [`crate::text`]). The domain goes through IDNA (UTS #46): `Bücher.example` and
//! `xn--bcher-kva.example` are one domain. The local part keeps its case for display, but uniqueness
//! and throttling are decided on [`Email::key`]: the local part case-folded (Unicode full case folding,
//! so `ß` and `ss` agree) and the domain in its ASCII form, because almost every real mail system
//! treats addresses that way and two accounts differing only in case are an account-takeover aid.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

use crate::text::{is_invisible_or_bidi, is_single_script};

/// A syntactically valid email address.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(into = "String")]
pub struct Email {
    address: String,
    local_len: usize,
    key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEmail {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than 254 bytes")]
    TooLong,
    #[error("email must contain exactly one @ with text on both sides")]
    Shape,
    #[error("email contains whitespace, control, invisible or text-direction characters")]
    BadCharacter,
    #[error(
        "email mixes letters of different scripts in one part (for example Latin and Cyrillic)"
    )]
    MixedScripts,
    #[error("email domain is not a valid host name")]
    BadDomain,
}

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(InvalidEmail::Empty);
        }
        // Bound the work before normalising: NFKC can grow a string, but not from nothing.
        if raw.len() > 4 * Self::MAX_LEN {
            return Err(InvalidEmail::TooLong);
        }
        let normal: String = raw.nfkc().collect();
        if normal.len() > Self::MAX_LEN {
            return Err(InvalidEmail::TooLong);
        }
        if normal
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible_or_bidi(c))
        {
            return Err(InvalidEmail::BadCharacter);
        }
        let (local, domain) = normal.split_once('@').ok_or(InvalidEmail::Shape)?;
        if local.is_empty() || domain.is_empty() || domain.contains('@') || local.len() > 64 {
            return Err(InvalidEmail::Shape);
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(InvalidEmail::Shape);
        }
        if local.chars().any(|c| {
            matches!(
                c,
                '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '\\' | '"'
            )
        }) {
            return Err(InvalidEmail::BadCharacter);
        }
        if !is_single_script(local) {
            return Err(InvalidEmail::MixedScripts);
        }
        let ascii = idna::domain_to_ascii(domain).map_err(|_| InvalidEmail::BadDomain)?;
        let labels_ok = ascii.split('.').count() >= 2
            && ascii.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return Err(InvalidEmail::BadDomain);
        }
        let (unicode, converted) = idna::domain_to_unicode(&ascii);
        if converted.is_err() {
            return Err(InvalidEmail::BadDomain);
        }
        if !unicode.split('.').all(is_single_script) {
            return Err(InvalidEmail::MixedScripts);
        }
        if local.len() + 1 + ascii.len() > Self::MAX_LEN {
            return Err(InvalidEmail::TooLong);
        }
        // NFKC(casefold(NFKC(x))): Unicode's recommended form for caseless matching of identifiers.
        let folded: String = caseless::default_case_fold_str(local).nfkc().collect();
        Ok(Self {
            local_len: local.len(),
            address: format!("{local}@{unicode}"),
            key: format!("{folded}@{ascii}"),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The part before the `@`, used by the password policy.
    pub fn local_part(&self) -> &str {
        self.address.get(..self.local_len).unwrap_or_default()
    }

    /// The form uniqueness and throttling are keyed on: case-folded local part, ASCII domain.
    pub fn key(&self) -> String {
        self.key.clone()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.address)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.address
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_addresses_parse_and_domains_are_lowercased() {
        let e = Email::parse(" Alice.Smith+tag@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "Alice.Smith+tag@example.com");
        assert_eq!(e.local_part(), "Alice.Smith+tag");
        assert_eq!(e.key(), "alice.smith+tag@example.com");
    }

    #[test]
    fn things_that_are_not_emails_are_refused() {
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "a@b@c.com",
            "a b@c.com",
            "alice@localhost",
            "alice@-x.com",
            "alice@x..com",
            ".a@x.com",
            "a..b@x.com",
            "a\u{0}@x.com",
            "<a>@x.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            Email::parse(&format!("{}@x.com", "a".repeat(300))),
            Err(InvalidEmail::TooLong)
        );
    }

    #[test]
    fn addresses_that_look_the_same_are_the_same_account() {
        let key = |raw: &str| Email::parse(raw).unwrap().key();
        let plain = key("alice@example.com");
        // Fullwidth letters and at sign, NFD vs NFC, case, ligatures, an IDNA domain in either form.
        assert_eq!(key("ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"), plain);
        assert_eq!(key("ALICE@EXAMPLE.COM"), plain);
        assert_eq!(key("jose\u{301}@example.com"), key("jos\u{e9}@example.com"));
        assert_eq!(key("ﬁ@example.com"), key("fi@example.com"));
        assert_eq!(key("strasse@example.com"), key("STRAẞE@example.com"));
        assert_eq!(key("a@Bücher.example"), key("a@xn--bcher-kva.example"));
        assert_eq!(
            Email::parse("a@xn--bcher-kva.example").unwrap().as_str(),
            "a@bücher.example"
        );
    }

    #[test]
    fn invisible_bidi_and_mixed_script_addresses_are_refused() {
        for (raw, why) in [
            ("ali\u{200B}ce@example.com", InvalidEmail::BadCharacter),
            ("alice\u{200D}@example.com", InvalidEmail::BadCharacter),
            ("\u{202E}ecila@example.com", InvalidEmail::BadCharacter),
            ("alice@exa\u{00AD}mple.com", InvalidEmail::BadCharacter),
            ("\u{430}lice@example.com", InvalidEmail::MixedScripts),
            ("alice@\u{435}xample.com", InvalidEmail::MixedScripts),
        ] {
            assert_eq!(Email::parse(raw), Err(why), "{raw:?}");
        }
        // One script throughout is a real, distinct address.
        assert!(Email::parse("\u{430}\u{43b}\u{438}\u{441}\u{430}@example.com").is_ok());
    }

    /// Address-shaped input: a local part and dot-separated labels drawn from ASCII, accented,
    /// fullwidth, Cyrillic and invisible characters, so that the parser's later checks are reached.
    fn address_like() -> impl Strategy<Value = String> {
        let local = prop_oneof![
            3 => "[a-zA-Z0-9+\\-]{1,12}",
            1 => "[a-zA-Z0-9._+\\-é\u{301}ａ-ｚＡ-Ｚ\u{430}-\u{44f}\u{200b}\u{202e}]{1,12}",
        ];
        let label = prop_oneof![
            3 => "[a-z0-9]{1,10}",
            1 => "[a-z0-9\\-äöü\u{430}-\u{44f}ａ-ｚ]{1,10}",
        ];
        (
            local,
            proptest::collection::vec(label, 1..4),
            "[a-z]{2,6}",
            prop_oneof![6 => Just("@"), 1 => Just("＠"), 1 => Just("@@"), 1 => Just("")],
        )
            .prop_map(|(local, labels, tld, at)| format!("{local}{at}{}.{tld}", labels.join(".")))
    }

    #[test]
    fn the_address_strategy_reaches_both_verdicts() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..400 {
            let raw = address_like().new_tree(&mut runner).unwrap().current();
            if Email::parse(&raw).is_ok() {
                ok += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            ok >= 40 && refused >= 40,
            "{ok} accepted, {refused} refused"
        );
    }

    proptest! {
        #[test]
        fn address_shaped_input_is_judged_and_accepted_input_round_trips(raw in address_like()) {
            if let Ok(e) = Email::parse(&raw) {
                prop_assert_eq!(Email::parse(e.as_str()).ok(), Some(e.clone()));
                prop_assert_eq!(Email::parse(&e.key()).map(|k| k.key()).ok(), Some(e.key()));
                prop_assert!(!e.as_str().chars().any(crate::text::is_invisible_or_bidi));
                prop_assert!(e.key().split('@').nth(1).is_some_and(str::is_ascii), "the key's domain is ASCII");
            }
        }

        #[test]
        fn parse_never_panics_and_accepted_input_round_trips(raw in ".{0,300}") {
            if let Ok(e) = Email::parse(&raw) {
                prop_assert_eq!(Email::parse(e.as_str()).ok(), Some(e.clone()));
                prop_assert!(e.as_str().len() <= Email::MAX_LEN);
            }
        }
    }
}
