//! cargo-fuzz binary for the `frame_stream` target: input type, checks and reference oracles are in
//! `src/frame_stream.rs`, shared with the stable driver (`fuzz-stable`).
#![no_main]

use edge_ws_protocol_fuzz::frame_stream::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| edge_ws_protocol_fuzz::frame_stream::run(input));
