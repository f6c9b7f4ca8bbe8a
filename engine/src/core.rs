//! One core's WebSocket layer: handshakes, framing, timers and the close handshake, on top of
//! the protocol-agnostic [`crate::runtime`] transport.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use edge_ws_protocol::deflate::{negotiate_server, DeflateParams};
use edge_ws_protocol::handshake::{
    parse_request, select_protocol, write_accept, write_http_response,
    write_http_response_with_headers, Accept, ParseOutcome, Request,
};
use edge_ws_protocol::{
    codec::server_frame, CloseCode, Decoder, DecoderConfig, Encoder, Message, OpCode,
    ProtocolError, Role,
};

use crate::config::{
    Config, SlowConsumerPolicy, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_IDLE_TIMEOUT, CLOSE_SLOW_CONSUMER,
};
use crate::engine::{Command, Shared};
use crate::fanout::{concat_frames, ChannelShared, Cork, Outbox, Publish, PublishOptions, Target};
use crate::handler::{Handler, Rejection, Socket, Upgrade, UpgradeRequest};
use crate::metrics::{add, inc, max, CoreMetrics};
use crate::runtime::{ConnId, Io, Service};
use crate::ConnectionId;

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
    close_reason: Option<Box<str>>,
    /// A parsed upgrade request waiting for the handler's deferred decision.
    pending: Option<Box<(Request, usize)>>,
    /// Names kept per connection only in rare cases.
    names: Option<Box<Names>>,
    /// The pong for the most recent ping, held back while an earlier control frame still
    /// waits to be written (see [`CoreState::answer_ping`]).
    pending_pong: Option<Box<PendingPong>>,
}

/// Names a connection keeps for itself only in rare cases.
#[derive(Default)]
struct Names {
    /// The request path when the core's path table is full.
    path: Option<Box<str>>,
    /// The subprotocol, when the handler chose one outside the configured list.
    protocol: Option<Box<str>>,
}

/// A pong not yet queued: at most one per connection (RFC 6455 §5.5.3 lets an endpoint answer
/// only the most recent ping).
struct PendingPong {
    payload: Bytes,
    /// Tick since which the connection's output has made no progress with a pong held back.
    since: u32,
    /// The connection's queued bytes at `since`: any change means the peer is reading.
    queued: usize,
}

/// A peer address in 20 bytes (a `SocketAddr` takes 32).
#[derive(Clone, Copy)]
pub(crate) struct PeerAddr {
    ip: [u8; 16],
    port: u16,
    v6: bool,
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
const NO_PATH: u16 = u16::MAX;

/// Most distinct request paths a core interns (beyond, paths are stored per connection).
const MAX_PATHS: usize = 1024;

/// One connection's WebSocket state. Kept small: an idle, uncompressed connection holds no
/// decoder, no encoder and no read buffer, only this (see `per_connection_state_stays_small`).
pub(crate) struct Conn {
    id: ConnId,
    phase: Phase,
    /// The 101 was sent (so `on_close` is due).
    opened: bool,
    /// 1 + index into the configured subprotocols; 0 when none was agreed.
    protocol: u8,
    /// Index into the core's path table, or `NO_PATH`.
    path: u16,
    /// The close code to report; 0 when none yet.
    close_code: u16,
    /// Handshake or close deadline, in ticks.
    deadline: u32,
    last_seen: u32,
    /// Tick a heartbeat ping went out at; 0 when none is outstanding.
    ping_sent: u32,
    peer: PeerAddr,
    rbuf: BytesMut,
    pub(crate) data: Option<Box<dyn Any>>,
    /// This connection's own decoder: only while a message is in flight, or always with
    /// permessage-deflate (the inflater's context). Otherwise the core's shared one is used.
    decoder: Option<Box<Decoder>>,
    pub(crate) extra: Option<Box<Extra>>,
}

impl Conn {
    pub(crate) fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub(crate) fn channels(&self) -> &[Arc<str>] {
        self.extra.as_ref().map_or(&[], |e| &e.channels)
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer.into()
    }

    fn set_close(&mut self, code: CloseCode, reason: &str) {
        self.close_code = code.0;
        if !reason.is_empty() || self.extra.is_some() {
            self.extra_mut().close_reason = Some(reason.into());
        }
    }
}

/// Everything a core owns besides the handler.
pub(crate) struct CoreState {
    pub(crate) core_index: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    conns: Vec<Option<Conn>>,
    open: usize,
    metrics: Arc<[CoreMetrics]>,
    decoder_cfg: DecoderConfig,
    start: Instant,
    now_tick: u32,
    ticks_per: TickSpans,
    last_scan: u32,
    draining: Option<u32>,
    out: Vec<u8>,
    /// Channels this core has met: local subscribers and the shared channel.
    channels: HashMap<Arc<str>, LocalChannel>,
    /// Spilled publishes waiting for room in a ring to another core.
    outbox: Outbox,
    /// Local deliveries held back to batch them (see [`Cork`]).
    cork: Cork,
    /// Largest run a cork holds, in frame bytes.
    cork_max: usize,
    /// Per window size, a no-context-takeover compressor whose output every subscriber with
    /// that window and `server_no_context_takeover` can share.
    shared_encoders: HashMap<u8, Encoder>,
    scratch_ids: Vec<ConnId>,
    /// The decoder idle connections share (see `Conn::decoder`).
    scratch_decoder: Decoder,
    /// Interned request paths.
    paths: Vec<Box<str>>,
    path_index: HashMap<Box<str>, u16>,
    /// Connections holding a [`PendingPong`], retried before each submit.
    pong_waiters: Vec<ConnId>,
}

struct LocalChannel {
    shared: Arc<ChannelShared>,
    subs: Vec<ConnId>,
}

/// Most publishes one core takes from its rings per wakeup before serving I/O again.
const DRAIN_BUDGET: usize = 1024;

/// Most frame bytes one corked run gathers (also at most a quarter of the write-buffer limit,
/// so a run alone never trips the slow-consumer check).
const CORK_MAX_BYTES: usize = 64 * 1024;

struct TickSpans {
    handshake: u32,
    heartbeat: Option<u32>,
    heartbeat_timeout: u32,
    idle: Option<u32>,
    close: u32,
    drain: u32,
    scan: u32,
}

impl CoreState {
    fn m(&self) -> &CoreMetrics {
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

    /// Encodes and queues a data message, applying the slow-consumer policy.
    pub(crate) fn send_data(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        text: bool,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        let conn = self.conn_mut(id).ok_or(SendError::Closed)?;
        if conn.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        let enc = conn.extra.as_mut().and_then(|e| e.encoder.as_mut());
        let (frame, compressed) = match enc {
            Some(enc) if enc.compresses(payload.len()) => {
                let mut out = BytesMut::with_capacity(payload.len() / 2 + 16);
                enc.encode(opcode, payload, &mut out);
                (out.freeze(), true)
            }
            _ => (server_frame(opcode, payload), false),
        };
        if compressed {
            inc(&self.m().compressed_out);
        }
        let m = &self.metrics[self.core_index];
        add(&m.bytes_out, payload.len() as u64);
        self.send_frame(io, id, frame, 1)
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
    fn queue_frame(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        frame: Bytes,
        messages: u64,
    ) -> Result<(), SendError> {
        let Some(conn) = self.conn(id) else {
            inc(&self.m().sends_to_closed);
            return Err(SendError::Closed);
        };
        if conn.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        if self.over_write_limit(io, id, frame.len()) {
            return Err(self.slow_consumer(io, id, messages));
        }
        if !io.send(id, frame) {
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
    fn over_write_limit(&self, io: &Io<'_>, id: ConnId, len: usize) -> bool {
        let limit = self.cfg.write_buffer_limit;
        // Cheap test first: nothing to decide while everything queued plus this frame fits.
        io.queued_bytes(id) + len > limit && io.waiting_bytes(id) >= limit
    }

    /// Answers a ping. While the connection's output is blocked (an earlier control frame
    /// waits behind a send the kernel has not finished), at most one pong is held and the
    /// newest ping's pong replaces it (RFC 6455 §5.5.3), so a peer that sends pings and never
    /// reads costs a constant, not a queue. A peer that reads gets a pong for every ping
    /// (Autobahn 2.10 checks that). Held pongs go out from `flush_pongs` once the way is clear; one held longer than
    /// the heartbeat timeout means the peer is not reading, and the slow-consumer policy
    /// applies (counted in `ping_flood_closes` when it closes).
    fn answer_ping(&mut self, io: &mut Io<'_>, id: ConnId, payload: &[u8]) {
        inc(&self.m().pings_in);
        if !io.urgent_blocked(id) {
            self.queue_pong(io, id, payload);
            return;
        }
        inc(&self.m().pongs_superseded);
        let now = self.now_tick;
        let queued = io.queued_bytes(id);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let payload = Bytes::copy_from_slice(payload);
        let extra = conn.extra_mut();
        match extra.pending_pong.as_mut() {
            Some(p) => p.payload = payload,
            None => {
                extra.pending_pong = Some(Box::new(PendingPong {
                    payload,
                    since: now,
                    queued,
                }));
                self.pong_waiters.push(id);
            }
        }
    }

    /// Queues a pong ahead of data (after anything already urgent), subject to the write
    /// limit like every other frame.
    fn queue_pong(&mut self, io: &mut Io<'_>, id: ConnId, payload: &[u8]) {
        if self.over_write_limit(io, id, payload.len() + 2) {
            self.slow_consumer(io, id, 0);
            return;
        }
        let mut out = BytesMut::with_capacity(payload.len() + 2);
        Encoder::server().encode(OpCode::Pong, payload, &mut out);
        io.send_urgent(id, out.freeze());
    }

    /// Queues the held pongs whose way is clear; applies the slow-consumer policy where a pong
    /// has been held while the connection's output made no progress for the heartbeat timeout
    /// (a slow reader that still reads is never closed for its pings).
    fn flush_pongs(&mut self, io: &mut Io<'_>) {
        let mut waiters = std::mem::take(&mut self.pong_waiters);
        let stalled_after = self.ticks_per.heartbeat_timeout;
        let now = self.now_tick;
        waiters.retain(|&id| {
            let Some(conn) = self.conn_mut(id) else {
                return false;
            };
            let open = conn.phase == Phase::Open;
            let Some(extra) = conn.extra.as_mut() else {
                return false;
            };
            let Some(pending) = extra
                .pending_pong
                .take_if(|_| !open || !io.urgent_blocked(id))
            else {
                let queued = io.queued_bytes(id);
                let stalled = extra.pending_pong.as_mut().is_some_and(|p| {
                    if p.queued != queued {
                        p.queued = queued;
                        p.since = now;
                    }
                    now.saturating_sub(p.since) >= stalled_after
                });
                if stalled {
                    extra.pending_pong = None;
                    if self.cfg.slow_consumer == SlowConsumerPolicy::Close {
                        inc(&self.m().ping_flood_closes);
                    }
                    self.slow_consumer(io, id, 0);
                    return false;
                }
                return true;
            };
            if open {
                self.queue_pong(io, id, &pending.payload);
            }
            false
        });
        // Waiters added meanwhile (none: queue_pong never holds) keep their place.
        waiters.append(&mut self.pong_waiters);
        self.pong_waiters = waiters;
    }

    /// After decoding for `id`: if the shared decoder was left mid-message, it becomes the
    /// connection's own; the shared one is always left idle for the next connection.
    fn park_decoder(&mut self, id: ConnId) {
        if self.scratch_decoder.is_idle() {
            return;
        }
        let fresh = Decoder::new(Role::Server, self.decoder_cfg);
        let used = std::mem::replace(&mut self.scratch_decoder, fresh);
        if let Some(conn) = self.conn_mut(id) {
            if conn.decoder.is_none() && !used.is_closed() {
                conn.decoder = Some(Box::new(used));
            }
        }
    }

    /// The index of `path` in the core's path table (`NO_PATH` when the table is full).
    fn intern_path(&mut self, path: &str) -> u16 {
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
        if local.subs.len() == 1 {
            local.shared.cores.insert(me);
        }
        local.shared.subscribers.fetch_add(1, Ordering::Relaxed);
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

    fn remove_subscriber(&mut self, id: ConnId, channel: &str) {
        let me = self.core_index;
        if let Some(local) = self.channels.get_mut(channel) {
            if let Some(i) = local.subs.iter().position(|&c| c == id) {
                local.subs.swap_remove(i);
                local.shared.subscribers.fetch_sub(1, Ordering::Relaxed);
                if local.subs.is_empty() {
                    local.shared.cores.remove(me);
                }
            }
        }
    }

    /// Leaves every channel (on close).
    fn leave_all(&mut self, id: ConnId) {
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

    fn local_channel(&mut self, name: &str) -> &mut LocalChannel {
        if !self.channels.contains_key(name) {
            let shared = self.shared.channels.get_or_create(name);
            self.channels.insert(
                shared.name.clone(),
                LocalChannel {
                    shared,
                    subs: Vec::new(),
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
        let shared = self.local_channel(channel).shared.clone();
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
        let p = Arc::new(Publish::new(Target::All, payload, text, opts));
        self.dispatch(io, p);
    }

    /// Hands a publish to every other core with subscribers (through the rings), then delivers
    /// it to this core's own subscribers.
    fn dispatch(&mut self, io: &mut Io<'_>, p: Arc<Publish>) {
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
            if outbox.push(c, lane, p.clone()) {
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
    fn recipients(&self, target: &Target, ids: &mut Vec<ConnId>) {
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
    fn deliver_now(&mut self, io: &mut Io<'_>, p: &Publish) {
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
    fn deliver_one(
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
    fn frame_for(&mut self, id: ConnId, p: &Publish, shared: &mut [Option<Bytes>; 16]) -> Bytes {
        let opcode = if p.text { OpCode::Text } else { OpCode::Binary };
        let Some(conn) = self.conns[id.index()].as_mut() else {
            return p.frame.clone();
        };
        let Some(ex) = conn.extra.as_mut() else {
            return p.frame.clone();
        };
        let (Some(params), Some(enc)) = (ex.deflate, ex.encoder.as_mut()) else {
            return p.frame.clone();
        };
        if !enc.compresses(p.payload().len()) {
            return p.frame.clone();
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
                e
            });
            let mut out = BytesMut::with_capacity(p.payload().len() / 2 + 16);
            enc.encode(opcode, p.payload(), &mut out);
            let f = out.freeze();
            shared[bits as usize] = Some(f.clone());
            inc(&self.metrics[self.core_index].compressed_out);
            return f;
        }
        let mut out = BytesMut::with_capacity(p.payload().len() / 2 + 16);
        enc.encode(opcode, p.payload(), &mut out);
        inc(&self.metrics[self.core_index].compressed_out);
        out.freeze()
    }

    /// Takes publishes from the other cores' rings and from outside threads, delivers them, and
    /// moves this core's own spilled publishes on.
    fn drain_inbox(&mut self, io: &mut Io<'_>) {
        let me = self.core_index;
        let inbox = self.shared.inboxes[me].clone();
        let mut budget = DRAIN_BUDGET;
        for lane in inbox.from_core.iter() {
            max(&self.metrics[me].ring_depth_hwm, lane.len() as u64);
            while budget > 0 {
                let Some(p) = lane.pop() else { break };
                budget -= 1;
                self.deliver(io, &p);
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
    fn slow_consumer(&mut self, io: &mut Io<'_>, id: ConnId, messages: u64) -> SendError {
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

    /// Sends a close frame (ahead of queued data) and waits for the reply until the close
    /// timeout.
    pub(crate) fn start_close(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) {
        // Publishes made before the close reach the peer before it.
        self.uncork(io);
        let deadline = self.now_tick + self.ticks_per.close;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        conn.phase = Phase::Closing;
        conn.deadline = deadline;
        conn.set_close(code, reason);
        // After the data already queued: no data frame may follow a close (RFC 6455 §5.5.1).
        io.send(id, close_frame(code, reason));
    }

    /// Fails the connection for a protocol error: close frame with the error's code, then the
    /// socket closes once it is flushed.
    fn fail(&mut self, io: &mut Io<'_>, id: ConnId, err: ProtocolError) {
        self.uncork(io);
        let code = err.close_code();
        let deadline = self.now_tick + self.ticks_per.close;
        let m = &self.metrics[self.core_index];
        match code {
            CloseCode::INVALID_DATA => inc(&m.invalid_data_errors),
            CloseCode::TOO_BIG => inc(&m.too_big_errors),
            _ => inc(&m.protocol_errors),
        }
        if let Some(c) = self.conn(id) {
            tracing::info!(peer = %c.peer(), code = code.0, error = %err, "closing: protocol error");
        }
        if let Some(conn) = self.conn_mut(id) {
            let already_sent = conn.phase == Phase::Closing;
            conn.phase = Phase::Finishing;
            conn.deadline = deadline;
            if conn.close_code == 0 {
                conn.close_code = code.0;
            }
            conn.rbuf = BytesMut::new();
            if !already_sent {
                // After the echoes already queued: no data frame may follow a close.
                io.send(id, close_frame(code, &err.to_string()));
            }
        }
        io.close(id);
    }
}

fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + 125);
    Encoder::server().encode_close(code, reason, &mut out);
    out.freeze()
}

/// Which subprotocol an accepted upgrade answers with.
enum Chosen {
    /// The first the client offered among `Config::subprotocols`.
    Configured,
    /// The handler's choice for this request.
    This(Option<String>),
}

/// The runtime service: one per core, wrapping the application's handler.
pub(crate) struct WsService<H: Handler> {
    state: CoreState,
    handler: H,
}

impl<H: Handler> WsService<H> {
    pub(crate) fn new(
        core_index: usize,
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        handler: H,
    ) -> Self {
        let tick = cfg.tick.max(std::time::Duration::from_millis(1));
        let ticks = |d: std::time::Duration| -> u32 {
            (d.as_nanos().div_ceil(tick.as_nanos())).clamp(1, u32::MAX as u128 / 4) as u32
        };
        let ticks_per = TickSpans {
            handshake: ticks(cfg.handshake_timeout),
            heartbeat: cfg.heartbeat_interval.map(ticks),
            heartbeat_timeout: ticks(cfg.heartbeat_timeout),
            idle: cfg.idle_timeout.map(ticks),
            close: ticks(cfg.close_timeout),
            drain: ticks(cfg.drain_timeout),
            // Timers are checked by a scan over the core's connections every ~250 ms.
            scan: ticks(std::time::Duration::from_millis(250)),
        };
        let decoder_cfg = DecoderConfig {
            max_frame_size: cfg.max_frame_size,
            max_message_size: cfg.max_message_size,
            max_fragments: cfg.max_fragments,
        };
        let metrics = shared.metrics.clone();
        let cores = shared.cores;
        let max_per_core = cfg.max_connections.div_ceil(cores).clamp(1, 1 << 22);
        let cork_max = CORK_MAX_BYTES.min(cfg.write_buffer_limit / 4);
        WsService {
            state: CoreState {
                core_index,
                cfg,
                shared,
                // Reserved up front like the runtime's table (no resident copies from doubling).
                conns: Vec::with_capacity(max_per_core),
                open: 0,
                metrics,
                decoder_cfg,
                start: Instant::now(),
                now_tick: 1,
                ticks_per,
                last_scan: 0,
                draining: None,
                out: Vec::new(),
                channels: HashMap::new(),
                outbox: Outbox::new(cores),
                cork: Cork::default(),
                cork_max,
                shared_encoders: HashMap::new(),
                scratch_ids: Vec::new(),
                scratch_decoder: Decoder::new(Role::Server, decoder_cfg),
                paths: Vec::new(),
                path_index: HashMap::new(),
                pong_waiters: Vec::new(),
            },
            handler,
        }
    }

    fn socket<'a, 'io>(
        state: &'a mut CoreState,
        io: &'a mut Io<'io>,
        id: ConnId,
    ) -> Socket<'a, 'io> {
        Socket { state, io, id }
    }

    fn handshake(&mut self, io: &mut Io<'_>, id: ConnId) {
        let st = &mut self.state;
        let max = st.cfg.max_request_len;
        let mut out = std::mem::take(&mut st.out);
        out.clear();
        let Some(conn) = st.conn_mut(id) else {
            st.out = out;
            return;
        };
        let peer = conn.peer();
        let outcome = parse_request(&conn.rbuf, max);
        match outcome {
            Ok(ParseOutcome::Partial) => {
                st.out = out;
                return;
            }
            Err(e) => {
                inc(&st.metrics[st.core_index].rejected_bad_handshake);
                tracing::info!(%peer, error = %e, "upgrade refused: bad handshake");
                e.write_response(&mut out);
                finish_http(st, io, id, &out);
            }
            Ok(ParseOutcome::NotUpgrade(info, _)) => {
                inc(&st.metrics[st.core_index].http_requests);
                if info.method == "GET" && info.path == "/health" {
                    let body = format!(
                        "{{\"status\":\"ok\",\"cores\":{},\"connections\":{}}}",
                        st.shared.cores,
                        st.shared.connections()
                    );
                    write_http_response(200, "OK", "application/json", body.as_bytes(), &mut out);
                } else {
                    write_http_response(
                        400,
                        "Bad Request",
                        "text/plain",
                        b"Expected WebSocket",
                        &mut out,
                    );
                }
                finish_http(st, io, id, &out);
            }
            Ok(ParseOutcome::Complete(req, used)) => {
                st.out = out;
                let decision = self.handler.on_upgrade(&UpgradeRequest {
                    id: ConnectionId::new(self.state.core_index, id),
                    peer,
                    request: &req,
                });
                match decision {
                    Upgrade::Accept(data) => {
                        self.complete_upgrade(io, id, &req, used, Chosen::Configured, data)
                    }
                    Upgrade::AcceptProtocol { protocol, data } => {
                        self.complete_upgrade(io, id, &req, used, Chosen::This(protocol), data)
                    }
                    Upgrade::Reject(rej) => self.reject_upgrade(io, id, &rej),
                    Upgrade::Defer => {
                        if let Some(conn) = self.state.conn_mut(id) {
                            conn.extra_mut().pending = Some(Box::new((req, used)));
                        }
                    }
                }
                return;
            }
        }
        st.out = out;
    }

    fn reject_upgrade(&mut self, io: &mut Io<'_>, id: ConnId, rej: &Rejection) {
        let st = &mut self.state;
        inc(&st.metrics[st.core_index].rejected_by_application);
        tracing::info!(
            peer = %st.conn(id).map(Conn::peer).map_or_else(String::new, |p| p.to_string()),
            status = rej.status,
            "upgrade refused by the application"
        );
        let mut out = std::mem::take(&mut st.out);
        out.clear();
        let headers: Vec<(&str, &str)> = rej
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        write_http_response_with_headers(
            rej.status,
            reason_phrase(rej.status),
            "text/plain",
            &headers,
            rej.body.as_bytes(),
            &mut out,
        );
        finish_http(st, io, id, &out);
        st.out = out;
    }

    /// Answers a deferred upgrade (from [`crate::EngineHandle::resolve_upgrade`]).
    fn resolve_upgrade(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        decision: Result<Option<Box<dyn Any + Send>>, Rejection>,
    ) {
        let Some(conn) = self.state.conn_mut(id) else {
            return;
        };
        let Some(pending) = conn.extra.as_mut().and_then(|e| e.pending.take()) else {
            return;
        };
        let (req, used) = *pending;
        match decision {
            Ok(data) => {
                let data = data.map(|d| d as Box<dyn Any>);
                self.complete_upgrade(io, id, &req, used, Chosen::Configured, data)
            }
            Err(rej) => self.reject_upgrade(io, id, &rej),
        }
    }

    /// Negotiates subprotocol and compression, sends the 101 and opens the WebSocket.
    fn complete_upgrade(
        &mut self,
        io: &mut Io<'_>,
        id: ConnId,
        req: &Request,
        used: usize,
        chosen: Chosen,
        data: Option<Box<dyn Any>>,
    ) {
        let st = &mut self.state;
        // A corked broadcast-to-all predates this connection: deliver it to the others first.
        st.uncork(io);
        let cfg = st.cfg.clone();
        let supported: Vec<&str> = cfg.subprotocols.iter().map(|s| s.as_str()).collect();
        let protocol = match &chosen {
            Chosen::Configured => select_protocol(&req.protocols, &supported),
            Chosen::This(None) => None,
            Chosen::This(Some(p)) if req.protocols.iter().any(|o| o == p) => Some(p.as_str()),
            Chosen::This(Some(p)) => {
                tracing::warn!(protocol = %p, offered = ?req.protocols, "handler chose a subprotocol the client did not offer");
                let rej = Rejection::new(500, "subprotocol not offered by the client");
                return self.reject_upgrade(io, id, &rej);
            }
        };
        let st = &mut self.state;
        let mut out = std::mem::take(&mut st.out);
        out.clear();
        let deflate = cfg
            .deflate
            .as_ref()
            .filter(|d| d.enabled)
            .and_then(|d| negotiate_server(&req.extensions, d).map(|p| (d, p)));
        let ext = deflate.as_ref().map(|(_, p)| p.to_header_value());
        write_accept(
            req,
            &Accept {
                protocol,
                extensions: ext.as_deref(),
                extra_headers: &[],
            },
            &mut out,
        );
        let configured = protocol.and_then(|p| cfg.subprotocols.iter().position(|s| s == p));
        let protocol_idx = configured.map_or(0, |i| (i + 1).min(255) as u8);
        // A protocol outside the configured list (the handler's choice) is kept by name.
        let own_protocol: Option<Box<str>> =
            protocol.filter(|_| configured.is_none()).map(Into::into);
        let path_idx = st.intern_path(&req.path);
        let now = st.now_tick;
        let decoder_cfg = st.decoder_cfg;
        let Some(conn) = st.conn_mut(id) else {
            st.out = out;
            return;
        };
        if let Some((d, p)) = deflate {
            let mut decoder = Decoder::new(Role::Server, decoder_cfg);
            decoder.set_deflate(&p);
            conn.decoder = Some(Box::new(decoder));
            let mut e = Encoder::server();
            e.set_deflate(&p, d.level, d.threshold);
            let ex = conn.extra_mut();
            ex.encoder = Some(Box::new(e));
            ex.deflate = Some(p);
        }
        if path_idx == NO_PATH {
            conn.extra_mut()
                .names
                .get_or_insert_with(Default::default)
                .path = Some(req.path.as_str().into());
        }
        if own_protocol.is_some() {
            conn.extra_mut()
                .names
                .get_or_insert_with(Default::default)
                .protocol = own_protocol;
        }
        conn.path = path_idx;
        conn.protocol = protocol_idx;
        conn.rbuf.advance(used);
        conn.phase = Phase::Open;
        conn.opened = true;
        conn.last_seen = now;
        if data.is_some() {
            conn.data = data;
        }
        io.send(id, Bytes::copy_from_slice(&out));
        st.open += 1;
        inc(&st.metrics[st.core_index].opened);
        st.out = out;
        self.handler
            .on_open(&mut Self::socket(&mut self.state, io, id));
        self.read_frames(io, id);
    }

    fn read_frames(&mut self, io: &mut Io<'_>, id: ConnId) {
        self.decode_frames(io, id);
        self.state.park_decoder(id);
    }

    fn decode_frames(&mut self, io: &mut Io<'_>, id: ConnId) {
        let now = self.state.now_tick;
        let close_ticks = self.state.ticks_per.close;
        loop {
            let st = &mut self.state;
            let Some(conn) = st.conns.get_mut(id.index()).and_then(Option::as_mut) else {
                return;
            };
            if conn.id != id || !matches!(conn.phase, Phase::Open | Phase::Closing) {
                return;
            }
            let decoder = match conn.decoder.as_deref_mut() {
                Some(d) => d,
                None => &mut st.scratch_decoder,
            };
            let msg = match decoder.decode(&mut conn.rbuf) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if conn.rbuf.is_empty() {
                        // Idle connections hold no read memory.
                        conn.rbuf = BytesMut::new();
                    }
                    return;
                }
                Err(e) => {
                    st.fail(io, id, e);
                    return;
                }
            };
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if conn.phase != Phase::Open {
                        continue; // after our close, data is discarded
                    }
                    let m = &st.metrics[st.core_index];
                    inc(&m.messages_in);
                    add(&m.bytes_in, msg.payload().len() as u64);
                    self.handler
                        .on_message(&mut Self::socket(&mut self.state, io, id), msg);
                }
                Message::Ping(p) => {
                    if conn.phase == Phase::Open {
                        st.answer_ping(io, id, &p);
                    }
                }
                Message::Pong(_) => conn.ping_sent = 0,
                Message::Close(frame) => {
                    let (code, reason) = match &frame {
                        Some(f) => (f.code, f.reason_str().into_owned()),
                        None => (CloseCode::NO_STATUS, String::new()),
                    };
                    if conn.phase == Phase::Open {
                        // Echo the peer's code (RFC 6455 §5.5.1), or an empty close if it sent none.
                        let reply = match &frame {
                            Some(f) => close_frame(f.code, ""),
                            None => Bytes::from_static(&[0x88, 0x00]),
                        };
                        conn.set_close(code, &reason);
                        // After the data already queued (RFC 6455 §5.5.1 allows finishing it;
                        // no data frame may follow our close).
                        io.send(id, reply);
                    }
                    conn.phase = Phase::Finishing;
                    conn.deadline = now + close_ticks;
                    conn.rbuf = BytesMut::new();
                    // The server closes the TCP connection first (RFC 6455 §7.1.1).
                    io.close(id);
                    return;
                }
            }
        }
    }

    fn scan_timers(&mut self, io: &mut Io<'_>) {
        let st = &mut self.state;
        let now = st.now_tick;
        let tp = &st.ticks_per;
        let mut to_abort: Vec<(ConnId, Option<CloseCode>)> = Vec::new();
        let mut to_ping = Vec::new();
        for conn in st.conns.iter_mut().flatten() {
            match conn.phase {
                Phase::Handshake | Phase::Closing | Phase::Finishing => {
                    if now >= conn.deadline && conn.deadline != 0 {
                        to_abort.push((conn.id, None));
                    }
                }
                Phase::Open => {
                    let quiet = now.saturating_sub(conn.last_seen);
                    if let Some(idle) = tp.idle {
                        if quiet >= idle {
                            to_abort.push((conn.id, Some(CLOSE_IDLE_TIMEOUT)));
                            continue;
                        }
                    }
                    if let Some(hb) = tp.heartbeat {
                        if conn.ping_sent != 0 {
                            if now.saturating_sub(conn.ping_sent) >= tp.heartbeat_timeout {
                                to_abort.push((conn.id, Some(CLOSE_HEARTBEAT_TIMEOUT)));
                            }
                        } else if quiet >= hb {
                            conn.ping_sent = now;
                            to_ping.push(conn.id);
                        }
                    }
                }
            }
        }
        for id in to_ping {
            if st.over_write_limit(io, id, 2) {
                st.slow_consumer(io, id, 0);
            } else {
                io.send_urgent(id, Bytes::from_static(&[0x89, 0x00]));
            }
        }
        for (id, code) in to_abort {
            let m = &st.metrics[st.core_index];
            let (phase, peer) = st.conn(id).map(|c| (c.phase, c.peer())).unzip();
            let peer = peer.map_or_else(String::new, |p| p.to_string());
            match (phase, code) {
                (Some(Phase::Handshake), _) => {
                    inc(&m.handshake_timeouts);
                    tracing::info!(%peer, "dropped: handshake timeout");
                }
                (_, Some(CLOSE_IDLE_TIMEOUT)) => {
                    inc(&m.idle_timeouts);
                    tracing::info!(%peer, code = code.map(|c| c.0), "closing: idle timeout");
                }
                (_, Some(CLOSE_HEARTBEAT_TIMEOUT)) => {
                    inc(&m.heartbeat_timeouts);
                    tracing::info!(%peer, code = code.map(|c| c.0), "closing: heartbeat timeout");
                }
                _ => tracing::info!(%peer, ?phase, "dropped: close timeout"),
            }
            if let (Some(code), Some(conn)) = (code, st.conn_mut(id)) {
                conn.close_code = code.0;
                // Best effort: tell the client why (nothing queued may follow the close), then
                // drop it without waiting.
                io.discard_unsent(id);
                io.send(id, close_frame(code, ""));
                io.close(id);
            } else {
                io.abort(id);
            }
        }
    }

    fn drain_commands(&mut self, io: &mut Io<'_>) {
        let shared = self.state.shared.clone();
        let queue = &shared.queues[self.state.core_index];
        // The same budget as the rings: publishes from outside threads come this way too.
        let mut budget = DRAIN_BUDGET;
        while budget > 0 {
            let Some(cmd) = queue.pop() else { break };
            budget -= 1;
            match cmd {
                Command::Send { conn, frame } => {
                    let _ = self.state.send_frame(io, conn, frame, 1);
                }
                Command::Close { conn, code, reason } => {
                    self.state.start_close(io, conn, code, &reason);
                }
                Command::Subscribe { conn, channel } => {
                    self.state.subscribe(io, conn, &channel);
                }
                Command::Unsubscribe { conn, channel } => {
                    self.state.unsubscribe(io, conn, &channel);
                }
                Command::ResolveUpgrade { conn, decision } => {
                    self.resolve_upgrade(io, conn, decision);
                }
                Command::Deliver(p) => self.state.deliver(io, &p),
                Command::CloseAll { code, reason } => {
                    let ids: Vec<ConnId> =
                        self.state.conns.iter().flatten().map(|c| c.id).collect();
                    for id in ids {
                        self.state.start_close(io, id, code, &reason);
                    }
                }
            }
        }
        if budget == 0 {
            // More work queued: come back after serving I/O.
            self.state.shared.wakers[self.state.core_index].wake();
        }
    }

    fn check_drained(&mut self, io: &mut Io<'_>) {
        if let Some(deadline) = self.state.draining {
            if self.state.conns.iter().all(Option::is_none) || self.state.now_tick >= deadline {
                io.stop();
            }
        }
    }
}

fn finish_http(st: &mut CoreState, io: &mut Io<'_>, id: ConnId, response: &[u8]) {
    let deadline = st.now_tick + st.ticks_per.close;
    if let Some(conn) = st.conn_mut(id) {
        conn.phase = Phase::Finishing;
        conn.deadline = deadline;
        conn.rbuf = BytesMut::new();
    }
    io.send(id, Bytes::copy_from_slice(response));
    io.close(id);
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Rejected",
    }
}

impl<H: Handler> Service for WsService<H> {
    fn on_open(&mut self, _io: &mut Io<'_>, id: ConnId, peer: SocketAddr) {
        let st = &mut self.state;
        let idx = id.index();
        if st.conns.len() <= idx {
            st.conns.resize_with(idx + 1, || None);
        }
        st.conns[idx] = Some(Conn {
            id,
            phase: Phase::Handshake,
            deadline: st.now_tick + st.ticks_per.handshake,
            last_seen: st.now_tick,
            ping_sent: 0,
            opened: false,
            protocol: 0,
            path: NO_PATH,
            close_code: 0,
            peer: peer.into(),
            rbuf: BytesMut::new(),
            data: None,
            decoder: None,
            extra: None,
        });
        inc(&st.metrics[st.core_index].accepted);
        if st.draining.is_some() {
            _io.abort(id);
        }
    }

    fn on_data(&mut self, io: &mut Io<'_>, id: ConnId, data: &[u8]) {
        let now = self.state.now_tick;
        let Some(conn) = self.state.conn_mut(id) else {
            return;
        };
        conn.last_seen = now;
        match conn.phase {
            Phase::Handshake => {
                conn.rbuf.extend_from_slice(data);
                if conn.extra.as_ref().is_none_or(|e| e.pending.is_none()) {
                    self.handshake(io, id);
                }
            }
            Phase::Open | Phase::Closing => {
                conn.rbuf.extend_from_slice(data);
                self.read_frames(io, id);
            }
            Phase::Finishing => {}
        }
    }

    fn on_close(&mut self, io: &mut Io<'_>, id: ConnId) {
        let st = &mut self.state;
        let Some(conn) = st.conn(id) else { return };
        let was_open = conn.opened;
        let code = match conn.close_code {
            0 => CloseCode::ABNORMAL,
            c => CloseCode(c),
        };
        let reason = conn
            .extra
            .as_ref()
            .and_then(|e| e.close_reason.clone())
            .unwrap_or_default();
        st.leave_all(id);
        if was_open {
            inc(&st.metrics[st.core_index].closed);
            st.open -= 1;
            if let Some(c) = st.conn_mut(id) {
                c.phase = Phase::Finishing;
            }
            self.handler
                .on_close(&mut Self::socket(&mut self.state, io, id), code, &reason);
        }
        self.state.conns[id.index()] = None;
        self.check_drained(io);
    }

    fn on_tick(&mut self, io: &mut Io<'_>, now: Instant) {
        let elapsed = now.duration_since(self.state.start);
        let tick = self.state.cfg.tick.max(std::time::Duration::from_millis(1));
        self.state.now_tick = 1 + (elapsed.as_nanos() / tick.as_nanos()) as u32;
        if self.state.now_tick.wrapping_sub(self.state.last_scan) >= self.state.ticks_per.scan {
            self.state.last_scan = self.state.now_tick;
            self.scan_timers(io);
        }
        self.check_drained(io);
    }

    fn on_wake(&mut self, io: &mut Io<'_>) {
        self.drain_commands(io);
        self.state.drain_inbox(io);
    }

    fn before_submit(&mut self, io: &mut Io<'_>) {
        self.state.uncork(io);
        if !self.state.pong_waiters.is_empty() {
            self.state.flush_pongs(io);
        }
    }

    fn on_shutdown(&mut self, io: &mut Io<'_>) {
        let st = &mut self.state;
        tracing::info!(
            open = st.open,
            "shutting down: closing connections with 1001"
        );
        st.draining = Some(st.now_tick + st.ticks_per.drain);
        io.stop_accepting();
        let ids: Vec<(ConnId, Phase)> =
            st.conns.iter().flatten().map(|c| (c.id, c.phase)).collect();
        for (id, phase) in ids {
            match phase {
                Phase::Open => {
                    st.start_close(io, id, CloseCode::GOING_AWAY, "server shutting down")
                }
                Phase::Handshake => io.abort(id),
                _ => {}
            }
        }
        self.check_drained(io);
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
