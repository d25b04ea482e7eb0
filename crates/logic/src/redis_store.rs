//! The Redis session store, shared by several logic nodes, in goim's layout
//! so operators can read it with redis-cli:
//!
//! - `mid_<mid>`: hash, field = connection key, value = cloud server id;
//! - `key_<key>`: string, the cloud server id;
//! - `ol_<server>`: hash, field = room, value = member count, plus
//!   `@updated` (unix ms); and `ol_servers`, a sorted set of servers by
//!   report time, so stale reports are found and deleted in one call.
//!
//! Every write sets the TTL; multi-key work is pipelined (a push to 1,000
//! mids is one round trip). Calls fail fast while Redis is down, and the
//! outage is logged once, not once per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Client, RedisError, Script};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::{DEFAULT_INBOX_MAX, DEFAULT_INBOX_TTL};
use crate::inbox::InboxLimits;
use crate::session::{Online, Route, SessionStore, StoreError};

const UPDATED: &str = "@updated";

/// Drops `key_<key>` and the `mid_<mid>` field only if they still name this
/// server: a newer connection with the same key elsewhere is kept.
const DISCONNECT: &str = r"
local removed = 0
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
  removed = 1
end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return removed
";

/// Sessions in Redis.
pub struct RedisStore {
    client: Client,
    /// One multiplexed connection, made on first use and dropped on any
    /// error: a logic node starts while Redis is down, each request while it
    /// is down fails at once (connection refused), and the first request
    /// after it returns reconnects.
    conn: Mutex<Option<MultiplexedConnection>>,
    prefix: String,
    ttl: Duration,
    online_ttl: Duration,
    timeout: Duration,
    down: AtomicBool,
    disconnect: Script,
    /// How users' inboxes are bounded (see `redis_inbox.rs`).
    pub(crate) inbox: InboxLimits,
    pub(crate) scripts: crate::redis_inbox::InboxScripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db` or `redis+unix:///path`).
    /// Every call fails after `timeout` when Redis does not answer.
    pub fn new(
        url: &str,
        prefix: &str,
        ttl: Duration,
        online_ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client =
            Client::open(url).map_err(|err| StoreError(format!("redis url {url:?}: {err}")))?;
        Ok(RedisStore {
            client,
            conn: Mutex::new(None),
            prefix: prefix.to_owned(),
            ttl,
            online_ttl,
            timeout,
            down: AtomicBool::new(false),
            disconnect: Script::new(DISCONNECT),
            inbox: InboxLimits {
                max: DEFAULT_INBOX_MAX,
                ttl: DEFAULT_INBOX_TTL,
                ack_timeout: None,
                id_window: Duration::from_secs(120),
            },
            scripts: crate::redis_inbox::InboxScripts::default(),
        })
    }

    /// The same store, bounding users' inboxes by `limits`.
    pub fn with_inbox(mut self, limits: InboxLimits) -> Self {
        self.inbox = limits;
        self
    }

    /// The Redis key of `name` under this store's prefix.
    pub(crate) fn prefixed(&self, name: std::fmt::Arguments<'_>) -> String {
        format!("{}{name}", self.prefix)
    }

    fn mid_key(&self, mid: i64) -> String {
        format!("{}mid_{mid}", self.prefix)
    }

    fn key_key(&self, key: &str) -> String {
        format!("{}key_{key}", self.prefix)
    }

    fn online_key(&self, server: &str) -> String {
        format!("{}ol_{server}", self.prefix)
    }

    /// `rr_<room>`: server -> when it last said it has members (unix ms).
    fn route_key(&self, room: &str) -> String {
        format!("{}rr_{room}", self.prefix)
    }

    /// Adds to `pipe` what routes `rooms` to `server` at `now`: the
    /// server's field, and the key's expiry (twice the online TTL, so a
    /// room nobody names is forgotten).
    fn route<'a>(
        &self,
        pipe: &mut redis::Pipeline,
        server: &str,
        rooms: impl IntoIterator<Item = &'a String>,
        now: i64,
    ) {
        let expiry = (self.online_ttl.as_millis() as i64).max(1_000) * 2;
        for room in rooms {
            let key = self.route_key(room);
            pipe.hset(&key, server, now).ignore();
            pipe.pexpire(&key, expiry).ignore();
        }
    }

    /// Adds to `pipe` what marks `server`'s report as made at `now`: its
    /// `@updated` field, its key's expiry, its place in `ol_servers`.
    fn reported(&self, pipe: &mut redis::Pipeline, server: &str, now: i64) {
        let online_key = self.online_key(server);
        let ttl = self.online_ttl.as_secs().max(1) as i64;
        pipe.hset(&online_key, UPDATED, now)
            .ignore()
            .expire(&online_key, ttl)
            .ignore()
            .zadd(self.servers_key(), server, now)
            .ignore();
    }

    fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    fn servers_key(&self) -> String {
        format!("{}ol_servers", self.prefix)
    }

    async fn conn(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let fresh = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *conn = Some(fresh.clone());
        Ok(fresh)
    }

    /// Runs one store operation under the deadline, logging an outage once
    /// when it starts and once when it ends.
    pub(crate) async fn run<T>(
        &self,
        op: impl AsyncFnOnce(MultiplexedConnection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let result =
            tokio::time::timeout(self.timeout, async { op(self.conn().await?).await }).await;
        let result = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(format!("redis: {err}")),
            Err(_) => Err(format!("redis did not answer within {:?}", self.timeout)),
        };
        match &result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => info!("redis reachable again"),
            Ok(_) => {}
            Err(err) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    warn!(error = %err, "redis unreachable");
                }
                // Connect afresh next time.
                *self.conn.lock().await = None;
            }
        }
        result.map_err(StoreError)
    }

    async fn put(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError> {
        let (mid_key, key_key, ttl) = (
            self.mid_key(mid),
            self.key_key(key),
            self.ttl.as_secs().max(1),
        );
        self.run(async |mut conn| {
            redis::pipe()
                .atomic()
                .hset(&mid_key, key, server)
                .ignore()
                .expire(&mid_key, ttl as i64)
                .ignore()
                .set_ex(&key_key, server, ttl)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn connect(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError> {
        self.put(mid, key, server).await
    }

    async fn disconnect(&self, mid: i64, key: &str, server: &str) -> Result<bool, StoreError> {
        let (mid_key, key_key) = (self.mid_key(mid), self.key_key(key));
        self.run(async |mut conn| {
            self.disconnect
                .key(&mid_key)
                .key(&key_key)
                .arg(key)
                .arg(server)
                .invoke_async::<i32>(&mut conn)
                .await
                .map(|removed| removed == 1)
        })
        .await
    }

    async fn renew(&self, mid: i64, key: &str, server: &str) -> Result<(), StoreError> {
        // Writing again renews the TTL and re-adds a mapping that expired.
        self.put(mid, key, server).await
    }

    async fn renew_many(&self, server: &str, sessions: &[(i64, String)]) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ttl = self.ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        for (mid, key) in sessions {
            let mid_key = self.mid_key(*mid);
            pipe.hset(&mid_key, key, server)
                .ignore()
                .expire(&mid_key, ttl as i64)
                .ignore()
                .set_ex(self.key_key(key), server, ttl)
                .ignore();
        }
        self.run(async |mut conn| pipe.query_async::<()>(&mut conn).await)
            .await
    }

    async fn epoch(&self) -> Result<String, StoreError> {
        // `SET NX` then `GET`, in one round trip: the first logic node to
        // ask after Redis came back empty names the new epoch, and every
        // other logic node reads the same one.
        let name = self.epoch_key();
        let fresh = uuid::Uuid::new_v4().to_string();
        let (epoch,): (String,) = self
            .run(async |mut conn| {
                redis::pipe()
                    .set_nx(&name, &fresh)
                    .ignore()
                    .get(&name)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(epoch)
    }

    async fn servers_of_keys(&self, keys: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|key| self.key_key(key)).collect();
        let servers: Vec<Option<String>> =
            self.run(async |mut conn| conn.mget(&names).await).await?;
        Ok(keys
            .iter()
            .zip(servers)
            .filter_map(|(key, server)| Some((key.clone(), server?)))
            .collect())
    }

    async fn keys_of_mids(&self, mids: &[i64]) -> Result<Vec<Route>, StoreError> {
        if mids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for mid in mids {
            pipe.hgetall(self.mid_key(*mid));
        }
        let all: Vec<HashMap<String, String>> = self
            .run(async |mut conn| pipe.query_async(&mut conn).await)
            .await?;
        Ok(mids
            .iter()
            .zip(all)
            .flat_map(|(mid, keys)| {
                keys.into_iter().map(|(key, server)| Route {
                    mid: *mid,
                    key,
                    server,
                })
            })
            .collect())
    }

    async fn report_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError> {
        let online_key = self.online_key(server);
        let now = unix_ms();
        let fields: Vec<(&str, i64)> = rooms
            .iter()
            .map(|(room, n)| (room.as_str(), i64::from(*n)))
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic().del(&online_key).ignore();
        if !fields.is_empty() {
            pipe.hset_multiple(&online_key, &fields).ignore();
        }
        self.reported(&mut pipe, server, now);
        self.route(&mut pipe, server, rooms.keys(), now);
        self.run(async |mut conn| pipe.query_async::<()>(&mut conn).await)
            .await
    }

    async fn update_online(
        &self,
        server: &str,
        rooms: HashMap<String, i32>,
    ) -> Result<(), StoreError> {
        let online_key = self.online_key(server);
        let now = unix_ms();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (room, count) in &rooms {
            if *count > 0 {
                pipe.hset(&online_key, room, i64::from(*count)).ignore();
            } else {
                pipe.hdel(&online_key, room).ignore();
            }
        }
        self.reported(&mut pipe, server, now);
        let members = rooms.iter().filter(|(_, count)| **count > 0);
        self.route(&mut pipe, server, members.map(|(room, _)| room), now);
        self.run(async |mut conn| pipe.query_async::<()>(&mut conn).await)
            .await
    }

    async fn room_totals(&self, rooms: &[String]) -> Result<HashMap<String, i32>, StoreError> {
        let servers_key = self.servers_key();
        let oldest = unix_ms() - self.online_ttl.as_millis() as i64;
        let servers: Vec<String> = self
            .run(async |mut conn| conn.zrangebyscore(&servers_key, oldest, "+inf").await)
            .await?;
        let mut totals: HashMap<String, i32> = rooms.iter().map(|room| (room.clone(), 0)).collect();
        if servers.is_empty() || rooms.is_empty() {
            return Ok(totals);
        }
        let mut pipe = redis::pipe();
        for server in &servers {
            pipe.cmd("HMGET").arg(self.online_key(server)).arg(rooms);
        }
        let counts: Vec<Vec<Option<i64>>> = self
            .run(async |mut conn| pipe.query_async(&mut conn).await)
            .await?;
        for per_server in counts {
            for (room, count) in rooms.iter().zip(per_server) {
                *totals.entry(room.clone()).or_default() += count.unwrap_or(0) as i32;
            }
        }
        Ok(totals)
    }

    async fn route_rooms(&self, server: &str, rooms: &[String]) -> Result<(), StoreError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        self.route(&mut pipe, server, rooms, unix_ms());
        self.run(async |mut conn| pipe.query_async::<()>(&mut conn).await)
            .await
    }

    async fn room_servers(&self, room: &str) -> Result<Vec<String>, StoreError> {
        let key = self.route_key(room);
        let said: HashMap<String, i64> =
            self.run(async |mut conn| conn.hgetall(&key).await).await?;
        let oldest = unix_ms() - self.online_ttl.as_millis() as i64;
        Ok(said
            .into_iter()
            .filter(|(_, at)| *at >= oldest)
            .map(|(server, _)| server)
            .collect())
    }

    async fn online(&self) -> Result<Online, StoreError> {
        let servers_key = self.servers_key();
        let oldest = unix_ms() - self.online_ttl.as_millis() as i64;
        let servers: Vec<String> = self
            .run(async |mut conn| {
                // Stale reports are deleted, not just skipped.
                let stale: Vec<String> = conn.zrangebyscore(&servers_key, "-inf", oldest).await?;
                if !stale.is_empty() {
                    let mut pipe = redis::pipe();
                    pipe.zrembyscore(&servers_key, "-inf", oldest).ignore();
                    for server in &stale {
                        pipe.del(self.online_key(server)).ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await?;
                }
                conn.zrangebyscore(&servers_key, oldest, "+inf").await
            })
            .await?;
        let mut pipe = redis::pipe();
        for server in &servers {
            pipe.hgetall(self.online_key(server));
        }
        let reports: Vec<HashMap<String, i64>> = self
            .run(async |mut conn| pipe.query_async(&mut conn).await)
            .await?;
        let mut online = Online::default();
        for (server, report) in servers.into_iter().zip(reports) {
            let mut load = 0;
            for (room, count) in report {
                if room == UPDATED {
                    continue;
                }
                *online.rooms.entry(room).or_default() += count as i32;
                load += count;
            }
            online.servers.insert(server, load);
        }
        Ok(online)
    }
}
