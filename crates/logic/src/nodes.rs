//! Which cloud nodes a client should connect to: least loaded first, with
//! heartbeat and reconnect backoff advice.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use imcloud_proto::logic::{Backoff as ProtoBackoff, NodesReply};

use crate::router::Clouds;
use crate::session::{SessionStore, StoreError};

/// Reconnect backoff advice, in seconds (gRPC-style exponential backoff).
#[derive(Debug, Serialize)]
pub(crate) struct Backoff {
    pub(crate) base_delay: i32,
    pub(crate) max_delay: i32,
    pub(crate) factor: f64,
    pub(crate) jitter: f64,
}

/// One cloud node as clients see it.
#[derive(Debug, Serialize)]
pub(crate) struct ClientNode {
    pub(crate) id: String,
    pub(crate) ws: String,
    pub(crate) tcp: String,
    /// Its load: connections (Consul meta) or room members reported.
    pub(crate) load: i64,
}

/// The answer of `Nodes` and `GET /im/nodes`.
#[derive(Debug, Serialize)]
pub(crate) struct NodesAdvice {
    pub(crate) nodes: Vec<ClientNode>,
    pub(crate) heartbeat: i32,
    pub(crate) heartbeat_max: i32,
    pub(crate) backoff: Backoff,
}

/// Answers which cloud nodes clients should use.
pub(crate) struct Advisor {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) clouds: Arc<Clouds>,
    /// The heartbeat interval clients are told.
    pub(crate) heartbeat: Duration,
}

impl Advisor {
    /// The cloud nodes known now, least loaded first, with heartbeat and
    /// reconnect advice.
    pub(crate) async fn advice(&self) -> Result<NodesAdvice, StoreError> {
        let online = self.store.online().await?;
        let mut nodes: Vec<ClientNode> = self
            .clouds
            .nodes()
            .into_iter()
            .map(|cloud| ClientNode {
                // Discovery's live connection count when it has one (Consul
                // meta), else the room members the node last reported.
                load: match cloud.load {
                    0 => online.servers.get(&cloud.id).copied().unwrap_or(0),
                    load => i64::try_from(load).unwrap_or(i64::MAX),
                },
                id: cloud.id,
                ws: cloud.ws,
                tcp: cloud.tcp,
            })
            .collect();
        nodes.sort_by(|a, b| a.load.cmp(&b.load).then_with(|| a.id.cmp(&b.id)));
        let heartbeat = self.heartbeat.as_secs() as i32;
        Ok(NodesAdvice {
            nodes,
            heartbeat,
            // The server closes a connection silent for two heartbeats.
            heartbeat_max: 2,
            backoff: Backoff {
                base_delay: 1,
                max_delay: 60,
                factor: 1.6,
                jitter: 0.2,
            },
        })
    }
}

impl NodesAdvice {
    /// The im-cloud wire shape: `nodes` holds the WebSocket URLs, least loaded first.
    pub(crate) fn into_reply(self) -> NodesReply {
        let port = |addr: &str| {
            addr.rsplit(':')
                .next()
                .and_then(|port| port.trim_end_matches("/sub").parse::<i32>().ok())
                .unwrap_or(0)
        };
        let first = self.nodes.first();
        NodesReply {
            domain: String::new(),
            tcp_port: first.map_or(0, |n| port(&n.tcp)),
            ws_port: first.map_or(0, |n| port(&n.ws)),
            wss_port: 0,
            heartbeat: self.heartbeat,
            nodes: self.nodes.iter().map(|n| n.ws.clone()).collect(),
            backoff: Some(ProtoBackoff {
                max_delay: self.backoff.max_delay,
                base_delay: self.backoff.base_delay,
                factor: self.backoff.factor as f32,
                jitter: self.backoff.jitter as f32,
            }),
            heartbeat_max: self.heartbeat_max,
        }
    }
}
