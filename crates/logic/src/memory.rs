//! The in-memory session store, for a single logic node.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::session::{Online, Route, SessionStore, StoreError};

/// Sessions in this process's memory, with lazy expiry and a periodic sweep.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    ttl: Duration,
    online_ttl: Duration,
    /// New with every store: a restarted logic node has lost every session.
    epoch: String,
}

#[derive(Debug, Default)]
struct State {
    /// mid -> key -> (server, expiry).
    mids: HashMap<i64, HashMap<String, Entry>>,
    /// key -> (server, expiry).
    keys: HashMap<String, Entry>,
    /// server -> (room counts, reported at).
    online: HashMap<String, (HashMap<String, i32>, Instant)>,
    last_sweep: Option<Instant>,
}

#[derive(Clone, Debug)]
struct Entry {
    server: String,
    expires: Instant,
}

impl MemoryStore {
    /// A store whose sessions live `ttl` and node counts `online_ttl`.
    pub fn new(ttl: Duration, online_ttl: Duration) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            ttl,
            online_ttl,
            epoch: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Drops expired sessions, at most once per quarter TTL, so memory
    /// follows the live sessions without a task of its own.
    fn sweep(&self, state: &mut State, now: Instant) {
        if state.last_sweep.is_some_and(|at| now - at < self.ttl / 4) {
            return;
        }
        state.last_sweep = Some(now);
        state.keys.retain(|_, entry| entry.expires > now);
        state.mids.retain(|_, keys| {
            keys.retain(|_, entry| entry.expires > now);
            !keys.is_empty()
        });
    }

    fn put(&self, mid: i64, key: &str, server: &str) {
        let now = Instant::now();
        let entry = Entry {
            server: server.to_owned(),
            expires: now + self.ttl,
        };
        let mut state = self.lock();
        self.sweep(&mut state, now);
        state.keys.insert(key.to_owned(), entry.clone());
        state
            .mids
            .entry(mid)
            .or_default()
            .insert(key.to_owned(), entry);
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn connect(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError> {
        self.put(mid, key, server);
        Ok(())
    }

    async fn disconnect(&self, mid: i64, key: &str, server: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let here = state
            .keys
            .get(key)
            .is_some_and(|entry| entry.server == server);
        if here {
            state.keys.remove(key);
        }
        if let Some(keys) = state.mids.get_mut(&mid) {
            if keys.get(key).is_some_and(|entry| entry.server == server) {
                keys.remove(key);
            }
            if keys.is_empty() {
                state.mids.remove(&mid);
            }
        }
        Ok(here)
    }

    async fn renew(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError> {
        self.put(mid, key, server);
        Ok(())
    }

    async fn renew_many(&self, server: &str, sessions: &[(i64, String)]) -> Result<(), StoreError> {
        for (mid, key) in sessions {
            self.put(*mid, key, server);
        }
        Ok(())
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        Ok(self.epoch.clone())
    }

    async fn servers_of_keys(&self, keys: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        Ok(keys
            .iter()
            .filter_map(|key| {
                let entry = state.keys.get(key).filter(|entry| entry.expires > now)?;
                Some((key.clone(), entry.server.clone()))
            })
            .collect())
    }

    async fn keys_of_mids(&self, mids: &[i64]) -> Result<Vec<Route>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        Ok(mids
            .iter()
            .filter_map(|mid| Some((*mid, state.mids.get(mid)?)))
            .flat_map(|(mid, keys)| {
                keys.iter()
                    .filter(|(_, entry)| entry.expires > now)
                    .map(move |(key, entry)| Route {
                        mid,
                        key: key.clone(),
                        server: entry.server.clone(),
                    })
            })
            .collect())
    }

    async fn report_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError> {
        self.lock()
            .online
            .insert(server.to_owned(), (rooms, Instant::now()));
        Ok(())
    }

    async fn online(&self) -> Result<Online, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state
            .online
            .retain(|_, (_, at)| now - *at <= self.online_ttl);
        let mut online = Online::default();
        for (server, (rooms, _)) in &state.online {
            let mut load = 0i64;
            for (room, count) in rooms {
                *online.rooms.entry(room.clone()).or_default() += count;
                load += i64::from(*count);
            }
            online.servers.insert(server.clone(), load);
        }
        Ok(online)
    }
}

/// The store's contract (devices, stale disconnects, expiry, online merge)
/// runs against this store and Redis in `tests/store_contract.rs`; these
/// tests add the time-dependent cases on paused time.
#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> MemoryStore {
        MemoryStore::new(Duration::from_secs(60), Duration::from_secs(30))
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_unless_renewed() {
        let store = store();
        store.connect(1, "renewed", "c").await.expect("connect");
        store.connect(1, "silent", "c").await.expect("connect");
        tokio::time::advance(Duration::from_secs(40)).await;
        store.renew(1, "renewed", "c").await.expect("renew");
        tokio::time::advance(Duration::from_secs(40)).await;
        let keys = store.keys_of_mids(&[1]).await.expect("keys");
        assert_eq!(
            keys,
            [Route {
                mid: 1,
                key: "renewed".to_owned(),
                server: "c".to_owned()
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn online_counts_merge_and_stale_nodes_drop_out() {
        let store = store();
        let rooms = |n| HashMap::from([("live://1".to_owned(), n)]);
        store.report_online("a", rooms(3)).await.expect("report");
        tokio::time::advance(Duration::from_secs(20)).await;
        store.report_online("b", rooms(4)).await.expect("report");
        let online = store.online().await.expect("online");
        assert_eq!(online.rooms["live://1"], 7);
        assert_eq!(online.servers["b"], 4);
        tokio::time::advance(Duration::from_secs(20)).await;
        let online = store.online().await.expect("online");
        assert_eq!(online.rooms["live://1"], 4, "a has not reported for 40 s");
        assert!(!online.servers.contains_key("a"));
    }
}
