//! The generated server and client talk over a real socket.

use imcloud_proto::cloud::cloud_client::CloudClient;
use imcloud_proto::cloud::cloud_server::{Cloud, CloudServer};
use imcloud_proto::cloud::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, DeliverReply, DeliverReq,
    DevicesReply, DevicesReq, Empty, MembersReply, MembersReq, PushMsgReply, PushMsgReq,
    RoomsReply, RoomsReq,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A cloud service that only answers `Ping`, counting the calls it served.
#[derive(Default)]
struct PingOnly {
    pings: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Cloud for PingOnly {
    async fn ping(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Empty {}))
    }
    async fn close(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("close"))
    }
    async fn push_msg(&self, _: Request<PushMsgReq>) -> Result<Response<PushMsgReply>, Status> {
        Err(Status::unimplemented("push_msg"))
    }
    async fn broadcast(
        &self,
        _: Request<BroadcastReq>,
    ) -> Result<Response<BroadcastReply>, Status> {
        Err(Status::unimplemented("broadcast"))
    }
    async fn broadcast_room(
        &self,
        _: Request<BroadcastRoomReq>,
    ) -> Result<Response<BroadcastRoomReply>, Status> {
        Err(Status::unimplemented("broadcast_room"))
    }
    async fn deliver(&self, _: Request<DeliverReq>) -> Result<Response<DeliverReply>, Status> {
        Err(Status::unimplemented("deliver"))
    }
    async fn rooms(&self, _: Request<RoomsReq>) -> Result<Response<RoomsReply>, Status> {
        Err(Status::unimplemented("rooms"))
    }
    async fn devices(&self, _: Request<DevicesReq>) -> Result<Response<DevicesReply>, Status> {
        Err(Status::unimplemented("devices"))
    }
    async fn members(&self, _: Request<MembersReq>) -> Result<Response<MembersReply>, Status> {
        Err(Status::unimplemented("members"))
    }
}

#[tokio::test]
async fn generated_client_pings_generated_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let service = PingOnly::default();
    let pings = service.pings.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CloudServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = CloudClient::new(channel);
    client.ping(Empty {}).await.expect("ping");
    client.ping(Empty {}).await.expect("second ping");
    assert_eq!(pings.load(Ordering::SeqCst), 2);

    // An RPC the server refuses comes back as a status, not a silent OK.
    let status = client
        .rooms(RoomsReq {})
        .await
        .expect_err("rooms is not implemented here");
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    server.abort();
}
