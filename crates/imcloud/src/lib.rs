//! The `imcloud` binary's library half: configuration files, binding the
//! listeners, and running the cloud, logic and standalone modes. Kept out of
//! `main.rs` so tests run the very same code on 127.0.0.1:0.

pub mod config;
mod standalone;

use anyhow::Context;
use imcloud_cloud::Cloud;
use imcloud_logic::Logic;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{CloudFile, LogicFile, StandaloneFile, load};
pub use standalone::Standalone;

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
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

/// Runs a cloud node until it has drained.
pub async fn run_cloud(file: CloudFile, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = cloud_listeners(&file.listen).await?;
    Cloud::start(listeners, file.cloud, shutdown)?
        .wait()
        .await?;
    Ok(())
}

/// Runs a logic node until it stops.
pub async fn run_logic(file: LogicFile, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = logic_listeners(&file.listen).await?;
    Logic::start(listeners, file.logic, shutdown)?
        .wait()
        .await?;
    Ok(())
}

/// Runs one logic and one cloud node in this process until they stop.
pub async fn run_standalone(
    file: StandaloneFile,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Standalone::start(file, shutdown).await?.wait().await
}
