//! Integration tests of `edge_ws_runtime` over real sockets on 127.0.0.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_ws_runtime::{ConnId, CoreWaker, Io, Runtime, RuntimeConfig, RuntimeError, Service};

const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- harness

/// Heavy fd users take this exclusively, everything else shared, so the fd limit is predictable.
static FDS: RwLock<()> = RwLock::new(());

fn shared_fds() -> RwLockReadGuard<'static, ()> {
    FDS.read().unwrap_or_else(|e| e.into_inner())
}

fn nofile_limit() -> usize {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live rlimit struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
    cur.rlim_cur as usize
}

fn raise_nofile() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let lim = libc::rlimit {
            rlim_cur: 65536,
            rlim_max: 65536,
        };
        // SAFETY: setrlimit reads a live, initialised rlimit struct.
        let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if r != 0 {
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into a live rlimit struct.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
            let lim = libc::rlimit {
                rlim_cur: cur.rlim_max,
                rlim_max: cur.rlim_max,
            };
            // SAFETY: as above.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        }
    });
}

/// Resident set size of this process (0 if unknown).
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn core_ids(n: usize) -> Vec<usize> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.into_iter().take(n).collect()
}

fn cfg(cores: Vec<usize>) -> RuntimeConfig {
    RuntimeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        cores,
        pin: true,
        tick: Duration::from_millis(20),
        ..Default::default()
    }
}

type Cmd = Box<dyn FnOnce(&mut Io<'_>) + Send>;
type OpenHook = Arc<dyn Fn(&mut Io<'_>, ConnId) + Send + Sync>;
type DataHook = Arc<dyn Fn(&mut Io<'_>, ConnId, &[u8]) + Send + Sync>;

#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Open(usize, ConnId),
    Close(usize, ConnId),
    Drained(usize, ConnId),
    Shutdown(usize),
}

/// State shared between the test thread and every core's service.
#[derive(Default)]
struct Probe {
    events: Mutex<Vec<Ev>>,
    cmds: Mutex<Vec<(usize, Cmd)>>,
    wakes: AtomicUsize,
    ticks: AtomicUsize,
    open_hook: Mutex<Option<OpenHook>>,
    /// Default (None): echo.
    data_hook: Mutex<Option<DataHook>>,
    /// Stop on shutdown only after this many ticks (0 = at once).
    drain_ticks: AtomicUsize,
}

impl Probe {
    fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }

    fn count(&self, f: impl Fn(&Ev) -> bool) -> usize {
        self.events.lock().unwrap().iter().filter(|e| f(e)).count()
    }

    fn wait_for(&self, what: &str, f: impl Fn(&Probe) -> bool) {
        let deadline = Instant::now() + T;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.events().len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

struct Svc {
    core: usize,
    probe: Arc<Probe>,
    shutdown_at_tick: Option<usize>,
    ticks: usize,
}

impl Service for Svc {
    fn on_open(&mut self, io: &mut Io<'_>, id: ConnId, _peer: SocketAddr) {
        self.probe
            .events
            .lock()
            .unwrap()
            .push(Ev::Open(self.core, id));
        let hook = self.probe.open_hook.lock().unwrap().clone();
        if let Some(h) = hook {
            h(io, id);
        }
    }

    fn on_data(&mut self, io: &mut Io<'_>, id: ConnId, data: &mut [u8]) {
        let hook = self.probe.data_hook.lock().unwrap().clone();
        match hook {
            Some(h) => h(io, id, data),
            None => {
                assert!(io.send(id, Bytes::copy_from_slice(data)));
            }
        }
    }

    fn on_close(&mut self, io: &mut Io<'_>, id: ConnId) {
        assert!(!io.is_alive(id));
        assert!(!io.send(id, Bytes::from_static(b"x")));
        self.probe
            .events
            .lock()
            .unwrap()
            .push(Ev::Close(self.core, id));
    }

    fn on_drained(&mut self, _io: &mut Io<'_>, id: ConnId) {
        self.probe
            .events
            .lock()
            .unwrap()
            .push(Ev::Drained(self.core, id));
    }

    fn on_tick(&mut self, io: &mut Io<'_>, _now: Instant) {
        self.ticks += 1;
        self.probe.ticks.fetch_add(1, Ordering::Relaxed);
        if self.shutdown_at_tick.is_some_and(|t| self.ticks >= t) {
            io.stop();
        }
    }

    fn on_wake(&mut self, io: &mut Io<'_>) {
        self.probe.wakes.fetch_add(1, Ordering::Relaxed);
        let mine: Vec<Cmd> = {
            let mut cmds = self.probe.cmds.lock().unwrap();
            let (mine, rest): (Vec<_>, Vec<_>) = cmds.drain(..).partition(|(c, _)| *c == self.core);
            *cmds = rest;
            mine.into_iter().map(|(_, c)| c).collect()
        };
        for c in mine {
            c(io);
        }
    }

    fn on_shutdown(&mut self, io: &mut Io<'_>) {
        self.probe
            .events
            .lock()
            .unwrap()
            .push(Ev::Shutdown(self.core));
        let n = self.probe.drain_ticks.load(Ordering::Relaxed);
        if n == 0 {
            io.stop();
        } else {
            io.stop_accepting();
            self.shutdown_at_tick = Some(self.ticks + n);
        }
    }
}

fn start(cfg: RuntimeConfig) -> (Runtime, Arc<Probe>) {
    raise_nofile();
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let rt = Runtime::start(cfg, move |core, _wakers: Arc<[CoreWaker]>| Svc {
        core,
        probe: p.clone(),
        shutdown_at_tick: None,
        ticks: 0,
    })
    .expect("runtime starts");
    (rt, probe)
}

/// Runs `f` on core `core` (via on_wake) and returns its result.
fn exec<R: Send + 'static>(
    rt: &Runtime,
    probe: &Probe,
    core: usize,
    f: impl FnOnce(&mut Io<'_>) -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    probe.cmds.lock().unwrap().push((
        core,
        Box::new(move |io: &mut Io<'_>| {
            let _ = tx.send(f(io));
        }),
    ));
    rt.wakers()[core].wake();
    rx.recv_timeout(T).expect("command ran on the core")
}

fn join_within(rt: Runtime, limit: Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(rt.join().is_ok());
    });
    assert!(
        rx.recv_timeout(limit).expect("runtime joined in time"),
        "a core panicked"
    );
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

/// Reads until EOF; returns the bytes and whether the end was a clean EOF (vs. reset).
fn read_to_end_or_reset(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, false),
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------- echo

fn echo_clients(addr: SocketAddr, clients: usize, bytes_each: usize) {
    std::thread::scope(|s| {
        for c in 0..clients {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || {
                    let data = pattern(c as u64 + 1, bytes_each);
                    let mut w = connect(addr);
                    let mut r = w.try_clone().unwrap();
                    let expect = data.clone();
                    let reader = std::thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            let mut got = vec![0u8; expect.len()];
                            r.read_exact(&mut got).expect("echo read");
                            assert!(got == expect, "client {c}: echoed bytes differ");
                        })
                        .unwrap();
                    let mut rng = XorShift(c as u64 * 7919 + 13);
                    let mut off = 0;
                    while off < data.len() {
                        let n = (1 + rng.next() as usize % 8192).min(data.len() - off);
                        w.write_all(&data[off..off + n]).unwrap();
                        off += n;
                    }
                    reader.join().unwrap();
                })
                .unwrap();
        }
    });
}

#[test]
fn echo_one_core_200_clients() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    echo_clients(rt.local_addr(), 200, 64 * 1024);
    let st = &rt.stats()[0];
    assert_eq!(
        st.ring_defer_taskrun.load(Ordering::Relaxed),
        1,
        "kernel 6.1+ gives DEFER_TASKRUN"
    );
    assert_eq!(
        st.recv_incremental.load(Ordering::Relaxed),
        1,
        "kernel 6.12+ consumes receive buffers incrementally (the default)"
    );
    assert_eq!(st.accepted.load(Ordering::Relaxed), 200);
    assert_eq!(st.bytes_in.load(Ordering::Relaxed), 200 * 64 * 1024);
    probe.wait_for("200 closes", |p| {
        p.count(|e| matches!(e, Ev::Close(..))) == 200
    });
    assert_eq!(st.bytes_out.load(Ordering::Relaxed), 200 * 64 * 1024);
    assert_eq!(st.closed.load(Ordering::Relaxed), 200);
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn echo_two_cores_spread() {
    let _g = shared_fds();
    let cores = core_ids(2);
    let n = cores.len();
    let (rt, probe) = start(cfg(cores));
    echo_clients(rt.local_addr(), 200, 64 * 1024);
    probe.wait_for("200 closes", |p| {
        p.count(|e| matches!(e, Ev::Close(..))) == 200
    });
    let stats = rt.stats();
    let per_core: Vec<u64> = stats
        .iter()
        .map(|s| s.accepted.load(Ordering::Relaxed))
        .collect();
    println!("accepted per core: {per_core:?}");
    assert_eq!(per_core.iter().sum::<u64>(), 200);
    if n == 2 {
        assert!(
            per_core.iter().all(|&a| a > 0),
            "SO_REUSEPORT spread: {per_core:?}"
        );
    }
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn ping_pong_costs_few_syscalls() {
    let (rt, _probe) = start(cfg(core_ids(1)));
    let mut c = connect(rt.local_addr());
    let mut b = [0u8; 64];
    c.write_all(&b).unwrap();
    c.read_exact(&mut b).unwrap();
    let st = &rt.stats()[0];
    let (s0, w0) = (
        st.submissions.load(Ordering::Relaxed),
        st.wakeups.load(Ordering::Relaxed),
    );
    const N: u64 = 2000;
    for i in 0..N {
        b[0] = i as u8;
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8);
    }
    let enters = st.submissions.load(Ordering::Relaxed) - s0;
    let wakeups = st.wakeups.load(Ordering::Relaxed) - w0;
    println!(
        "ping-pong: {:.2} io_uring_enter and {:.2} wakeups per round trip",
        enters as f64 / N as f64,
        wakeups as f64 / N as f64
    );
    // One enter reaps the receive, one submits the reply (its completion comes back inline);
    // ticks add a few.
    assert!(enters <= 3 * N, "{enters} enters for {N} round trips");
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

// ---------------------------------------------------------------- send path

#[test]
fn large_write_to_slow_reader_arrives_in_order() {
    let _g = shared_fds();
    const SIZE: usize = 8 << 20;
    let (rt, probe) = start(cfg(core_ids(1)));
    let data = Bytes::from(pattern(42, SIZE));
    let d = data.clone();
    *probe.open_hook.lock().unwrap() = Some(Arc::new(move |io: &mut Io<'_>, id| {
        // First half as one 4 MiB Bytes (single Send, short writes), second half in 64 KiB
        // pieces (coalesced SendMsg).
        assert!(io.send(id, d.slice(..SIZE / 2)));
        let mut off = SIZE / 2;
        while off < SIZE {
            assert!(io.send(id, d.slice(off..off + 65536)));
            off += 65536;
        }
        assert_eq!(io.queued_bytes(id), SIZE);
    }));
    let mut c = connect(rt.local_addr());
    let mut got = Vec::with_capacity(SIZE);
    let mut buf = vec![0u8; 16 * 1024];
    let mut reads = 0;
    while got.len() < SIZE {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "early EOF at {}", got.len());
        got.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads % 16 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(got == data, "bytes differ");
    probe.wait_for("drained", |p| {
        p.count(|e| matches!(e, Ev::Drained(..))) == 1
    });
    let id = match probe.events()[0] {
        Ev::Open(_, id) => id,
        ref e => panic!("unexpected {e:?}"),
    };
    assert_eq!(exec(&rt, &probe, 0, move |io| io.queued_bytes(id)), 0);
    let sends = rt.stats()[0].sends.load(Ordering::Relaxed);
    println!("8 MiB took {sends} send operations");
    assert!(sends > 2, "short writes must have been resumed");
    drop(c);
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn send_urgent_jumps_queued_data() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    *probe.open_hook.lock().unwrap() = Some(Arc::new(|io: &mut Io<'_>, id| {
        assert!(io.send(id, Bytes::from_static(b"aaa")));
        assert!(io.send(id, Bytes::from_static(b"bbb")));
        assert!(io.send_urgent(id, Bytes::from_static(b"U1")));
        assert!(io.send_urgent(id, Bytes::from_static(b"U2")));
        io.close(id);
    }));
    let mut c = connect(rt.local_addr());
    let (got, clean) = read_to_end_or_reset(&mut c);
    assert!(clean);
    assert_eq!(got, b"U1U2aaabbb");
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

// ---------------------------------------------------------------- lifecycle

#[test]
fn close_flushes_then_eof() {
    let _g = shared_fds();
    const SIZE: usize = 1 << 20;
    let (rt, probe) = start(cfg(core_ids(1)));
    let data = Bytes::from(pattern(7, SIZE));
    let d = data.clone();
    *probe.open_hook.lock().unwrap() = Some(Arc::new(move |io: &mut Io<'_>, id| {
        for i in 0..16 {
            assert!(io.send(id, d.slice(i * SIZE / 16..(i + 1) * SIZE / 16)));
        }
        io.close(id);
        assert!(!io.is_alive(id));
        assert!(!io.send(id, Bytes::from_static(b"late")));
    }));
    let mut c = connect(rt.local_addr());
    let (got, clean) = read_to_end_or_reset(&mut c);
    assert!(clean, "expected EOF, got reset");
    assert!(got == data, "got {} bytes", got.len());
    probe.wait_for("close", |p| p.count(|e| matches!(e, Ev::Close(..))) == 1);
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn abort_closes_promptly() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    *probe.open_hook.lock().unwrap() = Some(Arc::new(|io: &mut Io<'_>, id| {
        assert!(io.send(id, Bytes::from(vec![1u8; 1 << 20])));
        io.abort(id);
        assert!(!io.is_alive(id));
    }));
    let mut c = connect(rt.local_addr());
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t0 = Instant::now();
    let (got, _clean) = read_to_end_or_reset(&mut c);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(
        got.is_empty(),
        "aborted output must be dropped, got {}",
        got.len()
    );
    probe.wait_for("close", |p| p.count(|e| matches!(e, Ev::Close(..))) == 1);

    // Abort while a send is blocked in the kernel (peer not reading).
    *probe.open_hook.lock().unwrap() = None;
    let mut c2 = connect(rt.local_addr());
    probe.wait_for("open 2", |p| p.count(|e| matches!(e, Ev::Open(..))) == 2);
    let id = match probe
        .events()
        .iter()
        .rev()
        .find(|e| matches!(e, Ev::Open(..)))
    {
        Some(Ev::Open(_, id)) => *id,
        _ => unreachable!(),
    };
    exec(&rt, &probe, 0, move |io| {
        assert!(io.send(id, Bytes::from(vec![2u8; 32 << 20])));
    });
    std::thread::sleep(Duration::from_millis(100));
    exec(&rt, &probe, 0, move |io| io.abort(id));
    probe.wait_for("close 2", |p| p.count(|e| matches!(e, Ev::Close(..))) == 2);
    c2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (_got, _) = read_to_end_or_reset(&mut c2); // ends (EOF or reset), doesn't hang
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn peer_close_calls_on_close_once() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    let mut c = connect(rt.local_addr());
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    drop(c);
    probe.wait_for("close", |p| p.count(|e| matches!(e, Ev::Close(..))) == 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(probe.count(|e| matches!(e, Ev::Close(..))), 1);

    // Half-close: the peer shuts down its write side; queued output is still flushed.
    let mut c = connect(rt.local_addr());
    c.write_all(b"abc").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (got, clean) = read_to_end_or_reset(&mut c);
    assert_eq!(got, b"abc");
    assert!(clean);
    probe.wait_for("close 2", |p| p.count(|e| matches!(e, Ev::Close(..))) == 2);
    assert_eq!(rt.stats()[0].closed.load(Ordering::Relaxed), 2);
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn stale_id_is_dead_after_slot_reuse() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    let c1 = connect(rt.local_addr());
    probe.wait_for("open", |p| p.count(|e| matches!(e, Ev::Open(..))) == 1);
    let old = match probe.events()[0] {
        Ev::Open(_, id) => id,
        ref e => panic!("unexpected {e:?}"),
    };
    assert_eq!(ConnId::from_u64(old.to_u64()), old);
    drop(c1);
    probe.wait_for("close", |p| p.count(|e| matches!(e, Ev::Close(..))) == 1);
    let mut c2 = connect(rt.local_addr());
    probe.wait_for("open 2", |p| p.count(|e| matches!(e, Ev::Open(..))) == 2);
    let new = match probe
        .events()
        .iter()
        .rev()
        .find(|e| matches!(e, Ev::Open(..)))
    {
        Some(Ev::Open(_, id)) => *id,
        _ => unreachable!(),
    };
    assert_eq!(new.index(), old.index(), "slot reused");
    assert_ne!(new, old);
    let (sent_old, alive_old, q_old, alive_new) = exec(&rt, &probe, 0, move |io| {
        (
            io.send(old, Bytes::from_static(b"stale")),
            io.is_alive(old),
            io.queued_bytes(old),
            io.is_alive(new),
        )
    });
    assert!(!sent_old && !alive_old && q_old == 0 && alive_new);
    exec(&rt, &probe, 0, move |io| {
        io.close(old); // no effect on the new connection
        io.abort(old);
        assert!(io.send(new, Bytes::from_static(b"fresh")));
    });
    let mut buf = [0u8; 5];
    c2.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"fresh");
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

// ---------------------------------------------------------------- scale

#[test]
fn ten_thousand_idle_connections_then_echo() {
    let _x = FDS.write().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    // 10,000 client + 10,000 server sockets; where the hard limit can't be raised (no
    // CAP_SYS_RESOURCE) use as many as fit.
    let n_fit = (nofile_limit().saturating_sub(100)) / 2;
    let n = 10_000.min(n_fit);
    println!("idle connections: {n} (RLIMIT_NOFILE {})", nofile_limit());
    let mut c = cfg(core_ids(1));
    c.io.backlog = 4096;
    let (rt, probe) = start(c);
    let addr = rt.local_addr();
    let rss0 = rss_bytes();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(addr));
    }
    let st = &rt.stats()[0];
    let deadline = Instant::now() + T;
    while st.accepted.load(Ordering::Relaxed) < n as u64 {
        assert!(
            Instant::now() < deadline,
            "accepted {}",
            st.accepted.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(exec(&rt, &probe, 0, |io| io.connections()), n);
    let rss1 = rss_bytes();
    println!(
        "RSS growth with {n} idle connections (server + client handles, whole process): {} B/conn",
        rss1.saturating_sub(rss0) / n as u64
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&(i as u64).to_le_bytes()).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        c.read_exact(&mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), i as u64);
    }
    println!(
        "recv_enobufs = {}, submissions = {}, wakeups = {}",
        st.recv_enobufs.load(Ordering::Relaxed),
        st.submissions.load(Ordering::Relaxed),
        st.wakeups.load(Ordering::Relaxed)
    );
    // Shutdown with 10k open connections: every one gets on_close, the thread ends.
    rt.shutdown();
    probe.wait_for("all closed", |p| {
        p.count(|e| matches!(e, Ev::Close(..))) == n
    });
    join_within(rt, Duration::from_secs(20));
    drop(clients);
}

#[test]
fn small_buffer_ring_recovers_from_enobufs() {
    let _g = shared_fds();
    // 4 buffers of 256 B for 64 connections that all send at once: receives end with ENOBUFS
    // and must be re-armed until everything arrives.
    let mut c = cfg(core_ids(1));
    c.io.buf_count = 4;
    c.io.buf_size = 256;
    let (rt, _probe) = start(c);
    echo_clients(rt.local_addr(), 64, 16 * 1024);
    println!(
        "recv_enobufs = {}",
        rt.stats()[0].recv_enobufs.load(Ordering::Relaxed)
    );
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

/// Echoes `clients × bytes` through one core started with `c`, checks every byte came in and
/// whether the core consumed its receive buffers incrementally.
fn echo_through(c: RuntimeConfig, clients: usize, bytes: usize, incremental: bool) {
    let (rt, _probe) = start(c);
    echo_clients(rt.local_addr(), clients, bytes);
    let st = &rt.stats()[0];
    assert_eq!(
        st.recv_incremental.load(Ordering::Relaxed),
        u64::from(incremental)
    );
    assert_eq!(
        st.bytes_in.load(Ordering::Relaxed),
        (clients * bytes) as u64
    );
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn small_incremental_buffers_split_receives_across_buffers() {
    let _g = shared_fds();
    // 8 buffers of 1000 B consumed incrementally: receives take pieces of a buffer, end
    // mid-buffer and go on in the next, and the pool runs dry (ENOBUFS) while 64 clients
    // send at once; every byte must still come back in order to its own client.
    let mut c = cfg(core_ids(1));
    c.io.buf_count = 8;
    c.io.buf_size = 1000;
    echo_through(c, 64, 32 * 1024, true);
}

#[test]
fn whole_buffers_when_incremental_use_is_off() {
    let _g = shared_fds();
    // The default pool (64 × 64 KiB) with incremental use off is cut into 4 KiB buffers, each
    // receive taking a whole one.
    let mut c = cfg(core_ids(1));
    c.io.buf_incremental = false;
    echo_through(c, 100, 64 * 1024, false);
}

// ---------------------------------------------------------------- config

#[test]
fn config_errors() {
    let _g = shared_fds();
    raise_nofile();
    let f = |_: usize, _: Arc<[CoreWaker]>| NullSvc;
    assert!(matches!(
        Runtime::start(cfg(vec![]), f),
        Err(RuntimeError::NoCores)
    ));
    assert!(matches!(
        Runtime::start(cfg(vec![999]), f),
        Err(RuntimeError::NoSuchCore(999))
    ));
    let c0 = core_ids(1)[0];
    assert!(
        matches!(Runtime::start(cfg(vec![c0, c0]), f), Err(RuntimeError::DuplicateCore(c) ) if c == c0)
    );
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = cfg(vec![c0]);
    c.addr = taken.local_addr().unwrap();
    match Runtime::start(c, f) {
        Err(RuntimeError::Bind { addr, source }) => {
            assert_eq!(addr, taken.local_addr().unwrap());
            assert_eq!(source.kind(), ErrorKind::AddrInUse);
        }
        other => panic!("expected Bind error, got {other:?}"),
    }
    let mut c = cfg(vec![c0]);
    c.io.buf_count = 100;
    assert!(matches!(
        Runtime::start(c, f),
        Err(RuntimeError::InvalidConfig(_))
    ));
}

struct NullSvc;
impl Service for NullSvc {
    fn on_open(&mut self, _: &mut Io<'_>, _: ConnId, _: SocketAddr) {}
    fn on_data(&mut self, _: &mut Io<'_>, _: ConnId, _: &mut [u8]) {}
    fn on_close(&mut self, _: &mut Io<'_>, _: ConnId) {}
    fn on_tick(&mut self, _: &mut Io<'_>, _: Instant) {}
}

#[test]
fn factory_panic_is_a_start_error() {
    let _g = shared_fds();
    raise_nofile();
    let r = Runtime::start(cfg(core_ids(2)), |core, _| {
        if core == 0 {
            panic!("factory fails on purpose");
        }
        NullSvc
    });
    assert!(matches!(r, Err(RuntimeError::CoreExited(_))), "{r:?}");
}

// ---------------------------------------------------------------- wake / shutdown / limits

#[test]
fn wake_from_other_thread_calls_on_wake_coalesced() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    let wakers = rt.wakers();
    std::thread::sleep(Duration::from_millis(50));
    let before = probe.wakes.load(Ordering::Relaxed);
    let w = wakers[0].clone();
    std::thread::spawn(move || {
        for _ in 0..10_000 {
            w.wake();
        }
    })
    .join()
    .unwrap();
    probe.wait_for("on_wake", |p| p.wakes.load(Ordering::Relaxed) > before);
    std::thread::sleep(Duration::from_millis(50));
    let calls = probe.wakes.load(Ordering::Relaxed) - before;
    let wakeups = rt.stats()[0].wakeups.load(Ordering::Relaxed);
    println!("10000 wakes -> {calls} on_wake calls, {wakeups} core wakeups so far");
    assert!((1..10_000).contains(&calls), "wakes are coalesced: {calls}");
    assert!(probe.ticks.load(Ordering::Relaxed) > 0, "on_tick runs");
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}

#[test]
fn shutdown_then_join_terminates() {
    let _g = shared_fds();
    let cores = core_ids(2);
    let n = cores.len();
    let (rt, probe) = start(cfg(cores));
    let clients: Vec<TcpStream> = (0..20).map(|_| connect(rt.local_addr())).collect();
    probe.wait_for("opens", |p| p.count(|e| matches!(e, Ev::Open(..))) == 20);
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
    assert_eq!(probe.count(|e| matches!(e, Ev::Shutdown(_))), n);
    assert_eq!(probe.count(|e| matches!(e, Ev::Close(..))), 20);
    for mut c in clients {
        let (_, _) = read_to_end_or_reset(&mut c);
    }
}

#[test]
fn graceful_shutdown_stops_accepting_then_drains() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    probe.drain_ticks.store(10, Ordering::Relaxed); // ~200 ms
    let addr = rt.local_addr();
    let mut c = connect(addr);
    probe.wait_for("open", |p| p.count(|e| matches!(e, Ev::Open(..))) == 1);
    rt.shutdown();
    probe.wait_for("shutdown", |p| {
        p.count(|e| matches!(e, Ev::Shutdown(_))) == 1
    });
    std::thread::sleep(Duration::from_millis(30));
    // The listener is closed: new connections are refused; the open one still echoes.
    assert!(
        TcpStream::connect(addr).is_err(),
        "listener still accepting"
    );
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    join_within(rt, Duration::from_secs(10));
    assert_eq!(probe.count(|e| matches!(e, Ev::Close(..))), 1);
}

#[test]
fn drop_without_join_stops_cores() {
    let _g = shared_fds();
    let (rt, probe) = start(cfg(core_ids(1)));
    let _c = connect(rt.local_addr());
    probe.wait_for("open", |p| p.count(|e| matches!(e, Ev::Open(..))) == 1);
    drop(rt);
    assert_eq!(probe.count(|e| matches!(e, Ev::Close(..))), 1);
}

#[test]
fn max_connections_per_core_enforced() {
    let _g = shared_fds();
    let mut c = cfg(core_ids(1));
    c.max_connections_per_core = 5;
    let (rt, probe) = start(c);
    let mut clients: Vec<TcpStream> = (0..8).map(|_| connect(rt.local_addr())).collect();
    let st = &rt.stats()[0];
    let deadline = Instant::now() + T;
    while st.accepted.load(Ordering::Relaxed) + st.rejected_over_limit.load(Ordering::Relaxed) < 8 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(st.accepted.load(Ordering::Relaxed), 5);
    assert_eq!(st.rejected_over_limit.load(Ordering::Relaxed), 3);
    // The rejected ones see EOF (or reset); the accepted ones echo.
    let mut rejected = 0;
    for c in clients.iter_mut() {
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(1) => assert_eq!(&b, b"x"),
            Ok(0) => rejected += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => rejected += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rejected, 3);
    assert_eq!(probe.count(|e| matches!(e, Ev::Open(..))), 5);
    rt.shutdown();
    join_within(rt, Duration::from_secs(10));
}
