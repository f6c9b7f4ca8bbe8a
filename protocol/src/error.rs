//! Protocol errors and the close codes they map to (RFC 6455 §7.4).

use core::fmt;

/// A WebSocket close status code (RFC 6455 §7.4).
///
/// A thin newtype over `u16` so that application-defined codes (4000–4999) can be carried
/// without an enum variant per value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1003: data of a type the endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection closed abnormally (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: message data inconsistent with its type (invalid UTF-8 in a text message).
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// 1008: message violates the endpoint's policy.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: message too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: bad gateway.
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// 1015: TLS handshake failure (never sent on the wire).
    pub const TLS: CloseCode = CloseCode(1015);

    /// Whether this code may appear in a Close frame on the wire (RFC 6455 §7.4.1 and the
    /// IANA registry): 1000–1003, 1007–1014, and 3000–4999. 1004, 1005, 1006 and 1015 are
    /// reserved and must never be sent; everything below 1000 or at/above 5000 is invalid.
    pub const fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u16> for CloseCode {
    fn from(v: u16) -> Self {
        CloseCode(v)
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> u16 {
        c.0
    }
}

/// Everything the peer can get wrong on an established connection.
///
/// `Copy` and allocation-free: an error is a value to map to a close code, not a report.
/// Each variant maps to the close code the RFC asks for through [`ProtocolError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An opcode outside the defined set (3–7, 0xB–0xF).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RSV1/2/3 set without an extension that owns the bit.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// A control frame with FIN clear.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame payload longer than 125 bytes")]
    ControlTooLong,
    /// A 64-bit length with the most significant bit set.
    #[error("64-bit payload length with the top bit set")]
    LengthTopBit,
    /// A length written in a longer form than needed (only checked where strict mode asks).
    #[error("payload length not in minimal form")]
    NonMinimalLength,
    /// A continuation frame with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is still in progress.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// The server received an unmasked frame.
    #[error("client frame not masked")]
    UnmaskedFrame,
    /// The client received a masked frame.
    #[error("server frame masked")]
    MaskedFrame,
    /// A close frame with a 1-byte payload.
    #[error("close payload of one byte")]
    CloseOneByte,
    /// A close frame carrying a code that may not be sent on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// Text (or a close reason) that is not valid UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A single frame larger than the configured limit.
    #[error("frame larger than the configured limit")]
    FrameTooLarge,
    /// A message (after reassembly and inflation) larger than the configured limit.
    #[error("message larger than the configured limit")]
    MessageTooLarge,
    /// More fragments than the configured limit.
    #[error("too many fragments in one message")]
    TooManyFragments,
    /// RSV1 on a continuation or control frame (RFC 7692 §6.1).
    #[error("RSV1 set on a continuation or control frame")]
    CompressedContinuation,
    /// The compressed payload is not valid raw deflate data.
    #[error("invalid deflate data")]
    InvalidDeflate,
    /// Data arrived after the peer's close frame.
    #[error("frame after close")]
    FrameAfterClose,
}

impl ProtocolError {
    /// The close code to send when this error ends the connection.
    pub const fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_DATA,
            ProtocolError::FrameTooLarge
            | ProtocolError::MessageTooLarge
            | ProtocolError::TooManyFragments => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL,
        }
    }
}
