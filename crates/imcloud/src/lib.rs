//! The `imcloud` binary's library half: configuration files, binding the
//! listeners, discovery, and running the cloud, logic and standalone modes.
//! Kept out of `main.rs` so tests run the very same code on 127.0.0.1:0.

pub mod config;
mod overrides;
mod publish;
mod standalone;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use imcloud_cloud::Cloud;
use imcloud_discovery::{
    CLOUD_SERVICE, ConsulDiscovery, DiscoveryConfig, DiscoveryKind, LOGIC_SERVICE, Registration,
};
use imcloud_logic::Logic;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{CloudFile, LogicFile, StandaloneFile, load};
pub use overrides::Overrides;
pub use publish::{PublishArgs, publish};
pub use standalone::Standalone;
pub use token::{TokenArgs, mint_token};

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

async fn cloud_listeners(listen: &config::CloudListen) -> anyhow::Result<imcloud_cloud::Listeners> {
    Ok(imcloud_cloud::Listeners {
        tcp: bind(listen.tcp, "cloud TCP").await?,
        ws: bind(listen.ws, "cloud WebSocket").await?,
        grpc: bind(listen.grpc, "cloud gRPC").await?,
        http: bind(listen.http, "cloud HTTP").await?,
    })
}

async fn logic_listeners(listen: &config::LogicListen) -> anyhow::Result<imcloud_logic::Listeners> {
    Ok(imcloud_logic::Listeners {
        grpc: bind(listen.grpc, "logic gRPC").await?,
        http: bind(listen.http, "logic HTTP").await?,
    })
}

/// The host others reach a listener at: `advertise_host`, else the bound IP.
fn advertised(discovery: &DiscoveryConfig, bound: SocketAddr) -> anyhow::Result<String> {
    if !discovery.advertise_host.is_empty() {
        return Ok(discovery.advertise_host.clone());
    }
    if bound.ip().is_unspecified() {
        bail!(
            "discovery.advertise_host must be set: the node listens on {bound}, \
             which other nodes and clients cannot dial"
        );
    }
    Ok(bound.ip().to_string())
}

/// A running node and its discovery registration.
pub struct Node<N> {
    /// The node.
    pub node: N,
    /// The addresses it listens on, by listener (`tcp`, `ws`, `grpc`, `http`).
    pub addrs: std::collections::BTreeMap<&'static str, SocketAddr>,
    registration: Option<JoinHandle<()>>,
}

impl<N> Node<N> {
    /// Stops renewing the registration without deregistering, as a crash
    /// would: Consul expires the node after its TTL.
    pub fn abandon_registration(&mut self) {
        if let Some(registration) = self.registration.take() {
            registration.abort();
        }
    }
}

/// Waits for a registration task to deregister (it does once its node stops).
async fn deregistered(registration: Option<JoinHandle<()>>) {
    if let Some(registration) = registration {
        let _ = registration.await;
    }
}

/// Starts a cloud node: binds, starts, and registers it when discovery is Consul.
pub async fn start_cloud(
    file: CloudFile,
    shutdown: CancellationToken,
) -> anyhow::Result<Node<Cloud>> {
    let listeners = cloud_listeners(&file.listen).await?;
    let (grpc, ws, tcp) = (
        listeners.grpc.local_addr()?,
        listeners.ws.local_addr()?,
        listeners.tcp.local_addr()?,
    );
    let addrs = [
        ("tcp", tcp),
        ("ws", ws),
        ("grpc", grpc),
        ("http", listeners.http.local_addr()?),
    ]
    .into();
    match file.discovery.kind {
        DiscoveryKind::Static => Ok(Node {
            node: Cloud::start(listeners, file.cloud, shutdown)?,
            addrs,
            registration: None,
        }),
        DiscoveryKind::Consul => {
            let host = advertised(&file.discovery, grpc)?;
            let consul = ConsulDiscovery::new(file.discovery.consul.clone())?;
            let server_id = file.cloud.server_id.clone();
            let cloud = Cloud::start_with(listeners, file.cloud, &consul, shutdown)?;
            let registration = Registration {
                service: CLOUD_SERVICE.to_owned(),
                server_id,
                host: host.clone(),
                port: grpc.port(),
                ws: format!("ws://{host}:{}/sub", ws.port()),
                tcp: format!("{host}:{}", tcp.port()),
                load: Arc::new(cloud.load()),
            };
            let registration = consul.register(registration, cloud.stopping());
            Ok(Node {
                node: cloud,
                addrs,
                registration: Some(registration),
            })
        }
    }
}

/// Starts a logic node: binds, starts, and registers it when discovery is Consul.
pub async fn start_logic(
    file: LogicFile,
    shutdown: CancellationToken,
) -> anyhow::Result<Node<Logic>> {
    let listeners = logic_listeners(&file.listen).await?;
    let grpc = listeners.grpc.local_addr()?;
    let addrs = [("grpc", grpc), ("http", listeners.http.local_addr()?)].into();
    match file.discovery.kind {
        DiscoveryKind::Static => Ok(Node {
            node: Logic::start(listeners, file.logic, shutdown)?,
            addrs,
            registration: None,
        }),
        DiscoveryKind::Consul => {
            let host = advertised(&file.discovery, grpc)?;
            let consul = ConsulDiscovery::new(file.discovery.consul.clone())?;
            let server_id = file.logic.server_id.clone();
            let logic = Logic::start_discovering(listeners, file.logic, &consul, shutdown)?;
            let registration = Registration {
                service: LOGIC_SERVICE.to_owned(),
                server_id,
                host,
                port: grpc.port(),
                ws: String::new(),
                tcp: String::new(),
                load: Arc::new(|| 0),
            };
            let registration = consul.register(registration, logic.stopping());
            Ok(Node {
                node: logic,
                addrs,
                registration: Some(registration),
            })
        }
    }
}

/// Runs a cloud node until it has drained (and deregistered).
pub async fn run_cloud(file: CloudFile, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Node {
        node, registration, ..
    } = start_cloud(file, shutdown).await?;
    node.wait().await?;
    deregistered(registration).await;
    Ok(())
}

/// Runs a logic node until it stops (and deregisters).
pub async fn run_logic(file: LogicFile, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Node {
        node, registration, ..
    } = start_logic(file, shutdown).await?;
    node.wait().await?;
    deregistered(registration).await;
    Ok(())
}

/// Runs one logic and one cloud node in this process until they stop.
pub async fn run_standalone(
    file: StandaloneFile,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Standalone::start(file, shutdown).await?.wait().await
}
