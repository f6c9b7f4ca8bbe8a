//! Incremental UTF-8 validation (RFC 6455 §8.1) that fails at the first invalid byte.
//!
//! Text messages arrive in frames and frames arrive in pieces; a sequence may be split anywhere.
//! [`Utf8Validator`] carries at most three bytes of an unfinished sequence between calls and
//! reports an error as soon as the bytes seen so far can no longer be the prefix of valid UTF-8,
//! so a peer streaming garbage is cut off at once rather than at the end of its message.

use crate::error::ProtocolError;

/// Validates UTF-8 fed in arbitrary pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// Length of the sequence a (valid) leading byte starts.
#[inline]
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Forgets any unfinished sequence (start of a new message).
    #[inline]
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Whether the bytes so far end inside a multi-byte sequence.
    #[inline]
    pub fn is_incomplete(&self) -> bool {
        self.partial_len != 0
    }

    /// Validates the next piece. Fails as soon as the bytes seen cannot start valid UTF-8.
    #[inline]
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ProtocolError> {
        if self.partial_len != 0 {
            let have = usize::from(self.partial_len);
            let need = sequence_len(self.partial[0]) - have;
            let take = need.min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            let now = have + take;
            data = &data[take..];
            match core::str::from_utf8(&self.partial[..now]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix; `data` is exhausted since we took less than needed.
                    self.partial_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(ProtocolError::InvalidUtf8),
            }
        }
        match core::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(ProtocolError::InvalidUtf8),
                None => {
                    let tail = &data[e.valid_up_to()..];
                    self.partial[..tail.len()].copy_from_slice(tail);
                    self.partial_len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// Ends the message: an unfinished sequence is an error. Resets for the next message.
    #[inline]
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let incomplete = self.partial_len != 0;
        self.partial_len = 0;
        if incomplete {
            Err(ProtocolError::InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(data: &[u8]) -> bool {
        let mut v = Utf8Validator::new();
        v.feed(data).is_ok() && v.finish().is_ok()
    }

    const SAMPLES: &[&[u8]] = &[
        b"",
        b"hello",
        "κόσμε".as_bytes(),
        "\u{10FFFF}\u{800}\u{7FF}\u{FFFF}".as_bytes(),
        "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // surrogate
        b"\xf4\x90\x80\x80",                                               // > U+10FFFF
        b"\xc0\xaf",                                                       // overlong
        b"\xe0\x80\xaf",                                                   // overlong
        b"\xf0\x9f\x98",                                                   // truncated at end
        b"\x80",
        b"ab\xfe",
        b"\xed\x9f\xbf\xee\x80\x80",
    ];

    #[test]
    fn agrees_with_std_at_every_split_point() {
        for s in SAMPLES {
            let expect = core::str::from_utf8(s).is_ok();
            assert_eq!(whole(s), expect, "{s:?}");
            for split in 0..=s.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&s[..split]).is_ok()
                    && v.feed(&s[split..]).is_ok()
                    && v.finish().is_ok();
                assert_eq!(ok, expect, "{s:?} split {split}");
            }
            let mut v = Utf8Validator::new();
            let ok =
                s.iter().all(|b| v.feed(core::slice::from_ref(b)).is_ok()) && v.finish().is_ok();
            assert_eq!(ok, expect, "{s:?} byte by byte");
        }
    }

    #[test]
    fn fails_fast_at_the_first_invalid_byte() {
        // A valid start, then a byte that can never be continued validly: fails on that piece,
        // before any later data arrives.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert!(v.feed(b"\xce").is_ok()); // valid prefix so far
        assert!(v.feed(b"\xff").is_err());

        // Prefixes that are invalid without seeing more: E0 80 (overlong), ED A0 (surrogate),
        // F4 90 (> U+10FFFF), F5.
        for bad in [&b"\xe0\x80"[..], b"\xed\xa0", b"\xf4\x90", b"\xf5"] {
            let mut v = Utf8Validator::new();
            let first = v.feed(&bad[..1]);
            let second = if bad.len() > 1 {
                v.feed(&bad[1..])
            } else {
                first
            };
            assert!(first.is_err() || second.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn incomplete_sequence_at_end_is_an_error() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok\xe2\x82").is_ok());
        assert!(v.is_incomplete());
        assert_eq!(v.finish(), Err(ProtocolError::InvalidUtf8));
        // and the validator is reset afterwards
        assert!(v.feed(b"fine").is_ok());
        assert!(v.finish().is_ok());
    }
}
