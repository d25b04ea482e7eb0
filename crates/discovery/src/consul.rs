//! Consul discovery: each node registers itself with a TTL check it keeps
//! passing, and watches the healthy nodes of the services it talks to with
//! blocking queries. Consul being away never empties a watched set: the last
//! known healthy nodes stay in use until Consul answers again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use consulrs::api::check::common::AgentServiceCheckBuilder;
use consulrs::api::check::requests::TtlCheckPassRequest;
use consulrs::api::service::requests::RegisterServiceRequest;
use consulrs::client::{ConsulClient, ConsulClientSettingsBuilder};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::health::HealthServiceRequest;
use crate::{Discovery, ServiceNode};
use imcloud_auth::Secret;

/// How to reach Consul and how this node appears there.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulConfig {
    /// The Consul agent's HTTP address.
    pub address: String,
    /// Datacenter to query; empty = the agent's own.
    pub datacenter: String,
    /// ACL token, sent as `X-Consul-Token`.
    pub token: Secret,
    /// Service name of cloud nodes.
    pub cloud_service: String,
    /// Service name of logic nodes.
    pub logic_service: String,
    /// TTL of the node's health check; the node passes it every third of it.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// A node whose check stays critical this long is deregistered by Consul.
    #[serde(with = "humantime_serde")]
    pub deregister_after: Duration,
    /// Longest wait of one blocking query.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: "http://127.0.0.1:8500".to_owned(),
            datacenter: String::new(),
            token: Secret::default(),
            cloud_service: crate::CLOUD_SERVICE.to_owned(),
            logic_service: crate::LOGIC_SERVICE.to_owned(),
            ttl: Duration::from_secs(15),
            deregister_after: Duration::from_secs(60),
            wait: Duration::from_secs(30),
        }
    }
}

/// Consul cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// The address or token is malformed.
    #[error("consul config: {0}")]
    Config(String),
}

/// What a node registers about itself.
#[derive(Clone)]
pub struct Registration {
    /// `im-cloud` or `im-logic` (a logical name; mapped to the configured one).
    pub service: String,
    /// The node's `server_id`; the Consul service ID is `<service>-<server_id>`.
    pub server_id: String,
    /// gRPC host other nodes should dial.
    pub host: String,
    /// gRPC port.
    pub port: u16,
    /// Public WebSocket URL clients should use (cloud nodes).
    pub ws: String,
    /// Public TCP address clients should use (cloud nodes).
    pub tcp: String,
    /// The node's current load (connections), refreshed into meta.
    pub load: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("service", &self.service)
            .field("server_id", &self.server_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Discovery through a Consul agent.
pub struct ConsulDiscovery {
    client: Arc<ConsulClient>,
    config: ConsulConfig,
    watches: Mutex<BTreeMap<String, watch::Sender<Vec<ServiceNode>>>>,
}

impl std::fmt::Debug for ConsulDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulDiscovery")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Retry delays while Consul is unreachable: doubling, capped.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5))
}

impl ConsulDiscovery {
    /// A client of the Consul agent at `config.address`. Nothing is sent yet.
    pub fn new(config: ConsulConfig) -> Result<Self, ConsulError> {
        if !config.address.starts_with("http://") && !config.address.starts_with("https://") {
            return Err(ConsulError::Config(format!(
                "address {:?} must start with http:// or https://",
                config.address
            )));
        }
        if !config.token.expose().chars().all(|c| c.is_ascii_graphic()) {
            return Err(ConsulError::Config(
                "token must be printable ASCII".to_owned(),
            ));
        }
        let mut settings = ConsulClientSettingsBuilder::default();
        settings.address(config.address.clone());
        if !config.token.expose().is_empty() {
            settings.token(config.token.expose().to_owned());
        }
        let settings = settings
            .build()
            .map_err(|err| ConsulError::Config(err.to_string()))?;
        let client =
            ConsulClient::new(settings).map_err(|err| ConsulError::Config(err.to_string()))?;
        Ok(ConsulDiscovery {
            client: Arc::new(client),
            config,
            watches: Mutex::new(BTreeMap::new()),
        })
    }

    fn service_name(&self, logical: &str) -> String {
        match logical {
            crate::CLOUD_SERVICE => self.config.cloud_service.clone(),
            crate::LOGIC_SERVICE => self.config.logic_service.clone(),
            other => other.to_owned(),
        }
    }

    /// Registers this node and keeps its TTL check passing until `stop` is
    /// cancelled, then deregisters. Consul unreachable: retries with backoff,
    /// logging once; a check Consul no longer knows (agent restarted) is
    /// registered again.
    pub fn register(&self, registration: Registration, stop: CancellationToken) -> JoinHandle<()> {
        let client = self.client.clone();
        let config = self.config.clone();
        let name = self.service_name(&registration.service);
        tokio::spawn(async move {
            let id = format!("{name}-{}", registration.server_id);
            let check_id = format!("service:{id}");
            let call_timeout = config.ttl / 3;
            let mut registered = false;
            let mut announced = false;
            let mut failures = 0u32;
            loop {
                let result = if registered {
                    let pass = TtlCheckPassRequest::builder()
                        .check(check_id.clone())
                        .build()
                        .map_err(|err| err.to_string());
                    match pass {
                        Ok(pass) => {
                            timed(call_timeout, consulrs::api::exec_with_empty(&*client, pass))
                                .await
                        }
                        Err(err) => Err(err),
                    }
                } else {
                    let request = register_request(&config, &name, &id, &check_id, &registration);
                    match request {
                        Ok(request) => {
                            timed(
                                call_timeout,
                                consulrs::api::exec_with_empty(&*client, request),
                            )
                            .await
                        }
                        Err(err) => Err(err),
                    }
                };
                match result {
                    Ok(()) if registered => {
                        failures = 0;
                        // Re-register now and then so meta (the load) stays fresh.
                        registered = false;
                    }
                    Ok(()) => {
                        // Re-registrations that refresh the meta are routine;
                        // the first one and the end of an outage are news.
                        if failures > 0 {
                            info!(%id, "registered in consul again");
                        } else if !announced {
                            info!(%id, "registered in consul");
                        } else {
                            debug!(%id, "registration refreshed");
                        }
                        announced = true;
                        failures = 0;
                        registered = true;
                        // Pass the check at once: a new TTL check starts critical.
                        continue;
                    }
                    Err(err) => {
                        if failures == 0 {
                            warn!(%id, error = %err, "consul registration failing; retrying");
                        }
                        failures += 1;
                        registered = false;
                    }
                }
                let pause = if failures == 0 {
                    config.ttl / 3
                } else {
                    backoff(failures)
                };
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            let request = consulrs::api::service::requests::DeregisterServiceRequest::builder()
                .id(id.clone())
                .build();
            match request {
                Ok(request) => match timed(
                    call_timeout,
                    consulrs::api::exec_with_empty(&*client, request),
                )
                .await
                {
                    Ok(()) => info!(%id, "deregistered from consul"),
                    Err(err) => warn!(%id, error = %err, "consul deregistration failed"),
                },
                Err(err) => warn!(%id, error = %err, "consul deregistration failed"),
            }
        })
    }

    fn spawn_watch(&self, name: String, sender: watch::Sender<Vec<ServiceNode>>) {
        let client = self.client.clone();
        let config = self.config.clone();
        tokio::spawn(async move {
            let mut index = 0u64;
            let mut failures = 0u32;
            loop {
                let request = HealthServiceRequest {
                    name: name.clone(),
                    blocking: (index > 0)
                        .then(|| (index, format!("{}ms", config.wait.as_millis()))),
                    passing: true,
                    dc: Some(config.datacenter.clone()).filter(|dc| !dc.is_empty()),
                };
                // The server answers within `wait` (plus Consul's jitter of
                // wait/16); give it some slack before calling it lost.
                let deadline = config.wait + config.wait / 8 + Duration::from_secs(1);
                let answer = tokio::time::timeout(
                    deadline,
                    consulrs::api::exec_with_result(&*client, request),
                )
                .await;
                match answer {
                    Ok(Ok(response)) => {
                        if failures > 0 {
                            info!(service = %name, "consul reachable again");
                        }
                        failures = 0;
                        let new_index = response
                            .index
                            .as_deref()
                            .and_then(|i| i.parse().ok())
                            .unwrap_or(0);
                        // An index going backwards (Consul restarted) resets the watch.
                        index = if new_index < index { 0 } else { new_index };
                        let nodes: Vec<ServiceNode> = response
                            .response
                            .into_iter()
                            .map(ServiceNode::from)
                            .collect();
                        sender.send_if_modified(|current| {
                            if *current == nodes {
                                return false;
                            }
                            info!(service = %name, nodes = nodes.len(), "healthy nodes changed");
                            *current = nodes;
                            true
                        });
                        if sender.is_closed() {
                            return;
                        }
                    }
                    Ok(Err(err)) => {
                        if failures == 0 {
                            warn!(service = %name, error = %err, "consul watch failing; keeping the last known nodes");
                        }
                        failures += 1;
                        index = 0;
                        tokio::time::sleep(backoff(failures)).await;
                    }
                    Err(_) => {
                        failures += 1;
                        index = 0;
                    }
                }
            }
        });
    }
}

async fn timed<T, E: std::fmt::Display>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<(), String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

fn register_request(
    config: &ConsulConfig,
    name: &str,
    id: &str,
    check_id: &str,
    registration: &Registration,
) -> Result<RegisterServiceRequest, String> {
    let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
    let check = AgentServiceCheckBuilder::default()
        .check_id(check_id.to_owned())
        .name(format!("{name} ttl"))
        .ttl(secs(config.ttl))
        .deregister_critical_service_after(secs(config.deregister_after))
        .build()
        .map_err(|err| err.to_string())?;
    let meta = HashMap::from([
        ("server_id".to_owned(), registration.server_id.clone()),
        ("ws".to_owned(), registration.ws.clone()),
        ("tcp".to_owned(), registration.tcp.clone()),
        ("load".to_owned(), (registration.load)().to_string()),
    ]);
    RegisterServiceRequest::builder()
        .id(id.to_owned())
        .name(name.to_owned())
        .address(registration.host.clone())
        .port(u64::from(registration.port))
        .tags(vec!["imcloud".to_owned()])
        .meta(meta)
        .check(check)
        .build()
        .map_err(|err| err.to_string())
}

impl From<crate::health::ServiceEntry> for ServiceNode {
    fn from(entry: crate::health::ServiceEntry) -> Self {
        let meta = entry.service.meta.unwrap_or_default();
        let host = if entry.service.address.is_empty() {
            entry.node.address
        } else {
            entry.service.address
        };
        let get = |key: &str| meta.get(key).cloned().unwrap_or_default();
        ServiceNode {
            id: meta.get("server_id").cloned().unwrap_or(entry.service.id),
            grpc: format!("{host}:{}", entry.service.port),
            ws: get("ws"),
            tcp: get("tcp"),
            load: get("load").parse().unwrap_or(0),
        }
    }
}

impl Discovery for ConsulDiscovery {
    fn watch(&self, service: &str) -> watch::Receiver<Vec<ServiceNode>> {
        let name = self.service_name(service);
        let mut watches = self.watches.lock();
        if let Some(sender) = watches.get(&name) {
            return sender.subscribe();
        }
        let sender = watch::Sender::new(Vec::new());
        let receiver = sender.subscribe();
        self.spawn_watch(name.clone(), sender.clone());
        watches.insert(name, sender);
        receiver
    }
}
