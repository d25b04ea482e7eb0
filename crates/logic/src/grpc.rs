//! The `im.logic.Logic` gRPC service: cloud nodes authenticate clients and
//! report through it; backends push through it.

use std::sync::Arc;

use bytes::Bytes;
use imcloud_proto::logic::logic_server::{Logic, LogicServer};
use imcloud_proto::logic::*;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::node::Node;
use crate::nodes::nodes_advice;
use crate::push::Message;
use crate::session::StoreError;

pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
) -> Result<(), tonic::transport::Error> {
    let stop = node.stop.clone();
    let check = node.api_key.interceptor();
    tonic::transport::Server::builder()
        .layer(node.metrics.grpc.layer())
        .add_service(LogicServer::with_interceptor(LogicService { node }, check))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}

struct LogicService {
    node: Arc<Node>,
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Status {
        Status::unavailable(err.to_string())
    }
}

fn operation(op: i32) -> Option<i32> {
    (op != 0).then_some(op)
}

#[tonic::async_trait]
impl Logic for LogicService {
    async fn ping(&self, _: Request<PingReq>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {}))
    }

    async fn close(&self, _: Request<CloseReq>) -> Result<Response<CloseReply>, Status> {
        info!("close requested over gRPC");
        self.node.stop.cancel();
        Ok(Response::new(CloseReply {}))
    }

    async fn connect(
        &self,
        request: Request<ConnectReq>,
    ) -> Result<Response<ConnectReply>, Status> {
        let request = request.into_inner();
        if request.server.is_empty() {
            return Err(Status::invalid_argument("server is required"));
        }
        let identity = match self.node.verifier.verify(&request.token).await {
            Ok(identity) => identity,
            Err(err) => {
                self.node.metrics.connect(false);
                return Err(err.into());
            }
        };
        let key = identity
            .key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.node
            .store
            .connect(identity.mid, &key, &request.server)
            .await?;
        self.node.metrics.connect(true);
        debug!(mid = identity.mid, %key, server = %request.server, "client connected");
        Ok(Response::new(ConnectReply {
            mid: identity.mid,
            key,
            room_id: identity.room_id,
            accepts: identity.accepts,
            heartbeat: self.node.config.heartbeat.as_secs() as i64,
        }))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectReq>,
    ) -> Result<Response<DisconnectReply>, Status> {
        let request = request.into_inner();
        let has = self
            .node
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
        self.node
            .store
            .renew(request.mid, &request.key, &request.server)
            .await?;
        Ok(Response::new(HeartbeatReply {}))
    }

    async fn renew_online(
        &self,
        request: Request<OnlineReq>,
    ) -> Result<Response<OnlineReply>, Status> {
        let request = request.into_inner();
        if request.server.is_empty() {
            return Err(Status::invalid_argument("server is required"));
        }
        self.node
            .store
            .report_online(&request.server, request.room_count)
            .await?;
        let online = self.node.store.online().await?;
        Ok(Response::new(OnlineReply {
            all_room_count: online.rooms,
        }))
    }

    async fn receive(
        &self,
        request: Request<ReceiveReq>,
    ) -> Result<Response<ReceiveReply>, Status> {
        let request = request.into_inner();
        let proto = request
            .proto
            .ok_or_else(|| Status::invalid_argument("proto is required"))?;
        self.node.metrics.received();
        debug!(
            mid = request.mid,
            op = proto.op,
            len = proto.body.len(),
            "client message"
        );
        if let Some(url) = &self.node.config.receive_webhook {
            // The body goes as is (no re-encoding), the rest as headers.
            let response = self
                .node
                .webhook
                .post(url)
                .header("content-type", "application/octet-stream")
                .header("x-imcloud-mid", request.mid)
                .header("x-imcloud-op", proto.op)
                .header("x-imcloud-seq", proto.seq)
                .body(proto.body)
                .send()
                .await
                .map_err(|err| Status::unavailable(format!("receive webhook: {err}")))?;
            if !response.status().is_success() {
                return Err(Status::unavailable(format!(
                    "receive webhook answered {}",
                    response.status()
                )));
            }
        }
        Ok(Response::new(ReceiveReply {}))
    }

    async fn nodes(&self, request: Request<NodesReq>) -> Result<Response<NodesReply>, Status> {
        let advice = nodes_advice(&self.node).await?;
        debug!(platform = %request.get_ref().platform, "nodes asked");
        Ok(Response::new(advice.into_reply()))
    }

    async fn push_keys(
        &self,
        request: Request<PushKeysReq>,
    ) -> Result<Response<PushKeysReply>, Status> {
        let request = request.into_inner();
        let message = Message::new(operation(request.operation), Bytes::from(request.msg))?;
        let delivered = self.node.push_keys(request.keys, message).await?;
        Ok(Response::new(PushKeysReply {
            nodes: delivered.nodes as i32,
            keys: delivered.keys.unwrap_or(0) as i32,
        }))
    }

    async fn push_mids(
        &self,
        request: Request<PushMidsReq>,
    ) -> Result<Response<PushMidsReply>, Status> {
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
        let message = Message::new(operation(request.operation), Bytes::from(request.msg))?;
        let delivered = self.node.push_mids(mids, message).await?;
        Ok(Response::new(PushMidsReply {
            nodes: delivered.nodes as i32,
            keys: delivered.keys.unwrap_or(0) as i32,
        }))
    }

    async fn push_room(
        &self,
        request: Request<PushRoomReq>,
    ) -> Result<Response<PushRoomReply>, Status> {
        let request = request.into_inner();
        let message = Message::new(operation(request.operation), Bytes::from(request.msg))?;
        let room = format!("{}://{}", request.r#type, request.room);
        let delivered = self.node.push_room(room, message).await?;
        Ok(Response::new(PushRoomReply {
            nodes: delivered.nodes as i32,
        }))
    }

    async fn push_all(
        &self,
        request: Request<PushAllReq>,
    ) -> Result<Response<PushAllReply>, Status> {
        let request = request.into_inner();
        let message = Message::new(operation(request.operation), Bytes::from(request.msg))?;
        let delivered = self.node.push_all(request.speed, message).await?;
        Ok(Response::new(PushAllReply {
            nodes: delivered.nodes as i32,
        }))
    }
}
