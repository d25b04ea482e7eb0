//! Metrics pieces both nodes share: a tower layer that counts gRPC calls by
//! method and status code and times them, and the latency buckets every
//! histogram uses (so dashboards can compare them).

mod grpc;

pub use grpc::{GrpcMetrics, GrpcMetricsLayer};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Latency buckets from 100 µs to about 3.3 s, doubling: fine enough to
/// see a sub-millisecond push path, wide enough for a stuck dependency.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 16)
}

/// A histogram with [`latency_buckets`], for `Family::new_with_constructor`.
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}
