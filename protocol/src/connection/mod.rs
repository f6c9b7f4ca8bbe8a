//! A sans-IO WebSocket connection: the close handshake, automatic pongs, heartbeat, idle and
//! close deadlines, on top of the [`Decoder`].
//!
//! [`Connection`] is the state one endpoint keeps once the upgrade is done, for either
//! [`Role`]. It owns no socket, no buffer, no clock and no random number generator, and it does
//! not encode data messages: the driver keeps the read buffer, encodes its own messages with an
//! [`Encoder`](crate::Encoder), and asks the connection for the control frames to write. Time
//! is a `u32` tick count the driver chooses (milliseconds, 100 ms ticks, …), passed in as `now`.
//!
//! It is built to be held by the hundred thousand: [`size_of::<Connection>()`](size_of) is
//! 40 bytes on 64-bit targets, its configuration is not stored in it (every call takes the
//! shared [`ConnectionConfig`]), nothing is queued in it (events are pulled one at a time from
//! the read buffer), and an idle connection without permessage-deflate owns no [`Decoder`]:
//! decoding borrows the driver's scratch decoder (one per thread), and the connection keeps one
//! of its own only while a message is half received. Rare state (a pong waiting to be written,
//! our close reason) lives in one box that exists only while needed.
//!
//! # Driving a connection
//!
//! Inputs are `handle_*`-style calls ([`Connection::poll_event`] consumes the read buffer,
//! [`Connection::handle_timeout`], [`Connection::close`],
//! [`Connection::handle_transport_closed`]); outputs are pulled
//! ([`Connection::poll_event`], [`Connection::poll_transmit`], [`Connection::poll_timeout`]).
//! A driver runs this loop:
//!
//! 1. **Bytes arrived**: append them to the connection's read buffer, then call
//!    [`poll_event`](Connection::poll_event) until it returns `Ok(None)`. `Ok(Some(event))` is a
//!    data message, a pong or the end of the connection; `Err(e)` is the peer's protocol error
//!    (count it by [`e.close_code()`](ProtocolError::close_code)): the close frame is already
//!    queued, keep calling — the next call reports [`Event::Closed`]. Pings, pongs to send,
//!    close replies and heartbeat bookkeeping are handled inside. A driver that owns its
//!    receive buffers can instead hand each receive to
//!    [`poll_event_from`](Connection::poll_event_from) (messages decoded straight from it), and
//!    try [`poll_view_from`](Connection::poll_view_from) before each call: a whole plain frame
//!    then comes out as a [`MessageView`] into the receive, with no allocation.
//! 2. **After any input** (1, 3, 4 or a [`close`](Connection::close)): call
//!    [`poll_transmit`](Connection::poll_transmit) until it returns `None` and write what it
//!    gives: an `urgent` frame (pong, ping) may go ahead of the data already queued, a close
//!    frame goes after it. Pass `control_slot_free = false` while an earlier urgent frame still
//!    waits in the socket queue; the connection then holds at most one pong (the newest ping's)
//!    and the driver calls `poll_transmit` again once the slot frees up.
//! 3. **Timers**: after any call, [`poll_timeout`](Connection::poll_timeout) is the next tick
//!    at which [`handle_timeout`](Connection::handle_timeout) must be called (or `None`). The
//!    action it returns says what happened; then do 2. Every action but
//!    [`Ping`](TimeoutAction::Ping) ends the connection: call `poll_event` once more (with the
//!    read buffer; the state is closed, so it only reports) for the [`Event::Closed`].
//! 4. **The end**: once [`state`](Connection::state) is [`State::Closed`] and the transmits are
//!    flushed, close TCP if `close_tcp` says so, or else (a client after a clean close) wait
//!    for the server to close it until the close timeout. On
//!    [`TimeoutAction::CloseTimeout`] abort the connection at once. When the transport ends
//!    otherwise (EOF, a read or write error) call
//!    [`handle_transport_closed`](Connection::handle_transport_closed); once the socket is
//!    gone the connection can be dropped.
//!
//! [`Event::Closed`] is reported exactly once per connection, whichever way it ended (provided
//! the driver reports the end of the transport, as in 4).
//!
//! ```
//! use bytes::BytesMut;
//! use edge_ws_protocol::connection::{Connection, ConnectionConfig, Event, State};
//! use edge_ws_protocol::{DecoderConfig, Encoder, Message, OpCode, Role};
//!
//! let cfg = ConnectionConfig {
//!     role: Role::Server,
//!     limits: DecoderConfig::default(),
//!     heartbeat_interval: Some(30),
//!     heartbeat_timeout: 10,
//!     idle_timeout: None,
//!     close_timeout: 5,
//! };
//! let mut scratch = cfg.decoder(); // one per thread, shared by all its connections
//! let mut conn = Connection::new(0);
//!
//! // A client's frames as they would arrive from the socket.
//! let mut client = Encoder::client(|| [1, 2, 3, 4]);
//! let mut rbuf = BytesMut::new();
//! client.encode(OpCode::Text, b"hello", &mut rbuf);
//! client.encode(OpCode::Ping, b"are you there", &mut rbuf);
//! client.encode_close(edge_ws_protocol::CloseCode::NORMAL, "bye", &mut rbuf);
//!
//! let now = 1;
//! let mut events = Vec::new();
//! loop {
//!     match conn.poll_event(&cfg, &mut scratch, &mut rbuf, now) {
//!         Ok(Some(event)) => events.push(event),
//!         Ok(None) => break,
//!         Err(e) => eprintln!("protocol error, closing with {}", e.close_code()),
//!     }
//! }
//! assert!(matches!(&events[0], Event::Message(Message::Text(t)) if &t[..] == b"hello"));
//! assert!(matches!(&events[1], Event::Ping)); // its pong waits in poll_transmit
//! assert!(matches!(&events[2], Event::Closed { code, .. } if code.0 == 1000));
//!
//! // The close came in before the pong could be written: only the close reply goes out.
//! let reply = conn.poll_transmit(&cfg, true, None).unwrap();
//! assert_eq!(&reply.bytes[..], &[0x88, 0x02, 0x03, 0xe8]);
//! assert!(conn.poll_transmit(&cfg, true, None).is_none());
//! // The server closes TCP first (RFC 6455 §7.1.1).
//! assert_eq!(conn.state(), State::Closed { close_tcp: true });
//! ```
//!
//! # Time
//!
//! Ticks are compared as plain `u32`s: wrap-around is not handled. Use ticks since the
//! driver started (at one tick per millisecond that lasts 49 days; the engine counts 100 ms
//! ticks). Deadlines saturate at `u32::MAX` rather than wrap.

use bytes::{Buf, Bytes, BytesMut};

use crate::close::{truncate_reason, CloseFrame};
use crate::codec::{
    Decoder, DecoderConfig, MaskKeySource, Message, MessageView, Role, SliceDecoded, SliceFrame,
};
use crate::deflate::DeflateParams;
use crate::error::{CloseCode, ProtocolError};
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::apply_mask;

#[doc(hidden)]
pub mod fuzzing;

/// 4002: the close code sent when the peer did not answer a heartbeat ping in time.
pub const CLOSE_HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4002);

/// 4003: the close code sent when nothing arrived for the idle timeout.
pub const CLOSE_IDLE_TIMEOUT: CloseCode = CloseCode(4003);

/// The longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What every connection of one kind shares; passed to each call rather than stored.
///
/// Durations are in the driver's ticks (see the [module docs](self#time)); `None` disables a
/// timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Which end this is: a server expects masked frames and closes TCP first, a client masks
    /// what it sends.
    pub role: Role,
    /// The decoder's limits (frame size, message size, fragments).
    pub limits: DecoderConfig,
    /// Send a ping (empty payload) after this long without receiving a byte.
    pub heartbeat_interval: Option<u32>,
    /// How long after a heartbeat ping a pong must arrive before the connection is closed with
    /// [`CLOSE_HEARTBEAT_TIMEOUT`] (only used when `heartbeat_interval` is set).
    pub heartbeat_timeout: u32,
    /// Close with [`CLOSE_IDLE_TIMEOUT`] after this long without receiving a byte.
    pub idle_timeout: Option<u32>,
    /// How long to wait for the peer's close reply after ours, and for the final flush after
    /// the handshake, before giving up ([`TimeoutAction::CloseTimeout`]).
    pub close_timeout: u32,
}

impl ConnectionConfig {
    /// A fresh decoder for this role and these limits: the scratch decoder that
    /// [`Connection::poll_event`] borrows (keep one per thread).
    pub fn decoder(&self) -> Decoder {
        Decoder::new(self.role, self.limits)
    }
}

/// Where a connection is in its lifetime. It only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Data flows both ways.
    Open,
    /// We sent a close frame and wait for the peer's (data from the peer is discarded, we send
    /// none).
    Closing,
    /// The close handshake is done, or the connection failed or timed out: nothing more is
    /// decoded, and nothing but a last queued close frame is transmitted. Once the transmits
    /// are flushed the driver closes TCP if `close_tcp`; otherwise (a client after a clean
    /// close handshake) it waits for the server to close TCP (RFC 6455 §7.1.1) until the close
    /// timeout.
    Closed {
        /// Whether this side closes the TCP connection: the server always, either side after
        /// a failure or a timeout.
        close_tcp: bool,
    },
}

/// Which side started the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This endpoint: [`Connection::close`], a protocol error of the peer's, or a timeout.
    Local,
    /// The peer sent the first close frame.
    Peer,
}

/// What [`Connection::poll_event`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete data message: only [`Message::Text`] (valid UTF-8) or [`Message::Binary`].
    Message(Message),
    /// A ping arrived and its pong waits in [`Connection::poll_transmit`]: a driver that can
    /// write it now should, so that every ping a reading peer sends gets its own pong. While
    /// the driver cannot, the pong stays held and a newer ping's replaces it.
    Ping,
    /// A pong arrived (it already counted as the heartbeat's answer).
    Pong(Bytes),
    /// The connection ended; reported once. See [`State::Closed`] for what to do with TCP.
    Closed {
        /// The status of the close that started the end: the peer's code when it closed first
        /// ([`CloseCode::NO_STATUS`] if its close had none), ours otherwise (the protocol
        /// error's code, a timeout's, or the one given to [`Connection::close`]).
        code: CloseCode,
        /// The reason that went with `code` (valid UTF-8, at most 123 bytes; may be empty).
        reason: Bytes,
        /// Who sent the first close frame.
        initiated_by: Side,
        /// Whether the close handshake completed: both close frames exchanged. `false` after a
        /// protocol error, a heartbeat or idle timeout, or a close timeout.
        clean: bool,
    },
}

/// What [`Connection::handle_timeout`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    /// The peer was silent for the heartbeat interval: a ping is queued (see
    /// [`Connection::poll_transmit`]).
    Ping,
    /// No pong came within the heartbeat timeout: a [`CLOSE_HEARTBEAT_TIMEOUT`] close frame is
    /// queued and the state is [`State::Closed`]. The peer is presumably not reading, so the
    /// driver may drop its unsent data before writing the close, then closes TCP.
    HeartbeatTimeout,
    /// Nothing arrived for the idle timeout: as for `HeartbeatTimeout`, with
    /// [`CLOSE_IDLE_TIMEOUT`].
    IdleTimeout,
    /// The close handshake, or the flush after it, took longer than the close timeout: give
    /// up and abort the TCP connection now. Nothing more is transmitted.
    CloseTimeout,
}

/// A control frame to write, from [`Connection::poll_transmit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The complete frame (masked in the client role).
    pub bytes: Bytes,
    /// [`OpCode::Pong`], [`OpCode::Ping`] or [`OpCode::Close`].
    pub opcode: OpCode,
    /// Pongs and pings may jump ahead of data frames already queued (after earlier urgent
    /// frames); a close frame is written after everything queued (RFC 6455 §5.5.1: nothing may
    /// follow it, and data queued before it is still delivered).
    pub urgent: bool,
}

// `Connection::flags`: the state in the low two bits, then one bit per fact.
const STATE_MASK: u16 = 0b11;
const OPEN: u16 = 0;
const CLOSING: u16 = 1;
const CLOSED: u16 = 2;
/// In `Closed`: this side closes TCP.
const CLOSE_TCP: u16 = 1 << 2;
/// Our close frame waits for `poll_transmit`.
const CLOSE_QUEUED: u16 = 1 << 3;
/// A heartbeat ping waits for `poll_transmit`.
const PING_QUEUED: u16 = 1 << 4;
/// A heartbeat ping went out at `timer` and no pong has come since.
const PING_OUT: u16 = 1 << 5;
/// We sent the first close frame.
const LOCAL: u16 = 1 << 6;
/// The close handshake completed.
const CLEAN: u16 = 1 << 7;
/// `Event::Closed` is still to be reported.
const EVENT_PENDING: u16 = 1 << 8;
/// permessage-deflate: the connection always owns its decoder.
const DEFLATE: u16 = 1 << 9;
/// The close timeout fired: no more deadlines.
const EXPIRED: u16 = 1 << 10;

/// One WebSocket connection's protocol state (see the [module docs](self) for how to drive it).
#[derive(Debug)]
pub struct Connection {
    /// Our own decoder: only while a message is in flight, or always with permessage-deflate.
    decoder: Option<Box<Decoder>>,
    /// Rare state: a held pong, our close reason.
    extra: Option<Box<Extra>>,
    /// Tick the last bytes arrived at.
    last_seen: u32,
    /// `Open`: tick the outstanding heartbeat ping was queued at (with `PING_OUT`).
    /// `Closing`/`Closed`: the close deadline.
    timer: u32,
    /// Bytes left in the read buffer by the last `poll_event`: more means new bytes arrived.
    buffered: u32,
    /// Pings whose pong was replaced by a newer ping's before it could be written.
    pongs_superseded: u32,
    /// The close code to report; 0 while none.
    close_code: u16,
    flags: u16,
}

/// What only some connections need, boxed so that the others pay a pointer.
#[derive(Debug, Default)]
struct Extra {
    /// The pong answering the most recent ping, waiting for a free control slot.
    pong: Option<HeldPong>,
    /// Our close frame's reason (valid UTF-8, at most 123 bytes).
    reason: Bytes,
    /// A frame half-received on the slice path ([`Connection::poll_event_from`]).
    slice: Option<SliceFrame>,
}

/// A ping payload copied out of the read buffer (so that holding it pins no read memory, and
/// replacing it allocates nothing).
#[derive(Debug, Clone, Copy)]
struct HeldPong {
    len: u8,
    payload: [u8; MAX_CONTROL_PAYLOAD],
}

impl HeldPong {
    fn payload(&self) -> &[u8] {
        &self.payload[..self.len as usize]
    }
}

impl Connection {
    /// A connection whose upgrade completed at tick `now` (the idle and heartbeat timers count
    /// from it).
    pub fn new(now: u32) -> Self {
        Connection {
            decoder: None,
            extra: None,
            last_seen: now,
            timer: 0,
            buffered: 0,
            pongs_superseded: 0,
            close_code: 0,
            flags: OPEN,
        }
    }

    /// Switches on permessage-deflate for the peer's messages with the negotiated parameters.
    /// The connection then owns its decoder (the inflater's context lives in it) and never
    /// borrows the scratch. Call it before the first [`poll_event`](Self::poll_event). Our own
    /// messages are compressed by the driver's [`Encoder`](crate::Encoder); control frames
    /// never are.
    pub fn set_deflate(&mut self, cfg: &ConnectionConfig, params: &DeflateParams) {
        if self.state_bits() == CLOSED {
            return;
        }
        self.decoder
            .get_or_insert_with(|| Box::new(cfg.decoder()))
            .set_deflate(params);
        self.flags |= DEFLATE;
    }

    /// Decodes the next event from the front of `buf`, the connection's read buffer; consumed
    /// bytes are removed from it.
    ///
    /// Control frames are handled here: a ping's pong is held for
    /// [`poll_transmit`](Self::poll_transmit) (at most one, the newest ping's), a pong clears
    /// the heartbeat and is reported as [`Event::Pong`], the peer's close is answered (its code
    /// echoed, or an empty close if it had none) and reported as [`Event::Closed`]. After our
    /// close, data messages are discarded. After a close frame nothing more is decoded: in
    /// [`State::Closed`] every call clears `buf` and returns `Ok(None)` (once the closed event
    /// was reported).
    ///
    /// A protocol error returns `Err` with the state [`State::Closed`]; unless we had sent a
    /// close already, one with the error's code and text is queued. The next call reports the
    /// [`Event::Closed`].
    ///
    /// Bytes count as activity for the idle and heartbeat timers, at `now`, when `buf` holds
    /// more than the previous call left in it.
    ///
    /// `scratch` is the driver's decoder for idle connections, made by
    /// [`ConnectionConfig::decoder`]: it is used when the connection owns none, and handed back
    /// idle. If it was left in the middle of a message, the connection takes it and puts a
    /// fresh one in its place; the connection gives its own up once the message is complete
    /// (unless permessage-deflate is on).
    #[must_use = "events carry the peer's messages and the end of the connection"]
    pub fn poll_event(
        &mut self,
        cfg: &ConnectionConfig,
        scratch: &mut Decoder,
        buf: &mut BytesMut,
        now: u32,
    ) -> Result<Option<Event>, ProtocolError> {
        if buf.len() > self.buffered as usize {
            self.last_seen = now;
        }
        let result = self.decode(cfg, scratch, buf, now);
        self.park_scratch(cfg, scratch);
        self.buffered = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        result
    }

    /// [`poll_event`](Self::poll_event) for bytes just received, `input`, that are not in the
    /// read buffer `buf` yet. While `buf` is empty, messages are decoded straight from `input`
    /// (each payload unmasked in place and copied once, into a buffer of its own:
    /// [`Decoder::decode_slice`]; consumed input is left unspecified), and
    /// only what that path does not take is appended to `buf` and decoded from there. A header
    /// the previous input cut short is completed from `input` the same way. Consumed bytes are
    /// removed from the front of `input`; call until `Ok(None)`, by when `input` is empty (all
    /// consumed or appended to `buf`).
    ///
    /// Both ways decode the same stream into the same events and errors
    /// (`tests/slice_decode.rs` checks it over split points), so a driver may call either.
    #[must_use = "events carry the peer's messages and the end of the connection"]
    pub fn poll_event_from(
        &mut self,
        cfg: &ConnectionConfig,
        scratch: &mut Decoder,
        buf: &mut BytesMut,
        input: &mut &mut [u8],
        now: u32,
    ) -> Result<Option<Event>, ProtocolError> {
        if !input.is_empty() {
            if let Some(result) = self.decode_from(cfg, scratch, buf, input, now) {
                self.park_scratch(cfg, scratch);
                self.buffered = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                return result;
            }
            buf.extend_from_slice(input);
            *input = &mut [];
        }
        let result = self.poll_event(cfg, scratch, buf, now);
        // The box the slice path keeps while the input lasts (for a next frame) goes once it
        // holds nothing.
        self.tidy_extra();
        result
    }

    /// The common case of [`poll_event_from`](Self::poll_event_from) with no allocation: a
    /// whole, plain text or binary frame (final, uncompressed, within the limits) at the front
    /// of `input`, while nothing is buffered (`buf`, the read buffer's bytes) or half-received,
    /// is unmasked in place, consumed
    /// and handed out as a [`MessageView`] borrowing `input`'s bytes. `None`: anything else
    /// (nothing consumed); go on with `poll_event_from`, which decodes the same stream into the
    /// same events. `Some(Err(_))`: a text frame that is not UTF-8, handled as there (the
    /// connection closes with 1007; the rest of `input` is discarded).
    ///
    /// The view is valid while the receive buffer is: a handler that keeps the message copies
    /// it ([`MessageView::to_message`]).
    #[inline(always)]
    pub fn poll_view_from<'a>(
        &mut self,
        cfg: &ConnectionConfig,
        scratch: &Decoder,
        buf: &[u8],
        input: &mut &'a mut [u8],
        now: u32,
    ) -> Option<Result<MessageView<'a>, ProtocolError>> {
        if !buf.is_empty() || !self.between_messages() {
            return None;
        }
        match scratch.decode_view(input) {
            Ok(None) => None,
            Ok(Some(view)) => {
                self.last_seen = now;
                Some(Ok(view))
            }
            Err(e) => {
                self.last_seen = now;
                self.fail(cfg, e, now);
                *input = &mut [];
                Some(Err(e))
            }
        }
    }

    /// Whether the receive just consumed left nothing to poll for: no event pending, open, no
    /// message half-decoded, nothing buffered (`buffered`: the read buffer holds bytes). When
    /// so, what [`poll_event_from`](Self::poll_event_from) with empty input would do is done
    /// here (the box kept for the slice path goes if it holds nothing) and it need not be
    /// called; when not, call it until `Ok(None)` as usual.
    #[inline]
    pub fn input_done(&mut self, buffered: bool) -> bool {
        if buffered || !self.between_messages() {
            return false;
        }
        self.tidy_extra();
        self.buffered = 0;
        true
    }

    /// Open, no event pending, no message half-decoded (by our own decoder or on the slice
    /// path): where a view may be taken, and where a receive may end without a poll.
    #[inline(always)]
    fn between_messages(&self) -> bool {
        self.flags & EVENT_PENDING == 0
            && self.state_bits() == OPEN
            && self.decoder.is_none()
            && self.extra.as_ref().is_none_or(|e| e.slice.is_none())
    }

    /// The slice path of [`poll_event_from`](Self::poll_event_from); `None`: it does not apply,
    /// nothing was consumed.
    fn decode_from(
        &mut self,
        cfg: &ConnectionConfig,
        scratch: &mut Decoder,
        buf: &mut BytesMut,
        input: &mut &mut [u8],
        now: u32,
    ) -> Option<Result<Option<Event>, ProtocolError>> {
        if self.flags & EVENT_PENDING != 0 || self.state_bits() != OPEN {
            return None;
        }
        self.own_or_clean_scratch(cfg, scratch);
        // The frame half-received by an earlier call, if any, lives in `extra`, and is worked
        // on there; a frame begun now goes to `extra` only if it stays incomplete. `extra` is
        // kept while the input lasts (the next frame may need it): the call that finds the
        // input empty frees it if it holds nothing.
        let mut fresh = None;
        let frame = match self.extra.as_deref_mut() {
            Some(e) => &mut e.slice,
            None => &mut fresh,
        };
        let decoder = match self.decoder.as_deref_mut() {
            Some(d) => d,
            None => &mut *scratch,
        };
        let decoded = if buf.is_empty() {
            decoder.decode_slice(frame, input)
        } else if buf.len() < MAX_HEADER_LEN && frame.is_none() && decoder.between_frames() {
            // A header cut short by the previous input: complete it in a copy of its start and
            // the first bytes of `input`, then go on from `input` alone.
            let held = buf.len();
            let more = input.len().min(MAX_HEADER_LEN);
            let mut head = [0u8; 2 * MAX_HEADER_LEN];
            head[..held].copy_from_slice(buf);
            head[held..held + more].copy_from_slice(&input[..more]);
            let mut rest = &mut head[..held + more];
            let decoded = decoder.decode_slice(frame, &mut rest);
            if matches!(decoded, Ok(SliceDecoded::Buffer)) {
                return None;
            }
            let used = held + more - rest.len();
            if used <= held {
                // A whole frame was waiting in `buf` (a paused connection's).
                buf.advance(used);
                decoded
            } else {
                buf.clear();
                let all = core::mem::take(input);
                *input = &mut all[used - held..];
                match decoded {
                    // The rest of the frame that began in `buf` may be in `input`.
                    Ok(SliceDecoded::Incomplete) if !input.is_empty() => {
                        decoder.decode_slice(frame, input)
                    }
                    other => other,
                }
            }
        } else {
            return None;
        };
        if let Some(f) = fresh {
            self.extra_mut().slice = Some(f);
        }
        self.last_seen = now;
        match decoded {
            Ok(SliceDecoded::Message(msg)) => Some(Ok(Some(Event::Message(msg)))),
            Ok(SliceDecoded::Incomplete) => Some(Ok(None)),
            Ok(SliceDecoded::Buffer) => None,
            Err(e) => {
                self.fail(cfg, e, now);
                *input = &mut [];
                buf.clear();
                Some(Err(e))
            }
        }
    }

    fn decode(
        &mut self,
        cfg: &ConnectionConfig,
        scratch: &mut Decoder,
        buf: &mut BytesMut,
        now: u32,
    ) -> Result<Option<Event>, ProtocolError> {
        if self.flags & EVENT_PENDING != 0 {
            self.flags &= !EVENT_PENDING;
            return Ok(Some(self.closed_event()));
        }
        if self.state_bits() == CLOSED {
            buf.clear();
            if let Some(e) = self.extra.as_mut() {
                e.slice = None;
            }
            self.tidy_extra();
            return Ok(None);
        }
        self.own_or_clean_scratch(cfg, scratch);
        loop {
            if let Some(f) = self.extra.as_mut().and_then(|e| e.slice.as_mut()) {
                // A frame begun on the slice path goes on from the buffer.
                let mut input: &mut [u8] = buf;
                let before = input.len();
                let r = f.push(&mut input);
                let used = before - input.len();
                buf.advance(used);
                if !matches!(r, Ok(None)) {
                    if let Some(e) = self.extra.as_mut() {
                        e.slice = None;
                    }
                    self.tidy_extra();
                }
                match r {
                    Ok(None) => return Ok(None),
                    Ok(Some(msg)) if self.state_bits() == OPEN => {
                        return Ok(Some(Event::Message(msg)));
                    }
                    // After our close, data is discarded.
                    Ok(Some(_)) => continue,
                    Err(e) => {
                        self.fail(cfg, e, now);
                        buf.clear();
                        return Err(e);
                    }
                }
            }
            let decoder = match self.decoder.as_deref_mut() {
                Some(d) => d,
                None => &mut *scratch,
            };
            let msg = match decoder.decode(buf) {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.fail(cfg, e, now);
                    buf.clear();
                    return Err(e);
                }
            };
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if self.state_bits() == OPEN {
                        return Ok(Some(Event::Message(msg)));
                    }
                    // After our close, data is discarded.
                }
                Message::Ping(payload) => {
                    if self.state_bits() == OPEN {
                        self.hold_pong(&payload);
                        return Ok(Some(Event::Ping));
                    }
                }
                Message::Pong(payload) => {
                    self.flags &= !PING_OUT;
                    return Ok(Some(Event::Pong(payload)));
                }
                Message::Close(frame) => {
                    buf.clear();
                    return Ok(Some(self.peer_closed(cfg, frame, now)));
                }
            }
        }
    }

    /// Before decoding with `scratch`: a connection without a decoder of its own needs it idle.
    /// Another connection's message in flight would corrupt this one, a driver bug (`poll_event`
    /// always hands the scratch back idle): start clean rather than corrupt the stream.
    fn own_or_clean_scratch(&self, cfg: &ConnectionConfig, scratch: &mut Decoder) {
        if self.decoder.is_none() && !scratch.is_idle() {
            debug_assert!(
                scratch.is_idle(),
                "the scratch decoder must be idle between calls"
            );
            *scratch = cfg.decoder();
        }
    }

    /// The decoder swap: a `scratch` left mid-message becomes the connection's own decoder and
    /// a fresh one (from `cfg`) takes its place, so the driver always keeps an idle scratch;
    /// the connection drops its own decoder once it is idle again (unless permessage-deflate
    /// is on) or the connection is closed. [`poll_event`](Self::poll_event) does this before
    /// every return, so a driver never needs to call it; calling it again changes nothing.
    pub fn park_scratch(&mut self, cfg: &ConnectionConfig, scratch: &mut Decoder) {
        let closed = self.state_bits() == CLOSED;
        if !scratch.is_idle() {
            let used = core::mem::replace(scratch, cfg.decoder());
            if !closed && self.decoder.is_none() && !used.is_closed() {
                self.decoder = Some(Box::new(used));
            }
        }
        let give_up = self
            .decoder
            .as_ref()
            .is_some_and(|d| closed || (self.flags & DEFLATE == 0 && d.is_idle()));
        if give_up {
            self.decoder = None;
        }
    }

    /// The next control frame to write, if any; call until `None` after every input.
    ///
    /// Pongs and heartbeat pings are `urgent` and only handed over when `control_slot_free`
    /// (no earlier urgent frame still waits in the driver's socket queue); meanwhile at most
    /// one pong is held, the newest ping's (RFC 6455 §5.5.3: only the most recent ping needs
    /// an answer), and a newer ping replaces it (counted in
    /// [`pongs_superseded`](Self::pongs_superseded)). Our close frame — a reply, a protocol
    /// error's, a timeout's or [`close`](Self::close)'s — is handed over whatever the slot, to
    /// be written after the data already queued; nothing ever follows it, and pongs and pings
    /// not yet handed over when the close is queued are dropped.
    ///
    /// `keys` masks the frames in the client role and is ignored in the server role (pass
    /// `None`).
    ///
    /// # Panics
    ///
    /// In the client role, when a frame is due and `keys` is `None` (clients must mask, RFC
    /// 6455 §5.3).
    #[must_use = "a control frame that is not written breaks the close handshake or the heartbeat"]
    pub fn poll_transmit(
        &mut self,
        cfg: &ConnectionConfig,
        control_slot_free: bool,
        keys: Option<&mut dyn MaskKeySource>,
    ) -> Option<Transmit> {
        if self.state_bits() == OPEN {
            if !control_slot_free {
                return None;
            }
            if let Some(pong) = self.take_pong() {
                return Some(Transmit {
                    bytes: control_frame(cfg.role, OpCode::Pong, pong.payload(), keys),
                    opcode: OpCode::Pong,
                    urgent: true,
                });
            }
            if self.flags & PING_QUEUED != 0 {
                self.flags &= !PING_QUEUED;
                return Some(Transmit {
                    bytes: control_frame(cfg.role, OpCode::Ping, &[], keys),
                    opcode: OpCode::Ping,
                    urgent: true,
                });
            }
            return None;
        }
        if self.flags & CLOSE_QUEUED == 0 {
            return None;
        }
        self.flags &= !CLOSE_QUEUED;
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let mut len = 0;
        let code = CloseCode(self.close_code);
        if code.is_valid_on_wire() {
            payload[..2].copy_from_slice(&code.0.to_be_bytes());
            let reason = self.extra.as_ref().map_or(&[][..], |e| &e.reason[..]);
            payload[2..2 + reason.len()].copy_from_slice(reason);
            len = 2 + reason.len();
        }
        Some(Transmit {
            bytes: control_frame(cfg.role, OpCode::Close, &payload[..len], keys),
            opcode: OpCode::Close,
            urgent: false,
        })
    }

    /// The tick at which [`handle_timeout`](Self::handle_timeout) is next due: the heartbeat
    /// ping, the heartbeat timeout or the idle timeout while open, the close deadline after;
    /// `None` when no timer runs. Ask again after every call that changes the connection.
    #[must_use = "a deadline that is not scheduled never fires"]
    pub fn poll_timeout(&self, cfg: &ConnectionConfig) -> Option<u32> {
        if self.flags & EXPIRED != 0 {
            return None;
        }
        if self.state_bits() != OPEN {
            return Some(self.timer);
        }
        let idle = cfg.idle_timeout.map(|t| self.last_seen.saturating_add(t));
        let heartbeat = self.heartbeat_deadline(cfg);
        match (idle, heartbeat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers due at `now` (at or after [`poll_timeout`](Self::poll_timeout)); returns
    /// what happened, `None` when nothing was due. Afterwards call
    /// [`poll_transmit`](Self::poll_transmit), and act on a
    /// [`CloseTimeout`](TimeoutAction::CloseTimeout) by aborting.
    #[must_use = "a close timeout means the driver must abort the connection"]
    pub fn handle_timeout(&mut self, cfg: &ConnectionConfig, now: u32) -> Option<TimeoutAction> {
        if self.flags & EXPIRED != 0 {
            return None;
        }
        if self.state_bits() != OPEN {
            if now < self.timer {
                return None;
            }
            self.flags |= EXPIRED | CLOSE_TCP;
            self.flags &= !CLOSE_QUEUED;
            if self.state_bits() == CLOSING {
                self.flags = (self.flags & !(STATE_MASK | CLEAN)) | CLOSED | EVENT_PENDING;
                self.decoder = None;
            }
            return Some(TimeoutAction::CloseTimeout);
        }
        if let Some(idle) = cfg.idle_timeout {
            if now >= self.last_seen.saturating_add(idle) {
                self.timeout_close(cfg, CLOSE_IDLE_TIMEOUT, now);
                return Some(TimeoutAction::IdleTimeout);
            }
        }
        let due = self.heartbeat_deadline(cfg).is_some_and(|d| now >= d);
        if !due {
            return None;
        }
        if self.flags & PING_OUT != 0 {
            self.timeout_close(cfg, CLOSE_HEARTBEAT_TIMEOUT, now);
            return Some(TimeoutAction::HeartbeatTimeout);
        }
        self.flags |= PING_OUT | PING_QUEUED;
        self.timer = now;
        Some(TimeoutAction::Ping)
    }

    /// Starts the close handshake: our close frame with `code` and `reason` (cut to 123 bytes
    /// at a character boundary) is queued for [`poll_transmit`](Self::poll_transmit), after the
    /// data already queued; the state becomes [`State::Closing`] until the peer's reply or the
    /// close timeout. A code that may not be sent on the wire (1005, 1006, 1015, out of range)
    /// sends a close without status, reported as [`CloseCode::NO_STATUS`]. Returns `false`,
    /// doing nothing, unless the connection is open.
    pub fn close(
        &mut self,
        cfg: &ConnectionConfig,
        code: CloseCode,
        reason: &str,
        now: u32,
    ) -> bool {
        if self.state_bits() != OPEN {
            return false;
        }
        self.drop_control();
        let code = if code.is_valid_on_wire() {
            code
        } else {
            CloseCode::NO_STATUS
        };
        self.close_code = code.0;
        let reason = truncate_reason(reason);
        if code != CloseCode::NO_STATUS && !reason.is_empty() {
            self.extra_mut().reason = Bytes::copy_from_slice(reason.as_bytes());
        }
        self.flags = (self.flags & !STATE_MASK) | CLOSING | LOCAL | CLOSE_QUEUED;
        self.timer = now.saturating_add(cfg.close_timeout);
        true
    }

    /// The transport ended (the peer closed TCP, or a read or write failed). Unless the
    /// connection was closed already, it is now [`State::Closed`] with nothing more to
    /// transmit and no timer, and the next [`poll_event`](Self::poll_event) reports
    /// [`Event::Closed`] (code [`CloseCode::ABNORMAL`] if no close frame had been sent or
    /// received, `clean: false`). After a close handshake this is the expected end and changes
    /// nothing but the timers.
    pub fn handle_transport_closed(&mut self) {
        self.drop_control();
        self.flags &= !CLOSE_QUEUED;
        self.flags |= EXPIRED;
        if self.state_bits() != CLOSED {
            self.flags = (self.flags & !(STATE_MASK | CLEAN)) | CLOSED | CLOSE_TCP | EVENT_PENDING;
            self.decoder = None;
        }
    }

    /// Whether data messages may be sent: only while [`State::Open`] (nothing may follow our
    /// close frame, RFC 6455 §5.5.1).
    pub fn can_send(&self) -> bool {
        self.state_bits() == OPEN
    }

    /// Whether the connection holds heap memory of its own beyond its fixed size: a decoder
    /// (mid-message, or permessage-deflate's), or the rare-state box (a held pong, our close
    /// reason, a half-received frame). An idle connection between frames holds none.
    pub fn holds_heap(&self) -> bool {
        self.decoder.is_some() || self.extra.is_some()
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        match self.state_bits() {
            OPEN => State::Open,
            CLOSING => State::Closing,
            _ => State::Closed {
                close_tcp: self.flags & CLOSE_TCP != 0,
            },
        }
    }

    /// The close code to report once the connection ends (see [`Event::Closed`]'s `code`);
    /// `None` while none was sent or received.
    pub fn close_code(&self) -> Option<CloseCode> {
        (self.close_code != 0).then_some(CloseCode(self.close_code))
    }

    /// How many pings had their pong replaced by a newer ping's before it could be written.
    pub fn pongs_superseded(&self) -> u32 {
        self.pongs_superseded
    }

    /// The payload of the pong waiting for a control slot, if one is held.
    pub fn held_pong(&self) -> Option<&[u8]> {
        self.extra.as_ref()?.pong.as_ref().map(HeldPong::payload)
    }

    /// Whether the connection owns a decoder (a message is in flight, or permessage-deflate is
    /// on); an idle uncompressed connection does not.
    pub fn owns_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// The tick the last bytes arrived at (the idle and heartbeat timers count from it).
    pub fn last_seen(&self) -> u32 {
        self.last_seen
    }

    fn state_bits(&self) -> u16 {
        self.flags & STATE_MASK
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Frees the box once it holds nothing.
    fn tidy_extra(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.pong.is_none() && e.reason.is_empty() && e.slice.is_none())
        {
            self.extra = None;
        }
    }

    fn hold_pong(&mut self, payload: &[u8]) {
        let len = payload.len().min(MAX_CONTROL_PAYLOAD);
        let extra = self.extra.get_or_insert_with(Box::default);
        let held = match extra.pong.as_mut() {
            Some(held) => {
                self.pongs_superseded = self.pongs_superseded.saturating_add(1);
                held
            }
            None => extra.pong.insert(HeldPong {
                len: 0,
                payload: [0; MAX_CONTROL_PAYLOAD],
            }),
        };
        held.payload[..len].copy_from_slice(&payload[..len]);
        held.len = len as u8;
    }

    fn take_pong(&mut self) -> Option<HeldPong> {
        let pong = self.extra.as_mut()?.pong.take();
        self.tidy_extra();
        pong
    }

    /// Leaving `Open`: pongs and pings not yet handed over are dropped.
    fn drop_control(&mut self) {
        self.flags &= !(PING_QUEUED | PING_OUT);
        if let Some(e) = self.extra.as_mut() {
            e.pong = None;
        }
        self.tidy_extra();
    }

    fn heartbeat_deadline(&self, cfg: &ConnectionConfig) -> Option<u32> {
        let interval = cfg.heartbeat_interval?;
        Some(if self.flags & PING_OUT != 0 {
            self.timer.saturating_add(cfg.heartbeat_timeout)
        } else {
            self.last_seen.saturating_add(interval)
        })
    }

    /// The peer's close frame arrived.
    fn peer_closed(
        &mut self,
        cfg: &ConnectionConfig,
        frame: Option<CloseFrame>,
        now: u32,
    ) -> Event {
        let was_open = self.state_bits() == OPEN;
        self.drop_control();
        let close_tcp = if cfg.role == Role::Server {
            CLOSE_TCP
        } else {
            0
        };
        self.flags = (self.flags & !STATE_MASK) | CLOSED | CLEAN | close_tcp;
        self.timer = now.saturating_add(cfg.close_timeout);
        self.decoder = None;
        if !was_open {
            // The reply to our close.
            return self.closed_event();
        }
        let (code, reason) = match frame {
            Some(f) => (f.code, f.reason),
            None => (CloseCode::NO_STATUS, Bytes::new()),
        };
        // The reply echoes the code with no reason; an empty close if there was no code.
        self.close_code = code.0;
        self.flags |= CLOSE_QUEUED;
        Event::Closed {
            code,
            reason,
            initiated_by: Side::Peer,
            clean: true,
        }
    }

    /// A protocol error: our close with the error's code (unless we sent one already), then
    /// the connection is over.
    fn fail(&mut self, cfg: &ConnectionConfig, err: ProtocolError, now: u32) {
        if self.state_bits() == OPEN {
            self.drop_control();
            self.close_code = err.close_code().0;
            let text = err.to_string();
            self.extra_mut().reason = Bytes::copy_from_slice(truncate_reason(&text).as_bytes());
            self.flags |= LOCAL | CLOSE_QUEUED;
        }
        self.end(cfg, now);
    }

    /// A heartbeat or idle timeout: our close, then the connection is over without waiting.
    fn timeout_close(&mut self, cfg: &ConnectionConfig, code: CloseCode, now: u32) {
        self.drop_control();
        self.close_code = code.0;
        self.flags |= LOCAL | CLOSE_QUEUED;
        self.end(cfg, now);
    }

    /// Ends the connection without a completed handshake: `Closed`, this side closes TCP
    /// (once the close is flushed, within the close timeout), the event is due.
    fn end(&mut self, cfg: &ConnectionConfig, now: u32) {
        self.flags = (self.flags & !(STATE_MASK | CLEAN)) | CLOSED | CLOSE_TCP | EVENT_PENDING;
        self.timer = now.saturating_add(cfg.close_timeout);
        self.decoder = None;
    }

    fn closed_event(&self) -> Event {
        Event::Closed {
            code: self.close_code().unwrap_or(CloseCode::ABNORMAL),
            reason: self
                .extra
                .as_ref()
                .map_or_else(Bytes::new, |e| e.reason.clone()),
            initiated_by: if self.flags & LOCAL != 0 {
                Side::Local
            } else {
                Side::Peer
            },
            clean: self.flags & CLEAN != 0,
        }
    }
}

/// A complete control frame; masked with a key from `keys` in the client role. The server's
/// empty ones are static (no allocation).
fn control_frame(
    role: Role,
    opcode: OpCode,
    payload: &[u8],
    keys: Option<&mut dyn MaskKeySource>,
) -> Bytes {
    let mask = match role {
        Role::Server => {
            if payload.is_empty() {
                return Bytes::from_static(match opcode {
                    OpCode::Ping => &[0x89, 0x00],
                    OpCode::Pong => &[0x8a, 0x00],
                    _ => &[0x88, 0x00],
                });
            }
            None
        }
        Role::Client => Some(
            keys.expect("a client connection needs mask keys to transmit")
                .next_key(),
        ),
    };
    let header = FrameHeader {
        mask,
        ..FrameHeader::new(opcode, payload.len() as u64)
    };
    let mut hbuf = [0u8; MAX_HEADER_LEN];
    let hlen = header.encode(&mut hbuf);
    let mut out = BytesMut::with_capacity(hlen + payload.len());
    out.extend_from_slice(&hbuf[..hlen]);
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[hlen..], key, 0);
    }
    out.freeze()
}
