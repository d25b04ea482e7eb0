//! Keeps logic's routes to this node's connections: when the session store
//! has lost them (a logic node on the memory store restarted, Redis came
//! back empty), every session held here is registered again at once,
//! instead of each one at its next renewal, a minute or more later.
//!
//! Logic's `Ping` answers the store's epoch, which changes exactly when the
//! store lost its sessions; this task asks every `probe_interval`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bucket::Buckets;
use crate::logic::LogicClient;

/// Sessions per `RenewSessions` call.
const BATCH: usize = 1000;

/// Watches the store's epoch and re-registers every session when it
/// changes, and has the room counts reported at once (they route room
/// pushes to this node).
pub(crate) async fn keep(
    buckets: Buckets,
    logic: LogicClient,
    probe_interval: Duration,
    report_rooms: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: Option<String> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Unreachable logic is logged by the online reporter; the last
        // known epoch is kept, so its return is compared with it.
        let Ok(epoch) = logic.epoch().await else {
            continue;
        };
        if known.as_ref() == Some(&epoch) {
            continue;
        }
        if known.is_some() {
            let Ok(sessions) = buckets.sessions().await else {
                return;
            };
            report_rooms.notify_one();
            let count = sessions.len();
            if let Err(status) = renew_all(&logic, sessions).await {
                warn!(error = %status.message(), "re-registering sessions with logic failed; retrying");
                continue;
            }
            info!(
                sessions = count,
                "session store was reset; every session here registered again"
            );
        }
        known = Some(epoch);
    }
}

async fn renew_all(logic: &LogicClient, sessions: Vec<(i64, String)>) -> Result<(), tonic::Status> {
    let mut sessions = sessions.into_iter().peekable();
    while sessions.peek().is_some() {
        let batch: Vec<_> = sessions.by_ref().take(BATCH).collect();
        logic.renew_sessions(batch).await?;
    }
    Ok(())
}
