//! Churn mode: T threads each loop connect → upgrade → one echo → close handshake → close,
//! reporting completed cycles (handshakes) per second and the cycle latency.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use edge_ws_protocol::{FrameHeader, OpCode};
use hdrhistogram::Histogram;

use super::dial::Dialer;
use super::report::{fmt_summary, Report};
use super::{measure_window, new_histogram, worker_core, Config, Start};
use crate::sys;
use crate::ws;

#[derive(Debug)]
struct Tally {
    cycles: u64,
    hist: Histogram<u64>,
    errors: u64,
    unclean: u64,
    first_error: Option<String>,
}

/// Runs churn mode and builds the report.
pub fn run(cfg: &Config) -> Report {
    let base = Instant::now();
    let start = Start::new(cfg.threads);
    let src_ips = if cfg.src_ips == 0 { 4 } else { cfg.src_ips };
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let c = cfg.clone();
        let st = Arc::clone(&start);
        handles.push(
            std::thread::Builder::new()
                .name(format!("wsload-{t}"))
                .spawn(move || worker(&c, t, src_ips, &st))
                .expect("spawn worker"),
        );
    }
    let w = start.coordinate(base, cfg.warmup, cfg.duration);
    let cpu = measure_window(&w, cfg.server_pid);
    let mut total = Tally {
        cycles: 0,
        hist: new_histogram(),
        errors: 0,
        unclean: 0,
        first_error: None,
    };
    for h in handles {
        match h.join() {
            Ok(t) => {
                total.cycles += t.cycles;
                let _ = total.hist.add(&t.hist);
                total.errors += t.errors;
                total.unclean += t.unclean;
                if total.first_error.is_none() {
                    total.first_error = t.first_error;
                }
            }
            Err(_) => total.errors += 1,
        }
    }
    let secs = cpu.wall_ns.max(1) as f64 / 1e9;
    let mut r = Report::new(cfg);
    r.throughput(total.cycles, cfg.size, &cpu, &total.hist);
    r.set(
        "handshakes_per_s",
        super::report::round(total.cycles as f64 / secs, 1),
    );
    r.errors(total.errors);
    r.set("closes", total.cycles);
    r.set("unclean_closes", total.unclean);
    if let Some(e) = &total.first_error {
        r.set("first_error", e.as_str());
    }
    if total.cycles == 0 {
        r.fatal("no cycle completed in the window");
    }
    r.summary(fmt_summary(
        "handshakes",
        total.cycles as f64 / secs,
        &total.hist,
        &cpu,
        total.cycles,
        total.errors,
        total.unclean,
    ));
    r
}

fn worker(cfg: &Config, idx: usize, src_ips: u32, start: &Start) -> Tally {
    if let Some(core) = worker_core(cfg, idx) {
        sys::pin_current(core);
    }
    let mut t = Tally {
        cycles: 0,
        hist: new_histogram(),
        errors: 0,
        unclean: 0,
        first_error: None,
    };
    let mut dialer = Dialer::new(cfg.addr, src_ips, cfg.connect_timeout);
    let payload = ws::payload(cfg.size);
    let msg = if cfg.raw {
        payload.clone()
    } else {
        ws::masked_frame(OpCode::Binary, &payload)
    };
    let close = ws::close_frame();
    let mut buf = vec![0u8; cfg.size + 64 * 1024];
    let w = start.worker_wait();
    // Bounded: every step has the dial timeout and the loop ends at the window end.
    while Instant::now() < w.end {
        let t0 = Instant::now();
        match cycle(cfg, &mut dialer, &msg, &close, &payload, &mut buf) {
            Ok(clean) => {
                let t1 = Instant::now();
                if t1 >= w.start && t1 < w.end {
                    t.cycles += 1;
                    let _ = t.hist.record((t1 - t0).as_nanos().max(1) as u64);
                    if !clean {
                        t.unclean += 1;
                    }
                }
            }
            Err(e) => {
                t.errors += 1;
                if t.first_error.is_none() {
                    t.first_error = Some(e.to_string());
                }
                if t.errors > 1000 {
                    break;
                }
            }
        }
    }
    t
}

/// One connect → upgrade → echo → close cycle; Ok(false) when the close was not a clean
/// close handshake.
fn cycle(
    cfg: &Config,
    dialer: &mut Dialer,
    msg: &[u8],
    close: &[u8],
    payload: &[u8],
    buf: &mut [u8],
) -> io::Result<bool> {
    let mut s = dialer.open_one(&cfg.path, cfg.raw)?;
    if cfg.raw {
        s.stream.write_all(msg)?;
        read_exact_echo(&mut s.stream, buf, payload.len())?;
        return Ok(true);
    }
    s.stream.write_all(msg)?;
    let mut have = s.leftover.len();
    buf[..have].copy_from_slice(&s.leftover);
    // The echo.
    let (h, hl) = read_frame(&mut s.stream, buf, &mut have)?;
    if h.opcode != OpCode::Binary || h.payload_len as usize != payload.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad echo"));
    }
    if cfg.verify && &buf[hl..hl + payload.len()] != payload {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
    }
    let used = hl + payload.len();
    buf.copy_within(used..have, 0);
    have -= used;
    // The close handshake: our close, the server's close, then EOF or our close.
    s.stream.write_all(close)?;
    match read_frame(&mut s.stream, buf, &mut have) {
        Ok((h, _)) if h.opcode == OpCode::Close => Ok(true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_exact_echo(s: &mut TcpStream, buf: &mut [u8], len: usize) -> io::Result<()> {
    let mut got = 0;
    while got < len {
        let want = (len - got).min(buf.len());
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(())
}

/// Reads until `buf[..*have]` starts with a complete frame; returns its header and length.
fn read_frame(
    s: &mut TcpStream,
    buf: &mut [u8],
    have: &mut usize,
) -> io::Result<(FrameHeader, usize)> {
    for _ in 0..10_000 {
        if let Some((h, hl)) = FrameHeader::decode(&buf[..*have])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        {
            if *have >= hl + h.payload_len as usize {
                return Ok((h, hl));
            }
            if hl + h.payload_len as usize > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame too large",
                ));
            }
        }
        let n = s.read(&mut buf[*have..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        *have += n;
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "frame too fragmented",
    ))
}
