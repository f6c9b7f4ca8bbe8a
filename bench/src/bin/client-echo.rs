//! Client-side echo cost: the edge-ws client against the tokio-tungstenite client, the same
//! load against the same server, on one current-thread tokio runtime.
//!
//! ```text
//! client-echo ws://127.0.0.1:9001/ --client edge|tungstenite [--conns 100] [--depth 8]
//!             [--messages 2000] [--size 64]
//! ```
//!
//! Each connection keeps `--depth` binary messages of `--size` bytes in flight and stops after
//! `--messages` echoes. Prints one line: the client process's CPU (user + system, from
//! getrusage) per echoed message, and messages/s. Run it alternately with both clients
//! (bench/run.sh does, as the `client` scenario) and compare medians.

use std::time::Instant;

use edge_ws_bench::args::{Arg, Args};
use futures_util::{SinkExt, StreamExt};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn edge(url: String, depth: usize, messages: usize, size: usize) {
    let mut ws = edge_ws_client::ClientBuilder::new()
        .deflate(None)
        .connect(url.as_str())
        .await
        .expect("connect");
    let payload = bytes::Bytes::from(vec![7u8; size]);
    let mut sent = 0;
    for _ in 0..depth.min(messages) {
        ws.send(edge_ws_client::Message::binary(payload.clone()))
            .await
            .unwrap();
        sent += 1;
    }
    let mut got = 0;
    while got < messages {
        match ws.recv().await {
            Some(Ok(_)) => got += 1,
            other => panic!("edge client: {other:?}"),
        }
        if sent < messages {
            ws.send(edge_ws_client::Message::binary(payload.clone()))
                .await
                .unwrap();
            sent += 1;
        }
    }
    let _ = ws.close(1000u16, "done").await;
}

async fn tungstenite(url: String, depth: usize, messages: usize, size: usize) {
    use tokio_tungstenite::tungstenite::Message;
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .expect("upgrade");
    let payload = bytes::Bytes::from(vec![7u8; size]);
    let mut sent = 0;
    for _ in 0..depth.min(messages) {
        ws.feed(Message::Binary(payload.clone())).await.unwrap();
        sent += 1;
    }
    ws.flush().await.unwrap();
    let mut got = 0;
    while got < messages {
        match ws.next().await {
            Some(Ok(Message::Binary(_))) => got += 1,
            Some(Ok(_)) => continue,
            other => panic!("tungstenite client: {other:?}"),
        }
        if sent < messages {
            ws.send(Message::Binary(payload.clone())).await.unwrap();
            sent += 1;
        }
    }
    let _ = ws.close(None).await;
}

fn main() {
    let mut args = Args::from_env();
    let (mut url, mut client) = (None, "edge".to_string());
    let (mut conns, mut depth, mut messages, mut size) = (100usize, 8usize, 2000usize, 64usize);
    let fail = |e: String| -> ! {
        eprintln!("client-echo: {e}");
        std::process::exit(2)
    };
    while let Some(a) = args.next_arg().unwrap_or_else(|e| fail(e)) {
        match a {
            Arg::Positional(p) => url = Some(p),
            Arg::Long(name) => match name.as_str() {
                "client" => client = args.value().unwrap_or_else(|e| fail(e)),
                "conns" => conns = args.parse().unwrap_or_else(|e| fail(e)),
                "depth" => depth = args.parse().unwrap_or_else(|e| fail(e)),
                "messages" => messages = args.parse().unwrap_or_else(|e| fail(e)),
                "size" => size = args.parse().unwrap_or_else(|e| fail(e)),
                other => fail(format!("unknown option --{other}")),
            },
        }
    }
    let url =
        url.unwrap_or_else(|| fail("usage: client-echo URL --client edge|tungstenite".into()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let url = url.clone();
            tasks.push(match client.as_str() {
                "edge" => tokio::spawn(edge(url, depth, messages, size)),
                "tungstenite" => tokio::spawn(tungstenite(url, depth, messages, size)),
                other => panic!("--client edge or tungstenite, got {other}"),
            });
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let cpu = cpu_seconds() - c0;
    let wall = t0.elapsed().as_secs_f64();
    let total = (conns * messages) as f64;
    println!(
        "client-echo client={client} conns={conns} depth={depth} size={size} messages={} cpu_us_per_msg={:.3} msgs_per_s={:.0}",
        conns * messages,
        cpu / total * 1e6,
        total / wall
    );
}
