//! The cloud node's metrics, in a registry of its own (so several nodes in
//! one test process never mix their numbers), served as Prometheus text.

use imcloud_protocol::CloseReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// What a delivery was addressed to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Delivery {
    Key,
    Room,
    Broadcast,
}

/// Counters and gauges of one cloud node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<TransportLabel, Gauge>,
    closes: Family<ReasonLabel, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    auth_ok: Counter,
    delivered: Family<KindLabel, Counter>,
    limits: Family<LimitLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imcloud_cloud");
        let connections = Family::<TransportLabel, Gauge>::default();
        let closes = Family::<ReasonLabel, Counter>::default();
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        let auth_ok = Counter::default();
        let delivered = Family::<KindLabel, Counter>::default();
        let limits = Family::<LimitLabel, Counter>::default();
        registry.register(
            "limits_hit",
            "Times a limit refused or closed a client (connections, connections_per_ip, handshake_timeout, max_body, send_queue)",
            limits.clone(),
        );
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "closes",
            "Connections closed by the server with op 6, by reason",
            closes.clone(),
        );
        registry.register("auth_ok", "Clients authenticated", auth_ok.clone());
        registry.register(
            "auth_failures",
            "Clients refused at auth, by reason",
            auth_failures.clone(),
        );
        registry.register(
            "delivered",
            "Packets queued to clients, by what they were addressed to",
            delivered.clone(),
        );
        Metrics {
            registry,
            connections,
            closes,
            auth_failures,
            auth_ok,
            delivered,
            limits,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// How many connections were closed with `reason`.
    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes
            .get_or_create(&ReasonLabel {
                reason: reason.text(),
            })
            .get()
    }

    /// Open connections over `transport` (`"tcp"` or `"ws"`).
    pub fn connections(&self, transport: &'static str) -> i64 {
        self.connections
            .get_or_create(&TransportLabel { transport })
            .get()
    }

    /// How many times `limit` was hit.
    pub fn limits_hit(&self, limit: &'static str) -> u64 {
        self.limits.get_or_create(&LimitLabel { limit }).get()
    }

    pub(crate) fn limit_hit(&self, limit: &'static str) {
        self.limits.get_or_create(&LimitLabel { limit }).inc();
    }

    pub(crate) fn connection_opened(&self, transport: &'static str) {
        self.connections
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    pub(crate) fn connection_closed(&self, transport: &'static str) {
        self.connections
            .get_or_create(&TransportLabel { transport })
            .dec();
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closes
            .get_or_create(&ReasonLabel {
                reason: reason.text(),
            })
            .inc();
    }

    pub(crate) fn auth_ok(&self) {
        self.auth_ok.inc();
    }

    pub(crate) fn auth_failed(&self, reason: CloseReason) {
        self.auth_failures
            .get_or_create(&ReasonLabel {
                reason: reason.text(),
            })
            .inc();
    }

    pub(crate) fn delivered(&self, kind: Delivery, count: u64) {
        let kind = match kind {
            Delivery::Key => "key",
            Delivery::Room => "room",
            Delivery::Broadcast => "broadcast",
        };
        self.delivered
            .get_or_create(&KindLabel { kind })
            .inc_by(count);
    }
}
