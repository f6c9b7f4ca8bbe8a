//! Fuzzing entry points for [`Connection`]: not part of the API, no stability promise.
//!
//! [`connection_stream`] turns arbitrary bytes into a session against a server-role
//! connection and panics when an invariant breaks; a fuzz target only has to call it.

use bytes::BytesMut;

use super::{Connection, ConnectionConfig, Event, State, TimeoutAction};
use crate::codec::{Decoder, DecoderConfig, Message, Role};
use crate::deflate::{Compressor, DeflateParams};
use crate::error::CloseCode;
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::apply_mask;

/// Most bytes a message may inflate to per byte fed, summed over a session: deflate's 1032:1
/// (a 258-byte match coded in two bits) applies to the frames' payload bytes and to the 4-byte
/// tail the decoder appends to each compressed message; each message costs at least 6 wire
/// bytes (header and mask key), so the total stays under 1032 × (1 + 4/6) < 1720 per byte.
pub const INFLATE_FACTOR: usize = 1720;

/// Close codes the session picks from: valid ones, and some that may not be sent.
const CODES: [u16; 8] = [1000, 1001, 1002, 1011, 3000, 4999, 1005, 0];

/// Feeds the wire bytes and calls that `data` describes to a server-role [`Connection`],
/// checking after every step that:
///
/// - nothing panics;
/// - nothing is transmitted after a close frame, each transmit is a well-formed frame of its
///   kind, and one drain of [`Connection::poll_transmit`] yields at most one pong (the only
///   one held);
/// - the state only moves forward, [`Connection::can_send`] is true only while open, and
///   [`Event::Closed`] comes once, after the state became closed (and after every `Err`);
/// - once `Closed` was reported, `poll_event` returns `Ok(None)` and consumes all input;
/// - the scratch decoder always comes back idle, and data messages are within the limits:
///   each at most `max_message_size`, all together at most the bytes fed (times
///   [`INFLATE_FACTOR`] with permessage-deflate);
/// - deadlines act exactly when due, and settle.
pub fn connection_stream(data: &[u8]) {
    let mut input = Input { data, pos: 0 };
    let setup = input.byte();
    let deflate = setup & 1 != 0;
    let heartbeat = setup & 2 != 0;
    let idle = setup & 4 != 0;
    // Received bytes go straight to `poll_event_from` (the engine's path) instead of through
    // the read buffer first.
    let slices = setup & 0x80 != 0;
    // And whole plain frames are taken as views first (`poll_view_from`), as the engine does.
    let views = slices && setup & 0x10 != 0;
    let cfg = ConnectionConfig {
        role: Role::Server,
        limits: DecoderConfig {
            max_frame_size: 1 + usize::from(input.byte()) * 16,
            max_message_size: 1 + usize::from(input.byte()) * 64,
            max_fragments: 1 + usize::from(input.byte() % 8),
        },
        heartbeat_interval: heartbeat.then(|| u32::from(input.byte())),
        heartbeat_timeout: u32::from(input.byte()),
        idle_timeout: idle.then(|| u32::from(input.byte()) * 4),
        close_timeout: u32::from(input.byte()),
    };
    let mut s = Session::new(&cfg);
    s.slices = slices;
    s.views = views;
    if deflate {
        let params = DeflateParams {
            client_no_context_takeover: setup & 8 != 0,
            client_max_window_bits: 8 + (setup >> 4) % 8,
            ..DeflateParams::default()
        };
        s.conn.set_deflate(&cfg, &params);
        s.compressor = Some(Compressor::new(
            6,
            params.client_max_window_bits,
            params.client_no_context_takeover,
        ));
    }
    while let Some(op) = input.next() {
        match op % 8 {
            0..=2 => {
                let n = usize::from(input.byte());
                let chunk = input.take(n);
                s.feed(chunk);
            }
            3 => s.synthesized_frame(&mut input),
            4 => {
                s.now = s.now.saturating_add(u32::from(input.byte()));
                s.timers();
            }
            5 => {
                let code = CloseCode(CODES[usize::from(input.byte() % 8)]);
                let n = usize::from(input.byte() % 160);
                let reason = String::from_utf8_lossy(input.take(n)).into_owned();
                let was_open = s.conn.state() == State::Open;
                let started = s.conn.close(&cfg, code, &reason, s.now);
                assert_eq!(
                    started, was_open,
                    "close starts the handshake only when open"
                );
                if started {
                    assert_eq!(s.conn.state(), State::Closing);
                }
            }
            6 => s.transmit(op & 0x80 != 0),
            _ => s.pump(),
        }
        s.check_state();
    }
    // Finish: read everything, write everything, let every timer run out.
    s.pump();
    s.transmit(true);
    s.now = u32::MAX;
    s.timers();
    s.pump();
    s.transmit(true);
    assert!(s.conn.poll_timeout(&cfg).is_none(), "timers settle");
}

/// The fuzz input, read from the front; past its end every byte reads as zero.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn byte(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let end = self.pos.saturating_add(n).min(self.data.len());
        let out = &self.data[self.pos..end];
        self.pos = end;
        out
    }
}

struct Session<'c> {
    cfg: &'c ConnectionConfig,
    conn: Connection,
    scratch: Decoder,
    buf: BytesMut,
    /// With `slices`: bytes received since the last pump, not in `buf` yet.
    pending: Vec<u8>,
    slices: bool,
    /// With `slices`: try `poll_view_from` before `poll_event_from`.
    views: bool,
    now: u32,
    /// Wire bytes fed so far.
    fed: usize,
    /// Payload bytes of the data messages delivered so far.
    delivered: usize,
    /// The client's compressor for synthesized compressed messages.
    compressor: Option<Compressor>,
    /// A client-role decoder: every transmit must be a valid frame to it.
    peer: Decoder,
    close_sent: bool,
    closed_reported: bool,
    event_due: bool,
    aborted: bool,
    rank: u8,
}

impl<'c> Session<'c> {
    fn new(cfg: &'c ConnectionConfig) -> Self {
        Session {
            cfg,
            conn: Connection::new(0),
            scratch: cfg.decoder(),
            buf: BytesMut::new(),
            pending: Vec::new(),
            slices: false,
            views: false,
            now: 0,
            fed: 0,
            delivered: 0,
            compressor: None,
            peer: Decoder::new(Role::Client, DecoderConfig::default()),
            close_sent: false,
            closed_reported: false,
            event_due: false,
            aborted: false,
            rank: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.slices {
            self.pending.extend_from_slice(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
        self.fed += bytes.len();
    }

    /// A well-formed client frame (mostly), so that sessions reach deep states quickly.
    fn synthesized_frame(&mut self, input: &mut Input<'_>) {
        let spec = input.byte();
        let (opcode, compressed) = match spec & 7 {
            0 => (OpCode::Text, false),
            1 => (OpCode::Binary, false),
            2 => (OpCode::Continuation, false),
            3 => (OpCode::Ping, false),
            4 => (OpCode::Pong, false),
            5 => (OpCode::Close, false),
            6 => (OpCode::Binary, true),
            _ => (OpCode::Text, true),
        };
        let fin = spec & 0x10 == 0 || opcode.is_control();
        let len = usize::from(input.byte()) % if opcode.is_control() { 128 } else { 256 };
        let mut payload = Vec::new();
        if opcode == OpCode::Close && spec & 0x20 == 0 {
            payload.extend_from_slice(&CODES[usize::from(spec >> 6)].to_be_bytes());
        }
        payload.extend_from_slice(input.take(len));
        let rsv1 = compressed && self.compressor.is_some();
        if rsv1 {
            let mut out = BytesMut::new();
            if let Some(c) = self.compressor.as_mut() {
                c.compress(&payload, &mut out);
            }
            payload = out.to_vec();
        }
        let key = [input.byte(), input.byte(), input.byte(), input.byte()];
        let header = FrameHeader {
            fin,
            rsv1,
            mask: Some(key),
            ..FrameHeader::new(opcode, payload.len() as u64)
        };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut hbuf);
        apply_mask(&mut payload, key, 0);
        self.feed(&hbuf[..hlen]);
        self.feed(&payload);
    }

    /// Decodes until the connection has nothing more to say.
    fn pump(&mut self) {
        let mut pending = core::mem::take(&mut self.pending);
        let mut input: &mut [u8] = &mut pending;
        loop {
            let viewed = if self.views {
                self.conn
                    .poll_view_from(self.cfg, &self.scratch, &self.buf, &mut input, self.now)
                    .map(|r| r.map(|view| Some(Event::Message(view.to_message()))))
            } else {
                None
            };
            let result = if let Some(r) = viewed {
                r
            } else if self.slices {
                self.conn.poll_event_from(
                    self.cfg,
                    &mut self.scratch,
                    &mut self.buf,
                    &mut input,
                    self.now,
                )
            } else {
                self.conn
                    .poll_event(self.cfg, &mut self.scratch, &mut self.buf, self.now)
            };
            assert!(self.scratch.is_idle(), "the scratch comes back idle");
            if self.closed_reported {
                assert!(result == Ok(None), "nothing after Closed: {result:?}");
                assert!(self.buf.is_empty(), "input after Closed is consumed");
                assert!(input.is_empty(), "received input after Closed is consumed");
                return;
            }
            match result {
                Ok(None) => {
                    assert!(!self.event_due, "an error is followed by Closed");
                    assert!(input.is_empty(), "Ok(None) leaves no received input");
                    return;
                }
                Ok(Some(Event::Message(msg))) => {
                    assert!(!self.event_due, "an error is followed by Closed");
                    assert!(self.conn.can_send(), "data is delivered only while open");
                    let len = match &msg {
                        Message::Text(t) => {
                            assert!(core::str::from_utf8(t).is_ok(), "text is UTF-8");
                            t.len()
                        }
                        Message::Binary(b) => b.len(),
                        other => panic!("control frame reported as a message: {other:?}"),
                    };
                    assert!(
                        len <= self.cfg.limits.max_message_size,
                        "message over limit"
                    );
                    self.delivered += len;
                    let factor = if self.compressor.is_some() {
                        INFLATE_FACTOR
                    } else {
                        1
                    };
                    assert!(
                        self.delivered <= self.fed.saturating_mul(factor),
                        "delivered {} bytes from {} fed",
                        self.delivered,
                        self.fed
                    );
                }
                Ok(Some(Event::Ping)) => {
                    assert!(!self.event_due, "an error is followed by Closed");
                }
                Ok(Some(Event::Pong(p))) => {
                    assert!(!self.event_due, "an error is followed by Closed");
                    assert!(p.len() <= 125);
                }
                Ok(Some(Event::Closed { code, reason, .. })) => {
                    assert!(
                        matches!(self.conn.state(), State::Closed { .. }),
                        "Closed reported before the state is"
                    );
                    assert!(code.0 != 0);
                    assert!(reason.len() <= 123 && core::str::from_utf8(&reason).is_ok());
                    self.closed_reported = true;
                    self.event_due = false;
                }
                Err(e) => {
                    assert!(!self.event_due, "one error per connection");
                    assert!(matches!(
                        self.conn.state(),
                        State::Closed { close_tcp: true }
                    ));
                    assert!(
                        self.conn.close_code().is_some(),
                        "{e:?} leaves a close code"
                    );
                    assert!(self.buf.is_empty(), "input after an error is dropped");
                    assert!(input.is_empty(), "received input after an error is dropped");
                    self.event_due = true;
                }
            }
            self.check_state();
        }
    }

    /// Drains the transmits, checking each frame.
    fn transmit(&mut self, slot_free: bool) {
        let mut pongs = 0;
        for _ in 0..4 {
            let Some(t) = self.conn.poll_transmit(self.cfg, slot_free, None) else {
                if slot_free && self.conn.state() == State::Open {
                    assert!(
                        self.conn.held_pong().is_none(),
                        "a free slot takes the pong"
                    );
                }
                return;
            };
            assert!(!self.close_sent, "transmit after the close frame: {t:?}");
            assert!(!self.aborted, "transmit after the close timeout: {t:?}");
            let mut frame = BytesMut::from(&t.bytes[..]);
            let msg = self
                .peer
                .decode(&mut frame)
                .expect("transmits are valid frames")
                .expect("transmits are whole frames");
            assert!(frame.is_empty(), "one frame per transmit");
            match (t.opcode, msg) {
                (OpCode::Pong, Message::Pong(_)) => {
                    assert!(t.urgent && slot_free);
                    pongs += 1;
                    assert!(pongs <= 1, "one pong held at most");
                }
                (OpCode::Ping, Message::Ping(p)) => {
                    assert!(t.urgent && slot_free && p.is_empty());
                }
                (OpCode::Close, Message::Close(frame)) => {
                    assert!(!t.urgent, "a close goes after queued data");
                    let code = frame.map_or(CloseCode::NO_STATUS, |f| f.code);
                    assert_eq!(
                        Some(code),
                        self.conn.close_code(),
                        "the close says its code"
                    );
                    self.close_sent = true;
                }
                (op, msg) => panic!("transmit {op:?} decodes as {msg:?}"),
            }
        }
        panic!("poll_transmit does not run dry");
    }

    /// Runs the deadlines due at `now`.
    fn timers(&mut self) {
        if self
            .conn
            .poll_timeout(self.cfg)
            .is_none_or(|d| d > self.now)
        {
            assert!(
                self.conn.handle_timeout(self.cfg, self.now).is_none(),
                "nothing acts before its deadline"
            );
        }
        for _ in 0..6 {
            match self.conn.poll_timeout(self.cfg) {
                Some(d) if d <= self.now => {
                    let action = self.conn.handle_timeout(self.cfg, self.now);
                    match action {
                        Some(TimeoutAction::CloseTimeout) => {
                            self.aborted = true;
                            assert!(self.conn.poll_transmit(self.cfg, true, None).is_none());
                        }
                        Some(TimeoutAction::HeartbeatTimeout | TimeoutAction::IdleTimeout) => {
                            assert!(matches!(
                                self.conn.state(),
                                State::Closed { close_tcp: true }
                            ));
                        }
                        Some(TimeoutAction::Ping) => {
                            assert_eq!(self.conn.state(), State::Open);
                        }
                        None => panic!("a due deadline does nothing"),
                    }
                    self.check_state();
                }
                _ => return,
            }
        }
        panic!("deadlines do not settle");
    }

    fn check_state(&mut self) {
        let rank = match self.conn.state() {
            State::Open => 0,
            State::Closing => 1,
            State::Closed { .. } => 2,
        };
        assert!(rank >= self.rank, "the state went back");
        self.rank = rank;
        assert_eq!(self.conn.can_send(), rank == 0);
        if rank != 0 {
            assert!(self.conn.held_pong().is_none(), "no pong after our close");
        }
        if rank == 2 {
            assert!(
                !self.conn.owns_decoder(),
                "a closed connection holds no decoder"
            );
        }
    }
}
