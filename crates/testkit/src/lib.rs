//! Test support for imcloud, shared by every crate's tests:
//!
//! - [`ConsulServer`]: a server speaking the parts of Consul's HTTP API
//!   imcloud uses (Consul cannot be installed on the build machines);
//! - [`RedisServer`]: a real redis-server on a Unix socket of its own;
//! - [`eventually`]: waiting for state that has no event to await.

mod consul;
mod eventually;
mod redis;

pub use consul::ConsulServer;
pub use eventually::eventually;
pub use redis::RedisServer;
