//! What the cores and the handles share: each core's command queue and doorbell, the metrics
//! blocks, the fan-out inboxes and the channel registry. Nothing here is locked on the message
//! path.

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use edge_ws_protocol::CloseCode;

use crate::fanout::{auto_ring_capacity, ChannelRegistry, Inbox, Publish};
use crate::metrics::{CoreMetrics, MetricsSnapshot};
use crate::runtime::{ConnId, CoreWaker, RuntimeStats};
use crate::upgrade::Rejection;

/// A request to one core, from another core or from a handle.
pub(crate) enum Command {
    Send {
        conn: ConnId,
        frame: Bytes,
    },
    Close {
        conn: ConnId,
        code: CloseCode,
        reason: String,
    },
    CloseAll {
        code: CloseCode,
        reason: String,
    },
    Subscribe {
        conn: ConnId,
        channel: String,
    },
    Unsubscribe {
        conn: ConnId,
        channel: String,
    },
    ResolveUpgrade {
        conn: ConnId,
        decision: Result<Option<Box<dyn std::any::Any + Send>>, Rejection>,
    },
    /// A publish from outside the cores. It travels in the same queue as the other commands,
    /// so what one thread does through the handle reaches each core in the order it did it
    /// (a send after a publish arrives after it).
    Deliver(Arc<Publish>),
}

/// State shared by every core and every handle: command queues, doorbells, metrics.
pub(crate) struct Shared {
    pub(crate) cores: usize,
    pub(crate) queues: Box<[SegQueue<Command>]>,
    pub(crate) wakers: Arc<[CoreWaker]>,
    pub(crate) metrics: Arc<[CoreMetrics]>,
    pub(crate) runtime_stats: std::sync::OnceLock<Arc<[RuntimeStats]>>,
    pub(crate) inboxes: Box<[Arc<Inbox>]>,
    pub(crate) channels: ChannelRegistry,
}

impl Shared {
    /// The state shared by `cores` cores, each woken through its entry of `wakers`: empty
    /// command queues, zeroed metrics, fan-out inboxes with `ring_capacity` publishes per lane
    /// (0: [`auto_ring_capacity`]),
    /// no channels. The one place it is built, for [`EngineBuilder::build`] and for the
    /// in-memory cores of the test engine (`testing::MemEngine`) alike.
    pub(crate) fn new(cores: usize, ring_capacity: usize, wakers: Arc<[CoreWaker]>) -> Self {
        debug_assert_eq!(wakers.len(), cores, "one waker per core");
        Shared {
            cores,
            queues: (0..cores).map(|_| SegQueue::new()).collect(),
            wakers,
            metrics: (0..cores).map(|_| CoreMetrics::default()).collect(),
            runtime_stats: std::sync::OnceLock::new(),
            inboxes: {
                let capacity = match ring_capacity {
                    0 => auto_ring_capacity(cores),
                    c => c,
                };
                (0..cores)
                    .map(|_| Arc::new(Inbox::new(cores, capacity)))
                    .collect()
            },
            channels: ChannelRegistry::new(cores),
        }
    }

    /// Hands a publish from outside the cores to every core that should see it.
    pub(crate) fn publish_external(&self, p: Publish) {
        let p = Arc::new(p);
        crate::metrics::inc(&self.metrics[0].publishes);
        p.for_each_core(self.cores, |c| {
            self.queues[c].push(Command::Deliver(p.clone()));
            self.wakers[c].wake();
        });
    }

    /// Open WebSocket connections over all cores.
    pub(crate) fn connections(&self) -> u64 {
        let s = MetricsSnapshot::sum(self.metrics.iter());
        s.opened.saturating_sub(s.closed)
    }
}
