//! Messages → frames (RFC 6455 §5.2–§5.5, RFC 7692 §7.2.1).

use bytes::{BufMut, Bytes, BytesMut};

use super::Role;
use crate::close::CloseFrame;
use crate::deflate::{Compressor, DeflateParams};
use crate::error::CloseCode;
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::apply_mask;

/// Where a client's masking keys come from. The crate has no RNG: the caller supplies one
/// (RFC 6455 §5.3 asks for keys an intermediary cannot predict).
pub trait MaskKeySource: Send {
    /// The key for the next frame.
    fn next_key(&mut self) -> [u8; 4];
}

impl<F: FnMut() -> [u8; 4] + Send> MaskKeySource for F {
    fn next_key(&mut self) -> [u8; 4] {
        self()
    }
}

/// Encodes messages into frames for one connection.
///
/// Data messages larger than the compression threshold are compressed when permessage-deflate
/// was negotiated; a client masks every frame with a key from its [`MaskKeySource`].
pub struct Encoder {
    role: Role,
    keys: Option<Box<dyn MaskKeySource>>,
    compressor: Option<Compressor>,
    threshold: usize,
    scratch: BytesMut,
}

impl core::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Encoder")
            .field("role", &self.role)
            .field("deflate", &self.compressor.is_some())
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl Encoder {
    /// A server encoder: frames are not masked.
    pub fn server() -> Self {
        Encoder {
            role: Role::Server,
            keys: None,
            compressor: None,
            threshold: usize::MAX,
            scratch: BytesMut::new(),
        }
    }

    /// A client encoder masking every frame with keys from `keys`.
    pub fn client(keys: impl MaskKeySource + 'static) -> Self {
        Encoder {
            role: Role::Client,
            keys: Some(Box::new(keys)),
            compressor: None,
            threshold: usize::MAX,
            scratch: BytesMut::new(),
        }
    }

    /// This encoder's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Switches on permessage-deflate with the negotiated parameters: data messages longer than
    /// `threshold` bytes are compressed at `level` (0–9) with our direction's window and context
    /// takeover.
    pub fn set_deflate(&mut self, params: &DeflateParams, level: u32, threshold: usize) {
        let (bits, no_takeover) = match self.role {
            Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
            ),
        };
        self.compressor = Some(Compressor::new(level, bits, no_takeover));
        self.threshold = threshold;
    }

    /// Keeps the compressor's state between messages even without context takeover (see
    /// [`Compressor::keep_state`]): for an encoder shared by many connections.
    pub fn keep_deflate_state(&mut self) {
        if let Some(c) = self.compressor.as_mut() {
            c.keep_state();
        }
    }

    /// Whether deflate state is allocated now (`false` without permessage-deflate).
    pub fn holds_deflate_state(&self) -> bool {
        self.compressor
            .as_ref()
            .is_some_and(Compressor::holds_state)
    }

    /// Whether a data message of `len` bytes would be compressed.
    pub fn compresses(&self, len: usize) -> bool {
        self.compressor.is_some() && len > self.threshold
    }

    /// Appends `payload` as one whole message (a single FIN frame) of type `opcode` to `out`.
    ///
    /// Text and binary messages above the threshold are compressed; control frames never are
    /// (their payload must be at most 125 bytes — longer ones are a caller bug and panic).
    pub fn encode(&mut self, opcode: OpCode, payload: &[u8], out: &mut BytesMut) {
        assert!(
            !opcode.is_control() || payload.len() <= 125,
            "control frame payload over 125 bytes"
        );
        assert!(opcode != OpCode::Continuation, "use encode_fragment");
        if !opcode.is_control() && self.compresses(payload.len()) {
            let mut scratch = core::mem::take(&mut self.scratch);
            scratch.clear();
            if let Some(c) = self.compressor.as_mut() {
                c.compress(payload, &mut scratch);
            }
            self.write_frame(true, true, opcode, &scratch, out);
            self.scratch = scratch;
        } else {
            self.write_frame(true, false, opcode, payload, out);
        }
    }

    /// Appends one frame of a fragmented message: `opcode` is Text/Binary for the first frame
    /// and Continuation for the rest; `fin` marks the last. Fragments are never compressed.
    pub fn encode_fragment(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        fin: bool,
        out: &mut BytesMut,
    ) {
        assert!(!opcode.is_control(), "control frames cannot be fragmented");
        self.write_frame(fin, false, opcode, payload, out);
    }

    /// Appends a close frame with `code` and `reason` (truncated to fit).
    pub fn encode_close(&mut self, code: CloseCode, reason: &str, out: &mut BytesMut) {
        let mut p = BytesMut::with_capacity(125);
        CloseFrame::write_payload(code, reason, &mut p);
        self.write_frame(true, false, OpCode::Close, &p, out);
    }

    /// Appends an empty close frame (no status code).
    pub fn encode_close_empty(&mut self, out: &mut BytesMut) {
        self.write_frame(true, false, OpCode::Close, &[], out);
    }

    fn write_frame(
        &mut self,
        fin: bool,
        rsv1: bool,
        opcode: OpCode,
        payload: &[u8],
        out: &mut BytesMut,
    ) {
        let mask = self.keys.as_mut().map(|k| k.next_key());
        let header = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut hbuf);
        out.reserve(hlen + payload.len());
        out.put_slice(&hbuf[..hlen]);
        let start = out.len();
        out.put_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut out[start..], key, 0);
        }
    }
}

/// A complete unmasked (server-to-client) frame in one `Bytes`: header and payload together,
/// ready to be shared by refcount among any number of recipients.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader::new(opcode, payload.len() as u64);
    let mut out = BytesMut::with_capacity(header.encoded_len() + payload.len());
    header.encode_into(&mut out);
    out.put_slice(payload);
    out.freeze()
}
