//! Room online counts: this node's, reported to logic every interval, and
//! the cluster totals logic answers with, used in heartbeat replies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bucket::Buckets;
use crate::logic::LogicClient;
use crate::metrics::Metrics;

/// The counts a heartbeat reply reads.
#[derive(Debug, Default)]
pub(crate) struct Online {
    counts: RwLock<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Cluster totals from logic's last `RenewOnline` answer (empty while
    /// logic is unreachable).
    cluster: HashMap<String, i32>,
    /// This node's counts at the last report.
    local: HashMap<String, i32>,
}

impl Online {
    /// The room's online count: the cluster total when logic gave one,
    /// else this node's own count.
    pub(crate) fn count(&self, room: &str) -> u32 {
        let counts = self.counts.read();
        let count = counts
            .cluster
            .get(room)
            .or_else(|| counts.local.get(room))
            .copied()
            .unwrap_or(0);
        u32::try_from(count).unwrap_or(0)
    }

    fn set(&self, local: HashMap<String, i32>, cluster: HashMap<String, i32>) {
        *self.counts.write() = Counts { cluster, local };
    }
}

/// Every `online_report_interval`: count this node's room members, report
/// them to logic, keep the totals. Logs once when logic becomes unreachable
/// and once when it is back, not on every failed report.
pub(crate) struct Reporter {
    pub(crate) buckets: Buckets,
    pub(crate) logic: LogicClient,
    pub(crate) online: Arc<Online>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) interval: Duration,
    /// Reports at once, between ticks: after logic's store lost its state,
    /// the rooms here are routed again within a probe, not a report period.
    pub(crate) now: Arc<Notify>,
}

pub(crate) async fn report(reporter: Reporter, stop: CancellationToken) {
    let Reporter {
        buckets,
        logic,
        online,
        metrics,
        interval,
        now,
    } = reporter;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = now.notified() => {}
        }
        let Ok(rooms) = buckets.room_counts(None).await else {
            return;
        };
        let local: HashMap<String, i32> = rooms
            .into_iter()
            .map(|(room, count)| (room.to_string(), i32::try_from(count).unwrap_or(i32::MAX)))
            .collect();
        metrics.set_rooms(local.len());
        match logic.renew_online(local.clone()).await {
            Ok(cluster) => {
                if failing {
                    info!("room counts reported to logic again");
                    failing = false;
                }
                online.set(local, cluster);
            }
            Err(status) => {
                if !failing {
                    warn!(error = %status.message(), "cannot report room counts to logic");
                    failing = true;
                }
                // Stale totals would mislead: fall back to this node's own.
                online.set(local, HashMap::new());
            }
        }
    }
}
