//! Durable ingest: backends publish push commands to NATS JetStream, and
//! every logic node pulls from one shared durable consumer (each command is
//! handled by one node) and delivers them with the same code as an HTTP
//! push. A command is acknowledged once delivered; a failure that may pass
//! is retried after `retry_delay`; a command that can never succeed, or
//! that failed `max_deliver` times, goes to the dead-letter subject with
//! the reason, and is acknowledged so the stream keeps flowing.
//!
//! Each engine is a module of its own (`ingest/nats.rs`) that only moves
//! bytes and acks; parsing and delivery are [`Handler`], so another engine
//! (Kafka) is one more module and nothing else changes.

mod command;
mod nats;

pub(crate) use command::Command;
pub(crate) use nats::consume;

use std::sync::Arc;
use std::time::Duration;

use crate::dedupe::{DELIVERY_LEASE, Dedupe, Taken};
use crate::push::{PushError, Pusher};

/// What to do with a command once handled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Delivered: acknowledge.
    Done,
    /// Its id was delivered already within the window: acknowledge.
    Duplicate,
    /// Failed for a reason that may pass: try again later.
    Retry(String),
    /// Can never succeed: dead-letter it with the reason.
    Reject(String),
}

/// What handling a command uses.
pub(crate) struct Handler {
    pub(crate) pusher: Arc<Pusher>,
    pub(crate) dedupe: Arc<dyn Dedupe>,
    pub(crate) dedupe_window: Duration,
}

impl Handler {
    /// Parses and delivers one command, once per id within the window.
    pub(crate) async fn handle(&self, payload: &[u8]) -> Outcome {
        let command = match Command::parse(payload) {
            Ok(command) => command,
            Err(reason) => return Outcome::Reject(reason),
        };
        if let Some(id) = &command.id {
            match self.dedupe.take(id, DELIVERY_LEASE).await {
                Ok(Taken::First) => {}
                Ok(Taken::Done) => return Outcome::Duplicate,
                Ok(Taken::InProgress) => {
                    return Outcome::Retry(format!("id {id:?} is being delivered"));
                }
                Err(err) => return Outcome::Retry(err.to_string()),
            }
        }
        let id = command.id.clone();
        let outcome = self.deliver(command).await;
        if let Some(id) = id {
            let _ = match outcome {
                // Not delivered: the retry must be free to deliver it.
                Outcome::Retry(_) => self.dedupe.release(&id).await,
                _ => self.dedupe.done(&id, self.dedupe_window).await,
            };
        }
        outcome
    }

    async fn deliver(&self, command: Command) -> Outcome {
        let numbered = command.numbered();
        match self.pusher.push(command.target, command.message).await {
            // A push by mid is stored once numbered: a device that did not
            // get it resumes. Delivering again would number it again.
            Ok(delivered) if delivered.failed.is_empty() || numbered => Outcome::Done,
            Ok(delivered) => Outcome::Retry(delivered.failed.join("; ")),
            Err(PushError::BadRequest(reason)) => Outcome::Reject(reason),
            Err(err) => Outcome::Retry(err.to_string()),
        }
    }
}
