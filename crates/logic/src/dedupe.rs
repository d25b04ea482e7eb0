//! Push ids already taken, so a command published twice (a backend's retry,
//! a redelivery after a logic node died mid-command) is delivered once
//! within the window. In memory for one logic node; in Redis (`SET NX PX`)
//! across several.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::redis_store::RedisStore;
use crate::session::StoreError;

/// Where taken ids are kept.
#[async_trait]
pub trait Dedupe: Send + Sync + 'static {
    /// Takes `id` for `window`; false when it was already taken.
    async fn take(&self, id: &str, window: Duration) -> Result<bool, StoreError>;
    /// Gives `id` back: its delivery failed and will be tried again.
    async fn release(&self, id: &str) -> Result<(), StoreError>;
}

/// Taken ids in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryDedupe {
    taken: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl Dedupe for MemoryDedupe {
    async fn take(&self, id: &str, window: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut taken = self.taken.lock();
        if taken.len() > 1024 {
            taken.retain(|_, until| *until > now);
        }
        match taken.get(id) {
            Some(until) if *until > now => Ok(false),
            _ => {
                taken.insert(id.to_owned(), now + window);
                Ok(true)
            }
        }
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        self.taken.lock().remove(id);
        Ok(())
    }
}

#[async_trait]
impl Dedupe for RedisStore {
    async fn take(&self, id: &str, window: Duration) -> Result<bool, StoreError> {
        let key = self.prefixed(format_args!("dedupe_{id}"));
        let millis = window.as_millis().max(1) as u64;
        let set: Option<String> = self
            .run(async |mut conn| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        let key = self.prefixed(format_args!("dedupe_{id}"));
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
    async fn an_id_is_taken_once_within_its_window() {
        let dedupe = MemoryDedupe::default();
        let window = Duration::from_secs(120);
        assert!(dedupe.take("a", window).await.expect("take"));
        assert!(!dedupe.take("a", window).await.expect("take"));
        dedupe.release("a").await.expect("release");
        assert!(dedupe.take("a", window).await.expect("take again"));
        tokio::time::advance(window).await;
        assert!(dedupe.take("a", window).await.expect("after the window"));
    }
}
