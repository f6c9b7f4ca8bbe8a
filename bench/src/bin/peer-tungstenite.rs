//! Peer server: tokio-tungstenite on a current-thread runtime, one task per connection.
//!
//! Written the way its docs recommend for throughput: messages are `feed`-ed into the write
//! buffer (default 128 KiB) while more input is already readable, and flushed once per batch.
//! Broadcast relay through `tokio::sync::broadcast`. Default WebSocketConfig (buffers included),
//! so memory per connection is what a default deployment gets.

use edge_ws_bench::peer;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    peer::relay(peer::route(&path), ws, tx, rx, is_data).await;
}

/// Text and binary messages are relayed; the library handles the rest.
fn is_data(m: &Message) -> bool {
    matches!(m, Message::Text(_) | Message::Binary(_))
}
