//! Routing pushes to cloud nodes: one gRPC client per node discovery
//! reports (each call under the endpoint's deadline, carrying the API key
//! through an interceptor), and a concurrent fan-out that says, node by
//! node, what happened.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use imcloud_auth::{ApiKey, SendKey};
use imcloud_discovery::ServiceNode;
use imcloud_proto::cloud::cloud_client::CloudClient as GrpcClient;
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A cloud node's gRPC client.
pub(crate) type CloudClient = GrpcClient<InterceptedService<Channel, SendKey>>;

/// The cloud nodes this logic node pushes to.
#[derive(Debug)]
pub(crate) struct Clouds {
    nodes: watch::Receiver<Vec<ServiceNode>>,
    /// Lazily connected clients, by gRPC address.
    clients: Mutex<HashMap<String, CloudClient>>,
    timeout: Duration,
    key: ApiKey,
}

/// What one node of a fan-out did with its call.
#[derive(Debug)]
pub(crate) struct NodeResult<T> {
    /// The node's id.
    pub(crate) node: String,
    /// What it was handed (its keys, for a push by key).
    pub(crate) handed: T,
    /// Whether it took it, or why not.
    pub(crate) outcome: Result<(), String>,
}

impl Clouds {
    pub(crate) fn new(
        nodes: watch::Receiver<Vec<ServiceNode>>,
        timeout: Duration,
        key: ApiKey,
    ) -> Self {
        Clouds {
            nodes,
            clients: Mutex::new(HashMap::new()),
            timeout,
            key,
        }
    }

    /// The cloud nodes known now.
    pub(crate) fn nodes(&self) -> Vec<ServiceNode> {
        self.nodes.borrow().clone()
    }

    fn client(&self, node: &ServiceNode) -> Result<CloudClient, String> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(&node.grpc) {
            return Ok(client.clone());
        }
        let uri = if node.grpc.contains("://") {
            node.grpc.clone()
        } else {
            format!("http://{}", node.grpc)
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|err| format!("bad address {}: {err}", node.grpc))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        let client = GrpcClient::with_interceptor(endpoint.connect_lazy(), self.key.sender());
        // Forget clients of nodes that left, so the map follows discovery.
        let live: Vec<String> = self.nodes.borrow().iter().map(|n| n.grpc.clone()).collect();
        clients.retain(|addr, _| live.contains(addr));
        clients.insert(node.grpc.clone(), client.clone());
        Ok(client)
    }

    /// Calls every target node concurrently, each under the deadline, and
    /// says what each one did. `targets` pairs a node with what it is handed.
    pub(crate) async fn fan_out<T, F, Fut>(
        &self,
        targets: Vec<(ServiceNode, T)>,
        call: F,
    ) -> Vec<NodeResult<T>>
    where
        T: Clone,
        F: Fn(CloudClient, T) -> Fut,
        Fut: Future<Output = Result<(), Status>>,
    {
        let calls = targets.into_iter().map(|(node, handed)| {
            let call = self
                .client(&node)
                .map(|client| call(client, handed.clone()));
            async move {
                let outcome = match call {
                    Ok(call) => call.await.map_err(|status| describe(&status, self.timeout)),
                    Err(err) => Err(err),
                };
                NodeResult {
                    node: node.id,
                    handed,
                    outcome,
                }
            }
        });
        join_all(calls).await
    }
}

/// A failed call in words: the code's name and the message, or the missed
/// deadline.
fn describe(status: &Status, timeout: Duration) -> String {
    let expired = std::error::Error::source(status)
        .is_some_and(|source| source.is::<tonic::TimeoutExpired>());
    if expired || status.message() == tonic::TimeoutExpired(()).to_string() {
        return format!("no answer within {timeout:?}");
    }
    format!("{}: {}", status.code().description(), status.message())
}
