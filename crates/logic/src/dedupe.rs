//! Idempotency keys of pushes already delivered, with their answers, so a
//! push sent twice (a backend's retry, a redelivery after a logic node died
//! mid-command) is delivered once within the window and the retry gets the
//! first answer. A key is first taken for a short lease while its push is
//! delivered, then marked done for the window: a node that dies
//! mid-delivery leaves only the lease behind, so the retry is not mistaken
//! for a duplicate once the lease runs out. In memory for one logic node;
//! in Redis (`SET NX PX`) across several.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::redis_store::RedisStore;
use crate::session::StoreError;

/// What a key holds in Redis while its push is being delivered; once
/// delivered, it holds the answer (JSON, never this).
const PENDING: &str = "pending";

/// How long an id is held while its command is being delivered.
pub(crate) const DELIVERY_LEASE: Duration = Duration::from_secs(10);

/// What taking an id found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Nobody had it: deliver, then [`Dedupe::done`].
    First,
    /// Another delivery holds it right now: try again later.
    InProgress,
    /// Delivered within the window: a duplicate, and the first answer.
    Done(String),
}

/// Where ids are kept.
#[async_trait]
pub trait Dedupe: Send + Sync + 'static {
    /// Takes `id` for `lease` if nobody holds it.
    async fn take(&self, id: &str, lease: Duration) -> Result<Taken, StoreError>;
    /// Marks `id` delivered, with its answer, for `window`.
    async fn done(&self, id: &str, window: Duration, answer: &str) -> Result<(), StoreError>;
    /// Gives `id` back: its delivery failed and will be tried again.
    async fn release(&self, id: &str) -> Result<(), StoreError>;
}

/// Ids in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryDedupe {
    ids: Mutex<Ids>,
}

#[derive(Debug, Default)]
struct Ids {
    /// id -> (the answer once delivered, until when).
    held: HashMap<String, (Option<String>, Instant)>,
    /// When expired ids were last dropped.
    swept: Option<Instant>,
}

/// How often expired ids are dropped: a sweep walks them all.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[async_trait]
impl Dedupe for MemoryDedupe {
    async fn take(&self, id: &str, lease: Duration) -> Result<Taken, StoreError> {
        let now = Instant::now();
        let mut ids = self.ids.lock();
        if ids.swept.is_none_or(|at| now - at >= SWEEP_EVERY) {
            ids.swept = Some(now);
            ids.held.retain(|_, (_, until)| *until > now);
        }
        match ids.held.get(id) {
            Some((Some(answer), until)) if *until > now => Ok(Taken::Done(answer.clone())),
            Some((None, until)) if *until > now => Ok(Taken::InProgress),
            _ => {
                ids.held.insert(id.to_owned(), (None, now + lease));
                Ok(Taken::First)
            }
        }
    }

    async fn done(&self, id: &str, window: Duration, answer: &str) -> Result<(), StoreError> {
        self.ids.lock().held.insert(
            id.to_owned(),
            (Some(answer.to_owned()), Instant::now() + window),
        );
        Ok(())
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        self.ids.lock().held.remove(id);
        Ok(())
    }
}

impl RedisStore {
    fn dedupe_key(&self, id: &str) -> String {
        self.prefixed(format_args!("dedupe_{id}"))
    }
}

#[async_trait]
impl Dedupe for RedisStore {
    async fn take(&self, id: &str, lease: Duration) -> Result<Taken, StoreError> {
        let key = self.dedupe_key(id);
        let millis = lease.as_millis().max(1) as u64;
        // SET NX answers OK when taken; GET says who holds it otherwise.
        let (set, held): (Option<String>, Option<String>) = self
            .run(async |mut conn| {
                redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(PENDING)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis)
                    .get(&key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match (set, held) {
            (Some(_), _) => Taken::First,
            (None, Some(answer)) if answer != PENDING => Taken::Done(answer),
            (None, _) => Taken::InProgress,
        })
    }

    async fn done(&self, id: &str, window: Duration, answer: &str) -> Result<(), StoreError> {
        let key = self.dedupe_key(id);
        let millis = window.as_millis().max(1) as u64;
        self.run(async |mut conn| {
            redis::cmd("SET")
                .arg(&key)
                .arg(answer)
                .arg("PX")
                .arg(millis)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        let key = self.dedupe_key(id);
        self.run(async |mut conn| {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_id_is_leased_while_delivered_then_done_for_its_window() {
        let dedupe = MemoryDedupe::default();
        let (lease, window) = (Duration::from_secs(10), Duration::from_secs(120));
        assert_eq!(dedupe.take("a", lease).await.ok(), Some(Taken::First));
        assert_eq!(dedupe.take("a", lease).await.ok(), Some(Taken::InProgress));
        // The node delivering it died: once the lease runs out, it is free.
        tokio::time::advance(lease).await;
        assert_eq!(dedupe.take("a", lease).await.ok(), Some(Taken::First));
        dedupe.done("a", window, "{}").await.expect("done");
        assert_eq!(
            dedupe.take("a", lease).await.ok(),
            Some(Taken::Done("{}".to_owned()))
        );
        tokio::time::advance(window).await;
        assert_eq!(dedupe.take("a", lease).await.ok(), Some(Taken::First));
        dedupe.release("a").await.expect("release");
        assert_eq!(dedupe.take("a", lease).await.ok(), Some(Taken::First));
    }
}
