//! Waiting for a condition that no event announces (a counter on a
//! metrics page, a store's expiry), with a generous cap so a slow CI
//! machine never fails a test that would pass, and a panic that says what
//! did not happen.

use std::time::Duration;

/// How long [`eventually`] waits before it gives up.
const EVENTUALLY_CAP: Duration = Duration::from_secs(20);

/// How often [`eventually`] checks.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `check` returns true, checking every 20 ms; panics naming
/// `what` after [`EVENTUALLY_CAP`]. Prefer awaiting the event itself (a
/// packet, a channel) when there is one.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let wait = async {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    };
    if tokio::time::timeout(EVENTUALLY_CAP, wait).await.is_err() {
        panic!("{what}: not within {EVENTUALLY_CAP:?}");
    }
}
