//! The cloud node: its shared state, and its life from start to drained exit.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use imcloud_protocol::{CloseBody, CloseReason};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bucket::Buckets;
use crate::config::{CloudConfig, ConfigError};
use crate::listener::PerIp;
use crate::listener::{Kind, accept_loop};
use crate::logic::{self, BadLogicAddr, Logic};
use crate::metrics::Metrics;
use crate::online::Online;
use crate::pace::paced;
use crate::{grpc, http, online};
use imcloud_auth::ApiKey;
use imcloud_discovery::{Discovery, LOGIC_SERVICE, ServiceNode, StaticDiscovery};

/// The sockets a cloud node serves, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// Raw TCP clients (default port 3101).
    pub tcp: TcpListener,
    /// WebSocket clients on `/sub` (default port 3102).
    pub ws: TcpListener,
    /// The `im.cloud.Cloud` gRPC service (default port 3109).
    pub grpc: TcpListener,
    /// Health and metrics (default port 3104).
    pub http: TcpListener,
}

/// Why a cloud node could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A logic address is malformed.
    #[error(transparent)]
    LogicAddr(#[from] BadLogicAddr),
    /// The gRPC API would be exposed without an API key.
    #[error(transparent)]
    Unprotected(#[from] imcloud_auth::Unprotected),
    /// A listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// A node task panicked.
    #[error("node task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// State every part of the node shares.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) config: CloudConfig,
    pub(crate) buckets: Buckets,
    pub(crate) logic: Logic,
    pub(crate) online: Online,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) next_conn_id: AtomicU64,
    /// Connection slots (`max_connections`).
    pub(crate) slots: Arc<Semaphore>,
    /// Connections per client address (`max_connections_per_ip`).
    pub(crate) per_ip: Arc<PerIp>,
    /// Cancelled when the node starts draining (shutdown or `Close`).
    pub(crate) stop: CancellationToken,
    /// Cancelled when the drain grace runs out: remaining connections are cut.
    pub(crate) cut: CancellationToken,
}

/// A running cloud node.
#[derive(Debug)]
pub struct Cloud {
    node: Arc<Node>,
    task: JoinHandle<Result<(), CloudError>>,
}

impl Cloud {
    /// Starts serving on `listeners`. The node drains and stops when
    /// `shutdown` is cancelled or a backend calls `Close`.
    /// Logic nodes are `config.logic_addrs` (static discovery).
    pub fn start(
        listeners: Listeners,
        config: CloudConfig,
        shutdown: CancellationToken,
    ) -> Result<Cloud, CloudError> {
        let logic_nodes = config
            .logic_addrs
            .iter()
            .map(|addr| {
                logic::endpoint(addr, config.logic_timeout)?;
                Ok(ServiceNode {
                    id: addr.clone(),
                    grpc: addr.clone(),
                    ws: String::new(),
                    tcp: String::new(),
                    load: 0,
                })
            })
            .collect::<Result<Vec<_>, BadLogicAddr>>()?;
        let discovery = StaticDiscovery::new().with(LOGIC_SERVICE, logic_nodes);
        Cloud::start_with(listeners, config, &discovery, shutdown)
    }

    /// Starts serving, with the logic nodes `discovery` reports.
    pub fn start_with(
        listeners: Listeners,
        config: CloudConfig,
        discovery: &dyn Discovery,
        shutdown: CancellationToken,
    ) -> Result<Cloud, CloudError> {
        config.validate()?;
        ApiKey::new(config.api_key.clone()).guard("cloud gRPC", listeners.grpc.local_addr()?)?;
        let metrics = Arc::new(Metrics::default());
        let node = Arc::new(Node {
            logic: Logic::new(
                discovery.watch(LOGIC_SERVICE),
                &config.server_id,
                config.logic_timeout,
                ApiKey::new(config.api_key.clone()),
            ),
            buckets: Buckets::spawn(config.bucket_count(), &metrics),
            online: Online::default(),
            metrics,
            next_conn_id: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            per_ip: Arc::new(PerIp::default()),
            stop: shutdown.child_token(),
            cut: CancellationToken::new(),
            config,
        });
        info!(
            server_id = %node.config.server_id,
            tcp = %listeners.tcp.local_addr()?,
            ws = %listeners.ws.local_addr()?,
            grpc = %listeners.grpc.local_addr()?,
            http = %listeners.http.local_addr()?,
            "cloud node serving"
        );
        let task = tokio::spawn(serve(node.clone(), listeners));
        Ok(Cloud { node, task })
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.node.metrics
    }

    /// Cancelled when the node starts draining: the moment to deregister.
    pub fn stopping(&self) -> CancellationToken {
        self.node.stop.clone()
    }

    /// Open client connections, read live (for discovery's load meta).
    pub fn load(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let node = self.node.clone();
        move || {
            u64::try_from(node.metrics.connections("ws") + node.metrics.connections("tcp"))
                .unwrap_or(0)
        }
    }

    /// Starts a drain, as `Close` or a shutdown signal would.
    pub fn close(&self) {
        self.node.stop.cancel();
    }

    /// Waits until the node has drained and stopped.
    pub async fn wait(self) -> Result<(), CloudError> {
        self.task.await?
    }
}

/// Runs a cloud node until it has drained and stopped.
pub async fn run(
    listeners: Listeners,
    config: CloudConfig,
    shutdown: CancellationToken,
) -> Result<(), CloudError> {
    Cloud::start(listeners, config, shutdown)?.wait().await
}

/// Tells every client to leave (op 6 `draining`), `drain_rate` per second,
/// each with a random reconnect-after hint up to `drain_jitter`, so they do
/// not all come back to the other nodes at once. Returns how many were told.
async fn tell_to_leave(node: &Node, everyone: &[Arc<crate::outbox::Outbox>]) -> usize {
    let jitter_ms = u64::try_from(node.config.drain_jitter.as_millis()).unwrap_or(u64::MAX);
    let mut told = 0;
    paced(everyone, node.config.drain_rate, |group| {
        for outbox in group {
            let mut body = CloseBody::new(CloseReason::Draining, Some("the node is shutting down"));
            body.retry_after_ms = Some(fastrand::u64(0..=jitter_ms));
            if outbox.close(body) {
                told += 1;
            }
        }
    })
    .await;
    told
}

/// The node's life: serve until stopped, then drain in order: stop
/// accepting, tell every client to reconnect elsewhere (op 6 `draining`),
/// wait for them to leave (up to `drain_grace`), cut the rest, stop the APIs.
async fn serve(node: Arc<Node>, listeners: Listeners) -> Result<(), CloudError> {
    let connections = TaskTracker::new();
    let apis_stop = CancellationToken::new();
    let grpc = tokio::spawn(grpc::serve(listeners.grpc, node.clone(), apis_stop.clone()));
    let ws_port = listeners.ws.local_addr().map_or(0, |addr| addr.port());
    let http = tokio::spawn(http::serve(
        listeners.http,
        node.clone(),
        ws_port,
        apis_stop.clone(),
    ));
    let reporter = tokio::spawn(online::report(node.clone(), apis_stop.clone()));
    let tcp = tokio::spawn(accept_loop(
        listeners.tcp,
        Kind::Tcp,
        node.clone(),
        connections.clone(),
    ));
    let ws = tokio::spawn(accept_loop(
        listeners.ws,
        Kind::Ws,
        node.clone(),
        connections.clone(),
    ));

    node.stop.cancelled().await;
    info!("cloud node draining");
    // The accept loops return on `stop`, dropping their listeners.
    tcp.await?;
    ws.await?;
    let deadline = tokio::time::Instant::now() + node.config.drain_grace;
    let everyone = node.buckets.select(None).await.unwrap_or_default();
    let told = tokio::time::timeout_at(deadline, tell_to_leave(&node, &everyone))
        .await
        .unwrap_or(0);
    connections.close();
    if tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_err()
    {
        warn!(grace = ?node.config.drain_grace, "drain grace ran out; cutting the remaining connections");
        node.cut.cancel();
        connections.wait().await;
    }
    info!(told, "cloud node drained");
    apis_stop.cancel();
    reporter.await?;
    http.await??;
    grpc.await??;
    Ok(())
}
