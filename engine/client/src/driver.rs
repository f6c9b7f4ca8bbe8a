//! The connection's task: it owns the socket and the sans-IO [`Connection`], and drives it in
//! the order the protocol crate's module docs give (bytes in → events, then transmits, then
//! timers; the end once closed and flushed).
//!
//! One poll loop does everything, so the task needs no second task and no select: each pass
//! (1) syncs with the [`Pipe`] (hands over received messages, takes messages to send and a
//! close request, publishes how many bytes it holds), (2) runs due timers, (3) pulls control
//! frames, (4) writes, (5) reads and decodes while the read queue has room. It returns
//! `Pending` only after a pass that changed nothing, with a waker registered on every source
//! it waits for: the socket (read and/or write), the timer and the pipe.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use edge_ws_protocol::connection::{
    Connection, ConnectionConfig, Event, Side, State as ConnState, TimeoutAction,
};
use edge_ws_protocol::{CloseCode, Decoder, DecoderConfig, Encoder, OpCode, Role};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::error::Error;
use crate::handshake::Established;
use crate::keys::MaskKeys;
use crate::message::{CloseInfo, Message};
use crate::pipe::Pipe;
use crate::settings::Settings;

/// One tick of the connection's clock. 10 ms keeps timers fine enough for tests and keeps
/// the `u32` tick count from saturating for 497 days.
pub(crate) const TICK_MS: u64 = 10;

/// Messages are taken from the pipe and encoded while less than this is waiting to be
/// written, so the write queue's limit, not the encoder, holds the application's bytes.
const BATCH: usize = 64 << 10;

/// Free space kept in the read buffer before a read.
const READ_CHUNK: usize = 64 << 10;

/// Passes of the loop per poll before the task yields to others.
const PASSES: usize = 64;

/// Duration → ticks, rounded up, at least 1.
pub(crate) fn ticks(d: Duration) -> u32 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    u32::try_from(ms.div_ceil(TICK_MS))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The tag that starts the payload of an application ping (`Sender::ping`), before its
/// number.
const PING_TAG: &[u8; 4] = b"ewsp";

/// The payload of application ping `seq`: the tag, then the number (big-endian).
fn ping_payload(seq: u64) -> [u8; 12] {
    let mut p = [0; 12];
    p[..4].copy_from_slice(PING_TAG);
    p[4..].copy_from_slice(&seq.to_be_bytes());
    p
}

/// The number of an application ping answered by a pong with this payload.
fn parse_ping_payload(p: &[u8]) -> Option<u64> {
    if p.len() != 12 || &p[..4] != PING_TAG {
        return None;
    }
    Some(u64::from_be_bytes(p[4..].try_into().ok()?))
}

/// How a connection ended, for the spawner (a plain connection) or the supervisor
/// (reconnecting).
#[derive(Debug)]
pub(crate) struct End {
    pub(crate) close: CloseInfo,
    /// `None`: a clean end (a completed close handshake).
    pub(crate) error: Option<Error>,
    /// The application asked for the close (or dropped every handle).
    pub(crate) local: bool,
}

/// Room left in the read queue, as of the last sync.
#[derive(Debug, Clone, Copy)]
struct Room {
    messages: usize,
    bytes: usize,
}

impl Room {
    fn is_empty(&self) -> bool {
        self.messages == 0 || self.bytes == 0
    }

    fn take(&mut self, len: usize) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(len);
    }
}

pub(crate) struct Driver {
    stream: crate::stream::Stream,
    conn: Connection,
    cfg: ConnectionConfig,
    scratch: Decoder,
    encoder: Encoder,
    keys: MaskKeys,
    pipe: Arc<Pipe>,
    /// Reconnecting client: the pipe outlives this connection, so sends are not refused when
    /// it closes (they wait for the next one).
    persistent: bool,
    start: Instant,
    sleep: Pin<Box<Sleep>>,
    armed: Option<u32>,

    rbuf: BytesMut,
    /// Encoded frames not yet handed to `cur`, and how many data messages they hold.
    wbuf: BytesMut,
    wbuf_msgs: u64,
    /// The bytes being written, and how many data messages they hold.
    cur: Bytes,
    cur_msgs: u64,
    /// The control slot: a pong or ping written at the next frame boundary.
    urgent: Option<Bytes>,

    /// Decoded messages not yet handed to the pipe.
    incoming: VecDeque<Message>,
    incoming_bytes: usize,
    room: Room,

    close_info: Option<CloseInfo>,
    error: Option<Error>,
    transport_gone: bool,
    local_close: bool,
    abort: bool,
    /// Messages dropped unwritten, pongs and pings handed to the socket; published at the
    /// next sync.
    lost: u64,
    pongs: u64,
    pings: u64,
    pongs_base: u64,
    /// The highest application ping number answered by a pong, not yet published.
    pong_ack: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("state", &self.conn.state())
            .field("rbuf", &self.rbuf.len())
            .field("wbuf", &self.wbuf.len())
            .field("cur", &self.cur.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub(crate) fn new(s: &Settings, est: Established, pipe: Arc<Pipe>, persistent: bool) -> Self {
        let cfg = ConnectionConfig {
            role: Role::Client,
            limits: DecoderConfig {
                max_frame_size: s.max_frame_size,
                max_message_size: s.max_message_size,
                max_fragments: s.max_fragments,
            },
            heartbeat_interval: s.ping_interval.map(ticks),
            heartbeat_timeout: ticks(s.pong_timeout),
            idle_timeout: None,
            close_timeout: ticks(s.close_timeout),
        };
        let (encoder_keys, keys) = est.keys;
        let mut encoder = Encoder::client(encoder_keys);
        let mut conn = Connection::new(0);
        if let (Some(params), Some(dc)) = (&est.deflate, &s.deflate) {
            encoder.set_deflate(params, dc.level, dc.threshold);
            conn.set_deflate(&cfg, params);
        }
        let pongs_base = pipe.lock().stats.pongs_superseded;
        let start = Instant::now();
        Driver {
            stream: est.stream,
            conn,
            scratch: cfg.decoder(),
            cfg,
            encoder,
            keys,
            pipe,
            persistent,
            start,
            sleep: Box::pin(tokio::time::sleep_until(start)),
            armed: None,
            rbuf: est.leftover,
            wbuf: BytesMut::new(),
            wbuf_msgs: 0,
            cur: Bytes::new(),
            cur_msgs: 0,
            urgent: None,
            incoming: VecDeque::new(),
            incoming_bytes: 0,
            room: Room {
                messages: 0,
                bytes: 0,
            },
            close_info: None,
            error: None,
            transport_gone: false,
            local_close: false,
            abort: false,
            lost: 0,
            pongs: 0,
            pings: 0,
            pongs_base,
            pong_ack: 0,
        }
    }

    /// Runs the connection to its end; the socket is closed when this returns.
    pub(crate) async fn run(mut self) -> End {
        std::future::poll_fn(|cx| self.poll_drive(cx)).await;
        if !self.transport_gone && !self.abort {
            // Our side closes TCP (after a failure, a timeout, or a server that closed
            // first): send the FIN now rather than wait.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
        }
        self.sync_final();
        let close = self.close_info.take().unwrap_or(CloseInfo {
            code: CloseCode::ABNORMAL,
            reason: String::new(),
            initiated_by: Side::Local,
            clean: false,
        });
        let error = match self.error.take() {
            Some(e) => Some(e),
            None if !close.clean => Some(Error::ConnectionLost),
            None => None,
        };
        End {
            close,
            error,
            local: self.local_close,
        }
    }

    fn now(&self) -> u32 {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        u32::try_from(ms / TICK_MS).unwrap_or(u32::MAX)
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..PASSES {
            let now = self.now();
            let mut progress = self.sync(cx, now);
            if self
                .conn
                .poll_timeout(&self.cfg)
                .is_some_and(|deadline| now >= deadline)
            {
                progress |= self.on_timeout(now);
            }
            if self.abort {
                return Poll::Ready(());
            }
            let _ = self.pull_transmits();
            if !self.transport_gone {
                match self.write(cx) {
                    Ok(p) => progress |= p,
                    Err(e) => {
                        self.transport_ended(Some(e));
                        progress = true;
                    }
                }
            }
            progress |= self.read(cx, now);
            // Decoding may have queued a pong or a close (a reply, a protocol error's): pull it
            // before deciding that everything is flushed.
            progress |= self.pull_transmits();
            if self.finished() {
                return Poll::Ready(());
            }
            if !progress {
                match self.conn.poll_timeout(&self.cfg) {
                    Some(deadline) => {
                        if self.armed != Some(deadline) {
                            let at =
                                self.start + Duration::from_millis(u64::from(deadline) * TICK_MS);
                            self.sleep.as_mut().reset(at);
                            self.armed = Some(deadline);
                        }
                        if self.sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        // Due already: go round again.
                    }
                    None => return Poll::Pending,
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Bytes this task holds for writing.
    fn held(&self) -> usize {
        self.wbuf.len() + self.cur.len() + self.urgent.as_ref().map_or(0, Bytes::len)
    }

    /// One critical section with the pipe; then encodes what it took.
    fn sync(&mut self, cx: &Context<'_>, now: u32) -> bool {
        let mut progress = false;
        let mut wakers: Vec<Waker> = Vec::new();
        let mut taken: Vec<Message> = Vec::new();
        let mut close = None;
        let mut ping = None;
        {
            let mut st = self.pipe.lock();
            match &st.driver_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.driver_waker = Some(cx.waker().clone()),
            }
            // Received messages → the application.
            if !self.incoming.is_empty() {
                progress = true;
                let n = self.incoming.len() as u64;
                if st.receiver {
                    st.in_bytes += self.incoming_bytes;
                    st.stats.messages_received += n;
                    st.inq.extend(self.incoming.drain(..));
                    wakers.extend(st.take_recv_waker());
                } else {
                    st.stats.dropped_unread += n;
                    self.incoming.clear();
                }
                self.incoming_bytes = 0;
            }
            self.room = if st.receiver {
                Room {
                    messages: self.pipe.read_messages.saturating_sub(st.inq.len()),
                    bytes: self.pipe.read_bytes.saturating_sub(st.in_bytes),
                }
            } else {
                Room {
                    messages: usize::MAX,
                    bytes: usize::MAX,
                }
            };
            st.read_blocked = self.room.is_empty();
            // A close request, or every handle gone: close normally.
            if self.conn.can_send() && !self.local_close {
                if let Some(req) = st.close_request.take() {
                    close = Some(req);
                } else if st.abandoned() {
                    close = Some((CloseCode::NORMAL, String::new()));
                }
            }
            // Application pings: one ping carries the newest number (its pong answers every
            // earlier one too).
            if self.conn.can_send() && st.pings_taken < st.pings_requested {
                st.pings_taken = st.pings_requested;
                ping = Some(st.pings_requested);
            }
            if self.pong_ack > st.pongs_matched {
                st.pong_matched(self.pong_ack, &mut wakers);
                progress = true;
            }
            // Messages to encode: a batch, or all of them ahead of a close.
            let mut taken_bytes = 0;
            if self.conn.can_send() {
                while close.is_some() || self.wbuf.len() + taken_bytes < BATCH {
                    let Some(m) = st.out.pop_front() else { break };
                    st.out_bytes -= m.len();
                    taken_bytes += m.len();
                    taken.push(m);
                }
                progress |= !taken.is_empty();
            } else if !self.persistent && st.send_error.is_none() {
                st.send_error = Some(Error::Closed);
            }
            st.driver_bytes = self.held() + taken_bytes;
            st.stats.messages_sent += taken.len() as u64;
            st.stats.lost_in_flight += std::mem::take(&mut self.lost);
            st.stats.pongs_sent += std::mem::take(&mut self.pongs);
            st.stats.pings_sent += std::mem::take(&mut self.pings);
            st.stats.pongs_superseded = self.pongs_base + u64::from(self.conn.pongs_superseded());
            st.take_writer_wakers(self.pipe.write_limit, &mut wakers);
        }
        for w in wakers {
            w.wake();
        }
        if let Some(seq) = ping {
            // After the data queued before it, so its pong also says that data was read.
            self.encoder
                .encode(OpCode::Ping, &ping_payload(seq), &mut self.wbuf);
            self.pings += 1;
            progress = true;
        }
        for m in taken {
            let (opcode, payload) = match &m {
                Message::Text(t) => (OpCode::Text, t.as_bytes()),
                Message::Binary(b) => (OpCode::Binary, &b[..]),
            };
            self.encoder.encode(opcode, payload, &mut self.wbuf);
            self.wbuf_msgs += 1;
        }
        if let Some((code, reason)) = close {
            self.local_close = true;
            let _ = self.conn.close(&self.cfg, code, &reason, now);
            progress = true;
        }
        progress
    }

    /// The last counters, and how the connection ended, into the pipe.
    fn sync_final(&mut self) {
        let mut st = self.pipe.lock();
        st.stats.lost_in_flight += std::mem::take(&mut self.lost);
        st.stats.pongs_sent += std::mem::take(&mut self.pongs);
        st.stats.pings_sent += std::mem::take(&mut self.pings);
        st.stats.pongs_superseded = self.pongs_base + u64::from(self.conn.pongs_superseded());
        st.driver_bytes = 0;
        if !self.incoming.is_empty() {
            let n = self.incoming.len() as u64;
            if st.receiver {
                st.in_bytes += self.incoming_bytes;
                st.stats.messages_received += n;
                st.inq.extend(self.incoming.drain(..));
            } else {
                st.stats.dropped_unread += n;
            }
        }
        st.close_info = self.close_info.clone();
        st.driver_waker = None;
        let w = st.take_recv_waker();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
    }

    fn on_timeout(&mut self, now: u32) -> bool {
        match self.conn.handle_timeout(&self.cfg, now) {
            None => false,
            Some(TimeoutAction::Ping) => true,
            Some(action @ (TimeoutAction::HeartbeatTimeout | TimeoutAction::IdleTimeout)) => {
                if action == TimeoutAction::HeartbeatTimeout {
                    self.error.get_or_insert(Error::PongTimeout);
                }
                // The server is presumably not reading: drop what is not being written yet
                // (the frame in `cur` stays whole) so the close frame goes next.
                self.lost += self.wbuf_msgs;
                self.wbuf.clear();
                self.wbuf_msgs = 0;
                true
            }
            Some(TimeoutAction::CloseTimeout) => {
                self.collect_closed();
                if !self.close_info.as_ref().is_some_and(|c| c.clean) {
                    self.error.get_or_insert(Error::CloseTimeout);
                }
                self.drop_output();
                self.abort = true;
                true
            }
        }
    }

    /// Takes a pending [`Event::Closed`] (the state is closed: only reports remain).
    fn collect_closed(&mut self) {
        let now = self.now();
        while let Ok(Some(event)) =
            self.conn
                .poll_event(&self.cfg, &mut self.scratch, &mut self.rbuf, now)
        {
            self.on_event(event);
        }
    }

    /// Moves the connection's control frames to the write queues; whether there were any.
    fn pull_transmits(&mut self) -> bool {
        let mut any = false;
        while let Some(t) =
            self.conn
                .poll_transmit(&self.cfg, self.urgent.is_none(), Some(&mut self.keys))
        {
            match t.opcode {
                OpCode::Pong => self.pongs += 1,
                OpCode::Ping => self.pings += 1,
                _ => {}
            }
            if t.urgent {
                self.urgent = Some(t.bytes);
            } else {
                self.wbuf.extend_from_slice(&t.bytes);
            }
            any = true;
        }
        any
    }

    /// Writes until the socket would block or nothing is left; whether anything was written.
    fn write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        loop {
            if self.cur.is_empty() {
                self.cur_msgs = 0;
                if let Some(u) = self.urgent.take() {
                    // At a frame boundary: the pong or ping goes ahead of queued data.
                    self.cur = u;
                } else if !self.wbuf.is_empty() {
                    self.cur = self.wbuf.split().freeze();
                    self.cur_msgs = std::mem::take(&mut self.wbuf_msgs);
                } else {
                    // Nothing left: make sure it left the process (TLS keeps records until
                    // flushed; for TCP this is a no-op).
                    return match Pin::new(&mut self.stream).poll_flush(cx) {
                        Poll::Ready(Err(e)) => Err(e),
                        _ => Ok(progress),
                    };
                }
            }
            match Pin::new(&mut self.stream).poll_write(cx, &self.cur) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.cur.advance(n);
                    progress = true;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            }
        }
    }

    /// Decodes while the read queue has room, reading when more bytes are needed; whether
    /// anything happened.
    fn read(&mut self, cx: &mut Context<'_>, now: u32) -> bool {
        let mut progress = false;
        loop {
            // While open, stop when the application is not keeping up. Once closing or
            // closed only the close reply and the end remain (data is discarded), so go on.
            if self.conn.can_send() && self.room.is_empty() {
                return progress;
            }
            match self
                .conn
                .poll_event(&self.cfg, &mut self.scratch, &mut self.rbuf, now)
            {
                Ok(Some(event)) => {
                    // A ping (its pong is waiting) or a pong: go write before decoding on,
                    // so that a reading server gets a pong for every ping.
                    let control = !matches!(event, Event::Message(_) | Event::Closed { .. });
                    self.on_event(event);
                    if control {
                        return true;
                    }
                    progress = true;
                }
                Err(e) => {
                    progress = true;
                    self.error.get_or_insert(Error::Protocol(e));
                }
                Ok(None) => {
                    if self.transport_gone {
                        return progress;
                    }
                    if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                        self.rbuf.reserve(READ_CHUNK);
                    }
                    match self.stream.poll_read_into(cx, &mut self.rbuf) {
                        Poll::Pending => return progress,
                        Poll::Ready(Ok(0)) => {
                            self.transport_ended(None);
                            progress = true;
                        }
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Poll::Ready(Err(e)) => {
                            self.transport_ended(Some(e));
                            progress = true;
                        }
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message(m) => {
                if let Some(m) = Message::from_protocol(m) {
                    self.room.take(m.len());
                    self.incoming_bytes += m.len();
                    self.incoming.push_back(m);
                }
            }
            Event::Closed {
                code,
                reason,
                initiated_by,
                clean,
            } => {
                self.close_info = Some(CloseInfo {
                    code,
                    reason: String::from_utf8_lossy(&reason).into_owned(),
                    initiated_by,
                    clean,
                });
            }
            Event::Pong(payload) => {
                if let Some(seq) = parse_ping_payload(&payload) {
                    self.pong_ack = self.pong_ack.max(seq);
                }
            }
            // Pings need nothing here: `poll_transmit` hands over their pong.
            Event::Ping => {}
        }
    }

    /// EOF (`None`) or a read or write error: nothing more goes either way.
    fn transport_ended(&mut self, err: Option<io::Error>) {
        if self.transport_gone {
            return;
        }
        if let Some(e) = err {
            // After a completed close handshake a reset changes nothing.
            if !self.close_info.as_ref().is_some_and(|c| c.clean) {
                self.error.get_or_insert(Error::io(e));
            }
        }
        self.transport_gone = true;
        self.conn.handle_transport_closed();
        self.drop_output();
    }

    /// Nothing more will be written: what was not is counted as lost.
    fn drop_output(&mut self) {
        self.lost += self.wbuf_msgs
            + if self.cur.is_empty() {
                0
            } else {
                self.cur_msgs
            };
        self.wbuf = BytesMut::new();
        self.wbuf_msgs = 0;
        self.cur = Bytes::new();
        self.cur_msgs = 0;
        self.urgent = None;
    }

    /// Closed, the end reported, and either the socket gone or everything flushed and ours to
    /// close. A client after a clean close waits (reading) for the server to close TCP, until
    /// the close timeout.
    fn finished(&self) -> bool {
        if self.close_info.is_none() {
            return false;
        }
        if self.transport_gone {
            return true;
        }
        match self.conn.state() {
            ConnState::Closed { close_tcp } => {
                close_tcp && self.cur.is_empty() && self.wbuf.is_empty() && self.urgent.is_none()
            }
            _ => false,
        }
    }
}
