//! `fuzz-stable`: the fuzz targets on stable Rust, without libFuzzer.
//!
//! For each target (all, or those named): every file of its seed corpus
//! (`seeds/<target>/`), then `--seconds N` of generated inputs: fresh pseudo-random byte strings
//! of varied lengths mixed with mutations of the seed files (bit flips, byte changes, inserts,
//! deletes, duplicated ranges, truncation, splicing). Inputs are decoded with `arbitrary`
//! exactly as `fuzz_target!` decodes them. The generator is a seeded PRNG (splitmix64): the
//! seed is printed, and `--seed` repeats a run. A failed check (a panic, caught per input) writes
//! the input to `artifacts/<target>/crash-<seed>-<iteration>`, ends that target (unless
//! `--keep-going`) and makes the exit status non-zero; `--replay <target> <file>` runs one file
//! again.
//!
//! No coverage feedback: this is a smoke fuzzer for CI, not a replacement for cargo-fuzz.
#![forbid(unsafe_code)]

use edge_ws_protocol_fuzz::{target, Target, TARGETS};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage: fuzz-stable [OPTIONS] [TARGET...]      seeds, then generated inputs, per target
       fuzz-stable --replay TARGET FILE...    run files again, printing the decoded input
       fuzz-stable --write-seeds [TARGET...]  regenerate seeds/<target>/
       fuzz-stable --list                     the targets

options:
  --seconds N     generated inputs per target for N seconds (default 10; 0: seeds only)
  --runs N        at most N generated inputs per target
  --seed S        PRNG seed (decimal or 0x hex; default: from the clock, printed)
  --max-len N     longest generated input in bytes (default 8192)
  --keep-going    after a failing input, go on until the time is up (5 reported per target)
  --seeds DIR     seed corpus folder (default: this crate's seeds/)
  --artifacts DIR where failing inputs go (default: this crate's artifacts/)";

struct Options {
    seconds: f64,
    runs: u64,
    seed: Option<u64>,
    max_len: usize,
    seeds_dir: PathBuf,
    artifacts_dir: PathBuf,
    keep_going: bool,
    mode: Mode,
    names: Vec<String>,
}

enum Mode {
    Fuzz,
    Replay,
    WriteSeeds,
    List,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad number {s:?}: {e}"))
}

fn parse_args() -> Result<Options, String> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        seconds: 10.0,
        runs: u64::MAX,
        seed: None,
        max_len: 8192,
        seeds_dir: crate_dir.join("seeds"),
        artifacts_dir: crate_dir.join("artifacts"),
        keep_going: false,
        mode: Mode::Fuzz,
        names: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => {
                let v = value()?;
                o.seconds = v.parse().map_err(|e| format!("bad --seconds {v:?}: {e}"))?;
                if !(o.seconds >= 0.0 && o.seconds.is_finite()) {
                    return Err(format!("bad --seconds {v:?}"));
                }
            }
            "--runs" => o.runs = parse_u64(&value()?)?,
            "--seed" => o.seed = Some(parse_u64(&value()?)?),
            "--max-len" => o.max_len = parse_u64(&value()?)? as usize,
            "--seeds" => o.seeds_dir = value()?.into(),
            "--artifacts" => o.artifacts_dir = value()?.into(),
            "--keep-going" => o.keep_going = true,
            "--replay" => o.mode = Mode::Replay,
            "--write-seeds" => o.mode = Mode::WriteSeeds,
            "--list" => o.mode = Mode::List,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => o.names.push(a),
        }
    }
    Ok(o)
}

/// The targets named (all when none), in `TARGETS` order.
fn select(names: &[String]) -> Result<Vec<&'static Target>, String> {
    for n in names {
        if target(n).is_none() {
            return Err(format!("unknown target {n:?}"));
        }
    }
    Ok(TARGETS
        .iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
        .collect())
}

// --- Running one input, panics caught -------------------------------------------------------

thread_local! {
    /// While set, the panic hook records the message here instead of printing it.
    static CAPTURE: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if CAPTURE.get() {
            let mut msg = info.to_string();
            let bt = std::backtrace::Backtrace::capture();
            if bt.status() == std::backtrace::BacktraceStatus::Captured {
                msg += &format!("\n{bt}");
            }
            PANIC.set(Some(msg));
        } else {
            default(info);
        }
    }));
}

enum Verdict {
    Passed,
    /// `arbitrary` rejects the bytes (too short for the input type): nothing checked.
    Rejected,
    Failed(String),
}

fn check(t: &Target, data: &[u8]) -> Verdict {
    CAPTURE.set(true);
    let r = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(data)));
    CAPTURE.set(false);
    match r {
        Ok(true) => Verdict::Passed,
        Ok(false) => Verdict::Rejected,
        Err(payload) => Verdict::Failed(PANIC.take().unwrap_or_else(|| {
            // A panic payload that the hook did not see (it always should).
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".into())
        })),
    }
}

// --- Generating inputs ----------------------------------------------------------------------

/// splitmix64: tiny, fast, good enough to drive a fuzzer, and reproducible from one `u64`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Uniform in `0..=n`.
    fn upto(&mut self, n: usize) -> usize {
        self.below(n + 1)
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    /// A length up to `max`, biased towards short ones (each size class equally likely).
    fn len(&mut self, max: usize) -> usize {
        let class = [16, 128, 1024, max][self.below(4)];
        self.upto(class.min(max))
    }
}

/// Bytes that often mean something to `arbitrary` and the codec: booleans, limits, lengths.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x07, 0x08, 0x0f, 0x10, 0x7d, 0x7e, 0x7f, 0x80, 0x81, 0x88, 0xc0, 0xe0,
    0xf0, 0xfe, 0xff,
];

fn fresh(rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let len = rng.len(max_len);
    match rng.below(3) {
        0 => (0..len).map(|_| rng.byte()).collect(),
        1 => (0..len)
            .map(|_| INTERESTING[rng.below(INTERESTING.len())])
            .collect(),
        // Runs of one byte: long vectors of identical elements, long strings.
        _ => {
            let mut v = Vec::with_capacity(len);
            while v.len() < len {
                let b = if rng.below(2) == 0 {
                    rng.byte()
                } else {
                    INTERESTING[rng.below(INTERESTING.len())]
                };
                let run = rng.upto(32).min(len - v.len());
                v.extend(std::iter::repeat_n(b, run.max(1)));
            }
            v.truncate(len);
            v
        }
    }
}

fn mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], max_len: usize) {
    let len = v.len();
    match rng.below(10) {
        // Flip one bit.
        0 if len > 0 => v[rng.below(len)] ^= 1 << rng.below(8),
        // Overwrite a byte with a random or an interesting value.
        1 if len > 0 => v[rng.below(len)] = rng.byte(),
        2 if len > 0 => v[rng.below(len)] = INTERESTING[rng.below(INTERESTING.len())],
        // Add or subtract a little.
        3 if len > 0 => {
            let i = rng.below(len);
            let d = 1 + rng.below(16) as u8;
            v[i] = if rng.below(2) == 0 {
                v[i].wrapping_add(d)
            } else {
                v[i].wrapping_sub(d)
            };
        }
        // Insert random bytes.
        4 => {
            let at = rng.upto(len);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            v.splice(at..at, bytes);
        }
        // Delete a range.
        5 if len > 0 => {
            let at = rng.below(len);
            let n = (1 + rng.below(16)).min(len - at);
            v.drain(at..at + n);
        }
        // Truncate.
        6 => v.truncate(rng.upto(len)),
        // Duplicate a range somewhere else (repeats a frame, a vector element, a header).
        7 if len > 0 => {
            let from = rng.below(len);
            let n = (1 + rng.below(64)).min(len - from);
            let chunk = v[from..from + n].to_vec();
            let at = rng.upto(len);
            v.splice(at..at, chunk);
        }
        // Splice: this input's head, another seed's tail.
        8 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            let at = rng.upto(len);
            let from = rng.upto(other.len());
            v.truncate(at);
            v.extend_from_slice(&other[from..]);
        }
        // Overwrite a range with bytes from another seed.
        9 if !seeds.is_empty() && len > 0 => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let at = rng.below(len);
                let from = rng.below(other.len());
                let n = (1 + rng.below(32)).min(len - at).min(other.len() - from);
                v[at..at + n].copy_from_slice(&other[from..from + n]);
            }
        }
        // Append random bytes (also what the guarded arms fall back to).
        _ => {
            let n = 1 + rng.below(32);
            v.extend((0..n).map(|_| rng.byte()));
        }
    }
    v.truncate(max_len);
}

/// One generated input: a fresh random string (1 in 4, or when there are no seeds) or a seed
/// with 1 to 16 stacked mutations.
fn generate(rng: &mut Rng, seeds: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut v = if seeds.is_empty() || rng.below(4) == 0 {
        let v = fresh(rng, max_len);
        if rng.below(2) == 0 {
            return v;
        }
        v
    } else {
        let mut v = seeds[rng.below(seeds.len())].clone();
        v.truncate(max_len);
        v
    };
    for _ in 0..1usize << rng.below(5) {
        mutate(rng, &mut v, seeds, max_len);
    }
    v
}

/// The PRNG state for one target: depends on the run's seed and the target's name only, so
/// a target's inputs do not change with the other targets selected.
fn target_rng(seed: u64, name: &str) -> Rng {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut r = Rng(seed ^ h);
    r.next();
    r
}

// --- Modes ----------------------------------------------------------------------------------

fn read_seeds(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut files = Vec::new();
    for e in entries {
        let path = e.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            files.push((path, bytes));
        }
    }
    files.sort();
    Ok(files)
}

/// Failing inputs reported (and written) per target with `--keep-going`.
const MAX_REPORTS: u64 = 5;

fn report_failure(t: &Target, what: &str, msg: &str, data: &[u8], path: &Path) {
    println!(
        "\n!!! {}: check failed on {what} ({} bytes)",
        t.name,
        data.len()
    );
    println!("{msg}");
    println!("input: {}", path.display());
    println!(
        "replay: cargo run --release --manifest-path protocol/fuzz/Cargo.toml --bin fuzz-stable \
         -- --replay {} {}\n",
        t.name,
        path.display()
    );
}

/// Seeds, then generated inputs; `true` when everything passed.
fn fuzz_target(t: &Target, o: &Options, seed: u64) -> Result<bool, String> {
    let start = Instant::now();
    let seeds = read_seeds(&o.seeds_dir.join(t.name))?;
    for (path, data) in &seeds {
        if let Verdict::Failed(msg) = check(t, data) {
            report_failure(t, "a seed file", &msg, data, path);
            println!("{:<20} FAILED on seed file {}", t.name, path.display());
            return Ok(false);
        }
    }
    let seed_time = start.elapsed();
    let corpus: Vec<Vec<u8>> = seeds.into_iter().map(|(_, d)| d).collect();

    let mut rng = target_rng(seed, t.name);
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
    let (mut execs, mut rejected, mut failed, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut slowest = Duration::ZERO;
    while execs < o.runs && Instant::now() < deadline {
        let data = generate(&mut rng, &corpus, o.max_len);
        let t0 = Instant::now();
        let verdict = check(t, &data);
        slowest = slowest.max(t0.elapsed());
        execs += 1;
        bytes += data.len() as u64;
        match verdict {
            Verdict::Passed => {}
            Verdict::Rejected => rejected += 1,
            Verdict::Failed(msg) => {
                failed += 1;
                let iter = execs - 1;
                if failed <= MAX_REPORTS {
                    let dir = o.artifacts_dir.join(t.name);
                    let path = dir.join(format!("crash-{seed}-{iter}"));
                    std::fs::create_dir_all(&dir)
                        .and_then(|()| std::fs::write(&path, &data))
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    let what = format!("generated input {iter} of seed {seed}");
                    report_failure(t, &what, &msg, &data, &path);
                }
                if !o.keep_going {
                    break;
                }
            }
        }
    }
    let gen_time = start.elapsed() - seed_time;
    let rate = execs as f64 / gen_time.as_secs_f64().max(1e-9);
    let verdict = if failed == 0 {
        "passed".to_string()
    } else {
        format!("FAILED ({failed} failing)")
    };
    println!(
        "{:<20} {verdict}: {} seeds + {execs} generated ({rejected} rejected by arbitrary, mean \
         {} B) in {:.1} s, {rate:.0} exec/s, slowest {:.1} ms",
        t.name,
        corpus.len(),
        bytes.checked_div(execs).unwrap_or(0),
        start.elapsed().as_secs_f64(),
        slowest.as_secs_f64() * 1e3,
    );
    Ok(failed == 0)
}

fn fuzz(o: &Options) -> Result<bool, String> {
    let targets = select(&o.names)?;
    let seed = o.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Rng(t.as_nanos() as u64 ^ u64::from(std::process::id())).next()
    });
    println!(
        "fuzz-stable: seed {seed}, {} s per target, inputs up to {} B, {} target(s)",
        o.seconds,
        o.max_len,
        targets.len()
    );
    let mut failed = Vec::new();
    for t in targets {
        if !fuzz_target(t, o, seed)? {
            failed.push(t.name);
        }
    }
    if failed.is_empty() {
        println!("fuzz-stable: all passed (seed {seed})");
        Ok(true)
    } else {
        println!(
            "fuzz-stable: FAILED: {} (seed {seed}; rerun one with `--seed {seed} <target>`)",
            failed.join(", ")
        );
        Ok(false)
    }
}

fn replay(o: &Options) -> Result<bool, String> {
    let (name, files) = o
        .names
        .split_first()
        .ok_or("--replay needs a target and at least one file")?;
    let t = target(name).ok_or_else(|| format!("unknown target {name:?}"))?;
    if files.is_empty() {
        return Err("--replay needs at least one file".into());
    }
    let mut ok = true;
    for f in files {
        let data = std::fs::read(f).map_err(|e| format!("{f}: {e}"))?;
        println!("--- {f} ({} bytes)", data.len());
        match (t.describe)(&data) {
            Some(d) => println!("{d}"),
            None => println!("(rejected by arbitrary: not run)"),
        }
        match check(t, &data) {
            Verdict::Passed => println!("--- {f}: passed"),
            Verdict::Rejected => {}
            Verdict::Failed(msg) => {
                println!("--- {f}: FAILED\n{msg}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

fn write_seeds(o: &Options) -> Result<bool, String> {
    let mut ok = true;
    for t in select(&o.names)? {
        let dir = o.seeds_dir.join(t.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (old, _) in read_seeds(&dir)? {
            std::fs::remove_file(&old).map_err(|e| format!("{}: {e}", old.display()))?;
        }
        let seeds = (t.seeds)();
        let total: usize = seeds.iter().map(|(_, b)| b.len()).sum();
        for (name, data) in &seeds {
            let path = dir.join(name);
            std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
            match check(t, data) {
                Verdict::Passed => {}
                Verdict::Rejected => {
                    eprintln!("{}: seed {name} is rejected by arbitrary", t.name);
                    ok = false;
                }
                Verdict::Failed(msg) => {
                    report_failure(t, "a seed", &msg, data, &path);
                    ok = false;
                }
            }
        }
        println!(
            "{:<20} {} seeds, {total} bytes -> {}",
            t.name,
            seeds.len(),
            dir.display()
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        // `--help`
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fuzz-stable: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    install_panic_hook();
    let r = match o.mode {
        Mode::Fuzz => fuzz(&o),
        Mode::Replay => replay(&o),
        Mode::WriteSeeds => write_seeds(&o),
        Mode::List => {
            for t in TARGETS {
                println!("{}", t.name);
            }
            Ok(true)
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fuzz-stable: {e}");
            ExitCode::from(2)
        }
    }
}
