//! The node's own HTTP port: health (for load balancers and Kubernetes
//! readiness), Prometheus metrics, and the demo page.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::demo;
use crate::metrics::Metrics;

/// What the HTTP port reports on.
#[derive(Clone)]
pub(crate) struct Status {
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled once the node drains: health turns 503.
    pub(crate) draining: CancellationToken,
}

/// The demo page's settings: the WebSocket port it connects to and the
/// logic API it pushes through.
pub(crate) struct DemoPage {
    pub(crate) ws_port: u16,
    pub(crate) api_url: String,
}

pub(crate) async fn serve(
    listener: TcpListener,
    status: Status,
    demo: Option<DemoPage>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    if let Some(page) = demo {
        app = app.merge(demo::routes(page.ws_port, &page.api_url));
    }
    axum::serve(listener, app.with_state(status))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// 200 while serving; 503 once draining, so balancers stop sending clients.
async fn health(State(status): State<Status>) -> impl IntoResponse {
    if status.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(status): State<Status>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, imcloud_telemetry::CONTENT_TYPE)],
        status.metrics.render(),
    )
}
