//! The `im.cloud.Cloud` gRPC service: how logic and backends push to this
//! node's clients. A message is encoded once per call and the same bytes go
//! to every receiver.

use std::sync::Arc;
use std::time::Instant;

use imcloud_auth::ApiKey;
use imcloud_proto::cloud::cloud_server::{Cloud, CloudServer};
use imcloud_proto::cloud::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, Empty, Proto, PushMsgReply,
    PushMsgReq, RoomsReply, RoomsReq,
};
use imcloud_protocol::{Op, Packet, VERSION};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::bucket::{BucketGone, deliver};
use crate::metrics::Delivery;
use crate::node::Node;
use crate::outbox::{Outbox, Push};
use crate::pace::paced;

pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let check = ApiKey::new(node.config.api_key.clone()).interceptor();
    tonic::transport::Server::builder()
        .layer(node.metrics.grpc.layer())
        .add_service(CloudServer::with_interceptor(CloudService { node }, check))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}

struct CloudService {
    node: Arc<Node>,
}

impl From<BucketGone> for Status {
    fn from(err: BucketGone) -> Status {
        Status::unavailable(format!("{err}: the node is shutting down"))
    }
}

/// Checks a pushed message and encodes it once, stamped with the time it
/// arrived (for the push latency metric).
fn encode(proto: Option<Proto>) -> Result<Push, Status> {
    let at = Instant::now();
    let proto = proto.ok_or_else(|| Status::invalid_argument("proto is required"))?;
    let op = u32::try_from(proto.op)
        .ok()
        .map(Op)
        .filter(|op| op.is_business())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "proto.op {} is not a business op (>= {})",
                proto.op,
                Op::FIRST_BUSINESS.0
            ))
        })?;
    let ver = match proto.ver {
        0 => VERSION,
        ver => u16::try_from(ver).map_err(|_| {
            Status::invalid_argument(format!("proto.ver {ver} does not fit 16 bits"))
        })?,
    };
    // seq is a 32-bit field on both sides; keep its bits.
    Packet {
        ver,
        op,
        seq: proto.seq as u32,
        body: proto.body.into(),
    }
    .encode()
    .map(|packet| Push::new(packet, at))
    .map_err(|err| Status::invalid_argument(err.to_string()))
}

/// `protoOp` 0 means "no filter"; otherwise only connections that accept it.
fn op_filter(proto_op: i32) -> Result<Option<u32>, Status> {
    match proto_op {
        0 => Ok(None),
        op => u32::try_from(op)
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("protoOp {op} is negative"))),
    }
}

#[tonic::async_trait]
impl Cloud for CloudService {
    async fn ping(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn close(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        info!("close requested over gRPC");
        self.node.stop.cancel();
        Ok(Response::new(Empty {}))
    }

    async fn push_msg(
        &self,
        request: Request<PushMsgReq>,
    ) -> Result<Response<PushMsgReply>, Status> {
        let request = request.into_inner();
        if request.keys.is_empty() {
            return Err(Status::invalid_argument("keys must not be empty"));
        }
        if request.keys.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "keys must not contain an empty key",
            ));
        }
        let filter = op_filter(request.proto_op)?;
        let push = encode(request.proto)?;
        self.node.metrics.pushed(Delivery::Key);
        debug!(keys = request.keys.len(), op = %push.packet.op(), "push to keys");
        let keys = request.keys.iter().map(|key| key.as_str().into());
        self.node.buckets.push_keys(keys, &push, filter).await?;
        Ok(Response::new(PushMsgReply {}))
    }

    async fn broadcast(
        &self,
        request: Request<BroadcastReq>,
    ) -> Result<Response<BroadcastReply>, Status> {
        let request = request.into_inner();
        let filter = op_filter(request.proto_op)?;
        let speed = u32::try_from(request.speed).map_err(|_| {
            Status::invalid_argument(format!("speed {} is negative", request.speed))
        })?;
        let push = encode(request.proto)?;
        self.node.metrics.pushed(Delivery::Broadcast);
        debug!(op = %push.packet.op(), speed, "broadcast");
        if speed == 0 {
            self.node.buckets.broadcast(&push, filter).await?;
        } else {
            // Pacing takes a while: snapshot the receivers and let the
            // buckets go on serving meanwhile.
            let targets = self.node.buckets.select(filter).await?;
            let node = self.node.clone();
            tokio::spawn(async move { pace(targets, push, speed, &node).await });
        }
        Ok(Response::new(BroadcastReply {}))
    }

    async fn broadcast_room(
        &self,
        request: Request<BroadcastRoomReq>,
    ) -> Result<Response<BroadcastRoomReply>, Status> {
        let request = request.into_inner();
        if request.room_id.is_empty() {
            return Err(Status::invalid_argument("roomID must not be empty"));
        }
        let push = encode(request.proto)?;
        self.node.metrics.pushed(Delivery::Room);
        debug!(room = %request.room_id, op = %push.packet.op(), "push to room");
        self.node
            .buckets
            .push_room(request.room_id.as_str().into(), &push)
            .await?;
        Ok(Response::new(BroadcastRoomReply {}))
    }

    async fn rooms(&self, _: Request<RoomsReq>) -> Result<Response<RoomsReply>, Status> {
        let rooms = self.node.buckets.room_counts().await?;
        Ok(Response::new(RoomsReply {
            rooms: rooms
                .into_keys()
                .map(|room| (room.to_string(), true))
                .collect(),
        }))
    }
}

/// Delivers to at most `speed` connections per second, in small steps.
async fn pace(targets: Vec<Arc<Outbox>>, push: Push, speed: u32, node: &Node) {
    paced(&targets, speed, |group| {
        let sent = deliver(group, &push);
        node.metrics.delivered(Delivery::Broadcast, sent);
    })
    .await;
}
