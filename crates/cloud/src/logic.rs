//! The cloud node's client of the logic nodes: every call has a deadline and
//! is balanced over the configured logic nodes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imcloud_auth::{ApiKey, KeyInterceptor};
use imcloud_discovery::ServiceNode;
use imcloud_proto::cloud::Proto;
use imcloud_proto::logic::logic_client::LogicClient;
use imcloud_proto::logic::{
    ConnectReply, ConnectReq, DisconnectReq, HeartbeatReq, OnlineReq, ReceiveReq,
};
use imcloud_protocol::Packet;
use tokio::sync::{Semaphore, watch};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::warn;

/// A logic address that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("logic address {addr:?}: {source}")]
pub struct BadLogicAddr {
    addr: String,
    source: tonic::transport::Error,
}

/// Why logic did not authenticate a client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// Logic refused the token.
    #[error("{0}")]
    Refused(String),
    /// Logic could not be asked (down, overloaded, too slow).
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Clone, Debug)]
pub(crate) struct Logic {
    client: LogicClient<Channel>,
    key: KeyInterceptor,
    server_id: String,
    timeout: Duration,
    /// Bounds the background calls (Disconnect, session renewals) in flight:
    /// 10,000 clients leaving at once must not flood logic with 10,000
    /// concurrent calls and starve the Connects of clients arriving.
    background: Arc<Semaphore>,
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

impl Logic {
    /// A client balanced over the logic nodes discovery reports, following
    /// the set as it changes: endpoints are added and removed without
    /// dropping calls in flight. Connections are made lazily, so a logic
    /// node that starts after this cloud node is found when it comes up.
    pub(crate) fn new(
        mut nodes: watch::Receiver<Vec<ServiceNode>>,
        server_id: &str,
        timeout: Duration,
        key: ApiKey,
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
        Logic {
            client: LogicClient::new(channel),
            key: key.interceptor(),
            background: Arc::new(Semaphore::new(MAX_BACKGROUND_CALLS)),
            server_id: server_id.to_owned(),
            timeout,
        }
    }

    /// A request carrying the cluster's API key.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.key.attach(tonic::Request::new(message))
    }

    /// Runs one call under the deadline; a missed deadline is `DeadlineExceeded`.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "logic did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Verifies a client's token; logic opens its session.
    pub(crate) async fn connect(
        &self,
        token: Bytes,
        cookie: String,
    ) -> Result<ConnectReply, AuthError> {
        let request = ConnectReq {
            server: self.server_id.clone(),
            cookie,
            token: token.to_vec(),
        };
        self.call(self.client.clone().connect(self.request(request)))
            .await
            .map_err(|status| match status.code() {
                Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition => AuthError::Refused(status.message().to_owned()),
                code => AuthError::Unavailable(format!("logic: {code:?}: {}", status.message())),
            })
    }

    /// Closes a client's session.
    pub(crate) async fn disconnect(&self, mid: i64, key: &str) -> Result<(), Status> {
        let _slot = self.background.acquire().await;
        let request = DisconnectReq {
            mid,
            key: key.to_owned(),
            server: self.server_id.clone(),
        };
        self.call(self.client.clone().disconnect(self.request(request)))
            .await
            .map(drop)
    }

    /// Renews a client's session.
    pub(crate) async fn heartbeat(&self, mid: i64, key: &str) -> Result<(), Status> {
        let _slot = self.background.acquire().await;
        let request = HeartbeatReq {
            mid,
            key: key.to_owned(),
            server: self.server_id.clone(),
        };
        self.call(self.client.clone().heartbeat(self.request(request)))
            .await
            .map(drop)
    }

    /// Hands a client message (op 4) to logic.
    pub(crate) async fn receive(&self, mid: i64, packet: &Packet) -> Result<(), Status> {
        let request = ReceiveReq {
            mid,
            proto: Some(Proto {
                ver: i32::from(packet.ver),
                op: packet.op.0 as i32,
                seq: packet.seq as i32,
                body: packet.body.to_vec(),
            }),
        };
        self.call(self.client.clone().receive(self.request(request)))
            .await
            .map(drop)
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
        self.call(self.client.clone().renew_online(self.request(request)))
            .await
            .map(|reply| reply.all_room_count)
    }
}
