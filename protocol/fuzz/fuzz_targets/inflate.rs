//! cargo-fuzz binary for the `inflate` target: input type, checks and reference oracles are in
//! `src/inflate.rs`, shared with the stable driver (`fuzz-stable`).
#![no_main]

use edge_ws_protocol_fuzz::inflate::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| edge_ws_protocol_fuzz::inflate::run(input));
