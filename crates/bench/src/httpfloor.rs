//! The floor for push requests over HTTP: the same HTTP stack as logic
//! (axum on hyper, on the multi-threaded runtime) answering the same
//! `POST /im/push/mids` form with the same kind of JSON answer, and doing
//! nothing else — no session lookup, no delivery. Whatever imcloud's push
//! path costs comes on top of this; `scripts/bench-push.sh` runs wrk
//! against both so the ratio is measured, not assumed.

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use tokio::net::TcpListener;

/// Serves the floor on `listener` until the process is killed.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let app = Router::new().route("/im/push/mids", post(push));
    axum::serve(listener, app).await
}

/// Parses the form as logic does and answers as logic does; a request
/// naming no user is refused, so wrk's non-2xx count would show a script
/// that sends nothing.
async fn push(body: Bytes) -> impl IntoResponse {
    let named = form_urlencoded::parse(&body)
        .filter(|(name, _)| name == "mids")
        .flat_map(|(_, value)| {
            value
                .split(',')
                .filter_map(|mid| mid.trim().parse::<i64>().ok())
                .collect::<Vec<_>>()
        })
        .count();
    let status = if named == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"code":0,"message":"ok"}"#,
    )
}
