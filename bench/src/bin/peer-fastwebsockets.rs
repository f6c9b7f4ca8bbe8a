//! Peer server: fastwebsockets on a current-thread runtime, one task per connection.
//!
//! As its docs and examples recommend: `WebSocket::after_handshake` on the raw TcpStream (the
//! upgrade is parsed here with httparse instead of pulling in hyper), auto_close and auto_pong
//! on, vectored writes on, connection tasks run `unconstrained` like the upstream echo example.
//! fastwebsockets has no write buffering: every frame is its own write.
//! Broadcast relay through `tokio::sync::broadcast`; subscribers use the split API
//! (`after_handshake_split` over `TcpStream::into_split`, no lock).

use bytes::Bytes;
use edge_ws_bench::peer::{self, Route};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A relayed message: (is text, payload).
type Msg = (bool, Bytes);

fn main() {
    peer::serve::<Msg, _, _>("peer-fastwebsockets", |stream, tx| {
        tokio::task::unconstrained(connection(stream, tx))
    });
}

/// Reads the upgrade request and answers 101; returns the request path.
async fn handshake(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    for _ in 0..64 {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        match peer::parse_upgrade(&buf) {
            Ok(None) => continue,
            Ok(Some((head, path, resp))) => {
                if head != buf.len() {
                    // A client that sends frames before the 101: not supported here.
                    return None;
                }
                stream.write_all(&resp).await.ok()?;
                return Some(path);
            }
            Err(bad) => {
                let _ = stream.write_all(bad).await;
                return None;
            }
        }
    }
    None
}

async fn connection(mut stream: TcpStream, tx: broadcast::Sender<Msg>) {
    // Subscribe before the 101 goes out, so a subscriber misses nothing published after it.
    let rx = tx.subscribe();
    let Some(path) = handshake(&mut stream).await else {
        return;
    };
    match peer::route(&path) {
        Route::Echo => {
            drop(rx);
            echo(stream).await;
        }
        Route::Sub => subscriber(stream, rx).await,
        Route::Pub => {
            drop(rx);
            publisher(stream, tx).await;
        }
    }
}

fn configure(ws: &mut WebSocket<TcpStream>) {
    ws.set_writev(true);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
}

async fn echo(stream: TcpStream) {
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    configure(&mut ws);
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(_) => return,
        };
        match frame.opcode {
            OpCode::Close => return,
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                // A fresh frame: the received one still carries the client's mask key.
                let out = Frame::new(frame.fin, frame.opcode, None, frame.payload);
                if ws.write_frame(out).await.is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

async fn subscriber(stream: TcpStream, mut rx: broadcast::Receiver<Msg>) {
    let (rd, wr) = stream.into_split();
    let (mut r, mut w) = fastwebsockets::after_handshake_split(rd, wr, Role::Server);
    w.set_writev(true);
    // The reader only watches for the client's close (or a dead socket); the writer answers.
    let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut ignore = |_f: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        loop {
            match r.read_frame(&mut ignore).await {
                Ok(f) if f.opcode != OpCode::Close => continue,
                _ => break,
            }
        }
        let _ = closed_tx.send(());
    });
    loop {
        tokio::select! {
            m = rx.recv() => {
                let (text, bytes) = match m {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("subscriber lagged, {n} messages lost");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let op = if text { OpCode::Text } else { OpCode::Binary };
                if w.write_frame(Frame::new(true, op, None, Payload::Borrowed(&bytes))).await.is_err() {
                    return;
                }
            }
            _ = &mut closed_rx => {
                let _ = w.write_frame(Frame::close(1000, b"")).await;
                return;
            }
        }
    }
}

async fn publisher(stream: TcpStream, tx: broadcast::Sender<Msg>) {
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    configure(&mut ws);
    loop {
        let frame = match ws.read_frame().await {
            Ok(f) => f,
            Err(_) => return,
        };
        let text = match frame.opcode {
            OpCode::Close => return,
            OpCode::Text => true,
            OpCode::Binary => false,
            _ => continue,
        };
        let bytes = match frame.payload {
            Payload::Bytes(b) => b.freeze(),
            other => Bytes::copy_from_slice(&other),
        };
        // No subscribers is not an error.
        let _ = tx.send((text, bytes));
    }
}
