//! Backend pushes, whatever API they came through: find the receivers'
//! cloud nodes and hand each node its share, concurrently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use imcloud_proto::cloud::delivery::Kind;
use imcloud_proto::cloud::{BroadcastReq, BroadcastRoomReq, Proto, PushMsgReq};
use imcloud_protocol::RoomId;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::inbox::InboxStore;
use crate::metrics::Metrics;
use crate::router::{Clouds, Link, NodeResult};
use crate::session::{SessionStore, StoreError};

/// The op clients receive when a push names none.
pub const DEFAULT_OPERATION: i32 = 1000;

/// Why a push was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The request is wrong; nothing was sent.
    #[error("{0}")]
    BadRequest(String),
    /// Sessions could not be looked up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No cloud node concerned could be reached.
    #[error("no cloud node reachable: {0}")]
    NoCloudReachable(String),
    /// Another push with this idempotency key is being delivered.
    #[error("a push with idempotency key {0:?} is being delivered: retry in a few seconds")]
    InProgress(String),
}

impl From<PushError> for tonic::Status {
    fn from(err: PushError) -> Self {
        match err {
            PushError::BadRequest(msg) => tonic::Status::invalid_argument(msg),
            err @ PushError::InProgress(_) => tonic::Status::aborted(err.to_string()),
            other => tonic::Status::unavailable(other.to_string()),
        }
    }
}

/// What a push reached, as the APIs report it.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// Cloud nodes the push was handed to.
    pub nodes: usize,
    /// Connection keys it was handed for (pushes by key or mid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    /// Users whose inbox numbered and kept it (pushes by mid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<usize>,
    /// The room's connections (room pushes), as the cloud nodes last
    /// counted them: each reports a changed count within about a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    /// Cloud nodes that could not take it, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// What one call to a cloud node carries for a push by key or mid: the
/// keys, and for a push by mid each key's user's sequence number (one per
/// key; empty for pushes by key, which are not numbered).
#[derive(Clone, Debug, Default)]
pub(crate) struct Batch {
    keys: Vec<String>,
    seqs: Vec<u32>,
}

/// A push's message: what clients receive as a packet of op `operation`.
#[derive(Clone, Debug)]
pub struct Message {
    /// The business op (>= 1000).
    pub operation: i32,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// Checks the op and the body.
    pub fn new(operation: Option<i32>, body: Bytes) -> Result<Message, PushError> {
        let operation = operation.unwrap_or(DEFAULT_OPERATION);
        if operation < DEFAULT_OPERATION {
            return Err(PushError::BadRequest(format!(
                "operation {operation} is reserved: business ops start at {DEFAULT_OPERATION}"
            )));
        }
        if body.is_empty() {
            return Err(PushError::BadRequest("msg is required".to_owned()));
        }
        Ok(Message { operation, body })
    }

    fn proto(&self) -> Proto {
        Proto {
            ver: 1,
            op: self.operation,
            seq: 0,
            body: self.body.clone(),
        }
    }
}

/// The answer of a push, from what each call did: `nodes` counts the
/// cloud nodes that took at least one call, `keys` the keys handed to them
/// (pushes by key or mid).
fn settle(results: Vec<NodeResult<Batch>>, count_keys: bool) -> Delivered {
    let mut reached = BTreeSet::new();
    let mut failed = BTreeMap::new();
    let mut keys = 0;
    for result in results {
        match result.outcome {
            Ok(()) => {
                keys += result.handed.keys.len();
                reached.insert(result.node);
            }
            Err(why) => {
                failed.entry(result.node).or_insert(why);
            }
        }
    }
    let failed: Vec<String> = failed
        .into_iter()
        .map(|(node, why)| format!("{node}: {why}"))
        .collect();
    if !failed.is_empty() {
        warn!(failed = ?failed, "push reached only some cloud nodes");
    }
    Delivered {
        nodes: reached.len(),
        keys: count_keys.then_some(keys),
        stored: None,
        members: None,
        failed,
    }
}

impl Delivered {
    /// Fails a push that no cloud node concerned took: nothing keeps it.
    fn reached_some(self) -> Result<Delivered, PushError> {
        if self.nodes == 0 && !self.failed.is_empty() {
            return Err(PushError::NoCloudReachable(self.failed.join("; ")));
        }
        Ok(self)
    }
}

/// Who a push is for.
#[derive(Debug)]
pub(crate) enum Target {
    /// Connection keys.
    Keys(Vec<String>),
    /// Users: every key of each.
    Mids(Vec<i64>),
    /// A room's members, on the cloud nodes that hold some.
    Room(RoomId),
    /// Every connection that accepts the op, `speed` connections per
    /// second (0: at once).
    All { speed: i32 },
}

/// Turns backend pushes into calls on the cloud nodes concerned. The HTTP
/// API, the gRPC API (and later ways in) all hold one.
pub(crate) struct Pusher {
    store: Arc<dyn SessionStore>,
    /// Where pushes by mid are numbered and kept before they are delivered.
    inbox: Arc<dyn InboxStore>,
    clouds: Arc<Clouds>,
    metrics: Arc<Metrics>,
    /// Most keys or mids in one push.
    max_targets: usize,
}

impl Pusher {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        inbox: Arc<dyn InboxStore>,
        clouds: Arc<Clouds>,
        metrics: Arc<Metrics>,
        max_targets: usize,
    ) -> Self {
        Pusher {
            store,
            inbox,
            clouds,
            metrics,
            max_targets,
        }
    }

    /// Delivers `message` to `target`; a push by mid with an `id` is
    /// numbered once per id (see [`InboxStore::store`]).
    pub(crate) async fn push(
        &self,
        target: Target,
        message: Message,
        id: Option<&str>,
    ) -> Result<Delivered, PushError> {
        match target {
            Target::Keys(keys) => self.push_keys(keys, message).await,
            Target::Mids(mids) => self.push_mids(mids, message, id).await,
            Target::Room(room) => self.push_room(room, message).await,
            Target::All { speed } => self.push_all(speed, message).await,
        }
    }

    fn check_targets(&self, count: usize, what: &str) -> Result<(), PushError> {
        if count == 0 {
            return Err(PushError::BadRequest(format!("{what} must not be empty")));
        }
        if count > self.max_targets {
            self.metrics.limit_hit("push_targets");
            return Err(PushError::BadRequest(format!(
                "{count} {what} in one push; the limit is {}",
                self.max_targets
            )));
        }
        Ok(())
    }

    /// Pushes to connection keys: one `PushMsg` per cloud node holding some.
    async fn push_keys(&self, keys: Vec<String>, message: Message) -> Result<Delivered, PushError> {
        self.check_targets(keys.len(), "keys")?;
        let found = self.store.servers_of_keys(&keys).await?;
        let mut by_server: HashMap<String, Batch> = HashMap::new();
        for (key, server) in found {
            by_server.entry(server).or_default().keys.push(key);
        }
        let delivered = self
            .push_batches(by_server.into_iter().collect(), &message)
            .await
            .reached_some()?;
        self.metrics.pushed("keys", delivered.keys.unwrap_or(0));
        Ok(delivered)
    }

    /// Pushes to users: the message is numbered and kept in each user's
    /// inbox first (a store that cannot take it fails the push, so nothing
    /// unnumbered is ever delivered), then goes to every key of every user
    /// with that user's sequence number: one `PushMsg` per cloud node, however
    /// many users.
    /// Once stored, the push is answered as done even if no cloud node took
    /// it (`failed` says which did not): devices get it when they resume,
    /// and a backend that retried would only store it twice.
    async fn push_mids(
        &self,
        mids: Vec<i64>,
        message: Message,
        id: Option<&str>,
    ) -> Result<Delivered, PushError> {
        self.check_targets(mids.len(), "mids")?;
        let seqs: HashMap<i64, u64> = mids
            .iter()
            .copied()
            .zip(
                self.inbox
                    .store(&mids, message.operation, &message.body, id)
                    .await?,
            )
            .collect();
        let mut batches: HashMap<String, Batch> = HashMap::new();
        for route in self.store.keys_of_mids(&mids).await? {
            let batch = batches.entry(route.server).or_default();
            // The header's seq is 32 bits; a user's numbering wraps there.
            batch
                .seqs
                .push(seqs.get(&route.mid).copied().unwrap_or(0) as u32);
            batch.keys.push(route.key);
        }
        let batches = batches.into_iter().collect();
        // Zero: not numbered (no inbox, `inbox_max = 0`).
        let stored = seqs.values().filter(|seq| **seq > 0).count();
        self.metrics.stored(stored);
        let mut delivered = self.push_batches(batches, &message).await;
        delivered.stored = Some(stored);
        self.metrics.pushed("mids", delivered.keys.unwrap_or(0));
        Ok(delivered)
    }

    /// Hands each cloud node its batches, concurrently.
    async fn push_batches(&self, batches: Vec<(String, Batch)>, message: &Message) -> Delivered {
        let nodes = self.clouds.nodes();
        let mut unknown = Vec::new();
        let mut targets = Vec::new();
        for (server, batch) in batches {
            match nodes.iter().find(|node| node.id == server) {
                Some(node) => targets.push((node.clone(), batch)),
                None => unknown.push(NodeResult {
                    node: server,
                    handed: batch,
                    outcome: Err("not a known cloud node".to_owned()),
                }),
            }
        }
        debug!(
            calls = targets.len(),
            op = message.operation,
            "push to keys"
        );
        let mut results = self
            .clouds
            .fan_out(targets, |link, batch: Batch| {
                let request = PushMsgReq {
                    keys: batch.keys,
                    // Targeted pushes reach the connection whatever it watches.
                    proto_op: 0,
                    proto: Some(message.proto()),
                    seqs: batch.seqs,
                };
                async move { link.courier.deliver(Kind::Keys(request)).await }
            })
            .await;
        results.extend(unknown);
        settle(results, true)
    }

    /// Pushes to a room on the cloud nodes that hold its members (see
    /// [`SessionStore::route_rooms`]), and on no other: a room with nobody
    /// in it anywhere is answered `nodes: 0`.
    async fn push_room(&self, room: RoomId, message: Message) -> Result<Delivered, PushError> {
        let routed = self.store.room_servers(&room).await?;
        let nodes = self.clouds.nodes();
        if nodes.is_empty() {
            return Err(PushError::NoCloudReachable(
                "no cloud node is known".to_owned(),
            ));
        }
        // A node discovery no longer reports is not called, whatever the
        // store still says of it.
        let targets: Vec<_> = nodes
            .into_iter()
            .filter(|node| routed.contains(&node.id))
            .map(|node| (node, Batch::default()))
            .collect();
        let proto = message.proto();
        let name = [room.to_string()];
        // The count is read while the push travels, so it costs the push
        // no time; a count the store cannot give does not fail the push.
        let (results, totals) = tokio::join!(
            self.clouds.fan_out(targets, |link, _| {
                let request = BroadcastRoomReq {
                    room_id: room.to_string(),
                    proto: Some(proto.clone()),
                };
                async move { link.courier.deliver(Kind::Room(request)).await }
            }),
            self.store.room_totals(&name),
        );
        let mut delivered = settle(results, false).reached_some()?;
        delivered.members = totals
            .ok()
            .and_then(|totals| totals.get(&name[0]).copied())
            .map(|n| usize::try_from(n).unwrap_or(0));
        self.metrics.pushed("room", delivered.nodes);
        Ok(delivered)
    }

    /// Pushes to every connection that accepts the op, on every cloud node;
    /// `speed` (connections per second) is shared among the nodes.
    async fn push_all(&self, speed: i32, message: Message) -> Result<Delivered, PushError> {
        if speed < 0 {
            return Err(PushError::BadRequest(format!("speed {speed} is negative")));
        }
        let share = match (speed, self.clouds.nodes().len() as i32) {
            (0, _) | (_, 0) => 0,
            (speed, n) => (speed + n - 1) / n,
        };
        let proto = message.proto();
        self.to_every_node("all", |Link { mut client, .. }| {
            let request = BroadcastReq {
                proto_op: message.operation,
                proto: Some(proto.clone()),
                speed: share,
            };
            async move { client.broadcast(request).await.map(drop) }
        })
        .await
    }

    /// Makes one call on every cloud node known now, concurrently; fails
    /// when none could be reached (or none is known).
    async fn to_every_node<F, Fut>(
        &self,
        kind: &'static str,
        call: F,
    ) -> Result<Delivered, PushError>
    where
        F: Fn(Link) -> Fut,
        Fut: Future<Output = Result<(), tonic::Status>>,
    {
        let targets: Vec<_> = self
            .clouds
            .nodes()
            .into_iter()
            .map(|node| (node, Batch::default()))
            .collect();
        if targets.is_empty() {
            return Err(PushError::NoCloudReachable(
                "no cloud node is known".to_owned(),
            ));
        }
        let results = self.clouds.fan_out(targets, |client, _| call(client)).await;
        let delivered = settle(results, false).reached_some()?;
        self.metrics.pushed(kind, delivered.nodes);
        Ok(delivered)
    }
}
