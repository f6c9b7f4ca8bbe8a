//! Peer server: tokio-websockets on a current-thread runtime, one task per connection.
//!
//! As its echo example does (unconstrained tasks, `ServerBuilder::accept`), plus its write
//! buffering: echoes are `feed`-ed (queued until the 8 KiB flush threshold) while more input
//! is already readable and flushed once per batch. Broadcast relay through
//! `tokio::sync::broadcast` (`Message` is cheaply clonable).

use edge_ws_bench::peer::{self, Route};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_websockets::{Message, ServerBuilder, WebSocketStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Ws = WebSocketStream<TcpStream>;

fn main() {
    peer::serve::<Message, _, _>("peer-tokio-websockets", |stream, tx| {
        tokio::task::unconstrained(connection(stream, tx))
    });
}

async fn connection(stream: TcpStream, tx: broadcast::Sender<Message>) {
    // Subscribe before the 101 goes out, so a subscriber misses nothing published after it.
    let rx = tx.subscribe();
    let Ok((request, ws)) = ServerBuilder::new().accept(stream).await else {
        return;
    };
    match peer::route(request.uri().path()) {
        Route::Echo => {
            drop(rx);
            echo(ws).await;
        }
        Route::Sub => subscriber(ws, rx).await,
        Route::Pub => {
            drop(rx);
            publisher(ws, tx).await;
        }
    }
}

/// Queues the echo of a data message; false when the connection is done.
async fn echo_one(ws: &mut Ws, msg: Message) -> bool {
    if msg.is_text() || msg.is_binary() {
        ws.feed(msg).await.is_ok()
    } else {
        // Pings are answered and closes replied to by tokio-websockets itself.
        true
    }
}

async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if !echo_one(&mut ws, msg).await {
            return;
        }
        // Everything already readable goes into the same flush.
        loop {
            match ws.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    if !echo_one(&mut ws, m).await {
                        return;
                    }
                }
                Some(_) => {
                    let _ = ws.flush().await;
                    return;
                }
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn subscriber(mut ws: Ws, mut rx: broadcast::Receiver<Message>) {
    loop {
        tokio::select! {
            m = rx.recv() => {
                let msg = match m {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("subscriber lagged, {n} messages lost");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if ws.feed(msg).await.is_err() {
                    return;
                }
                loop {
                    match rx.try_recv() {
                        Ok(m) => {
                            if ws.feed(m).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            eprintln!("subscriber lagged, {n} messages lost");
                        }
                        Err(_) => break,
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            m = ws.next() => match m {
                Some(Ok(_)) => {
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
        }
    }
}

async fn publisher(mut ws: Ws, tx: broadcast::Sender<Message>) {
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_text() || msg.is_binary() {
            let _ = tx.send(msg);
        }
    }
}
