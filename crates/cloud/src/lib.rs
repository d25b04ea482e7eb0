//! imcloud's cloud node: accepts WebSocket (`/sub`) and TCP clients,
//! authenticates each through a logic node, keeps connections in bucket
//! actors, delivers pushes, and serves the `im.cloud.Cloud` gRPC API.
//!
//! [`run`] takes already-bound listeners and a shutdown token, so tests bind
//! `127.0.0.1:0` and read the addresses back.

mod bucket;
pub mod config;
mod conn;
mod counts;
mod demo;
mod grpc;
mod http;
mod listener;
mod logic;
mod metrics;
mod node;
mod online;
mod outbox;
mod pace;
mod routes;
mod silence;
mod transport;
mod wire;
mod ws;

pub use config::{CloudConfig, ConfigError};
pub use logic::BadLogicAddr;
pub use metrics::Metrics;
pub use node::{Cloud, CloudError, Listeners, run};
