//! Frame header decode and encode (RFC 6455 §5.2).

use super::OpCode;
use crate::error::ProtocolError;

/// The longest possible header: 2 bytes + 8-byte length + 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// A decoded (or to-be-encoded) frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1: "per-message compressed" when permessage-deflate is negotiated.
    pub rsv1: bool,
    /// RSV2 (no extension here owns it).
    pub rsv2: bool,
    /// RSV3 (no extension here owns it).
    pub rsv3: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// A FIN frame header with no RSV bits and no mask.
    pub const fn new(opcode: OpCode, payload_len: u64) -> Self {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload_len,
        }
    }

    /// Decodes a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds too few bytes yet, or the header and the number of
    /// bytes it took. Checks only what the header alone decides: reserved opcodes, the 64-bit
    /// length's top bit, control frames that are fragmented or longer than 125 bytes. RSV bits,
    /// masking direction and sequencing are the decoder's business since they depend on the role
    /// and negotiated extensions.
    #[inline]
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let opcode = OpCode::from_u8(b0 & 0x0F).map_err(ProtocolError::ReservedOpcode)?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if len7 > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthTopBit);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// The encoded size of this header (minimal length form).
    #[inline]
    pub const fn encoded_len(&self) -> usize {
        let len = if self.payload_len < 126 {
            2
        } else if self.payload_len <= u16::MAX as u64 {
            4
        } else {
            10
        };
        if self.mask.is_some() {
            len + 4
        } else {
            len
        }
    }

    /// Encodes the header in minimal-length form into `out`, returning the bytes written.
    ///
    /// # Panics
    /// If `payload_len` has the top bit set (no such frame may be sent).
    #[inline]
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        assert!(self.payload_len >> 63 == 0, "payload length over 2^63");
        out[0] = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (u8::from(self.rsv2) << 5)
            | (u8::from(self.rsv3) << 4)
            | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
            2
        } else if self.payload_len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        pos
    }

    /// Encodes the header onto the end of `out`.
    #[inline]
    pub fn encode_into(&self, out: &mut bytes::BytesMut) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = self.encode(&mut buf);
        out.extend_from_slice(&buf[..n]);
    }
}
