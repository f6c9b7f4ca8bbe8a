//! cargo-fuzz binary for the `deflate_negotiation` target: input type, checks and reference oracles are in
//! `src/deflate_negotiation.rs`, shared with the stable driver (`fuzz-stable`).
#![no_main]

use edge_ws_protocol_fuzz::deflate_negotiation::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| edge_ws_protocol_fuzz::deflate_negotiation::run(input));
