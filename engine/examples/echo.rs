//! The smallest edge-ws server: echo every message back.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```

use edge_ws::{Engine, Handler, Message, MessageView, Socket};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, socket: &mut Socket<'_, '_>, message: Message) {
        let _ = socket.send(message);
    }

    // A message that arrived whole in one receive comes lent, with no allocation: echoed
    // straight from the receive buffer into the send queue.
    fn on_message_view(&mut self, socket: &mut Socket<'_, '_>, message: MessageView<'_>) {
        let _ = socket.send(message);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let engine = Engine::builder().bind(addr.parse()?).build(|_core| Echo)?;
    eprintln!("echo server on ws://{}", engine.local_addr());
    engine.join().map_err(|_| "a core panicked")?;
    Ok(())
}
