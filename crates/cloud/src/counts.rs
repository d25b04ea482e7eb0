//! Room counts pushed to the members who asked for them (op 22 with
//! `"count": true`): op 26 `{"room","online"}` once at the join, then each
//! time the room's cluster-wide count changes, at most once a second per
//! room. One task per node: every second it reports to logic the rooms
//! whose count here changed (and the watched ones) and gets their cluster
//! totals back in the same call, so a count moves within about two seconds
//! of a join or leave on any node, while a quiet node sends nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use imcloud_protocol::{EncodedPacket, Op, Packet, RoomId};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::bucket::Buckets;
use crate::logic::SessionLogic;
use crate::outbox::Outbox;

/// The most one room's count is told: once a second.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// The handle of the node's room count task.
#[derive(Clone, Debug)]
pub(crate) struct RoomCounts {
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
enum Command {
    Watch {
        room: RoomId,
        id: u64,
        outbox: Arc<Outbox>,
    },
    Unwatch {
        room: RoomId,
        id: u64,
    },
}

/// One watched room: who wants its count, and the count they were told.
#[derive(Default)]
struct Watched {
    members: HashMap<u64, Arc<Outbox>>,
    told: Option<u32>,
}

/// The body of op 26.
#[derive(Serialize)]
struct Count<'a> {
    room: &'a str,
    online: u32,
}

impl RoomCounts {
    /// Starts the task; it ends with `stop` or when every handle is gone.
    pub(crate) fn spawn(
        buckets: Buckets,
        logic: Arc<dyn SessionLogic>,
        stop: CancellationToken,
    ) -> RoomCounts {
        let (commands, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = run(received, buckets, logic) => {}
            }
        });
        RoomCounts { commands }
    }

    /// Connection `id` (in `room` already) gets the room's count now and
    /// whenever it changes.
    pub(crate) fn watch(&self, room: RoomId, id: u64, outbox: Arc<Outbox>) {
        let _ = self.commands.send(Command::Watch { room, id, outbox });
    }

    /// Connection `id` no longer gets `room`'s count.
    pub(crate) fn unwatch(&self, room: RoomId, id: u64) {
        let _ = self.commands.send(Command::Unwatch { room, id });
    }
}

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    buckets: Buckets,
    logic: Arc<dyn SessionLogic>,
) {
    let mut rooms: HashMap<RoomId, Watched> = HashMap::new();
    // This node's counts as logic last took them.
    let mut reported: HashMap<RoomId, usize> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Watch { room, id, outbox }) => {
                    // The newcomer is told at once (it counts itself); the
                    // others at the next tick, if the count moved.
                    let local = buckets.room_counts(Some(Arc::from([room.clone()]))).await;
                    let totals = exchange(&*logic, local.unwrap_or_default()).await;
                    let watched = rooms.entry(room.clone()).or_default();
                    if let Some(&total) = totals.get(&room) {
                        if let Some(packet) = count_packet(&room, total) {
                            let _ = outbox.push(&packet);
                        }
                        watched.told.get_or_insert(total);
                    }
                    watched.members.insert(id, outbox);
                }
                Some(Command::Unwatch { room, id }) => {
                    if let Some(watched) = rooms.get_mut(&room) {
                        watched.members.remove(&id);
                        if watched.members.is_empty() {
                            rooms.remove(&room);
                        }
                    }
                }
            },
            _ = tick.tick() => {
                let Ok(now) = buckets.room_counts(None).await else { return };
                // Changed here (a room emptied is reported as 0), or watched.
                let mut changed: HashMap<RoomId, usize> = now
                    .iter()
                    .filter(|(room, count)| reported.get(*room) != Some(*count))
                    .map(|(room, count)| (room.clone(), *count))
                    .collect();
                changed.extend(reported.keys().filter(|room| !now.contains_key(*room)).map(|room| (room.clone(), 0)));
                for room in rooms.keys() {
                    changed.entry(room.clone()).or_insert_with(|| now.get(room).copied().unwrap_or(0));
                }
                if changed.is_empty() {
                    continue;
                }
                let totals = exchange(&*logic, changed).await;
                if totals.is_empty() {
                    // Logic could not be asked: the changes go again.
                    continue;
                }
                reported = now;
                for (room, watched) in &mut rooms {
                    let Some(&total) = totals.get(room) else { continue };
                    if watched.told == Some(total) {
                        continue;
                    }
                    watched.told = Some(total);
                    let Some(packet) = count_packet(room, total) else { continue };
                    // A closed connection's outbox refuses: it drops out.
                    watched.members.retain(|_, outbox| outbox.push(&packet).is_ok());
                }
                rooms.retain(|_, watched| !watched.members.is_empty());
            }
        }
    }
}

/// Reports these counts of this node to logic and returns the rooms'
/// cluster totals (none while logic cannot be asked: the counts wait for
/// it; its outage is logged by the room count reporter).
async fn exchange(logic: &dyn SessionLogic, local: HashMap<RoomId, usize>) -> HashMap<RoomId, u32> {
    let local: HashMap<String, i32> = local
        .iter()
        .map(|(room, count)| (room.to_string(), i32::try_from(*count).unwrap_or(i32::MAX)))
        .collect();
    let Ok(totals) = logic.room_counts(local).await else {
        return HashMap::new();
    };
    totals
        .into_iter()
        .filter_map(|(room, total)| Some((RoomId::parse(&room).ok()?, u32::try_from(total).ok()?)))
        .collect()
}

/// Op 26 for `room`, encoded once for all its watchers.
fn count_packet(room: &RoomId, online: u32) -> Option<EncodedPacket> {
    let body = serde_json::to_vec(&Count { room, online }).ok()?;
    Packet::new(Op::ROOM_COUNT, 0, body).encode().ok()
}
