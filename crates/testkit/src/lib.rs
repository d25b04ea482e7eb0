//! Test support for imcloud, shared by every crate's tests:
//!
//! - [`ConsulServer`]: a server speaking the parts of Consul's HTTP API
//!   imcloud uses (Consul cannot be installed on the build machines);
//! - [`RedisServer`]: a real redis-server on a Unix socket of its own;
//! - [`NatsServer`]: a real nats-server with JetStream, on a port of its own;
//! - [`eventually`]: waiting for state that has no event to await;
//! - [`fake_logic`]: a scripted logic gRPC server and a cloud node using it,
//!   for the cloud node's own tests;
//! - [`cluster`]: real logic and cloud nodes on 127.0.0.1:0 that know each
//!   other, restartable, with HTTP helpers;
//! - [`standalone`]: `imcloud standalone` in-process, and metrics scrapes.

pub mod cluster;
mod consul;
mod eventually;
pub mod fake_logic;
mod nats;
mod process;
mod redis;
pub mod standalone;

pub use consul::ConsulServer;
pub use eventually::eventually;
pub use nats::NatsServer;
pub use redis::RedisServer;
