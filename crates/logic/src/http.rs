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

use imcloud_auth::ApiKey;
use imcloud_protocol::RoomId;
use tokio_util::sync::CancellationToken;

use crate::config::DEVELOPMENT_SECRET;
use crate::metrics::Metrics;
use crate::nodes::Advisor;
use crate::push::{Message, PushError, Pusher};
use crate::session::{SessionStore, StoreError};
use crate::verifier::{Claims, Jwt};

/// What the HTTP API reaches.
pub(crate) struct Api {
    pub(crate) pusher: Arc<Pusher>,
    /// Online counts.
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) advisor: Arc<Advisor>,
    pub(crate) metrics: Arc<Metrics>,
    /// Required on backend routes.
    pub(crate) api_key: ApiKey,
    /// Whether `GET /im/dev/token` mints tokens: only with the development
    /// secret, which only ever listens on loopback.
    pub(crate) dev_tokens: bool,
    pub(crate) max_push_body: usize,
    /// Cancelled when the node stops: health turns 503.
    pub(crate) stop: CancellationToken,
}

pub(crate) async fn serve(
    listener: TcpListener,
    api: Api,
    cors_origins: &[String],
) -> std::io::Result<()> {
    let api = Arc::new(api);
    let stop = api.stop.clone();
    let limit = api.max_push_body;
    // Backend routes need the API key; nodes, health and metrics are for
    // clients, balancers and scrapers.
    let backend = Router::new()
        .route("/im/push/{kind}", post(push_im))
        .route("/goim/push/{kind}", post(push_goim))
        .route("/{style}/online/top", get(online_top))
        .route("/{style}/online/room", get(online_room))
        .route("/{style}/online/total", get(online_total))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_key));
    let app = Router::new()
        .merge(backend)
        .route("/im/dev/token", get(dev_token))
        .route("/{style}/nodes", get(nodes))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::map_response_with_state(
            api.clone(),
            refuse_too_large,
        ))
        .layer(cors(cors_origins))
        .with_state(api);
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

/// Push bodies over `max_push_body`: axum's body limit refuses them in
/// plain text; they get the API's JSON answer instead, and are counted.
async fn refuse_too_large(State(api): State<Arc<Api>>, response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    api.metrics.limit_hit("push_body");
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is over max_push_body ({} bytes): send less, or raise the limit",
            api.max_push_body
        ),
    )
    .into_response()
}

/// Refuses backend calls without the API key (401).
async fn require_key(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if api.api_key.accepts(presented) {
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
    fn room(&self) -> Result<RoomId, ApiError> {
        let room = self.first("room").unwrap_or("");
        let parsed = match (self.first("type"), room) {
            (_, room) if room.contains("://") => RoomId::parse(room),
            (Some(kind), room) if !room.is_empty() => RoomId::from_parts(kind, room),
            _ => return Err(ApiError::bad("type and room are required")),
        };
        parsed.map_err(|err| ApiError::bad(err.to_string()))
    }
}

async fn push(
    pusher: &Pusher,
    kind: &str,
    params: &Params,
    msg: Bytes,
) -> Result<Json<Value>, ApiError> {
    let message = Message::new(params.number("operation")?, msg)?;
    let delivered = match kind {
        "keys" => pusher.push_keys(params.list("keys"), message).await?,
        "mids" => pusher.push_mids(params.mids()?, message).await?,
        "room" => pusher.push_room(params.room()?, message).await?,
        "all" => {
            let speed = params.number("speed")?.unwrap_or(0);
            pusher.push_all(speed, message).await?
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
    State(api): State<Arc<Api>>,
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
    push(&api.pusher, &kind, &params, msg).await
}

/// goim style: parameters from the query, the message is the raw body.
async fn push_goim(
    State(api): State<Arc<Api>>,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    push(
        &api.pusher,
        &kind,
        &Params::from_query(query.as_deref()),
        body,
    )
    .await
}

#[derive(Serialize)]
struct Top {
    room_id: String,
    count: i32,
}

/// The busiest rooms of one type (goim's `online/top`).
async fn online_top(
    State(api): State<Arc<Api>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::from_query(query.as_deref());
    let kind = params.room_type()?;
    let limit: usize = params.number("limit")?.unwrap_or(10).min(1000);
    let prefix = format!("{kind}://");
    let online = api.store.online().await?;
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
    State(api): State<Arc<Api>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::from_query(query.as_deref());
    let kind = params.room_type()?;
    let rooms = params.list("rooms");
    if rooms.is_empty() {
        return Err(ApiError::bad("rooms is required"));
    }
    let online = api.store.online().await?;
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
async fn online_total(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    let online = api.store.online().await?;
    Ok(ok(json!({
        "conn_count": online.servers.values().sum::<i64>(),
        "room_count": online.rooms.len(),
        "node_count": online.servers.len(),
    })))
}

async fn nodes(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    Ok(ok(api.advisor.advice().await?))
}

/// `GET /im/dev/token?mid=&room=&accepts=`: a one-hour token signed with
/// the development secret, for the demo page and first steps. Refused (404)
/// unless logic runs with that secret, which it only does on loopback.
async fn dev_token(
    State(api): State<Arc<Api>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    if !api.dev_tokens {
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
        room_id: match params.first("room") {
            Some(room) => RoomId::parse(room)
                .map_err(|err| ApiError::bad(err.to_string()))?
                .to_string(),
            None => String::new(),
        },
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

async fn health(State(api): State<Arc<Api>>) -> impl IntoResponse {
    if api.stop.is_cancelled() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping").into_response()
    } else {
        ok("serving").into_response()
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, imcloud_telemetry::CONTENT_TYPE)],
        api.metrics.render(),
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
        let bad = Params::from_query(Some("type=Live&room=1"))
            .room()
            .expect_err("bad type");
        assert!(bad.message.contains("room type"), "{}", bad.message);
        assert!(Params::from_query(Some("room=live://")).room().is_err());
        assert!(Params::from_query(Some("mids=x")).mids().is_err());
    }
}
