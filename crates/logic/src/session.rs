//! The session store: which connection keys a user has, which cloud node
//! holds each key, each cloud node's room counts, and which cloud nodes
//! hold members of each room (where room pushes go). In memory for one
//! logic node; Redis (same layout as goim) for several.

use std::collections::HashMap;

use async_trait::async_trait;

/// The store could not answer (a remote store is down or slow).
#[derive(Debug, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct StoreError(pub String);

/// Where one connection of a user is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The user.
    pub mid: i64,
    /// The connection's key.
    pub key: String,
    /// The cloud node holding it.
    pub server: String,
}

/// Room counts merged over the cloud nodes that reported recently.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Online {
    /// Members per room (`type://id`), cluster-wide.
    pub rooms: HashMap<String, i32>,
    /// Room members per cloud node (its load, for `Nodes`).
    pub servers: HashMap<String, i64>,
}

/// Sessions and online counts, with expiry: a session not renewed within
/// the TTL, and a node's counts not reported within the online TTL, vanish.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Records that `key` of user `mid` is connected to `server`.
    async fn connect(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError>;

    /// Forgets `key` if it is still on `server` (a newer connection with the
    /// same key elsewhere is kept); returns whether it was.
    async fn disconnect(&self, mid: i64, key: &str, server: &str) -> Result<bool, StoreError>;

    /// Extends the session's TTL, re-adding it if it had expired.
    async fn renew(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError>;

    /// Renews (or re-adds) many sessions of one server in one batch: a cloud
    /// node re-registering everything it holds after the store lost it.
    async fn renew_many(&self, server: &str, sessions: &[(i64, String)]) -> Result<(), StoreError>;

    /// The store's current life: a value that changes whenever the store
    /// has lost its sessions (a memory store is new with every process;
    /// Redis gets a new one when it comes back empty). Cloud nodes watch it
    /// and re-register their sessions when it changes.
    async fn epoch(&self) -> Result<String, StoreError>;

    /// The server of each known key, as `(key, server)`.
    async fn servers_of_keys(&self, keys: &[String]) -> Result<Vec<(String, String)>, StoreError>;

    /// Every connection of these users, with its server.
    async fn keys_of_mids(&self, mids: &[i64]) -> Result<Vec<Route>, StoreError>;

    /// Stores a cloud node's room counts.
    async fn report_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError>;

    /// The counts of every node that reported within the online TTL.
    async fn online(&self) -> Result<Online, StoreError>;

    /// Notes that `server` has members of `rooms` now (a join, or a client
    /// whose token named rooms): room pushes call it for them from this
    /// moment, and until the online TTL passes with neither a report nor
    /// another join naming the room there. Leaves do not unroute: a node
    /// called for a room it no longer holds only ignores the push, while a
    /// node missed would lose it.
    async fn route_rooms(&self, server: &str, rooms: &[String]) -> Result<(), StoreError>;

    /// Merges some of a cloud node's room counts into its last report
    /// (and routes the rooms with members, as a report does).
    async fn update_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError>;

    /// The cluster-wide counts of `rooms` (0 for a room nobody is in),
    /// over the nodes that reported within the online TTL.
    async fn room_totals(&self, rooms: &[String]) -> Result<HashMap<String, i32>, StoreError>;

    /// The servers room pushes to `room` go to (see [`Self::route_rooms`];
    /// a report naming the room routes it too).
    async fn room_servers(&self, room: &str) -> Result<Vec<String>, StoreError>;
}
