//! The logic node's metrics, in a registry of its own, served as Prometheus text.

use imcloud_telemetry::{GrpcMetrics, latency_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::courier::CourierMetrics;

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
    /// Room joins the join webhook refused.
    joins_refused: Counter,
    received: Counter,
    /// Messages numbered and kept in users' inboxes (one per user).
    stored: Counter,
    /// Acknowledgements recorded (op 20).
    acks: Counter,
    /// Offline webhook calls, by result.
    offline: Family<ResultLabel, Counter>,
    /// Ingest commands handled, by result.
    ingest: Family<ResultLabel, Counter>,
    /// Commands waiting in the ingest consumer (its lag).
    ingest_pending: Gauge,
    /// 1 while the ingest consumes, 0 while it cannot.
    ingest_consuming: Gauge,
    /// Publish to hand-off, per ingest command.
    ingest_latency: Histogram,
    limits: Family<KindLabel, Counter>,
    /// Pushes per `Deliver` call to a cloud node (how well bursts travel
    /// together), and pushes waiting for one.
    pub(crate) courier: CourierMetrics,
    store_seconds: StoreHistograms,
    store_errors: Family<OpLabel, Counter>,
    /// gRPC calls by method and code (its layer wraps the gRPC server).
    pub(crate) grpc: GrpcMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// The session store operations timed (see `TimedStore`).
const STORE_OPS: [&str; 9] = [
    "connect",
    "disconnect",
    "renew",
    "renew_many",
    "epoch",
    "servers_of_keys",
    "keys_of_mids",
    "report_online",
    "online",
];

type StoreHistograms = Family<OpLabel, Histogram, fn() -> Histogram>;

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imcloud_logic");
        let pushed = Family::<KindLabel, Counter>::default();
        let connects = Family::<ResultLabel, Counter>::default();
        let joins_refused = Counter::default();
        let received = Counter::default();
        let stored = Counter::default();
        let acks = Counter::default();
        let offline = Family::<ResultLabel, Counter>::default();
        let ingest = Family::<ResultLabel, Counter>::default();
        let ingest_pending = Gauge::default();
        let ingest_consuming = Gauge::default();
        let ingest_latency = latency_histogram();
        let limits = Family::<KindLabel, Counter>::default();
        let courier = CourierMetrics {
            per_call: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            queued: Gauge::default(),
        };
        let store_seconds: StoreHistograms = Family::new_with_constructor(latency_histogram);
        let store_errors = Family::<OpLabel, Counter>::default();
        let grpc = GrpcMetrics::register(&mut registry);
        registry.register(
            "store_seconds",
            "Session store call duration, by operation",
            store_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Session store calls that failed, by operation",
            store_errors.clone(),
        );
        registry.register(
            "cloud_deliveries_per_call",
            "Pushes carried by one Deliver call to a cloud node",
            courier.per_call.clone(),
        );
        registry.register(
            "cloud_queued",
            "Pushes waiting for a call to their cloud node (grows while nodes answer slowly)",
            courier.queued.clone(),
        );
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
            "joins_refused",
            "Room joins the join webhook refused",
            joins_refused.clone(),
        );
        registry.register(
            "received",
            "Client messages (op 4) received",
            received.clone(),
        );
        registry.register(
            "inbox_stored",
            "Messages numbered and kept in users' inboxes (one per user)",
            stored.clone(),
        );
        registry.register(
            "acks",
            "Device acknowledgements (op 20) recorded",
            acks.clone(),
        );
        registry.register(
            "offline_webhook",
            "Unacknowledged messages POSTed to the offline webhook, by result",
            offline.clone(),
        );
        for result in ["ok", "failed"] {
            let _ = offline.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "ingest_commands",
            "Ingest commands handled, by result (delivered, duplicate, retried, dead_lettered)",
            ingest.clone(),
        );
        registry.register(
            "ingest_pending",
            "Commands waiting in the ingest consumer (lag)",
            ingest_pending.clone(),
        );
        registry.register(
            "ingest_consuming",
            "1 while the ingest consumes commands, 0 while it cannot (when configured)",
            ingest_consuming.clone(),
        );
        registry.register(
            "ingest_latency_seconds",
            "Ingest command published -> handed to the cloud nodes",
            ingest_latency.clone(),
        );
        for result in ["delivered", "duplicate", "retried", "dead_lettered"] {
            let _ = ingest.get_or_create(&ResultLabel { result });
        }
        // Known label sets start at zero (see the cloud node's metrics).
        for kind in ["keys", "mids", "room", "all"] {
            let _ = pushed.get_or_create(&KindLabel { kind });
        }
        for result in ["ok", "refused"] {
            let _ = connects.get_or_create(&ResultLabel { result });
        }
        for limit in ["push_body", "push_targets"] {
            let _ = limits.get_or_create(&KindLabel { kind: limit });
        }
        for op in STORE_OPS {
            let _ = store_errors.get_or_create(&OpLabel { op });
        }
        Metrics {
            registry,
            pushed,
            connects,
            joins_refused,
            received,
            stored,
            acks,
            offline,
            ingest,
            ingest_pending,
            ingest_consuming,
            ingest_latency,
            limits,
            courier,
            store_seconds,
            store_errors,
            grpc,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        imcloud_telemetry::render(&self.registry)
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

    pub(crate) fn join_refused(&self) {
        self.joins_refused.inc();
    }

    /// How many requests `limit` refused.
    pub fn limits_hit(&self, limit: &'static str) -> u64 {
        self.limits.get_or_create(&KindLabel { kind: limit }).get()
    }

    pub(crate) fn limit_hit(&self, limit: &'static str) {
        self.limits.get_or_create(&KindLabel { kind: limit }).inc();
    }

    pub(crate) fn stored(&self, users: usize) {
        self.stored.inc_by(users as u64);
    }

    pub(crate) fn received(&self) {
        self.received.inc();
    }

    pub(crate) fn acked(&self) {
        self.acks.inc();
    }

    pub(crate) fn ingested(&self, result: &'static str, pending: u64, latency: Option<f64>) {
        self.ingest.get_or_create(&ResultLabel { result }).inc();
        self.ingest_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if let Some(seconds) = latency {
            self.ingest_latency.observe(seconds);
        }
    }

    /// Whether the ingest is consuming (false also when not configured).
    pub fn ingest_consuming(&self) -> bool {
        self.ingest_consuming.get() == 1
    }

    pub(crate) fn set_ingest_consuming(&self, consuming: bool) {
        self.ingest_consuming.set(i64::from(consuming));
    }

    pub(crate) fn offline_posted(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.offline.get_or_create(&ResultLabel { result }).inc();
    }
}

impl Metrics {
    pub(crate) fn store_call(&self, op: &'static str, seconds: f64, ok: bool) {
        self.store_seconds
            .get_or_create(&OpLabel { op })
            .observe(seconds);
        if !ok {
            self.store_errors.get_or_create(&OpLabel { op }).inc();
        }
    }
}
