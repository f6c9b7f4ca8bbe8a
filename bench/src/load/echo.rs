//! Echo mode: N connections, each keeping K messages of S bytes in flight.
//!
//! Per thread: one epoll, one read scratch buffer, one pre-built batch of K identical masked
//! frames. On each readable event: one read, parse every complete echo, record their round
//! trips (send times kept per connection in a FIFO), then write as many new frames in one
//! `write` (a slice of the pre-built batch, no copy) — so K stay in flight.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws_protocol::{FrameHeader, OpCode};
use hdrhistogram::Histogram;

use super::dial::{Dialer, Opened};
use super::report::{fmt_summary, Report};
use super::{measure_window, new_histogram, worker_core, Config, Start, Window};
use crate::sys::{self, Epoll, Event, EV_ERR, EV_IN, EV_OUT};
use crate::ws;

/// Read scratch size per thread.
const SCRATCH: usize = 256 * 1024;

/// What one worker thread counted.
#[derive(Debug)]
pub struct Tally {
    /// Echoes received inside the window.
    pub msgs: u64,
    /// Round-trip latencies (ns) inside the window.
    pub hist: Histogram<u64>,
    /// Protocol or I/O errors (bad echo, reset, failed connect).
    pub errors: u64,
    /// Connections the server closed (EOF or close frame).
    pub closes: u64,
    /// Connections that were open when the window started.
    pub opened: u64,
    /// First error seen, for the report.
    pub first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            msgs: 0,
            hist: new_histogram(),
            errors: 0,
            closes: 0,
            opened: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.into());
        }
    }

    fn merge(&mut self, o: Tally) {
        self.msgs += o.msgs;
        let _ = self.hist.add(&o.hist);
        self.errors += o.errors;
        self.closes += o.closes;
        self.opened += o.opened;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Runs echo mode and builds the report.
pub fn run(cfg: &Config) -> Report {
    let base = Instant::now();
    let setup_deadline = base + cfg.deadline.saturating_sub(cfg.warmup + cfg.duration);
    let start = Start::new(cfg.threads);
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let n = cfg.conns / cfg.threads + usize::from(t < cfg.conns % cfg.threads);
        let c = cfg.clone();
        let st = Arc::clone(&start);
        handles.push(
            std::thread::Builder::new()
                .name(format!("wsload-{t}"))
                .spawn(move || worker(&c, t, n, &st, setup_deadline))
                .expect("spawn worker"),
        );
    }
    let w = start.coordinate(base, cfg.warmup, cfg.duration);
    let cpu = measure_window(&w, cfg.server_pid);
    let mut total = Tally::new();
    for h in handles {
        match h.join() {
            Ok(t) => total.merge(t),
            Err(_) => total.error("worker panicked"),
        }
    }
    let mut r = Report::new(cfg);
    r.throughput(total.msgs, cfg.size, &cpu, &total.hist);
    r.errors(total.errors);
    r.set("closes", total.closes);
    r.set("conns_open", total.opened);
    if let Some(e) = &total.first_error {
        r.set("first_error", e.as_str());
    }
    if total.msgs == 0 {
        r.fatal("no echoes received in the window");
    }
    let rate = total.msgs as f64 / (cpu.wall_ns.max(1) as f64 / 1e9);
    r.summary(fmt_summary(
        "msg",
        rate,
        &total.hist,
        &cpu,
        total.msgs,
        total.errors,
        total.closes,
    ));
    r
}

struct Conn {
    stream: TcpStream,
    /// Bytes of an incomplete frame carried to the next read (framed mode).
    carry: Vec<u8>,
    /// Bytes of an incomplete chunk carried (raw mode: only the count matters).
    carry_raw: usize,
    /// Bytes the kernel did not take yet.
    out: Vec<u8>,
    out_armed: bool,
    /// Send times (ns since base) of the frames in flight, oldest first.
    sent: VecDeque<u64>,
    alive: bool,
}

struct Shape {
    raw: bool,
    size: usize,
    depth: usize,
    opcode: OpCode,
    verify: bool,
    frame_len: usize,
    /// `depth` copies of the masked frame back to back.
    batch: Vec<u8>,
    payload: Vec<u8>,
}

fn worker(cfg: &Config, idx: usize, n: usize, start: &Start, setup_deadline: Instant) -> Tally {
    if let Some(core) = worker_core(cfg, idx) {
        sys::pin_current(core);
    }
    let mut tally = Tally::new();
    let src_ips = if cfg.src_ips == 0 {
        super::dial::auto_src_ips(cfg.conns)
    } else {
        cfg.src_ips
    };
    let mut dialer = Dialer::new(cfg.addr, src_ips, cfg.connect_timeout);
    let (opened, fails, first) = dialer.open_many(n, &cfg.path, cfg.raw, setup_deadline);
    for _ in 0..fails {
        tally.error(first.clone().unwrap_or_default());
    }
    let opcode = if cfg.text {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    let payload = cfg.payload.clone().unwrap_or_else(|| ws::payload(cfg.size));
    let frame = if cfg.raw {
        payload.clone()
    } else {
        ws::masked_frame(opcode, &payload)
    };
    let shape = Shape {
        raw: cfg.raw,
        size: cfg.size,
        depth: cfg.depth,
        opcode,
        verify: cfg.verify,
        frame_len: frame.len(),
        batch: frame.repeat(cfg.depth),
        payload,
    };
    let ep = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            tally.error(format!("epoll: {e}"));
            let _ = start.worker_wait();
            return tally;
        }
    };
    let mut conns = Vec::with_capacity(opened.len());
    for Opened { stream, leftover } in opened {
        if let Err(e) = stream.set_nonblocking(true) {
            tally.error(format!("set_nonblocking: {e}"));
            continue;
        }
        let token = conns.len() as u64;
        if let Err(e) = ep.add(stream.as_raw_fd(), token, EV_IN) {
            tally.error(format!("epoll add: {e}"));
            continue;
        }
        conns.push(Conn {
            stream,
            carry: leftover,
            carry_raw: 0,
            out: Vec::new(),
            out_armed: false,
            sent: VecDeque::with_capacity(cfg.depth),
            alive: true,
        });
    }
    tally.opened = conns.len() as u64;

    let w = start.worker_wait();
    event_loop(&ep, &mut conns, &shape, &w, &mut tally);
    tally
}

fn event_loop(ep: &Epoll, conns: &mut [Conn], shape: &Shape, w: &Window, tally: &mut Tally) {
    let mut raw_events = sys::event_buffer(1024);
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    let now_ns = w.ns(Instant::now());
    for (i, c) in conns.iter_mut().enumerate() {
        send_frames(ep, i as u64, c, shape, shape.depth, now_ns, tally);
    }
    loop {
        let now = Instant::now();
        if now >= w.end {
            break;
        }
        let timeout = (w.end - now).min(Duration::from_millis(10));
        if let Err(e) = ep.wait(
            &mut raw_events,
            &mut events,
            timeout.as_millis().max(1) as i32,
        ) {
            tally.error(format!("epoll_wait: {e}"));
            break;
        }
        let now = Instant::now();
        let now_ns = w.ns(now);
        let in_window = now >= w.start && now < w.end;
        for ev in &events {
            let token = ev.token;
            let c = &mut conns[token as usize];
            if !c.alive {
                continue;
            }
            if ev.flags & EV_OUT != 0 && !c.out.is_empty() {
                flush_out(ep, token, c, tally);
            }
            if ev.flags & (EV_IN | EV_ERR) != 0 && c.alive {
                let got = on_readable(c, shape, &mut scratch, now_ns, in_window, tally);
                if got > 0 && c.alive {
                    if in_window {
                        tally.msgs += got as u64;
                    }
                    send_frames(ep, token, c, shape, got, now_ns, tally);
                }
            }
            if !c.alive {
                // Level-triggered: a dead socket must leave the set or it reports forever.
                let _ = ep.delete(c.stream.as_raw_fd());
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Reads once, parses every complete echo; returns how many completed.
fn on_readable(
    c: &mut Conn,
    shape: &Shape,
    scratch: &mut [u8],
    now_ns: u64,
    in_window: bool,
    tally: &mut Tally,
) -> usize {
    let carried = c.carry.len();
    if carried > 0 {
        if carried >= scratch.len() {
            tally.error("frame larger than the read buffer");
            c.alive = false;
            return 0;
        }
        scratch[..carried].copy_from_slice(&c.carry);
    }
    let n = match c.stream.read(&mut scratch[carried..]) {
        Ok(0) => {
            tally.closes += 1;
            c.alive = false;
            return 0;
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return 0,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return 0,
        Err(e) => {
            tally.error(format!("read: {e}"));
            c.alive = false;
            return 0;
        }
    };
    let got = if shape.raw {
        let total = c.carry_raw + n;
        c.carry_raw = total % shape.size;
        total / shape.size
    } else {
        let data = &scratch[..carried + n];
        let (got, used) = parse_echoes(data, shape, c, tally);
        c.carry.clear();
        if c.alive {
            c.carry.extend_from_slice(&data[used..]);
        }
        got
    };
    for _ in 0..got {
        match c.sent.pop_front() {
            Some(t) => {
                if in_window {
                    let _ = tally.hist.record(now_ns.saturating_sub(t).max(1));
                }
            }
            None => {
                tally.error("more echoes than messages sent");
                c.alive = false;
                return 0;
            }
        }
    }
    got
}

/// Parses complete frames from `data`; returns (echoes, bytes consumed).
fn parse_echoes(data: &[u8], shape: &Shape, c: &mut Conn, tally: &mut Tally) -> (usize, usize) {
    let mut pos = 0;
    let mut got = 0;
    while pos < data.len() {
        let (h, hl) = match FrameHeader::decode(&data[pos..]) {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => {
                tally.error(format!("bad frame from server: {e}"));
                c.alive = false;
                break;
            }
        };
        let plen = h.payload_len as usize;
        if data.len() - pos - hl < plen {
            break;
        }
        let body = &data[pos + hl..pos + hl + plen];
        match h.opcode {
            op if op == shape.opcode && h.fin && h.mask.is_none() && plen == shape.size => {
                if shape.verify && body != &shape.payload[..] {
                    tally.error("echoed payload differs");
                    c.alive = false;
                    break;
                }
                got += 1;
            }
            OpCode::Close => {
                tally.closes += 1;
                c.alive = false;
                break;
            }
            OpCode::Ping | OpCode::Pong => {}
            _ => {
                tally.error(format!(
                    "unexpected frame {:?} fin={} masked={} len={plen}",
                    h.opcode,
                    h.fin,
                    h.mask.is_some()
                ));
                c.alive = false;
                break;
            }
        }
        pos += hl + plen;
    }
    (got, pos)
}

/// Sends `count` more frames with one write (a slice of the pre-built batch).
fn send_frames(
    ep: &Epoll,
    token: u64,
    c: &mut Conn,
    shape: &Shape,
    count: usize,
    now_ns: u64,
    tally: &mut Tally,
) {
    let mut left = count;
    while left > 0 && c.alive {
        let k = left.min(shape.depth);
        left -= k;
        let bytes = &shape.batch[..k * shape.frame_len];
        if !c.out.is_empty() {
            c.out.extend_from_slice(bytes);
        } else {
            match c.stream.write(bytes) {
                Ok(w) if w == bytes.len() => {}
                Ok(w) => {
                    c.out.extend_from_slice(&bytes[w..]);
                    arm_out(ep, token, c, true, tally);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.out.extend_from_slice(bytes);
                    arm_out(ep, token, c, true, tally);
                }
                Err(e) => {
                    tally.error(format!("write: {e}"));
                    c.alive = false;
                    return;
                }
            }
        }
        for _ in 0..k {
            c.sent.push_back(now_ns);
        }
    }
}

fn flush_out(ep: &Epoll, token: u64, c: &mut Conn, tally: &mut Tally) {
    match c.stream.write(&c.out) {
        Ok(w) => {
            c.out.drain(..w);
            if c.out.is_empty() {
                arm_out(ep, token, c, false, tally);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => {
            tally.error(format!("write: {e}"));
            c.alive = false;
        }
    }
}

fn arm_out(ep: &Epoll, token: u64, c: &mut Conn, on: bool, tally: &mut Tally) {
    if c.out_armed == on {
        return;
    }
    let ev = if on { EV_IN | EV_OUT } else { EV_IN };
    if let Err(e) = ep.modify(c.stream.as_raw_fd(), token, ev) {
        tally.error(format!("epoll mod: {e}"));
        c.alive = false;
    }
    c.out_armed = on;
}
