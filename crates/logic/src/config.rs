//! The logic node's configuration: typed, defaulted, validated.

use std::time::Duration;

use imcloud_auth::Secret;
use imcloud_discovery::ServiceNode;
use serde::Deserialize;

/// Default heartbeat interval told to clients.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Default session lifetime without a renewal.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(600);
/// Default age after which a cloud node's room counts are ignored
/// (three of the cloud's 10 s report intervals).
pub const DEFAULT_ONLINE_TTL: Duration = Duration::from_secs(30);
/// Default deadline of one call to a cloud node or a webhook.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Default limit of keys or mids in one push request.
pub const DEFAULT_MAX_PUSH_TARGETS: usize = 10_000;
/// Default limit of a push request's body (message included), in bytes.
pub const DEFAULT_MAX_PUSH_BODY: usize = 1024 * 1024;

/// How client tokens are verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifierKind {
    /// goim's trusted JSON token (`{"mid":1,"room_id":"live://1",...}`):
    /// anyone can claim any user. For development only.
    #[default]
    InsecureJson,
}

/// Where sessions live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionStoreKind {
    /// In this process: one logic node.
    #[default]
    Memory,
    /// In Redis: several logic nodes share sessions and online counts.
    Redis,
}

/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Default deadline of one Redis call.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Configuration of one logic node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicConfig {
    /// This node's id.
    pub server_id: String,
    /// How client tokens are verified.
    pub verifier: VerifierKind,
    /// Heartbeat interval told to clients at auth.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A session not renewed for this long is forgotten.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// A cloud node's room counts older than this are ignored.
    #[serde(with = "humantime_serde")]
    pub online_ttl: Duration,
    /// Deadline of one call to a cloud node or to the receive webhook.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Where client messages (op 4) are POSTed; none = logged and counted only.
    pub receive_webhook: Option<String>,
    /// Most keys or mids one push request may name.
    pub max_push_targets: usize,
    /// Largest push request body, in bytes.
    pub max_push_body: usize,
    /// Where sessions live: `memory` (one logic node) or `redis`.
    pub session_store: SessionStoreKind,
    /// Redis URL (`redis://host:port/db` or `redis+unix:///path`), for `redis`.
    pub redis_url: String,
    /// Prefix of every Redis key this node writes.
    pub redis_prefix: String,
    /// Deadline of one Redis call; past it the request fails with 503.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// The cluster's API key: required from backends on the HTTP API
    /// (`Authorization: Bearer <key>`) and on the gRPC API, and sent to cloud
    /// nodes. Required when either API listens off loopback.
    pub api_key: Secret,
    /// Cloud nodes, for static discovery.
    pub cloud_nodes: Vec<ServiceNode>,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            server_id: "logic-1".to_owned(),
            verifier: VerifierKind::InsecureJson,
            heartbeat: DEFAULT_HEARTBEAT,
            session_ttl: DEFAULT_SESSION_TTL,
            online_ttl: DEFAULT_ONLINE_TTL,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            receive_webhook: None,
            max_push_targets: DEFAULT_MAX_PUSH_TARGETS,
            max_push_body: DEFAULT_MAX_PUSH_BODY,
            session_store: SessionStoreKind::Memory,
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            redis_prefix: String::new(),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            api_key: Secret::default(),
            cloud_nodes: vec![ServiceNode {
                id: "cloud-1".to_owned(),
                grpc: "127.0.0.1:3109".to_owned(),
                ws: "ws://127.0.0.1:3102/sub".to_owned(),
                tcp: "127.0.0.1:3101".to_owned(),
                load: 0,
            }],
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("logic config: {field} {problem}")]
pub struct ConfigError {
    field: &'static str,
    problem: &'static str,
}

impl LogicConfig {
    /// Checks that every value can work, before anything is started.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem| Err(ConfigError { field, problem });
        if self.server_id.trim().is_empty() {
            return invalid("server_id", "must not be empty");
        }
        if self.heartbeat.as_secs() == 0 {
            return invalid("heartbeat", "must be at least one second");
        }
        if self.session_ttl < self.heartbeat * 4 {
            return invalid("session_ttl", "must be at least four heartbeats");
        }
        for (field, value) in [
            ("online_ttl", self.online_ttl),
            ("call_timeout", self.call_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be longer than zero");
            }
        }
        if self.max_push_targets == 0 || self.max_push_body == 0 {
            return invalid("max_push_targets/max_push_body", "must be at least 1");
        }
        if self
            .cloud_nodes
            .iter()
            .any(|node| node.id.is_empty() || node.grpc.is_empty())
        {
            return invalid("cloud_nodes", "each needs an id and a grpc address");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_typos_refused() {
        LogicConfig::default().validate().expect("defaults");
        let err = toml::from_str::<LogicConfig>("heartbeet = \"1s\"").expect_err("typo");
        assert!(err.to_string().contains("heartbeet"), "{err}");
        let err =
            toml::from_str::<LogicConfig>("verifier = \"trust-me\"").expect_err("unknown verifier");
        assert!(err.to_string().contains("trust-me"), "{err}");
    }
}
