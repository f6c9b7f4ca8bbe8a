//! One core's connections and their output: the connection table, the write limits and the
//! slow-consumer policy, control frames under backpressure, the close paths, and fan-out
//! delivery with its cork. This is the one place that queues frames for a connection (every
//! send, reply and delivery goes through [`CoreState::send_frame`] or the cork), so it is the
//! one place that keeps the cork rule: corked deliveries go out before anything queued after
//! them.

mod sequencer;
pub(crate) use sequencer::{ConnFn, ConnFnBox};

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use edge_ws_protocol::connection::{Connection, ConnectionConfig};
use edge_ws_protocol::deflate::DeflateParams;
use edge_ws_protocol::frame::MAX_HEADER_LEN;
use edge_ws_protocol::handshake::Request;
use edge_ws_protocol::{CloseCode, Decoder, Encoder, FrameHeader, OpCode, ProtocolError};

use crate::config::{Config, SlowConsumerPolicy, CLOSE_SLOW_CONSUMER};
use crate::fanout::{concat_frames, ChannelShared, Cork, Outbox, Publish, PublishOptions, Target};
use crate::ids::ConnectionId;
use crate::metrics::{add, inc, max, CoreMetrics};
use crate::runtime::{ConnId, Io, Sent};
use crate::shared::Shared;
use crate::shared::{LaneItem, ReplyTo};

/// Why a send did not queue a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed, closing, or the id is stale.
    #[error("connection closed")]
    Closed,
    /// The connection's write buffer is over its limit; the message was dropped (and counted)
    /// or the connection is being closed, per the slow-consumer policy.
    #[error("slow consumer: write buffer full")]
    SlowConsumer,
    /// The id belongs to another core (use the `EngineHandle`).
    #[error("connection lives on another core")]
    OtherCore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the upgrade request.
    Handshake,
    /// WebSocket open.
    Open,
    /// We sent a close frame and wait for the peer's (or the deadline).
    Closing,
    /// Answered plain HTTP or sent our close reply: output flushes, then the socket closes.
    Finishing,
}

/// What only some connections need: compression state, channels, close details, a deferred
/// upgrade, an uninterned path. Boxed so that a plain idle connection pays 8 bytes for it.
#[derive(Default)]
pub(crate) struct Extra {
    /// Present only with permessage-deflate.
    pub(crate) encoder: Option<Box<Encoder>>,
    /// The agreed permessage-deflate parameters.
    pub(crate) deflate: Option<DeflateParams>,
    /// Channels this connection is subscribed to (left on close).
    pub(crate) channels: Vec<Arc<str>>,
    pub(crate) close_reason: Option<Box<str>>,
    /// A parsed upgrade request waiting for the handler's deferred decision.
    pub(crate) pending: Option<Box<(Request, usize)>>,
    /// Names kept per connection only in rare cases.
    pub(crate) names: Option<Box<Names>>,
    /// While the connection holds a pong it cannot write yet: since when its output has not
    /// moved (see [`CoreState::flush_pongs`]).
    pub(crate) pong_stall: Option<PongStall>,
    /// Reading is paused (backpressure from the application): received bytes wait in the
    /// read buffer undecoded, and the transport arms no receive.
    pub(crate) paused: bool,
}

/// Names a connection keeps for itself only in rare cases.
#[derive(Default)]
pub(crate) struct Names {
    /// The request path when the core's path table is full.
    pub(crate) path: Option<Box<str>>,
    /// The subprotocol, when the handler chose one outside the configured list.
    pub(crate) protocol: Option<Box<str>>,
}

/// How long a connection has held a pong it could not write (its [`Connection`] holds the pong
/// itself: at most one, the newest ping's).
#[derive(Clone, Copy)]
pub(crate) struct PongStall {
    /// Tick since which the connection's output has made no progress with a pong held back.
    pub(crate) since: u32,
    /// The connection's queued bytes at `since`: any change means the peer is reading.
    pub(crate) queued: usize,
}

/// A peer address in 20 bytes (a `SocketAddr` takes 32).
#[derive(Clone, Copy)]
pub(crate) struct PeerAddr {
    pub(crate) ip: [u8; 16],
    pub(crate) port: u16,
    pub(crate) v6: bool,
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => PeerAddr {
                ip: v4.ip().to_ipv6_mapped().octets(),
                port: v4.port(),
                v6: false,
            },
            SocketAddr::V6(v6) => PeerAddr {
                ip: v6.ip().octets(),
                port: v6.port(),
                v6: true,
            },
        }
    }
}

impl From<PeerAddr> for SocketAddr {
    fn from(p: PeerAddr) -> Self {
        let ip6 = std::net::Ipv6Addr::from(p.ip);
        match (p.v6, ip6.to_ipv4_mapped()) {
            (false, Some(v4)) => SocketAddr::from((v4, p.port)),
            _ => SocketAddr::from((ip6, p.port)),
        }
    }
}

/// No interned path: see `Extra::path`.
pub(crate) const NO_PATH: u16 = u16::MAX;

/// Most distinct request paths a core interns (beyond, paths are stored per connection).
pub(crate) const MAX_PATHS: usize = 1024;

/// One connection's WebSocket state. Kept small: an idle, uncompressed connection holds no
/// decoder, no encoder and no read buffer, only this (see `per_connection_state_stays_small`).
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) phase: Phase,
    /// The 101 was sent (so `on_close` is due).
    pub(crate) opened: bool,
    /// 1 + index into the configured subprotocols; 0 when none was agreed.
    pub(crate) protocol: u8,
    /// Index into the core's path table, or `NO_PATH`.
    pub(crate) path: u16,
    /// The close code to report; 0 when none yet.
    pub(crate) close_code: u16,
    /// The handshake deadline, or the flush deadline of a plain HTTP answer, in ticks.
    pub(crate) deadline: u32,
    pub(crate) peer: PeerAddr,
    /// Bytes received and not decoded yet; `None` while there are none, so an idle connection
    /// holds no buffer.
    pub(crate) rbuf: Option<Box<BytesMut>>,
    pub(crate) data: Option<Box<dyn Any>>,
    /// The WebSocket state machine: close handshake, pongs, heartbeat, idle and close
    /// deadlines, and a decoder of its own only while a message is in flight (or with
    /// permessage-deflate); otherwise it decodes with the core's shared one.
    pub(crate) ws: Connection,
    pub(crate) extra: Option<Box<Extra>>,
}

impl Conn {
    pub(crate) fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Whether reading is paused.
    #[inline]
    pub(crate) fn paused(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.paused)
    }

    pub(crate) fn channels(&self) -> &[Arc<str>] {
        self.extra.as_ref().map_or(&[], |e| &e.channels)
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer.into()
    }

    pub(crate) fn set_close(&mut self, code: CloseCode, reason: &str) {
        self.close_code = code.0;
        if !reason.is_empty() || self.extra.is_some() {
            self.extra_mut().close_reason = Some(reason.into());
        }
    }
}

/// What in-process subscribers of a channel without history get.
fn unsequenced(payload: &[u8], text: bool) -> crate::stream::Publication {
    crate::stream::Publication {
        offset: 0,
        timestamp_ms: crate::stream::now_ms(),
        kind: if text {
            crate::MessageKind::Text
        } else {
            crate::MessageKind::Binary
        },
        data: Bytes::copy_from_slice(payload),
    }
}

/// Everything a core owns besides the handler.
pub(crate) struct CoreState {
    pub(crate) core_index: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) conns: Vec<Option<Conn>>,
    pub(crate) open: usize,
    pub(crate) metrics: Arc<[CoreMetrics]>,
    pub(crate) start: Instant,
    pub(crate) now_tick: u32,
    pub(crate) ticks_per: TickSpans,
    pub(crate) last_scan: u32,
    pub(crate) draining: Option<u32>,
    pub(crate) out: Vec<u8>,
    /// Channels this core has met: local subscribers and the shared channel.
    pub(crate) channels: HashMap<Arc<str>, LocalChannel>,
    /// Spilled publishes waiting for room in a ring to another core.
    pub(crate) outbox: Outbox<LaneItem>,
    /// The streams this core owns (sequences and keeps).
    pub(crate) streams: HashMap<Arc<str>, sequencer::OwnedStream>,
    /// Local deliveries held back to batch them (see [`Cork`]).
    pub(crate) cork: Cork,
    /// Largest run a cork holds, in frame bytes.
    pub(crate) cork_max: usize,
    /// Per window size, a no-context-takeover compressor whose output every subscriber with
    /// that window and `server_no_context_takeover` can share.
    pub(crate) shared_encoders: HashMap<u8, Encoder>,
    pub(crate) scratch_ids: Vec<ConnId>,
    /// The decoder idle connections share (see `Conn::ws`).
    pub(crate) scratch_decoder: Decoder,
    /// A drained read buffer kept for the next connection that receives data, so that a
    /// receive allocates neither the box nor (once the messages cut from it are dropped) the
    /// bytes: see [`CoreState::recycle_rbuf`].
    pub(crate) spare_rbuf: Option<Box<BytesMut>>,
    /// What every connection's state machine is told (ticks, limits), one copy per core.
    pub(crate) ws_cfg: ConnectionConfig,
    /// Interned request paths.
    pub(crate) paths: Vec<Box<str>>,
    pub(crate) path_index: HashMap<Box<str>, u16>,
    /// Connections holding a pong they could not write, retried before each submit.
    pub(crate) pong_waiters: Vec<ConnId>,
    /// Connections whose reading resumed: what waits in their read buffer is decoded before
    /// the next submit.
    pub(crate) resumed: Vec<ConnId>,
}

pub(crate) struct LocalChannel {
    pub(crate) shared: Arc<ChannelShared>,
    pub(crate) subs: Vec<ConnId>,
    /// Subscribers held back until the stream owner's recovery answer arrives.
    pub(crate) pending: Vec<ConnId>,
}

/// Most publishes one core takes from its rings per wakeup before serving I/O again.
pub(crate) const DRAIN_BUDGET: usize = 1024;

/// Most frame bytes one corked run gathers (also at most a quarter of the write-buffer limit,
/// so a run alone never trips the slow-consumer check).
pub(crate) const CORK_MAX_BYTES: usize = 64 * 1024;

pub(crate) struct TickSpans {
    pub(crate) handshake: u32,
    pub(crate) heartbeat: Option<u32>,
    pub(crate) heartbeat_timeout: u32,
    pub(crate) idle: Option<u32>,
    pub(crate) close: u32,
    pub(crate) drain: u32,
    pub(crate) scan: u32,
}

/// The largest read buffer a core keeps as its spare.
const SPARE_RBUF_MAX: usize = 64 * 1024;

/// A data frame on its way to a connection's send queue.
enum Frame<'a> {
    /// Encoded already (shared, e.g. a broadcast frame), queued by reference count.
    Encoded(Bytes),
    /// A header and its payload, copied into the queue.
    Parts(&'a [u8], &'a [u8]),
    /// A header, copied, and its payload, queued by reference count.
    Framed(&'a [u8], Bytes),
}

/// A data message's payload on its way to [`CoreState::send_payload`]: borrowed bytes, bytes
/// held as `Bytes` (a large payload is then shared by reference count), or `Bytes` handed over
/// (a large payload moves into the queue). What [`crate::IntoOutgoing`] produces.
#[doc(hidden)]
#[derive(Debug)]
pub enum Payload<'a> {
    Slice(&'a [u8]),
    Shared(&'a Bytes),
    Owned(Bytes),
}

/// Payloads at least this long that the caller holds as [`Bytes`] (a received message sent
/// on, say) are queued by reference behind their header instead of copied: at this size the
/// copy costs more than the reference count and the second iovec (the send queue coalesces
/// only smaller buffers, `COALESCE_MAX` in the runtime).
const SEND_BY_REFERENCE_MIN: usize = 2048;

impl CoreState {
    pub(crate) fn m(&self) -> &CoreMetrics {
        &self.metrics[self.core_index]
    }

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.index())?.as_ref().filter(|c| c.id == id)
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.index())?
            .as_mut()
            .filter(|c| c.id == id)
    }

    /// Takes a drained read buffer back as the core's spare (if it has none and the buffer is
    /// not one a large message left behind); dropping it otherwise.
    #[inline]
    pub(crate) fn recycle_rbuf(spare: &mut Option<Box<BytesMut>>, rbuf: Box<BytesMut>) {
        if spare.is_none() && rbuf.capacity() <= SPARE_RBUF_MAX {
            *spare = Some(rbuf);
        }
    }

    /// Encodes and queues a data message, applying the slow-consumer policy.
    pub(crate) fn send_data(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        text: bool,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.send_payload(io, id, text, Payload::Slice(payload))
    }

    /// Encodes and queues a data message from any [`Payload`]: compressed when the
    /// connection compresses it, a large payload held as `Bytes` by reference behind its header,
    /// anything else copied into the send queue.
    pub(crate) fn send_payload(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        text: bool,
        source: Payload<'_>,
    ) -> Result<(), SendError> {
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        let payload: &[u8] = match &source {
            Payload::Slice(p) => p,
            Payload::Shared(b) => b,
            Payload::Owned(b) => b,
        };
        let conn = self.conn_mut(id).ok_or(SendError::Closed)?;
        if conn.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        let enc = conn.extra.as_mut().and_then(|e| e.encoder.as_mut());
        let compressed = match enc {
            Some(enc) if enc.compresses(payload.len()) => {
                let mut out = BytesMut::with_capacity(payload.len() / 2 + 16);
                enc.encode(opcode, payload, &mut out);
                Some(out.freeze())
            }
            _ => None,
        };
        let len = payload.len();
        add(&self.m().bytes_out, len as u64);
        if let Some(frame) = compressed {
            inc(&self.m().compressed_out);
            return self.send_frame(io, id, frame, 1);
        }
        // A small payload: header and payload copied straight into the connection's send
        // queue, no allocation of its own for the frame. A large one held as `Bytes`: queued
        // by reference behind its header.
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = FrameHeader::new(opcode, len as u64).encode(&mut header);
        let corked = !self.cork.is_empty();
        if corked {
            self.uncork(io);
        }
        let frame = match source {
            Payload::Shared(b) if len >= SEND_BY_REFERENCE_MIN => {
                Frame::Framed(&header[..n], b.clone())
            }
            Payload::Owned(b) if len >= SEND_BY_REFERENCE_MIN => Frame::Framed(&header[..n], b),
            Payload::Slice(p) => Frame::Parts(&header[..n], p),
            Payload::Shared(b) => Frame::Parts(&header[..n], b),
            Payload::Owned(ref b) => Frame::Parts(&header[..n], b),
        };
        match frame {
            // The common frame, copied: the connection was found open above and, with nothing
            // corked, nothing ran since, so the write limit and the queueing take one lookup.
            Frame::Parts(h, p) if !corked => {
                match io.send_parts_within(id, &[h, p], self.cfg.write_buffer_limit) {
                    Sent::Queued => {
                        add(&self.m().messages_out, 1);
                        Ok(())
                    }
                    Sent::OverLimit => Err(self.slow_consumer(io, id, 1)),
                    Sent::Closed => Err(SendError::Closed),
                }
            }
            frame => self.queue_output(io, id, frame, 1),
        }
    }

    /// Queues an encoded frame; `messages` is how many messages it counts as. Corked
    /// deliveries go first, so the frame never overtakes a publish made before it.
    pub(crate) fn send_frame(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        frame: Bytes,
        messages: u64,
    ) -> Result<(), SendError> {
        self.uncork(io);
        self.queue_frame(io, id, frame, messages)
    }

    /// [`CoreState::send_frame`] without flushing the cork.
    pub(crate) fn queue_frame(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        frame: Bytes,
        messages: u64,
    ) -> Result<(), SendError> {
        self.queue_output(io, id, Frame::Encoded(frame), messages)
    }

    /// [`CoreState::queue_frame`] for a frame either encoded or in parts.
    fn queue_output(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        frame: Frame<'_>,
        messages: u64,
    ) -> Result<(), SendError> {
        let Some(conn) = self.conn(id) else {
            inc(&self.m().sends_to_closed);
            return Err(SendError::Closed);
        };
        if conn.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        let len = match &frame {
            Frame::Encoded(b) => b.len(),
            Frame::Parts(h, p) => h.len() + p.len(),
            Frame::Framed(h, p) => h.len() + p.len(),
        };
        if self.over_write_limit(io, id, len) {
            return Err(self.slow_consumer(io, id, messages));
        }
        let queued = match frame {
            Frame::Encoded(b) => io.send(id, b),
            Frame::Parts(h, p) => io.send_parts(id, &[h, p]),
            Frame::Framed(h, p) => io.send_framed(id, h, p),
        };
        if !queued {
            return Err(SendError::Closed);
        }
        add(&self.m().messages_out, messages);
        Ok(())
    }

    /// The write-buffer rule: a frame is refused once `write_buffer_limit` bytes already wait
    /// behind the frame being written. The frame the kernel is writing never counts, and a
    /// frame of any size is accepted when nothing else waits, so a message within
    /// `max_message_size` is never refused for a client that keeps reading, whatever the
    /// limit. A connection so holds at most the frame in the kernel, the limit, and one frame.
    #[inline]
    pub(crate) fn over_write_limit(&self, io: &Io<'_>, id: ConnId, len: usize) -> bool {
        // The rule itself is the runtime's, which also applies it in `Io::send_parts_within`.
        io.over_write_limit(id, len, self.cfg.write_buffer_limit)
    }

    /// Writes the control frames `id`'s state machine has for it: pongs and heartbeat pings
    /// jump ahead of queued data (when the way is clear: while an earlier control frame still
    /// waits behind a send the kernel has not finished, the newest ping's pong is held, at most
    /// one, RFC 6455 §5.5.3) and pass the write limit like every other frame; a close frame
    /// goes after the data already queued, with the corked deliveries made before it. A held
    /// pong puts the connection on the list `flush_pongs` retries before each submit.
    pub(crate) fn flush_control(&mut self, io: &mut Io<'_>, id: ConnId) {
        let cfg = self.ws_cfg;
        let now = self.now_tick;
        loop {
            let slot_free = !io.urgent_blocked(id);
            let Some(conn) = self.conn_mut(id) else {
                return;
            };
            let Some(t) = conn.ws.poll_transmit(&cfg, slot_free, None) else {
                if conn.ws.held_pong().is_some() {
                    let extra = conn.extra_mut();
                    if extra.pong_stall.is_none() {
                        extra.pong_stall = Some(PongStall {
                            since: now,
                            queued: io.queued_bytes(id),
                        });
                        self.pong_waiters.push(id);
                    }
                }
                return;
            };
            if t.urgent {
                if self.over_write_limit(io, id, t.bytes.len()) {
                    self.slow_consumer(io, id, 0);
                    return;
                }
                io.send_urgent(id, t.bytes);
            } else {
                // Our close: publishes made before it reach the peer before it.
                self.uncork(io);
                io.send(id, t.bytes);
            }
        }
    }

    /// Retries the connections holding a pong; applies the slow-consumer policy where a pong
    /// has been held while the connection's output made no progress for the heartbeat timeout
    /// (a peer that floods pings and does not read; a slow reader that still reads is never
    /// closed for its pings), counted in `ping_flood_closes` when it closes.
    pub(crate) fn flush_pongs(&mut self, io: &mut Io<'_>) {
        let waiters = std::mem::take(&mut self.pong_waiters);
        let stalled_after = self.ticks_per.heartbeat_timeout;
        let mut keep = Vec::new();
        for id in waiters {
            let open = self.conn(id).is_some_and(|c| c.phase == Phase::Open);
            if !open {
                continue;
            }
            // Not re-registered by this flush: the stall record below stays the one in force.
            self.flush_control(io, id);
            let now = self.now_tick;
            let queued = io.queued_bytes(id);
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            if conn.ws.held_pong().is_none() {
                if let Some(e) = conn.extra.as_mut() {
                    e.pong_stall = None;
                }
                continue;
            }
            let Some(stall) = conn.extra.as_mut().and_then(|e| e.pong_stall.as_mut()) else {
                continue;
            };
            if stall.queued != queued {
                stall.queued = queued;
                stall.since = now;
            }
            if now.saturating_sub(stall.since) >= stalled_after {
                if self.cfg.slow_consumer == SlowConsumerPolicy::Close {
                    inc(&self.m().ping_flood_closes);
                }
                self.slow_consumer(io, id, 0);
                continue;
            }
            keep.push(id);
        }
        keep.append(&mut self.pong_waiters);
        self.pong_waiters = keep;
    }

    /// The index of `path` in the core's path table (`NO_PATH` when the table is full).
    pub(crate) fn intern_path(&mut self, path: &str) -> u16 {
        if let Some(&i) = self.path_index.get(path) {
            return i;
        }
        if self.paths.len() >= MAX_PATHS {
            return NO_PATH;
        }
        let i = self.paths.len() as u16;
        self.paths.push(path.into());
        self.path_index.insert(path.into(), i);
        i
    }

    /// The upgrade request path of `id`.
    pub(crate) fn path_of(&self, id: ConnId) -> &str {
        let Some(c) = self.conn(id) else { return "" };
        match c.path {
            NO_PATH => c
                .extra
                .as_ref()
                .and_then(|e| e.names.as_ref()?.path.as_deref())
                .unwrap_or(""),
            i => &self.paths[i as usize],
        }
    }

    /// The subprotocol agreed with `id`.
    pub(crate) fn protocol_of(&self, id: ConnId) -> Option<&str> {
        let c = self.conn(id)?;
        if let Some(p) = c
            .extra
            .as_ref()
            .and_then(|e| e.names.as_ref()?.protocol.as_deref())
        {
            return Some(p);
        }
        let i = usize::from(c.protocol).checked_sub(1)?;
        self.cfg.subprotocols.get(i).map(String::as_str)
    }

    /// Stops decoding `id`'s input and asks the transport to stop receiving (backpressure).
    pub(crate) fn pause_reading(&mut self, io: &mut Io<'_>, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.paused() || !matches!(c.phase, Phase::Open | Phase::Closing) {
            return;
        }
        c.extra_mut().paused = true;
        io.pause_receive(id);
        inc(&self.metrics[self.core_index].read_pauses);
    }

    /// Undoes [`CoreState::pause_reading`]; what waits in the read buffer is decoded before the
    /// next submit.
    pub(crate) fn resume_reading(&mut self, io: &mut Io<'_>, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        if !c.paused() {
            return;
        }
        c.extra_mut().paused = false;
        io.resume_receive(id);
        self.resumed.push(id);
    }

    /// Subscribes `id` to `channel` (after delivering corked publishes, which predate it).
    pub(crate) fn subscribe(&mut self, io: &mut Io<'_>, id: ConnId, channel: &str) -> bool {
        self.uncork(io);
        let Some(conn) = self.conn(id) else {
            return false;
        };
        if conn.phase != Phase::Open || conn.channels().iter().any(|t| &**t == channel) {
            return false;
        }
        let me = self.core_index;
        let local = self.local_channel(channel);
        local.subs.push(id);
        if local.subs.len() + local.pending.len() == 1 {
            local.shared.cores.insert(me);
        }
        local.shared.add_subscriber();
        let name = local.shared.name.clone();
        if let Some(c) = self.conn_mut(id) {
            c.extra_mut().channels.push(name);
        }
        true
    }

    /// Unsubscribes `id` from `channel` (after delivering corked publishes, which predate it).
    pub(crate) fn unsubscribe(&mut self, io: &mut Io<'_>, id: ConnId, channel: &str) -> bool {
        self.uncork(io);
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        let Some(pos) = conn.channels().iter().position(|t| &**t == channel) else {
            return false;
        };
        conn.extra_mut().channels.swap_remove(pos);
        self.remove_subscriber(id, channel);
        true
    }

    pub(crate) fn remove_subscriber(&mut self, id: ConnId, channel: &str) {
        let me = self.core_index;
        if let Some(local) = self.channels.get_mut(channel) {
            let found = if let Some(i) = local.subs.iter().position(|&c| c == id) {
                local.subs.swap_remove(i);
                true
            } else if let Some(i) = local.pending.iter().position(|&c| c == id) {
                local.pending.swap_remove(i);
                true
            } else {
                false
            };
            if found {
                local.shared.remove_subscriber();
                if local.subs.is_empty() && local.pending.is_empty() {
                    local.shared.cores.remove(me);
                }
            }
        }
    }

    /// Leaves every channel (on close).
    pub(crate) fn leave_all(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let channels = conn
            .extra
            .as_mut()
            .map(|e| std::mem::take(&mut e.channels))
            .unwrap_or_default();
        for t in &channels {
            self.remove_subscriber(id, t);
        }
    }

    pub(crate) fn local_channel(&mut self, name: &str) -> &mut LocalChannel {
        if !self.channels.contains_key(name) {
            let shared = self.shared.channels.get_or_create(name);
            self.channels.insert(
                shared.name.clone(),
                LocalChannel {
                    shared,
                    subs: Vec::new(),
                    pending: Vec::new(),
                },
            );
        }
        self.channels.get_mut(name).expect("inserted above")
    }

    /// Publishes to `channel` from this core.
    pub(crate) fn publish_channel(
        &mut self,
        io: &mut Io<'_>,
        channel: &str,
        payload: &[u8],
        text: bool,
        opts: PublishOptions,
    ) {
        self.publish_channel_acked(io, channel, payload, text, opts, None);
    }

    /// [`CoreState::publish_channel`]; for a channel without history `broker_ack` gets the
    /// cluster broker's answer (`Ok` at once without a broker).
    pub(crate) fn publish_channel_acked(
        &mut self,
        io: &mut Io<'_>,
        channel: &str,
        payload: &[u8],
        text: bool,
        opts: PublishOptions,
        broker_ack: Option<crate::broker::BrokerAck>,
    ) {
        let shared = self.local_channel(channel).shared.clone();
        if shared.is_stream() && !opts.transient {
            let payload = Bytes::copy_from_slice(payload);
            return self.publish_stream(io, shared, payload, text, opts, ReplyTo::Nobody);
        }
        shared
            .inproc
            .call(&shared.name, || unsequenced(payload, text));
        self.shared
            .to_broker(&shared.name, payload, text, &opts, broker_ack);
        let p = Arc::new(Publish::new(Target::Channel(shared), payload, text, opts));
        self.dispatch(io, p);
    }

    /// Publishes to every open connection on every core.
    pub(crate) fn publish_all(
        &mut self,
        io: &mut Io<'_>,
        payload: &[u8],
        text: bool,
        opts: PublishOptions,
    ) {
        self.shared.broadcast_to_broker(payload, text, &opts);
        let p = Arc::new(Publish::new(Target::All, payload, text, opts));
        self.dispatch(io, p);
    }

    /// Hands a publish to every other core with subscribers (through the rings), then delivers
    /// it to this core's own subscribers.
    pub(crate) fn dispatch(&mut self, io: &mut Io<'_>, p: Arc<Publish>) {
        let me = self.core_index;
        inc(&self.metrics[me].publishes);
        let mut spilled = false;
        let mut local = false;
        let (shared, outbox, m) = (&self.shared, &mut self.outbox, &self.metrics[me]);
        p.for_each_core(shared.cores, |c| {
            if c == me {
                local = true;
                return;
            }
            let lane = &shared.inboxes[c].from_core[me];
            inc(&m.forwarded);
            if outbox.push(c, lane, LaneItem::Publish(p.clone())) {
                inc(&m.spills);
                spilled = true;
            }
            shared.wakers[c].wake();
        });
        if spilled {
            // Come back soon to move the overflow into the ring.
            self.shared.wakers[me].wake();
        }
        if local {
            self.deliver(io, &p);
        }
    }

    /// Delivers a publish to this core's recipients: corked with the publishes before it when
    /// it can be (same target, no filter), otherwise right away.
    pub(crate) fn deliver(&mut self, io: &mut Io<'_>, p: &Arc<Publish>) {
        if !self.cork.accepts(p, self.cork_max) {
            self.uncork(io);
            if !self.cork.accepts(p, self.cork_max) {
                // Options per recipient, or a frame bigger than a run: its own delivery.
                return self.deliver_now(io, p);
            }
        }
        self.cork.push(p.clone());
    }

    /// Queues the corked run for its recipients: one buffer holding every frame of the run,
    /// shared by refcount by every recipient that takes the frames uncompressed and is excluded
    /// from none of them; recipients that compress or are excluded from some get each of their
    /// messages framed for them, in order.
    pub(crate) fn uncork(&mut self, io: &mut Io<'_>) {
        if self.cork.is_empty() {
            return;
        }
        let me = self.core_index;
        let (run, excluded) = self.cork.take();
        let messages = run.len() as u64;
        let payload_bytes: u64 = run.iter().map(|p| p.payload().len() as u64).sum();
        let largest = run.iter().map(|p| p.payload().len()).max().unwrap_or(0);
        let frames = concat_frames(&run);
        let mut ids = std::mem::take(&mut self.scratch_ids);
        self.recipients(&run[0].target, &mut ids);
        let (mut delivered, mut runs, mut filtered) = (0, 0, 0);
        let mut one_by_one = Vec::new();
        for &id in &ids {
            let Some(conn) = self.conn(id) else { continue };
            if conn.phase != Phase::Open {
                continue;
            }
            let compresses = conn
                .extra
                .as_ref()
                .and_then(|e| e.encoder.as_ref())
                .is_some_and(|enc| enc.compresses(largest));
            if compresses || excluded.contains(&ConnectionId::new(me, id)) {
                one_by_one.push(id);
                continue;
            }
            add(&self.metrics[me].bytes_out, payload_bytes);
            if self.queue_frame(io, id, frames.clone(), messages).is_ok() {
                delivered += messages;
                runs += 1;
            }
        }
        for p in &run {
            let mut shared: [Option<Bytes>; 16] = Default::default();
            for &id in &one_by_one {
                if self.conn(id).is_none_or(|c| c.phase != Phase::Open) {
                    continue;
                }
                if p.opts.exclude == Some(ConnectionId::new(me, id)) {
                    filtered += 1;
                    continue;
                }
                if self.deliver_one(io, id, p, &mut shared) {
                    delivered += 1;
                    runs += 1;
                }
            }
        }
        self.scratch_ids = ids;
        self.cork.recycle(run, excluded);
        add(&self.metrics[me].deliveries, delivered);
        add(&self.metrics[me].delivery_runs, runs);
        add(&self.metrics[me].deliveries_filtered, filtered);
    }

    /// This core's candidate recipients of a publish to `target` (open or not; callers check).
    pub(crate) fn recipients(&self, target: &Target, ids: &mut Vec<ConnId>) {
        ids.clear();
        match target {
            Target::Channel(t) => {
                if let Some(local) = self.channels.get(&*t.name) {
                    ids.extend_from_slice(&local.subs);
                }
            }
            Target::All => ids.extend(
                self.conns
                    .iter()
                    .flatten()
                    .filter(|c| c.phase == Phase::Open)
                    .map(|c| c.id),
            ),
        }
    }

    /// Delivers one publish (with its exclude and filter) to this core's recipients now; the
    /// cork must be empty.
    pub(crate) fn deliver_now(&mut self, io: &mut Io<'_>, p: &Publish) {
        debug_assert!(self.cork.is_empty());
        let me = self.core_index;
        let mut ids = std::mem::take(&mut self.scratch_ids);
        self.recipients(&p.target, &mut ids);
        let mut compressed: [Option<Bytes>; 16] = Default::default();
        let mut delivered = 0;
        let mut filtered = 0;
        for &id in &ids {
            let cid = ConnectionId::new(me, id);
            let Some(conn) = self.conn(id) else { continue };
            if conn.phase != Phase::Open {
                continue;
            }
            if p.opts.exclude == Some(cid)
                || p.opts
                    .filter
                    .as_ref()
                    .is_some_and(|f| !f(cid, conn.data.as_deref()))
            {
                filtered += 1;
                continue;
            }
            if self.deliver_one(io, id, p, &mut compressed) {
                delivered += 1;
            }
        }
        self.scratch_ids = ids;
        add(&self.metrics[me].deliveries, delivered);
        add(&self.metrics[me].delivery_runs, delivered);
        add(&self.metrics[me].deliveries_filtered, filtered);
    }

    /// Queues `p` alone for `id`, framed for it (see [`CoreState::frame_for`]); true if queued.
    pub(crate) fn deliver_one(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        p: &Publish,
        shared: &mut [Option<Bytes>; 16],
    ) -> bool {
        let frame = self.frame_for(id, p, shared);
        add(
            &self.metrics[self.core_index].bytes_out,
            p.payload().len() as u64,
        );
        self.queue_frame(io, id, frame, 1).is_ok()
    }

    /// The frame `id` gets for `p`: the shared uncompressed frame; a compressed frame shared by
    /// every no-context-takeover recipient with the same window; or, for connections that keep
    /// their compression context, a frame compressed for that connection alone.
    pub(crate) fn frame_for(
        &mut self,
        id: ConnId,
        p: &Publish,
        shared: &mut [Option<Bytes>; 16],
    ) -> Bytes {
        self.frame_for_parts(id, &p.frame, p.header_len, p.text, shared)
    }

    /// [`CoreState::frame_for`] a frame given by its parts (a publish, a kept publication).
    pub(crate) fn frame_for_parts(
        &mut self,
        id: ConnId,
        frame: &Bytes,
        header_len: usize,
        text: bool,
        shared: &mut [Option<Bytes>; 16],
    ) -> Bytes {
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        let payload = &frame[header_len..];
        let Some(conn) = self.conns[id.index()].as_mut() else {
            return frame.clone();
        };
        let Some(ex) = conn.extra.as_mut() else {
            return frame.clone();
        };
        let (Some(params), Some(enc)) = (ex.deflate, ex.encoder.as_mut()) else {
            return frame.clone();
        };
        if !enc.compresses(payload.len()) {
            return frame.clone();
        }
        if params.server_no_context_takeover {
            let bits = params.server_max_window_bits.min(15);
            if let Some(f) = &shared[bits as usize] {
                return f.clone();
            }
            let (level, threshold) = self
                .cfg
                .deflate
                .as_ref()
                .map_or((1, 0), |d| (d.level, d.threshold));
            let enc = self.shared_encoders.entry(bits).or_insert_with(|| {
                let mut e = Encoder::server();
                let shared_params = DeflateParams {
                    server_no_context_takeover: true,
                    server_max_window_bits: bits,
                    ..params
                };
                e.set_deflate(&shared_params, level, threshold);
                // One per core, compressing back to back: its state stays.
                e.keep_deflate_state();
                e
            });
            let mut out = BytesMut::with_capacity(payload.len() / 2 + 16);
            enc.encode(opcode, payload, &mut out);
            let f = out.freeze();
            shared[bits as usize] = Some(f.clone());
            inc(&self.metrics[self.core_index].compressed_out);
            return f;
        }
        let mut out = BytesMut::with_capacity(payload.len() / 2 + 16);
        enc.encode(opcode, payload, &mut out);
        inc(&self.metrics[self.core_index].compressed_out);
        out.freeze()
    }

    /// Takes publishes from the other cores' rings and from outside threads, delivers them, and
    /// moves this core's own spilled publishes on.
    pub(crate) fn drain_inbox(&mut self, io: &mut Io<'_>) {
        let me = self.core_index;
        let inbox = self.shared.inboxes[me].clone();
        let mut budget = DRAIN_BUDGET;
        for lane in inbox.from_core.iter() {
            max(&self.metrics[me].ring_depth_hwm, lane.len() as u64);
            while budget > 0 {
                let Some(item) = lane.pop() else { break };
                budget -= 1;
                match item {
                    LaneItem::Publish(p) => self.deliver(io, &p),
                    LaneItem::Stream(msg) => self.on_stream(io, *msg),
                }
            }
        }
        if budget == 0 {
            self.shared.wakers[me].wake();
        }
        if self.outbox.len() > 0 {
            let shared = &self.shared;
            let left = self
                .outbox
                .flush(me, &shared.inboxes, |c| shared.wakers[c].wake());
            if left {
                self.shared.wakers[me].wake();
            }
        }
    }

    /// Applies the slow-consumer policy to a frame of `messages` messages that did not fit.
    pub(crate) fn slow_consumer(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        messages: u64,
    ) -> SendError {
        match self.cfg.slow_consumer {
            SlowConsumerPolicy::DropNewest => add(&self.m().slow_consumer_drops, messages),
            SlowConsumerPolicy::Close => {
                inc(&self.m().slow_consumer_closes);
                if let Some(c) = self.conn(id).filter(|c| c.phase == Phase::Open) {
                    tracing::info!(
                        peer = %c.peer(),
                        code = CLOSE_SLOW_CONSUMER.0,
                        waiting = io.waiting_bytes(id),
                        "closing: slow consumer"
                    );
                }
                // The client is not reading: what is queued would delay the close for as long
                // as it takes to drain, so it is dropped and the close goes next.
                io.discard_unsent(id);
                self.start_close(io, id, CLOSE_SLOW_CONSUMER, "slow consumer");
            }
        }
        SendError::SlowConsumer
    }

    /// Starts the close handshake: the close frame goes after the data already queued, and
    /// the state machine waits for the reply until the close timeout.
    pub(crate) fn start_close(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) {
        // Publishes made before the close reach the peer before it (while it is still open).
        self.uncork(io);
        let cfg = self.ws_cfg;
        let now = self.now_tick;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        conn.phase = Phase::Closing;
        conn.set_close(code, reason);
        conn.ws.close(&cfg, code, reason, now);
        self.flush_control(io, id);
    }

    /// Counts and logs a peer's protocol error (the state machine has queued its close frame).
    pub(crate) fn count_protocol_error(&mut self, id: ConnId, err: ProtocolError) {
        let code = err.close_code();
        let m = &self.metrics[self.core_index];
        match code {
            CloseCode::INVALID_DATA => inc(&m.invalid_data_errors),
            CloseCode::TOO_BIG => inc(&m.too_big_errors),
            _ => inc(&m.protocol_errors),
        }
        if let Some(c) = self.conn_mut(id) {
            tracing::info!(peer = %c.peer(), code = code.0, error = %err, "closing: protocol error");
            if c.close_code == 0 {
                c.close_code = code.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_state_stays_small() {
        // What an idle, uncompressed connection costs this layer: its table entry and nothing
        // else (no decoder, encoder, read buffer or `Extra` box). docs/design/memory.md adds
        // the runtime's share.
        let conn = std::mem::size_of::<Option<Conn>>();
        eprintln!(
            "Option<Conn> {conn} B; Decoder {} B and Extra {} B only when needed",
            std::mem::size_of::<Decoder>(),
            std::mem::size_of::<Extra>()
        );
        assert!(conn <= 120, "Conn grew to {conn} bytes");
        assert!(std::mem::size_of::<Extra>() <= 96, "Extra grew");
        let peer: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(SocketAddr::from(PeerAddr::from(peer)), peer);
        let peer: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(SocketAddr::from(PeerAddr::from(peer)), peer);
    }
}
