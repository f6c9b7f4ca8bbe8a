//! cargo-fuzz binary for the `utf8_incremental` target: input type, checks and reference oracles are in
//! `src/utf8_incremental.rs`, shared with the stable driver (`fuzz-stable`).
#![no_main]

use edge_ws_protocol_fuzz::utf8_incremental::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| edge_ws_protocol_fuzz::utf8_incremental::run(input));
