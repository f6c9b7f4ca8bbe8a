//! Reconnect storm: N edge-ws `ReconnectingClient`s on one tokio thread, connected to an
//! `edge-ws` server process; the server restarts (SIGTERM: every client gets 1001, then a new
//! process on the same port); prints when each client was back, as a histogram over time
//! since the restart began, and the busiest 50 ms of reconnects against N.
//!
//! ```text
//! reconnect-storm PATH/TO/edge-ws [--clients 10000] [--config bench/edge-ws.toml]
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_ws_bench::args::{Arg, Args};
use edge_ws_client::{ClientBuilder, ReconnectEvent};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn start_server(bin: &str, port: u16, config: &str, data: &str) -> Child {
    Command::new(bin)
        .args(["--addr", &format!("127.0.0.1:{port}"), "--cores", "1"])
        .args(["--api-addr", "off", "--data-dir", data, "--config", config])
        .args(["--stats-interval", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start edge-ws")
}

fn raise_nofile(n: u64) {
    // The shell's `ulimit -n` decides; tell the user when it is too low.
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|x| x.starts_with("Max open files"))
                .and_then(|x| x.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if soft < n {
        eprintln!("reconnect-storm: open-file limit {soft} < {n}: run `ulimit -n {n}` first");
        std::process::exit(2);
    }
}

fn main() {
    let mut args = Args::from_env();
    let (mut bin, mut clients, mut config) = (None, 10_000usize, "bench/edge-ws.toml".to_string());
    let fail = |e: String| -> ! {
        eprintln!("reconnect-storm: {e}");
        std::process::exit(2)
    };
    while let Some(a) = args.next_arg().unwrap_or_else(|e| fail(e)) {
        match a {
            Arg::Positional(p) => bin = Some(p),
            Arg::Long(n) if n == "clients" => clients = args.parse().unwrap_or_else(|e| fail(e)),
            Arg::Long(n) if n == "config" => config = args.value().unwrap_or_else(|e| fail(e)),
            Arg::Long(n) => fail(format!("unknown option --{n}")),
        }
    }
    let bin = bin.unwrap_or_else(|| fail("usage: reconnect-storm PATH/TO/edge-ws".into()));
    raise_nofile(clients as u64 + 256);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = std::env::temp_dir().join(format!("edge-ws-storm-{}", std::process::id()));
    let data = data.to_str().unwrap().to_string();
    let mut server = start_server(&bin, port, &config, &data);
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data_dir = data.clone();
    rt.block_on(async move {
        let url = format!("ws://127.0.0.1:{port}/echo");
        let back: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut keep = Vec::with_capacity(clients);
        for _ in 0..clients {
            let c = ClientBuilder::new()
                .deflate(None)
                .reconnecting(url.as_str())
                .start()
                .expect("start");
            let (sender, receiver, mut events) = c.split();
            let (back, up) = (back.clone(), up_tx.clone());
            tokio::spawn(async move {
                let mut first = true;
                while let Some(e) = events.next().await {
                    if let ReconnectEvent::Connected { .. } = e {
                        if first {
                            first = false;
                            let _ = up.send(());
                        } else {
                            back.lock().unwrap().push(Instant::now());
                        }
                    }
                }
            });
            keep.push((sender, receiver));
        }
        for _ in 0..clients {
            up_rx.recv().await.expect("a first connection");
        }
        eprintln!("{clients} clients connected; restarting the server");
        let t0 = Instant::now();
        let pid = server.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = tokio::task::spawn_blocking(move || server.wait()).await;
        let down = t0.elapsed();
        let mut server = start_server(&bin, port, &config, &data);
        let deadline = Instant::now() + Duration::from_secs(120);
        while back.lock().unwrap().len() < clients && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut times: Vec<f64> = back
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.duration_since(t0).as_secs_f64())
            .collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = times.len();
        let pct = |p: f64| times[((n as f64 * p) as usize).min(n - 1)];
        println!(
            "reconnect-storm: {n}/{clients} back; old server gone after {:.0} ms; back at p10 {:.0} ms, p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, last {:.0} ms",
            down.as_secs_f64() * 1e3,
            pct(0.10) * 1e3,
            pct(0.50) * 1e3,
            pct(0.90) * 1e3,
            pct(0.99) * 1e3,
            times[n - 1] * 1e3
        );
        // Histogram in 100 ms buckets, and the busiest 50 ms.
        let buckets = (times[n - 1] / 0.1) as usize + 1;
        let mut h = vec![0usize; buckets];
        for t in &times {
            h[(t / 0.1) as usize] += 1;
        }
        for (i, c) in h.iter().enumerate() {
            if *c > 0 {
                println!(
                    "  {:>5}-{:<5} ms {:>6} {}",
                    i * 100,
                    (i + 1) * 100,
                    c,
                    "#".repeat((c * 60).div_ceil(n.max(1)))
                );
            }
        }
        let mut busiest = 0;
        let mut j = 0;
        for i in 0..n {
            while times[i] - times[j] > 0.05 {
                j += 1;
            }
            busiest = busiest.max(i - j + 1);
        }
        println!(
            "  busiest 50 ms: {busiest} reconnects ({:.1} % of the clients)",
            busiest as f64 * 100.0 / n as f64
        );
        drop(keep);
        let _ = server.kill();
        let _ = server.wait();
    });
    let _ = std::fs::remove_dir_all(&data_dir);
}
