//! cargo-fuzz binary for the `mask` target: input type, checks and reference oracles are in
//! `src/mask.rs`, shared with the stable driver (`fuzz-stable`).
#![no_main]

use edge_ws_protocol_fuzz::mask::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| edge_ws_protocol_fuzz::mask::run(input));
