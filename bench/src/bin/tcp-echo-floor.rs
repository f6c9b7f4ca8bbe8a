//! tcp-echo-floor: raw TCP echo on io_uring, no WebSocket framing — the floor every table is
//! compared with. `--addr 127.0.0.1:PORT`, `--core N`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = edge_ws_bench::peer::parse_args("tcp-echo-floor");
    if let Err(e) = edge_ws_bench::floor::run(args.addr, args.core) {
        eprintln!("tcp-echo-floor: {e}");
        std::process::exit(1);
    }
}
