//! Routing pushes to cloud nodes: one gRPC client per node discovery
//! reports, and a concurrent fan-out with a deadline per call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::join_all;
use imcloud_auth::KeyInterceptor;
use imcloud_discovery::ServiceNode;
use imcloud_proto::cloud::cloud_client::CloudClient;
use tokio::sync::watch;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// The cloud nodes this logic node pushes to.
#[derive(Debug)]
pub(crate) struct Clouds {
    nodes: watch::Receiver<Vec<ServiceNode>>,
    /// Lazily connected clients, by gRPC address.
    clients: Mutex<HashMap<String, CloudClient<Channel>>>,
    timeout: Duration,
    /// Adds the cluster's API key to every call.
    key: KeyInterceptor,
}

/// What a fan-out achieved.
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    /// Nodes that accepted the call.
    pub(crate) reached: usize,
    /// Targets handed to the nodes that accepted (keys; 0 for room/all).
    pub(crate) targets: usize,
    /// One line per node that did not.
    pub(crate) failed: Vec<String>,
}

impl Clouds {
    pub(crate) fn new(
        nodes: watch::Receiver<Vec<ServiceNode>>,
        timeout: Duration,
        key: KeyInterceptor,
    ) -> Self {
        Clouds {
            nodes,
            clients: Mutex::new(HashMap::new()),
            timeout,
            key,
        }
    }

    /// A request carrying the cluster's API key.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.key.attach(tonic::Request::new(message))
    }

    /// The cloud nodes known now.
    pub(crate) fn nodes(&self) -> Vec<ServiceNode> {
        self.nodes.borrow().clone()
    }

    fn client(&self, node: &ServiceNode) -> Result<CloudClient<Channel>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&node.grpc) {
            return Ok(client.clone());
        }
        let uri = if node.grpc.contains("://") {
            node.grpc.clone()
        } else {
            format!("http://{}", node.grpc)
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|err| format!("{}: bad address {}: {err}", node.id, node.grpc))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        let client = CloudClient::new(endpoint.connect_lazy());
        // Forget clients of nodes that left, so the map follows discovery.
        let live: Vec<String> = self.nodes.borrow().iter().map(|n| n.grpc.clone()).collect();
        clients.retain(|addr, _| live.contains(addr));
        clients.insert(node.grpc.clone(), client.clone());
        Ok(client)
    }

    /// Calls every target node concurrently, each under the deadline.
    /// `targets` pairs a node with what it is handed and how many targets
    /// that is (keys), for the count of what was delivered.
    pub(crate) async fn fan_out<T, F, Fut>(
        &self,
        targets: Vec<(ServiceNode, T, usize)>,
        call: F,
    ) -> Fanout
    where
        F: Fn(CloudClient<Channel>, T) -> Fut,
        Fut: Future<Output = Result<(), Status>>,
    {
        let calls = targets.into_iter().map(|(node, arg, count)| {
            let client = self.client(&node);
            let call = client.map(|client| call(client, arg));
            async move {
                let result = match call {
                    Ok(call) => match tokio::time::timeout(self.timeout, call).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(status)) => Err(format!(
                            "{}: {:?}: {}",
                            node.id,
                            status.code(),
                            status.message()
                        )),
                        Err(_) => Err(format!("{}: no answer within {:?}", node.id, self.timeout)),
                    },
                    Err(err) => Err(err),
                };
                (result, count)
            }
        });
        let mut fanout = Fanout::default();
        for (result, count) in join_all(calls).await {
            match result {
                Ok(()) => {
                    fanout.reached += 1;
                    fanout.targets += count;
                }
                Err(err) => fanout.failed.push(err),
            }
        }
        fanout
    }
}
