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
    /// Signed JWTs (`[logic.jwt]`).
    #[default]
    Jwt,
    /// A backend decides (`[logic.token_webhook]`).
    Webhook,
    /// goim's trusted JSON token (`{"mid":1,"room_id":"live://1",...}`):
    /// anyone can claim any user. For development only; warned about.
    InsecureJson,
}

/// The HS256 secret of the shipped configuration, so that `imcloud token`
/// and `imcloud standalone` agree out of the box. A node refuses to start
/// with it anywhere but on loopback.
pub const DEVELOPMENT_SECRET: &str = "imcloud-development-secret-do-not-deploy";

/// JWT algorithms imcloud verifies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `secret`.
    #[default]
    HS256,
    /// RSA-SHA256 with `public_key_file`.
    RS256,
}

/// `[logic.jwt]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 or RS256.
    pub algorithm: JwtAlgorithm,
    /// The HS256 shared secret.
    pub secret: Secret,
    /// The RS256 public key (PEM file).
    pub public_key_file: Option<std::path::PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: Secret::new(DEVELOPMENT_SECRET),
            public_key_file: None,
            leeway: Duration::from_secs(30),
        }
    }
}

/// `[logic.token_webhook]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenWebhookConfig {
    /// The backend URL tokens are POSTed to.
    pub url: String,
    /// Deadline of one call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TokenWebhookConfig {
    fn default() -> Self {
        TokenWebhookConfig {
            url: String::new(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `[logic.ingest]`: push commands consumed from NATS JetStream.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// The NATS server (`nats://host:4222`); empty: no ingest.
    pub nats_url: String,
    /// The stream holding the commands (created when missing).
    pub stream: String,
    /// The subject commands are published on.
    pub subject: String,
    /// The durable pull consumer all logic nodes share.
    pub consumer: String,
    /// Where commands that cannot be delivered go, with the reason.
    pub dead_letter_subject: String,
    /// Attempts before a command is dead-lettered.
    pub max_deliver: i64,
    /// Delay before a command that failed for a reason that may pass
    /// (no cloud node reachable, the store down) is tried again; it doubles
    /// with each failure of the command.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// How long a command handed to a logic node may go unacknowledged
    /// before NATS gives it to another (the node died mid-command).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Commands one logic node delivers at once. Commands for the same
    /// receiver (user, key, room) still go one after another, in the order
    /// they were published.
    pub concurrency: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            nats_url: String::new(),
            stream: "IMCLOUD_PUSH".to_owned(),
            subject: "imcloud.push".to_owned(),
            consumer: "imcloud-logic".to_owned(),
            dead_letter_subject: "imcloud.push.dead".to_owned(),
            max_deliver: 5,
            retry_delay: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
            concurrency: 64,
        }
    }
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

/// Default number of messages kept per user.
pub const DEFAULT_INBOX_MAX: usize = 200;
/// Default life of a user's inbox (and sequence counter) after its last write.
pub const DEFAULT_INBOX_TTL: Duration = Duration::from_secs(72 * 3600);
/// Default time a device has to acknowledge a message before it goes to the
/// offline webhook.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a cloud node holds a new connection's user pushes, waiting
/// for its resume (op 18).
pub const DEFAULT_RESUME_WAIT: Duration = Duration::from_millis(200);

/// Configuration of one logic node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicConfig {
    /// This node's id.
    pub server_id: String,
    /// How client tokens are verified: `jwt`, `webhook` or `insecure-json`.
    pub verifier: VerifierKind,
    /// JWT settings, for `verifier = "jwt"`.
    pub jwt: JwtConfig,
    /// Webhook settings, for `verifier = "webhook"`.
    pub token_webhook: TokenWebhookConfig,
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
    /// Asked before a connection joins a room (op 22, op 12): POSTed
    /// `{"mid","key","room"}`, a 2xx lets it in, 401/403 refuses it with
    /// the answer's body as the reason. None: joins are checked only against
    /// the token's `allow_rooms`.
    pub join_webhook: Option<String>,
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
    /// Web origins (`http://host:port`) whose pages may call the HTTP API
    /// from a browser (CORS), like the demo page cloud nodes serve. Empty:
    /// no CORS headers, browsers refuse cross-origin calls.
    pub cors_origins: Vec<String>,
    /// Messages kept per user for devices that were away (the newest).
    /// Zero: no inbox; pushes by mid are neither numbered nor kept (goim).
    pub inbox_max: usize,
    /// How long a user's inbox, and its sequence numbering, lives after the
    /// last message; then numbering starts again at 1.
    #[serde(with = "humantime_serde")]
    pub inbox_ttl: Duration,
    /// A message no device of its user acknowledged (op 20) this long after
    /// it was stored goes to `offline_webhook`.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Where unacknowledged messages are POSTed (raw body; `x-imcloud-mid`,
    /// `x-imcloud-seq`, `x-imcloud-op` headers), so the backend can send a
    /// mobile notification instead. None: not tracked.
    pub offline_webhook: Option<String>,
    /// How long a cloud node holds a new connection's user pushes waiting
    /// for its resume (op 18), so a replay comes before live pushes. Cloud
    /// nodes learn it from Connect; zero: no hold.
    #[serde(with = "humantime_serde")]
    pub resume_wait: Duration,
    /// A push's idempotency key (an ingest command's `id`, the HTTP
    /// `Idempotency-Key` header, the gRPC `idempotency-key` metadata) is
    /// delivered at most once within this window, and a retry gets the first
    /// answer again; across logic nodes with the Redis store.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Push commands from NATS JetStream (off unless `nats_url` is set).
    pub ingest: IngestConfig,
    /// Cloud nodes, for static discovery.
    pub cloud_nodes: Vec<ServiceNode>,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            server_id: "logic-1".to_owned(),
            verifier: VerifierKind::Jwt,
            jwt: JwtConfig::default(),
            token_webhook: TokenWebhookConfig::default(),
            heartbeat: DEFAULT_HEARTBEAT,
            session_ttl: DEFAULT_SESSION_TTL,
            online_ttl: DEFAULT_ONLINE_TTL,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            receive_webhook: None,
            join_webhook: None,
            max_push_targets: DEFAULT_MAX_PUSH_TARGETS,
            max_push_body: DEFAULT_MAX_PUSH_BODY,
            session_store: SessionStoreKind::Memory,
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            redis_prefix: String::new(),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            api_key: Secret::default(),
            cors_origins: Vec::new(),
            inbox_max: DEFAULT_INBOX_MAX,
            inbox_ttl: DEFAULT_INBOX_TTL,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            offline_webhook: None,
            resume_wait: DEFAULT_RESUME_WAIT,
            dedupe_window: Duration::from_secs(120),
            ingest: IngestConfig::default(),
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
            ("inbox_ttl", self.inbox_ttl),
            ("ack_timeout", self.ack_timeout),
            ("dedupe_window", self.dedupe_window),
            ("ingest.ack_wait", self.ingest.ack_wait),
        ] {
            if value.is_zero() {
                return invalid(field, "must be longer than zero");
            }
        }
        if !self.ingest.nats_url.is_empty() && self.dedupe_window <= self.ingest.ack_wait {
            // A command a dead node held comes back after ack_wait: its id
            // must still be remembered then.
            return invalid("dedupe_window", "must be longer than ingest.ack_wait");
        }
        if self.ingest.concurrency == 0 {
            return invalid("ingest.concurrency", "must be at least 1");
        }
        if self.max_push_targets == 0 || self.max_push_body == 0 {
            return invalid("max_push_targets/max_push_body", "must be at least 1");
        }
        if self.cors_origins.iter().any(|origin| {
            !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
                || origin
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        }) {
            return invalid(
                "cors_origins",
                "must be origins like http://host:port (scheme, host, port; no path)",
            );
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
