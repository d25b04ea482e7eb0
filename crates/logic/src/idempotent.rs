//! Pushes under an idempotency key (an ingest command's `id`, the HTTP
//! `Idempotency-Key` header, the gRPC `idempotency-key` metadata): delivered
//! at most once within `dedupe_window`, and a retry gets the first answer
//! again. A push by mid is also stored under its key, so even a retry that
//! comes after the key's lease ran out (its node died mid-push) gets the
//! numbers of the first time and devices see one message.
//!
//! Only a complete answer is kept: a push that failed, or that reached only
//! some cloud nodes (and was not numbered), gives its key back so the retry
//! delivers it (at least once).

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::dedupe::{DELIVERY_LEASE, Dedupe, Taken};
use crate::push::{Delivered, Message, PushError, Pusher, Target};
use crate::session::StoreError;

/// The longest idempotency key taken.
const MAX_KEY: usize = 255;

/// A push's answer, and whether it is the first answer given again.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) delivered: Delivered,
    pub(crate) replayed: bool,
}

/// The pushes of every API, with their idempotency keys.
pub(crate) struct Idempotent {
    pusher: Arc<Pusher>,
    dedupe: Arc<dyn Dedupe>,
    window: Duration,
}

impl Idempotent {
    pub(crate) fn new(pusher: Arc<Pusher>, dedupe: Arc<dyn Dedupe>, window: Duration) -> Self {
        Idempotent {
            pusher,
            dedupe,
            window,
        }
    }

    /// Delivers `message` to `target`, once per `key` within the window.
    pub(crate) async fn push(
        &self,
        key: Option<&str>,
        target: Target,
        message: Message,
    ) -> Result<Answer, PushError> {
        let Some(key) = key else {
            let delivered = self.pusher.push(target, message, None).await?;
            return Ok(Answer {
                delivered,
                replayed: false,
            });
        };
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(PushError::BadRequest(format!(
                "an idempotency key has 1 to {MAX_KEY} bytes, not {}",
                key.len()
            )));
        }
        match self.dedupe.take(key, DELIVERY_LEASE).await? {
            Taken::First => {}
            Taken::Done(answer) => {
                let delivered = serde_json::from_str(&answer).map_err(|err| {
                    StoreError(format!("the answer kept for {key:?} is unreadable: {err}"))
                })?;
                return Ok(Answer {
                    delivered,
                    replayed: true,
                });
            }
            Taken::InProgress => return Err(PushError::InProgress(key.to_owned())),
        }
        let numbered = matches!(target, Target::Mids(_));
        let result = self.pusher.push(target, message, Some(key)).await;
        let kept = match &result {
            Ok(delivered) if delivered.failed.is_empty() || numbered => {
                let answer = serde_json::to_string(delivered).unwrap_or_default();
                self.dedupe.done(key, self.window, &answer).await
            }
            // Not delivered everywhere: the retry must be free to deliver it.
            _ => self.dedupe.release(key).await,
        };
        if let Err(err) = kept {
            // The lease runs out by itself; until then a retry is told to wait.
            warn!(key, error = %err, "idempotency key not settled");
        }
        result.map(|delivered| Answer {
            delivered,
            replayed: false,
        })
    }
}
