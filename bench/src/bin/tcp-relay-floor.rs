//! tcp-relay-floor: a raw TCP relay (no WebSocket framing, no parsing): every accepted
//! connection gets its own connection to `--backend`, and bytes are copied both ways as they
//! come (`tokio::io::copy_bidirectional`, one current-thread runtime, one task per
//! connection). With `tcp-echo-floor` behind it, it is the floor for a proxy: what relaying
//! costs the kernel before any WebSocket work (bench/proxy.sh compares the edge-ws proxy with
//! it). `--addr 127.0.0.1:PORT --backend 127.0.0.1:PORT`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str) -> Option<SocketAddr> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next().and_then(|v| v.parse().ok());
        }
    }
    None
}

fn main() {
    let (Some(addr), Some(backend)) = (arg("--addr"), arg("--backend")) else {
        eprintln!("usage: tcp-relay-floor --addr 127.0.0.1:PORT --backend 127.0.0.1:PORT");
        std::process::exit(2);
    };
    if !addr.ip().is_loopback() || !backend.ip().is_loopback() {
        eprintln!("tcp-relay-floor: loopback addresses only");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let result: std::io::Result<()> = rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!("tcp-relay-floor listening on {addr}, relaying to {backend}");
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut server) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    if let Err(e) = result {
        eprintln!("tcp-relay-floor: {e}");
        std::process::exit(1);
    }
}
