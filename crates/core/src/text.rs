//! Unicode hygiene for what people type and other people read: email addresses and display names.
//!
//! Characters that render as nothing (Default_Ignorable_Code_Point, Unicode DerivedCoreProperties) or
//! that reorder the text around them (the bidirectional controls of UAX #9, also used in "Trojan
//! Source" attacks) let two strings look identical while comparing different, so `alice@x.com` and
//! `ali\u{200B}ce@x.com` would be two accounts that nobody can tell apart. They are refused, not
//! stripped: silently changing what a user typed is its own confusion. Mixing scripts within one word
//! (Latin `a` next to Cyrillic `а`) is refused for the same reason, following the "highly restrictive"
//! profile of UTS #39 §5.2.

use unicode_script::{Script, UnicodeScript};

/// Default_Ignorable_Code_Point (Unicode 15.1 DerivedCoreProperties.txt), as inclusive ranges. The
/// bidi controls (U+061C, U+200E–U+200F, U+202A–U+202E, U+2066–U+2069) are all inside it.
const DEFAULT_IGNORABLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

/// Renders as nothing, or reorders text: never allowed in an identifier or a display name.
pub fn is_invisible_or_bidi(c: char) -> bool {
    let c = u32::from(c);
    DEFAULT_IGNORABLE
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&c))
}

/// Characters that may not appear in a display name: control characters, invisible ones and bidi
/// controls.
pub fn is_forbidden_in_display(c: char) -> bool {
    c.is_control() || is_invisible_or_bidi(c)
}

/// The most characters of a display name (a user's, a key's), after trimming.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// `raw` trimmed, if that is a display name: 1 to [`MAX_DISPLAY_NAME_CHARS`] characters, none of them
/// control, invisible or text-direction characters.
pub fn display_name(raw: &str) -> Option<&str> {
    let name = raw.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_DISPLAY_NAME_CHARS
        && !name.chars().any(is_forbidden_in_display);
    ok.then_some(name)
}

/// [`display_name`] as a regular expression for an OpenAPI schema (ECMA-262 and Python read it the
/// same): at least one character that is not white space, none forbidden. The forbidden characters
/// outside the Basic Multilingual Plane (tags, a few musical and shorthand format controls) cannot be
/// written in a character class both dialects read, so the pattern lets them through and the server
/// still refuses them.
pub fn display_name_pattern() -> String {
    let mut class = String::from(r"\x00-\x1f\x7f-\x9f");
    for (lo, hi) in DEFAULT_IGNORABLE.iter().filter(|(_, hi)| *hi <= 0xFFFF) {
        class.push_str(&format!(r"\u{lo:04x}"));
        if hi != lo {
            class.push_str(&format!(r"-\u{hi:04x}"));
        }
    }
    format!(r"^[^{class}]*[^\s{class}][^{class}]*$")
}

/// Scripts that UTS #39's highly restrictive profile lets appear together with Latin and each other.
fn is_cjk(s: Script) -> bool {
    matches!(
        s,
        Script::Han | Script::Hiragana | Script::Katakana | Script::Bopomofo | Script::Hangul
    )
}

/// Does `word` use letters of one script only (allowing Latin with the CJK scripts, as Japanese,
/// Chinese and Korean writing does)? Digits and punctuation (`Common`, `Inherited`) belong to any.
pub fn is_single_script(word: &str) -> bool {
    let mut seen: Vec<Script> = Vec::new();
    for c in word.chars() {
        let s = c.script();
        if matches!(s, Script::Common | Script::Inherited | Script::Unknown) || seen.contains(&s) {
            continue;
        }
        seen.push(s);
    }
    seen.len() <= 1 || seen.iter().all(|s| *s == Script::Latin || is_cjk(*s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(display_name("  Ann  "), Some("Ann"));
        assert_eq!(display_name("   "), None);
        assert_eq!(
            display_name(&"x".repeat(200)),
            Some("x".repeat(200).as_str())
        );
        assert_eq!(display_name(&"x".repeat(201)), None);
        assert_eq!(display_name("a\u{202E}b"), None);
        assert_eq!(display_name("a\u{7}b"), None);
        assert_eq!(display_name("Zoë 🦀"), Some("Zoë 🦀"));
        let pattern = display_name_pattern();
        assert!(
            pattern.contains(r"\u202a-\u202e") && pattern.starts_with("^[^\\x00-\\x1f"),
            "{pattern}"
        );
        assert!(!pattern.contains("e0000"), "{pattern}");
    }

    #[test]
    fn invisible_and_bidi_characters_are_recognised() {
        for c in [
            '\u{200B}',
            '\u{200D}',
            '\u{200E}',
            '\u{202E}',
            '\u{2066}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{E0041}',
        ] {
            assert!(is_invisible_or_bidi(c), "{:04X}", u32::from(c));
        }
        for c in ['a', 'é', 'ß', '日', ' ', '-'] {
            assert!(!is_invisible_or_bidi(c), "{c}");
        }
        assert!(is_forbidden_in_display('\u{7}'));
    }

    #[test]
    fn mixed_scripts_within_a_word_are_noticed() {
        assert!(is_single_script("alice"));
        assert!(is_single_script("алиса"));
        assert!(is_single_script("山田taro"));
        assert!(is_single_script("user-42"));
        assert!(!is_single_script("аlice")); // Cyrillic а, then Latin
        assert!(!is_single_script("pαypal")); // Greek α
    }
}
