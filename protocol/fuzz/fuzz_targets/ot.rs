//! cargo-fuzz binary for the `ot` target: checks are in `src/ot.rs`, shared with the stable
//! driver (`fuzz-stable`). A byte target: libFuzzer's input goes to `run` as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| edge_ws_protocol_fuzz::ot::run(data));
