//! cargo-fuzz binary for the `handshake_request` target: input type, checks and reference oracles are in
//! `src/handshake_request.rs`, shared with the stable driver (`fuzz-stable`).
#![no_main]

use edge_ws_protocol_fuzz::handshake_request::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| edge_ws_protocol_fuzz::handshake_request::run(input));
