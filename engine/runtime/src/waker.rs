//! The cross-thread doorbell of one core.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `Send + Sync + Clone` doorbell for one core.
///
/// [`wake`](CoreWaker::wake) makes the core call [`Service::on_wake`](super::Service::on_wake)
/// soon; [`shutdown`](CoreWaker::shutdown) makes it call
/// [`Service::on_shutdown`](super::Service::on_shutdown). The eventfd the core sleeps on is only
/// written when the core is parked (it sets `parked` before sleeping and re-checks the flags
/// after), so a burst of wakes costs at most one wakeup and a busy core costs no syscall at all.
#[derive(Clone)]
pub struct CoreWaker {
    inner: Arc<Shared>,
}

#[repr(align(64))]
pub(crate) struct Shared {
    /// The core is (about to be) asleep on the eventfd.
    parked: AtomicBool,
    /// `on_wake` is due.
    wake: AtomicBool,
    /// `on_shutdown` is due.
    shutdown: AtomicBool,
    /// Stop without asking the service (start-up failed elsewhere).
    stop: AtomicBool,
    /// Also registered with the core's ring as its completion eventfd.
    fd: OwnedFd,
    index: usize,
}

impl fmt::Debug for CoreWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreWaker")
            .field("core_index", &self.inner.index)
            .field("parked", &self.inner.parked.load(Ordering::Relaxed))
            .finish()
    }
}

impl CoreWaker {
    pub(crate) fn new(index: usize) -> io::Result<Self> {
        // SAFETY: eventfd has no memory arguments; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(CoreWaker {
            inner: Arc::new(Shared {
                parked: AtomicBool::new(false),
                wake: AtomicBool::new(false),
                shutdown: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                fd,
                index,
            }),
        })
    }

    /// A doorbell for a core that no io_uring loop drives, such as a
    /// [`MemDriver`](crate::mem::MemDriver) a test steps by hand. Nothing parks on it, so
    /// [`wake`](CoreWaker::wake) and [`shutdown`](CoreWaker::shutdown) only record the request
    /// and whoever drives the core decides when it runs (e.g. [`MemDriver::wake`]).
    /// `index` is what [`core_index`](CoreWaker::core_index) reports. Fails only when no
    /// eventfd can be created.
    ///
    /// [`MemDriver::wake`]: crate::mem::MemDriver::wake
    pub fn detached(index: usize) -> io::Result<Self> {
        Self::new(index)
    }

    /// Makes the core call `Service::on_wake` soon (coalesced: many wakes, one call).
    ///
    /// Publish your data (e.g. push to a lock-free queue) before calling this.
    #[inline]
    pub fn wake(&self) {
        // A previous value of `true` means an earlier waker published and will ring if needed;
        // the swap (a release) also makes our prior writes visible to the core's acquiring swap.
        if !self.inner.wake.swap(true, Ordering::SeqCst) {
            self.ring();
        }
    }

    /// Makes the core call `Service::on_shutdown` soon.
    pub fn shutdown(&self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.ring();
    }

    /// Index of the core (into `cfg.cores`) this waker belongs to.
    pub fn core_index(&self) -> usize {
        self.inner.index
    }

    /// Stops the core without asking its service (start-up failed on another core).
    pub(crate) fn force_stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.parked.store(false, Ordering::SeqCst);
        self.write_eventfd();
    }

    #[inline]
    fn ring(&self) {
        if self.inner.parked.swap(false, Ordering::SeqCst) {
            self.write_eventfd();
        }
    }

    fn write_eventfd(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own; EAGAIN (counter full)
        // means a wakeup is already pending, so the result can be ignored.
        let _ = unsafe {
            libc::write(
                self.inner.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    // ---- core side ----

    pub(crate) fn eventfd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// Consumes a pending wake; cheap when none is pending. (For a driver of the core other
    /// than the runtime's own, such as an in-memory test engine.)
    #[inline]
    pub fn take_wake(&self) -> bool {
        self.inner.wake.load(Ordering::Relaxed) && self.inner.wake.swap(false, Ordering::SeqCst)
    }

    /// Consumes a pending shutdown request (see [`CoreWaker::take_wake`]).
    #[inline]
    pub fn take_shutdown(&self) -> bool {
        self.inner.shutdown.load(Ordering::Relaxed)
            && self.inner.shutdown.swap(false, Ordering::SeqCst)
    }

    #[inline]
    pub(crate) fn stop_requested(&self) -> bool {
        self.inner.stop.load(Ordering::Relaxed)
    }

    /// Marks the core parked; returns false (and unparks) if something is already pending, in
    /// which case the core must not sleep.
    pub(crate) fn park(&self) -> bool {
        self.inner.parked.store(true, Ordering::SeqCst);
        if self.inner.wake.load(Ordering::SeqCst)
            || self.inner.shutdown.load(Ordering::SeqCst)
            || self.inner.stop.load(Ordering::SeqCst)
        {
            self.inner.parked.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn unpark(&self) {
        self.inner.parked.store(false, Ordering::Relaxed);
    }

    /// Resets the eventfd counter (the loop doesn't need to, see `driver::run`).
    #[cfg(test)]
    pub(crate) fn drain_eventfd(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd we own.
        let _ = unsafe {
            libc::read(
                self.inner.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_rings_only_when_parked() {
        let w = CoreWaker::new(0).unwrap();
        w.wake();
        w.wake();
        // Not parked: no eventfd write.
        let mut v: u64 = 0;
        // SAFETY: 8-byte read into a live u64 from our non-blocking eventfd.
        let n = unsafe { libc::read(w.eventfd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, -1);
        assert!(w.take_wake());
        assert!(!w.take_wake());
        // Parked: one write for a burst.
        assert!(w.park());
        w.wake();
        w.wake();
        w.wake();
        // SAFETY: as above.
        let n = unsafe { libc::read(w.eventfd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(v, 1);
        assert!(w.take_wake());
        w.drain_eventfd();
        // Something pending: park refuses.
        w.wake();
        assert!(!w.park());
    }
}
