//! The cloud node's composition root: builds its parts, gives each one
//! what it uses, and runs the node's life from start to drained exit.
//! Nothing else in the crate imports it.

use std::sync::Arc;

use imcloud_protocol::{CloseBody, CloseReason};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::bucket::Buckets;
use crate::config::{CloudConfig, ConfigError};
use crate::conn::{ConnContext, ConnLimits, Shutdown};
use crate::counts::RoomCounts;
use crate::grpc::CloudService;
use crate::http::DemoPage;
use crate::listener::{Admission, Doorway, Kind, accept_loop};
use crate::logic::{self, BadLogicAddr, LogicClient, SessionLogic};
use crate::metrics::Metrics;
use crate::online::{Online, Reporter};
use crate::outbox::Outbox;
use crate::pace::paced;
use crate::ws::WsSettings;
use crate::{grpc, http, online, routes};
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

/// A running cloud node.
pub struct Cloud {
    metrics: Arc<Metrics>,
    /// Cancelled when the node starts draining (shutdown or `Close`).
    drain: CancellationToken,
    task: JoinHandle<Result<(), CloudError>>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("draining", &self.drain.is_cancelled())
            .finish_non_exhaustive()
    }
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
        let key = ApiKey::new(config.api_key.clone());
        key.guard("cloud gRPC", listeners.grpc.local_addr()?)?;
        info!(
            server_id = %config.server_id,
            tcp = %listeners.tcp.local_addr()?,
            ws = %listeners.ws.local_addr()?,
            grpc = %listeners.grpc.local_addr()?,
            http = %listeners.http.local_addr()?,
            "cloud node serving"
        );
        let metrics = Arc::new(Metrics::default());
        let logic = LogicClient::new(
            discovery.watch(LOGIC_SERVICE),
            &config.server_id,
            config.logic_timeout,
            &key,
        );
        let shutdown = Shutdown {
            stop: shutdown.child_token(),
            ..Shutdown::default()
        };
        let drain = shutdown.stop.clone();
        let parts = Parts {
            buckets: Buckets::spawn(config.bucket_count(), &metrics),
            online: Arc::new(Online::default()),
            logic,
            metrics: metrics.clone(),
            shutdown,
            key,
            config,
        };
        let task = tokio::spawn(serve(parts, listeners));
        Ok(Cloud {
            metrics,
            drain,
            task,
        })
    }

    /// The node's metrics (they outlive the node, for a last look).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Cancelled when the node starts draining: the moment to deregister.
    pub fn stopping(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Open client connections, read live (for discovery's load meta).
    pub fn load(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let metrics = self.metrics.clone();
        move || u64::try_from(metrics.connections("ws") + metrics.connections("tcp")).unwrap_or(0)
    }

    /// Starts a drain, as `Close` or a shutdown signal would.
    pub fn close(&self) {
        self.drain.cancel();
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

/// Everything a node is made of, before it is wired together.
struct Parts {
    config: CloudConfig,
    key: ApiKey,
    buckets: Buckets,
    online: Arc<Online>,
    logic: LogicClient,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

/// Tells every client to leave (op 6 `draining`), `drain_rate` per second,
/// each with a random reconnect-after hint up to `drain_jitter`, so they do
/// not all come back to the other nodes at once. Returns how many were told.
async fn tell_to_leave(config: &CloudConfig, everyone: &[Arc<Outbox>]) -> usize {
    let jitter_ms = u64::try_from(config.drain_jitter.as_millis()).unwrap_or(u64::MAX);
    let mut told = 0;
    paced(everyone, config.drain_rate, |group| {
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

/// The node's life: wire the parts, serve until stopped, then drain in
/// order: stop accepting, tell every client to reconnect elsewhere (op 6
/// `draining`), give them `drain_grace` to leave, cut the rest, finish the
/// calls to logic still in flight (Disconnects), stop the APIs.
async fn serve(parts: Parts, listeners: Listeners) -> Result<(), CloudError> {
    let Parts {
        config,
        key,
        buckets,
        online,
        logic,
        metrics,
        shutdown,
    } = parts;
    let connections = TaskTracker::new();
    let apis_stop = CancellationToken::new();
    let grpc = tokio::spawn(grpc::serve(
        listeners.grpc,
        CloudService {
            buckets: buckets.clone(),
            metrics: metrics.clone(),
            drain: shutdown.stop.clone(),
            background: shutdown.background.clone(),
        },
        key,
        apis_stop.clone(),
    ));
    let demo = config.demo_page.then(|| DemoPage {
        ws_port: listeners.ws.local_addr().map_or(0, |addr| addr.port()),
        api_url: config.demo_api_url.clone(),
    });
    let status = http::Status {
        metrics: metrics.clone(),
        draining: shutdown.stop.clone(),
    };
    let http = tokio::spawn(http::serve(listeners.http, status, demo, apis_stop.clone()));
    let report_rooms = Arc::new(Notify::new());
    let reporter = tokio::spawn(online::report(
        Reporter {
            buckets: buckets.clone(),
            logic: logic.clone(),
            online: online.clone(),
            metrics: metrics.clone(),
            interval: config.online_report_interval,
            now: report_rooms.clone(),
        },
        apis_stop.clone(),
    ));
    let routes = tokio::spawn(routes::keep(
        buckets.clone(),
        logic.clone(),
        config.logic_probe_interval,
        report_rooms,
        apis_stop.clone(),
    ));
    let doorway = Arc::new(Doorway {
        admission: Admission::new(config.max_connections, config.max_connections_per_ip),
        ws: WsSettings::from(&config),
        conns: {
            let logic: Arc<dyn SessionLogic> = Arc::new(logic);
            let counts = RoomCounts::spawn(buckets.clone(), logic.clone(), apis_stop.clone());
            Arc::new(ConnContext::new(
                ConnLimits::from(&config),
                buckets.clone(),
                logic,
                online,
                counts,
                metrics,
                shutdown.clone(),
            ))
        },
    });
    let tcp = tokio::spawn(accept_loop(
        listeners.tcp,
        Kind::Tcp,
        doorway.clone(),
        connections.clone(),
    ));
    let ws = tokio::spawn(accept_loop(
        listeners.ws,
        Kind::Ws,
        doorway,
        connections.clone(),
    ));

    shutdown.stop.cancelled().await;
    info!("cloud node draining");
    // The accept loops return on `stop`, dropping their listeners.
    tcp.await?;
    ws.await?;
    let deadline = tokio::time::Instant::now() + config.drain_grace;
    let everyone = buckets.select(None).await.unwrap_or_default();
    let told = tokio::time::timeout_at(deadline, tell_to_leave(&config, &everyone))
        .await
        .unwrap_or(0);
    drop(everyone);
    connections.close();
    if tokio::time::timeout_at(deadline, connections.wait())
        .await
        .is_err()
    {
        warn!(grace = ?config.drain_grace, "drain grace ran out; cutting the remaining connections");
        shutdown.cut.cancel();
        connections.wait().await;
    }
    // Disconnects of the clients that just left are on their way to logic.
    shutdown.background.close();
    if tokio::time::timeout(config.logic_timeout, shutdown.background.wait())
        .await
        .is_err()
    {
        warn!("calls to logic still in flight after the drain were abandoned");
    }
    info!(told, "cloud node drained");
    apis_stop.cancel();
    reporter.await?;
    routes.await?;
    http.await??;
    grpc.await??;
    Ok(())
}
