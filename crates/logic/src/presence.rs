//! Who is online, asked of the cloud nodes themselves: the session store
//! says which node holds each of a user's keys (and which nodes hold a
//! room's members), and those nodes say what each connection is now. A
//! device leaves presence the moment it disconnects, and a node that drops
//! out of discovery takes its devices with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use imcloud_proto::cloud::{DevicesReq, MembersReq};
use imcloud_protocol::RoomId;
use serde::Serialize;
use tracing::debug;

use crate::router::{Clouds, NodeResult};
use crate::session::SessionStore;
use crate::session::StoreError;

/// One connection of a user, as presence lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct OnlineDevice {
    pub(crate) key: String,
    /// The cloud node holding it.
    pub(crate) node: String,
    pub(crate) platform: String,
    pub(crate) rooms: Vec<String>,
}

/// A room's members, cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct RoomMembers {
    pub(crate) room: String,
    /// Connections in the room.
    pub(crate) online: u32,
    /// Distinct users, at most the limit asked for, in ascending order.
    pub(crate) members: Vec<i64>,
    /// There are more users than `members` lists.
    pub(crate) truncated: bool,
}

/// Answers presence questions.
pub(crate) struct Presence {
    store: Arc<dyn SessionStore>,
    clouds: Arc<Clouds>,
}

impl Presence {
    pub(crate) fn new(store: Arc<dyn SessionStore>, clouds: Arc<Clouds>) -> Self {
        Presence { store, clouds }
    }

    /// Every device of each user asked for (an empty list for a user with
    /// none); every mid asked for is a key of the answer.
    pub(crate) async fn users(
        &self,
        mids: &[i64],
    ) -> Result<BTreeMap<i64, Vec<OnlineDevice>>, StoreError> {
        let mut users: BTreeMap<i64, Vec<OnlineDevice>> =
            mids.iter().map(|mid| (*mid, Vec::new())).collect();
        let mut by_server: HashMap<String, Vec<String>> = HashMap::new();
        for route in self.store.keys_of_mids(mids).await? {
            by_server.entry(route.server).or_default().push(route.key);
        }
        let targets = self.targets(by_server);
        let results = self
            .clouds
            .fan_out(targets, |link, keys: Vec<String>| async move {
                let mut client = link.client;
                Ok(client.devices(DevicesReq { keys }).await?.into_inner())
            })
            .await;
        for NodeResult { node, outcome, .. } in results {
            let Some(reply) = answered(&node, outcome) else {
                continue;
            };
            for device in reply.devices {
                if let Some(devices) = users.get_mut(&device.mid) {
                    devices.push(OnlineDevice {
                        key: device.key,
                        node: node.clone(),
                        platform: device.platform,
                        rooms: device.rooms,
                    });
                }
            }
        }
        for devices in users.values_mut() {
            devices.sort_by(|a, b| a.key.cmp(&b.key));
        }
        Ok(users)
    }

    /// The room's connections and up to `limit` of its distinct users,
    /// from the nodes that hold its members.
    pub(crate) async fn members(
        &self,
        room: &RoomId,
        limit: u32,
    ) -> Result<RoomMembers, StoreError> {
        let servers = self.store.room_servers(room).await?;
        let targets = self.targets(servers.into_iter().map(|server| (server, ())).collect());
        let results = self
            .clouds
            .fan_out(targets, |link, ()| async move {
                let mut client = link.client;
                let request = MembersReq {
                    room_id: room.to_string(),
                    limit,
                };
                Ok(client.members(request).await?.into_inner())
            })
            .await;
        let mut online = 0u32;
        let mut truncated = false;
        let mut members = Vec::new();
        for NodeResult { node, outcome, .. } in results {
            let Some(reply) = answered(&node, outcome) else {
                continue;
            };
            online = online.saturating_add(reply.online);
            truncated |= reply.truncated;
            members.extend(reply.mids);
        }
        members.sort_unstable();
        members.dedup();
        let limit = limit as usize;
        truncated |= members.len() > limit;
        members.truncate(limit);
        Ok(RoomMembers {
            room: room.to_string(),
            online,
            members,
            truncated,
        })
    }

    /// The nodes discovery knows, each with what it is asked about; the
    /// others (gone, or not yet seen) are left out.
    fn targets<T>(
        &self,
        by_server: HashMap<String, T>,
    ) -> Vec<(imcloud_discovery::ServiceNode, T)> {
        let mut by_server = by_server;
        self.clouds
            .nodes()
            .into_iter()
            .filter_map(|node| {
                let asked = by_server.remove(&node.id)?;
                Some((node, asked))
            })
            .collect()
    }
}

/// A node's answer, or nothing when it could not be asked: its devices
/// are left out, as they will be once discovery drops it (which logs it).
fn answered<R>(node: &str, outcome: Result<R, String>) -> Option<R> {
    match outcome {
        Ok(reply) => Some(reply),
        Err(why) => {
            debug!(node, why, "presence: a cloud node did not answer");
            None
        }
    }
}
