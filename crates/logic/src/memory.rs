//! The in-memory session store, for a single logic node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
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

/// Each session is kept once, under its key; a user's entry only lists
/// keys. Keys and server ids are shared `Arc<str>`s (a server's id once for
/// all its sessions): an idle connection is a session here, so its bytes
/// count (about 180 per session, against ~580 with a map per user and a
/// copy of every string in both maps).
#[derive(Debug, Default)]
struct State {
    /// key -> (mid, server, expiry).
    keys: HashMap<Arc<str>, Entry>,
    /// mid -> its keys (each one's entry in `keys` names this mid, unless
    /// the key moved to another user since: lookups check).
    mids: HashMap<i64, Vec<Arc<str>>>,
    /// Server ids in use, so sessions share them.
    servers: HashSet<Arc<str>>,
    /// server -> (room counts, reported at).
    online: HashMap<String, (HashMap<String, i32>, Instant)>,
    /// room -> server -> when it last said it has members (see
    /// [`SessionStore::route_rooms`]).
    routes: HashMap<String, HashMap<Arc<str>, Instant>>,
    last_sweep: Option<Instant>,
}

#[derive(Clone, Debug)]
struct Entry {
    mid: i64,
    server: Arc<str>,
    expires: Instant,
}

impl State {
    /// The live entry of `key` if it belongs to `mid`.
    fn entry_of(&self, mid: i64, key: &str, now: Instant) -> Option<&Entry> {
        self.keys
            .get(key)
            .filter(|entry| entry.mid == mid && entry.expires > now)
    }

    /// Forgets `key` in `mid`'s list unless its entry still names `mid`.
    fn unlist(&mut self, mid: i64, key: &str) {
        if self.keys.get(key).is_some_and(|entry| entry.mid == mid) {
            return;
        }
        if let Some(keys) = self.mids.get_mut(&mid) {
            keys.retain(|listed| &**listed != key);
            if keys.is_empty() {
                self.mids.remove(&mid);
            }
        }
    }

    fn server(&mut self, server: &str) -> Arc<str> {
        if let Some(shared) = self.servers.get(server) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(server);
        self.servers.insert(shared.clone());
        shared
    }

    fn shrink(&mut self) {
        shrink(&mut self.keys);
        shrink(&mut self.mids);
    }

    /// Notes that `server` has members of `rooms` at `now`.
    fn route<'a>(
        &mut self,
        server: &str,
        rooms: impl IntoIterator<Item = &'a String>,
        now: Instant,
    ) {
        let server = self.server(server);
        for room in rooms {
            match self.routes.get_mut(room) {
                Some(servers) => {
                    servers.insert(server.clone(), now);
                }
                None => {
                    let servers = HashMap::from([(server.clone(), now)]);
                    self.routes.insert(room.clone(), servers);
                }
            }
        }
    }
}

/// Maps sized for a peak do not shrink by themselves; once one holds under
/// a quarter of what it could, it gives the memory back.
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
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
        let State { keys, mids, .. } = state;
        mids.retain(|mid, listed| {
            listed.retain(|key| keys.get(key).is_some_and(|entry| entry.mid == *mid));
            !listed.is_empty()
        });
        state.servers.retain(|server| Arc::strong_count(server) > 1);
        state.shrink();
    }

    fn put(&self, mid: i64, key: &str, server: &str) {
        let now = Instant::now();
        let mut state = self.lock();
        self.sweep(&mut state, now);
        let entry = Entry {
            mid,
            server: state.server(server),
            expires: now + self.ttl,
        };
        let key = match state.keys.get_key_value(key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(key),
        };
        if let Some(old) = state.keys.insert(key.clone(), entry)
            && old.mid != mid
        {
            state.unlist(old.mid, &key);
        }
        let listed = state.mids.entry(mid).or_default();
        if !listed.contains(&key) {
            // Most users have one or two devices: a plain push would
            // reserve room for four keys per user.
            listed.reserve_exact(1);
            listed.push(key);
        }
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
            .is_some_and(|entry| entry.mid == mid && &*entry.server == server);
        if here {
            state.keys.remove(key);
            state.unlist(mid, key);
            state.shrink();
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
                let entry = state
                    .keys
                    .get(key.as_str())
                    .filter(|entry| entry.expires > now)?;
                Some((key.clone(), entry.server.to_string()))
            })
            .collect())
    }

    async fn keys_of_mids(&self, mids: &[i64]) -> Result<Vec<Route>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        let mut routes = Vec::new();
        for &mid in mids {
            for key in state.mids.get(&mid).into_iter().flatten() {
                if let Some(entry) = state.entry_of(mid, key, now) {
                    routes.push(Route {
                        mid,
                        key: key.to_string(),
                        server: entry.server.to_string(),
                    });
                }
            }
        }
        Ok(routes)
    }

    async fn report_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.route(server, rooms.keys(), now);
        state.online.insert(server.to_owned(), (rooms, now));
        // Rooms nobody has named for the online TTL are forgotten.
        let ttl = self.online_ttl;
        state.routes.retain(|_, servers| {
            servers.retain(|_, at| now - *at <= ttl);
            !servers.is_empty()
        });
        shrink(&mut state.routes);
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

    async fn update_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        let members = rooms.iter().filter(|(_, count)| **count > 0);
        state.route(server, members.map(|(room, _)| room), now);
        let (counts, at) = state
            .online
            .entry(server.to_owned())
            .or_insert_with(|| (HashMap::new(), now));
        *at = now;
        for (room, count) in rooms {
            if count > 0 {
                counts.insert(room, count);
            } else {
                counts.remove(&room);
            }
        }
        Ok(())
    }

    async fn room_totals(&self, rooms: &[String]) -> Result<HashMap<String, i32>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        let live: Vec<_> = state
            .online
            .values()
            .filter(|(_, at)| now - *at <= self.online_ttl)
            .collect();
        Ok(rooms
            .iter()
            .map(|room| {
                let total = live.iter().filter_map(|(counts, _)| counts.get(room)).sum();
                (room.clone(), total)
            })
            .collect())
    }

    async fn route_rooms(&self, server: &str, rooms: &[String]) -> Result<(), StoreError> {
        self.lock().route(server, rooms, Instant::now());
        Ok(())
    }

    async fn room_servers(&self, room: &str) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        Ok(state.routes.get(room).map_or_else(Vec::new, |servers| {
            servers
                .iter()
                .filter(|(_, at)| now - **at <= self.online_ttl)
                .map(|(server, _)| server.to_string())
                .collect()
        }))
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

    #[tokio::test]
    async fn a_key_that_moves_to_another_user_leaves_the_first() {
        let store = store();
        store.connect(1, "k", "a").await.expect("connect");
        store.connect(2, "k", "b").await.expect("connect");
        assert!(store.keys_of_mids(&[1]).await.expect("keys").is_empty());
        let routes = store.keys_of_mids(&[2]).await.expect("keys");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].server, "b");
        assert!(
            !store.disconnect(1, "k", "b").await.expect("disconnect"),
            "user 1 no longer holds k"
        );
        assert!(store.disconnect(2, "k", "b").await.expect("disconnect"));
        assert!(store.lock().mids.is_empty());
    }

    #[tokio::test]
    async fn maps_give_memory_back_once_sessions_leave() {
        let store = store();
        for i in 0..10_000 {
            store
                .connect(i, &format!("key-{i}"), "a")
                .await
                .expect("connect");
        }
        let peak = store.lock().keys.capacity();
        for i in 0..10_000 {
            store
                .disconnect(i, &format!("key-{i}"), "a")
                .await
                .expect("disconnect");
        }
        let state = store.lock();
        assert!(state.keys.is_empty() && state.mids.is_empty());
        assert!(
            state.keys.capacity() * 8 < peak && state.mids.capacity() * 8 < peak,
            "capacity {} and {} after a peak of {peak}",
            state.keys.capacity(),
            state.mids.capacity()
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
