//! Bytes as they arrive → messages (RFC 6455 §5.2–§5.6, RFC 7692 §6).

use bytes::{Buf, BytesMut};

use super::{Message, MessageView, Role};
use crate::close::CloseFrame;
use crate::deflate::{Decompressor, DeflateParams};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, OpCode};
use crate::mask::apply_mask;
use crate::utf8::Utf8Validator;

/// Limits applied while decoding. Exceeding any of them is a 1009 (message too big).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest single frame payload accepted (compressed size for compressed frames).
    pub max_frame_size: usize,
    /// Largest message accepted, after reassembly and after inflation.
    pub max_message_size: usize,
    /// Most frames one fragmented message may have.
    pub max_fragments: usize,
}

impl Default for DecoderConfig {
    /// 16 MiB frames and messages, 1024 fragments.
    fn default() -> Self {
        DecoderConfig {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameState {
    header: FrameHeader,
    /// Header bytes still at the front of the buffer (0 for a streamed frame, whose header is
    /// consumed as soon as it is decoded).
    header_len: usize,
    /// Payload bytes already unmasked (and UTF-8 checked where that applies); for a streamed
    /// frame, payload bytes already inflated and consumed.
    processed: usize,
    /// A frame of a compressed message: its payload is inflated as it arrives and consumed
    /// from the buffer, so the message limit is enforced on the output while the frame is
    /// still arriving (an inflate bomb is refused after one buffer of output past the limit,
    /// not after its whole compressed frame).
    streamed: bool,
}

/// A frame assembled straight from received slices ([`Decoder::decode_slice`]): an
/// unfragmented, uncompressed text or binary frame whose payload is unmasked into its own
/// buffer of the frame's size as its pieces arrive. The caller keeps it between calls (a
/// connection holds one only while such a frame is half-received; the decoder itself stays
/// idle, so a shared scratch decoder can go on serving other connections).
#[derive(Debug)]
pub struct SliceFrame {
    text: bool,
    key: Option<[u8; 4]>,
    /// The payload length; `buf` fills up to it.
    len: usize,
    buf: BytesMut,
    utf8: Utf8Validator,
}

impl SliceFrame {
    /// Takes what `input` holds of the frame: unmasks it in place, appends it to the frame's
    /// buffer, checks new text; hands out the message once it is whole (`self` is then spent:
    /// drop it). Consumed bytes are removed from the front of `input`.
    pub fn push(&mut self, input: &mut &mut [u8]) -> Result<Option<Message>, ProtocolError> {
        let have = self.buf.len();
        let take = (self.len - have).min(input.len());
        let piece = &mut input[..take];
        if let Some(key) = self.key {
            apply_mask(piece, key, have);
        }
        self.buf.extend_from_slice(piece);
        let checked = if self.text {
            self.utf8.feed(piece)
        } else {
            Ok(())
        };
        advance(input, take);
        checked?;
        if self.buf.len() < self.len {
            return Ok(None);
        }
        let payload = core::mem::take(&mut self.buf);
        Ok(Some(if self.text {
            self.utf8.finish()?;
            Message::Text(payload.freeze())
        } else {
            Message::Binary(payload.freeze())
        }))
    }
}

/// A frame is assembled straight from slices only when its buffer (allocated at its header,
/// with the frame's size) is at most this large or at most twice what already arrived, so a
/// header alone never reserves more than this.
const SLICE_RESERVE_MAX: usize = 8 * 1024;

/// What [`Decoder::decode_slice`] made of the front of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum SliceDecoded {
    /// A whole message; its bytes were consumed from the input.
    Message(Message),
    /// All of the input went into the frame in progress; the rest must follow.
    Incomplete,
    /// Not for this path (a control frame, a fragment, a compressed or oversized frame, a
    /// header cut short, anything in error): nothing was consumed. Put the input into a read
    /// buffer and go on with [`Decoder::decode`].
    Buffer,
}

#[derive(Debug)]
struct Fragmented {
    opcode: OpCode,
    compressed: bool,
    buf: BytesMut,
    fragments: usize,
}

/// Decodes a stream of frames into messages.
///
/// Feed it the connection's read buffer: [`Decoder::decode`] consumes complete frames from the
/// front and leaves partial ones in place (already unmasked as far as they go, so nothing is
/// unmasked twice). The payload of an unfragmented, uncompressed message is split off the read
/// buffer without copying. Text is validated as it arrives, so an invalid byte fails the
/// connection before the rest of its message has been received.
///
/// Frames of a compressed message (permessage-deflate) are different: their header is consumed
/// at once and their payload is inflated as it arrives, then dropped from the buffer. The
/// message limit is checked against the inflated output as it is produced, so a bomb fails
/// after at most one inflate round past the limit, however large its compressed frame.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    config: DecoderConfig,
    frame: Option<FrameState>,
    fragmented: Option<Fragmented>,
    utf8: Utf8Validator,
    inflater: Option<Decompressor>,
    closed: bool,
}

impl Decoder {
    /// A decoder for `role` with the given limits and no extension.
    pub fn new(role: Role, config: DecoderConfig) -> Self {
        Decoder {
            role,
            config,
            frame: None,
            fragmented: None,
            utf8: Utf8Validator::new(),
            inflater: None,
            closed: false,
        }
    }

    /// Switches on permessage-deflate with the negotiated parameters: RSV1 becomes the
    /// "compressed" bit and compressed messages are inflated (the peer's direction's window and
    /// context takeover apply).
    pub fn set_deflate(&mut self, params: &DeflateParams) {
        let (bits, no_takeover) = match self.role {
            Role::Server => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
            ),
            Role::Client => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
            ),
        };
        self.inflater = Some(Decompressor::new(bits, no_takeover));
    }

    /// The limits in force.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Whether the decoder is between messages: no frame or fragmented message in progress and
    /// no close seen. An idle decoder without permessage-deflate holds no per-connection state,
    /// so one decoder can serve many connections in turn (the engine keeps one per core and
    /// gives a connection its own only while a message is in flight).
    pub fn is_idle(&self) -> bool {
        self.frame.is_none() && self.fragmented.is_none() && !self.closed && self.inflater.is_none()
    }

    /// Whether the decoder stands between frames: none is in progress (a message of several
    /// frames may be), and no close was seen. Bytes left in a read buffer are then the start
    /// of a header.
    pub fn between_frames(&self) -> bool {
        self.frame.is_none() && !self.closed
    }

    /// Whether a close frame has been decoded (later input is ignored).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Decodes the next message from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete message yet; call again after appending
    /// more bytes. Consumed bytes are removed from `buf`. After a close frame every further byte
    /// is discarded (RFC 6455 §5.5.1: nothing may follow a close).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        if let Some(whole) = self.decode_whole_frame(buf) {
            return whole.map(Some);
        }
        loop {
            if self.closed {
                buf.clear();
                return Ok(None);
            }
            let state = match self.frame {
                Some(s) => s,
                None => match FrameHeader::decode(buf)? {
                    None => return Ok(None),
                    Some((header, header_len)) => {
                        self.check_header(&header)?;
                        let streamed = self.starts_streamed(&header);
                        let s = FrameState {
                            header,
                            header_len: if streamed { 0 } else { header_len },
                            processed: 0,
                            streamed,
                        };
                        if streamed {
                            buf.advance(header_len);
                        }
                        self.frame = Some(s);
                        s
                    }
                },
            };
            let len = state.header.payload_len as usize;
            if state.streamed {
                let n = buf.len().min(len - state.processed);
                if n > 0 {
                    self.inflate_streamed(state, &mut buf[..n])?;
                    buf.advance(n);
                }
                if state.processed + n < len {
                    return Ok(None);
                }
                self.frame = None;
                if let Some(msg) = self.finish_streamed(state.header)? {
                    return Ok(Some(msg));
                }
                continue;
            }
            let available = (buf.len() - state.header_len).min(len);
            if available > state.processed {
                self.process(state, buf, available)?;
            }
            if available < len {
                return Ok(None);
            }
            self.frame = None;
            buf.advance(state.header_len);
            let payload = buf.split_to(len);
            if let Some(msg) = self.complete_frame(state.header, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// The common case in one step: a whole, final, uncompressed text or binary frame at the
    /// front of `buf`, masked as this role expects and within the limits,
    /// while no other frame or message is in progress. Returns `None`, touching nothing, for
    /// anything else; the general path then decodes it (its errors included). What it accepts
    /// the general path accepts with the same message, and it refuses invalid text with the
    /// same error: checked byte for byte by `whole_frame_fast_path_matches_the_general_one`.
    #[inline]
    fn decode_whole_frame(&mut self, buf: &mut BytesMut) -> Option<Result<Message, ProtocolError>> {
        let (h, pos) = self.plain_frame_header(buf)?;
        if ((buf.len() - pos) as u64) < h.payload_len {
            return None;
        }
        let (opcode, len, key) = (h.opcode, h.payload_len as usize, h.mask);
        buf.advance(pos);
        let mut payload = buf.split_to(len);
        if let Some(key) = key {
            apply_mask(&mut payload, key, 0);
        }
        if opcode == OpCode::Text && core::str::from_utf8(&payload).is_err() {
            return Some(Err(ProtocolError::InvalidUtf8));
        }
        Some(Ok(data_message(opcode, payload)))
    }

    /// The header at the front of `input` if it starts a frame both one-step paths take: no
    /// other frame or message in progress, FIN, no reserved bit, text or binary, masked as this
    /// role expects, within the limits. `None` for anything else, a header cut short or in
    /// error included (the general path reports errors).
    #[inline]
    fn plain_frame_header(&self, input: &[u8]) -> Option<(FrameHeader, usize)> {
        if self.frame.is_some() || self.fragmented.is_some() || self.closed {
            return None;
        }
        // A cheap look at the first byte before the header is parsed.
        if !matches!(input.first(), Some(0x81 | 0x82)) {
            return None;
        }
        let (h, pos) = FrameHeader::decode(input).ok()??;
        let limit = self.config.max_frame_size.min(self.config.max_message_size) as u64;
        if h.mask.is_some() != (self.role == Role::Server) || h.payload_len > limit {
            return None;
        }
        Some((h, pos))
    }

    /// A whole plain frame (final, uncompressed text or binary within the limits) at the front
    /// of `input`, unmasked in place and consumed, as a view into `input`. `Ok(None)`: anything
    /// else, or a frame not wholly in `input` (nothing consumed). `Err(InvalidUtf8)`: a text
    /// frame that is not UTF-8 (consumed). The decoder's state is not touched: call it only
    /// between frames.
    #[inline(always)]
    pub(crate) fn decode_view<'a>(
        &self,
        input: &mut &'a mut [u8],
    ) -> Result<Option<MessageView<'a>>, ProtocolError> {
        let Some((h, pos)) = self.plain_frame_header(input) else {
            return Ok(None);
        };
        let end = pos + h.payload_len as usize;
        if end > input.len() {
            return Ok(None);
        }
        let (frame, rest) = core::mem::take(input).split_at_mut(end);
        *input = rest;
        let body = &mut frame[pos..];
        if let Some(key) = h.mask {
            apply_mask(body, key, 0);
        }
        let body: &'a [u8] = body;
        Ok(Some(if h.opcode == OpCode::Text {
            MessageView::Text(core::str::from_utf8(body).map_err(|_| ProtocolError::InvalidUtf8)?)
        } else {
            MessageView::Binary(body)
        }))
    }

    /// Decodes from the front of `input`, bytes just received, without a read buffer: the
    /// common case of unfragmented, uncompressed text and binary frames, each unmasked in
    /// place (where the bytes are still in cache) and copied once into a buffer of its size
    /// that becomes the message. A frame may arrive over several calls (its pieces are
    /// consumed as they come: [`SliceDecoded::Incomplete`]); consumed bytes are removed from
    /// the front of `input`, and their contents are unspecified afterwards.
    ///
    /// A frame that does not arrive whole is kept in `frame`, which the caller holds for the
    /// next call (this decoder stays between frames meanwhile); while `frame` is `Some`, pass
    /// the rest of that frame's bytes, here or to [`SliceFrame::push`], before anything else.
    ///
    /// Anything else is left to the buffered path, untouched ([`SliceDecoded::Buffer`]), which
    /// also reports every error except invalid text inside a frame already begun here (refused
    /// as soon as its bytes arrive, as [`Decoder::decode`] does). The two paths can be mixed on
    /// one stream: this path only starts a frame while no buffered one is in progress.
    pub fn decode_slice(
        &mut self,
        frame: &mut Option<SliceFrame>,
        input: &mut &mut [u8],
    ) -> Result<SliceDecoded, ProtocolError> {
        if let Some(f) = frame.as_mut() {
            let msg = f.push(input);
            if !matches!(msg, Ok(None)) {
                *frame = None;
            }
            return Ok(match msg? {
                Some(msg) => SliceDecoded::Message(msg),
                None => SliceDecoded::Incomplete,
            });
        }
        let Some((h, pos)) = self.plain_frame_header(input) else {
            return Ok(SliceDecoded::Buffer);
        };
        let len = h.payload_len as usize;
        let available = input.len() - pos;
        let text = h.opcode == OpCode::Text;
        if available >= len {
            let body = &mut input[pos..pos + len];
            if let Some(key) = h.mask {
                apply_mask(body, key, 0);
            }
            if text && core::str::from_utf8(body).is_err() {
                // The buffered path reports it, with what precedes it: masked again, the
                // input is as it came.
                if let Some(key) = h.mask {
                    apply_mask(body, key, 0);
                }
                return Ok(SliceDecoded::Buffer);
            }
            let payload = BytesMut::from(&*body);
            advance(input, pos + len);
            return Ok(SliceDecoded::Message(data_message(h.opcode, payload)));
        }
        if len > SLICE_RESERVE_MAX.max(available.saturating_mul(2)) {
            return Ok(SliceDecoded::Buffer);
        }
        advance(input, pos);
        let f = frame.insert(SliceFrame {
            text,
            key: h.mask,
            len,
            buf: BytesMut::with_capacity(len),
            utf8: Utf8Validator::new(),
        });
        // The header came with less than the whole payload, so the frame stays incomplete.
        if let Err(e) = f.push(input) {
            *frame = None;
            return Err(e);
        }
        Ok(SliceDecoded::Incomplete)
    }

    fn check_header(&mut self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv2 || h.rsv3 {
            return Err(ProtocolError::ReservedBits);
        }
        if h.rsv1 {
            if self.inflater.is_none() {
                return Err(ProtocolError::ReservedBits);
            }
            if h.opcode.is_control() || h.opcode == OpCode::Continuation {
                return Err(ProtocolError::CompressedContinuation);
            }
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.payload_len > self.config.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge);
        }
        match h.opcode {
            OpCode::Continuation => {
                let f = self
                    .fragmented
                    .as_mut()
                    .ok_or(ProtocolError::UnexpectedContinuation)?;
                f.fragments += 1;
                if f.fragments > self.config.max_fragments {
                    return Err(ProtocolError::TooManyFragments);
                }
                if !f.compressed
                    && f.buf.len() as u64 + h.payload_len > self.config.max_message_size as u64
                {
                    return Err(ProtocolError::MessageTooLarge);
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.fragmented.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if !h.rsv1 && h.payload_len > self.config.max_message_size as u64 {
                    return Err(ProtocolError::MessageTooLarge);
                }
                self.utf8.reset();
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {}
        }
        Ok(())
    }

    /// Unmasks the newly arrived payload bytes `processed..available` in place and validates
    /// them as text where the frame belongs to an uncompressed text message.
    fn process(
        &mut self,
        state: FrameState,
        buf: &mut BytesMut,
        available: usize,
    ) -> Result<(), ProtocolError> {
        let start = state.header_len + state.processed;
        let end = state.header_len + available;
        let new = &mut buf[start..end];
        if let Some(key) = state.header.mask {
            apply_mask(new, key, state.processed);
        }
        if self.is_plain_text(&state.header) {
            self.utf8.feed(new)?;
        }
        if let Some(f) = self.frame.as_mut() {
            f.processed = available;
        }
        Ok(())
    }

    fn is_plain_text(&self, h: &FrameHeader) -> bool {
        match h.opcode {
            OpCode::Text => !h.rsv1,
            OpCode::Continuation => self
                .fragmented
                .as_ref()
                .is_some_and(|f| f.opcode == OpCode::Text && !f.compressed),
            _ => false,
        }
    }

    fn complete_frame(
        &mut self,
        h: FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<Message>, ProtocolError> {
        match h.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload.freeze()))),
            OpCode::Pong => Ok(Some(Message::Pong(payload.freeze()))),
            OpCode::Close => {
                let frame = CloseFrame::parse(payload.freeze())?;
                self.closed = true;
                Ok(Some(Message::Close(frame)))
            }
            OpCode::Text | OpCode::Binary => {
                // Compressed frames are streamed (see `starts_streamed`); these are plain.
                if h.fin {
                    if h.opcode == OpCode::Text {
                        self.utf8.finish()?;
                    }
                    return Ok(Some(data_message(h.opcode, payload)));
                }
                self.fragmented = Some(Fragmented {
                    opcode: h.opcode,
                    compressed: false,
                    buf: payload,
                    fragments: 1,
                });
                Ok(None)
            }
            OpCode::Continuation => {
                let mut f = self
                    .fragmented
                    .take()
                    .ok_or(ProtocolError::UnexpectedContinuation)?;
                f.buf.extend_from_slice(&payload);
                if !h.fin {
                    self.fragmented = Some(f);
                    return Ok(None);
                }
                if f.opcode == OpCode::Text {
                    self.utf8.finish()?;
                }
                Ok(Some(data_message(f.opcode, f.buf)))
            }
        }
    }

    /// Whether a frame that just passed `check_header` belongs to a compressed message, and so
    /// is inflated as it arrives. The first frame of such a message opens its buffer here.
    fn starts_streamed(&mut self, h: &FrameHeader) -> bool {
        match h.opcode {
            OpCode::Text | OpCode::Binary if h.rsv1 => {
                self.fragmented = Some(Fragmented {
                    opcode: h.opcode,
                    compressed: true,
                    buf: BytesMut::new(),
                    fragments: 1,
                });
                true
            }
            OpCode::Continuation => self.fragmented.as_ref().is_some_and(|f| f.compressed),
            _ => false,
        }
    }

    /// Unmasks newly arrived payload bytes of a streamed frame and inflates them into the
    /// message's buffer, validating text as it comes out.
    fn inflate_streamed(
        &mut self,
        state: FrameState,
        input: &mut [u8],
    ) -> Result<(), ProtocolError> {
        if let Some(key) = state.header.mask {
            apply_mask(input, key, state.processed);
        }
        let max = self.config.max_message_size;
        let f = self
            .fragmented
            .as_mut()
            .ok_or(ProtocolError::UnexpectedContinuation)?;
        let inflater = self.inflater.as_mut().ok_or(ProtocolError::ReservedBits)?;
        let before = f.buf.len();
        let inflated = inflater.decompress_keeping(input, &mut f.buf, max);
        if f.opcode == OpCode::Text {
            // Text produced before an inflate error is checked first: the error reported is
            // the first in stream order, however the frame's bytes were split.
            self.utf8.feed(&f.buf[before..])?;
        }
        inflated?;
        if let Some(fs) = self.frame.as_mut() {
            fs.processed += input.len();
        }
        Ok(())
    }

    /// A streamed frame has all arrived: on the message's last frame, inflate the sync-flush
    /// tail and hand out the message.
    fn finish_streamed(&mut self, h: FrameHeader) -> Result<Option<Message>, ProtocolError> {
        if !h.fin {
            return Ok(None);
        }
        let mut f = self
            .fragmented
            .take()
            .ok_or(ProtocolError::UnexpectedContinuation)?;
        let inflater = self.inflater.as_mut().ok_or(ProtocolError::ReservedBits)?;
        let before = f.buf.len();
        let finished = inflater.finish_message_keeping(&mut f.buf, self.config.max_message_size);
        if f.opcode == OpCode::Text {
            self.utf8.feed(&f.buf[before..])?;
        }
        finished?;
        if f.opcode == OpCode::Text {
            self.utf8.finish()?;
        }
        Ok(Some(data_message(f.opcode, f.buf)))
    }
}

/// Drops the first `n` bytes of `input`.
#[inline]
fn advance(input: &mut &mut [u8], n: usize) {
    let rest = core::mem::take(input);
    *input = &mut rest[n..];
}

fn data_message(opcode: OpCode, payload: BytesMut) -> Message {
    if opcode == OpCode::Text {
        Message::Text(payload.freeze())
    } else {
        Message::Binary(payload.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::apply_mask_bytewise;

    /// One frame: `b0` as given, the length in its minimal form, or in the 16-bit (`form` 1)
    /// or 64-bit (`form` 2) form, masked with `key` when given.
    fn frame(b0: u8, payload: &[u8], key: Option<[u8; 4]>, form: u8) -> Vec<u8> {
        let m = if key.is_some() { 0x80 } else { 0 };
        let mut out = vec![b0];
        match form {
            0 if payload.len() < 126 => out.push(m | payload.len() as u8),
            0 | 1 => {
                out.push(m | 126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        let mut body = payload.to_vec();
        if let Some(k) = key {
            out.extend_from_slice(&k);
            apply_mask_bytewise(&mut body, k, 0);
        }
        out.extend_from_slice(&body);
        out
    }

    type Outcome = (Vec<Message>, Option<ProtocolError>, Vec<u8>);

    /// Decodes `wire` whole (the fast path takes every eligible frame) or one byte at a time
    /// (every frame arrives partial, so the general path decodes all of them).
    fn decode(role: Role, config: DecoderConfig, wire: &[u8], bytewise: bool) -> Outcome {
        let mut dec = Decoder::new(role, config);
        let mut buf = BytesMut::new();
        let mut msgs = Vec::new();
        let chunks: Vec<&[u8]> = if bytewise {
            wire.chunks(1).collect()
        } else {
            vec![wire]
        };
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(m)) => msgs.push(m),
                    Ok(None) => break,
                    // After an error the rest of the buffer is dropped by the caller.
                    Err(e) => return (msgs, Some(e), Vec::new()),
                }
            }
        }
        (msgs, None, buf.to_vec())
    }

    #[test]
    fn whole_frame_fast_path_matches_the_general_one() {
        let key = [0x12, 0x9a, 0x00, 0xff];
        let text: Vec<u8> = "héllo, wörld ".repeat(30).into_bytes();
        let payloads: Vec<Vec<u8>> = vec![
            vec![],
            b"x".to_vec(),
            text[..125].to_vec(),
            text[..126].to_vec(),
            text.clone(),
            (0..=255u8).cycle().take(5000).collect(),
        ];
        let small = DecoderConfig {
            max_frame_size: 200,
            max_message_size: 100,
            max_fragments: 4,
        };
        let mut cases = 0;
        for role in [Role::Server, Role::Client] {
            let mask = |right: bool| match (role, right) {
                (Role::Server, true) | (Role::Client, false) => Some(key),
                _ => None,
            };
            for config in [DecoderConfig::default(), small] {
                for p in &payloads {
                    for (b0, form, right_mask) in [
                        (0x81, 0, true),
                        (0x82, 0, true),
                        (0x82, 1, true),
                        (0x81, 2, true),
                        (0x81, 0, false),
                        (0x01, 0, true),
                        (0xC1, 0, true),
                    ] {
                        // The frame, then a ping and a complete text frame after it (what
                        // follows must decode the same too), then a partial frame.
                        let mut wire = frame(b0, p, mask(right_mask), form);
                        wire.extend(frame(0x89, b"p", mask(true), 0));
                        wire.extend(frame(0x81, "ok".as_bytes(), mask(true), 0));
                        wire.extend(&frame(0x82, b"partial", mask(true), 0)[..5]);
                        let whole = decode(role, config, &wire, false);
                        let bytewise = decode(role, config, &wire, true);
                        assert_eq!(whole, bytewise, "{role:?} b0 {b0:#x} len {}", p.len());
                        cases += 1;
                    }
                }
                // Invalid UTF-8 in a whole text frame: the same error both ways.
                let wire = frame(0x81, &[b'a', 0xff, b'b'], mask(true), 0);
                let whole = decode(role, config, &wire, false);
                assert_eq!(whole.1, Some(ProtocolError::InvalidUtf8));
                assert_eq!(whole, decode(role, config, &wire, true));
            }
        }
        assert_eq!(cases, 2 * 2 * 6 * 7);
    }
}
