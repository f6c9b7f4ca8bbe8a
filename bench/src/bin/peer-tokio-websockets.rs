//! Peer server: tokio-websockets on a current-thread runtime, one task per connection.
//!
//! As its echo example does (unconstrained tasks, `ServerBuilder::accept`), plus its write
//! buffering: echoes are `feed`-ed (queued until the 8 KiB flush threshold) while more input
//! is already readable and flushed once per batch. Broadcast relay through
//! `tokio::sync::broadcast` (`Message` is cheaply clonable).

use edge_ws_bench::peer;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_websockets::{Message, ServerBuilder};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    peer::relay(peer::route(request.uri().path()), ws, tx, rx, is_data).await;
}

/// Text and binary messages are relayed; the library handles the rest.
fn is_data(m: &Message) -> bool {
    m.is_text() || m.is_binary()
}
