//! The `im.cloud.Cloud` gRPC service: how logic and backends push to this
//! node's clients. A message is encoded once per call and the same bytes go
//! to every receiver.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use imcloud_auth::ApiKey;
use imcloud_proto::cloud::cloud_server::{Cloud, CloudServer};
use imcloud_proto::cloud::delivery::Kind;
use imcloud_proto::cloud::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, DeliverReply, DeliverReq,
    DeliveryResult, Device, DevicesReply, DevicesReq, Empty, MembersReply, MembersReq, Proto,
    PushMsgReply, PushMsgReq, RoomsReply, RoomsReq,
};
use imcloud_protocol::{Op, Packet, RoomId, VERSION};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::bucket::{BucketGone, Buckets, Key, deliver_group};
use crate::metrics::{Delivery, Metrics};
use crate::outbox::Outbox;
use crate::pace::paced;
use crate::wire::Push;

/// What the gRPC API reaches: the buckets to push into, the metrics, the
/// node's drain (`Close`), and where paced broadcasts run.
pub(crate) struct CloudService {
    pub(crate) buckets: Buckets,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled by `Close`: the node drains.
    pub(crate) drain: CancellationToken,
    /// Paced broadcasts outlive their call; the node waits for them.
    pub(crate) background: TaskTracker,
}

pub(crate) async fn serve(
    listener: TcpListener,
    service: CloudService,
    key: ApiKey,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let layer = service.metrics.grpc.layer();
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(CloudServer::with_interceptor(service, key.interceptor()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
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
        body: proto.body,
    }
    .encode()
    .map(|packet| Push::new(packet, at))
    .map_err(|err| Status::invalid_argument(err.to_string()))
}

/// `push` once per distinct user sequence number: a user's devices share
/// the user's packet.
fn numbered(push: &Push, seqs: &[u32]) -> HashMap<u32, Push> {
    let mut packets = HashMap::new();
    for seq in seqs {
        packets
            .entry(*seq)
            .or_insert_with(|| Push::new(push.packet.with_seq(*seq), push.at));
    }
    packets
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

impl CloudService {
    /// `PushMsg`, alone or as part of `Deliver`.
    async fn push_keys(&self, request: PushMsgReq) -> Result<(), Status> {
        if request.keys.is_empty() {
            return Err(Status::invalid_argument("keys must not be empty"));
        }
        if request.keys.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "keys must not contain an empty key",
            ));
        }
        if !request.seqs.is_empty() && request.seqs.len() != request.keys.len() {
            return Err(Status::invalid_argument(format!(
                "seqs must hold one number per key: {} keys, {} seqs",
                request.keys.len(),
                request.seqs.len()
            )));
        }
        let filter = op_filter(request.proto_op)?;
        let push = encode(request.proto)?;
        self.metrics.pushed(Delivery::Key);
        debug!(keys = request.keys.len(), op = %push.packet.op(), "push to keys");
        let keys = request.keys.iter().map(|key| Key::from(key.as_str()));
        if request.seqs.is_empty() {
            let targets = keys.map(|key| (key, push.clone()));
            self.buckets.push_keys(targets, filter).await?;
        } else {
            let numbered = numbered(&push, &request.seqs);
            let targets = keys.zip(request.seqs.iter().map(|seq| numbered[seq].clone()));
            self.buckets.push_keys(targets, filter).await?;
        }
        Ok(())
    }

    /// `BroadcastRoom`, alone or as part of `Deliver`.
    async fn push_room(&self, request: BroadcastRoomReq) -> Result<(), Status> {
        let room = RoomId::parse(&request.room_id)
            .map_err(|err| Status::invalid_argument(format!("roomID: {err}")))?;
        let push = encode(request.proto)?;
        self.metrics.pushed(Delivery::Room);
        debug!(room = %request.room_id, op = %push.packet.op(), "push to room");
        self.buckets.push_room(room, &push).await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Cloud for CloudService {
    async fn ping(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn close(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        info!("close requested over gRPC");
        self.drain.cancel();
        Ok(Response::new(Empty {}))
    }

    async fn push_msg(
        &self,
        request: Request<PushMsgReq>,
    ) -> Result<Response<PushMsgReply>, Status> {
        self.push_keys(request.into_inner()).await?;
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
        self.metrics.pushed(Delivery::Broadcast);
        debug!(op = %push.packet.op(), speed, "broadcast");
        if speed == 0 {
            self.buckets.broadcast(&push, filter).await?;
        } else {
            // Pacing takes a while: snapshot the receivers and let the
            // buckets go on serving meanwhile.
            let targets = self.buckets.select(filter).await?;
            let metrics = self.metrics.clone();
            self.background
                .spawn(async move { pace(targets, push, speed, &metrics).await });
        }
        Ok(Response::new(BroadcastReply {}))
    }

    async fn broadcast_room(
        &self,
        request: Request<BroadcastRoomReq>,
    ) -> Result<Response<BroadcastRoomReply>, Status> {
        self.push_room(request.into_inner()).await?;
        Ok(Response::new(BroadcastRoomReply {}))
    }

    async fn deliver(
        &self,
        request: Request<DeliverReq>,
    ) -> Result<Response<DeliverReply>, Status> {
        let deliveries = request.into_inner().deliveries;
        let mut results = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let outcome = match delivery.kind {
                Some(Kind::Keys(request)) => self.push_keys(request).await,
                Some(Kind::Room(request)) => self.push_room(request).await,
                None => Err(Status::invalid_argument(
                    "a delivery names neither keys nor a room",
                )),
            };
            results.push(match outcome {
                Ok(()) => DeliveryResult::default(),
                Err(status) => DeliveryResult {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                },
            });
        }
        Ok(Response::new(DeliverReply { results }))
    }

    async fn rooms(&self, _: Request<RoomsReq>) -> Result<Response<RoomsReply>, Status> {
        let rooms = self.buckets.room_counts(None).await?;
        Ok(Response::new(RoomsReply {
            rooms: rooms
                .into_keys()
                .map(|room| (room.to_string(), true))
                .collect(),
        }))
    }

    async fn devices(
        &self,
        request: Request<DevicesReq>,
    ) -> Result<Response<DevicesReply>, Status> {
        let keys = request
            .into_inner()
            .keys
            .into_iter()
            .map(Key::from)
            .collect();
        let devices = self.buckets.devices(keys).await?;
        Ok(Response::new(DevicesReply {
            devices: devices
                .into_iter()
                .map(|device| Device {
                    key: device.key.to_string(),
                    mid: device.mid,
                    platform: device.platform.into(),
                    rooms: device.rooms.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }))
    }

    async fn members(
        &self,
        request: Request<MembersReq>,
    ) -> Result<Response<MembersReply>, Status> {
        let request = request.into_inner();
        let room = RoomId::parse(&request.room_id)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let limit = request.limit as usize;
        let (online, mids, truncated) = self.buckets.members(room, limit).await?;
        Ok(Response::new(MembersReply {
            online: u32::try_from(online).unwrap_or(u32::MAX),
            mids,
            truncated,
        }))
    }
}

/// Delivers to at most `speed` connections per second, in small steps.
async fn pace(targets: Vec<Arc<Outbox>>, push: Push, speed: u32, metrics: &Metrics) {
    paced(&targets, speed, |group| {
        let sent = deliver_group(group, &push, metrics);
        metrics.delivered(Delivery::Broadcast, sent);
    })
    .await;
}
