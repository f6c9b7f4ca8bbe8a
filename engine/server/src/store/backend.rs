//! The storage backend under redb: redb's own file backend, with `sync_data` either timed (the
//! fsync of [`Durability::Fsync`]) or skipped ([`Durability::Buffered`]).
//!
//! Skipping the sync keeps everything else of a durable redb commit: every page and the header
//! are written to the file (`pwrite`) before `commit` returns, so they are in the kernel's page
//! cache and survive the death of the process (kill -9, a panic, an abort); what they do not
//! survive is the loss of the page cache itself (power loss, a kernel crash), where the writes
//! may reach the device partly and in any order.

use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use super::stats::Stats;
use super::Durability;

#[derive(Debug)]
pub(crate) struct StoreBackend {
    inner: FileBackend,
    sync: bool,
    stats: Arc<Stats>,
}

impl StoreBackend {
    pub(crate) fn new(inner: FileBackend, durability: Durability, stats: Arc<Stats>) -> Self {
        StoreBackend {
            inner,
            sync: durability == Durability::Fsync,
            stats,
        }
    }
}

impl StorageBackend for StoreBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if !self.sync {
            return Ok(());
        }
        let start = Instant::now();
        let r = self.inner.sync_data();
        self.stats.fsync_latency.record(start.elapsed());
        r
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
