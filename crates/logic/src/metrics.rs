//! The logic node's metrics, in a registry of its own, served as Prometheus text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Counters of one logic node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pushed: Family<KindLabel, Counter>,
    connects: Family<ResultLabel, Counter>,
    received: Counter,
    limits: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imcloud_logic");
        let pushed = Family::<KindLabel, Counter>::default();
        let connects = Family::<ResultLabel, Counter>::default();
        let received = Counter::default();
        let limits = Family::<KindLabel, Counter>::default();
        registry.register(
            "limits_hit",
            "Push requests refused by a limit (push_body, push_targets)",
            limits.clone(),
        );
        registry.register(
            "pushed",
            "Pushes handed to cloud nodes, by kind (keys: keys; room, all: nodes)",
            pushed.clone(),
        );
        registry.register(
            "connects",
            "Client auth attempts, by result",
            connects.clone(),
        );
        registry.register(
            "received",
            "Client messages (op 4) received",
            received.clone(),
        );
        Metrics {
            registry,
            pushed,
            connects,
            received,
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

    pub(crate) fn pushed(&self, kind: &'static str, count: usize) {
        self.pushed
            .get_or_create(&KindLabel { kind })
            .inc_by(count as u64);
    }

    pub(crate) fn connect(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.connects.get_or_create(&ResultLabel { result }).inc();
    }

    /// How many requests `limit` refused.
    pub fn limits_hit(&self, limit: &'static str) -> u64 {
        self.limits.get_or_create(&KindLabel { kind: limit }).get()
    }

    pub(crate) fn limit_hit(&self, limit: &'static str) {
        self.limits.get_or_create(&KindLabel { kind: limit }).inc();
    }

    pub(crate) fn received(&self) {
        self.received.inc();
    }
}
