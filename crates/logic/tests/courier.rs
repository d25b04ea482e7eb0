//! Pushes bound for one cloud node travel together: while calls to the node
//! are in flight, what arrives queues and leaves in the next `Deliver` call.
//! A stand-in cloud node (a real gRPC server) holds its calls until the test
//! lets them go, so what each call carries is known exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imcloud_discovery::ServiceNode;
use imcloud_logic::{Listeners, Logic, LogicConfig};
use imcloud_proto::cloud::cloud_server::{Cloud, CloudServer};
use imcloud_proto::cloud::delivery::Kind;
use imcloud_proto::cloud::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, DeliverReply, DeliverReq,
    DeliveryResult, DevicesReply, DevicesReq, Empty, MembersReply, MembersReq, PushMsgReply,
    PushMsgReq, RoomsReply, RoomsReq,
};
use imcloud_proto::logic::JoinReq;
use imcloud_proto::logic::logic_client::LogicClient;
use imcloud_testkit::cluster::bind;
use imcloud_testkit::eventually;
use imcloud_testkit::standalone::{sample, scrape};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

/// How the stand-in answers `Deliver`.
#[derive(Clone, Copy)]
enum Answer {
    /// Takes every push except those whose body is `bad`.
    Serve,
    /// As a node that predates `Deliver`.
    Unimplemented,
}

/// A cloud node that records the room pushes of each call (their bodies),
/// and lets a `Deliver` call answer only when the test adds a permit.
struct StandIn {
    answer: Answer,
    /// Bodies of each `Deliver` call, in arrival order.
    delivers: Mutex<Vec<Vec<String>>>,
    /// Bodies of `BroadcastRoom` calls.
    rooms: Mutex<Vec<String>>,
    /// `Deliver` calls, answered or not.
    asked: AtomicUsize,
    arrived: Notify,
    gate: Semaphore,
}

fn body(request: &BroadcastRoomReq) -> String {
    let proto = request.proto.as_ref().expect("proto");
    String::from_utf8_lossy(&proto.body).into_owned()
}

/// The stand-in as a gRPC service (the test keeps another handle).
struct Served(Arc<StandIn>);

impl std::ops::Deref for Served {
    type Target = StandIn;
    fn deref(&self) -> &StandIn {
        &self.0
    }
}

#[tonic::async_trait]
impl Cloud for Served {
    async fn ping(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
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
        request: Request<BroadcastRoomReq>,
    ) -> Result<Response<BroadcastRoomReply>, Status> {
        self.rooms.lock().push(body(request.get_ref()));
        self.arrived.notify_waiters();
        Ok(Response::new(BroadcastRoomReply {}))
    }
    async fn deliver(
        &self,
        request: Request<DeliverReq>,
    ) -> Result<Response<DeliverReply>, Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if let Answer::Unimplemented = self.answer {
            return Err(Status::unimplemented("deliver"));
        }
        let bodies: Vec<String> = request
            .into_inner()
            .deliveries
            .iter()
            .map(|delivery| match &delivery.kind {
                Some(Kind::Room(room)) => body(room),
                other => panic!("only room pushes here: {other:?}"),
            })
            .collect();
        self.delivers.lock().push(bodies.clone());
        self.arrived.notify_waiters();
        self.gate.acquire().await.expect("gate").forget();
        let results = bodies
            .iter()
            .map(|body| match body.as_str() {
                "bad" => DeliveryResult {
                    code: Code::InvalidArgument as i32,
                    message: "the stand-in refuses bad".to_owned(),
                },
                _ => DeliveryResult::default(),
            })
            .collect();
        Ok(Response::new(DeliverReply { results }))
    }
    async fn rooms(&self, _: Request<RoomsReq>) -> Result<Response<RoomsReply>, Status> {
        Ok(Response::new(RoomsReply::default()))
    }
    async fn devices(&self, _: Request<DevicesReq>) -> Result<Response<DevicesReply>, Status> {
        Err(Status::unimplemented("devices"))
    }
    async fn members(&self, _: Request<MembersReq>) -> Result<Response<MembersReply>, Status> {
        Err(Status::unimplemented("members"))
    }
}

impl StandIn {
    /// Waits until the calls recorded satisfy `done` (`what`, if not
    /// within 20 s).
    async fn until(&self, what: &str, done: impl Fn(&StandIn) -> bool) {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                if done(self) {
                    return;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within 20 s"));
    }
}

/// A logic node whose only cloud node is a stand-in answering `answer`,
/// with `permits` calls let through from the start.
async fn logic_with(answer: Answer, permits: usize) -> (String, Arc<StandIn>, CancellationToken) {
    let stand_in = Arc::new(StandIn {
        answer,
        delivers: Mutex::default(),
        rooms: Mutex::default(),
        asked: AtomicUsize::new(0),
        arrived: Notify::new(),
        gate: Semaphore::new(permits),
    });
    let listener = bind().await;
    let grpc = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CloudServer::new(Served(stand_in.clone())))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let listeners = Listeners {
        grpc: bind().await,
        http: bind().await,
    };
    let http = format!("http://{}", listeners.http.local_addr().expect("addr"));
    let logic_grpc = format!("http://{}", listeners.grpc.local_addr().expect("addr"));
    let config = LogicConfig {
        cloud_nodes: vec![ServiceNode {
            id: "stand-in".to_owned(),
            grpc: grpc.to_string(),
            ws: String::new(),
            tcp: String::new(),
            load: 0,
        }],
        ..LogicConfig::default()
    };
    Logic::start(listeners, config, stop.clone()).expect("logic");
    // The stand-in holds members of live://1: a join there routes the
    // room's pushes to it.
    let channel = tonic::transport::Endpoint::from_shared(logic_grpc)
        .expect("uri")
        .connect()
        .await
        .expect("logic gRPC");
    LogicClient::new(channel)
        .join(JoinReq {
            server: "stand-in".to_owned(),
            room: "live://1".to_owned(),
            ..JoinReq::default()
        })
        .await
        .expect("join");
    (http, stand_in, stop)
}

/// Pushes `msg` to room `live://1` and returns the answer.
async fn push_room(http: String, msg: impl std::fmt::Display) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{http}/im/push/room"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("room=live://1&msg={msg}"))
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn pushes_that_arrive_while_calls_are_in_flight_leave_in_one_call() {
    let (http, stand_in, _stop) = logic_with(Answer::Serve, 0).await;
    // Two calls in flight, each with one push, held by the stand-in.
    let mut first = Vec::new();
    for (n, msg) in ["a", "b"].into_iter().enumerate() {
        first.push(tokio::spawn(push_room(http.clone(), msg)));
        stand_in
            .until("a call in flight", |s| s.delivers.lock().len() == n + 1)
            .await;
    }
    // Forty more arrive meanwhile, and wait in the courier's queue.
    let queued: Vec<_> = (0..40)
        .map(|i| tokio::spawn(push_room(http.clone(), format!("m{i}"))))
        .collect();
    eventually("forty pushes queued for the node", async || {
        sample(&scrape(&http).await, "imcloud_logic_cloud_queued") == 40.0
    })
    .await;
    // One answer frees a slot: the next call carries all forty.
    stand_in.gate.add_permits(1);
    stand_in
        .until("the third call", |s| s.delivers.lock().len() == 3)
        .await;
    stand_in.gate.add_permits(2);
    for push in first.into_iter().chain(queued) {
        let (status, body) = push.await.expect("push");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["nodes"], 1, "{body}");
    }
    let delivers = stand_in.delivers.lock().clone();
    assert_eq!(delivers.len(), 3, "{delivers:?}");
    let mut batched = delivers[2].clone();
    batched.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(batched, expected);
    let metrics = scrape(&http).await;
    assert_eq!(
        sample(&metrics, "imcloud_logic_cloud_deliveries_per_call_count"),
        3.0
    );
    assert_eq!(
        sample(&metrics, "imcloud_logic_cloud_deliveries_per_call_sum"),
        42.0
    );
    assert_eq!(sample(&metrics, "imcloud_logic_cloud_queued"), 0.0);
}

#[tokio::test]
async fn a_push_the_node_refuses_fails_alone() {
    let (http, stand_in, _stop) = logic_with(Answer::Serve, 100).await;
    let (status, body) = push_room(http.clone(), "bad").await;
    assert_eq!(status, 503, "no node took it: {body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("the stand-in refuses bad"), "{message}");
    let (status, body) = push_room(http, "good").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], 1);
    assert_eq!(stand_in.delivers.lock().len(), 2);
}

#[tokio::test]
async fn a_node_without_deliver_gets_one_call_per_push() {
    let (http, stand_in, _stop) = logic_with(Answer::Unimplemented, 0).await;
    for msg in ["one", "two", "three"] {
        let (status, body) = push_room(http.clone(), msg).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["nodes"], 1, "{body}");
    }
    assert_eq!(*stand_in.rooms.lock(), ["one", "two", "three"]);
    assert_eq!(
        stand_in.asked.load(Ordering::SeqCst),
        1,
        "Deliver is asked once, then not again"
    );
}
