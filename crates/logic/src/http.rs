//! The logic node's HTTP API (DESIGN.md section 4): im-cloud and goim style
//! push routes, online counts, nodes, health and metrics. Every answer is
//! `{"code":0,"message":"ok","data":...}` or an error with a real status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use imcloud_auth::ApiKey;
use imcloud_protocol::RoomId;
use tokio_util::sync::CancellationToken;

use crate::config::DEVELOPMENT_SECRET;
use crate::idempotent::Idempotent;
use crate::inbox::InboxStore;
use crate::metrics::Metrics;
use crate::nodes::Advisor;
use crate::params::{Params, PushRequest};
use crate::presence::Presence;
use crate::push::PushError;
use crate::session::{SessionStore, StoreError};
use crate::verifier::{Claims, Jwt};

/// What the HTTP API reaches.
pub(crate) struct Api {
    pub(crate) pushes: Arc<Idempotent>,
    /// Online counts.
    pub(crate) store: Arc<dyn SessionStore>,
    /// Users' kept messages.
    pub(crate) inbox: Arc<dyn InboxStore>,
    pub(crate) advisor: Arc<Advisor>,
    /// Who is online.
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Arc<Metrics>,
    /// Required on backend routes.
    pub(crate) api_key: ApiKey,
    /// Whether `GET /im/dev/token` mints tokens: only with the development
    /// secret, which only ever listens on loopback.
    pub(crate) dev_tokens: bool,
    pub(crate) max_push_body: usize,
    /// Whether an ingest is configured (health then says if it consumes).
    pub(crate) ingest: bool,
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
        .route("/{style}/push/{kind}", post(push))
        .route("/{style}/online/top", get(online_top))
        .route("/{style}/online/room", get(online_room))
        .route("/{style}/online/total", get(online_total))
        .route("/{style}/online/users", get(online_users))
        .route("/{style}/online/members", get(online_members))
        .route("/im/inbox", get(inbox))
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
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
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
            PushError::InProgress(_) => StatusCode::CONFLICT,
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

/// The request header carrying a push's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A push by key, mid, room or to everyone, im-cloud style (parameters
/// and `msg` from the query, a form or JSON) or goim style (parameters from
/// the query, the raw body as the message). With an `Idempotency-Key`, a
/// retry gets the first answer again (`Idempotent-Replayed: true`).
async fn push(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    PushRequest { target, message }: PushRequest,
) -> Result<Response, ApiError> {
    let key = match headers.get(IDEMPOTENCY_KEY).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(_)) => return Err(ApiError::bad("the Idempotency-Key is not visible ASCII")),
    };
    let answer = api.pushes.push(key, target, message).await?;
    let mut response = ok(answer.delivered).into_response();
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
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

/// `GET /im/online/users?mids=1,2,3`: every device of each user, as the
/// cloud nodes holding them say now; every mid asked for appears.
async fn online_users(
    State(api): State<Arc<Api>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::from_query(query.as_deref());
    let mids = params.mids()?;
    if mids.is_empty() {
        return Err(ApiError::bad("mids is required"));
    }
    if mids.len() > MAX_PRESENCE_MIDS {
        return Err(ApiError::bad(format!(
            "{} mids in one request; the limit is {MAX_PRESENCE_MIDS}",
            mids.len()
        )));
    }
    let users = api.presence.users(&mids).await?;
    let users: serde_json::Map<String, Value> = users
        .into_iter()
        .map(|(mid, devices)| (mid.to_string(), json!(devices)))
        .collect();
    Ok(ok(users))
}

/// `GET /im/online/members?room=type://id&limit=100`: the room's
/// connections and distinct users, cluster-wide.
async fn online_members(
    State(api): State<Arc<Api>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::from_query(query.as_deref());
    let room = params.room()?;
    let limit: u32 = params.number("limit")?.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad("limit must be 1 to 10000"));
    }
    Ok(ok(api.presence.members(&room, limit).await?))
}

/// Most users one presence request may name.
const MAX_PRESENCE_MIDS: usize = 10_000;

/// Cluster totals: connections in rooms, rooms, reporting cloud nodes.
async fn online_total(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    let online = api.store.online().await?;
    Ok(ok(json!({
        "conn_count": online.servers.values().sum::<i64>(),
        "room_count": online.rooms.len(),
        "node_count": online.servers.len(),
    })))
}

/// `GET /im/inbox?mid=&since=`: what a user's inbox keeps after `since`
/// (default 0: everything kept), bodies in base64.
async fn inbox(
    State(api): State<Arc<Api>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::from_query(query.as_deref());
    let mid: i64 = params
        .number("mid")?
        .ok_or_else(|| ApiError::bad("mid is required"))?;
    let since: u64 = params.number("since")?.unwrap_or(0);
    let kept = api.inbox.since(mid, since).await?;
    let messages: Vec<Value> = kept
        .messages
        .iter()
        .map(|kept| json!({"seq": kept.seq, "op": kept.op, "body": BASE64.encode(&kept.body)}))
        .collect();
    Ok(ok(json!({
        "mid": mid,
        "last": kept.last,
        "oldest": kept.oldest,
        "messages": messages,
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
    } else if api.ingest && !api.metrics.ingest_consuming() {
        // The APIs serve; only the ingest waits for NATS.
        ok("serving; ingest not consuming").into_response()
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
