//! Peer server: tokio-tungstenite on a current-thread runtime, one task per connection.
//!
//! Written the way its docs recommend for throughput: messages are `feed`-ed into the write
//! buffer (default 128 KiB) while more input is already readable, and flushed once per batch.
//! Broadcast relay through `tokio::sync::broadcast`. Default WebSocketConfig (buffers included),
//! so memory per connection is what a default deployment gets.

use edge_ws_bench::peer::{self, Route};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Ws = WebSocketStream<TcpStream>;

fn main() {
    peer::serve::<Message, _, _>("peer-tungstenite", connection);
}

async fn connection(stream: TcpStream, tx: broadcast::Sender<Message>) {
    // Subscribe before the 101 goes out, so a subscriber misses nothing published after it.
    let rx = tx.subscribe();
    let mut path = String::new();
    // The callback type is tungstenite's; its large error type is not ours to change.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    match peer::route(&path) {
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
    match msg {
        Message::Text(_) | Message::Binary(_) => ws.feed(msg).await.is_ok(),
        // Pings are answered and closes replied to by tungstenite itself.
        _ => true,
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
                // Whatever else is queued goes out in the same flush.
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
                // Pings are answered and closes replied to by tungstenite; data is ignored.
                Some(Ok(_)) => {
                    // A close reply or pong may be queued: push it out.
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
        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
            // No subscribers is not an error.
            let _ = tx.send(msg);
        }
    }
}
