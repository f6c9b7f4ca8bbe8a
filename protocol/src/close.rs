//! Close frame payloads (RFC 6455 §5.5.1, §7.4).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{CloseCode, ProtocolError};

/// The longest reason that fits a control frame next to the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

/// A close frame's status code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, valid UTF-8 (checked on parse), at most 123 bytes.
    pub reason: Bytes,
}

impl CloseFrame {
    /// Parses a close payload: empty (no code), or a code that may be sent on the wire followed
    /// by a UTF-8 reason.
    pub fn parse(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ProtocolError::CloseOneByte),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = payload.slice(2..);
                if core::str::from_utf8(&reason).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }

    /// The reason as text (validated when parsed; lossy for hand-built frames).
    pub fn reason_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.reason)
    }

    /// Writes a close payload for `code` and `reason` onto `out`, truncating the reason at a
    /// character boundary so that it fits a control frame.
    pub fn write_payload(code: CloseCode, reason: &str, out: &mut BytesMut) {
        out.put_u16(code.0);
        out.extend_from_slice(truncate_reason(reason).as_bytes());
    }
}

/// `reason` cut at a character boundary to at most [`MAX_REASON_LEN`] bytes.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_payloads() {
        assert_eq!(CloseFrame::parse(Bytes::new()), Ok(None));
        let f = CloseFrame::parse(Bytes::from_static(b"\x03\xe8bye"))
            .unwrap()
            .unwrap();
        assert_eq!(f.code, CloseCode::NORMAL);
        assert_eq!(f.reason_str(), "bye");
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            let p = Bytes::copy_from_slice(&code.to_be_bytes());
            assert_eq!(CloseFrame::parse(p).unwrap().unwrap().code.0, code);
        }
    }

    #[test]
    fn rejects_bad_payloads_with_the_right_error() {
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(b"\x03")),
            Err(ProtocolError::CloseOneByte)
        );
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let p = Bytes::copy_from_slice(&code.to_be_bytes());
            assert_eq!(
                CloseFrame::parse(p),
                Err(ProtocolError::InvalidCloseCode(code)),
                "{code}"
            );
        }
        let err = CloseFrame::parse(Bytes::from_static(b"\x03\xe8\xff")).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        assert_eq!(err.close_code(), CloseCode::INVALID_DATA);
    }

    #[test]
    fn long_reasons_are_truncated_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = BytesMut::new();
        CloseFrame::write_payload(CloseCode::GOING_AWAY, &reason, &mut out);
        assert!(out.len() <= 125);
        let parsed = CloseFrame::parse(out.freeze()).unwrap().unwrap();
        assert_eq!(parsed.reason.len(), 122);
        assert_eq!(parsed.code, CloseCode::GOING_AWAY);
    }
}
