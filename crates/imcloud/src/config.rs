//! The configuration files of the three modes: where each node listens,
//! plus the node libraries' own configuration.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use imcloud_cloud::CloudConfig;
use imcloud_discovery::DiscoveryConfig;
use imcloud_logic::LogicConfig;
use serde::Deserialize;
use serde::de::DeserializeOwned;

fn addr(text: &str) -> SocketAddr {
    // Only called on the literals below.
    text.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Where a cloud node listens.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CloudListen {
    /// Clients over TCP.
    pub tcp: SocketAddr,
    /// Clients over WebSocket (`/sub`).
    pub ws: SocketAddr,
    /// The `im.cloud.Cloud` gRPC API.
    pub grpc: SocketAddr,
    /// Health and metrics.
    pub http: SocketAddr,
}

impl Default for CloudListen {
    fn default() -> Self {
        CloudListen {
            tcp: addr("0.0.0.0:3101"),
            ws: addr("0.0.0.0:3102"),
            grpc: addr("127.0.0.1:3109"),
            http: addr("0.0.0.0:3104"),
        }
    }
}

/// Where a logic node listens.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogicListen {
    /// The `im.logic.Logic` gRPC API.
    pub grpc: SocketAddr,
    /// The HTTP API.
    pub http: SocketAddr,
}

impl Default for LogicListen {
    fn default() -> Self {
        LogicListen {
            grpc: addr("127.0.0.1:3119"),
            http: addr("127.0.0.1:3111"),
        }
    }
}

/// `imcloud cloud --config cloud.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudFile {
    /// Where the node listens.
    pub listen: CloudListen,
    /// How nodes find each other (static: `cloud.logic_addrs`).
    pub discovery: DiscoveryConfig,
    /// The node itself.
    pub cloud: CloudConfig,
}

/// `imcloud logic --config logic.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicFile {
    /// Where the node listens.
    pub listen: LogicListen,
    /// How nodes find each other (static: `logic.cloud_nodes`).
    pub discovery: DiscoveryConfig,
    /// The node itself.
    pub logic: LogicConfig,
}

/// `imcloud standalone --config standalone.toml`: one logic and one cloud
/// node in one process, on loopback by default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandaloneFile {
    /// Where the cloud node listens.
    pub cloud_listen: CloudListen,
    /// Where the logic node listens.
    pub logic_listen: LogicListen,
    /// The cloud node (its `logic_addrs` are set to the logic node).
    pub cloud: CloudConfig,
    /// The logic node (its `cloud_nodes` are set to the cloud node).
    pub logic: LogicConfig,
}

impl Default for StandaloneFile {
    fn default() -> Self {
        StandaloneFile {
            cloud_listen: CloudListen {
                tcp: addr("127.0.0.1:3101"),
                ws: addr("127.0.0.1:3102"),
                grpc: addr("127.0.0.1:3109"),
                http: addr("127.0.0.1:3104"),
            },
            logic_listen: LogicListen::default(),
            cloud: CloudConfig::default(),
            logic: LogicConfig::default(),
        }
    }
}

/// Reads a TOML file; no file means the defaults.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The `[logic]` table of a logic or standalone config file (the defaults
/// without one, which are also `imcloud standalone`'s): what the helper
/// commands (`token`, `publish`) read.
pub(crate) fn logic_config(path: Option<&Path>) -> anyhow::Result<LogicConfig> {
    let Some(path) = path else {
        return Ok(LogicConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match file.get("logic") {
        Some(logic) => logic
            .clone()
            .try_into()
            .with_context(|| format!("parsing [logic] of {}", path.display())),
        None => Ok(LogicConfig::default()),
    }
}
