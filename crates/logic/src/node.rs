//! The logic node's composition root: builds its parts (the store, the
//! pusher, the APIs), gives each one what it uses, and runs the node until
//! it stops. Nothing else in the crate imports it.

use std::sync::Arc;
use std::time::Duration;

use imcloud_auth::ApiKey;
use imcloud_discovery::{CLOUD_SERVICE, Discovery, StaticDiscovery};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{
    ConfigError, DEVELOPMENT_SECRET, JwtAlgorithm, LogicConfig, SessionStoreKind, VerifierKind,
};
use crate::dedupe::{Dedupe, MemoryDedupe};
use crate::grpc::LogicService;
use crate::http::Api;
use crate::idempotent::Idempotent;
use crate::inbox::{InboxLimits, InboxStore, MemoryInbox, NoInbox};
use crate::memory::MemoryStore;
use crate::metrics::Metrics;
use crate::nodes::Advisor;
use crate::offline::OfflineWorker;
use crate::presence::Presence;
use crate::push::Pusher;
use crate::redis_store::RedisStore;
use crate::router::Clouds;
use crate::session::{SessionStore, StoreError};
use crate::timed_store::TimedStore;
use crate::verifier::{InsecureJson, Jwt, TokenVerifier, Webhook};
use crate::{grpc, http, ingest, webhook};

/// The sockets a logic node serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// The `im.logic.Logic` gRPC service (default port 3119).
    pub grpc: TcpListener,
    /// The HTTP API (default port 3111).
    pub http: TcpListener,
}

/// Why a logic node could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token verifier cannot be set up (an unreadable key).
    #[error("token verifier: {0}")]
    Verifier(String),
    /// The development JWT secret on a reachable address.
    #[error(
        "the logic node listens on {0}, which is not loopback, with the development JWT secret: \
         set [logic.jwt] secret to a secret of your own"
    )]
    DevelopmentSecret(std::net::SocketAddr),
    /// A backend API would be exposed without an API key.
    #[error(transparent)]
    Unprotected(#[from] imcloud_auth::Unprotected),
    /// The session store cannot be set up (a malformed Redis URL).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener's address could not be read, or the HTTP server failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// A node task panicked.
    #[error("node task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running logic node.
pub struct Logic {
    metrics: Arc<Metrics>,
    /// Cancelled to stop the node (shutdown or `Close`).
    stop: CancellationToken,
    task: JoinHandle<Result<(), LogicError>>,
}

/// Where a logic node keeps its state: sessions, users' inboxes, and the
/// push ids already delivered.
pub struct Stores {
    pub sessions: Arc<dyn SessionStore>,
    pub inbox: Arc<dyn InboxStore>,
    pub dedupe: Arc<dyn Dedupe>,
}

impl Logic {
    /// Starts serving with the configured session store and the cloud
    /// nodes of `config.cloud_nodes` (static discovery).
    pub fn start(
        listeners: Listeners,
        config: LogicConfig,
        shutdown: CancellationToken,
    ) -> Result<Logic, LogicError> {
        let discovery = StaticDiscovery::new().with(CLOUD_SERVICE, config.cloud_nodes.clone());
        Logic::start_discovering(listeners, config, &discovery, shutdown)
    }

    /// Starts serving with the configured session store and the cloud
    /// nodes `discovery` reports.
    pub fn start_discovering(
        listeners: Listeners,
        config: LogicConfig,
        discovery: &dyn Discovery,
        shutdown: CancellationToken,
    ) -> Result<Logic, LogicError> {
        let limits = InboxLimits {
            max: config.inbox_max,
            ttl: config.inbox_ttl,
            ack_timeout: config
                .offline_webhook
                .is_some()
                .then_some(config.ack_timeout),
            id_window: config.dedupe_window,
        };
        let mut stores = match config.session_store {
            SessionStoreKind::Memory => Stores {
                sessions: Arc::new(MemoryStore::new(config.session_ttl, config.online_ttl)),
                inbox: Arc::new(MemoryInbox::new(limits)),
                dedupe: Arc::new(MemoryDedupe::default()),
            },
            SessionStoreKind::Redis => {
                let redis = Arc::new(
                    RedisStore::new(
                        &config.redis_url,
                        &config.redis_prefix,
                        config.session_ttl,
                        config.online_ttl,
                        config.redis_timeout,
                    )?
                    .with_inbox(limits),
                );
                Stores {
                    sessions: redis.clone(),
                    inbox: redis.clone(),
                    dedupe: redis,
                }
            }
        };
        if config.inbox_max == 0 {
            stores.inbox = Arc::new(NoInbox);
        }
        Logic::start_with(listeners, config, stores, discovery, shutdown)
    }

    /// Starts serving with these stores and discovery.
    pub fn start_with(
        listeners: Listeners,
        config: LogicConfig,
        stores: Stores,
        discovery: &dyn Discovery,
        shutdown: CancellationToken,
    ) -> Result<Logic, LogicError> {
        let Stores {
            sessions: store,
            inbox,
            dedupe,
        } = stores;
        config.validate()?;
        let key = ApiKey::new(config.api_key.clone());
        key.guard("logic gRPC", listeners.grpc.local_addr()?)?;
        key.guard("logic HTTP", listeners.http.local_addr()?)?;
        let verifier = verifier(&config, &listeners)?;
        let dev_tokens = development_tokens(&config);
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(TimedStore::new(store, metrics.clone()));
        info!(
            server_id = %config.server_id,
            grpc = %listeners.grpc.local_addr()?,
            http = %listeners.http.local_addr()?,
            "logic node serving"
        );
        let store: Arc<dyn SessionStore> = store;
        let clouds = Arc::new(Clouds::new(
            discovery.watch(CLOUD_SERVICE),
            config.call_timeout,
            key.clone(),
            metrics.courier.clone(),
        ));
        let pusher = Arc::new(Pusher::new(
            store.clone(),
            inbox.clone(),
            clouds.clone(),
            metrics.clone(),
            config.max_push_targets,
        ));
        let pushes = Arc::new(Idempotent::new(
            pusher.clone(),
            dedupe,
            config.dedupe_window,
        ));
        let presence = Arc::new(Presence::new(store.clone(), clouds.clone()));
        let advisor = Arc::new(Advisor {
            store: store.clone(),
            clouds,
            heartbeat: config.heartbeat,
        });
        let stop = shutdown.child_token();
        let grpc = LogicService {
            verifier,
            store: store.clone(),
            inbox: inbox.clone(),
            pushes: pushes.clone(),
            advisor: advisor.clone(),
            presence: presence.clone(),
            metrics: metrics.clone(),
            receive_webhook: config
                .receive_webhook
                .clone()
                .map(|url| webhook::Webhook::new(url, config.call_timeout)),
            join_webhook: config
                .join_webhook
                .clone()
                .map(|url| webhook::Webhook::new(url, config.call_timeout)),
            heartbeat: config.heartbeat,
            // Nothing to resume without an inbox: no hold.
            resume_wait: if config.inbox_max == 0 {
                Duration::ZERO
            } else {
                config.resume_wait
            },
            stop: stop.clone(),
        };
        let http = Api {
            pushes: pushes.clone(),
            store,
            inbox: inbox.clone(),
            advisor,
            presence,
            metrics: metrics.clone(),
            api_key: key.clone(),
            dev_tokens,
            max_push_body: config.max_push_body,
            ingest: !config.ingest.nats_url.is_empty(),
            stop: stop.clone(),
        };
        if let Some(url) = config.offline_webhook.clone() {
            let worker = OfflineWorker {
                inbox: inbox.clone(),
                webhook: webhook::Webhook::new(url, config.call_timeout),
                metrics: metrics.clone(),
                poll: (config.ack_timeout / 10)
                    .clamp(Duration::from_millis(50), Duration::from_secs(1)),
                lease: config.call_timeout * 4,
            };
            tokio::spawn(worker.run(stop.clone()));
        }
        if !config.ingest.nats_url.is_empty() {
            let handler = ingest::Handler {
                pushes,
                max_body: config.max_push_body,
            };
            tokio::spawn(ingest::consume(
                config.ingest.clone(),
                Arc::new(handler),
                metrics.clone(),
                stop.clone(),
            ));
        }
        let task = tokio::spawn(serve(listeners, grpc, http, key, config.cors_origins));
        Ok(Logic {
            metrics,
            stop,
            task,
        })
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Cancelled when the node starts stopping: the moment to deregister.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the node has stopped.
    pub async fn wait(self) -> Result<(), LogicError> {
        self.task.await?
    }
}

/// The configured token verifier. The development secret is refused off
/// loopback: tokens signed with it can be minted by anyone who reads the docs.
fn verifier(
    config: &LogicConfig,
    listeners: &Listeners,
) -> Result<Arc<dyn TokenVerifier>, LogicError> {
    Ok(match config.verifier {
        VerifierKind::InsecureJson => {
            warn!(
                "verifier insecure-json trusts every token: any client can claim any user; development only"
            );
            Arc::new(InsecureJson)
        }
        VerifierKind::Webhook => Arc::new(Webhook::new(
            &config.token_webhook.url,
            config.token_webhook.timeout,
        )),
        VerifierKind::Jwt => match config.jwt.algorithm {
            JwtAlgorithm::HS256 => {
                if config.jwt.secret.expose() == DEVELOPMENT_SECRET {
                    for addr in [listeners.grpc.local_addr()?, listeners.http.local_addr()?] {
                        if !addr.ip().is_loopback() {
                            return Err(LogicError::DevelopmentSecret(addr));
                        }
                    }
                    warn!(
                        "jwt uses the development secret: fine on this machine, never in production"
                    );
                }
                Arc::new(Jwt::hs256(
                    config.jwt.secret.expose().as_bytes(),
                    config.jwt.leeway,
                ))
            }
            JwtAlgorithm::RS256 => {
                let path = config.jwt.public_key_file.clone().unwrap_or_default();
                let pem = std::fs::read(&path)
                    .map_err(|err| LogicError::Verifier(format!("{}: {err}", path.display())))?;
                Arc::new(
                    Jwt::rs256(&pem, config.jwt.leeway)
                        .map_err(|err| LogicError::Verifier(err.to_string()))?,
                )
            }
        },
    })
}

/// Runs a logic node (memory store, static discovery) until it stops.
pub async fn run(
    listeners: Listeners,
    config: LogicConfig,
    shutdown: CancellationToken,
) -> Result<(), LogicError> {
    Logic::start(listeners, config, shutdown)?.wait().await
}

async fn serve(
    listeners: Listeners,
    grpc: LogicService,
    http: Api,
    key: ApiKey,
    cors_origins: Vec<String>,
) -> Result<(), LogicError> {
    let grpc = tokio::spawn(grpc::serve(listeners.grpc, grpc, key));
    let http = tokio::spawn(async move { http::serve(listeners.http, http, &cors_origins).await });
    grpc.await??;
    http.await??;
    info!("logic node stopped");
    Ok(())
}

/// Development tokens are minted only while logic verifies HS256 tokens
/// with the well-known development secret: anyone can sign those anyway,
/// and that secret is refused off loopback.
fn development_tokens(config: &LogicConfig) -> bool {
    config.verifier == VerifierKind::Jwt
        && config.jwt.algorithm == JwtAlgorithm::HS256
        && config.jwt.secret.expose() == DEVELOPMENT_SECRET
}
