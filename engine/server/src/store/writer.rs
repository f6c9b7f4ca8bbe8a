//! The store thread: takes the writes waiting in the queue, applies them in one write
//! transaction, commits once, then answers every ack of the batch.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableError};

use super::backend::StoreBackend;
use super::codec::{self, duration_ms, Meta, Stream, META, RECORDS};
use super::stats::Stats;
use super::{Ack, Core, Durability, Retention, StoreError, StoreOptions, Write};

/// What travels in the queue.
pub(crate) enum Msg {
    Write(Request),
    /// Sent by `shutdown`: drain what is queued, then exit.
    Shutdown,
}

pub(crate) struct Request {
    pub(crate) write: Write,
    pub(crate) reply: Reply,
}

/// An ack that is called exactly once: with the outcome, or with [`StoreError::Closed`] if the
/// request is dropped unanswered (the thread exited with it still queued).
pub(crate) struct Reply(Option<Ack>);

impl Reply {
    pub(crate) fn new(ack: Ack) -> Reply {
        Reply(Some(ack))
    }

    /// Calls the ack; `true` if it panicked (caught: the store thread goes on).
    fn send(mut self, r: Result<(), StoreError>) -> bool {
        match self.0.take() {
            Some(f) => catch_unwind(AssertUnwindSafe(move || f(r))).is_err(),
            None => false,
        }
    }

    /// Forgets the ack uncalled: its submission returned the error instead.
    pub(crate) fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || f(Err(StoreError::Closed))));
        }
    }
}

/// Opens (or creates) the database file with the store's backend.
pub(crate) fn open_database(
    path: &Path,
    options: &StoreOptions,
    stats: &Arc<Stats>,
) -> Result<Database, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let fresh = file.metadata()?.len() == 0;
    let backend = StoreBackend::new(FileBackend::new(file)?, options.durability, stats.clone());
    let db = redb::Builder::new()
        .set_cache_size(options.cache_bytes)
        .create_with_backend(backend)?;
    if fresh && options.durability == Durability::Fsync {
        // The new file's directory entry, for power loss.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(db)
}

/// Every channel's metadata, as committed.
pub(crate) fn load_metas(db: &Database) -> Result<HashMap<String, Meta>, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut metas = HashMap::new();
    for item in table.iter()? {
        let (k, v) = item?;
        metas.insert(k.value().to_owned(), Meta::decode(k.value(), v.value())?);
    }
    Ok(metas)
}

/// First back-off after a second consecutive failure, and the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(crate) struct Writer {
    core: Arc<Core>,
    rx: Receiver<Msg>,
    /// Every channel's metadata as of the last successful commit (the store thread is the only
    /// writer, so this is the truth the appends are checked against).
    metas: HashMap<String, Meta>,
    /// The last failure, while failures repeat; `None` after a success.
    failing: Option<StoreError>,
    /// Whether the database must be reopened before the next commit.
    broken: bool,
    backoff: Duration,
    retry_at: Instant,
}

/// A batch's effect on the state, applied once its commit succeeded.
struct Applied {
    metas: HashMap<String, Meta>,
    trimmed: u64,
}

type Records<'t> = redb::Table<'t, (&'static str, u64), (u64, &'static [u8])>;
type Keyed<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

impl Writer {
    pub(crate) fn new(core: Arc<Core>, rx: Receiver<Msg>, metas: HashMap<String, Meta>) -> Self {
        Writer {
            core,
            rx,
            metas,
            failing: None,
            broken: false,
            backoff: Duration::ZERO,
            retry_at: Instant::now(),
        }
    }

    pub(crate) fn run(mut self) {
        let max = self.core.options.max_batch;
        let mut batch: Vec<Request> = Vec::with_capacity(max.min(4096));
        let mut stopping = false;
        loop {
            let first = if stopping {
                self.rx.try_recv().ok()
            } else {
                self.rx.recv().ok() // Err: every handle is gone and the queue is empty
            };
            let Some(first) = first else { break };
            self.take(first, &mut batch, &mut stopping);
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(m) => self.take(m, &mut batch, &mut stopping),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
        }
        self.close();
        // Dropping `self.rx` answers any request that slipped in after the last drain with
        // `Closed` (see `Reply::drop`).
    }

    fn take(&self, m: Msg, batch: &mut Vec<Request>, stopping: &mut bool) {
        match m {
            Msg::Write(r) => {
                self.core.stats.dequeued();
                batch.push(r);
            }
            Msg::Shutdown => *stopping = true,
        }
    }

    fn close(&mut self) {
        self.core.closed.store(true, Ordering::Release);
        let db = self.core.slot().take();
        if let Some(db) = db {
            release(db);
        }
    }

    /// Reopens the database after an error: redb fails every operation after an I/O error until
    /// the `Database` is dropped and opened again (which repairs the file).
    fn reopen(&mut self) -> Result<(), StoreError> {
        let old = self.core.slot().take();
        if let Some(old) = old {
            release(old);
        }
        let db = open_database(&self.core.path, &self.core.options, &self.core.stats)?;
        self.metas = load_metas(&db)?;
        *self.core.slot() = Some(Arc::new(db));
        self.broken = false;
        self.core.stats.reopens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The database to commit to (reopened first if an error broke it), or why there is none.
    fn ready(&mut self) -> Result<Arc<Database>, StoreError> {
        if self.broken {
            self.reopen()?;
        }
        self.core
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Unavailable)
    }

    fn commit(&mut self, batch: &mut Vec<Request>) {
        let stats = self.core.stats.clone();
        stats
            .largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        let mut refused: Vec<Option<StoreError>> = vec![None; batch.len()];
        let result = match &self.failing {
            // Failures repeat: within the back-off, fail the batch without touching the disk.
            Some(e) if Instant::now() < self.retry_at => Err(e.clone()),
            _ => self.attempt(batch, &mut refused),
        };
        for (req, refusal) in batch.drain(..).zip(refused) {
            let r = match refusal {
                Some(e) => Err(e),
                None => result.clone(),
            };
            let (ok, failed) = match &req.write {
                Write::Append(_) => (&stats.records, &stats.failed_records),
                _ => (&stats.writes, &stats.failed_writes),
            };
            if r.is_ok() {
                ok.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(write_bytes(&req.write), Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            if req.reply.send(r) {
                stats.ack_panics.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One commit attempt for the batch, with the bookkeeping of its outcome.
    fn attempt(
        &mut self,
        batch: &[Request],
        refused: &mut [Option<StoreError>],
    ) -> Result<(), StoreError> {
        let stats = self.core.stats.clone();
        let outcome = self.ready().and_then(|db| self.apply(&db, batch, refused));
        match outcome {
            Ok(applied) => {
                self.metas.extend(applied.metas);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.trimmed.fetch_add(applied.trimmed, Ordering::Relaxed);
                self.failing = None;
                self.backoff = Duration::ZERO;
                Ok(())
            }
            Err(e) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                if matches!(e, StoreError::Io(_)) {
                    stats.io_errors.fetch_add(1, Ordering::Relaxed);
                }
                if e.needs_reopen() && !self.broken {
                    self.broken = true;
                    // Reopen before answering, so that whoever learns of the failure finds the
                    // store readable again; if that fails, the next attempt reopens.
                    if let Err(StoreError::Io(_)) = self.reopen() {
                        stats.io_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The first failure is retried with the next batch; repeated ones back off.
                if self.failing.is_some() {
                    self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                }
                self.retry_at = Instant::now() + self.backoff;
                self.failing = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Applies the batch in one write transaction and commits it. Writes refused on their own
    /// (an offset out of order) get their error in `refused` and leave the others unaffected;
    /// any storage error fails the whole batch (the transaction is dropped, so aborted).
    fn apply(
        &self,
        db: &Database,
        batch: &[Request],
        refused: &mut [Option<StoreError>],
    ) -> Result<Applied, StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Other(e.to_string()))?;
        if self.core.options.quick_repair {
            txn.set_quick_repair(true);
        }
        let mut metas: HashMap<String, Meta> = HashMap::new();
        let mut trimmed = 0;
        {
            let mut records = txn.open_table(RECORDS)?;
            let mut keyed: [Option<Keyed<'_>>; 3] = [None, None, None];
            for (req, refusal) in batch.iter().zip(refused.iter_mut()) {
                match &req.write {
                    Write::Append(a) => {
                        let mut meta = self.meta(&metas, &a.channel);
                        let retention = a.retention.unwrap_or(meta.retention);
                        let stream = match meta.stream {
                            Some(s) if s.epoch == a.epoch => {
                                let expected = s.last + 1;
                                if a.offset != expected {
                                    self.core.stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                                    *refusal = Some(StoreError::OutOfOrder {
                                        channel: a.channel.clone(),
                                        epoch: a.epoch,
                                        expected,
                                        got: a.offset,
                                    });
                                    continue;
                                }
                                Stream {
                                    last: a.offset,
                                    ..s
                                }
                            }
                            old => {
                                // A new channel, or a new epoch: the stream starts here.
                                if let Some(old) = old {
                                    trimmed += old.position().len();
                                    records.retain_in(
                                        (a.channel.as_str(), 0)..=(a.channel.as_str(), u64::MAX),
                                        |_, _| false,
                                    )?;
                                }
                                Stream {
                                    epoch: a.epoch,
                                    first: a.offset,
                                    last: a.offset,
                                }
                            }
                        };
                        records.insert(
                            (a.channel.as_str(), a.offset),
                            (a.timestamp_ms, a.payload.as_ref()),
                        )?;
                        let mut stream = stream;
                        trimmed += trim(
                            &mut records,
                            &a.channel,
                            &mut stream,
                            &retention,
                            a.timestamp_ms,
                        )?;
                        meta.stream = Some(stream);
                        meta.retention = retention;
                        metas.insert(a.channel.clone(), meta);
                    }
                    Write::SetRetention { channel, retention } => {
                        let mut meta = self.meta(&metas, channel);
                        meta.retention = *retention;
                        if let Some(mut s) = meta.stream {
                            let newest = records
                                .get((channel.as_str(), s.last))?
                                .map(|v| v.value().0);
                            if let Some(now) = newest {
                                trimmed += trim(&mut records, channel, &mut s, retention, now)?;
                            }
                            meta.stream = Some(s);
                        }
                        metas.insert(channel.clone(), meta);
                    }
                    Write::Expire { now_ms } => {
                        let mut names: Vec<&String> = self
                            .metas
                            .iter()
                            .chain(metas.iter())
                            .filter(|(_, m)| m.retention.ttl.is_some() && m.stream.is_some())
                            .map(|(k, _)| k)
                            .collect();
                        names.sort_unstable();
                        names.dedup();
                        let names: Vec<String> = names.into_iter().cloned().collect();
                        for channel in names {
                            let mut meta = self.meta(&metas, &channel);
                            let Some(mut s) = meta.stream else { continue };
                            let n = trim(&mut records, &channel, &mut s, &meta.retention, *now_ms)?;
                            if n > 0 {
                                trimmed += n;
                                meta.stream = Some(s);
                                metas.insert(channel, meta);
                            }
                        }
                    }
                    Write::Put { table, key, value } => {
                        let t = open_keyed(&txn, &mut keyed, *table)?;
                        t.insert(key.as_slice(), value.as_ref())?;
                    }
                    Write::Delete { table, key } => {
                        let t = open_keyed(&txn, &mut keyed, *table)?;
                        t.remove(key.as_slice())?;
                    }
                }
            }
            if !metas.is_empty() {
                let mut meta_table = txn.open_table(META)?;
                for (channel, meta) in &metas {
                    meta_table.insert(channel.as_str(), meta.encode().as_slice())?;
                }
            }
        }
        let start = Instant::now();
        txn.commit()?;
        self.core.stats.commit_latency.record(start.elapsed());
        Ok(Applied { metas, trimmed })
    }

    /// A channel's metadata as this batch has left it so far.
    fn meta(&self, batch: &HashMap<String, Meta>, channel: &str) -> Meta {
        batch
            .get(channel)
            .or_else(|| self.metas.get(channel))
            .copied()
            .unwrap_or_default()
    }
}

fn open_keyed<'a, 't>(
    txn: &'t redb::WriteTransaction,
    keyed: &'a mut [Option<Keyed<'t>>; 3],
    table: super::Table,
) -> Result<&'a mut Keyed<'t>, StoreError> {
    let (Some(i), Some(def)) = (table.keyed_index(), codec::keyed(table)) else {
        return Err(StoreError::Invalid(format!(
            "table {} is not a keyed table",
            table.name()
        )));
    };
    if keyed[i].is_none() {
        keyed[i] = Some(txn.open_table(def)?);
    }
    keyed[i]
        .as_mut()
        .ok_or_else(|| StoreError::Other("keyed table not open".into()))
}

/// Applies `retention` to the stream at time `now_ms`: deletes the records over the length and
/// the expired ones at its start; returns how many.
fn trim(
    records: &mut Records<'_>,
    channel: &str,
    s: &mut Stream,
    retention: &Retention,
    now_ms: u64,
) -> Result<u64, StoreError> {
    if s.first > s.last {
        return Ok(0);
    }
    let mut keep = s.first;
    if let Some(max) = retention.max_len {
        keep = keep.max((s.last + 1).saturating_sub(max));
    }
    if let Some(ttl) = retention.ttl {
        let cutoff = now_ms.saturating_sub(duration_ms(ttl));
        if keep <= s.last {
            for item in records.range((channel, keep)..=(channel, s.last))? {
                let (k, v) = item?;
                if v.value().0 < cutoff {
                    keep = k.value().1 + 1;
                } else {
                    break;
                }
            }
        }
    }
    if keep <= s.first {
        return Ok(0);
    }
    records.retain_in((channel, s.first)..(channel, keep), |_, _| false)?;
    let n = keep - s.first;
    s.first = keep;
    Ok(n)
}

/// Payload, key and value bytes of a write, for the counters.
fn write_bytes(w: &Write) -> u64 {
    let n = match w {
        Write::Append(a) => a.payload.len(),
        Write::Put { key, value, .. } => key.len() + value.len(),
        Write::Delete { key, .. } => key.len(),
        Write::SetRetention { .. } | Write::Expire { .. } => 0,
    };
    n as u64
}

/// Drops the database once no reader holds it (readers clone the `Arc` for the length of one
/// read, and can no longer reach this one), so that its file lock is released before the file
/// is opened again.
fn release(mut db: Arc<Database>) {
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                drop(db);
                return;
            }
            Err(still_shared) => {
                db = still_shared;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}
