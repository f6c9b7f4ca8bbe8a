//! The sans-IO `Connection`: a client and a server wired together in memory (`Pair`), with a
//! fake clock, through the close handshake, errors, heartbeats, timeouts, ping floods,
//! permessage-deflate and decoder lending. A counting allocator checks the memory claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use edge_ws_protocol::codec::MaskKeySource;
use edge_ws_protocol::connection::{
    fuzzing, Side, State, TimeoutAction, Transmit, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_IDLE_TIMEOUT,
};
use edge_ws_protocol::deflate::DeflateParams;
use edge_ws_protocol::{
    CloseCode, Connection, ConnectionConfig, Decoder, DecoderConfig, Encoder, Event, Message,
    OpCode, ProtocolError, Role,
};

// ---------------------------------------------------------------------------------------------
// A counting allocator: allocations and live bytes per thread (each test runs on its own).

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn note(allocs: u64, bytes: i64) {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + allocs));
    let _ = LIVE.try_with(|c| c.set(c.get() + bytes));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the bookkeeping only touches const-initialised thread-local `Cell`s,
// which neither allocate nor register destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as i64);
        // SAFETY: the caller's guarantees for `alloc` are passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as i64);
        // SAFETY: the caller's guarantees for `alloc_zeroed` are passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, -(layout.size() as i64));
        // SAFETY: `ptr` came from `System` (through this allocator) with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(1, new_size as i64 - layout.size() as i64);
        // SAFETY: the caller's guarantees for `realloc` are passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocations, live bytes) on this thread so far.
fn heap() -> (u64, i64) {
    (ALLOCS.with(Cell::get), LIVE.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// The in-memory pair.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Client,
    Server,
}

/// Deterministic mask keys (the crate has no RNG; tests need none).
struct XorShift(u32);

impl MaskKeySource for XorShift {
    fn next_key(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0.to_le_bytes()
    }
}

fn cfg(role: Role) -> ConnectionConfig {
    ConnectionConfig {
        role,
        limits: DecoderConfig::default(),
        heartbeat_interval: None,
        heartbeat_timeout: 0,
        idle_timeout: None,
        close_timeout: 50,
    }
}

/// One end: its connection, the driver's state around it, and what it saw.
struct Peer {
    cfg: ConnectionConfig,
    conn: Connection,
    scratch: Decoder,
    /// This end's read buffer.
    rbuf: BytesMut,
    /// Bytes on the wire towards this end, not read yet.
    inbox: BytesMut,
    /// Data messages (compressed when deflate is on).
    encoder: Encoder,
    /// Mask keys for the connection's control frames (client only).
    keys: XorShift,
    events: Vec<Event>,
    errors: Vec<ProtocolError>,
    actions: Vec<TimeoutAction>,
    sent: Vec<Transmit>,
    /// Whether an earlier urgent frame no longer waits in the socket queue.
    slot_free: bool,
    /// A peer that stops reading neither decodes nor answers.
    reading: bool,
    /// Whether this end closes TCP when its state says so.
    closes_tcp: bool,
    /// This end closed (or aborted) its socket.
    tcp_closed: bool,
    /// The other end closed its socket.
    eof: bool,
}

impl Peer {
    fn new(cfg: ConnectionConfig, seed: u32) -> Self {
        let encoder = match cfg.role {
            Role::Server => Encoder::server(),
            Role::Client => Encoder::client(XorShift(seed ^ 0x5555)),
        };
        Peer {
            cfg,
            conn: Connection::new(0),
            scratch: cfg.decoder(),
            rbuf: BytesMut::new(),
            inbox: BytesMut::new(),
            encoder,
            keys: XorShift(seed),
            events: Vec::new(),
            errors: Vec::new(),
            actions: Vec::new(),
            sent: Vec::new(),
            slot_free: true,
            reading: true,
            closes_tcp: true,
            tcp_closed: false,
            eof: false,
        }
    }

    /// Writes the control frames the connection has for us into `wire`.
    fn flush(&mut self, wire: &mut BytesMut) -> bool {
        if self.tcp_closed || self.eof {
            return false;
        }
        let mut any = false;
        loop {
            let keys: Option<&mut dyn MaskKeySource> = match self.cfg.role {
                Role::Client => Some(&mut self.keys),
                Role::Server => None,
            };
            let Some(t) = self.conn.poll_transmit(&self.cfg, self.slot_free, keys) else {
                return any;
            };
            wire.extend_from_slice(&t.bytes);
            self.sent.push(t);
            any = true;
        }
    }

    /// Reads what arrived and records the events.
    fn read(&mut self, now: u32) -> bool {
        if !self.reading || self.tcp_closed {
            return false;
        }
        let mut any = !self.inbox.is_empty();
        self.rbuf.extend_from_slice(&self.inbox.split());
        loop {
            match self
                .conn
                .poll_event(&self.cfg, &mut self.scratch, &mut self.rbuf, now)
            {
                // A ping's pong is flushed by `drive` like every other transmit.
                Ok(Some(Event::Ping)) => {}
                Ok(Some(e)) => self.events.push(e),
                Ok(None) => return any,
                Err(e) => self.errors.push(e),
            }
            assert!(self.scratch.is_idle(), "the scratch comes back idle");
            any = true;
        }
    }

    /// Takes the events still to report (the `Closed` after a timeout) without reading.
    fn collect(&mut self, now: u32) {
        while let Some(e) = self
            .conn
            .poll_event(&self.cfg, &mut self.scratch, &mut self.rbuf, now)
            .unwrap()
        {
            self.events.push(e);
        }
    }

    fn messages(&self) -> Vec<Message> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn closed_events(&self) -> Vec<(CloseCode, Bytes, Side, bool)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Closed {
                    code,
                    reason,
                    initiated_by,
                    clean,
                } => Some((*code, reason.clone(), *initiated_by, *clean)),
                _ => None,
            })
            .collect()
    }

    fn sent_opcodes(&self) -> Vec<OpCode> {
        self.sent.iter().map(|t| t.opcode).collect()
    }
}

/// A client and a server connection wired through two in-memory byte streams, and a clock.
struct Pair {
    client: Peer,
    server: Peer,
    now: u32,
    /// Which end closed TCP first.
    first_tcp_close: Option<End>,
}

impl Pair {
    fn new() -> Self {
        Pair::with(cfg(Role::Client), cfg(Role::Server))
    }

    fn with(client: ConnectionConfig, server: ConnectionConfig) -> Self {
        Pair {
            client: Peer::new(client, 0x1234_5678),
            server: Peer::new(server, 0x9abc_def1),
            now: 0,
            first_tcp_close: None,
        }
    }

    /// (this end, the other end).
    fn ends(&mut self, end: End) -> (&mut Peer, &mut Peer) {
        match end {
            End::Client => (&mut self.client, &mut self.server),
            End::Server => (&mut self.server, &mut self.client),
        }
    }

    fn peer(&self, end: End) -> &Peer {
        match end {
            End::Client => &self.client,
            End::Server => &self.server,
        }
    }

    /// Sends a data message from `end` (the driver's encoder, as the engine does).
    fn send(&mut self, end: End, opcode: OpCode, payload: &[u8]) {
        let (this, other) = self.ends(end);
        assert!(this.conn.can_send(), "{end:?} may not send");
        this.encoder.encode(opcode, payload, &mut other.inbox);
    }

    /// Puts raw bytes on the wire from `end`, past its connection.
    fn raw(&mut self, end: End, bytes: &[u8]) {
        let (_, other) = self.ends(end);
        other.inbox.extend_from_slice(bytes);
    }

    fn close(&mut self, end: End, code: CloseCode, reason: &str) {
        let now = self.now;
        let (this, _) = self.ends(end);
        assert!(this.conn.close(&this.cfg, code, reason, now));
    }

    fn flush(&mut self, end: End) -> bool {
        let (this, other) = self.ends(end);
        this.flush(&mut other.inbox)
    }

    /// Pumps transmits and events both ways until nothing moves; then ends whose state says
    /// so close TCP, and the other end sees EOF.
    fn drive(&mut self) {
        for _ in 0..10_000 {
            let now = self.now;
            let mut progress = self.flush(End::Client);
            progress |= self.flush(End::Server);
            progress |= self.client.read(now);
            progress |= self.server.read(now);
            if !progress {
                progress = self.close_tcp(End::Server) | self.close_tcp(End::Client);
            }
            if !progress {
                return;
            }
        }
        panic!("the pair does not settle");
    }

    fn close_tcp(&mut self, end: End) -> bool {
        let (this, _) = self.ends(end);
        let wants = matches!(this.conn.state(), State::Closed { close_tcp: true });
        if this.tcp_closed || !(wants && this.closes_tcp || this.eof) {
            return false;
        }
        self.shut(end);
        true
    }

    /// `end` closes its socket: the other end reads what is left, then sees EOF.
    fn shut(&mut self, end: End) {
        let now = self.now;
        self.first_tcp_close.get_or_insert(end);
        let (this, other) = self.ends(end);
        this.collect(now);
        this.tcp_closed = true;
        if !other.eof {
            other.eof = true;
            other.read(now);
            other.conn.handle_transport_closed();
            other.read(now);
        }
    }

    /// Advances the clock to `target`, firing every deadline on its tick and driving the
    /// pair after each.
    fn advance_to(&mut self, target: u32) {
        loop {
            let due = [End::Client, End::Server]
                .into_iter()
                .filter(|&e| !self.peer(e).tcp_closed)
                .filter_map(|e| {
                    let p = self.peer(e);
                    p.conn.poll_timeout(&p.cfg).map(|d| (d.max(self.now), e))
                })
                .min();
            match due {
                Some((tick, end)) if tick <= target => {
                    self.now = tick;
                    let (this, _) = self.ends(end);
                    let action = this
                        .conn
                        .handle_timeout(&this.cfg, tick)
                        .expect("a due deadline acts");
                    this.actions.push(action);
                    if action == TimeoutAction::CloseTimeout {
                        self.shut(end);
                    }
                    self.drive();
                }
                _ => break,
            }
        }
        self.now = target;
        self.drive();
    }
}

fn text(s: &str) -> Message {
    Message::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A masked client frame, as bytes.
fn client_frame(opcode: OpCode, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    Encoder::client(XorShift(7)).encode(opcode, payload, &mut out);
    out
}

fn close_bytes(code: u16, reason: &str) -> Vec<u8> {
    let mut v = vec![0x88, 2 + reason.len() as u8];
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(reason.as_bytes());
    v
}

// ---------------------------------------------------------------------------------------------
// Messages.

#[test]
fn echoes_text_and_binary_both_ways() {
    let mut p = Pair::new();
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    p.send(End::Client, OpCode::Text, "hello".as_bytes());
    p.send(End::Client, OpCode::Binary, &[0, 1, 2, 255]);
    p.send(End::Client, OpCode::Binary, &big);
    p.drive();
    let got = p.server.messages();
    assert_eq!(
        got,
        vec![
            text("hello"),
            Message::Binary(Bytes::from_static(&[0, 1, 2, 255])),
            Message::Binary(Bytes::from(big.clone())),
        ]
    );
    // The server echoes what it got; the client receives it unmasked and whole.
    for m in &got {
        let op = if matches!(m, Message::Text(_)) {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        p.send(End::Server, op, m.payload());
    }
    p.drive();
    assert_eq!(p.client.messages(), got);
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
    assert!(
        p.client.sent.is_empty() && p.server.sent.is_empty(),
        "no control frames"
    );
    assert_eq!(p.client.conn.state(), State::Open);
    assert_eq!(p.server.conn.state(), State::Open);
}

#[test]
fn pings_are_answered_with_their_payload() {
    let mut p = Pair::new();
    // The client application pings through its encoder; the server's connection answers.
    p.client
        .encoder
        .encode(OpCode::Ping, b"marco", &mut p.server.inbox);
    p.drive();
    assert_eq!(p.server.sent_opcodes(), vec![OpCode::Pong]);
    assert!(p.server.sent[0].urgent);
    assert_eq!(&p.server.sent[0].bytes[..], b"\x8a\x05marco");
    assert_eq!(
        p.client.events,
        vec![Event::Pong(Bytes::from_static(b"marco"))]
    );
    assert!(p.server.events.is_empty(), "pings are handled inside");
    // And the other way: the client's pong is masked.
    p.server
        .encoder
        .encode(OpCode::Ping, b"polo", &mut p.client.inbox);
    p.drive();
    let pong = &p.client.sent[0];
    assert_eq!(pong.opcode, OpCode::Pong);
    assert_eq!(pong.bytes[1], 0x80 | 4, "client frames are masked");
    assert_eq!(
        p.server.events,
        vec![Event::Pong(Bytes::from_static(b"polo"))]
    );
}

// ---------------------------------------------------------------------------------------------
// The close handshake.

#[test]
fn client_initiated_close_echoes_the_code_and_the_server_closes_tcp_first() {
    let mut p = Pair::new();
    p.close(End::Client, CloseCode::NORMAL, "bye");
    assert_eq!(p.client.conn.state(), State::Closing);
    assert!(!p.client.conn.can_send());
    p.drive();
    // The client's close: masked, code and reason.
    let close = &p.client.sent[0];
    assert_eq!((close.opcode, close.urgent), (OpCode::Close, false));
    assert_eq!(close.bytes[1], 0x80 | 5);
    // The server: the peer's close reported, its code echoed without a reason.
    assert_eq!(
        p.server.closed_events(),
        vec![(
            CloseCode::NORMAL,
            Bytes::from_static(b"bye"),
            Side::Peer,
            true
        )]
    );
    assert_eq!(&p.server.sent[0].bytes[..], &close_bytes(1000, "")[..]);
    assert_eq!(p.server.conn.state(), State::Closed { close_tcp: true });
    assert_eq!(p.server.conn.close_code(), Some(CloseCode::NORMAL));
    // The client: the reply completes its handshake; it waits for the server's FIN.
    assert_eq!(
        p.client.closed_events(),
        vec![(
            CloseCode::NORMAL,
            Bytes::from_static(b"bye"),
            Side::Local,
            true
        )]
    );
    assert_eq!(p.client.conn.state(), State::Closed { close_tcp: false });
    assert_eq!(p.first_tcp_close, Some(End::Server), "RFC 6455 §7.1.1");
    assert!(p.client.tcp_closed && p.server.tcp_closed);
    assert_eq!(
        p.client.conn.poll_timeout(&p.client.cfg),
        None,
        "EOF ends the wait"
    );
    assert_eq!(p.client.sent.len(), 1);
    assert_eq!(p.server.sent.len(), 1);
}

#[test]
fn server_initiated_close_is_echoed_by_the_client() {
    let mut p = Pair::new();
    p.send(End::Server, OpCode::Text, b"last words");
    p.close(End::Server, CloseCode(4000), "shutdown");
    assert_eq!(p.server.conn.state(), State::Closing);
    p.drive();
    assert_eq!(
        p.client.messages(),
        vec![text("last words")],
        "data before the close"
    );
    assert_eq!(
        &p.server.sent[0].bytes[..],
        &close_bytes(4000, "shutdown")[..]
    );
    assert_eq!(
        p.client.closed_events(),
        vec![(
            CloseCode(4000),
            Bytes::from_static(b"shutdown"),
            Side::Peer,
            true
        )]
    );
    // The client's echo: masked, code 4000, no reason.
    let echo = &p.client.sent[0];
    assert_eq!(echo.opcode, OpCode::Close);
    assert_eq!(echo.bytes[1], 0x80 | 2);
    assert_eq!(
        p.server.closed_events(),
        vec![(
            CloseCode(4000),
            Bytes::from_static(b"shutdown"),
            Side::Local,
            true
        )]
    );
    assert_eq!(p.server.conn.state(), State::Closed { close_tcp: true });
    assert_eq!(p.client.conn.state(), State::Closed { close_tcp: false });
    assert_eq!(p.first_tcp_close, Some(End::Server));
}

#[test]
fn a_close_without_status_is_answered_with_an_empty_close() {
    let mut p = Pair::new();
    p.close(End::Client, CloseCode::NO_STATUS, "a reason needs a code");
    p.drive();
    assert_eq!(p.client.sent[0].bytes.len(), 6, "empty payload, mask key");
    assert_eq!(&p.client.sent[0].bytes[..2], &[0x88, 0x80]);
    assert_eq!(
        p.server.closed_events(),
        vec![(CloseCode::NO_STATUS, Bytes::new(), Side::Peer, true)]
    );
    assert_eq!(&p.server.sent[0].bytes[..], &[0x88, 0x00]);
    assert_eq!(p.server.conn.close_code(), Some(CloseCode::NO_STATUS));
    assert_eq!(
        p.client.closed_events(),
        vec![(CloseCode::NO_STATUS, Bytes::new(), Side::Local, true)]
    );
}

#[test]
fn simultaneous_closes_complete_both_handshakes() {
    let mut p = Pair::new();
    p.close(End::Client, CloseCode::NORMAL, "");
    p.close(End::Server, CloseCode::GOING_AWAY, "");
    p.drive();
    assert_eq!(p.client.sent.len(), 1);
    assert_eq!(p.server.sent.len(), 1);
    assert_eq!(
        p.client.closed_events(),
        vec![(CloseCode::NORMAL, Bytes::new(), Side::Local, true)]
    );
    assert_eq!(
        p.server.closed_events(),
        vec![(CloseCode::GOING_AWAY, Bytes::new(), Side::Local, true)]
    );
    assert_eq!(p.first_tcp_close, Some(End::Server));
}

#[test]
fn data_after_our_close_is_discarded_and_nothing_follows_a_close_frame() {
    let mut p = Pair::new();
    p.close(End::Server, CloseCode::NORMAL, "");
    assert!(p.flush(End::Server));
    // The client has not read the close yet: its data crosses it and is dropped.
    p.send(End::Client, OpCode::Text, b"too late");
    p.send(End::Client, OpCode::Binary, &[1; 300]);
    p.client
        .encoder
        .encode(OpCode::Ping, b"late ping", &mut p.server.inbox);
    p.drive();
    assert!(
        p.server.messages().is_empty(),
        "data after our close is discarded"
    );
    assert_eq!(
        p.server.sent_opcodes(),
        vec![OpCode::Close],
        "no pong after our close"
    );
    assert_eq!(
        p.server.closed_events(),
        vec![(CloseCode::NORMAL, Bytes::new(), Side::Local, true)]
    );

    // After the peer's close, even garbage is not decoded.
    let mut p = Pair::new();
    p.client
        .encoder
        .encode_close(CloseCode::NORMAL, "", &mut p.server.inbox);
    p.raw(
        End::Client,
        &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o', 0xff, 0xff],
    );
    p.drive();
    assert!(
        p.server.errors.is_empty(),
        "nothing after a close is decoded"
    );
    assert!(p.server.rbuf.is_empty(), "and it is consumed");
    assert_eq!(p.server.closed_events().len(), 1);
}

#[test]
fn closing_twice_or_after_the_end_does_nothing() {
    let mut p = Pair::new();
    p.close(End::Client, CloseCode::NORMAL, "");
    let (c, now) = (&mut p.client, p.now);
    assert!(!c.conn.close(&c.cfg, CloseCode::GOING_AWAY, "again", now));
    p.drive();
    let c = &mut p.client;
    assert!(!c.conn.close(&c.cfg, CloseCode::GOING_AWAY, "again", now));
    assert_eq!(c.sent.len(), 1);
    assert_eq!(c.closed_events().len(), 1);
}

#[test]
fn a_long_close_reason_is_cut_at_a_character_boundary() {
    let mut p = Pair::new();
    let reason = "é".repeat(100);
    p.close(End::Server, CloseCode::NORMAL, &reason);
    p.drive();
    let frame = &p.server.sent[0].bytes;
    assert_eq!(frame.len(), 2 + 2 + 122);
    let (code, got, ..) = p.client.closed_events()[0].clone();
    assert_eq!(code, CloseCode::NORMAL);
    assert_eq!(got.len(), 122);
    assert!(std::str::from_utf8(&got).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Protocol errors from the peer.

/// Sends `wire` to the server raw and checks its close on the wire and both ends' reports.
fn server_fails(mut p: Pair, wire: &[u8], err: ProtocolError, code: u16) {
    p.raw(End::Client, wire);
    p.drive();
    assert_eq!(p.server.errors, vec![err]);
    let reason = err.to_string();
    assert_eq!(p.server.sent_opcodes(), vec![OpCode::Close]);
    assert_eq!(&p.server.sent[0].bytes[..], &close_bytes(code, &reason)[..]);
    assert_eq!(p.server.conn.state(), State::Closed { close_tcp: true });
    assert_eq!(p.server.conn.close_code(), Some(CloseCode(code)));
    assert_eq!(
        p.server.closed_events(),
        vec![(
            CloseCode(code),
            Bytes::from(reason.clone()),
            Side::Local,
            false
        )]
    );
    assert_eq!(
        p.client.closed_events(),
        vec![(CloseCode(code), Bytes::from(reason), Side::Peer, true)]
    );
    assert_eq!(p.first_tcp_close, Some(End::Server));
    assert!(!p.server.conn.owns_decoder());
}

#[test]
fn an_unmasked_frame_to_the_server_is_1002() {
    server_fails(
        Pair::new(),
        &[0x81, 0x02, b'h', b'i'],
        ProtocolError::UnmaskedFrame,
        1002,
    );
}

#[test]
fn invalid_utf8_is_1007() {
    let wire = client_frame(OpCode::Text, &[b'o', b'k', 0xff, 0xfe]);
    server_fails(Pair::new(), &wire, ProtocolError::InvalidUtf8, 1007);
}

#[test]
fn a_message_over_the_limit_is_1009() {
    let mut server = cfg(Role::Server);
    server.limits.max_message_size = 1024;
    let wire = client_frame(OpCode::Binary, &[7; 2000]);
    server_fails(
        Pair::with(cfg(Role::Client), server),
        &wire,
        ProtocolError::MessageTooLarge,
        1009,
    );
}

#[test]
fn a_masked_frame_to_the_client_is_1002() {
    let mut p = Pair::new();
    p.raw(End::Server, &client_frame(OpCode::Text, b"masked"));
    p.drive();
    assert_eq!(p.client.errors, vec![ProtocolError::MaskedFrame]);
    let reason_len = "server frame masked".len() as u8;
    assert_eq!(
        p.client.sent[0].bytes[1],
        0x80 | (2 + reason_len),
        "masked, with its reason"
    );
    assert_eq!(
        p.server.closed_events(),
        vec![(
            CloseCode::PROTOCOL,
            Bytes::from_static(b"server frame masked"),
            Side::Peer,
            true
        )]
    );
    // An error ends the client's side too: it closes TCP itself.
    assert_eq!(p.client.conn.state(), State::Closed { close_tcp: true });
}

#[test]
fn an_error_after_our_close_sends_no_second_close() {
    let mut p = Pair::new();
    p.close(End::Server, CloseCode::GOING_AWAY, "");
    p.raw(End::Client, &[0x81, 0x02, b'h', b'i']);
    p.drive();
    assert_eq!(p.server.errors, vec![ProtocolError::UnmaskedFrame]);
    assert_eq!(p.server.sent_opcodes(), vec![OpCode::Close]);
    assert_eq!(&p.server.sent[0].bytes[..], &close_bytes(1001, "")[..]);
    assert_eq!(
        p.server.closed_events(),
        vec![(CloseCode::GOING_AWAY, Bytes::new(), Side::Local, false)]
    );
}

#[test]
fn a_peer_that_goes_away_is_reported_abnormal() {
    let mut p = Pair::new();
    p.shut(End::Client);
    p.drive();
    assert_eq!(
        p.server.closed_events(),
        vec![(CloseCode::ABNORMAL, Bytes::new(), Side::Peer, false)]
    );
    assert_eq!(p.server.conn.state(), State::Closed { close_tcp: true });
    assert_eq!(p.server.conn.close_code(), None);
    assert!(p.server.sent.is_empty());
    assert_eq!(p.server.conn.poll_timeout(&p.server.cfg), None);
}

// ---------------------------------------------------------------------------------------------
// Heartbeat, idle and close timeouts.

fn heartbeat_server() -> ConnectionConfig {
    ConnectionConfig {
        heartbeat_interval: Some(10),
        heartbeat_timeout: 5,
        ..cfg(Role::Server)
    }
}

#[test]
fn a_heartbeat_ping_goes_out_after_silence_and_a_pong_clears_it() {
    let mut p = Pair::with(cfg(Role::Client), heartbeat_server());
    assert_eq!(p.server.conn.poll_timeout(&p.server.cfg), Some(10));
    p.advance_to(9);
    assert!(p.server.actions.is_empty());
    p.advance_to(10);
    assert_eq!(p.server.actions, vec![TimeoutAction::Ping]);
    assert_eq!(p.server.sent_opcodes(), vec![OpCode::Ping]);
    assert_eq!(&p.server.sent[0].bytes[..], &[0x89, 0x00]);
    assert!(p.server.sent[0].urgent);
    assert_eq!(
        p.client.sent_opcodes(),
        vec![OpCode::Pong],
        "auto-pong, masked"
    );
    assert_eq!(p.server.events, vec![Event::Pong(Bytes::new())]);
    // The pong counted: no timeout at 15, the next ping 10 ticks after it arrived.
    p.advance_to(19);
    assert_eq!(p.server.actions, vec![TimeoutAction::Ping]);
    p.advance_to(20);
    assert_eq!(p.server.actions, vec![TimeoutAction::Ping; 2]);
    // Traffic postpones the heartbeat: bytes at 25 move the next ping to 35.
    p.advance_to(25);
    p.send(End::Client, OpCode::Text, b"still here");
    p.drive();
    assert_eq!(p.server.conn.last_seen(), 25);
    p.advance_to(34);
    assert_eq!(p.server.actions.len(), 2);
    p.advance_to(35);
    assert_eq!(p.server.actions.len(), 3);
    assert_eq!(p.server.conn.state(), State::Open);
}

#[test]
fn no_pong_within_the_heartbeat_timeout_closes_4002() {
    let mut p = Pair::with(cfg(Role::Client), heartbeat_server());
    p.client.reading = false;
    p.advance_to(14);
    assert_eq!(p.server.actions, vec![TimeoutAction::Ping]);
    assert_eq!(p.server.conn.state(), State::Open);
    p.advance_to(15);
    assert_eq!(
        p.server.actions,
        vec![TimeoutAction::Ping, TimeoutAction::HeartbeatTimeout]
    );
    assert_eq!(&p.client.inbox[..], &[0x89, 0x00, 0x88, 0x02, 0x0f, 0xa2]);
    assert_eq!(p.server.conn.state(), State::Closed { close_tcp: true });
    assert_eq!(p.server.conn.close_code(), Some(CLOSE_HEARTBEAT_TIMEOUT));
    assert_eq!(
        p.server.closed_events(),
        vec![(CLOSE_HEARTBEAT_TIMEOUT, Bytes::new(), Side::Local, false)]
    );
    assert_eq!(p.first_tcp_close, Some(End::Server));
}

#[test]
fn silence_for_the_idle_timeout_closes_4003() {
    let server = ConnectionConfig {
        idle_timeout: Some(20),
        ..cfg(Role::Server)
    };
    let mut p = Pair::with(cfg(Role::Client), server);
    p.advance_to(15);
    p.send(End::Client, OpCode::Binary, b"x");
    p.drive();
    assert_eq!(p.server.conn.poll_timeout(&p.server.cfg), Some(35));
    p.advance_to(34);
    assert!(p.server.actions.is_empty());
    p.advance_to(35);
    assert_eq!(p.server.actions, vec![TimeoutAction::IdleTimeout]);
    assert_eq!(&p.server.sent[0].bytes[..], &[0x88, 0x02, 0x0f, 0xa3]);
    assert_eq!(p.server.conn.close_code(), Some(CLOSE_IDLE_TIMEOUT));
    assert_eq!(
        p.server.closed_events(),
        vec![(CLOSE_IDLE_TIMEOUT, Bytes::new(), Side::Local, false)]
    );
    // The client got the close and answered it like any other.
    assert_eq!(
        p.client.closed_events(),
        vec![(CLOSE_IDLE_TIMEOUT, Bytes::new(), Side::Peer, true)]
    );
}

#[test]
fn no_close_reply_within_the_close_timeout_gives_up() {
    let server = ConnectionConfig {
        close_timeout: 30,
        ..cfg(Role::Server)
    };
    let mut p = Pair::with(cfg(Role::Client), server);
    p.client.reading = false;
    p.advance_to(5);
    p.close(End::Server, CloseCode::NORMAL, "bye");
    p.drive();
    assert_eq!(p.server.conn.poll_timeout(&p.server.cfg), Some(35));
    p.advance_to(34);
    assert!(p.server.actions.is_empty());
    assert_eq!(p.server.conn.state(), State::Closing);
    p.advance_to(35);
    assert_eq!(p.server.actions, vec![TimeoutAction::CloseTimeout]);
    assert_eq!(p.server.conn.state(), State::Closed { close_tcp: true });
    assert_eq!(
        p.server.closed_events(),
        vec![(
            CloseCode::NORMAL,
            Bytes::from_static(b"bye"),
            Side::Local,
            false
        )]
    );
    let s = &mut p.server;
    assert!(s.conn.poll_transmit(&s.cfg, true, None).is_none());
    assert_eq!(s.conn.poll_timeout(&s.cfg), None);
    assert_eq!(s.sent.len(), 1);
}

#[test]
fn a_client_waits_for_the_servers_fin_until_the_close_timeout() {
    let client = ConnectionConfig {
        close_timeout: 20,
        ..cfg(Role::Client)
    };
    let mut p = Pair::with(client, cfg(Role::Server));
    p.server.closes_tcp = false;
    p.close(End::Client, CloseCode::NORMAL, "");
    p.drive();
    assert_eq!(p.client.conn.state(), State::Closed { close_tcp: false });
    assert!(!p.client.tcp_closed);
    p.advance_to(20);
    assert_eq!(p.client.actions, vec![TimeoutAction::CloseTimeout]);
    assert_eq!(p.first_tcp_close, Some(End::Client));
    assert_eq!(p.client.closed_events().len(), 1, "reported once");
}

// ---------------------------------------------------------------------------------------------
// Ping floods: one held pong, the newest.

#[test]
fn a_ping_flood_holds_one_pong_the_last_and_memory_stays_flat() {
    const PINGS: u32 = 100_000;
    let cfg = cfg(Role::Server);
    let mut conn = Connection::new(0);
    let mut scratch = cfg.decoder();
    let mut wire = BytesMut::new();
    let mut enc = Encoder::client(XorShift(99));
    for i in 0..PINGS {
        enc.encode(OpCode::Ping, &i.to_be_bytes(), &mut wire);
    }
    // The read buffer has room for it all, so feeding it allocates nothing.
    let mut rbuf = BytesMut::with_capacity(wire.len());
    let mut fed = 0;
    let mut baseline = None;
    while fed < wire.len() {
        let end = (fed + 4093).min(wire.len()); // pieces that cut frames
        rbuf.extend_from_slice(&wire[fed..end]);
        fed = end;
        // Each ping is reported so a driver can write its pong; the slot stays busy.
        loop {
            match conn.poll_event(&cfg, &mut scratch, &mut rbuf, 1) {
                Ok(Some(Event::Ping)) => assert!(
                    conn.poll_transmit(&cfg, false, None).is_none(),
                    "the slot is busy"
                ),
                Ok(None) => break,
                other => panic!("pings produce only Ping events, got {other:?}"),
            }
        }
        // Once a pong is held, the connection's memory is what it will ever be.
        if baseline.is_none() && conn.held_pong().is_some() && !conn.owns_decoder() {
            baseline = Some(heap().1);
        }
    }
    let grown = heap().1 - baseline.expect("a pong was held");
    assert!(grown <= 0, "memory grew by {grown} bytes during the flood");
    assert_eq!(conn.held_pong(), Some(&(PINGS - 1).to_be_bytes()[..]));
    assert_eq!(conn.pongs_superseded(), PINGS - 1);
    assert!(!conn.owns_decoder());
    // The slot frees up: exactly one pong goes out, the last ping's.
    let pong = conn.poll_transmit(&cfg, true, None).expect("the held pong");
    assert_eq!(pong.opcode, OpCode::Pong);
    assert!(pong.urgent);
    let mut expected = vec![0x8a, 0x04];
    expected.extend_from_slice(&(PINGS - 1).to_be_bytes());
    assert_eq!(&pong.bytes[..], &expected[..]);
    assert!(conn.poll_transmit(&cfg, true, None).is_none());
    assert!(conn.held_pong().is_none());
}

#[test]
fn superseding_a_held_pong_allocates_nothing() {
    let cfg = cfg(Role::Server);
    let mut conn = Connection::new(0);
    let mut scratch = cfg.decoder();
    let mut enc = Encoder::client(XorShift(3));
    let mut rbuf = BytesMut::new();
    for i in 0..1000u32 {
        enc.encode(OpCode::Ping, &[i as u8; 125], &mut rbuf);
    }
    // The first ping boxes the held pong (and the buffer becomes shared); the rest replace it.
    let before = heap().0;
    let mut pings = 0;
    while let Ok(Some(Event::Ping)) = conn.poll_event(&cfg, &mut scratch, &mut rbuf, 1) {
        pings += 1;
    }
    assert_eq!(pings, 1000);
    let allocs = heap().0 - before;
    assert!(allocs <= 2, "{allocs} allocations for 1000 pings");
    assert_eq!(conn.held_pong(), Some(&[231u8; 125][..]));
    assert_eq!(conn.pongs_superseded(), 999);
}

#[test]
fn a_held_pong_goes_out_once_the_slot_frees_up() {
    let mut p = Pair::new();
    p.server.slot_free = false;
    for payload in [&b"one"[..], b"two", b"three"] {
        p.client
            .encoder
            .encode(OpCode::Ping, payload, &mut p.server.inbox);
    }
    p.drive();
    assert!(p.server.sent.is_empty());
    assert_eq!(p.server.conn.held_pong(), Some(&b"three"[..]));
    assert_eq!(p.server.conn.pongs_superseded(), 2);
    p.server.slot_free = true;
    p.drive();
    assert_eq!(p.server.sent_opcodes(), vec![OpCode::Pong]);
    assert_eq!(
        p.client.events,
        vec![Event::Pong(Bytes::from_static(b"three"))]
    );
    // A close drops a pong still held.
    p.server.slot_free = false;
    p.client
        .encoder
        .encode(OpCode::Ping, b"four", &mut p.server.inbox);
    p.drive();
    assert!(p.server.conn.held_pong().is_some());
    p.close(End::Server, CloseCode::NORMAL, "");
    assert!(p.server.conn.held_pong().is_none());
    p.drive();
    assert_eq!(p.server.sent_opcodes(), vec![OpCode::Pong, OpCode::Close]);
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate.

#[test]
fn permessage_deflate_works_both_ways() {
    let params = DeflateParams::default();
    let mut p = Pair::new();
    for end in [End::Client, End::Server] {
        let (this, _) = p.ends(end);
        this.encoder.set_deflate(&params, 6, 0);
        this.conn.set_deflate(&this.cfg, &params);
        assert!(
            this.conn.owns_decoder(),
            "the inflater's context is the connection's"
        );
    }
    let long: String = (0..5000)
        .map(|i| format!("line {i} of the log\n"))
        .collect();
    let messages = ["hello hello hello hello", long.as_str(), "", "hello again"];
    for m in messages {
        p.send(End::Client, OpCode::Text, m.as_bytes());
    }
    assert_ne!(p.server.inbox[0] & 0x40, 0, "RSV1: compressed");
    p.drive();
    let got = p.server.messages();
    assert_eq!(got, messages.iter().map(|m| text(m)).collect::<Vec<_>>());
    for m in &got {
        p.send(End::Server, OpCode::Text, m.payload());
    }
    assert!(
        p.client.inbox.len() < long.len() / 4,
        "compressed on the wire"
    );
    p.drive();
    assert_eq!(p.client.messages(), got);
    assert!(p.client.conn.owns_decoder() && p.server.conn.owns_decoder());
    // Control frames are never compressed; the handshake ends as without deflate.
    p.close(End::Client, CloseCode::NORMAL, "done");
    p.drive();
    assert_eq!(
        p.server.closed_events(),
        vec![(
            CloseCode::NORMAL,
            Bytes::from_static(b"done"),
            Side::Peer,
            true
        )]
    );
    assert!(!p.client.conn.owns_decoder() && !p.server.conn.owns_decoder());
    assert_eq!(p.first_tcp_close, Some(End::Server));
}

// ---------------------------------------------------------------------------------------------
// Decoder lending.

#[test]
fn only_a_connection_mid_message_owns_a_decoder() {
    let cfg = cfg(Role::Server);
    let mut scratch = cfg.decoder();
    let mut conn = Connection::new(0);
    let mut rbuf = BytesMut::new();
    assert!(!conn.owns_decoder(), "an idle connection owns no decoder");

    // A whole message: the scratch does it and stays with the driver.
    rbuf.extend_from_slice(&client_frame(OpCode::Text, b"whole"));
    assert_eq!(
        conn.poll_event(&cfg, &mut scratch, &mut rbuf, 1),
        Ok(Some(Event::Message(text("whole"))))
    );
    assert!(!conn.owns_decoder());

    // Half a frame: the connection takes the scratch, the driver gets a fresh one.
    let frame = client_frame(OpCode::Binary, &[9; 200]);
    rbuf.extend_from_slice(&frame[..100]);
    assert_eq!(conn.poll_event(&cfg, &mut scratch, &mut rbuf, 2), Ok(None));
    assert!(
        conn.owns_decoder(),
        "mid-message, the connection owns the decoder"
    );
    assert!(scratch.is_idle(), "the driver's scratch is idle again");

    // Meanwhile another connection decodes with the same scratch.
    let mut other = Connection::new(0);
    let mut other_buf = client_frame(OpCode::Text, b"between");
    assert_eq!(
        other.poll_event(&cfg, &mut scratch, &mut other_buf, 2),
        Ok(Some(Event::Message(text("between"))))
    );

    // The rest: the message comes out and the decoder is given up.
    rbuf.extend_from_slice(&frame[100..]);
    assert_eq!(
        conn.poll_event(&cfg, &mut scratch, &mut rbuf, 3),
        Ok(Some(Event::Message(Message::Binary(Bytes::from(vec![
            9;
            200
        ])))))
    );
    assert!(
        !conn.owns_decoder(),
        "given back once the message is complete"
    );

    // A fragmented message: owned between its frames, given up after the last.
    let mut enc = Encoder::client(XorShift(5));
    enc.encode_fragment(OpCode::Text, b"frag", false, &mut rbuf);
    assert_eq!(conn.poll_event(&cfg, &mut scratch, &mut rbuf, 4), Ok(None));
    assert!(conn.owns_decoder());
    enc.encode(OpCode::Ping, b"in between", &mut rbuf);
    enc.encode_fragment(OpCode::Continuation, b"ments", true, &mut rbuf);
    assert_eq!(
        conn.poll_event(&cfg, &mut scratch, &mut rbuf, 5),
        Ok(Some(Event::Ping))
    );
    assert_eq!(
        conn.poll_event(&cfg, &mut scratch, &mut rbuf, 5),
        Ok(Some(Event::Message(text("fragments"))))
    );
    assert!(!conn.owns_decoder());
    assert_eq!(conn.held_pong(), Some(&b"in between"[..]));

    // A connection that closes mid-message gives its decoder up too.
    let frame = client_frame(OpCode::Binary, &[1; 50]);
    rbuf.extend_from_slice(&frame[..10]);
    assert_eq!(conn.poll_event(&cfg, &mut scratch, &mut rbuf, 6), Ok(None));
    assert!(conn.owns_decoder());
    conn.handle_transport_closed();
    assert!(!conn.owns_decoder());
}

#[test]
fn the_connection_adds_no_allocation_to_decoding() {
    let cfg = cfg(Role::Server);
    let mut wire = BytesMut::new();
    let mut enc = Encoder::client(XorShift(11));
    for i in 0..1000u32 {
        enc.encode(
            OpCode::Text,
            format!("message number {i}").as_bytes(),
            &mut wire,
        );
    }
    // The bare decoder on the same bytes.
    let mut bare = cfg.decoder();
    let mut buf = wire.clone();
    let before = heap().0;
    let mut n = 0;
    while let Some(m) = bare.decode(&mut buf).unwrap() {
        n += m.payload().len();
    }
    let bare_allocs = heap().0 - before;
    // Through an idle connection and the scratch.
    let mut scratch = cfg.decoder();
    let mut conn = Connection::new(0);
    let mut buf = wire.clone();
    let before = heap().0;
    let mut m = 0;
    while let Some(Event::Message(msg)) = conn.poll_event(&cfg, &mut scratch, &mut buf, 1).unwrap()
    {
        m += msg.payload().len();
    }
    assert!(conn.poll_transmit(&cfg, true, None).is_none());
    let _ = conn.poll_timeout(&cfg);
    let conn_allocs = heap().0 - before;
    assert_eq!(m, n);
    assert_eq!(
        conn_allocs, bare_allocs,
        "1000 messages: no allocation of its own"
    );
    assert!(
        conn_allocs <= 1,
        "{conn_allocs} allocations for 1000 messages"
    );
}

#[test]
fn a_connection_fits_in_48_bytes() {
    let size = std::mem::size_of::<Connection>();
    eprintln!(
        "Connection {size} B; Decoder {} B only mid-message",
        std::mem::size_of::<Decoder>()
    );
    assert!(size <= 48, "Connection grew to {size} bytes");
}

// ---------------------------------------------------------------------------------------------
// The fuzz entry, on pseudo-random and hand-made sessions.

#[test]
fn the_fuzz_entry_holds_on_pseudo_random_sessions() {
    let mut rng = XorShift(0xdead_beef);
    let mut data = Vec::new();
    for round in 0..3000 {
        let len = (rng.next_key()[0] as usize) * 3;
        data.clear();
        while data.len() < len {
            data.extend_from_slice(&rng.next_key());
        }
        if round % 2 == 0 {
            // Bias towards synthesized frames, which reach deep states sooner.
            for (i, b) in data.iter_mut().enumerate().skip(8) {
                if i % 7 == 0 {
                    *b = 3;
                }
            }
        }
        fuzzing::connection_stream(&data);
    }
    fuzzing::connection_stream(&[]);
    fuzzing::connection_stream(&[0xff; 64]);
    fuzzing::connection_stream(&[0; 64]);
}

/// A session description that mostly follows the protocol: generous limits, then
/// well-formed frames (text is ASCII), reads, writes with the slot free or busy, time steps, and
/// now and then a close or a raw byte.
fn structured_session(rng: &mut XorShift) -> Vec<u8> {
    let r = rng.next_key();
    let setup = (r[0] & 0x0f) | 0x70; // deflate, heartbeat, idle, takeover chosen at random
    let mut data = vec![setup, 255, 255, 7, 40, 20, 30, 60];
    let ops = 20 + r[1] as usize / 2;
    for _ in 0..ops {
        let r = rng.next_key();
        match r[0] % 16 {
            0..=6 => {
                let spec = match r[1] % 16 {
                    0..=4 => 0x07, // compressed text (plain text without deflate)
                    5 | 6 => 0x06,
                    7 | 8 => 0x00,
                    9 | 10 => 0x03,
                    11 => 0x04,
                    12 => 0x02, // a continuation: fine after an unfinished frame only
                    _ => 0x11,  // binary, unfinished: continued or a 1002
                };
                let len = r[2] % 90;
                data.extend_from_slice(&[3, spec, len]);
                data.extend((0..len).map(|i| b'a' + (i % 26)));
                data.extend_from_slice(&rng.next_key());
            }
            7..=9 => data.push(7),
            10 | 11 => data.push(6 | (r[1] & 0x80)),
            12 | 13 => data.extend_from_slice(&[4, r[1] % 8]),
            14 => data.extend_from_slice(&[5, r[1], 3, b'b', b'y', b'e']),
            _ if r[2] < 32 => data.extend_from_slice(&[0, 1, r[1]]), // a stray byte
            _ => data.push(7),
        }
    }
    data
}

#[test]
fn the_fuzz_entry_holds_on_protocol_like_sessions() {
    let mut rng = XorShift(0x0bad_cafe);
    for _ in 0..1500 {
        fuzzing::connection_stream(&structured_session(&mut rng));
    }
}

#[test]
fn the_fuzz_entry_runs_a_whole_compressed_session() {
    // setup: deflate, 15-bit window; generous limits; then text frames, a ping, a close.
    let mut data = vec![0x71, 255, 255, 7, 0, 0, 10];
    for _ in 0..4 {
        data.extend_from_slice(&[3, 0x07, 60]); // a compressed text frame of 60 bytes
        data.extend_from_slice(&[b'a'; 60]);
        data.extend_from_slice(&[1, 2, 3, 4]); // its mask key
        data.push(7); // decode
    }
    data.extend_from_slice(&[3, 0x03, 4, b'p', b'i', b'n', b'g', 9, 9, 9, 9, 7, 6 | 0x80]);
    data.extend_from_slice(&[3, 0x05, 3, b'b', b'y', b'e', 1, 1, 1, 1, 7, 6 | 0x80]);
    fuzzing::connection_stream(&data);
}
