//! The store's guarantees end to end, on real files under the system temp dir: round trips and
//! retention, positions across reopen, **kill -9** of a writing process (every acknowledged
//! record is there afterwards, with both durabilities), a **full disk** (the file-size limit
//! of a child process: the failing writes fail their acks, the acknowledged ones survive, the
//! store keeps answering), backpressure, ordering and concurrent appends.
//!
//! The crash and full-disk tests re-execute this test binary as a child running one of the
//! `child_*` tests (which do nothing unless `EDGE_WS_STORE_CHILD` names them).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use edge_ws::testing::TempDir;
use edge_ws_server::store::{
    Append, Durability, Retention, Store, StoreError, StoreHandle, StoreOptions,
};

const CHILD: &str = "EDGE_WS_STORE_CHILD";
const CHILD_DIR: &str = "EDGE_WS_STORE_DIR";
const CHILD_DURABILITY: &str = "EDGE_WS_STORE_DURABILITY";

fn options(d: Durability) -> StoreOptions {
    StoreOptions::default().durability(d)
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Fsync => "fsync",
        _ => "buffered",
    }
}

/// The payload the writers put at `(channel, offset)`: derived from both, of varying length.
fn payload(channel: &str, offset: u64) -> Vec<u8> {
    let seed = format!("{channel}@{offset};");
    let len = 40 + (offset % 200) as usize;
    seed.bytes().cycle().take(len).collect()
}

/// Prints one line for the parent (on a line of its own: libtest may have printed the test's
/// name without a newline); exits if the parent is gone.
fn tell(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "\n{line}")
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// The parent's side of a child: killed if the test fails before it does.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn offsets(store: &StoreHandle, channel: &str) -> Vec<u64> {
    store
        .read_since(channel, 0, usize::MAX)
        .unwrap()
        .records
        .iter()
        .map(|r| r.offset)
        .collect()
}

// ---- 1. round trips, retention, reopen ----

#[test]
fn round_trips_retention_and_positions_survive_reopen() {
    for d in [Durability::Fsync, Durability::Buffered] {
        let dir = TempDir::new("edge-ws-store-roundtrip");
        {
            let s = Store::open(dir.path(), options(d)).unwrap();
            for o in 1..=50u64 {
                s.append_blocking(Append::new("plain", 3, o, payload("plain", o), o))
                    .unwrap();
            }
            // Retention by length, given with the appends.
            let by_len = Retention::default().max_len(10);
            for o in 1..=25u64 {
                s.append_blocking(Append::new("len", 1, o, payload("len", o), o).retention(by_len))
                    .unwrap();
            }
            // Retention by age: the clock is the appends' timestamps (one per second here).
            let by_age = Retention::default().ttl(Duration::from_secs(5));
            for o in 1..=20u64 {
                let ts = 1_000_000 + o * 1000;
                s.append_blocking(
                    Append::new("ttl", 1, o, payload("ttl", o), ts).retention(by_age),
                )
                .unwrap();
            }
            let h = s.read_since("plain", 40, 5).unwrap();
            let got: Vec<_> = h
                .records
                .iter()
                .map(|r| (r.offset, r.timestamp_ms))
                .collect();
            assert_eq!(got, [(41, 41), (42, 42), (43, 43), (44, 44), (45, 45)]);
            assert_eq!(h.records[0].payload, payload("plain", 41));
            assert_eq!(offsets(&s, "len"), (16..=25).collect::<Vec<_>>());
            // Newest at 21 s; older than 16 s expired.
            assert_eq!(offsets(&s, "ttl"), (15..=20).collect::<Vec<_>>());
            assert_eq!(s.stats().trimmed, 15 + 14);
        }
        let s = Store::open(dir.path(), options(d)).unwrap();
        let all: HashMap<_, _> = s.load_all_positions().unwrap().into_iter().collect();
        assert_eq!(all.len(), 3);
        let p = all["plain"];
        assert_eq!((p.epoch, p.first_offset, p.last_offset), (3, 1, 50));
        let p = all["len"];
        assert_eq!((p.first_offset, p.last_offset, p.len()), (16, 25, 10));
        assert_eq!(all["ttl"].first_offset, 15);
        assert_eq!(s.position("len").unwrap(), Some(p));
        // Retention is kept too: the next append trims without being told again.
        s.append_blocking(Append::new("len", 1, 26, payload("len", 26), 26))
            .unwrap();
        assert_eq!(offsets(&s, "len"), (17..=26).collect::<Vec<_>>());
        let last = s.read_last("plain", 2).unwrap();
        assert_eq!(
            last.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [49, 50]
        );
        assert_eq!(last.records[1].payload, payload("plain", 50));
        let newest = s.read_newest_first("plain", 2).unwrap();
        assert_eq!(
            newest.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [50, 49]
        );
    }
}

// ---- 2. kill -9 ----

/// The child of the kill -9 test: several threads append to their own channels as fast as
/// the store takes them; each ack prints `ACK channel offset` as it fires. Runs until killed.
#[test]
fn child_writer() {
    if std::env::var(CHILD).as_deref() != Ok("writer") {
        return;
    }
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    let d = match std::env::var(CHILD_DURABILITY).as_deref() {
        Ok("buffered") => Durability::Buffered,
        _ => Durability::Fsync,
    };
    let store = Store::open(&dir, options(d).queue_capacity(4096)).unwrap();
    // Go on where the previous (killed) writer stopped.
    let start: HashMap<String, u64> = store
        .load_all_positions()
        .unwrap()
        .into_iter()
        .map(|(c, p)| (c, p.last_offset))
        .collect();
    tell(format_args!("READY"));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                let channels: Vec<String> = (0..4).map(|c| format!("w{t}-{c}")).collect();
                let mut next: Vec<u64> = channels
                    .iter()
                    .map(|c| start.get(c).map_or(1, |l| l + 1))
                    .collect();
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    for (c, off) in channels.iter().zip(next.iter_mut()) {
                        let (ch, o) = (c.clone(), *off);
                        let append = Append::new(c.as_str(), 1, o, payload(c, o), o);
                        store
                            .append(
                                append,
                                Box::new(move |r| match r {
                                    Ok(()) => tell(format_args!("ACK {ch} {o}")),
                                    Err(e) => tell(format_args!("ERR {ch} {o} {e}")),
                                }),
                            )
                            .unwrap();
                        *off += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn child(test: &str, mode: &str, dir: &Path, d: Durability) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env(CHILD_DIR, dir)
        .env(CHILD_DURABILITY, durability_name(d))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

fn kill9_keeps_every_acknowledged_record(d: Durability) {
    let dir = TempDir::new(&format!("edge-ws-store-kill9-{}", durability_name(d)));
    let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
    let mut total = 0;
    for round in 0..2 {
        let mut proc = ChildGuard(
            child("child_writer", "writer", dir.path(), d)
                .spawn()
                .unwrap(),
        );
        let out = proc.0.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = Instant::now() + Duration::from_secs(30);
        loop {
            let line = lines
                .recv_timeout(ready.saturating_duration_since(Instant::now()))
                .expect("the writer starts");
            if line == "READY" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(800 + 200 * round));
        proc.0.kill().unwrap(); // SIGKILL
        let status = proc.0.wait().unwrap();
        assert!(!status.success(), "the writer was killed: {status:?}");
        reader.join().unwrap();
        let mut this_round = 0;
        for line in lines.try_iter() {
            let mut w = line.split(' ');
            match (w.next(), w.next(), w.next()) {
                (Some("ACK"), Some(ch), Some(o)) => {
                    acked
                        .entry(ch.to_owned())
                        .or_default()
                        .push(o.parse().unwrap());
                    this_round += 1;
                }
                (Some("ERR"), _, _) => panic!("a write failed in the writer: {line}"),
                _ => {}
            }
        }
        assert!(this_round > 100, "round {round}: only {this_round} acks");
        total += this_round;

        // Every record acknowledged so far is there, with its payload.
        let s = Store::open(dir.path(), options(d)).unwrap();
        let mut beyond = 0;
        for (ch, offs) in &acked {
            let h = s.read_since(ch, 0, usize::MAX).unwrap();
            let p = h.position.unwrap_or_else(|| panic!("{ch}: no position"));
            let stored: HashMap<u64, _> = h.records.iter().map(|r| (r.offset, r)).collect();
            // Contiguous from the first offset to the last.
            assert_eq!(h.records.len() as u64, p.len(), "{ch}");
            for (i, r) in h.records.iter().enumerate() {
                assert_eq!(r.offset, p.first_offset + i as u64, "{ch}: a hole");
            }
            for &o in offs {
                let r = stored
                    .get(&o)
                    .unwrap_or_else(|| panic!("{ch} offset {o}: acknowledged, then lost"));
                assert_eq!(r.payload, payload(ch, o), "{ch} offset {o}");
            }
            let max = offs.iter().copied().max().unwrap();
            beyond += p.last_offset - max;
        }
        println!(
            "kill -9 {} round {round}: {this_round} acks, all {total} present; {beyond} more \
             records written but not yet acknowledged",
            durability_name(d)
        );
    }
}

#[test]
fn kill9_fsync_loses_no_acknowledged_record() {
    kill9_keeps_every_acknowledged_record(Durability::Fsync);
}

#[test]
fn kill9_buffered_loses_no_acknowledged_record() {
    kill9_keeps_every_acknowledged_record(Durability::Buffered);
}

// ---- 3. full disk ----

/// The file-size limit in the full-disk child: redb doubles the file as it grows, so a few
/// thousand records of 1 KiB reach it.
const FILE_LIMIT: u64 = 4 << 20;

/// The child of the full-disk test: with the file-size limit lowered, appends until the disk
/// is "full", then checks the store keeps answering. Prints `ACK channel offset` per success
/// and `DONE ...` at the end.
#[test]
fn child_full_disk() {
    if std::env::var(CHILD).as_deref() != Ok("full-disk") {
        return;
    }
    use edge_ws::runtime::os;
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    os::ignore_sigxfsz().unwrap();
    let s = Store::open(&dir, options(Durability::Fsync)).unwrap();
    assert_eq!(os::limit_file_size(FILE_LIMIT).unwrap(), FILE_LIMIT);
    let value = vec![0x5a; 1024];
    let mut acked = 0u64;
    let mut error = None;
    for o in 1..=100_000u64 {
        let mut p = payload("full", o);
        p.extend_from_slice(&value);
        match s.append_blocking(Append::new("full", 1, o, p, o)) {
            Ok(()) => {
                acked = o;
                tell(format_args!("ACK full {o}"));
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let e = error.expect("the file-size limit was reached");
    assert!(matches!(e, StoreError::Io(_)), "{e:?}");
    assert!(e.is_storage_full(), "{e:?}");
    assert!(acked > 100, "only {acked} records before the limit");
    // The store keeps answering: reads see every acknowledged record...
    let h = s.read_since("full", 0, usize::MAX).unwrap();
    assert_eq!(h.records.len() as u64, acked);
    assert_eq!(h.position.unwrap().last_offset, acked);
    // ...and further writes fail cleanly (or succeed, where freed pages fit them).
    let mut next = acked + 1;
    let mut later_errors = 0;
    for _ in 0..20 {
        let mut p = payload("full", next);
        p.extend_from_slice(&value);
        match s.append_blocking(Append::new("full", 1, next, p, next)) {
            Ok(()) => {
                tell(format_args!("ACK full {next}"));
                next += 1;
            }
            Err(e) => {
                assert!(e.is_storage_full(), "{e:?}");
                later_errors += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        s.read_since("full", 0, usize::MAX).unwrap().records.len() as u64,
        next - 1
    );
    let st = s.stats();
    assert!(
        st.failed_commits >= 1 && st.io_errors >= 1 && st.reopens >= 1,
        "{st:?}"
    );
    assert_eq!(st.failed_records, 1 + later_errors);
    tell(format_args!(
        "DONE acked={} first_error=\"{e}\" errno={:?} later_errors={later_errors} \
         failed_commits={} io_errors={} reopens={} commit_p50={}us",
        next - 1,
        e.raw_os_error(),
        st.failed_commits,
        st.io_errors,
        st.reopens,
        st.commit_latency.median_us,
    ));
}

#[test]
fn full_disk_fails_the_acks_keeps_the_acknowledged_and_keeps_running() {
    let dir = TempDir::new("edge-ws-store-fulldisk");
    let out = child(
        "child_full_disk",
        "full-disk",
        dir.path(),
        Durability::Fsync,
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}",
        out.status
    );
    let done = stdout
        .lines()
        .find(|l| l.starts_with("DONE"))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    println!("{done}");
    let acked: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ACK full "))
        .map(|o| o.parse().unwrap())
        .collect();
    // Reopened without the limit: every acknowledged record is there, and writing works again.
    let s = Store::open(dir.path(), options(Durability::Fsync)).unwrap();
    let h = s.read_since("full", 0, usize::MAX).unwrap();
    assert_eq!(h.records.len(), acked.len());
    for (r, &o) in h.records.iter().zip(&acked) {
        assert_eq!(r.offset, o);
        assert!(r.payload.starts_with(&payload("full", o)));
    }
    let next = acked.last().unwrap() + 1;
    s.append_blocking(Append::new("full", 1, next, &b"after"[..], next))
        .unwrap();
}

// ---- 4. backpressure ----

#[test]
fn try_append_on_a_full_queue_answers_queue_full() {
    let dir = TempDir::new("edge-ws-store-backpressure");
    let s = Store::open(dir.path(), options(Durability::Buffered).queue_capacity(4)).unwrap();
    // An ack that holds the store thread until released, so the queue fills.
    let (release, hold) = mpsc::channel::<()>();
    let (started, running) = mpsc::channel::<()>();
    s.append(
        Append::new("c", 1, 1, &b"x"[..], 0),
        Box::new(move |_| {
            started.send(()).unwrap();
            hold.recv().unwrap();
        }),
    )
    .unwrap();
    running.recv().unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let ack = |done: &Arc<AtomicUsize>| -> edge_ws_server::store::Ack {
        let done = done.clone();
        Box::new(move |r| {
            r.unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        })
    };
    for o in 2..=5 {
        s.try_append(Append::new("c", 1, o, &b"x"[..], 0), ack(&done))
            .unwrap();
    }
    let refused = s.try_append(Append::new("c", 1, 6, &b"x"[..], 0), ack(&done));
    assert!(matches!(refused, Err(StoreError::QueueFull)), "{refused:?}");
    let st = s.stats();
    assert_eq!(
        (st.queue_full, st.queue_depth, st.queue_high_water),
        (1, 4, 4)
    );
    release.send(()).unwrap();
    // The refused one was not queued: offset 6 is still the next.
    s.append_blocking(Append::new("c", 1, 6, &b"x"[..], 0))
        .unwrap();
    assert_eq!(done.load(Ordering::Relaxed), 4);
    assert_eq!(s.position("c").unwrap().unwrap().last_offset, 6);
    assert_eq!(s.stats().queue_depth, 0);
}

// ---- 5. ordering and concurrency ----

#[test]
fn out_of_order_offsets_are_refused_and_the_batch_goes_on() {
    let dir = TempDir::new("edge-ws-store-order");
    let s = Store::open(dir.path(), options(Durability::Fsync)).unwrap();
    // Queued together, so that they share a batch: the refusals do not fail the others.
    let (tx, rx) = mpsc::channel();
    for (i, o) in [1u64, 2, 4, 2, 3, 3].into_iter().enumerate() {
        let tx = tx.clone();
        s.append(
            Append::new("c", 9, o, payload("c", o), 0),
            Box::new(move |r| tx.send((i, r)).unwrap()),
        )
        .unwrap();
    }
    drop(tx);
    let mut results: Vec<_> = rx.iter().collect();
    results.sort_by_key(|(i, _)| *i);
    let oks: Vec<bool> = results.iter().map(|(_, r)| r.is_ok()).collect();
    assert_eq!(oks, [true, true, false, false, true, false]);
    match &results[2].1 {
        Err(StoreError::OutOfOrder {
            expected,
            got,
            epoch,
            ..
        }) => assert_eq!((*expected, *got, *epoch), (3, 4, 9)),
        other => panic!("{other:?}"),
    }
    assert_eq!(offsets(&s, "c"), [1, 2, 3]);
    assert_eq!(s.stats().out_of_order, 3);
}

#[test]
fn concurrent_appends_to_different_channels_all_land() {
    let dir = TempDir::new("edge-ws-store-concurrent");
    let s = Store::open(dir.path(), options(Durability::Fsync)).unwrap();
    const THREADS: u64 = 8;
    const CHANNELS: u64 = 4;
    const PER_CHANNEL: u64 = 300;
    let acked = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                for o in 1..=PER_CHANNEL {
                    for c in 0..CHANNELS {
                        let ch = format!("t{t}/c{c}");
                        let mut append = Append::new(ch.as_str(), 1, o, payload(&ch, o), o);
                        // The cores' way: never block, retry on backpressure.
                        loop {
                            let acked = acked.clone();
                            let ack = Box::new(move |r: Result<(), StoreError>| {
                                r.unwrap();
                                acked.fetch_add(1, Ordering::Relaxed);
                            });
                            match s.try_append(append.clone(), ack) {
                                Ok(()) => break,
                                Err(StoreError::QueueFull) => std::thread::yield_now(),
                                Err(e) => panic!("{e}"),
                            }
                            append.timestamp_ms = o;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = (THREADS * CHANNELS * PER_CHANNEL) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "acks missing");
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = s.stats();
    assert_eq!(st.records, total as u64);
    assert!(st.commits < total as u64, "no grouping: {st:?}");
    drop(s);
    let s = Store::open(dir.path(), options(Durability::Fsync)).unwrap();
    let positions = s.load_all_positions().unwrap();
    assert_eq!(positions.len() as u64, THREADS * CHANNELS);
    for (ch, p) in positions {
        assert_eq!((p.first_offset, p.last_offset), (1, PER_CHANNEL), "{ch}");
        let h = s.read_since(&ch, 0, usize::MAX).unwrap();
        for r in &h.records {
            assert_eq!(r.payload, payload(&ch, r.offset));
        }
        assert_eq!(h.records.len() as u64, PER_CHANNEL);
    }
    println!(
        "{total} records in {} commits (largest {})",
        st.commits, st.largest_batch
    );
}
