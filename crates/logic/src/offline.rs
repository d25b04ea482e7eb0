//! The offline webhook worker: messages no device acknowledged within
//! `ack_timeout` are POSTed to the backend, so it can send a mobile
//! notification instead. Every logic node runs one; the store hands each due
//! message to one of them at a time (a claim with a lease), so a node that
//! dies mid-call only delays a message, never loses it.
//!
//! A failed call is retried with exponential backoff for as long as the
//! message is kept; the inbox itself is never touched.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::inbox::{InboxStore, Unacked};
use crate::metrics::Metrics;
use crate::webhook::{Posted, Webhook, WebhookError};

/// Due messages claimed per round.
const CLAIM: usize = 256;
/// Webhook calls in flight at once.
const CONCURRENCY: usize = 16;
/// The first retry's delay; doubled per attempt up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Posts unacknowledged messages until `stop`.
pub(crate) struct OfflineWorker {
    pub(crate) inbox: Arc<dyn InboxStore>,
    pub(crate) webhook: Webhook,
    pub(crate) metrics: Arc<Metrics>,
    /// How often due messages are looked for.
    pub(crate) poll: Duration,
    /// How long a claimed message is not offered to another worker: longer
    /// than a webhook call can take.
    pub(crate) lease: Duration,
}

impl OfflineWorker {
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut failing = false;
        let mut store_down = false;
        loop {
            let claimed = match self.inbox.claim_unacked(CLAIM, self.lease).await {
                Ok(claimed) => {
                    store_down = false;
                    claimed
                }
                Err(err) => {
                    // The store logs its own outage; say once why no webhook goes out.
                    if !std::mem::replace(&mut store_down, true) {
                        warn!(error = %err, "offline webhook: cannot read due messages");
                    }
                    Vec::new()
                }
            };
            let full = claimed.len() == CLAIM;
            let results: Vec<bool> = futures_util::stream::iter(claimed)
                .map(|unacked| self.post(unacked))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            // An outage is logged when it starts and when it ends.
            if results.contains(&false) {
                if !std::mem::replace(&mut failing, true) {
                    warn!("offline webhook failing; messages are retried with backoff");
                }
            } else if !results.is_empty() && std::mem::replace(&mut failing, false) {
                info!("offline webhook answering again");
            }
            if full {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Posts one message and settles it: done, or due again after a backoff.
    async fn post(&self, unacked: Unacked) -> bool {
        let posted = Posted {
            mid: unacked.mid,
            op: unacked.message.op,
            seq: unacked.message.seq,
            body: unacked.message.body.clone(),
        };
        let result = self.webhook.post(posted).await;
        self.metrics.offline_posted(result.is_ok());
        let retry = result.as_ref().err().map(|err: &WebhookError| {
            debug!(mid = unacked.mid, seq = unacked.message.seq, error = %err, "offline webhook call failed");
            backoff(unacked.attempt)
        });
        // A settle that fails leaves the claim to run out: posted again later.
        let _ = self.inbox.settle(&unacked, retry).await;
        result.is_ok()
    }
}

/// The delay before retry number `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
