//! The logic node's HTTP API (DESIGN.md section 4): im-cloud and goim style
//! push routes, online counts, nodes, health and metrics. Every answer is
//! `{"code":0,"message":"ok","data":...}` or an error with a real status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::DEVELOPMENT_SECRET;
use crate::node::Node;
use crate::nodes::nodes_advice;
use crate::push::{Message, PushError};
use crate::session::StoreError;
use crate::verifier::{Claims, Jwt};

pub(crate) async fn serve(listener: TcpListener, node: Arc<Node>) -> std::io::Result<()> {
    let stop = node.stop.clone();
    let limit = node.config.max_push_body;
    // Backend routes need the API key; nodes, health and metrics are for
    // clients, balancers and scrapers.
    let backend = Router::new()
        .route("/im/push/{kind}", post(push_im))
        .route("/goim/push/{kind}", post(push_goim))
        .route("/{style}/online/top", get(online_top))
        .route("/{style}/online/room", get(online_room))
        .route("/{style}/online/total", get(online_total))
        .route_layer(middleware::from_fn_with_state(node.clone(), require_key));
    let app = Router::new()
        .merge(backend)
        .route("/im/dev/token", get(dev_token))
        .route("/{style}/nodes", get(nodes))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::map_response_with_state(
            node.clone(),
            count_refusals,
        ))
        .layer(cors(&node.config.cors_origins))
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// Lets the configured web origins (the demo page) call the API from a
/// browser; with none configured, no CORS headers are sent at all.
fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        // `validate` has checked every origin parses.
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
}

/// Counts push bodies refused by `max_push_body` (axum answers them 413).
async fn count_refusals(State(node): State<Arc<Node>>, response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        node.metrics.limit_hit("push_body");
    }
    response
}

/// Refuses backend calls without the API key (401).
async fn require_key(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if node.api_key.accepts(presented) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key: send Authorization: Bearer <api_key>",
        )
        .into_response()
    }
}

/// An API error: its HTTP status, and a message that says what to fix.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.status.as_u16(), "message": self.message, "data": null});
        (self.status, Json(body)).into_response()
    }
}

impl From<PushError> for ApiError {
    fn from(err: PushError) -> Self {
        let status = match err {
            PushError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PushError::Store(_) | PushError::NoCloudReachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
    }
}

fn ok(data: impl Serialize) -> Json<Value> {
    Json(json!({"code": 0, "message": "ok", "data": data}))
}

/// Request parameters from the query string and, for im-cloud style
/// routes, a form or JSON body. Lists may repeat a name (`keys=a&keys=b`),
/// use PHP brackets (`keys[]=a`) or commas (`keys=a,b`).
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn from_query(query: Option<&str>) -> Params {
        let mut params = Params::default();
        params.add_form(query.unwrap_or("").as_bytes());
        params
    }

    fn add_form(&mut self, form: &[u8]) {
        for (name, value) in form_urlencoded::parse(form) {
            let name = name.trim_end_matches("[]").to_owned();
            self.0.push((name, value.into_owned()));
        }
    }

    fn add_json(&mut self, body: &[u8]) -> Result<(), ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad(format!("body is not JSON: {err}")))?;
        let Value::Object(fields) = value else {
            return Err(ApiError::bad("JSON body must be an object"));
        };
        for (name, value) in fields {
            let values = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            for value in values {
                let text = match value {
                    Value::String(text) => text,
                    Value::Null => continue,
                    // A structured msg travels as its JSON text.
                    other => other.to_string(),
                };
                self.0.push((name.clone(), text));
            }
        }
        Ok(())
    }

    fn first(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.first(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| ApiError::bad(format!("{name} {v:?} is not a number")))
            })
            .transpose()
    }

    fn mids(&self) -> Result<Vec<i64>, ApiError> {
        self.list("mids")
            .iter()
            .map(|mid| {
                mid.parse()
                    .map_err(|_| ApiError::bad(format!("mid {mid:?} is not a number")))
            })
            .collect()
    }

    /// The required `type` of the online routes.
    fn room_type(&self) -> Result<&str, ApiError> {
        self.first("type")
            .ok_or_else(|| ApiError::bad("type is required"))
    }

    /// `type` + `room` -> `type://room`; a full `type://id` room is taken as is.
    fn room(&self) -> Result<String, ApiError> {
        let room = self.first("room").unwrap_or("");
        if room.contains("://") {
            return Ok(room.to_owned());
        }
        match (self.first("type"), room) {
            (Some(kind), room) if !room.is_empty() => Ok(format!("{kind}://{room}")),
            _ => Err(ApiError::bad("type and room are required")),
        }
    }
}

async fn push(
    node: &Node,
    kind: &str,
    params: &Params,
    msg: Bytes,
) -> Result<Json<Value>, ApiError> {
    let message = Message::new(params.number("operation")?, msg)?;
    let delivered = match kind {
        "keys" => node.push_keys(params.list("keys"), message).await?,
        "mids" => node.push_mids(params.mids()?, message).await?,
        "room" => node.push_room(params.room()?, message).await?,
        "all" => {
            let speed = params.number("speed")?.unwrap_or(0);
            node.push_all(speed, message).await?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no push by {other:?}: use keys, mids, room or all"),
            ));
        }
    };
    Ok(ok(delivered))
}

/// im-cloud style: parameters and `msg` from the query, a form or JSON.
async fn push_im(
    State(node): State<Arc<Node>>,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let mut params = Params::from_query(query.as_deref());
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if json_body || body.first() == Some(&b'{') {
        params.add_json(&body)?;
    } else {
        params.add_form(&body);
    }
    let msg = Bytes::from(params.first("msg").unwrap_or("").to_owned());
    push(&node, &kind, &params, msg).await
}

/// goim style: parameters from the query, the message is the raw body.
async fn push_goim(
    State(node): State<Arc<Node>>,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    push(&node, &kind, &Params::from_query(query.as_deref()), body).await
}

#[derive(Serialize)]
struct Top {
    room_id: String,
    count: i32,
}

/// The busiest rooms of one type (goim's `online/top`).
async fn online_top(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::from_query(query.as_deref());
    let kind = params.room_type()?;
    let limit: usize = params.number("limit")?.unwrap_or(10).min(1000);
    let prefix = format!("{kind}://");
    let online = node.store.online().await?;
    let mut top: Vec<Top> = online
        .rooms
        .into_iter()
        .filter_map(|(room, count)| {
            let id = room.strip_prefix(&prefix)?;
            Some(Top {
                room_id: id.to_owned(),
                count,
            })
        })
        .collect();
    top.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    top.truncate(limit);
    Ok(ok(top))
}

/// Counts of the named rooms of one type (goim's `online/room`).
async fn online_room(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::from_query(query.as_deref());
    let kind = params.room_type()?;
    let rooms = params.list("rooms");
    if rooms.is_empty() {
        return Err(ApiError::bad("rooms is required"));
    }
    let online = node.store.online().await?;
    let counts: HashMap<String, i32> = rooms
        .into_iter()
        .map(|room| {
            let count = online
                .rooms
                .get(&format!("{kind}://{room}"))
                .copied()
                .unwrap_or(0);
            (room, count)
        })
        .collect();
    Ok(ok(counts))
}

/// Cluster totals: connections in rooms, rooms, reporting cloud nodes.
async fn online_total(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let online = node.store.online().await?;
    Ok(ok(json!({
        "conn_count": online.servers.values().sum::<i64>(),
        "room_count": online.rooms.len(),
        "node_count": online.servers.len(),
    })))
}

async fn nodes(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    Ok(ok(nodes_advice(&node).await?))
}

/// `GET /im/dev/token?mid=&room=&accepts=`: a one-hour token signed with
/// the development secret, for the demo page and first steps. Refused (404)
/// unless logic runs with that secret, which it only does on loopback.
async fn dev_token(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    if !node.dev_tokens {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "development tokens exist only while logic uses the development secret; sign tokens in your backend",
        ));
    }
    let params = Params::from_query(query.as_deref());
    let mid: i64 = params
        .number("mid")?
        .ok_or_else(|| ApiError::bad("mid is required"))?;
    let accepts = params
        .list("accepts")
        .iter()
        .map(|op| {
            op.parse()
                .map_err(|_| ApiError::bad(format!("accepts: {op:?} is not an op")))
        })
        .collect::<Result<Vec<i32>, _>>()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let claims = Claims {
        mid: Some(mid),
        room_id: params.first("room").unwrap_or_default().to_owned(),
        platform: params.first("platform").unwrap_or("web").to_owned(),
        accepts,
        exp: now + DEV_TOKEN_TTL.as_secs(),
        ..Claims::default()
    };
    let token = Jwt::mint_hs256(DEVELOPMENT_SECRET.as_bytes(), &claims)
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
    Ok(ok(json!({ "token": token, "expires": claims.exp })))
}

/// How long a development token lasts.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(3600);

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.stop.is_cancelled() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping").into_response()
    } else {
        ok("serving").into_response()
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, imcloud_telemetry::CONTENT_TYPE)],
        node.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_accept_repeats_brackets_and_commas() {
        let params = Params::from_query(Some("keys=a&keys[]=b&keys=c,d&operation=1001"));
        assert_eq!(params.list("keys"), ["a", "b", "c", "d"]);
        assert_eq!(params.number::<i32>("operation").ok().flatten(), Some(1001));
    }

    #[test]
    fn json_bodies_keep_structured_messages_as_json_text() {
        let mut params = Params::default();
        params
            .add_json(br#"{"mids":[1,2],"msg":{"text":"hi"},"operation":1002}"#)
            .expect("json");
        assert_eq!(params.mids().ok(), Some(vec![1, 2]));
        assert_eq!(params.first("msg"), Some(r#"{"text":"hi"}"#));
        assert_eq!(params.first("operation"), Some("1002"));
    }

    #[test]
    fn rooms_come_from_type_and_room() {
        assert_eq!(
            Params::from_query(Some("type=live&room=1000"))
                .room()
                .ok()
                .as_deref(),
            Some("live://1000")
        );
        assert_eq!(
            Params::from_query(Some("room=live://7"))
                .room()
                .ok()
                .as_deref(),
            Some("live://7")
        );
        assert!(Params::from_query(Some("room=1000")).room().is_err());
        assert!(Params::from_query(Some("mids=x")).mids().is_err());
    }
}
