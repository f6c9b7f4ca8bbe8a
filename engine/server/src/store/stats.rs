//! The store's counters: plain atomics written by the store thread (and by the submitting
//! threads for the queue), read as a [`StoreStats`] snapshot from anywhere.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: four per power of two (so a bucket spans at most a quarter of its lower
/// bound), from 0 µs to about 2.4 hours; the last one also holds everything above. See
/// [`bucket_bounds`].
pub const LATENCY_BUCKETS: usize = 128;

/// The bucket of a latency of `us` microseconds.
fn bucket_of(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize; // 2 and up
    let sub = ((us >> (e - 2)) & 3) as usize;
    (4 + (e - 2) * 4 + sub).min(LATENCY_BUCKETS - 1)
}

/// The smallest and the largest latency, in microseconds, that bucket `i` holds (the last
/// bucket also holds everything larger).
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    if i < 4 {
        return (i as u64, i as u64);
    }
    let e = (i - 4) / 4 + 2;
    let sub = ((i - 4) % 4) as u64;
    ((4 + sub) << (e - 2), ((5 + sub) << (e - 2)) - 1)
}

pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    count: AtomicU64,
    sum_us: AtomicU64,
    min_us: AtomicU64,
    max_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.min_us.fetch_min(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencyStats {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        let max_us = self.max_us.load(Ordering::Relaxed);
        let min = self.min_us.load(Ordering::Relaxed);
        let quantile = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((count as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    // The bucket's upper bound, never above the largest value seen.
                    return bucket_bounds(i).1.min(max_us);
                }
            }
            max_us
        };
        LatencyStats {
            count,
            min_us: if count == 0 { 0 } else { min },
            median_us: quantile(0.5),
            p99_us: quantile(0.99),
            max_us,
            mean_us: self
                .sum_us
                .load(Ordering::Relaxed)
                .checked_div(count)
                .unwrap_or(0),
            buckets,
        }
    }
}

/// A latency distribution in microseconds. The quantiles are the upper bounds of their buckets
/// (at most 25 % above the truth, see [`LATENCY_BUCKETS`]); `min`, `max` and `mean` are exact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencyStats {
    /// How many were measured.
    pub count: u64,
    /// The smallest.
    pub min_us: u64,
    /// The median (bucket upper bound).
    pub median_us: u64,
    /// The 99th percentile (bucket upper bound).
    pub p99_us: u64,
    /// The largest.
    pub max_us: u64,
    /// The mean.
    pub mean_us: u64,
    /// Counts per bucket (bounds: [`bucket_bounds`]).
    pub buckets: Vec<u64>,
}

pub(crate) struct Stats {
    pub(crate) commits: AtomicU64,
    pub(crate) failed_commits: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) failed_records: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) failed_writes: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) trimmed: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) queue_depth: AtomicI64,
    pub(crate) queue_high_water: AtomicI64,
    pub(crate) largest_batch: AtomicU64,
    pub(crate) io_errors: AtomicU64,
    pub(crate) reopens: AtomicU64,
    pub(crate) ack_panics: AtomicU64,
    pub(crate) commit_latency: Histogram,
    pub(crate) fsync_latency: Histogram,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Stats {
    pub(crate) fn new() -> Stats {
        let z = || AtomicU64::new(0);
        Stats {
            commits: z(),
            failed_commits: z(),
            records: z(),
            failed_records: z(),
            writes: z(),
            failed_writes: z(),
            bytes: z(),
            trimmed: z(),
            out_of_order: z(),
            queue_full: z(),
            queue_depth: AtomicI64::new(0),
            queue_high_water: AtomicI64::new(0),
            largest_batch: z(),
            io_errors: z(),
            reopens: z(),
            ack_panics: z(),
            commit_latency: Histogram::new(),
            fsync_latency: Histogram::new(),
        }
    }

    /// A write entered the queue.
    pub(crate) fn queued(&self) {
        let depth = self.queue_depth.fetch_add(1, Ordering::Relaxed) + 1;
        self.queue_high_water.fetch_max(depth, Ordering::Relaxed);
    }

    /// The store thread took a write off the queue.
    pub(crate) fn dequeued(&self) {
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let depth = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        StoreStats {
            commits: l(&self.commits),
            failed_commits: l(&self.failed_commits),
            records: l(&self.records),
            failed_records: l(&self.failed_records),
            writes: l(&self.writes),
            failed_writes: l(&self.failed_writes),
            bytes: l(&self.bytes),
            trimmed: l(&self.trimmed),
            out_of_order: l(&self.out_of_order),
            queue_full: l(&self.queue_full),
            queue_depth: depth(&self.queue_depth),
            queue_high_water: depth(&self.queue_high_water),
            largest_batch: l(&self.largest_batch),
            io_errors: l(&self.io_errors),
            reopens: l(&self.reopens),
            ack_panics: l(&self.ack_panics),
            commit_latency: self.commit_latency.snapshot(),
            fsync_latency: self.fsync_latency.snapshot(),
        }
    }
}

/// A snapshot of the store's counters (see [`crate::store::StoreHandle::stats`]). Every write
/// ends in exactly one of the counters: `records`/`writes` when its commit succeeded,
/// `failed_records`/`failed_writes` when its commit failed or it was refused on the store
/// thread (`out_of_order` counts those refusals too), `queue_full` when it never entered the
/// queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Successful commits.
    pub commits: u64,
    /// Failed commits (every write in them was failed with the error).
    pub failed_commits: u64,
    /// Channel records appended and committed.
    pub records: u64,
    /// Channel appends failed (a failed commit or a refusal).
    pub failed_records: u64,
    /// Other writes (keyed puts and deletes, retention changes, expiry sweeps) committed.
    pub writes: u64,
    /// Other writes failed.
    pub failed_writes: u64,
    /// Payload, key and value bytes committed.
    pub bytes: u64,
    /// Records deleted by retention (length or age).
    pub trimmed: u64,
    /// Appends refused for an offset out of order.
    pub out_of_order: u64,
    /// `try_` submissions refused because the queue was full.
    pub queue_full: u64,
    /// Writes queued now.
    pub queue_depth: u64,
    /// The most writes ever queued at once.
    pub queue_high_water: u64,
    /// The most writes in one commit.
    pub largest_batch: u64,
    /// Commits (or reopens) that failed with an I/O error.
    pub io_errors: u64,
    /// Times the database was reopened after an error.
    pub reopens: u64,
    /// Acks that panicked (caught; the store thread goes on).
    pub ack_panics: u64,
    /// Time of each successful commit (writing the pages, the header and, with
    /// [`crate::store::Durability::Fsync`], the fsyncs).
    pub commit_latency: LatencyStats,
    /// Time of each fsync (`fdatasync`); empty with [`crate::store::Durability::Buffered`].
    pub fsync_latency: LatencyStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let h = Histogram::new();
        for us in [1, 3, 3, 100, 400, 5000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!((s.min_us, s.max_us), (1, 5000));
        assert_eq!(s.median_us, 3); // bucket [3, 3]
        assert_eq!(s.p99_us, 5000); // bucket [4096, 5119] clamped to the max
        assert_eq!(s.buckets[1] + s.buckets[3], 3);
        h.record(Duration::from_micros(1100));
        assert_eq!(h.snapshot().p99_us, 5000);
        assert_eq!(s.mean_us, (1 + 3 + 3 + 100 + 400 + 5000) / 6);
        assert_eq!(Histogram::new().snapshot().min_us, 0);
    }

    #[test]
    fn buckets_tile_the_line_within_a_quarter() {
        let mut next = 0;
        for i in 0..LATENCY_BUCKETS {
            let (lo, hi) = bucket_bounds(i);
            assert_eq!(lo, next, "bucket {i}");
            assert!(
                hi >= lo && (hi - lo) * 4 <= lo.max(3),
                "bucket {i}: {lo}..={hi}"
            );
            assert_eq!((bucket_of(lo), bucket_of(hi)), (i, i));
            next = hi + 1;
        }
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        assert!(bucket_bounds(LATENCY_BUCKETS - 1).1 > 8_000_000_000); // > 2.2 h
    }

    #[test]
    fn queue_depth_high_water() {
        let s = Stats::new();
        s.queued();
        s.queued();
        s.dequeued();
        s.queued();
        let snap = s.snapshot();
        assert_eq!((snap.queue_depth, snap.queue_high_water), (2, 2));
    }
}
