//! The `im.logic.Logic` gRPC service: cloud nodes authenticate clients and
//! report through it; backends push through it.

use std::sync::Arc;
use std::time::Duration;

use imcloud_auth::ApiKey;
use imcloud_proto::logic::logic_server::{Logic, LogicServer};
use imcloud_proto::logic::*;
use imcloud_protocol::RoomId;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::idempotent::{Answer, Idempotent};
use crate::inbox::{Acked, InboxStore};
use crate::metrics::Metrics;
use crate::nodes::Advisor;
use crate::presence::Presence;
use crate::push::{Delivered, Message, PushError, Target};
use crate::session::{SessionStore, StoreError};
use crate::verifier::TokenVerifier;
use crate::webhook::{Posted, Verdict, Webhook};

/// What the join webhook is asked.
#[derive(serde::Serialize)]
struct JoinQuestion<'a> {
    mid: i64,
    key: &'a str,
    room: &'a RoomId,
}

/// What the gRPC API reaches.
pub(crate) struct LogicService {
    pub(crate) verifier: Arc<dyn TokenVerifier>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) inbox: Arc<dyn InboxStore>,
    pub(crate) pushes: Arc<Idempotent>,
    pub(crate) advisor: Arc<Advisor>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where client messages (op 4) go, if anywhere.
    pub(crate) receive_webhook: Option<Webhook>,
    /// Who decides whether a connection may join a room, if anyone.
    pub(crate) join_webhook: Option<Webhook>,
    /// The heartbeat interval clients are told.
    pub(crate) heartbeat: Duration,
    /// How long cloud nodes hold a new connection's user pushes (see
    /// `LogicConfig::resume_wait`).
    pub(crate) resume_wait: Duration,
    /// Cancelled by `Close`: the node stops.
    pub(crate) stop: CancellationToken,
}

pub(crate) async fn serve(
    listener: TcpListener,
    service: LogicService,
    key: ApiKey,
) -> Result<(), tonic::transport::Error> {
    let stop = service.stop.clone();
    let layer = service.metrics.grpc.layer();
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(LogicServer::with_interceptor(service, key.interceptor()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Status {
        Status::unavailable(err.to_string())
    }
}

/// The metadata carrying a push's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The push's idempotency key, if it carries one.
fn idempotency_key<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    match request
        .metadata()
        .get(IDEMPOTENCY_KEY)
        .map(|key| key.to_str())
    {
        None => Ok(None),
        Some(Ok(key)) => Ok(Some(key.to_owned())),
        Some(Err(_)) => {
            Err(PushError::BadRequest("the idempotency-key is not visible ASCII".to_owned()).into())
        }
    }
}

/// A push's reply; a first answer given again says so in the
/// `idempotent-replayed` metadata.
fn reply<T>(answer: &Answer, reply: impl FnOnce(&Delivered) -> T) -> Response<T> {
    let mut response = Response::new(reply(&answer.delivered));
    if answer.replayed {
        response
            .metadata_mut()
            .insert("idempotent-replayed", "true".parse().expect("ascii"));
    }
    response
}

/// A cloud node's call must name the node.
fn required_server(server: &str) -> Result<(), Status> {
    if server.is_empty() {
        return Err(Status::invalid_argument("server is required"));
    }
    Ok(())
}

fn operation(op: i32) -> Option<i32> {
    (op != 0).then_some(op)
}

#[tonic::async_trait]
impl Logic for LogicService {
    async fn ping(&self, _: Request<PingReq>) -> Result<Response<PingReply>, Status> {
        let epoch = self.store.epoch().await?;
        Ok(Response::new(PingReply { epoch }))
    }

    async fn close(&self, _: Request<CloseReq>) -> Result<Response<CloseReply>, Status> {
        info!("close requested over gRPC");
        self.stop.cancel();
        Ok(Response::new(CloseReply {}))
    }

    async fn connect(
        &self,
        request: Request<ConnectReq>,
    ) -> Result<Response<ConnectReply>, Status> {
        let request = request.into_inner();
        required_server(&request.server)?;
        let identity = match self.verifier.verify(&request.token).await {
            Ok(identity) => identity,
            Err(err) => {
                self.metrics.connect(false);
                return Err(err.into());
            }
        };
        let key = identity
            .key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.store
            .connect(identity.mid, &key, &request.server)
            .await?;
        let rooms: Vec<String> = identity
            .room_id
            .iter()
            .chain(&identity.rooms)
            .map(ToString::to_string)
            .collect();
        // Routed before the client hears it is in: a push sent once it is
        // told reaches its node.
        self.store.route_rooms(&request.server, &rooms).await?;
        self.metrics.connect(true);
        debug!(mid = identity.mid, %key, server = %request.server, "client connected");
        Ok(Response::new(ConnectReply {
            mid: identity.mid,
            key,
            room_id: identity
                .room_id
                .map(|room| room.to_string())
                .unwrap_or_default(),
            accepts: identity.accepts,
            heartbeat: self.heartbeat.as_secs() as i64,
            resume_wait_ms: self.resume_wait.as_millis() as i64,
            rooms: identity.rooms.iter().map(ToString::to_string).collect(),
            allow_rooms: identity.allow_rooms,
            platform: identity.platform,
        }))
    }

    async fn join(&self, request: Request<JoinReq>) -> Result<Response<JoinReply>, Status> {
        let request = request.into_inner();
        let room = RoomId::parse(&request.room)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        if let Some(webhook) = &self.join_webhook {
            let question = JoinQuestion {
                mid: request.mid,
                key: &request.key,
                room: &room,
            };
            match webhook.ask(&question).await {
                Ok(Verdict::Yes) => {}
                Ok(Verdict::No(reason)) => {
                    self.metrics.join_refused();
                    return Err(Status::permission_denied(reason));
                }
                Err(err) => return Err(Status::unavailable(format!("join webhook: {err}"))),
            }
        }
        // Routed before the join is answered: a push sent once the client
        // is told it is in reaches its node, through any logic node.
        self.store
            .route_rooms(&request.server, &[room.to_string()])
            .await?;
        Ok(Response::new(JoinReply {}))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectReq>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let request = request.into_inner();
        let has = self
            .store
            .disconnect(request.mid, &request.key, &request.server)
            .await?;
        Ok(Response::new(DisconnectReply { has }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatReq>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let request = request.into_inner();
        self.store
            .renew(request.mid, &request.key, &request.server)
            .await?;
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn renew_sessions(
        &self,
        request: Request<RenewSessionsReq>,
    ) -> Result<Response<RenewSessionsReply>, Status> {
        let request = request.into_inner();
        required_server(&request.server)?;
        let sessions: Vec<(i64, String)> = request
            .sessions
            .into_iter()
            .map(|session| (session.mid, session.key))
            .collect();
        self.store.renew_many(&request.server, &sessions).await?;
        info!(server = %request.server, sessions = sessions.len(), "sessions registered again");
        let epoch = self.store.epoch().await?;
        Ok(Response::new(RenewSessionsReply { epoch }))
    }

    async fn renew_online(
        &self,
        request: Request<OnlineReq>,
    ) -> Result<Response<OnlineReply>, Status> {
        let request = request.into_inner();
        required_server(&request.server)?;
        self.store
            .report_online(&request.server, request.room_count)
            .await?;
        let online = self.store.online().await?;
        Ok(Response::new(OnlineReply {
            all_room_count: online.rooms,
        }))
    }

    async fn online_users(
        &self,
        request: Request<OnlineUsersReq>,
    ) -> Result<Response<OnlineUsersReply>, Status> {
        let mids = request.into_inner().mids;
        if mids.is_empty() {
            return Err(Status::invalid_argument("mids is required"));
        }
        let users = self.presence.users(&mids).await?;
        Ok(Response::new(OnlineUsersReply {
            users: users
                .into_iter()
                .map(|(mid, devices)| {
                    let devices = devices
                        .into_iter()
                        .map(|device| OnlineDevice {
                            key: device.key,
                            node: device.node,
                            platform: device.platform,
                            rooms: device.rooms,
                        })
                        .collect();
                    (mid, OnlineDevices { devices })
                })
                .collect(),
        }))
    }

    async fn online_members(
        &self,
        request: Request<OnlineMembersReq>,
    ) -> Result<Response<OnlineMembersReply>, Status> {
        let request = request.into_inner();
        let room = RoomId::parse(&request.room)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let limit = if request.limit == 0 {
            100
        } else {
            request.limit.min(10_000)
        };
        let members = self.presence.members(&room, limit).await?;
        Ok(Response::new(OnlineMembersReply {
            room: members.room,
            online: members.online,
            members: members.members,
            truncated: members.truncated,
        }))
    }

    async fn room_counts(
        &self,
        request: Request<OnlineReq>,
    ) -> Result<Response<OnlineReply>, Status> {
        let request = request.into_inner();
        required_server(&request.server)?;
        let rooms: Vec<String> = request.room_count.keys().cloned().collect();
        self.store
            .update_online(&request.server, request.room_count)
            .await?;
        let all_room_count = self.store.room_totals(&rooms).await?;
        Ok(Response::new(OnlineReply { all_room_count }))
    }

    async fn receive(
        &self,
        request: Request<ReceiveReq>,
    ) -> Result<Response<ReceiveReply>, Status> {
        let request = request.into_inner();
        let proto = request
            .proto
            .ok_or_else(|| Status::invalid_argument("proto is required"))?;
        self.metrics.received();
        debug!(
            mid = request.mid,
            op = proto.op,
            len = proto.body.len(),
            "client message"
        );
        if let Some(webhook) = &self.receive_webhook {
            let posted = Posted {
                mid: request.mid,
                op: proto.op,
                seq: u64::from(proto.seq as u32),
                body: proto.body,
            };
            webhook
                .post(posted)
                .await
                .map_err(|err| Status::unavailable(format!("receive webhook: {err}")))?;
        }
        Ok(Response::new(ReceiveReply {}))
    }

    async fn nodes(&self, request: Request<NodesReq>) -> Result<Response<NodesReply>, Status> {
        let advice = self.advisor.advice().await?;
        debug!(platform = %request.get_ref().platform, "nodes asked");
        Ok(Response::new(advice.into_reply()))
    }

    async fn push_keys(
        &self,
        request: Request<PushKeysReq>,
    ) -> Result<Response<PushKeysReply>, Status> {
        let key = idempotency_key(&request)?;
        let request = request.into_inner();
        let message = Message::new(operation(request.operation), request.msg)?;
        let answer = self
            .pushes
            .push(key.as_deref(), Target::Keys(request.keys), message)
            .await?;
        Ok(reply(&answer, |delivered| PushKeysReply {
            nodes: delivered.nodes as i32,
            keys: delivered.keys.unwrap_or(0) as i32,
        }))
    }

    async fn push_mids(
        &self,
        request: Request<PushMidsReq>,
    ) -> Result<Response<PushMidsReply>, Status> {
        let key = idempotency_key(&request)?;
        let request = request.into_inner();
        let mids = request
            .mids
            .iter()
            .map(|mid| {
                mid.trim()
                    .parse::<i64>()
                    .map_err(|_| Status::invalid_argument(format!("mid {mid:?} is not a number")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let message = Message::new(operation(request.operation), request.msg)?;
        let answer = self
            .pushes
            .push(key.as_deref(), Target::Mids(mids), message)
            .await?;
        Ok(reply(&answer, |delivered| PushMidsReply {
            nodes: delivered.nodes as i32,
            keys: delivered.keys.unwrap_or(0) as i32,
            stored: delivered.stored.unwrap_or(0) as i32,
        }))
    }

    async fn push_room(
        &self,
        request: Request<PushRoomReq>,
    ) -> Result<Response<PushRoomReply>, Status> {
        let key = idempotency_key(&request)?;
        let request = request.into_inner();
        let message = Message::new(operation(request.operation), request.msg)?;
        let room = RoomId::from_parts(&request.r#type, &request.room)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let answer = self
            .pushes
            .push(key.as_deref(), Target::Room(room), message)
            .await?;
        Ok(reply(&answer, |delivered| PushRoomReply {
            nodes: delivered.nodes as i32,
            members: delivered.members.unwrap_or(0) as i32,
        }))
    }

    async fn push_all(
        &self,
        request: Request<PushAllReq>,
    ) -> Result<Response<PushAllReply>, Status> {
        let key = idempotency_key(&request)?;
        let request = request.into_inner();
        let message = Message::new(operation(request.operation), request.msg)?;
        let target = Target::All {
            speed: request.speed,
        };
        let answer = self.pushes.push(key.as_deref(), target, message).await?;
        Ok(reply(&answer, |delivered| PushAllReply {
            nodes: delivered.nodes as i32,
        }))
    }

    async fn inbox(&self, request: Request<InboxReq>) -> Result<Response<InboxReply>, Status> {
        let request = request.into_inner();
        let kept = self.inbox.since(request.mid, request.since).await?;
        Ok(Response::new(InboxReply {
            mid: request.mid,
            last: kept.last,
            oldest: kept.oldest,
            messages: kept
                .messages
                .into_iter()
                .map(|kept| InboxMessage {
                    seq: kept.seq,
                    op: kept.op,
                    body: kept.body,
                })
                .collect(),
        }))
    }

    async fn ack(&self, request: Request<AckReq>) -> Result<Response<AckReply>, Status> {
        let request = request.into_inner();
        match self.inbox.ack(request.mid, request.ack).await? {
            Acked::Recorded => {
                self.metrics.acked();
                Ok(Response::new(AckReply {}))
            }
            Acked::AboveLatest { last } => Err(Status::invalid_argument(format!(
                "ack {} is above the latest sequence number, {last}",
                request.ack
            ))),
        }
    }
}
