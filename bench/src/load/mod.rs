//! wsload: a low-CPU WebSocket load generator (echo, broadcast, idle, churn).
//!
//! Raw non-blocking TCP on level-triggered epoll, a few pinned threads each owning a set of
//! connections, frames built and masked once per size and written in batches, an HDR histogram
//! of latencies. See bench/README.md for the server contract and the output columns.

pub mod broadcast;
pub mod churn;
pub mod dial;
pub mod echo;
pub mod idle;
pub mod report;

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::args::{Arg, Args};
use crate::sys;
use report::Report;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// N connections × K messages of S bytes in flight, echoed.
    Echo,
    /// N subscribers, one publisher, relayed by the server.
    Broadcast,
    /// N connections held open: server memory per connection.
    Idle,
    /// connect, handshake, one echo, close, in a loop.
    Churn,
}

impl Mode {
    /// The mode's name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
            Mode::Idle => "idle",
            Mode::Churn => "churn",
        }
    }
}

/// Every wsload option.
#[derive(Debug, Clone)]
pub struct Config {
    /// Mode.
    pub mode: Mode,
    /// Server address (IPv4 loopback).
    pub addr: SocketAddrV4,
    /// Path for echo / idle / churn connections.
    pub path: String,
    /// Path subscribers connect to (broadcast).
    pub sub_path: String,
    /// Path the publisher connects to (broadcast).
    pub pub_path: String,
    /// Connections (subscribers in broadcast mode).
    pub conns: usize,
    /// Messages in flight per connection (echo) or publishes not yet delivered to all (broadcast).
    pub depth: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Client threads.
    pub threads: usize,
    /// Cores the client threads are pinned to, round-robin (empty: no pinning).
    pub client_cores: Vec<usize>,
    /// Warm-up before the measured window.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Hard deadline for the whole run (the process exits when it passes).
    pub deadline: Duration,
    /// Connect and handshake timeout per connection.
    pub connect_timeout: Duration,
    /// No handshake and no framing: S-byte chunks echoed as bytes (for the TCP floor).
    pub raw: bool,
    /// Send text frames instead of binary.
    pub text: bool,
    /// Compare every echoed payload byte for byte.
    pub verify: bool,
    /// Server label in the output.
    pub label: String,
    /// Scenario name in the output.
    pub scenario: String,
    /// Repetition number in the output.
    pub rep: u32,
    /// Server process to read CPU time and memory from.
    pub server_pid: Option<u32>,
    /// Broadcast publish rate in messages/s (0: as fast as the in-flight bound allows).
    pub rate: f64,
    /// Number of source addresses 127.0.0.1.. to spread connections over (0: automatic).
    pub src_ips: u32,
    /// Broadcast: a publish not delivered to every subscriber within this is given up on.
    pub stall_timeout: Duration,
    /// Echo: send exactly these bytes as every message (overrides `size`), e.g. a JSON
    /// envelope for a server that routes messages.
    pub payload: Option<Vec<u8>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: Mode::Echo,
            addr: SocketAddrV4::new([127, 0, 0, 1].into(), 9001),
            path: "/".into(),
            sub_path: "/sub".into(),
            pub_path: "/pub".into(),
            conns: 100,
            depth: 1,
            size: 64,
            threads: 1,
            client_cores: Vec::new(),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            deadline: Duration::ZERO,
            connect_timeout: Duration::from_secs(5),
            raw: false,
            text: false,
            verify: true,
            label: String::new(),
            scenario: String::new(),
            rep: 0,
            server_pid: None,
            rate: 0.0,
            src_ips: 0,
            stall_timeout: Duration::from_secs(10),
            payload: None,
        }
    }
}

const USAGE: &str = "\
wsload MODE [options]            MODE: echo | broadcast | idle | churn

  --addr HOST:PORT       server (127.0.0.1 only)                 [127.0.0.1:9001]
  --conns N              connections (subscribers in broadcast)  [100]
  --depth K              echo: messages in flight per connection;
                         broadcast: publishes not yet delivered to every subscriber [1]
  --size S               payload bytes (4k, 1KiB accepted)       [64]
  --threads T            client threads (churn: concurrent loops) [1]
  --client-cores LIST    pin client threads round-robin (e.g. 1 or 1-3)
  --warmup D             warm-up before the window (idle: settle time) [1s]
  --duration D           measured window (idle: hold time)      [5s]
  --deadline D           hard limit for the whole run            [warmup+duration+120s]
  --connect-timeout D    per connect/handshake                   [5s]
  --raw                  no handshake, no framing (TCP echo floor)
  --text                 text frames instead of binary
  --no-verify            don't compare echoed payloads byte for byte
  --path P               echo/idle/churn path                    [/]
  --sub-path P / --pub-path P   broadcast paths                  [/sub, /pub]
  --rate R               broadcast publishes/s (0 = as fast as --depth allows) [0]
  --stall-timeout D      broadcast: give up on an undelivered publish after D [10s]
  --payload TEXT         echo: send exactly TEXT as every message (sets --size)
  --src-ips N            spread connections over 127.0.0.1..N (0 = auto) [0]
  --server-pid PID       read server CPU (/proc/PID/task/*/schedstat) and VmRSS
  --label NAME           server label in the JSON line
  --scenario NAME        scenario name in the JSON line
  --rep N                repetition number in the JSON line

Output: one JSON line per result on stdout, a one-line summary on stderr.
";

/// Parses the command line.
pub fn parse_args(mut a: Args) -> Result<Config, String> {
    let mut c = Config::default();
    let mut mode = None;
    let mut deadline = None;
    while let Some(arg) = a.next_arg()? {
        match arg {
            Arg::Positional(p) => {
                if mode.is_some() {
                    return Err(format!("unexpected argument {p:?}"));
                }
                mode = Some(match p.as_str() {
                    "echo" => Mode::Echo,
                    "broadcast" => Mode::Broadcast,
                    "idle" => Mode::Idle,
                    "churn" => Mode::Churn,
                    _ => return Err(format!("unknown mode {p:?}")),
                });
            }
            Arg::Long(name) => match name.as_str() {
                "help" => return Err(String::new()),
                "addr" => {
                    let v = a.value()?;
                    let sa = v
                        .to_socket_addrs()
                        .map_err(|e| format!("--addr {v}: {e}"))?
                        .find(|s| s.is_ipv4())
                        .ok_or_else(|| format!("--addr {v}: no IPv4 address"))?;
                    let SocketAddr::V4(sa) = sa else {
                        unreachable!()
                    };
                    if !sa.ip().is_loopback() {
                        return Err(format!("--addr {v}: only loopback targets are allowed"));
                    }
                    c.addr = sa;
                }
                "conns" => c.conns = a.parse()?,
                "depth" => c.depth = a.parse()?,
                "size" => c.size = a.size()?,
                "threads" => c.threads = a.parse()?,
                "client-cores" => c.client_cores = sys::parse_cores(&a.value()?)?,
                "warmup" => c.warmup = a.duration()?,
                "duration" => c.duration = a.duration()?,
                "deadline" => deadline = Some(a.duration()?),
                "connect-timeout" => c.connect_timeout = a.duration()?,
                "raw" => c.raw = true,
                "text" => c.text = true,
                "no-verify" => c.verify = false,
                "verify" => c.verify = true,
                "path" => c.path = a.value()?,
                "sub-path" => c.sub_path = a.value()?,
                "pub-path" => c.pub_path = a.value()?,
                "rate" => c.rate = a.parse()?,
                "stall-timeout" => c.stall_timeout = a.duration()?,
                "payload" => c.payload = Some(a.value()?.into_bytes()),
                "src-ips" => c.src_ips = a.parse()?,
                "server-pid" => c.server_pid = Some(a.parse()?),
                "label" => c.label = a.value()?,
                "scenario" => c.scenario = a.value()?,
                "rep" => c.rep = a.parse()?,
                other => return Err(format!("unknown option --{other}")),
            },
        }
    }
    c.mode = mode.ok_or("missing MODE (echo | broadcast | idle | churn)")?;
    if let Some(p) = &c.payload {
        if c.mode != Mode::Echo {
            return Err("--payload is for echo mode".into());
        }
        c.size = p.len();
    }
    if c.conns == 0 && c.mode != Mode::Churn {
        return Err("--conns must be at least 1".into());
    }
    if c.depth == 0 || c.depth > 4096 {
        return Err("--depth must be 1..=4096".into());
    }
    if c.threads == 0 || c.threads > 64 {
        return Err("--threads must be 1..=64".into());
    }
    if c.size == 0 || c.size > 16 << 20 {
        return Err("--size must be 1 B ..= 16 MiB".into());
    }
    if c.mode == Mode::Broadcast {
        if c.raw {
            return Err("broadcast has no --raw form".into());
        }
        let min = if c.text { 32 } else { 16 };
        if c.size < min {
            return Err(format!(
                "broadcast needs --size >= {min} (sequence number and timestamp)"
            ));
        }
    }
    if c.label.is_empty() {
        c.label = if c.raw { "raw".into() } else { "server".into() };
    }
    if c.scenario.is_empty() {
        c.scenario = default_scenario(&c);
    }
    c.deadline = deadline.unwrap_or(c.warmup + c.duration + Duration::from_secs(120));
    if c.deadline < c.warmup + c.duration {
        return Err("--deadline is shorter than warmup + duration".into());
    }
    Ok(c)
}

fn default_scenario(c: &Config) -> String {
    match c.mode {
        Mode::Echo => format!("echo-{}B-{}c-d{}", c.size, c.conns, c.depth),
        Mode::Broadcast => format!("broadcast-{}B-{}s", c.size, c.conns),
        Mode::Idle => format!("idle-{}c", c.conns),
        Mode::Churn => format!("churn-{}t", c.threads),
    }
}

/// Entry point of the `wsload` binary; returns the exit code.
pub fn main() -> i32 {
    let cfg = match parse_args(Args::from_env()) {
        Ok(c) => c,
        Err(e) => {
            if e.is_empty() {
                print!("{USAGE}");
                return 0;
            }
            eprintln!("wsload: {e}\n\n{USAGE}");
            return 2;
        }
    };
    sys::raise_nofile();
    if let Some(&core) = cfg.client_cores.first() {
        sys::pin_current(core);
    }
    start_watchdog(&cfg);
    let report = match cfg.mode {
        Mode::Echo => echo::run(&cfg),
        Mode::Broadcast => broadcast::run(&cfg),
        Mode::Idle => idle::run(&cfg),
        Mode::Churn => churn::run(&cfg),
    };
    report.emit();
    if report.failed() {
        1
    } else {
        0
    }
}

/// Exits the process (after printing an error result) once the hard deadline passes.
fn start_watchdog(cfg: &Config) {
    let c = cfg.clone();
    let deadline = Instant::now() + cfg.deadline;
    std::thread::Builder::new()
        .name("wsload-watchdog".into())
        .spawn(move || {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100).min(deadline - Instant::now()));
            }
            let mut r = Report::new(&c);
            r.fatal(format!("hard deadline of {:?} passed", c.deadline));
            r.emit();
            std::process::exit(3);
        })
        .expect("spawn watchdog");
}

/// The measured window, shared by the coordinating thread and the workers.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Time origin of all nanosecond timestamps.
    pub base: Instant,
    /// Start of the measured window.
    pub start: Instant,
    /// End of the measured window (workers stop here).
    pub end: Instant,
}

impl Window {
    /// Nanoseconds since `base`.
    #[inline]
    pub fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }
}

/// Setup rendezvous: workers report ready, the coordinator fixes the window, workers start.
#[derive(Debug)]
pub struct Start {
    ready: Barrier,
    go: Barrier,
    window: OnceLock<Window>,
}

impl Start {
    /// For `workers` worker threads plus the coordinator.
    pub fn new(workers: usize) -> Arc<Start> {
        Arc::new(Start {
            ready: Barrier::new(workers + 1),
            go: Barrier::new(workers + 1),
            window: OnceLock::new(),
        })
    }

    /// Worker side: blocks until the coordinator has fixed the window.
    pub fn worker_wait(&self) -> Window {
        self.ready.wait();
        self.go.wait();
        *self.window.get().expect("window set before go")
    }

    /// Coordinator side: waits for every worker, fixes the window from now, releases them.
    pub fn coordinate(&self, base: Instant, warmup: Duration, duration: Duration) -> Window {
        self.ready.wait();
        let start = Instant::now() + warmup;
        let w = Window {
            base,
            start,
            end: start + duration,
        };
        let _ = self.window.set(w);
        self.go.wait();
        w
    }
}

/// CPU readings at the window edges.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuWindow {
    /// Server CPU ns over the window, if a server pid was given and readable.
    pub server_ns: Option<u64>,
    /// This process's CPU ns over the window.
    pub client_ns: u64,
    /// Actual window length in ns (between the two samples).
    pub wall_ns: u64,
    /// Server VmRSS at the end of the window, KiB.
    pub server_rss_kb: Option<u64>,
}

/// Sleeps to the window start, samples CPU, sleeps to the end, samples again.
pub fn measure_window(w: &Window, server_pid: Option<u32>) -> CpuWindow {
    sleep_until(w.start);
    let s0 = server_pid.and_then(sys::process_cpu_ns);
    let c0 = sys::self_cpu_ns();
    let t0 = Instant::now();
    sleep_until(w.end);
    let s1 = server_pid.and_then(sys::process_cpu_ns);
    let c1 = sys::self_cpu_ns();
    let t1 = Instant::now();
    CpuWindow {
        server_ns: match (s0, s1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        client_ns: c1.saturating_sub(c0),
        wall_ns: (t1 - t0).as_nanos() as u64,
        server_rss_kb: server_pid.and_then(sys::vm_rss_kb),
    }
}

/// Sleeps until `t` (bounded by `t`).
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// A latency histogram in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Core for worker `i`, if pinning was asked for.
pub fn worker_core(cfg: &Config, i: usize) -> Option<usize> {
    if cfg.client_cores.is_empty() {
        None
    } else {
        Some(cfg.client_cores[i % cfg.client_cores.len()])
    }
}
