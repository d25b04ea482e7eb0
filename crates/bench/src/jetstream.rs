//! Publishing to JetStream as fast as the stream stores: up to `WINDOW`
//! messages waiting for their store acknowledgement, so the publisher is not
//! one round trip per message, and no more, so a stalled stream stops it.

use std::collections::VecDeque;

use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;

const WINDOW: usize = 512;

/// A publisher with its acknowledgements in flight.
pub(crate) struct Publisher {
    js: jetstream::Context,
    in_flight: VecDeque<PublishAckFuture>,
}

impl Publisher {
    pub(crate) fn new(js: jetstream::Context) -> Self {
        Publisher {
            js,
            in_flight: VecDeque::new(),
        }
    }

    pub(crate) async fn publish(&mut self, subject: &str, payload: Bytes) -> anyhow::Result<()> {
        let ack = self.js.publish(subject.to_owned(), payload).await?;
        self.in_flight.push_back(ack);
        if self.in_flight.len() >= WINDOW
            && let Some(ack) = self.in_flight.pop_front()
        {
            ack.await?;
        }
        Ok(())
    }

    /// Waits until the stream stored everything published.
    pub(crate) async fn stored(&mut self) -> anyhow::Result<()> {
        while let Some(ack) = self.in_flight.pop_front() {
            ack.await?;
        }
        Ok(())
    }
}
