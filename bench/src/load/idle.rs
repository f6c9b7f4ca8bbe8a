//! Idle mode: open N connections (spread over several 127.0.0.x source addresses), hold them,
//! and report the server's resident memory per connection; at the end every connection echoes
//! one message to prove it is still served.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use edge_ws_protocol::{FrameHeader, OpCode};

use super::dial::{auto_src_ips, Dialer};
use super::report::{round, Report};
use super::{new_histogram, Config, CpuWindow};
use crate::sys::{self, Epoll, Event, EV_ERR, EV_IN};
use crate::ws;

/// Runs idle mode and builds the report.
pub fn run(cfg: &Config) -> Report {
    let mut r = Report::new(cfg);
    let t_begin = Instant::now();
    let setup_deadline = t_begin + cfg.deadline.saturating_sub(cfg.warmup + cfg.duration);
    let limit = sys::raise_nofile();
    if (cfg.conns as u64) + 64 > limit {
        r.fatal(format!(
            "RLIMIT_NOFILE is {limit}: too low for {} connections (raise the hard limit)",
            cfg.conns
        ));
        return r;
    }
    let pid = cfg.server_pid;
    let rss_before = pid.and_then(sys::vm_rss_kb);
    let src_ips = if cfg.src_ips == 0 {
        auto_src_ips(cfg.conns).max(4)
    } else {
        cfg.src_ips
    };
    r.set("src_ips", src_ips);
    let mut dialer = Dialer::new(cfg.addr, src_ips, cfg.connect_timeout);
    let t0 = Instant::now();
    let (opened, fails, first) = dialer.open_many(cfg.conns, &cfg.path, cfg.raw, setup_deadline);
    let open_s = t0.elapsed().as_secs_f64();
    let mut errors = fails;
    let mut first_error = first;
    let ep = Epoll::new().expect("epoll_create1");
    let mut conns = Vec::with_capacity(opened.len());
    for o in opened {
        if o.stream.set_nonblocking(true).is_err()
            || ep
                .add(o.stream.as_raw_fd(), conns.len() as u64, EV_IN)
                .is_err()
        {
            errors += 1;
            continue;
        }
        conns.push((o.stream, true));
    }
    let n = conns.len();
    r.set("conns_open", n);
    r.set("open_s", round(open_s, 3));

    // Settle, then read memory and CPU over the hold window; any event on an idle connection
    // is a close or unexpected data.
    let mut closes = 0u64;
    let mut raw_events = sys::event_buffer(1024);
    let mut events: Vec<Event> = Vec::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut watch = |until: Instant,
                     conns: &mut Vec<(std::net::TcpStream, bool)>,
                     errors: &mut u64,
                     closes: &mut u64| {
        while Instant::now() < until {
            let left = until - Instant::now();
            if ep
                .wait(
                    &mut raw_events,
                    &mut events,
                    left.min(Duration::from_millis(100)).as_millis().max(1) as i32,
                )
                .is_err()
            {
                break;
            }
            for ev in &events {
                let (s, alive) = &mut conns[ev.token as usize];
                if !*alive {
                    continue;
                }
                match s.read(&mut scratch) {
                    Ok(0) => *closes += 1,
                    Ok(_) => *errors += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => *errors += 1,
                }
                *alive = false;
                let _ = ep.delete(s.as_raw_fd());
            }
        }
    };
    watch(
        Instant::now() + cfg.warmup,
        &mut conns,
        &mut errors,
        &mut closes,
    );
    let rss_after = pid.and_then(sys::vm_rss_kb);
    let s0 = pid.and_then(sys::process_cpu_ns);
    let h0 = Instant::now();
    watch(h0 + cfg.duration, &mut conns, &mut errors, &mut closes);
    let s1 = pid.and_then(sys::process_cpu_ns);
    let rss_end = pid.and_then(sys::vm_rss_kb);
    let hold_ns = h0.elapsed().as_nanos() as u64;

    // Liveness: one small message on every connection, echoed within a bounded time.
    let alive = conns.iter().filter(|c| c.1).count();
    let (echoed, bad) = liveness(cfg, &ep, &mut conns, &mut scratch);
    errors += bad + (alive - echoed.min(alive)) as u64;

    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        let per = if n > 0 {
            (a as f64 - b as f64) * 1024.0 / n as f64
        } else {
            0.0
        };
        r.set("rss_before_kb", b);
        r.set("rss_after_kb", a);
        r.set("rss_end_kb", rss_end);
        r.set("rss_bytes_per_conn", round(per, 1));
    } else {
        r.set("rss_bytes_per_conn", Option::<f64>::None);
    }
    let cpu = CpuWindow {
        server_ns: match (s0, s1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        client_ns: 0,
        wall_ns: hold_ns,
        server_rss_kb: rss_end,
    };
    r.set("window_s", round(hold_ns as f64 / 1e9, 3));
    r.set(
        "server_cpu_util",
        cpu.server_ns
            .map(|v| round(v as f64 / hold_ns.max(1) as f64, 4)),
    );
    r.set("echoed_after_hold", echoed);
    r.latency(&new_histogram());
    r.errors(errors);
    r.set("closes", closes);
    if errors > 0 && first_error.is_none() {
        first_error = Some("connections lost or not echoing after the hold".into());
    }
    if let Some(e) = &first_error {
        r.set("first_error", e.as_str());
    }
    let per = match (rss_before, rss_after) {
        (Some(b), Some(a)) if n > 0 => format!(
            "{:.0} B/conn (RSS {b} → {a} KiB)",
            (a as f64 - b as f64) * 1024.0 / n as f64
        ),
        _ => "no --server-pid: memory not read".into(),
    };
    r.summary(format!(
        "{n} conns open in {open_s:.2}s, {per}, {echoed}/{alive} echoed after hold | errors {errors} closes {closes}"
    ));
    r
}

/// Sends one message on every live connection; returns (complete echoes, wrong frames),
/// waiting at most 10 s.
fn liveness(
    cfg: &Config,
    ep: &Epoll,
    conns: &mut [(std::net::TcpStream, bool)],
    scratch: &mut [u8],
) -> (usize, u64) {
    let size = cfg.size.min(1024);
    let payload = ws::payload(size);
    let msg = if cfg.raw {
        payload.clone()
    } else {
        ws::masked_frame(OpCode::Binary, &payload)
    };
    let expect = if cfg.raw {
        size
    } else {
        ws::server_header_len(size) + size
    };
    let mut errors = 0u64;
    let mut got = vec![0usize; conns.len()];
    let mut pending = 0usize;
    for (s, alive) in conns.iter_mut() {
        if !*alive {
            continue;
        }
        match s.write(&msg) {
            Ok(n) if n == msg.len() => pending += 1,
            _ => {
                *alive = false;
                let _ = ep.delete(s.as_raw_fd());
            }
        }
    }
    let mut echoed = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut raw_events = sys::event_buffer(1024);
    let mut events = Vec::with_capacity(1024);
    while echoed < pending && Instant::now() < deadline {
        if ep.wait(&mut raw_events, &mut events, 50).is_err() {
            break;
        }
        for ev in &events {
            let i = ev.token as usize;
            let (s, alive) = &mut conns[i];
            if !*alive || ev.flags & (EV_IN | EV_ERR) == 0 {
                continue;
            }
            match s.read(scratch) {
                Ok(0) => *alive = false,
                Ok(n) => {
                    got[i] += n;
                    if got[i] >= expect {
                        if !cfg.raw {
                            if let Ok(Some((h, _))) = FrameHeader::decode(&scratch[..n]) {
                                if h.opcode != OpCode::Binary {
                                    errors += 1;
                                }
                            }
                        }
                        echoed += 1;
                        *alive = false; // done with it
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => *alive = false,
            }
            if !*alive {
                let _ = ep.delete(s.as_raw_fd());
            }
        }
    }
    (echoed, errors)
}
