//! The runtime service of one core: the HTTP upgrade, decoding frames into handler
//! callbacks, timers, and commands from other cores and handles. It acts on connections only
//! through [`crate::connection::CoreState`].

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use edge_ws_protocol::connection::{Connection, ConnectionConfig, Event, TimeoutAction};
use edge_ws_protocol::deflate::negotiate_server;
use edge_ws_protocol::handshake::{
    parse_request, select_protocol, write_accept, write_http_response,
    write_http_response_with_headers, Accept, ParseOutcome, Request,
};
use edge_ws_protocol::{CloseCode, DecoderConfig, Encoder, Role};

use crate::config::{Config, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_IDLE_TIMEOUT};
use crate::fanout::{Cork, Outbox};
use crate::handler::{Handler, Socket};
use crate::ids::ConnectionId;
use crate::metrics::{add, inc};
use crate::runtime::{ConnId, Io, Service};
use crate::shared::{Command, Shared};
use crate::upgrade::{Rejection, Upgrade, UpgradeRequest};

use crate::connection::{Conn, CoreState, Phase, TickSpans, CORK_MAX_BYTES, DRAIN_BUDGET, NO_PATH};
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
        let ws_cfg = ConnectionConfig {
            role: Role::Server,
            limits: decoder_cfg,
            heartbeat_interval: ticks_per.heartbeat,
            heartbeat_timeout: ticks_per.heartbeat_timeout,
            idle_timeout: ticks_per.idle,
            close_timeout: ticks_per.close,
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
                start: Instant::now(),
                now_tick: 1,
                ticks_per,
                last_scan: 0,
                draining: None,
                out: Vec::new(),
                channels: HashMap::new(),
                outbox: Outbox::new(cores),
                streams: HashMap::new(),
                cork: Cork::default(),
                cork_max,
                shared_encoders: HashMap::new(),
                scratch_ids: Vec::new(),
                scratch_decoder: ws_cfg.decoder(),
                spare_rbuf: None,
                ws_cfg,
                paths: Vec::new(),
                path_index: HashMap::new(),
                pong_waiters: Vec::new(),
                resumed: Vec::new(),
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
        let empty = BytesMut::new();
        let outcome = parse_request(conn.rbuf.as_deref().unwrap_or(&empty), max);
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
                if let Some(r) = self.handler.on_http(&info) {
                    let headers: Vec<(&str, &str)> = r
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect();
                    write_http_response_with_headers(
                        r.status,
                        reason_phrase(r.status),
                        &r.content_type,
                        &headers,
                        &r.body,
                        &mut out,
                    );
                } else if info.method == "GET" && info.path == "/health" {
                    let (status, body) = st.shared.health();
                    write_http_response(
                        status,
                        reason_phrase(status),
                        "application/json",
                        body.as_bytes(),
                        &mut out,
                    );
                } else if info.method == "GET"
                    && st.cfg.metrics_path.as_deref() == Some(info.path.as_str())
                {
                    let body = st.shared.prometheus();
                    write_http_response(
                        200,
                        "OK",
                        "text/plain; version=0.0.4",
                        body.as_bytes(),
                        &mut out,
                    );
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
        protocol: Option<Option<String>>,
    ) {
        let Some(conn) = self.state.conn_mut(id) else {
            return;
        };
        let Some(pending) = conn.extra.as_mut().and_then(|e| e.pending.take()) else {
            return;
        };
        let (req, used) = *pending;
        let chosen = protocol.map_or(Chosen::Configured, Chosen::This);
        match decision {
            Ok(data) => {
                let data = data.map(|d| d as Box<dyn Any>);
                self.complete_upgrade(io, id, &req, used, chosen, data)
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
        let ws_cfg = st.ws_cfg;
        let Some(conn) = st.conn_mut(id) else {
            st.out = out;
            return;
        };
        conn.ws = Connection::new(now);
        if let Some((d, p)) = deflate {
            conn.ws.set_deflate(&ws_cfg, &p);
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
        if let Some(b) = conn.rbuf.as_deref_mut() {
            b.advance(used);
        }
        conn.phase = Phase::Open;
        conn.opened = true;
        if data.is_some() {
            conn.data = data;
        }
        io.send(id, Bytes::copy_from_slice(&out));
        st.open += 1;
        inc(&st.metrics[st.core_index].opened);
        st.out = out;
        self.handler
            .on_open(&mut Self::socket(&mut self.state, io, id));
        self.read_frames(io, id, &mut []);
    }

    /// Decodes what waits in the read buffer of `id` and then `data`, bytes just received,
    /// into handler callbacks; the state machine handles the control frames, whose answers go
    /// out through `CoreState::flush_control`. Messages are decoded straight from `data` while
    /// the read buffer is empty; only what that path leaves is copied into it
    /// (`Connection::poll_event_from`).
    fn read_frames(&mut self, io: &mut Io<'_>, id: ConnId, data: &mut [u8]) {
        let mut data = data;
        let now = self.state.now_tick;
        let cfg = self.state.ws_cfg;
        let superseded_before = self.state.conn(id).map_or(0, |c| c.ws.pongs_superseded());
        // Messages lent as views, counted once at the end.
        let (mut views, mut view_bytes) = (0u64, 0u64);
        loop {
            let st = &mut self.state;
            let Some(conn) = st.conns.get_mut(id.index()).and_then(Option::as_mut) else {
                break;
            };
            if conn.id != id || !matches!(conn.phase, Phase::Open | Phase::Closing) {
                break;
            }
            if conn.paused() {
                // The application holds this connection back: bytes wait in `rbuf`.
                if !data.is_empty() {
                    conn.rbuf
                        .get_or_insert_with(|| st.spare_rbuf.take().unwrap_or_default())
                        .extend_from_slice(data);
                }
                break;
            }
            // The common message, whole in this receive: lent to the handler, no allocation.
            let buffered: &[u8] = conn.rbuf.as_deref().map_or(&[], |b| &b[..]);
            if let Some(view) =
                conn.ws
                    .poll_view_from(&cfg, &st.scratch_decoder, buffered, &mut data, now)
            {
                match view {
                    Ok(view) => {
                        views += 1;
                        view_bytes += view.payload().len() as u64;
                        self.handler
                            .on_message_view(&mut Self::socket(&mut self.state, io, id), view);
                    }
                    Err(e) => st.count_protocol_error(id, e),
                }
                continue;
            }
            // Everything of this receive taken as views (the common end): nothing to poll.
            if data.is_empty() && conn.rbuf.is_none() && conn.ws.input_done(false) {
                break;
            }
            let rbuf = conn
                .rbuf
                .get_or_insert_with(|| st.spare_rbuf.take().unwrap_or_default());
            let event =
                conn.ws
                    .poll_event_from(&cfg, &mut st.scratch_decoder, rbuf, &mut data, now);
            let drained = rbuf.is_empty();
            match event {
                Ok(None) => {
                    if drained {
                        // Idle connections hold no read memory: the core keeps it for the next
                        // receive.
                        if let Some(b) = conn.rbuf.take() {
                            CoreState::recycle_rbuf(&mut st.spare_rbuf, b);
                        }
                    }
                    break;
                }
                Ok(Some(Event::Message(msg))) => {
                    let m = &st.metrics[st.core_index];
                    inc(&m.messages_in);
                    add(&m.bytes_in, msg.payload().len() as u64);
                    self.handler
                        .on_message(&mut Self::socket(&mut self.state, io, id), msg);
                }
                Ok(Some(Event::Ping)) => {
                    inc(&st.metrics[st.core_index].pings_in);
                    st.flush_control(io, id);
                }
                Ok(Some(Event::Pong(_))) => {}
                Ok(Some(Event::Closed { code, reason, .. })) => {
                    conn.phase = Phase::Finishing;
                    conn.rbuf = None;
                    if conn.close_code == 0 {
                        let reason = String::from_utf8_lossy(&reason).into_owned();
                        conn.set_close(code, &reason);
                    }
                    // The close reply (if any) after the data already queued, then the server
                    // closes the TCP connection first (RFC 6455 §7.1.1).
                    st.flush_control(io, id);
                    io.close(id);
                    break;
                }
                Err(e) => st.count_protocol_error(id, e),
            }
        }
        let m = self.state.m();
        if views > 0 {
            add(&m.messages_in, views);
            add(&m.bytes_in, view_bytes);
        }
        if let Some(c) = self.state.conn(id) {
            let superseded = c.ws.pongs_superseded().saturating_sub(superseded_before);
            add(&m.pongs_superseded, u64::from(superseded));
        }
    }

    fn scan_timers(&mut self, io: &mut Io<'_>) {
        let st = &mut self.state;
        let now = st.now_tick;
        let cfg = st.ws_cfg;
        let mut to_abort: Vec<ConnId> = Vec::new();
        let mut due = Vec::new();
        for conn in st.conns.iter_mut().flatten() {
            if conn.opened {
                if conn.ws.poll_timeout(&cfg).is_some_and(|d| now >= d) {
                    due.push(conn.id);
                }
            } else if now >= conn.deadline && conn.deadline != 0 {
                // The handshake, or the flush of a plain HTTP answer.
                to_abort.push(conn.id);
            }
        }
        for id in to_abort {
            let m = &st.metrics[st.core_index];
            if let Some(c) = st.conn(id) {
                if c.phase == Phase::Handshake {
                    inc(&m.handshake_timeouts);
                    tracing::info!(peer = %c.peer(), "dropped: handshake timeout");
                }
            }
            io.abort(id);
        }
        for id in due {
            let Some(conn) = st.conn_mut(id) else {
                continue;
            };
            let peer = conn.peer();
            let action = conn.ws.handle_timeout(&cfg, now);
            let (code, counter, what) = match action {
                None => continue,
                Some(TimeoutAction::Ping) => {
                    st.flush_control(io, id);
                    continue;
                }
                Some(TimeoutAction::CloseTimeout) => {
                    tracing::info!(%peer, "dropped: close timeout");
                    io.abort(id);
                    continue;
                }
                Some(TimeoutAction::HeartbeatTimeout) => (
                    CLOSE_HEARTBEAT_TIMEOUT,
                    &st.metrics[st.core_index].heartbeat_timeouts,
                    "closing: heartbeat timeout",
                ),
                Some(TimeoutAction::IdleTimeout) => (
                    CLOSE_IDLE_TIMEOUT,
                    &st.metrics[st.core_index].idle_timeouts,
                    "closing: idle timeout",
                ),
            };
            inc(counter);
            tracing::info!(%peer, code = code.0, "{what}");
            if let Some(conn) = st.conn_mut(id) {
                conn.close_code = code.0;
                conn.phase = Phase::Finishing;
                conn.rbuf = None;
            }
            // Best effort: the peer is presumably not reading, so nothing queued may delay the
            // close; then drop it without waiting.
            io.discard_unsent(id);
            st.flush_control(io, id);
            io.close(id);
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
                Command::ResolveUpgrade {
                    conn,
                    decision,
                    protocol,
                } => {
                    self.resolve_upgrade(io, conn, decision, protocol);
                }
                Command::Deliver(p) => self.state.deliver(io, &p),
                Command::Stream(msg) => self.state.on_stream(io, *msg),
                Command::Call { conn, f } => self.state.run_call(io, conn, f),
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
        conn.rbuf = None;
    }
    io.send(id, Bytes::copy_from_slice(response));
    io.close(id);
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
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
            opened: false,
            protocol: 0,
            path: NO_PATH,
            close_code: 0,
            peer: peer.into(),
            rbuf: None,
            data: None,
            ws: Connection::new(st.now_tick),
            extra: None,
        });
        inc(&st.metrics[st.core_index].accepted);
        if st.draining.is_some() {
            _io.abort(id);
        }
    }

    fn on_data(&mut self, io: &mut Io<'_>, id: ConnId, data: &mut [u8]) {
        let Some(conn) = self.state.conn_mut(id) else {
            return;
        };
        match conn.phase {
            Phase::Handshake => {
                conn.rbuf
                    .get_or_insert_with(Default::default)
                    .extend_from_slice(data);
                if conn.extra.as_ref().is_none_or(|e| e.pending.is_none()) {
                    self.handshake(io, id);
                }
            }
            Phase::Open | Phase::Closing => {
                self.read_frames(io, id, data);
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
        while !self.state.resumed.is_empty() {
            for id in std::mem::take(&mut self.state.resumed) {
                self.read_frames(io, id, &mut []);
            }
        }
        self.state.uncork(io);
        if !self.state.pong_waiters.is_empty() {
            self.state.flush_pongs(io);
        }
        // What this iteration handed the cluster broker goes out as one batch.
        self.state.shared.flush_broker();
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
