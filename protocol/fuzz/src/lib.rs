//! Fuzz targets for `edge-ws-protocol`, shared by two harnesses:
//!
//! - the cargo-fuzz (libFuzzer) binaries in `fuzz_targets/`, thin `fuzz_target!` wrappers
//!   around each module's `run` (feature `libfuzzer`);
//! - the stable-Rust driver `fuzz-stable` (`src/bin/fuzz-stable.rs`), which runs the committed
//!   seed corpora (`seeds/<target>/`) and then generated inputs for a fixed time.
//!
//! Each module holds one target: its input type, its reference oracles and `run(input)`, which
//! panics when a check fails. Most targets take an `Arbitrary` input type `Input`; the driver
//! decodes a byte string into it exactly like `fuzz_target!` does ([`run_bytes`]), so corpus
//! files, seeds and crash artifacts mean the same to both harnesses. Byte targets
//! (`connection`, `ot`) take the raw `&[u8]` (their library entry points read bytes
//! themselves), as `fuzz_target!(|data: &[u8]| ...)` passes them. [`TARGETS`] lists them all
//! for the driver.
#![forbid(unsafe_code)]

use arbitrary::{Arbitrary, Unstructured};
use core::fmt::Debug;

pub mod connection;
pub mod deflate_negotiation;
pub mod frame_stream;
pub mod handshake_request;
pub mod inflate;
pub mod mask;
pub mod ot;
pub mod seed;
pub mod utf8_incremental;

/// One target, type-erased for the driver.
pub struct Target {
    /// The cargo-fuzz binary name, also the seed and artifact folder name.
    pub name: &'static str,
    /// Decodes the bytes into the target's input and checks it; panics on a failed check.
    /// Returns `false` (and checks nothing) for bytes that `arbitrary` rejects, which
    /// `fuzz_target!` skips too (a byte target never rejects).
    pub run: fn(&[u8]) -> bool,
    /// The decoded input, pretty-printed (`None`: `arbitrary` rejects the bytes); a byte
    /// target's input as a hex dump.
    pub describe: fn(&[u8]) -> Option<String>,
    /// The seed corpus: (file name, bytes), built from hand-written inputs.
    pub seeds: fn() -> Vec<(&'static str, Vec<u8>)>,
}

/// Decodes `data` the way `libfuzzer_sys::fuzz_target!` does (too short for the type's
/// minimum size, or an `arbitrary` error: skipped) and passes the input to `f`.
pub fn run_bytes<'a, T: Arbitrary<'a>>(data: &'a [u8], f: impl FnOnce(T)) -> bool {
    match decode::<T>(data) {
        Some(input) => {
            f(input);
            true
        }
        None => false,
    }
}

fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    if data.len() < T::size_hint(0).0 {
        return None;
    }
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// The pretty-printed input that `data` decodes into.
pub fn describe<T: for<'a> Arbitrary<'a> + Debug>(data: &[u8]) -> Option<String> {
    decode::<T>(data).map(|input| format!("{input:?}"))
}

/// `data` as a hex dump, 16 bytes a line with their ASCII form (the `describe` of a byte
/// target).
pub fn hex_dump(data: &[u8]) -> String {
    let mut out = format!("{} bytes", data.len());
    for (i, line) in data.chunks(16).enumerate() {
        out += &format!("\n{:06x} ", i * 16);
        for b in line {
            out += &format!(" {b:02x}");
        }
        out += &"   ".repeat(16 - line.len());
        out += "  ";
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        }));
    }
    out
}

/// Encodes named structured seeds (see [`seed`]).
pub fn encode_seeds<T>(seeds: Vec<(&'static str, T)>) -> Vec<(&'static str, Vec<u8>)>
where
    T: seed::Encode + Debug + for<'a> Arbitrary<'a>,
{
    seeds
        .into_iter()
        .map(|(name, input)| (name, seed::encode_seed(&input)))
        .collect()
}

macro_rules! targets {
    ($($kind:ident $m:ident),* $(,)?) => {
        /// Every target, in the order the driver runs them.
        pub const TARGETS: &[Target] = &[$(targets!(@$kind $m),)*];
    };
    // An `Arbitrary` input type `$m::Input`, structured seeds.
    (@structured $m:ident) => {
        Target {
            name: stringify!($m),
            run: |data| run_bytes(data, $m::run),
            describe: describe::<$m::Input>,
            seeds: || encode_seeds($m::seeds()),
        }
    };
    // `$m::run(&[u8])`, seeds as bytes.
    (@bytes $m:ident) => {
        Target {
            name: stringify!($m),
            run: |data| {
                $m::run(data);
                true
            },
            describe: |data| Some(hex_dump(data)),
            seeds: $m::seeds,
        }
    };
}

targets!(
    structured frame_stream,
    structured handshake_request,
    structured inflate,
    structured utf8_incremental,
    structured mask,
    structured deflate_negotiation,
    bytes connection,
    bytes ot,
);

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every seed decodes back into its structured input (checked by `encode_seeds`), is
    /// accepted by `arbitrary` and passes its target.
    #[test]
    fn seeds_pass() {
        for t in TARGETS {
            let seeds = (t.seeds)();
            assert!(
                (5..=20).contains(&seeds.len()),
                "{}: {}",
                t.name,
                seeds.len()
            );
            for (name, bytes) in seeds {
                assert!((t.run)(&bytes), "{}/{name}: rejected by arbitrary", t.name);
            }
        }
    }

    /// `seeds/` holds exactly what `fuzz-stable --write-seeds` writes.
    #[test]
    fn committed_seeds_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        for t in TARGETS {
            let mut want: Vec<(String, Vec<u8>)> = (t.seeds)()
                .into_iter()
                .map(|(n, b)| (n.to_string(), b))
                .collect();
            want.sort();
            let mut have: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join(t.name))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let name = e.file_name().into_string().unwrap();
                    (name, std::fs::read(e.path()).unwrap())
                })
                .collect();
            have.sort();
            assert!(
                have == want,
                "seeds/{} is stale: run `fuzz-stable --write-seeds`",
                t.name
            );
            let total: usize = have.iter().map(|(_, b)| b.len()).sum();
            assert!(total < 64 * 1024, "seeds/{}: {total} bytes", t.name);
        }
    }
}
