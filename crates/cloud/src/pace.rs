//! Pacing: doing something to many connections at a bounded rate, in small
//! steps, so a broadcast with `speed` or a drain never hits them all at once.

use std::time::Duration;

/// Calls `each` on successive groups of `items`, at most `rate` items per
/// second (groups of a tenth of a second's worth, at least one item).
pub(crate) async fn paced<T>(items: &[T], rate: u32, mut each: impl FnMut(&[T])) {
    let rate = rate.max(1);
    let step = (rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(step as f64 / f64::from(rate)));
    for group in items.chunks(step) {
        tick.tick().await;
        each(group);
    }
}
