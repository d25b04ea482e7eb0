//! What a connection is given: its limits, the buckets, logic (behind
//! [`SessionLogic`]), the online counts (and the task that pushes them),
//! metrics and the node's shutdown.
//! Nothing more, so a session runs in a unit test without a node.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bucket::Buckets;
use crate::config::CloudConfig;
use crate::counts::RoomCounts;
use crate::logic::SessionLogic;
use crate::metrics::Metrics;
use crate::online::Online;

/// The limits a connection lives by (from the node's configuration).
#[derive(Clone, Debug)]
pub(crate) struct ConnLimits {
    pub(crate) handshake_timeout: Duration,
    /// Used when logic's Connect answer names no heartbeat.
    pub(crate) heartbeat: Duration,
    pub(crate) send_queue: usize,
    pub(crate) max_rooms: usize,
    pub(crate) renew_interval: Duration,
    pub(crate) write_timeout: Duration,
}

impl From<&CloudConfig> for ConnLimits {
    fn from(config: &CloudConfig) -> Self {
        ConnLimits {
            handshake_timeout: config.handshake_timeout,
            heartbeat: config.heartbeat,
            send_queue: config.send_queue,
            max_rooms: config.max_rooms,
            renew_interval: config.renew_interval,
            write_timeout: config.write_timeout,
        }
    }
}

/// The node's shutdown, as a connection sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shutdown {
    /// Cancelled when the node starts draining.
    pub(crate) stop: CancellationToken,
    /// Cancelled when the drain grace runs out: remaining connections are cut.
    pub(crate) cut: CancellationToken,
    /// Calls to logic that outlive the request that made them (renewals,
    /// disconnects, client messages): the node waits for them before it
    /// exits, so a drain never drops a Disconnect.
    pub(crate) background: TaskTracker,
}

/// What every connection shares.
pub(crate) struct ConnContext {
    pub(crate) limits: ConnLimits,
    pub(crate) buckets: Buckets,
    pub(crate) logic: Arc<dyn SessionLogic>,
    pub(crate) online: Arc<Online>,
    pub(crate) counts: RoomCounts,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: Shutdown,
    pub(super) next_id: AtomicU64,
}

impl ConnContext {
    pub(crate) fn new(
        limits: ConnLimits,
        buckets: Buckets,
        logic: Arc<dyn SessionLogic>,
        online: Arc<Online>,
        counts: RoomCounts,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        ConnContext {
            limits,
            buckets,
            logic,
            online,
            counts,
            metrics,
            shutdown,
            next_id: AtomicU64::new(1),
        }
    }
}
