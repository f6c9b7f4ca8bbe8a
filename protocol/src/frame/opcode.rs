//! Frame opcodes (RFC 6455 §5.2).

/// A frame opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: text (UTF-8) message.
    Text,
    /// 0x2: binary message.
    Binary,
    /// 0x8: connection close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Parses the low nibble of the first header byte; `Err` carries a reserved opcode.
    pub const fn from_u8(v: u8) -> Result<OpCode, u8> {
        match v {
            0x0 => Ok(OpCode::Continuation),
            0x1 => Ok(OpCode::Text),
            0x2 => Ok(OpCode::Binary),
            0x8 => Ok(OpCode::Close),
            0x9 => Ok(OpCode::Ping),
            0xA => Ok(OpCode::Pong),
            other => Err(other),
        }
    }

    /// The opcode's wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong are control frames.
    pub const fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}
