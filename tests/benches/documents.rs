//! One document, 100 editors: `cargo bench -p edge-ws-tests --bench documents`.
//!
//! 100 real WebSocket clients (the ot.js client algorithm of `edge_ws_tests::ot_client`:
//! one operation awaiting its ack, the rest buffered, incoming operations transformed) each
//! make 20 edits per second with random delays for `DOC_BENCH_SECS` seconds (default 5)
//! against one document of an in-process server (the engine, the documents thread, the store
//! with fsync, its defaults).
//!
//! **The clients do not take the server's CPUs.** All 100 editors run on one thread (a tokio
//! `current_thread` runtime, non-blocking sockets) pinned to the last CPU; the server's threads
//! are pinned to the others (engine cores to the first, at most 2; the documents and store
//! threads to the last of them). With one CPU everything shares it.
//!
//! Prints the edit → ack latency seen by the clients (p50, p99, max), the server-side edit →
//! ack latency (the documents' own histogram: the edit's arrival on its core → its `doc.ack`
//! handed to the engine), the store's commit and fsync latency, the CPU per applied operation
//! of the server's threads and of the client thread (from /proc), and checks that every
//! client ends with the server's text.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use edge_ws::runtime::os::threads_sched_seconds as sched_of;
use edge_ws::testing::TempDir;
use edge_ws::{Config, Cores, Engine};
use edge_ws_server::documents::{DocumentConfig, Documents};
use edge_ws_server::store::{Durability, LatencyStats, Store, StoreOptions};
use edge_ws_server::{Manager, Router};
use edge_ws_tests::ot_client::{join_message, random_op, OtState, Rng};
use tokio::net::TcpStream;
use tungstenite::handshake::HandshakeError;
use tungstenite::{Message as T, WebSocket};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EDITORS: usize = 100;
const DOC: &str = "bench";
/// Thread-name prefixes of the server (engine cores, documents, store, the kernel's io_uring
/// workers) and of the client thread.
const SERVER: [&str; 2] = ["edge-ws-", "iou-"];
const CLIENTS: [&str; 1] = ["doc-clients"];
/// The server's parts, for the CPU split.
const PARTS: [&str; 3] = ["edge-ws-core", "edge-ws-docs", "edge-ws-store"];
/// Bound on the settling and convergence phases.
const SETTLE: Duration = Duration::from_secs(30);

/// A tokio socket as a non-blocking `Read + Write` for tungstenite (`WouldBlock` when not
/// ready, which also clears tokio's readiness so that `readable()` waits for the next data).
struct Io(Rc<TcpStream>);

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// One editor's connection and state.
struct Editor {
    tcp: Rc<TcpStream>,
    ws: WebSocket<Io>,
    st: OtState,
}

impl Editor {
    async fn join(addr: SocketAddr) -> Editor {
        let std = std::net::TcpStream::connect(addr).expect("connect");
        std.set_nodelay(true).expect("nodelay");
        std.set_nonblocking(true).expect("non-blocking");
        let tcp = Rc::new(TcpStream::from_std(std).expect("tokio socket"));
        let mut hs = tungstenite::client(format!("ws://{addr}/"), Io(tcp.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let ws = loop {
            match hs {
                Ok((ws, _)) => break ws,
                Err(HandshakeError::Interrupted(mid)) => {
                    assert!(Instant::now() < deadline, "handshake in time");
                    let _ = tokio::time::timeout(Duration::from_millis(10), tcp.readable()).await;
                    hs = mid.handshake();
                }
                Err(HandshakeError::Failure(e)) => panic!("handshake: {e}"),
            }
        };
        let mut e = Editor {
            tcp,
            ws,
            st: OtState::new(DOC),
        };
        e.send(join_message(DOC, None));
        while e.st.joins == 0 {
            assert!(Instant::now() < deadline, "joined in time");
            e.wait(Instant::now() + Duration::from_millis(10)).await;
        }
        e
    }

    /// Queues `m` and writes what the socket takes.
    fn send(&mut self, m: String) {
        match self.ws.write(T::text(m)) {
            Ok(()) => {
                self.flush();
            }
            Err(e) if would_block(&e) => {}
            Err(e) => panic!("send: {e}"),
        }
    }

    /// Writes what is queued; `true` if some is left (the socket is full).
    fn flush(&mut self) -> bool {
        match self.ws.flush() {
            Ok(()) => false,
            Err(e) if would_block(&e) => true,
            Err(e) => panic!("flush: {e}"),
        }
    }

    /// Handles every message that has arrived (answering acks with the buffered edit).
    fn drain(&mut self) {
        loop {
            match self.ws.read() {
                Ok(T::Text(t)) => {
                    if let Some(m) = self.st.receive(&t) {
                        self.send(m);
                    }
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Handles what has arrived, then sleeps until more arrives, the socket takes the queued
    /// output, or `until`.
    async fn wait(&mut self, until: Instant) {
        self.drain();
        let blocked = self.flush();
        let tcp = self.tcp.clone();
        tokio::select! {
            r = tcp.readable() => r.expect("readable"),
            r = tcp.writable(), if blocked => r.expect("writable"),
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// What the editors share: how many are settled, and the revision to converge on.
#[derive(Default)]
struct Shared {
    settled: Cell<usize>,
    target: Cell<Option<u64>>,
}

/// Types for `secs` (an edit every 25–75 ms, 20 per second on average, from a random phase),
/// waits for every ack, then reads until the revision the server ends at.
async fn edit(mut e: Editor, k: usize, end: Instant, shared: Rc<Shared>) -> (OtState, u64) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((k as u64 + 1) * 104_729));
    let mut next = Instant::now() + Duration::from_millis(rng.below(50) as u64);
    let mut typed = 0u64;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next {
            let op = random_op(&e.st.text, &mut rng);
            if let Some(m) = e.st.local(op) {
                e.send(m);
            }
            typed += 1;
            // On schedule (an open loop), unless this thread fell far behind.
            let pause = Duration::from_millis(25 + rng.below(51) as u64);
            next = if now > next + pause { now } else { next } + pause;
        }
        e.wait(next.min(end)).await;
    }
    let deadline = end + SETTLE;
    while !e.st.settled() {
        assert!(Instant::now() < deadline, "every edit acknowledged in time");
        e.wait(Instant::now() + Duration::from_millis(5)).await;
    }
    shared.settled.set(shared.settled.get() + 1);
    loop {
        if let Some(rev) = shared.target.get() {
            if e.st.revision >= rev {
                break;
            }
        }
        assert!(Instant::now() < deadline, "converged in time");
        e.wait(Instant::now() + Duration::from_millis(5)).await;
    }
    (e.st, typed)
}

struct Run {
    typed: u64,
    ack: Vec<Duration>,
    wall: Duration,
    server_cpu: f64,
    server_wait: f64,
    /// CPU seconds of the engine cores, the documents thread, the store thread.
    parts: [f64; 3],
    client_cpu: f64,
    client_wait: f64,
    received: u64,
}

/// The client thread: every editor on one `current_thread` runtime.
fn clients(addr: SocketAddr, docs: &Documents, secs: u64) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut editors = Vec::with_capacity(EDITORS);
        for _ in 0..EDITORS {
            editors.push(Editor::join(addr).await);
        }
        // Let the last joins' announcements settle before the clock starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let shared = Rc::new(Shared::default());
        let (server0, client0) = (sched_of(&SERVER), sched_of(&CLIENTS));
        let parts0 = PARTS.map(|p| sched_of(&[p]).0);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let tasks: Vec<_> = editors
            .into_iter()
            .enumerate()
            .map(|(k, e)| tokio::task::spawn_local(edit(e, k, end, shared.clone())))
            .collect();
        while shared.settled.get() < EDITORS {
            assert!(Instant::now() < end + SETTLE, "settled in time");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let wall = t0.elapsed();
        let (server1, client1) = (sched_of(&SERVER), sched_of(&CLIENTS));
        let parts1 = PARTS.map(|p| sched_of(&[p]).0);
        let parts = [0, 1, 2].map(|i| parts1[i] - parts0[i]);
        let (server_cpu, server_wait) = (server1.0 - server0.0, server1.1 - server0.1);
        let (client_cpu, client_wait) = (client1.0 - client0.0, client1.1 - client0.1);
        // Every ack is in, so the server's revision is final; every client reads up to it.
        let (rev, text) = docs.text(DOC).expect("the document");
        shared.target.set(Some(rev));
        let mut run = Run {
            typed: 0,
            ack: Vec::new(),
            wall,
            server_cpu,
            server_wait,
            parts,
            client_cpu,
            client_wait,
            received: 0,
        };
        for t in tasks {
            let (st, typed) = t.await.expect("an editor");
            assert_eq!((st.revision, &st.text), (rev, &text), "converged");
            run.typed += typed;
            run.received += st.received;
            run.ack.extend(st.ack_latencies);
        }
        run
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn quantiles(l: &LatencyStats) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n {})",
        ms(l.median_us),
        ms(l.p99_us),
        ms(l.max_us),
        l.count
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("documents: bench");
        return;
    }
    let secs: u64 = std::env::var("DOC_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // DOC_BENCH_PIN=0: leave every thread to the scheduler (2 engine cores).
    let pin = std::env::var("DOC_BENCH_PIN").map_or(true, |v| v != "0");
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let (server_cpus, client_cpu) = match cpus.split_last() {
        Some((last, rest)) if pin && !rest.is_empty() => (rest.to_vec(), Some(*last)),
        _ => (Vec::new(), None),
    };
    // The documents and store threads inherit this thread's affinity.
    if let Some(c) = server_cpus.last() {
        core_affinity::set_for_current(*c);
    }
    let dir = TempDir::new("edge-ws-doc-bench");
    // DOC_BENCH_DURABILITY=buffered (a diagnostic, not the default): commits without the
    // fsync, to tell the disk's share of the latency from the rest of the server's.
    let mut options = StoreOptions::default();
    if std::env::var("DOC_BENCH_DURABILITY").is_ok_and(|v| v == "buffered") {
        options.durability = Durability::Buffered;
    }
    let durability = options.durability;
    let store = Store::open(dir.path(), options).unwrap();
    let manager = Manager::builder().build();
    let mut cfg = Config::default();
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.cores = if server_cpus.is_empty() {
        Cores::Count(2.min(cpus.len().max(1)))
    } else {
        Cores::List(server_cpus.iter().take(2).map(|c| c.id).collect())
    };
    cfg.pin = !server_cpus.is_empty();
    let engine = manager
        .start(Engine::builder().config(cfg), |_| Router::new().channels())
        .unwrap();
    assert!(manager.start_documents(store.clone(), DocumentConfig::default()));
    let addr = engine.local_addr();
    let docs = manager.documents().unwrap().clone();
    let run = std::thread::Builder::new()
        .name("doc-clients".into())
        .spawn(move || {
            if let Some(c) = client_cpu {
                core_affinity::set_for_current(c);
            }
            clients(addr, &docs, secs)
        })
        .unwrap()
        .join()
        .unwrap();
    let docs = manager.documents().unwrap();
    let stats = docs.stats();
    let server = docs.ack_latency();
    let stages = docs.ack_stages();
    let store_stats = store.stats();
    let mut lat = run.ack;
    lat.sort();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    let (rev, text) = docs.text(DOC).unwrap();
    let per_op = |cpu: f64| cpu * 1e6 / stats.applied.max(1) as f64;
    println!(
        "documents_100_editors: store {durability:?}; server CPUs {:?}, client CPU {:?}; {} edits typed, {} operations \
         applied ({} transformed) in {:.1} s, {} broadcasts received; all {EDITORS} clients \
         converged at revision {rev} ({} UTF-16 units)",
        server_cpus.iter().map(|c| c.id).collect::<Vec<_>>(),
        client_cpu.map(|c| c.id),
        run.typed,
        stats.applied,
        stats.transformed,
        run.wall.as_secs_f64(),
        run.received,
        text.encode_utf16().count()
    );
    println!(
        "documents_100_editors client side (send → ack read): p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms over {} edits",
        q(0.5),
        q(0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        lat.len()
    );
    println!(
        "documents_100_editors server side (edit arrives on its core → doc.ack handed to the \
         engine, fsync included): {}",
        quantiles(&server)
    );
    println!(
        "documents_100_editors server stages: to the documents thread {}; record handed to the \
         store → durable {}",
        quantiles(&stages.queued),
        quantiles(&stages.durable)
    );
    println!(
        "documents_100_editors store: {} commits (largest batch {}), commit {}, fsync {}",
        store_stats.commits,
        store_stats.largest_batch,
        quantiles(&store_stats.commit_latency),
        quantiles(&store_stats.fsync_latency)
    );
    println!(
        "documents_100_editors CPU per applied op: server {:.1} µs ({:.2} s on a CPU, {:.2} s \
         runnable waiting for one; engine {:.1} µs, documents {:.1} µs, store {:.1} µs), clients \
         {:.1} µs ({:.2} s on a CPU, {:.2} s waiting; {:.2} µs per broadcast received)",
        per_op(run.server_cpu),
        run.server_cpu,
        run.server_wait,
        per_op(run.parts[0]),
        per_op(run.parts[1]),
        per_op(run.parts[2]),
        per_op(run.client_cpu),
        run.client_cpu,
        run.client_wait,
        run.client_cpu * 1e6 / run.received.max(1) as f64
    );
    engine.handle().shutdown();
    let _ = engine.join();
    drop(dir);
}
