//! cluster-fanout: one publisher → N subscribers spread over one or more server processes,
//! for edge-ws (its JSON protocol on `/ws`) and for Socket.IO 4 (Engine.IO v4 / Socket.IO v5
//! over the raw websocket transport), with the same client code for both.
//!
//! ```text
//! cluster-fanout --proto edge-ws  --nodes 127.0.0.1:9101,127.0.0.1:9102,127.0.0.1:9103 \
//!     --subs 3000 --channel bench --size 64 --inflight 32 --warmup 1s --duration 4s \
//!     --pid node0=1234 --pid node1=1235 --pid node2=1236 --pid redis=1200 --label cluster
//! cluster-fanout --proto socketio --nodes ... (same)
//! ```
//!
//! Subscribers are spread evenly over the nodes (subscriber `i` on node `i % nodes`); the
//! publisher is on the first node. It sends message `seq` (0, 1, 2, …) only while fewer than
//! `--inflight` messages are not yet received by every subscriber (and at most `--rate` per
//! second if given); with `--rounds`, `--inflight` messages at once, in one write, and the
//! next round once every subscriber has all of them. Every subscriber checks it gets every message exactly once, in order:
//! a gap counts as lost messages, a repeat or an older one as a duplicate. After the
//! measuring window the publisher stops and the in-flight messages drain (bounded); a run
//! with losses, duplicates or errors prints `"ok":false` and exits 1.
//!
//! CPU: user + system time (/proc schedstat of every thread) of each `--pid` over the
//! measuring window, summed: CPU per delivery and deliveries per CPU-second. One JSON line on
//! stdout. One thread (epoll over every socket), pinned with `--client-core`. Loopback only.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use edge_ws_bench::args::{Arg, Args};
use edge_ws_bench::sys::{self, Epoll, Event, EV_ERR, EV_IN};
use edge_ws_bench::ws;
use edge_ws_protocol::OpCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
cluster-fanout: 1 publisher -> N subscribers over one or more edge-ws or Socket.IO processes

USAGE:
    cluster-fanout --proto edge-ws|socketio --nodes ADDR[,ADDR...] [OPTIONS]

OPTIONS:
    --subs N          subscribers, spread evenly over the nodes (default 3000)
    --channel NAME    edge-ws channel / Socket.IO room is the server's (default bench)
    --size N          payload bytes of each message (default 64, at least 24)
    --inflight N      messages not yet received by every subscriber, at most (default 32)
    --rounds          send --inflight messages at once (one write), the next round once all
                      of them reached every subscriber (default: a sliding window)
    --rate N          messages per second at most (default 0: only --inflight bounds it)
    --warmup D        publishing before the measuring window (default 1s)
    --duration D      the measuring window (default 4s)
    --pid NAME=PID    a process whose CPU counts (repeatable: every server and Redis)
    --label TEXT      the row's name in the JSON line (default: the protocol)
    --client-core N   pin the client thread to core N
    --batch N         connections opened at once during setup (default 250)
    --settle D        wait after every subscriber is ready, before publishing (default 300ms)
    --timeout D       setup of one batch, the drain, and a stall in delivery (default 10s)
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    EdgeWs,
    SocketIo,
}

#[derive(Debug)]
struct Config {
    proto: Proto,
    nodes: Vec<SocketAddr>,
    subs: usize,
    channel: String,
    size: usize,
    inflight: u64,
    rounds: bool,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    pids: Vec<(String, u32)>,
    label: String,
    client_core: Option<usize>,
    batch: usize,
    settle: Duration,
    timeout: Duration,
}

fn parse_config() -> Result<Option<Config>, String> {
    let mut a = Args::from_env();
    let mut c = Config {
        proto: Proto::EdgeWs,
        nodes: Vec::new(),
        subs: 3000,
        channel: "bench".into(),
        size: 64,
        inflight: 32,
        rounds: false,
        rate: 0.0,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(4),
        pids: Vec::new(),
        label: String::new(),
        client_core: None,
        batch: 250,
        settle: Duration::from_millis(300),
        timeout: Duration::from_secs(10),
    };
    let mut proto_set = false;
    while let Some(arg) = a.next_arg()? {
        let Arg::Long(name) = arg else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        match name.as_str() {
            "help" => return Ok(None),
            "proto" => {
                c.proto = match a.value()?.as_str() {
                    "edge-ws" => Proto::EdgeWs,
                    "socketio" => Proto::SocketIo,
                    p => return Err(format!("--proto {p:?}: edge-ws or socketio")),
                };
                proto_set = true;
            }
            "nodes" => {
                for s in a.value()?.split(',').filter(|s| !s.is_empty()) {
                    let addr: SocketAddr = s.parse().map_err(|_| format!("bad address {s:?}"))?;
                    if !addr.ip().is_loopback() {
                        return Err(format!("{addr}: loopback addresses only"));
                    }
                    c.nodes.push(addr);
                }
            }
            "subs" => c.subs = a.parse()?,
            "channel" => c.channel = a.value()?,
            "size" => c.size = a.size()?,
            "inflight" => c.inflight = a.parse()?,
            "rounds" => c.rounds = true,
            "rate" => c.rate = a.parse()?,
            "warmup" => c.warmup = a.duration()?,
            "duration" => c.duration = a.duration()?,
            "pid" => {
                let v = a.value()?;
                let (n, p) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--pid {v:?}: NAME=PID"))?;
                let pid = p.parse().map_err(|_| format!("--pid {v:?}: bad pid"))?;
                c.pids.push((n.to_string(), pid));
            }
            "label" => c.label = a.value()?,
            "client-core" => c.client_core = Some(a.parse()?),
            "batch" => c.batch = a.parse()?,
            "settle" => c.settle = a.duration()?,
            "timeout" => c.timeout = a.duration()?,
            _ => return Err(format!("unknown option --{name}")),
        }
    }
    if !proto_set || c.nodes.is_empty() {
        return Err("--proto and --nodes are required".into());
    }
    if c.subs == 0 || c.subs > 200_000 {
        return Err("--subs: 1 to 200000".into());
    }
    if !(24..=60_000).contains(&c.size) {
        return Err("--size: 24 to 60000".into());
    }
    if c.inflight == 0 || c.inflight > RING / 2 {
        return Err(format!("--inflight: 1 to {}", RING / 2));
    }
    if c.channel.is_empty() || !c.channel.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return Err("--channel: printable ASCII without quotes".into());
    }
    c.batch = c.batch.clamp(1, 10_000);
    if c.label.is_empty() {
        c.label = match c.proto {
            Proto::EdgeWs => "edge-ws".into(),
            Proto::SocketIo => "socketio".into(),
        };
    }
    Ok(Some(c))
}

/// Slots of the per-message delivery counters (a power of two, far above `--inflight`).
const RING: u64 = 1 << 16;

/// Where a connection is in its setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Upgrade request sent; waiting for the 101.
    Upgrading,
    /// WebSocket open; edge-ws: `subscribe` sent, Socket.IO: waiting for the open packet `0`.
    Opened,
    /// Socket.IO: `40` sent, waiting for the namespace's `40{...}`.
    Connecting,
    /// Subscribed (or, for the publisher, ready to publish).
    Ready,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes of an incomplete frame (or upgrade response) from the previous read.
    pending: Vec<u8>,
    phase: Phase,
    /// The publisher (not a subscriber).
    publisher: bool,
    /// The next sequence number this subscriber expects.
    expect: u64,
    node: usize,
}

#[derive(Debug, Default)]
struct Counts {
    deliveries: u64,
    lost: u64,
    duplicates: u64,
    errors: u64,
    per_node: Vec<u64>,
}

struct Run {
    cfg: Config,
    conns: Vec<Conn>,
    epoll: Epoll,
    raw: Vec<libc::epoll_event>,
    events: Vec<Event>,
    scratch: Vec<u8>,
    accept: String,
    /// Deliveries of message `seq` so far, at `seq % RING`.
    got: Vec<u32>,
    /// The next message to publish.
    next_seq: u64,
    /// Every message below this one reached every subscriber.
    complete: u64,
    counts: Counts,
    /// The first error texts, for the report.
    error_texts: Vec<String>,
    payload: Vec<u8>,
}

fn main() -> ExitCode {
    let cfg = match parse_config() {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cluster-fanout: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(core) = cfg.client_core {
        if !sys::pin_current(core) {
            eprintln!("cluster-fanout: could not pin to core {core}");
        }
    }
    sys::raise_nofile();
    match run(cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cluster-fanout: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cfg: Config) -> io::Result<bool> {
    let mut payload = ws::payload(cfg.size);
    payload[0] = b'~';
    let nodes = cfg.nodes.len();
    let mut r = Run {
        epoll: Epoll::new()?,
        raw: sys::event_buffer(1024),
        events: Vec::with_capacity(1024),
        scratch: vec![0u8; 256 * 1024],
        accept: ws::accept_key(ws::CLIENT_KEY.as_bytes()),
        got: vec![0u32; RING as usize],
        next_seq: 0,
        complete: 0,
        counts: Counts {
            per_node: vec![0; nodes],
            ..Counts::default()
        },
        error_texts: Vec::new(),
        conns: Vec::with_capacity(cfg.subs + 1),
        payload,
        cfg,
    };

    // Setup: the subscribers in batches (each batch ready before the next), then the publisher.
    let setup_start = Instant::now();
    let total = r.cfg.subs;
    let mut opened = 0;
    while opened < total {
        let n = r.cfg.batch.min(total - opened);
        for i in opened..opened + n {
            let node = i % nodes;
            r.open(node, false)?;
        }
        opened += n;
        r.wait_ready(opened)?;
    }
    r.open(0, true)?;
    r.wait_ready(total + 1)?;
    let setup = setup_start.elapsed();
    std::thread::sleep(r.cfg.settle);

    // Warm-up, then the measuring window, then the drain.
    let warm_end = Instant::now() + r.cfg.warmup;
    r.pump_until(warm_end, true)?;
    let cpu0 = r.cpu();
    let us0 = r.user_sys();
    let self0 = sys::self_cpu_ns();
    let d0 = r.counts.deliveries;
    let c0 = r.complete;
    let t0 = Instant::now();
    r.pump_until(t0 + r.cfg.duration, true)?;
    let elapsed = t0.elapsed();
    let cpu1 = r.cpu();
    let us1 = r.user_sys();
    let self1 = sys::self_cpu_ns();
    let d1 = r.counts.deliveries;
    let c1 = r.complete;
    let drained = r.drain()?;
    // What each subscriber still misses of what was published.
    let published = r.next_seq;
    for c in r.conns.iter().filter(|c| !c.publisher) {
        r.counts.lost += published.saturating_sub(c.expect);
    }
    r.report(ReportIn {
        setup,
        elapsed,
        cpu0,
        cpu1,
        client_ns: self1.saturating_sub(self0),
        user_ns: us1.0.saturating_sub(us0.0),
        sys_ns: us1.1.saturating_sub(us0.1),
        deliveries: d1 - d0,
        messages: c1 - c0,
        drained,
    })
}

struct ReportIn {
    setup: Duration,
    elapsed: Duration,
    cpu0: Vec<Option<u64>>,
    cpu1: Vec<Option<u64>>,
    client_ns: u64,
    user_ns: u64,
    sys_ns: u64,
    deliveries: u64,
    messages: u64,
    drained: bool,
}

impl Run {
    /// Connects to node `node` and sends the upgrade request.
    fn open(&mut self, node: usize, publisher: bool) -> io::Result<()> {
        let addr = self.cfg.nodes[node];
        let stream = TcpStream::connect_timeout(&addr, self.cfg.timeout)?;
        stream.set_nodelay(true)?;
        let path = match (self.cfg.proto, publisher) {
            (Proto::EdgeWs, _) => "/ws".to_string(),
            (Proto::SocketIo, false) => "/socket.io/?EIO=4&transport=websocket&role=sub".into(),
            (Proto::SocketIo, true) => "/socket.io/?EIO=4&transport=websocket&role=pub".into(),
        };
        stream.set_write_timeout(Some(self.cfg.timeout))?;
        (&stream).write_all(&ws::upgrade_request(&addr.to_string(), &path))?;
        stream.set_nonblocking(true)?;
        let token = self.conns.len() as u64;
        self.epoll.add(stream.as_raw_fd(), token, EV_IN)?;
        self.conns.push(Conn {
            stream,
            pending: Vec::new(),
            phase: Phase::Upgrading,
            publisher,
            expect: 0,
            node,
        });
        Ok(())
    }

    /// Runs the event loop until the first `n` connections are ready.
    fn wait_ready(&mut self, n: usize) -> io::Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let ready = self.conns[..n]
                .iter()
                .filter(|c| c.phase == Phase::Ready)
                .count();
            if ready == n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "setup: {ready} of {n} connections ready after {:?} (errors: {:?})",
                        self.cfg.timeout, self.error_texts
                    ),
                ));
            }
            if self.counts.errors > 0 {
                return Err(io::Error::other(format!(
                    "setup failed: {:?}",
                    self.error_texts
                )));
            }
            self.poll(50)?;
        }
    }

    /// Publishes and delivers until `end`; a stall longer than the timeout ends it early.
    fn pump_until(&mut self, end: Instant, publish: bool) -> io::Result<()> {
        let start = Instant::now();
        let sent_before = self.next_seq;
        let mut last_progress = Instant::now();
        let mut last_complete = self.complete;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            if publish {
                let mut allowed = self.complete + self.cfg.inflight;
                if self.cfg.rate > 0.0 {
                    let by_rate = sent_before
                        + (now.duration_since(start).as_secs_f64() * self.cfg.rate) as u64
                        + 1;
                    allowed = allowed.min(by_rate);
                }
                // Rounds: a whole burst once the previous one reached everybody.
                if self.cfg.rounds && self.complete < self.next_seq {
                    allowed = self.next_seq;
                }
                if self.next_seq < allowed {
                    self.publish(allowed)?;
                }
            }
            self.poll(1)?;
            if self.complete != last_complete {
                last_complete = self.complete;
                last_progress = Instant::now();
            } else if self.next_seq > self.complete && last_progress.elapsed() > self.cfg.timeout {
                eprintln!(
                    "cluster-fanout: no progress for {:?} at message {} (published {})",
                    self.cfg.timeout, self.complete, self.next_seq
                );
                return Ok(());
            }
        }
    }

    /// Waits (bounded) until every published message reached every subscriber.
    fn drain(&mut self) -> io::Result<bool> {
        let deadline = Instant::now() + self.cfg.timeout;
        while self.complete < self.next_seq {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.poll(10)?;
        }
        Ok(true)
    }

    /// Sends message `next_seq` on the publisher connection.
    /// Sends the messages from `next_seq` up to `until` on the publisher connection, in one
    /// write.
    fn publish(&mut self, until: u64) -> io::Result<()> {
        let mut out = Vec::new();
        while self.next_seq < until {
            self.frame(&mut out);
            self.next_seq += 1;
        }
        let i = self.conns.len() - 1;
        send(&self.conns[i].stream, &out, self.cfg.timeout)
    }

    /// Appends the frame of message `next_seq` to `out`.
    fn frame(&mut self, out: &mut Vec<u8>) {
        let seq = self.next_seq;
        let hex = format!("{seq:016x}");
        self.payload[1..17].copy_from_slice(hex.as_bytes());
        let body = std::str::from_utf8(&self.payload).expect("ASCII payload");
        let text = match self.cfg.proto {
            Proto::EdgeWs => format!(
                r#"{{"type":"publish","data":{{"channel":"{}","data":"{body}"}}}}"#,
                self.cfg.channel
            ),
            Proto::SocketIo => format!(r#"42["pub","{body}"]"#),
        };
        out.extend_from_slice(&ws::masked_frame(OpCode::Text, text.as_bytes()));
    }

    fn cpu(&self) -> Vec<Option<u64>> {
        self.cfg
            .pids
            .iter()
            .map(|(_, p)| sys::process_cpu_ns(*p))
            .collect()
    }

    /// (user, system) ns of every `--pid`, summed (clock-tick precision).
    fn user_sys(&self) -> (u64, u64) {
        self.cfg
            .pids
            .iter()
            .filter_map(|(_, p)| user_sys_ns(*p))
            .fold((0, 0), |(u, s), (a, b)| (u + a, s + b))
    }

    /// One epoll wait and the reads it allows.
    fn poll(&mut self, timeout_ms: i32) -> io::Result<()> {
        let mut events = std::mem::take(&mut self.events);
        self.epoll.wait(&mut self.raw, &mut events, timeout_ms)?;
        for ev in &events {
            let i = ev.token as usize;
            if ev.flags & (EV_IN | EV_ERR) != 0 {
                self.read(i)?;
            }
        }
        self.events = events;
        // Advance the completed prefix.
        let n = self.cfg.subs as u32;
        while self.complete < self.next_seq && self.got[(self.complete % RING) as usize] >= n {
            self.got[(self.complete % RING) as usize] = 0;
            self.complete += 1;
        }
        Ok(())
    }

    /// Reads what connection `i` has and handles every complete frame.
    fn read(&mut self, i: usize) -> io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut have = {
            let p = &mut self.conns[i].pending;
            let n = p.len();
            if n > scratch.len() / 2 {
                scratch.resize(n * 2, 0);
            }
            scratch[..n].copy_from_slice(p);
            p.clear();
            n
        };
        let mut closed = false;
        // Bounded: a few reads per wake-up, so that one busy socket cannot starve the others.
        for _ in 0..8 {
            if have == scratch.len() {
                scratch.resize(scratch.len() * 2, 0);
            }
            match (&self.conns[i].stream).read(&mut scratch[have..]) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    have += n;
                    if have < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error(format!("read: {e}"));
                    closed = true;
                    break;
                }
            }
        }
        let used = self.handle(i, &scratch[..have])?;
        self.conns[i]
            .pending
            .extend_from_slice(&scratch[used..have]);
        self.scratch = scratch;
        if closed {
            self.error(format!(
                "connection {i} (node {}) closed by the server",
                self.conns[i].node
            ));
            let _ = self.epoll.delete(self.conns[i].stream.as_raw_fd());
        }
        Ok(())
    }

    fn error(&mut self, text: String) {
        self.counts.errors += 1;
        if self.error_texts.len() < 5 {
            self.error_texts.push(text);
        }
    }

    /// Handles the complete frames (or the upgrade response) at the start of `buf`; returns
    /// how many bytes were used.
    fn handle(&mut self, i: usize, buf: &[u8]) -> io::Result<usize> {
        let mut at = 0;
        if self.conns[i].phase == Phase::Upgrading {
            match ws::check_upgrade_response(buf, &self.accept) {
                Ok(None) => return Ok(0),
                Ok(Some(n)) => {
                    at = n;
                    self.opened(i)?;
                }
                Err(e) => {
                    self.error(format!("connection {i}: {e}"));
                    return Ok(buf.len());
                }
            }
        }
        while let Some((op, start, end)) = frame_at(&buf[at..]) {
            let payload = &buf[at + start..at + end];
            match op {
                0x1 | 0x2 => self.message(i, payload)?,
                0x8 => {
                    let text =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                    self.error(format!("connection {i}: close frame {text:?}"));
                }
                0x9 => {
                    let pong = ws::masked_frame(OpCode::Pong, payload);
                    send(&self.conns[i].stream, &pong, self.cfg.timeout)?;
                }
                _ => {}
            }
            at += end;
        }
        Ok(at)
    }

    /// The WebSocket is open: edge-ws subscribers subscribe, the publisher is ready.
    fn opened(&mut self, i: usize) -> io::Result<()> {
        let c = &mut self.conns[i];
        c.phase = Phase::Opened;
        if self.cfg.proto == Proto::EdgeWs {
            if c.publisher {
                c.phase = Phase::Ready;
            } else {
                let text = format!(
                    r#"{{"type":"subscribe","id":1,"data":{{"channel":"{}"}}}}"#,
                    self.cfg.channel
                );
                let frame = ws::masked_frame(OpCode::Text, text.as_bytes());
                send(&c.stream, &frame, self.cfg.timeout)?;
            }
        }
        Ok(())
    }

    /// One text or binary message on connection `i`.
    fn message(&mut self, i: usize, m: &[u8]) -> io::Result<()> {
        match self.cfg.proto {
            Proto::EdgeWs => {
                if m.starts_with(br#"{"type":"publication""#) {
                    self.delivery(i, m);
                } else if m.starts_with(br#"{"type":"subscribed""#) {
                    self.conns[i].phase = Phase::Ready;
                } else {
                    let t = String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned();
                    self.error(format!("connection {i}: unexpected {t}"));
                }
            }
            Proto::SocketIo => {
                if m.starts_with(b"42") {
                    self.delivery(i, m);
                } else if m == b"2" {
                    send(
                        &self.conns[i].stream,
                        &ws::masked_frame(OpCode::Text, b"3"),
                        self.cfg.timeout,
                    )?;
                } else if m.starts_with(b"0{") {
                    let c = &mut self.conns[i];
                    c.phase = Phase::Connecting;
                    send(
                        &c.stream,
                        &ws::masked_frame(OpCode::Text, b"40"),
                        self.cfg.timeout,
                    )?;
                } else if m.starts_with(b"40") {
                    self.conns[i].phase = Phase::Ready;
                } else {
                    let t = String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned();
                    self.error(format!("connection {i}: unexpected {t}"));
                }
            }
        }
        Ok(())
    }

    /// A message carrying `~<16 hex digits>`: checks the sequence and counts it.
    fn delivery(&mut self, i: usize, m: &[u8]) {
        let seq = m
            .iter()
            .position(|&b| b == b'~')
            .and_then(|p| m.get(p + 1..p + 17))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        let Some(seq) = seq else {
            let t = String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned();
            self.error(format!("connection {i}: no sequence number in {t}"));
            return;
        };
        let c = &mut self.conns[i];
        if c.publisher || seq >= self.next_seq {
            self.error(format!("connection {i}: unexpected message {seq}"));
            return;
        }
        if seq < c.expect {
            self.counts.duplicates += 1;
            return;
        }
        if seq > c.expect {
            self.counts.lost += seq - c.expect;
        }
        c.expect = seq + 1;
        self.counts.deliveries += 1;
        self.counts.per_node[c.node] += 1;
        self.got[(seq % RING) as usize] += 1;
    }

    fn report(&mut self, x: ReportIn) -> io::Result<bool> {
        let secs = x.elapsed.as_secs_f64();
        let mut cpu_total = 0u64;
        let mut cpu_json = Vec::new();
        let mut cpu_missing = false;
        for (k, (name, _)) in self.cfg.pids.iter().enumerate() {
            match (x.cpu0[k], x.cpu1[k]) {
                (Some(a), Some(b)) => {
                    cpu_total += b.saturating_sub(a);
                    cpu_json.push(format!("\"{name}\":{}", b.saturating_sub(a)));
                }
                _ => {
                    cpu_missing = true;
                    cpu_json.push(format!("\"{name}\":null"));
                }
            }
        }
        let per_delivery_ns = if x.deliveries > 0 {
            cpu_total as f64 / x.deliveries as f64
        } else {
            0.0
        };
        let per_cpu_s = if cpu_total > 0 {
            x.deliveries as f64 / (cpu_total as f64 / 1e9)
        } else {
            0.0
        };
        let c = &self.counts;
        let ok = c.lost == 0
            && c.duplicates == 0
            && c.errors == 0
            && x.drained
            && x.deliveries > 0
            && !cpu_missing;
        let errors_json: Vec<String> = self
            .error_texts
            .iter()
            .map(|e| format!("\"{}\"", e.replace(['"', '\\'], "'")))
            .collect();
        let per_node: Vec<String> = c.per_node.iter().map(|n| n.to_string()).collect();
        println!(
            "{{\"label\":\"{}\",\"proto\":\"{}\",\"nodes\":{},\"subs\":{},\"channel\":\"{}\",\"size\":{},\
             \"inflight\":{},\"rounds\":{},\"rate\":{},\"setup_s\":{:.3},\"window_s\":{:.3},\"messages\":{},\
             \"deliveries\":{},\"deliveries_per_s\":{:.0},\"messages_per_s\":{:.1},\
             \"cpu_ns\":{{{}}},\"cpu_ns_total\":{},\"cpu_us_per_delivery\":{:.5},\
             \"deliveries_per_cpu_s\":{:.0},\"user_ns\":{},\"sys_ns\":{},\"client_cpu_ns\":{},\"published\":{},\
             \"deliveries_all\":{},\"deliveries_per_node\":[{}],\"lost\":{},\"duplicates\":{},\
             \"errors\":{},\"error_texts\":[{}],\"drained\":{},\"ok\":{}}}",
            self.cfg.label,
            match self.cfg.proto {
                Proto::EdgeWs => "edge-ws",
                Proto::SocketIo => "socketio",
            },
            self.cfg.nodes.len(),
            self.cfg.subs,
            self.cfg.channel,
            self.cfg.size,
            self.cfg.inflight,
            self.cfg.rounds,
            self.cfg.rate,
            x.setup.as_secs_f64(),
            secs,
            x.messages,
            x.deliveries,
            x.deliveries as f64 / secs,
            x.messages as f64 / secs,
            cpu_json.join(","),
            cpu_total,
            per_delivery_ns / 1000.0,
            per_cpu_s,
            x.user_ns,
            x.sys_ns,
            x.client_ns,
            self.next_seq,
            c.deliveries,
            per_node.join(","),
            c.lost,
            c.duplicates,
            c.errors,
            errors_json.join(","),
            x.drained,
            ok
        );
        Ok(ok)
    }
}

/// (utime, stime) of process `pid` from `/proc/PID/stat`, in ns.
fn user_sys_ns(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields start after the command name's last ')': utime and stime are the 12th and 13th.
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some((utime * 1_000_000_000 / hz, stime * 1_000_000_000 / hz))
}

/// Writes all of `buf` to a non-blocking socket, waiting (bounded) while it is full.
fn send(mut s: &TcpStream, mut buf: &[u8], timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "send timed out"));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The first complete server (unmasked) frame in `buf`: (opcode, payload start, frame end).
fn frame_at(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut head): (usize, usize) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if masked {
        head += 4;
    }
    let end = head.checked_add(len)?;
    if buf.len() < end {
        return None;
    }
    Some((op, head, end))
}

#[cfg(test)]
mod tests {
    use super::frame_at;

    #[test]
    fn frames() {
        assert_eq!(frame_at(&[0x81, 2, b'h', b'i', 0x81]), Some((1, 2, 4)));
        assert_eq!(frame_at(&[0x81, 3, b'h', b'i']), None);
        let mut f = vec![0x82, 126, 0x01, 0x00];
        f.extend(std::iter::repeat_n(0u8, 256));
        assert_eq!(frame_at(&f), Some((2, 4, 260)));
        assert_eq!(frame_at(&f[..100]), None);
    }
}
