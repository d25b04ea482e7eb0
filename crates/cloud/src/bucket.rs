//! Bucket actors: each one alone owns a share of the node's connections
//! (key -> member) and their rooms (room -> members). A key hashes to one
//! bucket; pushes reach a bucket as commands, are queued into the members'
//! outboxes, and the bucket writes them to the sockets itself, without ever
//! waiting on one (see [`Bucket::run`]).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::iter::Peekable;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use imcloud_protocol::{CloseBody, CloseReason, RoomId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep;

use crate::metrics::{Delivery, Metrics};
use crate::outbox::{Outbox, Rejected};
use crate::silence;
use crate::wire::Push;

/// A connection key, as logic gave it.
pub(crate) type Key = Arc<str>;

/// Commands a bucket can queue before senders wait.
const MAILBOX: usize = 1024;
/// Commands a bucket takes from its mailbox at once.
const BATCH: usize = 64;
/// Outboxes a bucket writes between two looks at its mailbox (and at the
/// runtime's I/O): about half a millisecond of `writev`s.
const SWEEP_STEP: usize = 32;

/// One authenticated connection, as its bucket knows it.
#[derive(Debug)]
pub(crate) struct Member {
    /// Unique per connection, so a stale unregister (after a same-key kick)
    /// never removes the newer connection.
    pub(crate) id: u64,
    /// The user, for re-registering the session with logic.
    pub(crate) mid: i64,
    pub(crate) outbox: Arc<Outbox>,
    /// The rooms it is in, in the order joined (the first is goim's room).
    pub(crate) rooms: Vec<RoomId>,
    /// The token's platform (`web`, `ios`...), for presence.
    pub(crate) platform: Box<str>,
    /// Business ops this connection wants from `Broadcast` (and from key
    /// pushes that name an op).
    pub(crate) accepts: Vec<u32>,
}

impl Member {
    fn accepts(&self, filter: Option<u32>) -> bool {
        filter.is_none_or(|op| self.accepts.contains(&op))
    }
}

/// A connection as presence describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    pub(crate) key: Key,
    pub(crate) mid: i64,
    pub(crate) platform: Box<str>,
    pub(crate) rooms: Vec<RoomId>,
}

/// The bucket task is gone: only when the node is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("bucket actor stopped")]
pub(crate) struct BucketGone;

enum Command {
    Register {
        key: Key,
        member: Member,
        done: oneshot::Sender<()>,
    },
    Unregister {
        key: Key,
        id: u64,
    },
    /// The member's rooms are now these (a join, a leave, op 12).
    SetRooms {
        key: Key,
        id: u64,
        rooms: Vec<RoomId>,
    },
    Watch {
        key: Key,
        id: u64,
        ops: Vec<u32>,
        watch: bool,
    },
    /// Each key its push: the same one shared (by key), or each user's
    /// numbered one (by mid).
    PushKeys {
        targets: Vec<(Key, Push)>,
        filter: Option<u32>,
    },
    PushRoom {
        room: RoomId,
        push: Push,
    },
    Broadcast {
        push: Push,
        filter: Option<u32>,
    },
    Select {
        filter: Option<u32>,
        reply: oneshot::Sender<Vec<Arc<Outbox>>>,
    },
    /// Members per room: of every room with members, or of these rooms.
    RoomCounts {
        only: Option<Arc<[RoomId]>>,
        reply: oneshot::Sender<HashMap<RoomId, usize>>,
    },
    Sessions {
        reply: oneshot::Sender<Vec<(i64, String)>>,
    },
    /// Who holds these keys (presence).
    Devices {
        keys: Vec<Key>,
        reply: oneshot::Sender<Vec<Device>>,
    },
    /// A room's connections here, and up to `limit` of its users.
    Members {
        room: RoomId,
        limit: usize,
        reply: oneshot::Sender<(usize, Vec<i64>)>,
    },
}

struct Bucket {
    members: HashMap<Key, Member>,
    rooms: HashMap<RoomId, HashMap<u64, Arc<Outbox>>>,
    metrics: Arc<Metrics>,
}

impl Bucket {
    /// Queues every push it is sent into its members' outboxes (no system
    /// call), then sweeps the outboxes that have something to write, each
    /// one's queue in one `writev`, straight to the socket: no task is woken
    /// per connection. Between steps of a sweep it takes the commands that
    /// arrived meanwhile, so a push arriving mid-sweep joins what the
    /// outboxes not swept yet hold: under load, each write carries every
    /// message since that connection's last write, as a raw writer's one
    /// loop over its sockets does.
    ///
    /// Once a second it also closes the connections whose clients have
    /// been silent too long (see [`crate::silence`]).
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut dirty = VecDeque::new();
        let mut check = pin!(sleep(silence::CHECK_EVERY));
        loop {
            // Read from the clock: a busy bucket never waits on the timer.
            let now = tokio::time::Instant::now();
            if check.deadline() <= now {
                self.close_silent();
                check.as_mut().reset(now + silence::CHECK_EVERY);
            }
            if dirty.is_empty() {
                tokio::select! {
                    received = commands.recv_many(&mut batch, BATCH) => if received == 0 {
                        return;
                    },
                    () = &mut check => continue,
                }
            } else {
                while batch.len() < BATCH
                    && let Ok(command) = commands.try_recv()
                {
                    batch.push(command);
                }
            }
            let mut taken = batch.drain(..).peekable();
            while let Some(command) = taken.next() {
                self.handle(command, &mut taken, &mut dirty);
            }
            self.sweep(&mut dirty).await;
        }
    }

    /// Writes the next [`SWEEP_STEP`] outboxes waiting, then, if more are
    /// waiting, yields: tokio polls its I/O driver before a yielded task
    /// runs again, so the API's requests (and the next push) never wait
    /// behind a whole fan-out, and a push that arrives meanwhile joins the
    /// rest of the sweep.
    async fn sweep(&self, dirty: &mut VecDeque<Arc<Outbox>>) {
        let mut written = Written::default();
        let step = dirty.len().min(SWEEP_STEP);
        for outbox in dirty.drain(..step) {
            written.add(outbox.flush());
        }
        written.record(&self.metrics);
        if !dirty.is_empty() {
            tokio::task::yield_now().await;
        }
    }

    /// Membership changes and queries are answered at once; pushes are
    /// queued, and outboxes that now need writing join `dirty`. `next` is
    /// the rest of the batch: pushes to one room that follow this one join it.
    fn handle(
        &mut self,
        command: Command,
        next: &mut Peekable<impl Iterator<Item = Command>>,
        dirty: &mut VecDeque<Arc<Outbox>>,
    ) {
        match command {
            Command::Register { key, member, done } => {
                self.register(key, member);
                let _ = done.send(());
            }
            Command::Unregister { key, id } => {
                if self.members.get(&key).is_some_and(|m| m.id == id)
                    && let Some(member) = self.members.remove(&key)
                {
                    self.leave_rooms(&member);
                    shrink(&mut self.members);
                    shrink(&mut self.rooms);
                }
            }
            Command::SetRooms { key, id, rooms } => {
                let Some(mut member) = self.members.remove(&key) else {
                    return;
                };
                if member.id == id {
                    self.leave_rooms(&member);
                    member.rooms = rooms;
                    self.join_rooms(&member);
                }
                self.members.insert(key, member);
            }
            Command::Watch {
                key,
                id,
                ops,
                watch,
            } => {
                if let Some(member) = self.members.get_mut(&key).filter(|m| m.id == id) {
                    if watch {
                        for op in ops {
                            if !member.accepts.contains(&op) {
                                member.accepts.push(op);
                            }
                        }
                    } else {
                        member.accepts.retain(|op| !ops.contains(op));
                    }
                }
            }
            Command::PushKeys { targets, filter } => {
                let mut sent = 0;
                for (key, push) in &targets {
                    if let Some(member) = self.members.get(key)
                        && member.accepts(filter)
                        && queue(&member.outbox, std::slice::from_ref(push), dirty)
                    {
                        sent += 1;
                    }
                }
                self.metrics.delivered(Delivery::Key, sent);
            }
            Command::PushRoom { room, push } => {
                // Pushes to one room that arrived together (a `Deliver`
                // call's) reach each member in one visit to its outbox.
                let mut pushes = vec![push];
                while let Some(Command::PushRoom { room: same, .. }) = next.peek()
                    && *same == room
                    && let Some(Command::PushRoom { push, .. }) = next.next()
                {
                    pushes.push(push);
                }
                self.push_room(&room, &pushes, dirty);
            }
            Command::Broadcast { push, filter } => {
                let pushes = std::slice::from_ref(&push);
                let sent = self
                    .members
                    .values()
                    .filter(|m| m.accepts(filter) && queue(&m.outbox, pushes, dirty))
                    .count();
                self.metrics.delivered(Delivery::Broadcast, sent as u64);
            }
            Command::Select { filter, reply } => {
                let outboxes = self
                    .members
                    .values()
                    .filter(|m| m.accepts(filter))
                    .map(|m| m.outbox.clone())
                    .collect();
                let _ = reply.send(outboxes);
            }
            Command::RoomCounts { only, reply } => {
                let counts = match only {
                    None => self
                        .rooms
                        .iter()
                        .map(|(room, members)| (room.clone(), members.len()))
                        .collect(),
                    Some(rooms) => rooms
                        .iter()
                        .map(|room| (room.clone(), self.rooms.get(room).map_or(0, HashMap::len)))
                        .collect(),
                };
                let _ = reply.send(counts);
            }
            Command::Devices { keys, reply } => {
                let devices = keys
                    .into_iter()
                    .filter_map(|key| {
                        let member = self.members.get(&key)?;
                        Some(Device {
                            mid: member.mid,
                            platform: member.platform.clone(),
                            rooms: member.rooms.clone(),
                            key,
                        })
                    })
                    .collect();
                let _ = reply.send(devices);
            }
            Command::Members { room, limit, reply } => {
                // Presence is asked rarely: a scan beats keeping a user per
                // room member on the push path.
                let online = self.rooms.get(&room).map_or(0, HashMap::len);
                let mut mids: Vec<i64> = self
                    .members
                    .values()
                    .filter(|member| member.rooms.contains(&room))
                    .map(|member| member.mid)
                    .collect();
                mids.sort_unstable();
                mids.dedup();
                mids.truncate(limit.saturating_add(1));
                let _ = reply.send((online, mids));
            }
            Command::Sessions { reply } => {
                let sessions = self
                    .members
                    .iter()
                    .map(|(key, member)| (member.mid, key.to_string()))
                    .collect();
                let _ = reply.send(sessions);
            }
        }
    }

    /// Closes the connections whose clients sent nothing for longer than
    /// their limit (two heartbeats).
    fn close_silent(&self) {
        for member in self.members.values() {
            let silence = member.outbox.silence();
            if silence.expired() {
                let detail = format!("no packet for {:?}", silence.limit());
                member
                    .outbox
                    .close(CloseBody::new(CloseReason::HeartbeatTimeout, Some(&detail)));
            }
        }
    }

    /// Queues `pushes`, in order, for every member of `room`.
    fn push_room(&self, room: &RoomId, pushes: &[Push], dirty: &mut VecDeque<Arc<Outbox>>) {
        if let Some(members) = self.rooms.get(room) {
            let took = members
                .values()
                .filter(|outbox| queue(outbox, pushes, dirty))
                .count();
            self.metrics
                .delivered(Delivery::Room, (took * pushes.len()) as u64);
        }
    }

    /// Adds a member; an older connection with the same key is kicked.
    fn register(&mut self, key: Key, member: Member) {
        self.join_rooms(&member);
        if let Some(old) = self.members.insert(key, member) {
            self.leave_rooms(&old);
            old.outbox.close(CloseBody::new(
                CloseReason::Kicked,
                Some("a newer connection logged in with the same key"),
            ));
        }
    }

    fn join_rooms(&mut self, member: &Member) {
        for room in &member.rooms {
            self.rooms
                .entry(room.clone())
                .or_default()
                .insert(member.id, member.outbox.clone());
        }
    }

    fn leave_rooms(&mut self, member: &Member) {
        for room in &member.rooms {
            if let Some(members) = self.rooms.get_mut(room) {
                members.remove(&member.id);
                if members.is_empty() {
                    self.rooms.remove(room);
                } else {
                    shrink(members);
                }
            }
        }
    }
}

/// Gives back the memory of a map that holds under a quarter of what it
/// could: maps sized for a peak of connections do not shrink by themselves.
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

/// Queues `pushes` for `outbox`; one that now needs writing joins `dirty`.
/// Returns whether it took them (a full or closing outbox does not).
fn queue(outbox: &Arc<Outbox>, pushes: &[Push], dirty: &mut VecDeque<Arc<Outbox>>) -> bool {
    match outbox.deliver_all(pushes) {
        Ok(true) => {
            dirty.push_back(outbox.clone());
            true
        }
        Ok(false) => true,
        Err(Rejected::Overflow | Rejected::Closed) => false,
    }
}

/// Sends `push` to a group of outboxes at once, for paced broadcasts (no
/// bucket sweeps them); returns how many took it.
pub(crate) fn deliver_group(group: &[Arc<Outbox>], push: &Push, metrics: &Metrics) -> u64 {
    let mut written = Written::default();
    let mut sent = 0;
    for outbox in group {
        match outbox.deliver(push) {
            Ok(flush) => {
                sent += 1;
                if flush {
                    written.add(outbox.flush());
                }
            }
            Err(Rejected::Overflow | Rejected::Closed) => {}
        }
    }
    written.record(metrics);
    sent
}

/// Pushes written straight to sockets by one step of a sweep, counted once
/// for the step rather than once per connection: the metrics are shared by
/// every bucket, and a lock per connection would be a cost of its own.
#[derive(Default)]
struct Written {
    packets: usize,
    oldest: Option<Instant>,
}

impl Written {
    /// Counts what one flush wrote.
    fn add(&mut self, (packets, oldest): (usize, Option<Instant>)) {
        self.packets += packets;
        self.oldest = match (self.oldest, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn record(self, metrics: &Metrics) {
        if self.packets > 0 {
            metrics.written_directly(self.packets, self.oldest);
        }
    }
}

/// The typed handle of one bucket actor. Dropping the last one ends it.
#[derive(Clone, Debug)]
pub(crate) struct BucketHandle {
    tx: mpsc::Sender<Command>,
}

impl BucketHandle {
    async fn send(&self, command: Command) -> Result<(), BucketGone> {
        self.tx.send(command).await.map_err(|_| BucketGone)
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, BucketGone> {
        let (tx, rx) = oneshot::channel();
        self.send(command(tx)).await?;
        rx.await.map_err(|_| BucketGone)
    }

    /// Adds a connection; returns once pushes can reach it.
    pub(crate) async fn register(&self, key: Key, member: Member) -> Result<(), BucketGone> {
        self.ask(|done| Command::Register { key, member, done })
            .await
    }

    pub(crate) async fn unregister(&self, key: Key, id: u64) -> Result<(), BucketGone> {
        self.send(Command::Unregister { key, id }).await
    }

    /// Makes `rooms` the member's rooms, in place of the ones it had.
    pub(crate) async fn set_rooms(
        &self,
        key: Key,
        id: u64,
        rooms: Vec<RoomId>,
    ) -> Result<(), BucketGone> {
        self.send(Command::SetRooms { key, id, rooms }).await
    }

    pub(crate) async fn watch(
        &self,
        key: Key,
        id: u64,
        ops: Vec<u32>,
        watch: bool,
    ) -> Result<(), BucketGone> {
        self.send(Command::Watch {
            key,
            id,
            ops,
            watch,
        })
        .await
    }
}

/// All bucket actors of a node, and which key lives in which. Cloning
/// shares the same actors.
#[derive(Clone, Debug)]
pub(crate) struct Buckets {
    handles: Arc<[BucketHandle]>,
    hasher: BuildHasherDefault<DefaultHasher>,
}

impl Buckets {
    /// Starts `count` bucket actors.
    pub(crate) fn spawn(count: usize, metrics: &Arc<Metrics>) -> Buckets {
        let handles = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(MAILBOX);
                let bucket = Bucket {
                    members: HashMap::new(),
                    rooms: HashMap::new(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(bucket.run(rx));
                BucketHandle { tx }
            })
            .collect();
        Buckets {
            handles,
            hasher: BuildHasherDefault::default(),
        }
    }

    fn index(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % self.handles.len() as u64) as usize
    }

    /// The bucket that owns `key`.
    pub(crate) fn for_key(&self, key: &str) -> &BucketHandle {
        &self.handles[self.index(key)]
    }

    /// Pushes to keys, each its push: one command per bucket concerned.
    pub(crate) async fn push_keys(
        &self,
        targets: impl IntoIterator<Item = (Key, Push)>,
        filter: Option<u32>,
    ) -> Result<(), BucketGone> {
        let mut by_bucket: Vec<Vec<(Key, Push)>> = vec![Vec::new(); self.handles.len()];
        for (key, push) in targets {
            by_bucket[self.index(&key)].push((key, push));
        }
        for (handle, targets) in self.handles.iter().zip(by_bucket) {
            if !targets.is_empty() {
                handle.send(Command::PushKeys { targets, filter }).await?;
            }
        }
        Ok(())
    }

    /// Pushes `push` to every member of `room`.
    pub(crate) async fn push_room(&self, room: RoomId, push: &Push) -> Result<(), BucketGone> {
        for handle in self.handles.iter() {
            handle
                .send(Command::PushRoom {
                    room: room.clone(),
                    push: push.clone(),
                })
                .await?;
        }
        Ok(())
    }

    /// Pushes `push` to every connection that accepts `filter` (all, if none).
    pub(crate) async fn broadcast(
        &self,
        push: &Push,
        filter: Option<u32>,
    ) -> Result<(), BucketGone> {
        for handle in self.handles.iter() {
            handle
                .send(Command::Broadcast {
                    push: push.clone(),
                    filter,
                })
                .await?;
        }
        Ok(())
    }

    /// The outboxes of every connection that accepts `filter`, for a paced
    /// broadcast that must not hold the buckets while it runs.
    pub(crate) async fn select(&self, filter: Option<u32>) -> Result<Vec<Arc<Outbox>>, BucketGone> {
        let mut all = Vec::new();
        for handle in self.handles.iter() {
            all.extend(
                handle
                    .ask(|reply| Command::Select { filter, reply })
                    .await?,
            );
        }
        Ok(all)
    }

    /// Every session on this node, as `(mid, key)`.
    pub(crate) async fn sessions(&self) -> Result<Vec<(i64, String)>, BucketGone> {
        let mut all = Vec::new();
        for handle in self.handles.iter() {
            all.extend(handle.ask(|reply| Command::Sessions { reply }).await?);
        }
        Ok(all)
    }

    /// The devices holding `keys` here (keys not here are left out).
    pub(crate) async fn devices(&self, keys: Vec<Key>) -> Result<Vec<Device>, BucketGone> {
        let mut by_bucket: Vec<Vec<Key>> = vec![Vec::new(); self.handles.len()];
        for key in keys {
            by_bucket[self.index(&key)].push(key);
        }
        let mut devices = Vec::new();
        for (handle, keys) in self.handles.iter().zip(by_bucket) {
            if !keys.is_empty() {
                devices.extend(handle.ask(|reply| Command::Devices { keys, reply }).await?);
            }
        }
        Ok(devices)
    }

    /// A room's connections here, and its distinct users, at most `limit`
    /// (the bool: there are more).
    pub(crate) async fn members(
        &self,
        room: RoomId,
        limit: usize,
    ) -> Result<(usize, Vec<i64>, bool), BucketGone> {
        let mut online = 0;
        let mut mids = Vec::new();
        for handle in self.handles.iter() {
            let room = room.clone();
            let (count, some) = handle
                .ask(|reply| Command::Members { room, limit, reply })
                .await?;
            online += count;
            mids.extend(some);
        }
        mids.sort_unstable();
        mids.dedup();
        let truncated = mids.len() > limit;
        mids.truncate(limit);
        Ok((online, mids, truncated))
    }

    /// Members per room on this node: every room with members, or `only`
    /// these (0 for one with none).
    pub(crate) async fn room_counts(
        &self,
        only: Option<Arc<[RoomId]>>,
    ) -> Result<HashMap<RoomId, usize>, BucketGone> {
        let mut total: HashMap<RoomId, usize> = HashMap::new();
        for handle in self.handles.iter() {
            let only = only.clone();
            for (room, count) in handle
                .ask(|reply| Command::RoomCounts { only, reply })
                .await?
            {
                *total.entry(room).or_default() += count;
            }
        }
        Ok(total)
    }
}
