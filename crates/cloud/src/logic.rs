//! The cloud node's client of the logic nodes: every call has a deadline
//! (tower's timeout) and carries the API key (an interceptor), and is
//! balanced over the logic nodes discovery reports.
//!
//! Connections see logic only through [`SessionLogic`], the calls a
//! connection makes, so a session can be tested against a fake.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use imcloud_auth::{ApiKey, SendKey};
use imcloud_discovery::ServiceNode;
use imcloud_proto::cloud::Proto;
use imcloud_proto::logic::logic_client::LogicClient as GrpcClient;
use imcloud_proto::logic::{
    AckReq, ConnectReply, ConnectReq, DisconnectReq, HeartbeatReq, InboxReply, InboxReq, JoinReq,
    OnlineReq, PingReq, ReceiveReq, RenewSessionsReq, Session,
};
use imcloud_protocol::Packet;
use tokio::sync::{Semaphore, watch};
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tower::timeout::Timeout;
use tracing::{info, warn};

/// A logic address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("logic address {addr:?}: {source}")]
pub struct BadLogicAddr {
    addr: String,
    source: tonic::transport::Error,
}

/// Why logic did not authenticate a client, or let it join a room.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// Logic refused the token (or the join).
    #[error("{0}")]
    Refused(String),
    /// Logic could not be asked (down, overloaded, too slow).
    #[error("{0}")]
    Unavailable(String),
}

/// What a connection asks of logic over its life.
#[async_trait]
pub(crate) trait SessionLogic: Send + Sync + 'static {
    /// Verifies a client's token; logic opens its session.
    async fn connect(&self, token: Bytes, cookie: String) -> Result<ConnectReply, AuthError>;
    /// Renews a client's session.
    async fn heartbeat(&self, mid: i64, key: &str) -> Result<(), Status>;
    /// Closes a client's session.
    async fn disconnect(&self, mid: i64, key: &str) -> Result<(), Status>;
    /// Hands a client message (op 4) to logic.
    async fn receive(&self, mid: i64, packet: &Packet) -> Result<(), Status>;
    /// What the user's inbox keeps after `since`, for a resume (op 18).
    async fn inbox(&self, mid: i64, since: u64) -> Result<InboxReply, Status>;
    /// Records a device's cumulative ack (op 20); `InvalidArgument` when it
    /// is above the user's latest sequence number.
    async fn ack(&self, mid: i64, ack: u64) -> Result<(), Status>;
    /// Whether this connection may join `room` (logic's join webhook).
    async fn join(&self, mid: i64, key: &str, room: &str) -> Result<(), AuthError>;
    /// Reports some rooms' counts on this node; answers their cluster
    /// totals (for op 26).
    async fn room_counts(
        &self,
        local: HashMap<String, i32>,
    ) -> Result<HashMap<String, i32>, Status>;
}

/// Every call carries the API key and has a deadline. The deadline is the
/// client's, not only the endpoints': while no logic node is known the
/// balanced channel has no endpoint to enforce one, and a call would wait
/// for a node to appear.
type Client = GrpcClient<InterceptedService<Timeout<Channel>, SendKey>>;

/// The gRPC client of the logic nodes.
#[derive(Clone, Debug)]
pub(crate) struct LogicClient {
    client: Client,
    server_id: String,
    /// Bounds the background calls (Disconnect, session renewals) in flight:
    /// 10,000 clients leaving at once must not flood logic with 10,000
    /// concurrent calls and starve the Connects of clients arriving.
    background: Arc<Semaphore>,
    /// Renewals and disconnects failing: logged when it starts and when it
    /// ends, never once per connection.
    outage: Arc<Outage>,
}

/// Background calls to logic in flight at most.
const MAX_BACKGROUND_CALLS: usize = 64;

/// The gRPC endpoint of a logic address (`host:port` or a URI).
pub(crate) fn endpoint(addr: &str, timeout: Duration) -> Result<Endpoint, BadLogicAddr> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri)
        .map(|endpoint| endpoint.connect_timeout(timeout).tcp_nodelay(true))
        .map_err(|source| BadLogicAddr {
            addr: addr.to_owned(),
            source,
        })
}

impl LogicClient {
    /// A client balanced over the logic nodes discovery reports, following
    /// the set as it changes: endpoints are added and removed without
    /// dropping calls in flight. Connections are made lazily, so a logic
    /// node that starts after this cloud node is found when it comes up.
    pub(crate) fn new(
        mut nodes: watch::Receiver<Vec<ServiceNode>>,
        server_id: &str,
        timeout: Duration,
        key: &ApiKey,
    ) -> Self {
        let (channel, changes) = Channel::balance_channel::<String>(16);
        tokio::spawn(async move {
            let mut current: HashSet<String> = HashSet::new();
            loop {
                let wanted: HashSet<String> = nodes
                    .borrow_and_update()
                    .iter()
                    .map(|n| n.grpc.clone())
                    .collect();
                for gone in current.difference(&wanted) {
                    let _ = changes.send(Change::Remove(gone.clone())).await;
                }
                for new in wanted.difference(&current) {
                    match endpoint(new, timeout) {
                        Ok(endpoint) => {
                            let _ = changes.send(Change::Insert(new.clone(), endpoint)).await;
                        }
                        Err(err) => warn!(error = %err, "ignoring logic node"),
                    }
                }
                current = wanted;
                if nodes.changed().await.is_err() {
                    return;
                }
            }
        });
        LogicClient {
            client: GrpcClient::with_interceptor(Timeout::new(channel, timeout), key.sender()),
            background: Arc::new(Semaphore::new(MAX_BACKGROUND_CALLS)),
            server_id: server_id.to_owned(),
            outage: Arc::new(Outage::default()),
        }
    }

    /// Reports this node's room counts; returns the cluster totals.
    pub(crate) async fn renew_online(
        &self,
        room_count: HashMap<String, i32>,
    ) -> Result<HashMap<String, i32>, Status> {
        let request = OnlineReq {
            server: self.server_id.clone(),
            room_count,
        };
        let reply = self.client.clone().renew_online(request).await?;
        Ok(reply.into_inner().all_room_count)
    }

    /// The session store's epoch (see logic's `PingReply`).
    pub(crate) async fn epoch(&self) -> Result<String, Status> {
        let reply = self.client.clone().ping(PingReq {}).await?;
        Ok(reply.into_inner().epoch)
    }

    /// Records these sessions as connected here, in one call.
    pub(crate) async fn renew_sessions(&self, sessions: Vec<(i64, String)>) -> Result<(), Status> {
        let request = RenewSessionsReq {
            server: self.server_id.clone(),
            sessions: sessions
                .into_iter()
                .map(|(mid, key)| Session { mid, key })
                .collect(),
        };
        self.client.clone().renew_sessions(request).await.map(drop)
    }
}

#[async_trait]
impl SessionLogic for LogicClient {
    async fn connect(&self, token: Bytes, cookie: String) -> Result<ConnectReply, AuthError> {
        let request = ConnectReq {
            server: self.server_id.clone(),
            cookie,
            token,
        };
        match self.client.clone().connect(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(auth_error(&status)),
        }
    }

    async fn heartbeat(&self, mid: i64, key: &str) -> Result<(), Status> {
        let _slot = self.background.acquire().await;
        let request = HeartbeatReq {
            mid,
            key: key.to_owned(),
            server: self.server_id.clone(),
        };
        let result = self.client.clone().heartbeat(request).await.map(drop);
        self.outage.record("session renewals", &result);
        result
    }

    async fn disconnect(&self, mid: i64, key: &str) -> Result<(), Status> {
        let _slot = self.background.acquire().await;
        let request = DisconnectReq {
            mid,
            key: key.to_owned(),
            server: self.server_id.clone(),
        };
        let result = self.client.clone().disconnect(request).await.map(drop);
        self.outage.record("disconnects", &result);
        result
    }

    async fn receive(&self, mid: i64, packet: &Packet) -> Result<(), Status> {
        let request = ReceiveReq {
            mid,
            proto: Some(Proto {
                ver: i32::from(packet.ver),
                op: packet.op.0 as i32,
                seq: packet.seq as i32,
                body: packet.body.clone(),
            }),
        };
        self.client.clone().receive(request).await.map(drop)
    }

    async fn inbox(&self, mid: i64, since: u64) -> Result<InboxReply, Status> {
        let reply = self.client.clone().inbox(InboxReq { mid, since }).await?;
        Ok(reply.into_inner())
    }

    async fn ack(&self, mid: i64, ack: u64) -> Result<(), Status> {
        let _slot = self.background.acquire().await;
        let result = self.client.clone().ack(AckReq { mid, ack }).await.map(drop);
        match &result {
            // Logic answered: the ack was the client's mistake.
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                self.outage.record("acks", &Ok::<(), Status>(()));
            }
            _ => self.outage.record("acks", &result),
        }
        result
    }

    async fn join(&self, mid: i64, key: &str, room: &str) -> Result<(), AuthError> {
        let request = JoinReq {
            mid,
            key: key.to_owned(),
            server: self.server_id.clone(),
            room: room.to_owned(),
        };
        match self.client.clone().join(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(auth_error(&status)),
        }
    }

    async fn room_counts(
        &self,
        local: HashMap<String, i32>,
    ) -> Result<HashMap<String, i32>, Status> {
        let request = OnlineReq {
            server: self.server_id.clone(),
            room_count: local,
        };
        let reply = self.client.clone().room_counts(request).await?;
        Ok(reply.into_inner().all_room_count)
    }
}

/// Refusals of the token are the client's fault; anything else means logic
/// could not answer, and the client should come back.
fn auth_error(status: &Status) -> AuthError {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition => AuthError::Refused(status.message().to_owned()),
        code => AuthError::Unavailable(format!(
            "logic: {}: {}",
            code.description(),
            status.message()
        )),
    }
}

/// Whether background calls to logic are failing, so the outage is logged
/// once when it starts and once when it ends, whatever the number of
/// connections renewing through it.
#[derive(Debug, Default)]
struct Outage {
    down: AtomicBool,
}

impl Outage {
    fn record<T>(&self, what: &'static str, result: &Result<T, Status>) {
        match result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => {
                info!(what, "calls to logic succeed again");
            }
            Ok(_) => {}
            Err(status) if !self.down.swap(true, Ordering::Relaxed) => {
                warn!(what, error = %status.message(), "calls to logic failing; sessions are kept here and renewed later");
            }
            Err(_) => {}
        }
    }
}
