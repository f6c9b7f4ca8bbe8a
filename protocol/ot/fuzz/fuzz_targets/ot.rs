//! All of `edge_ws_ot::fuzzing::check`: a document and concurrent operations derived from the
//! input, TP1, compose, invert, JSON and cursor laws, and malformed operations and JSON that
//! must give errors, not panics. The same function runs on stable in
//! `protocol/ot/tests/fuzz_check.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| edge_ws_ot::fuzzing::check(data));
