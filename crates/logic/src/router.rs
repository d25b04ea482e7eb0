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

use crate::courier::{Courier, CourierMetrics};

/// A cloud node's gRPC client.
pub(crate) type CloudClient = GrpcClient<InterceptedService<Channel, SendKey>>;

/// The cloud nodes this logic node pushes to.
#[derive(Debug)]
pub(crate) struct Clouds {
    nodes: watch::Receiver<Vec<ServiceNode>>,
    /// Lazily connected links, by gRPC address.
    links: Mutex<HashMap<String, Link>>,
    timeout: Duration,
    key: ApiKey,
    /// What every node's courier counts.
    courier_metrics: CourierMetrics,
}

/// How logic reaches one cloud node: its gRPC client, and its courier for
/// pushes by key and to rooms (which batches them).
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) client: CloudClient,
    pub(crate) courier: Courier,
}

/// What one node of a fan-out did with its call.
#[derive(Debug)]
pub(crate) struct NodeResult<T, R = ()> {
    /// The node's id.
    pub(crate) node: String,
    /// What it was handed (its keys, for a push by key).
    pub(crate) handed: T,
    /// What it answered, or why it did not.
    pub(crate) outcome: Result<R, String>,
}

impl Clouds {
    pub(crate) fn new(
        nodes: watch::Receiver<Vec<ServiceNode>>,
        timeout: Duration,
        key: ApiKey,
        courier_metrics: CourierMetrics,
    ) -> Self {
        Clouds {
            nodes,
            links: Mutex::new(HashMap::new()),
            timeout,
            key,
            courier_metrics,
        }
    }

    /// The cloud nodes known now.
    pub(crate) fn nodes(&self) -> Vec<ServiceNode> {
        self.nodes.borrow().clone()
    }

    fn link(&self, node: &ServiceNode) -> Result<Link, String> {
        let mut links = self.links.lock();
        if let Some(link) = links.get(&node.grpc) {
            return Ok(link.clone());
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
        let courier = Courier::spawn(
            node.id.clone(),
            client.clone(),
            self.courier_metrics.clone(),
        );
        let link = Link { client, courier };
        // Forget links of nodes that left, so the map follows discovery (a
        // courier ends once its last push is answered).
        let live: Vec<String> = self.nodes.borrow().iter().map(|n| n.grpc.clone()).collect();
        links.retain(|addr, _| live.contains(addr));
        links.insert(node.grpc.clone(), link.clone());
        Ok(link)
    }

    /// Calls every target node concurrently, each under the deadline, and
    /// says what each one did. `targets` pairs a node with what it is handed.
    pub(crate) async fn fan_out<T, R, F, Fut>(
        &self,
        targets: Vec<(ServiceNode, T)>,
        call: F,
    ) -> Vec<NodeResult<T, R>>
    where
        T: Clone,
        F: Fn(Link, T) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let calls = targets.into_iter().map(|(node, handed)| {
            let call = self.link(&node).map(|link| call(link, handed.clone()));
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
