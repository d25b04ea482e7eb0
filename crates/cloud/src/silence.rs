//! Heartbeat deadlines, kept by the buckets rather than by a timer in every
//! connection (goim keeps them in per-round timing wheels for the same
//! reason): a tokio timer is over 100 bytes of every idle connection's
//! state, and re-arming it on every heartbeat is a timer-wheel update per
//! packet. A connection notes when it last heard from its client; its
//! bucket looks once a second and closes the ones silent for too long.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often a bucket looks for silent connections. With the clock's whole
/// seconds, a silent client is closed after its limit, and at most two
/// seconds after it.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whole seconds on the node's coarse clock (since its first reading).
/// tokio's clock, so tests with paused time move it.
fn now_secs() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u32::try_from(Instant::now().saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX)
}

/// When a client was last heard from, and how long it may stay silent.
#[derive(Debug)]
pub(crate) struct Silence {
    heard: AtomicU32,
    limit_secs: u32,
}

impl Silence {
    /// A client heard from now, closed after `limit` without a packet.
    pub(crate) fn new(limit: Duration) -> Self {
        Silence {
            heard: AtomicU32::new(now_secs()),
            limit_secs: u32::try_from(limit.as_secs().max(1)).unwrap_or(u32::MAX),
        }
    }

    /// The client sent a packet.
    pub(crate) fn heard(&self) {
        self.heard.store(now_secs(), Ordering::Relaxed);
    }

    /// How long the client may stay silent.
    pub(crate) fn limit(&self) -> Duration {
        Duration::from_secs(u64::from(self.limit_secs))
    }

    /// Whether the client has been silent for longer than its limit.
    pub(crate) fn expired(&self) -> bool {
        now_secs().saturating_sub(self.heard.load(Ordering::Relaxed)) > self.limit_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_its_limit_without_a_packet() {
        let silence = Silence::new(Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!silence.expired(), "two seconds are within the limit");
        silence.heard();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!silence.expired(), "the packet restarted the count");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(silence.expired());
        assert_eq!(silence.limit(), Duration::from_secs(2));
    }
}
