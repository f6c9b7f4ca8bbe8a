//! Frames: opcodes and headers (RFC 6455 §5.2).

mod header;
mod opcode;

pub use header::{FrameHeader, MAX_HEADER_LEN};
pub use opcode::OpCode;
