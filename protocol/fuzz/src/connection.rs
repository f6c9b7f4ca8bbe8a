//! A server-role sans-IO `Connection` driven through a whole session by the input bytes:
//! `edge_ws_protocol::connection::fuzzing::connection_stream` reads a configuration (limits,
//! heartbeat, idle and close timeouts, optional permessage-deflate) and then a script of steps
//! (raw wire bytes, well-formed client frames, clock advances, our own close, transmit drains,
//! event pumps) and checks the connection's invariants after every step (state only moves
//! forward, nothing is sent after our close frame, every transmit is one valid frame, at most
//! one held pong, `Closed` reported once, messages within the limits, deadlines act exactly when
//! due and settle).
//!
//! The input is a plain byte string (no `Arbitrary` type): every byte string is a valid session.

use edge_ws_protocol::connection::fuzzing::connection_stream;
use edge_ws_protocol::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use edge_ws_protocol::mask::apply_mask;

/// The target: runs one session, panicking on any failed check.
pub fn run(data: &[u8]) {
    connection_stream(data);
}

// --- Seed corpus (`fuzz-stable --write-seeds`) ----------------------------------------------
//
// The builder below writes the byte layout `connection_stream` reads (first a setup byte and the
// configuration bytes, then one opcode byte per step, `op % 8`, and the step's operands). Any
// byte string is a valid input, so a change of that layout only makes these seeds less pointed.

/// Step opcodes (`op % 8`): 0..=2 feed raw bytes, 3 a synthesized client frame, 4 advance the
/// clock, 5 our close, 6 drain the transmits (bit 7: the control slot is free), 7 pump events.
const FEED: u8 = 0;
const FRAME: u8 = 3;
const ADVANCE: u8 = 4;
const CLOSE: u8 = 5;
const TRANSMIT: u8 = 6;
const PUMP: u8 = 7;

/// Synthesized frame kinds (`spec & 7`).
#[derive(Clone, Copy)]
enum Kind {
    Text = 0,
    Binary = 1,
    Continuation = 2,
    Ping = 3,
    Pong = 4,
    Close = 5,
    CompressedBinary = 6,
    CompressedText = 7,
}

/// The connection's configuration, as `connection_stream` derives it from the first bytes.
struct Setup {
    /// permessage-deflate: (client_no_context_takeover, client_max_window_bits 8..=15).
    deflate: Option<(bool, u8)>,
    /// `max_frame_size = 1 + 16 × this`.
    max_frame: u8,
    /// `max_message_size = 1 + 64 × this`.
    max_message: u8,
    /// `max_fragments = 1 + this % 8`.
    max_fragments: u8,
    heartbeat_interval: Option<u8>,
    heartbeat_timeout: u8,
    /// `idle_timeout = 4 × this`.
    idle: Option<u8>,
    close_timeout: u8,
}

impl Setup {
    /// Roomy limits (frames up to 4 KB, messages up to 16 KB, 8 fragments), no timers, no
    /// deflate.
    fn roomy() -> Self {
        Setup {
            deflate: None,
            max_frame: 255,
            max_message: 255,
            max_fragments: 7,
            heartbeat_interval: None,
            heartbeat_timeout: 0,
            idle: None,
            close_timeout: 50,
        }
    }
}

/// A session script, written as the bytes `connection_stream` reads.
struct Script(Vec<u8>);

impl Script {
    fn new(s: Setup) -> Self {
        let (deflate, no_context, window) = match s.deflate {
            Some((nc, w)) => (true, nc, w),
            None => (false, false, 15),
        };
        assert!((8..=15).contains(&window));
        let setup = u8::from(deflate)
            | u8::from(s.heartbeat_interval.is_some()) << 1
            | u8::from(s.idle.is_some()) << 2
            | u8::from(no_context) << 3
            | (window - 8) << 4;
        let mut b = vec![setup, s.max_frame, s.max_message, s.max_fragments];
        b.extend(s.heartbeat_interval);
        b.push(s.heartbeat_timeout);
        b.extend(s.idle);
        b.push(s.close_timeout);
        Script(b)
    }

    /// Raw wire bytes, in chunks of at most 255.
    fn feed(mut self, bytes: &[u8]) -> Self {
        for chunk in bytes.chunks(255) {
            self.0.extend([FEED, chunk.len() as u8]);
            self.0.extend_from_slice(chunk);
        }
        if bytes.is_empty() {
            self.0.extend([FEED, 0]);
        }
        self
    }

    /// A frame encoded here, masked with `key` (`None`: unmasked, which a server must refuse).
    fn wire(self, fin: bool, opcode: OpCode, payload: &[u8], key: Option<[u8; 4]>) -> Self {
        let header = FrameHeader {
            fin,
            mask: key,
            ..FrameHeader::new(opcode, payload.len() as u64)
        };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut hbuf);
        let mut bytes = hbuf[..n].to_vec();
        let mut p = payload.to_vec();
        if let Some(k) = key {
            apply_mask(&mut p, k, 0);
        }
        bytes.extend_from_slice(&p);
        self.feed(&bytes)
    }

    /// A client frame the session builds (compressed with the client's compressor for the
    /// compressed kinds when deflate is on). A close frame carries code `CODES[code]` (0..=3:
    /// 1000, 1001, 1002, 1011) or, with `code = None`, only `payload`.
    fn frame(mut self, kind: Kind, fin: bool, payload: &[u8], code: Option<u8>) -> Self {
        let mut spec = kind as u8 | u8::from(!fin) << 4;
        match code {
            Some(c) => spec |= (c & 3) << 6,
            None => spec |= 0x20,
        }
        assert!(payload.len() < 128, "synthesized payloads are short");
        self.0.extend([FRAME, spec, payload.len() as u8]);
        self.0.extend_from_slice(payload);
        self.0.extend([0x37, 0xfa, 0x21, 0x3d]);
        self
    }

    fn advance(mut self, ticks: u8) -> Self {
        self.0.extend([ADVANCE, ticks]);
        self
    }

    /// Our close with `CODES[code % 8]` (1000, 1001, 1002, 1011, 3000, 4999, 1005, 0).
    fn close(mut self, code: u8, reason: &str) -> Self {
        assert!(reason.len() < 160);
        self.0.extend([CLOSE, code, reason.len() as u8]);
        self.0.extend_from_slice(reason.as_bytes());
        self
    }

    fn transmit(mut self, slot_free: bool) -> Self {
        self.0.push(TRANSMIT | u8::from(slot_free) << 7);
        self
    }

    fn pump(mut self) -> Self {
        self.0.push(PUMP);
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0
    }
}

const KEY: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);

/// Hand-built sessions: data in every shape, pings and held pongs, both close handshakes,
/// every deadline, permessage-deflate with and without context takeover, protocol errors and
/// limits.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let close_1005 = {
        let mut p = 1005u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"no status on the wire");
        p
    };
    vec![
        (
            "text-and-binary",
            Script::new(Setup::roomy())
                .frame(Kind::Text, true, b"hello", None)
                .frame(Kind::Binary, true, &[0, 1, 2, 0xff], None)
                .wire(true, OpCode::Text, "caf\u{e9} \u{1f600}".as_bytes(), KEY)
                .pump()
                .transmit(true)
                .bytes(),
        ),
        (
            "fragmented-with-ping",
            Script::new(Setup::roomy())
                .frame(Kind::Text, false, b"frag\xe2", None)
                .frame(Kind::Ping, true, b"in between", None)
                .frame(Kind::Continuation, false, &[0x82], None)
                .frame(Kind::Continuation, true, &[0xac, b'!'], None)
                .pump()
                .transmit(true)
                .bytes(),
        ),
        (
            "pings-while-slot-busy",
            Script::new(Setup::roomy())
                .frame(Kind::Ping, true, b"one", None)
                .frame(Kind::Ping, true, b"two", None)
                .pump()
                .transmit(false)
                .frame(Kind::Ping, true, b"three", None)
                .frame(Kind::Pong, true, b"unsolicited", None)
                .pump()
                .transmit(false)
                .transmit(true)
                .transmit(true)
                .bytes(),
        ),
        (
            "client-closes",
            Script::new(Setup::roomy())
                .frame(Kind::Text, true, b"last words", None)
                .frame(Kind::Close, true, b"bye", Some(0))
                .frame(Kind::Text, true, b"after the close", None)
                .pump()
                .transmit(true)
                .pump()
                .bytes(),
        ),
        (
            "server-closes-then-timeout",
            Script::new(Setup {
                close_timeout: 20,
                ..Setup::roomy()
            })
            .frame(Kind::Text, true, b"before", None)
            .pump()
            .close(1, "going away")
            .transmit(true)
            .frame(Kind::Text, true, b"still arriving", None)
            .pump()
            .advance(19)
            .advance(1)
            .transmit(true)
            .pump()
            .bytes(),
        ),
        (
            "server-closes-client-answers",
            Script::new(Setup::roomy())
                .close(4, "application code")
                .transmit(true)
                .frame(Kind::Close, true, b"", Some(0))
                .pump()
                .close(0, "twice")
                .transmit(true)
                .bytes(),
        ),
        (
            "heartbeat-ping-then-timeout",
            Script::new(Setup {
                heartbeat_interval: Some(10),
                heartbeat_timeout: 5,
                ..Setup::roomy()
            })
            .advance(10)
            .transmit(true)
            .frame(Kind::Pong, true, b"", None)
            .pump()
            .advance(10)
            .transmit(true)
            .advance(5)
            .transmit(true)
            .pump()
            .bytes(),
        ),
        (
            "idle-timeout",
            Script::new(Setup {
                idle: Some(3),
                ..Setup::roomy()
            })
            .advance(11)
            .frame(Kind::Binary, true, b"keeps it alive", None)
            .pump()
            .advance(11)
            .advance(1)
            .transmit(true)
            .pump()
            .bytes(),
        ),
        (
            "deflate-context-takeover",
            Script::new(Setup {
                deflate: Some((false, 15)),
                ..Setup::roomy()
            })
            .frame(
                Kind::CompressedText,
                true,
                b"compressed compressed text",
                None,
            )
            .frame(Kind::CompressedText, true, b"compressed text again", None)
            .frame(Kind::Text, true, b"plain in between", None)
            .frame(Kind::Ping, true, b"between messages", None)
            .frame(Kind::CompressedBinary, true, &[7; 100], None)
            .pump()
            .transmit(true)
            .bytes(),
        ),
        (
            "deflate-no-takeover-window-8",
            Script::new(Setup {
                deflate: Some((true, 8)),
                max_message: 1,
                ..Setup::roomy()
            })
            .frame(Kind::CompressedText, true, b"short", None)
            .frame(Kind::CompressedText, true, b"short", None)
            .frame(Kind::CompressedText, true, &[b'a'; 120], None)
            .frame(Kind::CompressedBinary, true, &[0; 127], None)
            .pump()
            .transmit(true)
            .bytes(),
        ),
        (
            "unmasked-frame",
            Script::new(Setup::roomy())
                .wire(true, OpCode::Text, b"not masked", None)
                .wire(true, OpCode::Text, b"after the error", KEY)
                .pump()
                .transmit(true)
                .pump()
                .bytes(),
        ),
        (
            "invalid-utf8",
            Script::new(Setup::roomy())
                .frame(Kind::Text, true, &[b'o', b'k', 0xc0, 0x80], None)
                .pump()
                .transmit(true)
                .bytes(),
        ),
        (
            "close-code-1005-on-the-wire",
            Script::new(Setup::roomy())
                .wire(true, OpCode::Close, &close_1005, KEY)
                .pump()
                .transmit(true)
                .bytes(),
        ),
        (
            "reserved-opcode",
            Script::new(Setup::roomy())
                .feed(&[0x83, 0x80, 1, 2, 3, 4])
                .pump()
                .transmit(true)
                .bytes(),
        ),
        (
            "small-limits",
            Script::new(Setup {
                max_frame: 0,
                max_message: 0,
                max_fragments: 1,
                ..Setup::roomy()
            })
            .frame(Kind::Binary, false, b"a", None)
            .frame(Kind::Continuation, false, b"b", None)
            .frame(Kind::Continuation, true, b"c", None)
            .pump()
            .transmit(true)
            .bytes(),
        ),
        (
            "frame-in-pieces",
            Script::new(Setup::roomy())
                .feed(&[0x81, 0x85, 0x37])
                .pump()
                .feed(&[0xfa, 0x21, 0x3d, 0x7f])
                .pump()
                .feed(&[0x9f, 0x4d, 0x51, 0x58])
                .pump()
                .transmit(true)
                .bytes(),
        ),
    ]
}
