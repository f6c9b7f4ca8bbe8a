//! The store's error type and the mapping of redb's errors onto it.

use std::io;
use std::sync::Arc;

/// Why a store operation failed. `Clone`, because one failed commit fails the ack of every
/// write of its batch with the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file system refused a read or a write: a full disk (`ENOSPC`), a quota (`EDQUOT`),
    /// the file-size limit (`EFBIG`), permissions, a failing device. See
    /// [`StoreError::is_storage_full`].
    #[error("store I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The database file failed its checksums or is not a store file.
    #[error("store file corrupted: {0}")]
    Corrupted(String),
    /// The write queue is full: the store thread is behind (backpressure). Returned by the
    /// `try_` forms only; nothing was queued and the ack was not called.
    #[error("store queue full")]
    QueueFull,
    /// The store was shut down (or its thread is gone); nothing was written.
    #[error("store closed")]
    Closed,
    /// An append whose offset is not the next one of its channel's epoch: a sequencer bug.
    #[error("channel {channel:?} epoch {epoch}: offset {got} refused, expected {expected}")]
    OutOfOrder {
        /// The channel.
        channel: String,
        /// The epoch of the append (the channel's current one).
        epoch: u64,
        /// The offset the store expected (the channel's last offset + 1).
        expected: u64,
        /// The offset the append carried.
        got: u64,
    },
    /// The store hit an I/O error and is reopening its file; retry shortly.
    #[error("store unavailable: reopening after an I/O error")]
    Unavailable,
    /// The store's file is held by another open store (this process or another).
    #[error("store already open elsewhere")]
    AlreadyOpen,
    /// A request the store refuses whatever its state (a key or value too large, a keyed write
    /// to a channel table, a blocking call on the store thread).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// Any other failure of the storage engine.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// The operating-system error code, for [`StoreError::Io`].
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            StoreError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// Whether this is the disk (or the quota, or the file-size limit) being full: `ENOSPC`,
    /// `EDQUOT` or `EFBIG`.
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc_codes::ENOSPC | libc_codes::EDQUOT | libc_codes::EFBIG)
        )
    }

    pub(crate) fn io(e: io::Error) -> StoreError {
        StoreError::Io(Arc::new(e))
    }

    /// Whether the database object must be reopened before it can be used again (redb fails
    /// every later operation after an I/O error).
    pub(crate) fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Io(_) | StoreError::Unavailable | StoreError::Corrupted(_)
        )
    }
}

/// The Linux error numbers the store tells apart (the crate does not link libc).
mod libc_codes {
    pub(super) const EFBIG: i32 = 27;
    pub(super) const ENOSPC: i32 = 28;
    pub(super) const EDQUOT: i32 = 122;
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> StoreError {
        match e {
            redb::Error::Io(e) => StoreError::io(e),
            redb::Error::Corrupted(m) => StoreError::Corrupted(m),
            redb::Error::PreviousIo => StoreError::Unavailable,
            redb::Error::DatabaseAlreadyOpen => StoreError::AlreadyOpen,
            redb::Error::DatabaseClosed => StoreError::Closed,
            redb::Error::ValueTooLarge(n) => StoreError::Invalid(format!("value of {n} bytes")),
            other => StoreError::Other(other.to_string()),
        }
    }
}

macro_rules! via_redb_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}

via_redb_error!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        StoreError::io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_codes_are_recognised() {
        for code in [27, 28, 122] {
            let e = StoreError::io(io::Error::from_raw_os_error(code));
            assert!(e.is_storage_full(), "{e}");
            assert!(e.needs_reopen());
        }
        let e = StoreError::io(io::Error::from_raw_os_error(13)); // EACCES
        assert!(!e.is_storage_full());
        assert!(!StoreError::QueueFull.needs_reopen());
    }

    #[test]
    fn redb_errors_map_to_store_errors() {
        assert!(matches!(
            StoreError::from(redb::Error::PreviousIo),
            StoreError::Unavailable
        ));
        assert!(matches!(
            StoreError::from(redb::Error::DatabaseAlreadyOpen),
            StoreError::AlreadyOpen
        ));
        let e = StoreError::from(redb::StorageError::Io(io::Error::from_raw_os_error(28)));
        assert!(e.is_storage_full());
    }
}
