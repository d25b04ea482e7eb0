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
mod lanes;
mod nats;

pub(crate) use command::Command;
pub(crate) use lanes::{Busy, Lanes};
pub(crate) use nats::consume;

use std::sync::Arc;

use crate::idempotent::Idempotent;
use crate::push::PushError;

/// Why `payload` can never be delivered as a command, if it cannot: what
/// a publisher checks before publishing.
pub fn check_command(payload: &[u8]) -> Result<(), String> {
    Command::parse(payload).map(drop)
}

/// What to do with a command once handled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Delivered: acknowledge.
    Done,
    /// Its id was delivered already within the window: acknowledge.
    Duplicate,
    /// Failed for a reason that may pass: try again later.
    Retry(String),
    /// Another node is delivering the same id right now: try again later,
    /// without counting it as a failure.
    Wait(String),
    /// Can never succeed: dead-letter it with the reason.
    Reject(String),
}

/// What handling a command uses.
pub(crate) struct Handler {
    pub(crate) pushes: Arc<Idempotent>,
    /// `max_push_body`: a command is no bigger than an HTTP push may be.
    pub(crate) max_body: usize,
}

impl Handler {
    /// The command in `payload`, or why it can never be delivered.
    pub(crate) fn parse(&self, payload: &[u8]) -> Result<Command, String> {
        if payload.len() > self.max_body {
            return Err(format!(
                "the command is {} bytes, over max_push_body ({} bytes)",
                payload.len(),
                self.max_body
            ));
        }
        Command::parse(payload)
    }

    /// Delivers one command, once per id within the window. A command
    /// without an id goes by `engine_id` (the engine's own number for the
    /// message), so a redelivery after a logic node died mid-command is
    /// numbered as the first delivery was.
    pub(crate) async fn deliver(&self, command: Command, engine_id: Option<&str>) -> Outcome {
        let numbered = command.numbered();
        let id = command.id.as_deref().or(engine_id);
        match self.pushes.push(id, command.target, command.message).await {
            Ok(answer) if answer.replayed => Outcome::Duplicate,
            // A push by mid is stored once numbered: a device that did not
            // get it resumes.
            Ok(answer) if answer.delivered.failed.is_empty() || numbered => Outcome::Done,
            Ok(answer) => Outcome::Retry(answer.delivered.failed.join("; ")),
            Err(PushError::BadRequest(reason)) => Outcome::Reject(reason),
            Err(err @ PushError::InProgress(_)) => Outcome::Wait(err.to_string()),
            Err(err) => Outcome::Retry(err.to_string()),
        }
    }
}
