//! Unit tests of the store's semantics (the crash, full-disk and load tests are in
//! `tests/store.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use edge_ws::testing::TempDir;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("edge-ws-store-unit-{name}"))
}

fn open(dir: &TempDir) -> StoreHandle {
    Store::open(
        dir.path(),
        StoreOptions::default().durability(Durability::Buffered),
    )
    .unwrap()
}

fn rec(ch: &str, epoch: u64, offset: u64, ts: u64) -> Append {
    Append::new(
        ch,
        epoch,
        offset,
        format!("{ch}/{epoch}/{offset}").into_bytes(),
        ts,
    )
}

fn offsets(h: &History) -> Vec<u64> {
    h.records.iter().map(|r| r.offset).collect()
}

#[test]
fn first_append_takes_any_offset_then_only_the_next() {
    let dir = temp_dir("next");
    let s = open(&dir);
    s.append_blocking(rec("a", 1, 10, 0)).unwrap();
    s.append_blocking(rec("a", 1, 11, 0)).unwrap();
    let err = s.append_blocking(rec("a", 1, 13, 0)).unwrap_err();
    let StoreError::OutOfOrder {
        channel,
        epoch,
        expected,
        got,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (channel.as_str(), *epoch, *expected, *got),
        ("a", 1, 12, 13)
    );
    assert!(matches!(
        s.append_blocking(rec("a", 1, 11, 0)),
        Err(StoreError::OutOfOrder { .. })
    ));
    let p = s.position("a").unwrap().unwrap();
    assert_eq!(
        (p.epoch, p.first_offset, p.last_offset, p.len()),
        (1, 10, 11, 2)
    );
    assert_eq!(s.position("b").unwrap(), None);
    let st = s.stats();
    assert_eq!((st.records, st.failed_records, st.out_of_order), (2, 2, 2));
}

#[test]
fn a_new_epoch_starts_the_stream_anew() {
    let dir = temp_dir("epoch");
    let s = open(&dir);
    for o in 1..=5 {
        s.append_blocking(rec("a", 1, o, 0)).unwrap();
    }
    s.append_blocking(rec("a", 2, 1, 0)).unwrap();
    let h = s.read_since("a", 0, 100).unwrap();
    assert_eq!(offsets(&h), [1]);
    assert_eq!(h.records[0].payload, &b"a/2/1"[..]);
    let p = h.position.unwrap();
    assert_eq!((p.epoch, p.first_offset, p.last_offset), (2, 1, 1));
    assert_eq!(s.stats().trimmed, 5);
}

#[test]
fn reads_in_every_order() {
    let dir = temp_dir("reads");
    let s = open(&dir);
    for o in 1..=10 {
        s.append_blocking(rec("a", 1, o, o * 10)).unwrap();
        s.append_blocking(rec("ab", 1, o, 0)).unwrap(); // a neighbour that must not leak in
    }
    assert_eq!(offsets(&s.read_since("a", 7, 100).unwrap()), [8, 9, 10]);
    assert_eq!(offsets(&s.read_since("a", 0, 3).unwrap()), [1, 2, 3]);
    assert!(s.read_since("a", 10, 3).unwrap().records.is_empty());
    assert!(s.read_since("a", u64::MAX, 3).unwrap().records.is_empty());
    assert_eq!(offsets(&s.read_last("a", 3).unwrap()), [8, 9, 10]);
    assert_eq!(offsets(&s.read_newest_first("a", 3).unwrap()), [10, 9, 8]);
    assert_eq!(s.read_last("a", 100).unwrap().records.len(), 10);
    let r = &s.read_since("a", 4, 1).unwrap().records[0];
    assert_eq!((r.offset, r.timestamp_ms), (5, 50));
    assert_eq!(r.payload, &b"a/1/5"[..]);
    let none = s.read_since("zz", 0, 10).unwrap();
    assert_eq!(none, History::default());
}

#[test]
fn set_retention_applies_at_once_and_expire_sweeps_idle_channels() {
    let dir = temp_dir("expire");
    let s = open(&dir);
    for o in 1..=10 {
        s.append_blocking(rec("a", 1, o, 1000 + o)).unwrap();
        s.append_blocking(rec("b", 1, o, 1000 + o)).unwrap();
    }
    s.submit_blocking(Write::set_retention("a", Retention::default().max_len(4)))
        .unwrap();
    assert_eq!(offsets(&s.read_since("a", 0, 100).unwrap()), [7, 8, 9, 10]);
    assert_eq!(s.retention("a").unwrap(), Retention::default().max_len(4));
    // Age against the newest record (ts 1010): older than 1005 goes.
    let ttl = Retention::default().ttl(Duration::from_millis(5));
    s.submit_blocking(Write::set_retention("b", ttl)).unwrap();
    assert_eq!(
        offsets(&s.read_since("b", 0, 100).unwrap()),
        [5, 6, 7, 8, 9, 10]
    );
    // A sweep later removes everything of `b`, and does not touch `a` (no ttl).
    s.submit_blocking(Write::expire(10_000)).unwrap();
    let h = s.read_since("b", 0, 100).unwrap();
    assert!(h.records.is_empty());
    let p = h.position.unwrap();
    assert_eq!(
        (p.first_offset, p.last_offset, p.is_empty()),
        (11, 10, true)
    );
    assert_eq!(s.read_since("a", 0, 100).unwrap().records.len(), 4);
    // The stream goes on after its records all expired.
    s.append_blocking(rec("b", 1, 11, 10_001)).unwrap();
    assert_eq!(offsets(&s.read_since("b", 0, 100).unwrap()), [11]);
    // Retention set before any append is kept, and the channel has no position yet.
    s.submit_blocking(Write::set_retention("c", Retention::default().max_len(1)))
        .unwrap();
    assert_eq!(s.position("c").unwrap(), None);
    s.append_blocking(rec("c", 1, 1, 0)).unwrap();
    s.append_blocking(rec("c", 1, 2, 0)).unwrap();
    assert_eq!(offsets(&s.read_since("c", 0, 100).unwrap()), [2]);
}

#[test]
fn keyed_tables_put_get_range_delete() {
    let dir = temp_dir("keyed");
    let s = open(&dir);
    let t = Table::Notifications;
    for (k, v) in [
        (&b"alice/001"[..], &b"n1"[..]),
        (b"alice/002", b"n2"),
        (b"alice/003", b"n3"),
        (b"alicf/001", b"other"),
        (b"alic", b"short"),
    ] {
        s.submit_blocking(Write::put(t, k, v)).unwrap();
    }
    s.submit_blocking(Write::put(
        Table::DocumentOps,
        &b"alice/001"[..],
        &b"op"[..],
    ))
    .unwrap();
    assert_eq!(s.get(t, b"alice/002").unwrap().as_deref(), Some(&b"n2"[..]));
    assert_eq!(s.get(t, b"nobody").unwrap(), None);
    assert_eq!(s.get(Table::DocumentSnapshots, b"x").unwrap(), None);
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<String> {
        v.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    let asc = s.range(t, b"alice/", None, 10, Order::Ascending).unwrap();
    assert_eq!(keys(asc), ["alice/001", "alice/002", "alice/003"]);
    let page2 = s
        .range(t, b"alice/", Some(b"alice/001"), 1, Order::Ascending)
        .unwrap();
    assert_eq!(keys(page2), ["alice/002"]);
    let desc = s.range(t, b"alice/", None, 2, Order::Descending).unwrap();
    assert_eq!(keys(desc), ["alice/003", "alice/002"]);
    let desc2 = s
        .range(t, b"alice/", Some(b"alice/002"), 10, Order::Descending)
        .unwrap();
    assert_eq!(keys(desc2), ["alice/001"]);
    assert_eq!(
        s.range(t, b"", None, 100, Order::Ascending).unwrap().len(),
        5
    );
    assert!(s
        .range(t, b"alice/", Some(b"zzz"), 10, Order::Ascending)
        .unwrap()
        .is_empty());
    s.submit_blocking(Write::delete(t, &b"alice/002"[..]))
        .unwrap();
    s.submit_blocking(Write::delete(t, &b"absent"[..])).unwrap();
    assert_eq!(s.get(t, b"alice/002").unwrap(), None);
    assert_eq!(s.table_len(t).unwrap(), 4);
    assert_eq!(s.table_len(Table::DocumentOps).unwrap(), 1);
    assert_eq!(s.table_len(Table::DocumentSnapshots).unwrap(), 0);
    assert_eq!(s.stats().writes, 8);
}

#[test]
fn invalid_writes_are_refused_at_submission() {
    let dir = temp_dir("invalid");
    let s = open(&dir);
    let called = Arc::new(AtomicUsize::new(0));
    let c = called.clone();
    let ack: Ack = Box::new(move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    let e = s
        .try_submit(Write::put(Table::ChannelRecords, &b"k"[..], &b"v"[..]), ack)
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    assert!(matches!(
        s.get(Table::ChannelMeta, b"k"),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.append_blocking(rec("a", 1, u64::MAX, 0)),
        Err(StoreError::Invalid(_))
    ));
    let long = "x".repeat(MAX_KEY_LEN + 1);
    assert!(matches!(
        s.append_blocking(rec(&long, 1, 1, 0)),
        Err(StoreError::Invalid(_))
    ));
    assert!(Store::open(dir.path(), StoreOptions::default().max_batch(0)).is_err());
    // The ack of a refused submission is never called.
    drop(s);
    assert_eq!(called.load(Ordering::Relaxed), 0);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = temp_dir("twice");
    let s = open(&dir);
    let e = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::AlreadyOpen), "{e}");
    drop(s);
    open(&dir); // released on drop
}

#[test]
fn shutdown_commits_what_is_queued_and_closes_for_every_handle() {
    let dir = temp_dir("shutdown");
    let s = open(&dir);
    let other = s.clone();
    let (tx, rx) = mpsc::channel();
    for o in 1..=100 {
        let tx = tx.clone();
        s.append(
            rec("a", 1, o, 0),
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        )
        .unwrap();
    }
    s.shutdown().unwrap();
    assert_eq!(rx.try_iter().filter(|&ok| ok).count(), 100);
    assert!(matches!(
        other.append_blocking(rec("a", 1, 101, 0)),
        Err(StoreError::Closed)
    ));
    assert!(matches!(other.position("a"), Err(StoreError::Closed)));
    other.shutdown().unwrap(); // idempotent
    drop((s, other));
    let s = open(&dir);
    assert_eq!(s.position("a").unwrap().unwrap().last_offset, 100);
}

#[test]
fn a_dropped_request_answers_closed_and_a_panicking_ack_is_survived() {
    let (tx, rx) = mpsc::channel();
    let reply = Reply::new(Box::new(move |r| tx.send(r).unwrap()));
    drop(reply);
    assert!(matches!(rx.recv().unwrap(), Err(StoreError::Closed)));

    let dir = temp_dir("panic");
    let s = open(&dir);
    s.append(
        rec("a", 1, 1, 0),
        Box::new(|_| panic!("an ack that panics")),
    )
    .unwrap();
    s.append_blocking(rec("a", 1, 2, 0)).unwrap();
    assert_eq!(s.stats().ack_panics, 1);
    assert_eq!(s.position("a").unwrap().unwrap().last_offset, 2);
}

#[test]
fn an_ack_cannot_block_on_the_store_and_may_drop_the_last_handle() {
    let dir = temp_dir("reentrant");
    let s = open(&dir);
    let (tx, rx) = mpsc::channel();
    let inner = s.clone();
    s.append(
        rec("a", 1, 1, 0),
        Box::new(move |_| {
            let blocking = inner.append_blocking(rec("a", 1, 2, 0));
            let queued = inner.append(rec("a", 1, 2, 0), Box::new(|_| {}));
            drop(inner);
            tx.send((blocking, queued)).unwrap();
        }),
    )
    .unwrap();
    let (blocking, queued) = rx.recv().unwrap();
    assert!(matches!(blocking, Err(StoreError::Invalid(_))));
    assert!(queued.is_ok());
    drop(s); // the last handle: waits for the thread
    let s = open(&dir);
    assert_eq!(s.position("a").unwrap().unwrap().last_offset, 2);

    // The last handle dropped by an ack: the thread cannot wait for itself, it exits after.
    let (go, wait) = mpsc::channel::<()>();
    let inner = s.clone();
    s.append(
        rec("a", 1, 3, 0),
        Box::new(move |_| {
            wait.recv().unwrap();
            drop(inner);
        }),
    )
    .unwrap();
    drop(s);
    go.send(()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let s = loop {
        match Store::open(dir.path(), StoreOptions::default()) {
            Ok(s) => break s,
            Err(StoreError::AlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(s.position("a").unwrap().unwrap().last_offset, 3);
}

#[test]
fn stats_count_commits_bytes_and_latency() {
    let dir = temp_dir("stats");
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap(); // Fsync
    for o in 1..=5 {
        s.append_blocking(Append::new("a", 1, o, vec![0u8; 100], 0))
            .unwrap();
    }
    let st = s.stats();
    assert_eq!((st.commits, st.records, st.bytes), (5, 5, 500));
    assert_eq!(st.commit_latency.count, 5);
    assert!(st.fsync_latency.count >= 5, "{st:?}");
    assert!(st.commit_latency.max_us >= st.commit_latency.min_us);
    assert_eq!((st.queue_depth, st.failed_commits), (0, 0));
}
