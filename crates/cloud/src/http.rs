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
use crate::node::Node;

pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    ws_port: u16,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    if node.config.demo_page {
        app = app.merge(demo::routes(ws_port));
    }
    let app = app.with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// 200 while serving; 503 once draining, so balancers stop sending clients.
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.stop.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, imcloud_telemetry::CONTENT_TYPE)],
        node.metrics.render(),
    )
}
