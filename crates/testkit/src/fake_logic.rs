//! A real tonic logic server written for the tests, and a cloud node started
//! on 127.0.0.1:0 that uses it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use imcloud_cloud::{Cloud, CloudConfig, Listeners};
use imcloud_proto::cloud::cloud_client::CloudClient;
use imcloud_proto::cloud::{Proto, PushMsgReq};
use imcloud_proto::logic::logic_server::{Logic, LogicServer};
use imcloud_proto::logic::*;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// What the fake logic saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connect {
        mid: i64,
        key: String,
        server: String,
    },
    Disconnect {
        mid: i64,
        key: String,
    },
    Heartbeat {
        mid: i64,
        key: String,
    },
    Receive {
        mid: i64,
        body: Vec<u8>,
    },
    RenewOnline {
        rooms: HashMap<String, i32>,
    },
}

/// The test token: JSON naming the identity; anything else is refused.
#[derive(Deserialize)]
struct Token {
    mid: i64,
    key: String,
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    accepts: Vec<i32>,
    #[serde(default)]
    heartbeat: i64,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    allow_rooms: Vec<String>,
    #[serde(default)]
    platform: String,
}

pub fn token(mid: i64, key: &str, room: &str, accepts: &[i32]) -> String {
    serde_json::json!({"mid": mid, "key": key, "room_id": room, "accepts": accepts}).to_string()
}

struct FakeLogic {
    events: mpsc::UnboundedSender<Event>,
    totals: Arc<Mutex<HashMap<String, i32>>>,
    disconnect_delay: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Logic for FakeLogic {
    async fn ping(&self, _: Request<PingReq>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            epoch: "fake".to_owned(),
        }))
    }
    async fn close(&self, _: Request<CloseReq>) -> Result<Response<CloseReply>, Status> {
        Ok(Response::new(CloseReply {}))
    }
    async fn connect(
        &self,
        request: Request<ConnectReq>,
    ) -> Result<Response<ConnectReply>, Status> {
        let request = request.into_inner();
        let token: Token = serde_json::from_slice(&request.token)
            .map_err(|err| Status::unauthenticated(format!("bad token: {err}")))?;
        let _ = self.events.send(Event::Connect {
            mid: token.mid,
            key: token.key.clone(),
            server: request.server,
        });
        Ok(Response::new(ConnectReply {
            mid: token.mid,
            key: token.key,
            room_id: token.room_id,
            accepts: token.accepts,
            heartbeat: token.heartbeat,
            // goim's logic knows no resume: no hold.
            resume_wait_ms: 0,
            rooms: token.rooms,
            allow_rooms: token.allow_rooms,
            platform: token.platform,
        }))
    }
    /// The fake join webhook: `private://` rooms are members only.
    async fn join(&self, request: Request<JoinReq>) -> Result<Response<JoinReply>, Status> {
        if request.get_ref().room.starts_with("private://") {
            return Err(Status::permission_denied("members only"));
        }
        Ok(Response::new(JoinReply {}))
    }
    async fn disconnect(
        &self,
        request: Request<DisconnectReq>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let request = request.into_inner();
        let delay = self.disconnect_delay.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = self.events.send(Event::Disconnect {
            mid: request.mid,
            key: request.key,
        });
        Ok(Response::new(DisconnectReply { has: true }))
    }
    async fn heartbeat(
        &self,
        request: Request<HeartbeatReq>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let request = request.into_inner();
        let _ = self.events.send(Event::Heartbeat {
            mid: request.mid,
            key: request.key,
        });
        Ok(Response::new(HeartbeatReply {}))
    }
    async fn renew_online(
        &self,
        request: Request<OnlineReq>,
    ) -> Result<Response<OnlineReply>, Status> {
        let _ = self.events.send(Event::RenewOnline {
            rooms: request.into_inner().room_count,
        });
        let totals = self.totals.lock().clone();
        Ok(Response::new(OnlineReply {
            all_room_count: totals,
        }))
    }
    async fn online_users(
        &self,
        _: Request<OnlineUsersReq>,
    ) -> Result<Response<OnlineUsersReply>, Status> {
        Err(Status::unimplemented("the fake logic knows no presence"))
    }
    async fn online_members(
        &self,
        _: Request<OnlineMembersReq>,
    ) -> Result<Response<OnlineMembersReply>, Status> {
        Err(Status::unimplemented("the fake logic knows no presence"))
    }
    /// One cloud node: its counts are the totals.
    async fn room_counts(
        &self,
        request: Request<OnlineReq>,
    ) -> Result<Response<OnlineReply>, Status> {
        Ok(Response::new(OnlineReply {
            all_room_count: request.into_inner().room_count,
        }))
    }
    async fn receive(
        &self,
        request: Request<ReceiveReq>,
    ) -> Result<Response<ReceiveReply>, Status> {
        let request = request.into_inner();
        let body = request.proto.map(|proto| proto.body).unwrap_or_default();
        if body == b"fail"[..] {
            return Err(Status::internal("backend refused the message"));
        }
        let _ = self.events.send(Event::Receive {
            mid: request.mid,
            body: body.to_vec(),
        });
        Ok(Response::new(ReceiveReply {}))
    }
    async fn renew_sessions(
        &self,
        _: Request<RenewSessionsReq>,
    ) -> Result<Response<RenewSessionsReply>, Status> {
        Err(Status::unimplemented("renew_sessions"))
    }
    async fn nodes(&self, _: Request<NodesReq>) -> Result<Response<NodesReply>, Status> {
        Err(Status::unimplemented("nodes"))
    }
    async fn push_keys(&self, _: Request<PushKeysReq>) -> Result<Response<PushKeysReply>, Status> {
        Err(Status::unimplemented("push_keys"))
    }
    async fn push_mids(&self, _: Request<PushMidsReq>) -> Result<Response<PushMidsReply>, Status> {
        Err(Status::unimplemented("push_mids"))
    }
    async fn push_room(&self, _: Request<PushRoomReq>) -> Result<Response<PushRoomReply>, Status> {
        Err(Status::unimplemented("push_room"))
    }
    async fn inbox(&self, _: Request<InboxReq>) -> Result<Response<InboxReply>, Status> {
        Err(Status::unimplemented("inbox"))
    }
    async fn ack(&self, _: Request<AckReq>) -> Result<Response<AckReply>, Status> {
        Err(Status::unimplemented("ack"))
    }
    async fn push_all(&self, _: Request<PushAllReq>) -> Result<Response<PushAllReply>, Status> {
        Err(Status::unimplemented("push_all"))
    }
}

/// A running fake logic node.
pub struct LogicNode {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// What `RenewOnline` answers as cluster totals.
    pub totals: Arc<Mutex<HashMap<String, i32>>>,
    /// How long `Disconnect` takes to answer, in milliseconds (a slow logic).
    pub disconnect_delay: Arc<AtomicU64>,
}

impl LogicNode {
    pub async fn start() -> LogicNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind logic");
        let addr = listener.local_addr().expect("logic addr");
        let (tx, events) = mpsc::unbounded_channel();
        let totals = Arc::new(Mutex::new(HashMap::new()));
        let disconnect_delay = Arc::new(AtomicU64::new(0));
        let service = FakeLogic {
            events: tx,
            totals: totals.clone(),
            disconnect_delay: disconnect_delay.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LogicServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        LogicNode {
            addr,
            events,
            totals,
            disconnect_delay,
        }
    }

    /// The next event for which `pick` returns something, skipping others.
    pub async fn next<T>(&mut self, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let wait = async {
            loop {
                let event = self.events.recv().await.expect("logic events");
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the expected logic event within 10 s")
    }
}

/// A running cloud node and its addresses.
pub struct CloudNode {
    pub cloud: Option<Cloud>,
    pub tcp: SocketAddr,
    pub ws_url: String,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub grpc: CloudClient<Channel>,
    pub shutdown: CancellationToken,
}

/// Test defaults: short timeouts so failure paths finish quickly.
pub fn test_config(logic: SocketAddr) -> CloudConfig {
    CloudConfig {
        server_id: "cloud-test".to_owned(),
        logic_addrs: vec![logic.to_string()],
        handshake_timeout: Duration::from_millis(500),
        logic_timeout: Duration::from_millis(1000),
        online_report_interval: Duration::from_millis(100),
        drain_grace: Duration::from_secs(3),
        buckets: 4,
        ..CloudConfig::default()
    }
}

impl CloudNode {
    pub async fn start(config: CloudConfig) -> CloudNode {
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let listeners = Listeners {
            tcp: bind().await,
            ws: bind().await,
            grpc: bind().await,
            http: bind().await,
        };
        let tcp = listeners.tcp.local_addr().expect("addr");
        let ws = listeners.ws.local_addr().expect("addr");
        let http = listeners.http.local_addr().expect("addr");
        let grpc_addr = listeners.grpc.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let cloud = Cloud::start(listeners, config, shutdown.clone()).expect("cloud starts");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("grpc connect");
        CloudNode {
            cloud: Some(cloud),
            tcp,
            ws_url: format!("ws://{ws}/sub"),
            ws,
            http,
            grpc: CloudClient::new(channel),
            shutdown,
        }
    }

    pub fn cloud(&self) -> &Cloud {
        self.cloud.as_ref().expect("running")
    }

    /// Pushes `body` with `op` to `keys` over gRPC.
    pub async fn push_keys(&self, keys: &[&str], op: i32, body: &[u8]) {
        self.grpc
            .clone()
            .push_msg(PushMsgReq {
                keys: keys.iter().map(|key| key.to_string()).collect(),
                seqs: Vec::new(),
                proto_op: 0,
                proto: Some(proto(op, body)),
            })
            .await
            .expect("push_msg");
    }
}

impl Drop for CloudNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn proto(op: i32, body: &[u8]) -> Proto {
    Proto {
        ver: 1,
        op,
        seq: 0,
        body: body.to_vec().into(),
    }
}

/// GETs `path` from `addr`; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("http get");
    let status = response.status().as_u16();
    (status, response.text().await.expect("http body"))
}
