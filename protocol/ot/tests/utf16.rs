//! The UTF-16 helpers against the standard library's `encode_utf16`.

mod common;

use common::{config, text};
use edge_ws_ot::{byte_to_utf16, utf16_len, utf16_to_byte, OtError};
use proptest::prelude::*;

#[test]
fn lengths() {
    for s in [
        "",
        "a",
        "abc",
        "é",
        "e\u{301}",
        "😀",
        "👩‍👩‍👧",
        "中文",
        "𝄞",
        "🇫🇷",
        "\u{10FFFF}",
        "\u{FFFF}",
    ] {
        assert_eq!(utf16_len(s), s.encode_utf16().count(), "{s:?}");
    }
    assert_eq!(utf16_len("😀"), 2);
    assert_eq!(utf16_len("👩‍👩‍👧"), 8);
    assert_eq!(utf16_len(&"ab😀".repeat(1000)), 4000);
}

#[test]
fn conversions() {
    let s = "a😀é中x";
    // units: a=0, 😀=1..3, é=3, 中=4, x=5, end=6; bytes: 0, 1, 5, 7, 10, 11
    let pairs = [(0, 0), (1, 1), (3, 5), (4, 7), (5, 10), (6, 11)];
    for (unit, byte) in pairs {
        assert_eq!(utf16_to_byte(s, unit), Ok(byte), "unit {unit}");
        assert_eq!(byte_to_utf16(s, byte), Some(unit), "byte {byte}");
    }
    assert_eq!(
        utf16_to_byte(s, 2),
        Err(OtError::SplitsSurrogatePair { position: 2 })
    );
    assert_eq!(
        utf16_to_byte(s, 7),
        Err(OtError::PositionOutOfBounds {
            position: 7,
            len: 6
        })
    );
    assert_eq!(byte_to_utf16(s, 2), None);
    assert_eq!(byte_to_utf16(s, 12), None);
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn agree_with_std(s in text(40)) {
        prop_assert_eq!(utf16_len(&s), s.encode_utf16().count());
        let mut unit = 0;
        for (byte, c) in s.char_indices() {
            prop_assert_eq!(utf16_to_byte(&s, unit), Ok(byte));
            prop_assert_eq!(byte_to_utf16(&s, byte), Some(unit));
            if c.len_utf16() == 2 {
                prop_assert_eq!(
                    utf16_to_byte(&s, unit + 1),
                    Err(OtError::SplitsSurrogatePair { position: unit + 1 })
                );
            }
            unit += c.len_utf16();
        }
        prop_assert_eq!(utf16_to_byte(&s, unit), Ok(s.len()));
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Long strings: the 64-, 16- and 128-byte blocks of the fast paths, with blocks ending in
    /// the middle of characters.
    #[test]
    fn agree_with_std_on_long_strings(s in text(500)) {
        prop_assert_eq!(utf16_len(&s), s.encode_utf16().count());
        let mut unit = 0;
        for (byte, c) in s.char_indices() {
            prop_assert_eq!(utf16_to_byte(&s, unit), Ok(byte));
            if c.len_utf16() == 2 {
                prop_assert_eq!(
                    utf16_to_byte(&s, unit + 1),
                    Err(OtError::SplitsSurrogatePair { position: unit + 1 })
                );
            }
            unit += c.len_utf16();
        }
        prop_assert_eq!(
            utf16_to_byte(&s, unit + 1),
            Err(OtError::PositionOutOfBounds { position: unit + 1, len: unit })
        );
    }
}
