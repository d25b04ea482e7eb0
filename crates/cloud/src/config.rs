//! The cloud node's configuration: typed, defaulted, validated.

use std::time::Duration;

use imcloud_auth::Secret;
use serde::Deserialize;

/// Default client body limit (bytes), as in goim.
pub const DEFAULT_MAX_BODY: usize = imcloud_protocol::DEFAULT_MAX_BODY;
/// Default time a client has to upgrade (WebSocket) and send its auth packet.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default heartbeat interval when logic does not say one.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Default per-connection send queue, in packets.
pub const DEFAULT_SEND_QUEUE: usize = 256;
/// Default minimum time between two session renewals of one connection.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(60);
/// Default period of the room count report to logic.
pub const DEFAULT_ONLINE_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Default period of the session store probe (logic's epoch).
pub const DEFAULT_LOGIC_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default deadline of one call to logic.
pub const DEFAULT_LOGIC_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time one write to a client may take before it counts as slow.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time clients get to leave during a drain before the rest are cut.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Default clients told to leave per second during a drain.
pub const DEFAULT_DRAIN_RATE: u32 = 2000;
/// Default longest reconnect-after hint of a drain.
pub const DEFAULT_DRAIN_JITTER: Duration = Duration::from_secs(5);
/// Default total connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default tungstenite read buffer, held by every connection for its whole
/// life (it grows to the largest frame read, usually the auth packet).
/// Client traffic is tiny (heartbeats and acks take one read of it), so a
/// small buffer keeps idle connections cheap; a larger frame is reserved
/// whole when its header arrives and read in steps of this size, which
/// costs reads only on the rare large client message. tungstenite's own
/// default is 128 KiB per connection.
pub const DEFAULT_WS_READ_BUFFER: usize = 128;

/// Rooms per connection, unless configured.
pub const DEFAULT_MAX_ROOMS: usize = 32;

/// Configuration of one cloud node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// This node's id, as logic records it in sessions. Unique in the cluster.
    pub server_id: String,
    /// Logic nodes' gRPC addresses (`host:port` or `http://host:port`) for
    /// static discovery; calls are balanced over them.
    pub logic_addrs: Vec<String>,
    /// Client -> server packet body limit, in bytes.
    pub max_body: usize,
    /// Time a client has to upgrade and send its auth packet.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Heartbeat interval used when logic's Connect reply does not give one.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Number of bucket actors; keys hash to one of them. 0 = 4 per core.
    pub buckets: usize,
    /// Per-connection send queue, in packets. A client that lets it fill is
    /// closed as a slow consumer.
    pub send_queue: usize,
    /// Rooms one connection may be in at once (its token's rooms count);
    /// a join over it is refused, and the connection goes on.
    pub max_rooms: usize,
    /// Minimum time between two session renewals (logic `Heartbeat`) of one
    /// connection. Must be well inside logic's session TTL.
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// Period of the room count report to logic (`RenewOnline`).
    #[serde(with = "humantime_serde")]
    pub online_report_interval: Duration,
    /// Period of the probe of logic's session store: when the store has
    /// lost its sessions (logic restarted, Redis back empty), every session
    /// here is registered again within about this long.
    #[serde(with = "humantime_serde")]
    pub logic_probe_interval: Duration,
    /// Deadline of one call to logic.
    #[serde(with = "humantime_serde")]
    pub logic_timeout: Duration,
    /// Time one write to a client may take; longer and it is a slow consumer.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// On shutdown, time clients get to leave before the rest are cut.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Total connections this node accepts (authenticated or not).
    pub max_connections: usize,
    /// Connections from one client IP address; 0 = no limit (the default:
    /// clients behind one NAT, and benchmarks, share few addresses).
    pub max_connections_per_ip: usize,
    /// On shutdown, clients told to leave per second (no reconnect storm).
    pub drain_rate: u32,
    /// Longest reconnect-after hint given to a drained client; each gets a
    /// random one up to this, so they come back spread out.
    #[serde(with = "humantime_serde")]
    pub drain_jitter: Duration,
    /// tungstenite read buffer per WebSocket connection, in bytes.
    pub ws_read_buffer: usize,
    /// The cluster's API key: required on this node's gRPC API and sent to
    /// logic nodes. Required when the gRPC API listens off loopback.
    pub api_key: Secret,
    /// Serve the demo page (and the JavaScript SDK it uses) at `/` on the
    /// HTTP port.
    pub demo_page: bool,
    /// The logic HTTP API the demo page pushes through; empty: port 3111 on
    /// the host the page was loaded from.
    pub demo_api_url: String,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            server_id: "cloud-1".to_owned(),
            logic_addrs: vec!["127.0.0.1:3119".to_owned()],
            max_body: DEFAULT_MAX_BODY,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            buckets: 0,
            send_queue: DEFAULT_SEND_QUEUE,
            max_rooms: DEFAULT_MAX_ROOMS,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            online_report_interval: DEFAULT_ONLINE_REPORT_INTERVAL,
            logic_probe_interval: DEFAULT_LOGIC_PROBE_INTERVAL,
            logic_timeout: DEFAULT_LOGIC_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            drain_grace: DEFAULT_DRAIN_GRACE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: 0,
            drain_rate: DEFAULT_DRAIN_RATE,
            drain_jitter: DEFAULT_DRAIN_JITTER,
            ws_read_buffer: DEFAULT_WS_READ_BUFFER,
            api_key: Secret::default(),
            demo_page: true,
            demo_api_url: String::new(),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of its range.
    #[error("cloud config: {field} {problem}")]
    Invalid {
        /// The offending key.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl CloudConfig {
    /// Checks that every value can work, before anything is started.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem| Err(ConfigError::Invalid { field, problem });
        if self.server_id.trim().is_empty() {
            return invalid("server_id", "must not be empty");
        }
        if self.max_body == 0 {
            return invalid("max_body", "must be at least 1");
        }
        if self.send_queue == 0 {
            return invalid("send_queue", "must be at least 1");
        }
        if self.drain_rate == 0 {
            return invalid("drain_rate", "must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        for (field, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("heartbeat", self.heartbeat),
            ("online_report_interval", self.online_report_interval),
            ("logic_probe_interval", self.logic_probe_interval),
            ("logic_timeout", self.logic_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be longer than zero");
            }
        }
        Ok(())
    }

    /// The number of bucket actors to run.
    pub fn bucket_count(&self) -> usize {
        if self.buckets > 0 {
            return self.buckets;
        }
        std::thread::available_parallelism().map_or(4, |n| n.get() * 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CloudConfig::default().validate().expect("defaults");
    }

    #[test]
    fn durations_are_human_readable_and_unknown_keys_refused() {
        let config: CloudConfig =
            toml::from_str("handshake_timeout = \"250ms\"\nsend_queue = 8").expect("parse");
        assert_eq!(config.handshake_timeout, Duration::from_millis(250));
        assert_eq!(config.send_queue, 8);
        let err = toml::from_str::<CloudConfig>("send_queu = 8").expect_err("typo");
        assert!(err.to_string().contains("send_queu"), "{err}");
    }

    #[test]
    fn impossible_values_are_refused_by_name() {
        let config = CloudConfig {
            send_queue: 0,
            ..CloudConfig::default()
        };
        let err = config.validate().expect_err("zero queue");
        assert!(err.to_string().contains("send_queue"), "{err}");
    }
}
