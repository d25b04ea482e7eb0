//! The cloud node's metrics, in a registry of its own (so several nodes in
//! one test process never mix their numbers), served as Prometheus text.

use std::time::Instant;

use imcloud_protocol::CloseReason;
use imcloud_telemetry::{GrpcMetrics, latency_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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

/// The limits `limits_hit` counts.
const LIMITS: [&str; 7] = [
    "connections",
    "connections_per_ip",
    "handshake_timeout",
    "max_body",
    "send_queue",
    // Drained clients still connected when the drain grace ran out.
    "drain_grace",
    // Joins refused: the connection was in max_rooms rooms already.
    "max_rooms",
];

/// What a push was addressed to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Delivery {
    /// Connection keys (`PushMsg`).
    Key,
    /// A room (`BroadcastRoom`).
    Room,
    /// Everyone, or everyone accepting an op (`Broadcast`).
    Broadcast,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Delivery::Key => "key",
            Delivery::Room => "room",
            Delivery::Broadcast => "broadcast",
        }
    }
}

/// Counters and gauges of one cloud node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<TransportLabel, Gauge>,
    closes: Family<ReasonLabel, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    auth_ok: Counter,
    pushed: Family<KindLabel, Counter>,
    delivered: Family<KindLabel, Counter>,
    written: Counter,
    queue_depth: Histogram,
    push_latency: Histogram,
    rooms: Gauge,
    limits: Family<LimitLabel, Counter>,
    /// Resumes (op 18), by whether they were a reset.
    resumes: Family<KindLabel, Counter>,
    /// Messages replayed to resuming devices.
    replayed: Counter,
    /// gRPC calls by method and code (its layer wraps the gRPC server).
    pub(crate) grpc: GrpcMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("imcloud_cloud");
        let connections = Family::<TransportLabel, Gauge>::default();
        let closes = Family::<ReasonLabel, Counter>::default();
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        let auth_ok = Counter::default();
        let pushed = Family::<KindLabel, Counter>::default();
        let delivered = Family::<KindLabel, Counter>::default();
        let written = Counter::default();
        let queue_depth = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let push_latency = latency_histogram();
        let rooms = Gauge::default();
        let limits = Family::<LimitLabel, Counter>::default();
        let resumes = Family::<KindLabel, Counter>::default();
        let replayed = Counter::default();
        let grpc = GrpcMetrics::register(&mut registry);
        registry.register(
            "resumes",
            "Resumes (op 18) answered, by kind (resumed, reset: the device missed more than is kept)",
            resumes.clone(),
        );
        registry.register(
            "replayed",
            "Messages replayed to resuming devices",
            replayed.clone(),
        );
        for kind in ["resumed", "reset"] {
            let _ = resumes.get_or_create(&KindLabel { kind });
        }
        registry.register(
            "limits_hit",
            "Times a limit refused or closed a client, by limit",
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
            "pushed",
            "Push requests received on the gRPC API, by kind (key, room, broadcast)",
            pushed.clone(),
        );
        registry.register(
            "delivered",
            "Packets queued to clients, by what they were addressed to (key, room, broadcast)",
            delivered.clone(),
        );
        registry.register(
            "written_packets",
            "Packets written to client sockets (pushes and replies)",
            written.clone(),
        );
        registry.register(
            "send_queue_depth",
            "Packets a connection's task found queued when it woke, i.e. what its socket did not take when pushed (pushes to a socket with room are written straight from the bucket)",
            queue_depth.clone(),
        );
        registry.register(
            "push_latency_seconds",
            "From a push reaching the gRPC API to its write to the socket (the oldest push of each write, or of each burst written straight from a bucket)",
            push_latency.clone(),
        );
        registry.register(
            "rooms",
            "Rooms with at least one connection on this node (as last reported to logic)",
            rooms.clone(),
        );
        // Every known label set starts at zero, so dashboards show 0 (and
        // rate() works) before the first event instead of "no data".
        for transport in ["tcp", "ws"] {
            let _ = connections.get_or_create(&TransportLabel { transport });
        }
        for reason in CloseReason::ALL {
            let _ = closes.get_or_create(&ReasonLabel {
                reason: reason.text(),
            });
        }
        for reason in [CloseReason::AuthFailed, CloseReason::LogicUnavailable] {
            let _ = auth_failures.get_or_create(&ReasonLabel {
                reason: reason.text(),
            });
        }
        for kind in [Delivery::Key, Delivery::Room, Delivery::Broadcast] {
            let _ = pushed.get_or_create(&KindLabel { kind: kind.name() });
            let _ = delivered.get_or_create(&KindLabel { kind: kind.name() });
        }
        for limit in LIMITS {
            let _ = limits.get_or_create(&LimitLabel { limit });
        }
        Metrics {
            registry,
            connections,
            closes,
            auth_failures,
            auth_ok,
            pushed,
            delivered,
            written,
            queue_depth,
            push_latency,
            rooms,
            limits,
            resumes,
            replayed,
            grpc,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        imcloud_telemetry::render(&self.registry)
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

    /// Counts an open connection until the guard is dropped, however the
    /// connection's task ends.
    pub(crate) fn connection_open(&self, transport: &'static str) -> OpenConnection {
        let gauge = self
            .connections
            .get_or_create(&TransportLabel { transport })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
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
        self.delivered
            .get_or_create(&KindLabel { kind: kind.name() })
            .inc_by(count);
    }

    pub(crate) fn pushed(&self, kind: Delivery) {
        self.pushed
            .get_or_create(&KindLabel { kind: kind.name() })
            .inc();
    }

    /// One write of `packets`; `oldest_push` is when the oldest push among
    /// them reached the API.
    /// A connection's task wrote `packets` it had found queued.
    pub(crate) fn written(&self, packets: usize, oldest_push: Option<Instant>) {
        self.queue_depth.observe(packets as f64);
        self.written_directly(packets, oldest_push);
    }

    /// `packets` went straight to sockets, nothing queued.
    pub(crate) fn written_directly(&self, packets: usize, oldest_push: Option<Instant>) {
        self.written.inc_by(packets as u64);
        if let Some(at) = oldest_push {
            self.push_latency.observe(at.elapsed().as_secs_f64());
        }
    }

    /// Resumes answered as `kind` (`resumed`, `reset`).
    pub fn resumes(&self, kind: &'static str) -> u64 {
        self.resumes.get_or_create(&KindLabel { kind }).get()
    }

    pub(crate) fn resumed(&self, replayed: usize, reset: bool) {
        let kind = if reset { "reset" } else { "resumed" };
        self.resumes.get_or_create(&KindLabel { kind }).inc();
        self.replayed.inc_by(replayed as u64);
    }

    pub(crate) fn set_rooms(&self, rooms: usize) {
        self.rooms.set(i64::try_from(rooms).unwrap_or(i64::MAX));
    }
}

/// One open connection in the `connections` gauge; see [`Metrics::connection_open`].
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
