//! Standalone mode: one logic and one cloud node in one process, wired to
//! each other, with the in-memory session store and static discovery.

use std::net::SocketAddr;

use imcloud_cloud::Cloud;
use imcloud_discovery::ServiceNode;
use imcloud_logic::Logic;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::StandaloneFile;
use crate::{cloud_listeners, logic_listeners};

/// A running standalone imcloud and the addresses it serves.
pub struct Standalone {
    cloud: Cloud,
    logic: Logic,
    /// Stops logic once the cloud node has drained, so the drained clients'
    /// disconnects still find it.
    logic_stop: CancellationToken,
    /// The WebSocket URL clients connect to.
    pub ws_url: String,
    /// The TCP address clients connect to.
    pub tcp: std::net::SocketAddr,
    /// The logic HTTP API's base URL (pushes, online counts).
    pub api_url: String,
    /// The cloud node's HTTP base URL (health, metrics).
    pub cloud_http_url: String,
}

impl Standalone {
    /// Binds every listener and starts both nodes.
    pub async fn start(
        mut file: StandaloneFile,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Standalone> {
        let cloud_listeners = cloud_listeners(&file.cloud_listen).await?;
        let logic_listeners = logic_listeners(&file.logic_listen).await?;
        let ws = cloud_listeners.ws.local_addr()?;
        let tcp = cloud_listeners.tcp.local_addr()?;
        let cloud_grpc = cloud_listeners.grpc.local_addr()?;
        let cloud_http = cloud_listeners.http.local_addr()?;
        let logic_grpc = logic_listeners.grpc.local_addr()?;
        let logic_http = logic_listeners.http.local_addr()?;

        // Each node knows the other by the addresses actually bound.
        let ws_url = format!("ws://{ws}/sub");
        file.cloud.logic_addrs = vec![logic_grpc.to_string()];
        file.logic.cloud_nodes = vec![ServiceNode {
            id: file.cloud.server_id.clone(),
            grpc: cloud_grpc.to_string(),
            ws: ws_url.clone(),
            tcp: tcp.to_string(),
            load: 0,
        }];
        // The demo page (cloud HTTP) pushes through logic's HTTP API.
        if file.cloud.demo_api_url.is_empty() && !logic_http.ip().is_unspecified() {
            file.cloud.demo_api_url = format!("http://{logic_http}");
        }
        file.logic.cors_origins.extend(page_origins(cloud_http));
        let logic_stop = CancellationToken::new();
        let logic = Logic::start(logic_listeners, file.logic, logic_stop.clone())?;
        let cloud = Cloud::start(cloud_listeners, file.cloud, shutdown)?;
        let api_url = format!("http://{logic_http}");
        let cloud_http_url = format!("http://{cloud_http}");
        info!(ws = %ws_url, tcp = %tcp, api = %api_url, page = %format!("{cloud_http_url}/"), "imcloud standalone ready");
        Ok(Standalone {
            cloud,
            logic,
            logic_stop,
            ws_url,
            tcp,
            api_url,
            cloud_http_url,
        })
    }

    /// Waits until the cloud node has drained, then stops logic.
    pub async fn wait(self) -> anyhow::Result<()> {
        let drained = self.cloud.wait().await;
        self.logic_stop.cancel();
        self.logic.wait().await?;
        Ok(drained?)
    }
}

/// The origins a browser gives the demo page served on `http`: on loopback
/// both spellings of the host; on a wildcard address none can be known (set
/// `cors_origins` by hand).
fn page_origins(http: SocketAddr) -> Vec<String> {
    let port = http.port();
    match http.ip() {
        ip if ip.is_unspecified() => Vec::new(),
        ip if ip.is_loopback() => {
            vec![format!("http://{http}"), format!("http://localhost:{port}")]
        }
        _ => vec![format!("http://{http}")],
    }
}
