//! Per-core counters, aggregated on read without locks: the engine's one metrics registry.
//!
//! Each core owns one [`CoreMetrics`] (its own cache lines) and is its only writer, so an
//! update is a relaxed load and store with no read-modify-write bus lock. The runtime under it
//! keeps its own per-core block ([`RuntimeStats`], also one writer per core) for what only it
//! sees (sockets accepted or refused at the limit, bytes on the wire, sends, ring entries).
//! Readers on any thread sum both into one [`MetricsSnapshot`], whose
//! [`fields`](MetricsSnapshot::fields) list every counter by name for an exporter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::runtime::RuntimeStats;

macro_rules! counters {
    (
        engine { $( $(#[$doc:meta])* $name:ident ),* $(,)? }
        runtime { $( $(#[$rdoc:meta])* $rname:ident = $src:ident ),* $(,)? }
    ) => {
        /// One core's counters. Written only by that core.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct CoreMetrics {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// Sum of every core's counters at one moment (each core read once, not atomically
        /// across cores).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct MetricsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
            $( $(#[$rdoc])* pub $rname: u64, )*
        }

        impl MetricsSnapshot {
            /// Sums the engine counters of `cores` (the runtime's are 0 until
            /// [`add_runtime`](Self::add_runtime)).
            pub fn sum<'a>(cores: impl IntoIterator<Item = &'a CoreMetrics>) -> Self {
                let mut s = MetricsSnapshot::default();
                for c in cores {
                    $( s.$name += c.$name.load(Relaxed); )*
                }
                s
            }

            /// Adds the runtime's counters of `cores`.
            pub fn add_runtime<'a>(&mut self, cores: impl IntoIterator<Item = &'a RuntimeStats>) {
                for c in cores {
                    $( self.$rname += c.$src.load(Relaxed); )*
                }
            }

            /// `(name, value)` for every counter, engine then runtime, in declaration order
            /// (for exporters).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![
                    $( (stringify!($name), self.$name), )*
                    $( (stringify!($rname), self.$rname), )*
                ]
            }
        }
    };
}

counters! {
    engine {
        /// TCP connections accepted.
        accepted,
        /// Handshakes refused: malformed or invalid upgrade requests (answered 4xx).
        rejected_bad_handshake,
        /// Handshakes refused by the application's `on_upgrade` hook.
        rejected_by_application,
        /// Connections dropped because the handshake did not complete in time (slowloris).
        handshake_timeouts,
        /// Plain HTTP requests answered (health checks, 400 "Expected WebSocket").
        http_requests,
        /// WebSocket connections opened (handshake completed).
        opened,
        /// WebSocket connections closed, for any reason.
        closed,
        /// Messages received (text and binary).
        messages_in,
        /// Payload bytes received in those messages.
        bytes_in,
        /// Messages queued for sending (text and binary).
        messages_out,
        /// Payload bytes of those messages.
        bytes_out,
        /// Compressed messages sent.
        compressed_out,
        /// Connections closed with 1002 (protocol error).
        protocol_errors,
        /// Connections closed with 1007 (invalid UTF-8).
        invalid_data_errors,
        /// Connections closed with 1009 (message too big).
        too_big_errors,
        /// Messages not queued because the connection's write buffer was over its limit.
        slow_consumer_drops,
        /// Connections closed because their write buffer was over its limit.
        slow_consumer_closes,
        /// Pings received.
        pings_in,
        /// Pongs replaced by the pong for a newer ping before they could be written (RFC 6455
        /// §5.5.3: only the most recent ping needs an answer).
        pongs_superseded,
        /// Of `slow_consumer_closes`: connections that kept sending pings while their pong could
        /// not be written for the heartbeat timeout (a ping flood from a peer that does not read).
        ping_flood_closes,
        /// Connections closed because no pong arrived within the heartbeat timeout.
        heartbeat_timeouts,
        /// Connections closed because nothing arrived within the idle timeout.
        idle_timeouts,
        /// Sends to a connection id that no longer exists.
        sends_to_closed,
        /// Publishes made on this core (or, for external publishes, counted on core 0).
        publishes,
        /// Messages delivered to subscribers by fan-out on this core.
        deliveries,
        /// Buffers fan-out queued for those deliveries: one per recipient per corked run of
        /// publishes (`deliveries / delivery_runs` messages per queued buffer, on average).
        delivery_runs,
        /// Fan-out recipients skipped by a publish's filter or exclude.
        deliveries_filtered,
        /// Publishes handed to another core's ring (one per target core).
        forwarded,
        /// Publishes spilled to the local overflow queue because a ring to another core was full.
        spills,
        /// Highest number of publishes found waiting in one inbound ring (a high-water mark, not a
        /// count; the snapshot sums it over cores).
        ring_depth_hwm,
        /// Publications sequenced into a stream (offset assigned, kept, fanned out).
        stream_published,
        /// Publishes refused because their stream was recovering from a store failure.
        stream_refused,
        /// Publishes answered from an idempotency key seen within its window (not repeated).
        stream_duplicates,
        /// Publishes the store refused or failed (answered with the error).
        stream_store_errors,
        /// Kept publications replayed to recovering subscribers.
        stream_replayed,
        /// Subscriptions that asked to recover and could not (epoch changed, too old).
        stream_recovery_failed,
        /// Cluster: stream publications from the broker dropped by an owner core (too many held
        /// while its mirror was not live, or a gap after an outage the broker no longer kept).
        stream_broker_dropped,
        /// Cluster: snapshots of a stream read from the broker and merged by an owner core.
        stream_syncs,
        /// Times an application paused reading a connection (backpressure).
        read_pauses,
    }
    runtime {
        /// Connections closed at accept because the core was at its connection limit.
        rejected_over_limit = rejected_over_limit,
        /// Bytes received on the sockets (frames and handshakes; `bytes_in` counts payloads).
        socket_bytes_in = bytes_in,
        /// Bytes the kernel accepted for sending (`bytes_out` counts payloads).
        socket_bytes_out = bytes_out,
        /// Send operations submitted (each carries every frame queued for its connection).
        sends = sends,
        /// `io_uring_enter` calls.
        submissions = submissions,
        /// Times a core woke from its parked state.
        wakeups = wakeups,
        /// Multishot receives that ended because every receive buffer was in use.
        recv_enobufs = recv_enobufs,
        /// Connections accepted on the TLS listener (feature `tls`).
        tls_accepted = tls_accepted,
        /// TLS handshakes completed.
        tls_handshakes = tls_handshakes,
        /// TLS handshakes that failed (not a ClientHello, no common version or cipher suite,
        /// a bad record): answered with an alert and closed.
        tls_handshake_failures = tls_handshake_failures,
        /// Established TLS connections closed because a record failed.
        tls_errors = tls_errors,
        /// TLS connections closed at accept: the core already ran its most handshakes.
        tls_refused = tls_refused,
        /// Established TLS connections moved from rustls to the runtime's own record layer.
        tls_record_layer = tls_record_layer,
        /// TLS 1.3 KeyUpdates received from clients (and followed).
        tls_key_updates = tls_key_updates,
        /// Cores with a TLS listener whose kernel offers kTLS (`TCP_ULP` "tls"); 0 where it
        /// does not (TLS then runs in user space, which it also does today where it does).
        ktls_available = ktls_available,
    }
}

#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    // Single writer per core: a plain load/store pair is enough and avoids a locked RMW.
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
pub(crate) fn max(c: &AtomicU64, v: u64) {
    if v > c.load(Relaxed) {
        c.store(v, Relaxed);
    }
}

#[inline]
pub(crate) fn inc(c: &AtomicU64) {
    add(c, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_cores() {
        let cores = [CoreMetrics::default(), CoreMetrics::default()];
        inc(&cores[0].opened);
        add(&cores[1].opened, 2);
        add(&cores[1].bytes_in, 10);
        let s = MetricsSnapshot::sum(cores.iter());
        assert_eq!(s.opened, 3);
        assert_eq!(s.bytes_in, 10);
        assert!(s.fields().contains(&("opened", 3)));
        assert_eq!(std::mem::align_of::<CoreMetrics>(), 128);
    }
}
