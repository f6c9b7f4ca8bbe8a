//! Broadcast mode: N subscribers on the sub path, one publisher on the pub path; the server
//! relays every publisher message to every subscriber.
//!
//! Each published payload starts with a sequence number and the send time (ns since a base
//! shared by all threads): binary as two little-endian u64s, text as two 16-digit hex numbers.
//! Subscribers check that sequence numbers arrive exactly once and in order, and record the
//! delivery latency. The publisher keeps at most `--depth` messages that have not yet reached
//! every subscriber (a per-slot countdown shared by all threads), optionally paced by `--rate`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_ws_protocol::mask::apply_mask;
use edge_ws_protocol::{FrameHeader, OpCode};
use hdrhistogram::Histogram;

use super::dial::{Dialer, Opened};
use super::report::{fmt_summary, Report};
use super::{measure_window, new_histogram, worker_core, Config, Start, Window};
use crate::sys::{self, Epoll, Event, EV_ERR, EV_IN, EV_OUT};
use crate::ws;

const SCRATCH: usize = 256 * 1024;
const PUB_TOKEN: u64 = u64::MAX;

#[derive(Debug)]
struct Tally {
    deliveries: u64,
    publishes: u64,
    hist: Histogram<u64>,
    missing: u64,
    duplicates: u64,
    stalls: u64,
    errors: u64,
    closes: u64,
    subs: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            deliveries: 0,
            publishes: 0,
            hist: new_histogram(),
            missing: 0,
            duplicates: 0,
            stalls: 0,
            errors: 0,
            closes: 0,
            subs: 0,
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
        self.deliveries += o.deliveries;
        self.publishes += o.publishes;
        let _ = self.hist.add(&o.hist);
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.stalls += o.stalls;
        self.errors += o.errors;
        self.closes += o.closes;
        self.subs += o.subs;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// State shared by every worker thread.
struct Shared {
    /// `slots[seq % depth]`: subscribers that have yet to receive publish `seq`.
    slots: Vec<AtomicU32>,
    /// Subscribers connected (final once the window is fixed).
    subs: AtomicUsize,
}

/// Runs broadcast mode and builds the report.
pub fn run(cfg: &Config) -> Report {
    let base = Instant::now();
    let setup_deadline = base + cfg.deadline.saturating_sub(cfg.warmup + cfg.duration);
    let start = Start::new(cfg.threads);
    let shared = Arc::new(Shared {
        slots: (0..cfg.depth).map(|_| AtomicU32::new(0)).collect(),
        subs: AtomicUsize::new(0),
    });
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let n = cfg.conns / cfg.threads + usize::from(t < cfg.conns % cfg.threads);
        let c = cfg.clone();
        let st = Arc::clone(&start);
        let sh = Arc::clone(&shared);
        handles.push(
            std::thread::Builder::new()
                .name(format!("wsload-{t}"))
                .spawn(move || worker(&c, t, n, &st, &sh, setup_deadline))
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
    let secs = cpu.wall_ns.max(1) as f64 / 1e9;
    let mut r = Report::new(cfg);
    r.throughput(total.deliveries, cfg.size, &cpu, &total.hist);
    r.set("subscribers", total.subs);
    r.set("publishes", total.publishes);
    r.set(
        "publishes_per_s",
        super::report::round(total.publishes as f64 / secs, 1),
    );
    let expected = total.publishes * total.subs;
    r.set(
        "delivery_ratio",
        if expected > 0 {
            super::report::round(total.deliveries as f64 / expected as f64, 4)
        } else {
            0.0
        },
    );
    r.set("missing", total.missing);
    r.set("duplicates", total.duplicates);
    r.set("stalls", total.stalls);
    r.errors(total.errors + total.missing + total.duplicates + total.stalls);
    r.set("closes", total.closes);
    if let Some(e) = &total.first_error {
        r.set("first_error", e.as_str());
    }
    if total.deliveries == 0 {
        r.fatal("no deliveries in the window");
    }
    let mut s = fmt_summary(
        "deliveries",
        total.deliveries as f64 / secs,
        &total.hist,
        &cpu,
        total.deliveries,
        total.errors,
        total.closes,
    );
    s.push_str(&format!(
        " | {:.0} publishes/s missing {} dup {} stalls {}",
        total.publishes as f64 / secs,
        total.missing,
        total.duplicates,
        total.stalls
    ));
    r.summary(s);
    r
}

struct Sub {
    stream: TcpStream,
    carry: Vec<u8>,
    next_seq: u64,
    alive: bool,
}

struct Publisher {
    stream: TcpStream,
    out: Vec<u8>,
    out_armed: bool,
    next_seq: u64,
    published_at: Vec<u64>,
    alive: bool,
    rate_start_ns: u64,
}

struct Shape {
    opcode: OpCode,
    text: bool,
    size: usize,
    depth: usize,
    verify: bool,
    payload: Vec<u8>,
    /// A masked frame whose first id bytes get overwritten per publish.
    template: Vec<u8>,
    head_len: usize,
    rate: f64,
    stall_ns: u64,
}

impl Shape {
    fn id_len(&self) -> usize {
        if self.text {
            32
        } else {
            16
        }
    }
}

fn worker(
    cfg: &Config,
    idx: usize,
    n: usize,
    start: &Start,
    shared: &Shared,
    setup_deadline: Instant,
) -> Tally {
    if let Some(core) = worker_core(cfg, idx) {
        sys::pin_current(core);
    }
    let mut tally = Tally::new();
    let src_ips = if cfg.src_ips == 0 {
        super::dial::auto_src_ips(cfg.conns + 1)
    } else {
        cfg.src_ips
    };
    let mut dialer = Dialer::new(cfg.addr, src_ips, cfg.connect_timeout);
    let (opened, fails, first) = dialer.open_many(n, &cfg.sub_path, false, setup_deadline);
    for _ in 0..fails {
        tally.error(first.clone().unwrap_or_default());
    }
    let ep = Epoll::new().expect("epoll_create1");
    let mut subs = Vec::with_capacity(opened.len());
    for Opened { stream, leftover } in opened {
        if stream.set_nonblocking(true).is_err()
            || ep
                .add(stream.as_raw_fd(), subs.len() as u64, EV_IN)
                .is_err()
        {
            tally.error("socket setup failed");
            continue;
        }
        subs.push(Sub {
            stream,
            carry: leftover,
            next_seq: 0,
            alive: true,
        });
    }
    tally.subs = subs.len() as u64;
    shared.subs.fetch_add(subs.len(), Ordering::SeqCst);

    let opcode = if cfg.text {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    let payload = ws::payload(cfg.size);
    let template = ws::masked_frame(opcode, &payload);
    let shape = Shape {
        opcode,
        text: cfg.text,
        size: cfg.size,
        depth: cfg.depth,
        verify: cfg.verify,
        head_len: template.len() - cfg.size,
        payload,
        template,
        rate: cfg.rate,
        stall_ns: cfg.stall_timeout.as_nanos() as u64,
    };

    // Thread 0 also owns the publisher, connected after its subscribers.
    let mut publisher = None;
    if idx == 0 {
        match dialer.open_one(&cfg.pub_path, false) {
            Ok(o) => {
                if o.stream.set_nonblocking(true).is_ok()
                    && ep.add(o.stream.as_raw_fd(), PUB_TOKEN, EV_IN).is_ok()
                {
                    publisher = Some(Publisher {
                        stream: o.stream,
                        out: Vec::with_capacity(cfg.depth * (cfg.size + 14)),
                        out_armed: false,
                        next_seq: 0,
                        published_at: vec![0; cfg.depth],
                        alive: true,
                        rate_start_ns: 0,
                    });
                } else {
                    tally.error("publisher socket setup failed");
                }
            }
            Err(e) => tally.error(format!("publisher connect: {e}")),
        }
    }

    let w = start.worker_wait();
    let nsubs = shared.subs.load(Ordering::SeqCst) as u32;
    event_loop(
        &ep,
        &mut subs,
        publisher.as_mut(),
        &shape,
        shared,
        nsubs,
        &w,
        &mut tally,
    );
    tally
}

#[allow(clippy::too_many_arguments)]
fn event_loop(
    ep: &Epoll,
    subs: &mut [Sub],
    mut publisher: Option<&mut Publisher>,
    shape: &Shape,
    shared: &Shared,
    nsubs: u32,
    w: &Window,
    tally: &mut Tally,
) {
    let mut raw_events = sys::event_buffer(1024);
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH];
    if let Some(p) = publisher.as_deref_mut() {
        p.rate_start_ns = w.ns(Instant::now());
    }
    let mut blocked = false;
    loop {
        if let Some(p) = publisher.as_deref_mut() {
            blocked = publish(ep, p, shape, shared, nsubs, w, tally);
        }
        let now = Instant::now();
        if now >= w.end {
            break;
        }
        let cap = if blocked {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        let timeout = (w.end - now).min(cap);
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
            if ev.token == PUB_TOKEN {
                if let Some(p) = publisher.as_deref_mut() {
                    on_publisher_event(ep, p, ev.flags, &mut scratch, tally);
                }
                continue;
            }
            let s = &mut subs[ev.token as usize];
            if !s.alive {
                continue;
            }
            on_sub_readable(s, shape, shared, &mut scratch, now_ns, in_window, tally);
            if !s.alive {
                let _ = ep.delete(s.stream.as_raw_fd());
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Publishes as many messages as the in-flight bound and the rate allow, in one write.
/// Returns true when publishing is held back (so the caller polls again soon).
fn publish(
    ep: &Epoll,
    p: &mut Publisher,
    shape: &Shape,
    shared: &Shared,
    nsubs: u32,
    w: &Window,
    tally: &mut Tally,
) -> bool {
    if !p.alive || nsubs == 0 {
        return false;
    }
    let now = Instant::now();
    let now_ns = w.ns(now);
    let in_window = now >= w.start && now < w.end;
    let was_empty = p.out.is_empty();
    let mut blocked = false;
    for _ in 0..shape.depth {
        let slot = (p.next_seq % shape.depth as u64) as usize;
        if shared.slots[slot].load(Ordering::Acquire) != 0 {
            if now_ns.saturating_sub(p.published_at[slot]) > shape.stall_ns {
                tally.stalls += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(format!(
                        "publish {} not delivered to every subscriber in time",
                        p.next_seq.saturating_sub(shape.depth as u64)
                    ));
                }
                shared.slots[slot].store(0, Ordering::Release);
            } else {
                blocked = true;
                break;
            }
        }
        if shape.rate > 0.0 {
            let due = (now_ns.saturating_sub(p.rate_start_ns) as f64 * shape.rate / 1e9) as u64;
            if p.next_seq >= due {
                blocked = true;
                break;
            }
        }
        // The countdown is set before the frame can reach anyone.
        shared.slots[slot].store(nsubs, Ordering::Release);
        p.published_at[slot] = now_ns;
        let at = p.out.len();
        p.out.extend_from_slice(&shape.template);
        let mut id = [0u8; 32];
        let k = encode_id(p.next_seq, now_ns, shape.text, &mut id);
        apply_mask(&mut id[..k], ws::MASK_KEY, 0);
        p.out[at + shape.head_len..at + shape.head_len + k].copy_from_slice(&id[..k]);
        p.next_seq += 1;
        if in_window {
            tally.publishes += 1;
        }
    }
    if was_empty && !p.out.is_empty() {
        flush_publisher(ep, p, tally);
    }
    blocked
}

fn flush_publisher(ep: &Epoll, p: &mut Publisher, tally: &mut Tally) {
    match p.stream.write(&p.out) {
        Ok(n) => {
            p.out.drain(..n);
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => {
            tally.error(format!("publisher write: {e}"));
            p.alive = false;
            return;
        }
    }
    let want = !p.out.is_empty();
    if want != p.out_armed {
        let ev = if want { EV_IN | EV_OUT } else { EV_IN };
        if ep.modify(p.stream.as_raw_fd(), PUB_TOKEN, ev).is_err() {
            tally.error("epoll mod (publisher)");
            p.alive = false;
        }
        p.out_armed = want;
    }
}

fn on_publisher_event(
    ep: &Epoll,
    p: &mut Publisher,
    flags: u32,
    scratch: &mut [u8],
    tally: &mut Tally,
) {
    if !p.alive {
        return;
    }
    if flags & EV_OUT != 0 && !p.out.is_empty() {
        flush_publisher(ep, p, tally);
    }
    if flags & (EV_IN | EV_ERR) == 0 {
        return;
    }
    match p.stream.read(scratch) {
        Ok(0) => {
            tally.closes += 1;
            tally.error("server closed the publisher");
            p.alive = false;
        }
        Ok(n) => {
            // The contract: nothing is sent to the publisher but a close.
            match FrameHeader::decode(&scratch[..n]) {
                Ok(Some((h, _))) if h.opcode == OpCode::Close => {
                    tally.closes += 1;
                    tally.error("server closed the publisher");
                }
                Ok(Some((h, _))) if matches!(h.opcode, OpCode::Ping | OpCode::Pong) => return,
                _ => tally.error("server sent data to the publisher"),
            }
            p.alive = false;
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => {
            tally.error(format!("publisher read: {e}"));
            p.alive = false;
        }
    }
    if !p.alive {
        let _ = ep.delete(p.stream.as_raw_fd());
    }
}

fn on_sub_readable(
    s: &mut Sub,
    shape: &Shape,
    shared: &Shared,
    scratch: &mut [u8],
    now_ns: u64,
    in_window: bool,
    tally: &mut Tally,
) {
    let carried = s.carry.len();
    if carried >= scratch.len() {
        tally.error("frame larger than the read buffer");
        s.alive = false;
        return;
    }
    scratch[..carried].copy_from_slice(&s.carry);
    let n = match s.stream.read(&mut scratch[carried..]) {
        Ok(0) => {
            tally.closes += 1;
            s.alive = false;
            return;
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
        Err(e) => {
            tally.error(format!("subscriber read: {e}"));
            s.alive = false;
            return;
        }
    };
    let data = &scratch[..carried + n];
    let mut pos = 0;
    while pos < data.len() {
        let (h, hl) = match FrameHeader::decode(&data[pos..]) {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => {
                tally.error(format!("bad frame from server: {e}"));
                s.alive = false;
                return;
            }
        };
        let plen = h.payload_len as usize;
        if data.len() - pos - hl < plen {
            break;
        }
        let body = &data[pos + hl..pos + hl + plen];
        pos += hl + plen;
        if h.opcode == OpCode::Close {
            tally.closes += 1;
            s.alive = false;
            return;
        }
        if matches!(h.opcode, OpCode::Ping | OpCode::Pong) {
            continue;
        }
        if h.opcode != shape.opcode || !h.fin || h.mask.is_some() || plen != shape.size {
            tally.error(format!(
                "unexpected frame {:?} fin={} len={plen}",
                h.opcode, h.fin
            ));
            s.alive = false;
            return;
        }
        let k = shape.id_len();
        let Some((seq, ts)) = decode_id(&body[..k], shape.text) else {
            tally.error("undecodable sequence number");
            s.alive = false;
            return;
        };
        if shape.verify && body[k..] != shape.payload[k..] {
            tally.error("relayed payload differs");
            s.alive = false;
            return;
        }
        if seq < s.next_seq {
            tally.duplicates += 1;
            continue;
        }
        if seq > s.next_seq {
            tally.missing += seq - s.next_seq;
            let from = s.next_seq.max(seq.saturating_sub(shape.depth as u64));
            for skipped in from..seq {
                countdown(shared, skipped, shape.depth);
            }
        }
        s.next_seq = seq + 1;
        countdown(shared, seq, shape.depth);
        if in_window {
            tally.deliveries += 1;
            let _ = tally.hist.record(now_ns.saturating_sub(ts).max(1));
        }
    }
    s.carry.clear();
    s.carry.extend_from_slice(&data[pos..]);
}

#[inline]
fn countdown(shared: &Shared, seq: u64, depth: usize) {
    let slot = &shared.slots[(seq % depth as u64) as usize];
    let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
}

/// Writes the id (sequence, timestamp) into `out`; returns its length (16 binary, 32 text).
fn encode_id(seq: u64, ts: u64, text: bool, out: &mut [u8; 32]) -> usize {
    if text {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in 0..16 {
            out[i] = HEX[((seq >> (60 - 4 * i)) & 0xf) as usize];
            out[16 + i] = HEX[((ts >> (60 - 4 * i)) & 0xf) as usize];
        }
        32
    } else {
        out[..8].copy_from_slice(&seq.to_le_bytes());
        out[8..16].copy_from_slice(&ts.to_le_bytes());
        16
    }
}

fn decode_id(b: &[u8], text: bool) -> Option<(u64, u64)> {
    if text {
        let s = std::str::from_utf8(b).ok()?;
        Some((
            u64::from_str_radix(&s[..16], 16).ok()?,
            u64::from_str_radix(&s[16..32], 16).ok()?,
        ))
    } else {
        Some((
            u64::from_le_bytes(b[..8].try_into().ok()?),
            u64::from_le_bytes(b[8..16].try_into().ok()?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_roundtrip() {
        for text in [false, true] {
            let mut b = [0u8; 32];
            let k = encode_id(0x1234_5678_9abc_def0, 42, text, &mut b);
            assert_eq!(decode_id(&b[..k], text), Some((0x1234_5678_9abc_def0, 42)));
        }
    }
}
