//! wsload: the edge-ws load generator. `wsload --help` for options; bench/README.md for details.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(edge_ws_bench::load::main());
}
