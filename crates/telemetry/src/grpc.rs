//! gRPC calls by method and status, as a tower layer on a tonic server: the
//! services stay free of bookkeeping, and every method is counted, including
//! calls an interceptor refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    /// The status code's name (`OK`, `InvalidArgument`...).
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

type HistogramFamily = Family<MethodLabel, Histogram, fn() -> Histogram>;

/// The gRPC metrics of one server.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    calls: Family<CallLabels, Counter>,
    seconds: HistogramFamily,
}

impl GrpcMetrics {
    /// Registers `grpc_calls` and `grpc_seconds` in `registry`.
    pub fn register(registry: &mut Registry) -> GrpcMetrics {
        let metrics = GrpcMetrics {
            calls: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "grpc_calls",
            "gRPC calls served, by method and status code (anything but OK is an error)",
            metrics.calls.clone(),
        );
        registry.register(
            "grpc_seconds",
            "gRPC call duration, by method",
            metrics.seconds.clone(),
        );
        metrics
    }

    /// The layer to put on a tonic server.
    pub fn layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            metrics: Arc::new(self.clone()),
        }
    }

    fn record(&self, method: String, code: Code, started: Instant) {
        self.seconds
            .get_or_create(&MethodLabel {
                method: method.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        // tonic's names, but `OK` as gRPC spells it (and dashboards match).
        let code = match code {
            Code::Ok => "OK".to_owned(),
            other => format!("{other:?}"),
        };
        self.calls.get_or_create(&CallLabels { method, code }).inc();
    }
}

/// Counts and times every call of the service it wraps.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcMetrics>,
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, B, R> Service<Request<B>> for GrpcMetricsService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // `/im.cloud.Cloud/PushMsg` -> `PushMsg`.
        let path = request.uri().path();
        let method = path.rsplit('/').next().unwrap_or(path).to_owned();
        ResponseFuture {
            inner: self.inner.call(request),
            metrics: self.metrics.clone(),
            method: Some(method),
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Records the call when the response head is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<GrpcMetrics>,
        method: Option<String>,
        started: Instant,
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(method) = this.method.take() {
            // A failed unary call is "trailers only": its grpc-status is in
            // the head. A successful one sends its status in the trailers,
            // after the body, so a head without one means OK.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .map_or(Code::Ok, |value| Code::from_bytes(value.as_bytes())),
                Err(_) => Code::Unavailable,
            };
            this.metrics.record(method, code, *this.started);
        }
        Poll::Ready(result)
    }
}
