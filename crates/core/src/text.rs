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
