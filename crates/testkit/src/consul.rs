//! A server speaking Consul's HTTP API. Consul cannot be installed on the
//! build machines, so [`ConsulServer`] implements the parts of Consul's HTTP API
//! imcloud uses, following Consul's documented behaviour:
//!
//! - `PUT /v1/agent/service/register`: a service with one TTL check, which
//!   starts `critical` (Consul's default) until passed;
//! - `PUT /v1/agent/service/deregister/<id>`, `PUT /v1/agent/check/pass/<id>`
//!   (404 for unknown ids);
//! - a check not passed within its TTL turns `critical`; one critical for
//!   `DeregisterCriticalServiceAfter` is deregistered;
//! - `GET /v1/health/service/<name>?passing`: the instances whose checks all
//!   pass, with `X-Consul-Index`; with `index` and `wait` it blocks until the
//!   index moves past `index` or `wait` elapses (Consul's blocking queries).
//!
//! [`ConsulServer::stop`] drops every connection and stops listening, as a
//! dead agent would; [`ConsulServer::start`] comes back on the same address
//! with the same state.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterBody {
    #[serde(rename = "ID")]
    id: Option<String>,
    name: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: HashMap<String, String>,
    check: Option<CheckBody>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckBody {
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
    #[serde(rename = "TTL")]
    ttl: Option<String>,
    deregister_critical_service_after: Option<String>,
    status: Option<String>,
}

#[derive(Clone, Debug)]
struct Check {
    id: String,
    ttl: Duration,
    deregister_after: Option<Duration>,
    passing: bool,
    /// When a passing check expires, or since when a critical one is critical.
    at: Instant,
}

#[derive(Clone, Debug)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: HashMap<String, String>,
    check: Option<Check>,
}

#[derive(Debug, Default)]
struct Catalog {
    services: BTreeMap<String, Service>,
}

#[derive(Debug)]
struct Inner {
    catalog: Mutex<Catalog>,
    /// The Raft-like index: bumped on every change; blocking queries wait on it.
    index: watch::Sender<u64>,
    /// Check passes received, in all.
    passes: watch::Sender<u64>,
}

impl Inner {
    fn catalog(&self) -> parking_lot::MutexGuard<'_, Catalog> {
        self.catalog.lock()
    }

    fn bump(&self) {
        self.index.send_modify(|index| *index += 1);
    }

    /// Turns expired checks critical and reaps long-critical services.
    fn expire(&self, now: Instant) {
        let mut changed = false;
        {
            let mut catalog = self.catalog();
            catalog.services.retain(|_, service| {
                let Some(check) = service.check.as_mut() else {
                    return true;
                };
                if check.passing && now >= check.at {
                    check.passing = false;
                    check.at = now;
                    changed = true;
                }
                let reap = !check.passing
                    && check
                        .deregister_after
                        .is_some_and(|after| now - check.at >= after);
                changed |= reap;
                !reap
            });
        }
        if changed {
            self.bump();
        }
    }
}

/// Parses Consul's durations: `10s`, `500ms`, `1m`, `1h`.
fn duration(text: &str) -> Option<Duration> {
    humantime_serde::re::humantime::parse_duration(text).ok()
}

/// A running Consul stand-in.
#[derive(Debug)]
pub struct ConsulServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    serving: Option<JoinHandle<()>>,
    expiry: JoinHandle<()>,
}

impl ConsulServer {
    /// Starts on 127.0.0.1 with a port the OS picks.
    pub async fn start_new() -> ConsulServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind consul stand-in");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner {
            catalog: Mutex::new(Catalog::default()),
            index: watch::Sender::new(1),
            passes: watch::Sender::new(0),
        });
        let expiry = tokio::spawn({
            let inner = inner.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tick.tick().await;
                    inner.expire(Instant::now());
                }
            }
        });
        let mut server = ConsulServer {
            addr,
            inner,
            serving: None,
            expiry,
        };
        server.serve(listener);
        server
    }

    /// The HTTP address, as `CONSUL_HTTP_ADDR` would give it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = Router::new()
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/service/deregister/{id}", put(deregister))
            .route("/v1/agent/check/pass/{id}", put(pass))
            .route("/v1/health/service/{name}", get(health))
            .with_state(self.inner.clone());
        self.serving = Some(tokio::spawn(async move {
            // Connections live in this set: stopping drops them all.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    /// Goes away: stops listening and cuts every connection.
    pub fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }

    /// Comes back on the same address, with the same catalog.
    pub async fn start(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind consul stand-in");
        self.serve(listener);
    }

    /// The ids of the services whose checks all pass.
    pub fn passing(&self, name: &str) -> Vec<String> {
        healthy(&self.inner.catalog(), name)
            .map(|s| s.id.clone())
            .collect()
    }

    /// Every registered service id, healthy or not.
    pub fn registered(&self) -> Vec<String> {
        self.inner.catalog().services.keys().cloned().collect()
    }

    /// Waits until `n` check passes have been received, in all (each one is
    /// an event; a node passes its check every third of its TTL).
    pub async fn until_passes(&self, n: u64) {
        let mut passes = self.inner.passes.subscribe();
        tokio::time::timeout(Duration::from_secs(60), passes.wait_for(|p| *p >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} check passes: not within 60 s"))
            .expect("the server is alive");
    }

    /// Waits until `done` holds for the catalog, checking on every change.
    pub async fn until(&self, what: &str, done: impl Fn(&ConsulServer) -> bool) {
        let mut index = self.inner.index.subscribe();
        let wait = async {
            while !done(self) {
                index.changed().await.expect("index");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 20 s"));
    }
}

impl Drop for ConsulServer {
    fn drop(&mut self) {
        self.stop();
        self.expiry.abort();
    }
}

fn healthy<'a>(catalog: &'a Catalog, name: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
    catalog
        .services
        .values()
        .filter(move |s| s.name == name && s.check.as_ref().is_none_or(|c| c.passing))
}

async fn register(State(inner): State<Arc<Inner>>, body: axum::body::Bytes) -> Response {
    let body: RegisterBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: {err}"),
            )
                .into_response();
        }
    };
    let id = body.id.clone().unwrap_or_else(|| body.name.clone());
    let check = match body.check {
        None => None,
        Some(check) => {
            let Some(ttl) = check.ttl.as_deref().and_then(duration) else {
                return (
                    StatusCode::BAD_REQUEST,
                    "only TTL checks are supported here",
                )
                    .into_response();
            };
            Some(Check {
                id: check.check_id.unwrap_or_else(|| format!("service:{id}")),
                ttl,
                deregister_after: check
                    .deregister_critical_service_after
                    .as_deref()
                    .and_then(duration),
                passing: check.status.as_deref() == Some("passing"),
                at: Instant::now()
                    + if check.status.as_deref() == Some("passing") {
                        ttl
                    } else {
                        Duration::ZERO
                    },
            })
        }
    };
    {
        let mut catalog = inner.catalog();
        // Re-registering keeps a check's state, as Consul does.
        let old_check = catalog.services.get(&id).and_then(|s| s.check.clone());
        let check = match (check, old_check) {
            (Some(mut new), Some(old)) if new.id == old.id => {
                new.passing = old.passing;
                new.at = old.at;
                Some(new)
            }
            (check, _) => check,
        };
        catalog.services.insert(
            id.clone(),
            Service {
                id,
                name: body.name,
                address: body.address,
                port: body.port,
                tags: body.tags,
                meta: body.meta,
                check,
            },
        );
    }
    inner.bump();
    StatusCode::OK.into_response()
}

async fn deregister(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    let removed = inner.catalog().services.remove(&id).is_some();
    if !removed {
        return (StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}")).into_response();
    }
    inner.bump();
    StatusCode::OK.into_response()
}

async fn pass(State(inner): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    let was_passing = {
        let mut catalog = inner.catalog();
        let check = catalog
            .services
            .values_mut()
            .filter_map(|s| s.check.as_mut())
            .find(|c| c.id == id);
        let Some(check) = check else {
            return (StatusCode::NOT_FOUND, format!("Unknown check ID {id:?}")).into_response();
        };
        let was = check.passing;
        check.passing = true;
        check.at = Instant::now() + check.ttl;
        was
    };
    if !was_passing {
        inner.bump();
    }
    inner.passes.send_modify(|passes| *passes += 1);
    StatusCode::OK.into_response()
}

async fn health(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let passing_only = query.get("passing").is_some_and(|v| v != "false");
    let wanted: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = query
        .get("wait")
        .and_then(|w| duration(w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    let mut index = inner.index.subscribe();
    if wanted > 0 && *index.borrow() <= wanted {
        let _ = tokio::time::timeout(wait, index.wait_for(|now| *now > wanted)).await;
    }
    let current = *inner.index.borrow();
    let catalog = inner.catalog();
    let entries: Vec<_> = catalog
        .services
        .values()
        .filter(|s| s.name == name)
        .filter(|s| !passing_only || s.check.as_ref().is_none_or(|c| c.passing))
        .map(|s| {
            let status = match &s.check {
                Some(check) if !check.passing => "critical",
                _ => "passing",
            };
            json!({
                "Node": {"Node": "testkit", "Address": "127.0.0.1"},
                "Service": {"ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port, "Tags": s.tags, "Meta": s.meta},
                "Checks": s.check.iter().map(|c| json!({"CheckID": c.id, "Status": status, "ServiceID": s.id})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert("X-Consul-Index", HeaderValue::from(current));
    headers.insert("Content-Type", HeaderValue::from_static("application/json"));
    (headers, serde_json::Value::Array(entries).to_string()).into_response()
}
