//! The demo page and the JavaScript SDK, compiled into the binary so a
//! cloud node serves them with nothing else installed: open `/`, connect,
//! click Send.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every embedded file: path, content type, contents.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        HTML,
        include_str!("../../../clients/js/demo/index.html"),
    ),
    (
        "/demo.js",
        JS,
        include_str!("../../../clients/js/demo/demo.js"),
    ),
    (
        "/demo.css",
        CSS,
        include_str!("../../../clients/js/demo/demo.css"),
    ),
    (
        "/sdk/index.js",
        JS,
        include_str!("../../../clients/js/src/index.js"),
    ),
    (
        "/sdk/client.js",
        JS,
        include_str!("../../../clients/js/src/client.js"),
    ),
    (
        "/sdk/protocol.js",
        JS,
        include_str!("../../../clients/js/src/protocol.js"),
    ),
    (
        "/sdk/sequence.js",
        JS,
        include_str!("../../../clients/js/src/sequence.js"),
    ),
];

/// The routes of the page, its assets and `/demo/config.json` (where the
/// page learns the WebSocket port and logic's API address).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(ws_port: u16, api_url: &str) -> Router<S> {
    let config = json!({
        "ws_port": ws_port,
        "api_url": (!api_url.is_empty()).then_some(api_url),
    });
    let mut router = Router::new().route(
        "/demo/config.json",
        get(move || async move { Json(config) }),
    );
    // Browsers ask for it; a 404 would be the page's only error.
    router = router.route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }));
    for (path, content_type, body) in FILES {
        router =
            router.route(
                path,
                get(move || async move {
                    ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
                }),
            );
    }
    router
}
