//! The im.cloud.Cloud gRPC API end to end: pushes by key, room and
//! broadcast reach exactly their receivers over both transports; bad requests
//! are refused; Close drains every client.

use std::collections::HashSet;

use imcloud_client::Client;
use imcloud_proto::cloud::delivery::Kind;
use imcloud_proto::cloud::{
    BroadcastReq, BroadcastRoomReq, DeliverReq, Delivery, Empty, PushMsgReq, RoomsReq,
};
use imcloud_protocol::{CloseReason, Op};
use imcloud_testkit::fake_logic::{CloudNode, LogicNode, http_get, proto, test_config, token};
use tonic::Code;

/// Connects `n` clients, alternating WebSocket and TCP, each with its own key.
async fn clients(
    node: &CloudNode,
    n: usize,
    room: impl Fn(usize) -> String,
    accepts: &[i32],
) -> Vec<Client> {
    let mut all = Vec::new();
    for i in 0..n {
        let mut client = if i % 2 == 0 {
            Client::connect_ws(&node.ws_url).await.expect("ws")
        } else {
            Client::connect_tcp(node.tcp).await.expect("tcp")
        };
        client
            .auth(token(i as i64, &format!("key-{i}"), &room(i), accepts))
            .await
            .expect("auth");
        all.push(client);
    }
    all
}

async fn broadcast_marker(node: &CloudNode) {
    node.grpc
        .clone()
        .broadcast(BroadcastReq {
            proto_op: 0,
            proto: Some(proto(1999, b"marker")),
            speed: 0,
        })
        .await
        .expect("broadcast");
}

#[tokio::test]
async fn push_msg_reaches_one_key_and_many_keys_across_buckets() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 24, |_| String::new(), &[]).await;

    node.push_keys(&["key-3"], 1000, b"just you").await;
    let got = all[3].recv_push().await.expect("push");
    assert_eq!((got.op, &got.body[..]), (Op(1000), &b"just you"[..]));

    // Every even key, spread over the 4 buckets, in one call.
    let even: Vec<String> = (0..24).step_by(2).map(|i| format!("key-{i}")).collect();
    let even: Vec<&str> = even.iter().map(String::as_str).collect();
    node.push_keys(&even, 1001, b"evens").await;
    broadcast_marker(&node).await;
    for (i, client) in all.iter_mut().enumerate() {
        let got = client.recv_push().await.expect("push");
        if i % 2 == 0 {
            assert_eq!(&got.body[..], b"evens", "client {i}");
            assert_eq!(
                &client.recv_push().await.expect("marker").body[..],
                b"marker"
            );
        } else {
            assert_eq!(&got.body[..], b"marker", "client {i} gets no key push");
        }
    }
}

#[tokio::test]
async fn push_msg_with_a_proto_op_only_reaches_connections_that_accept_it() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 2, |_| String::new(), &[1000]).await;
    all[1].unwatch(&[1000]).await.expect("unwatch");
    node.grpc
        .clone()
        .push_msg(PushMsgReq {
            keys: vec!["key-0".into(), "key-1".into()],
            seqs: Vec::new(),
            proto_op: 1000,
            proto: Some(proto(1000, b"filtered")),
        })
        .await
        .expect("push");
    broadcast_marker(&node).await;
    assert_eq!(
        &all[0].recv_push().await.expect("push").body[..],
        b"filtered"
    );
    assert_eq!(&all[1].recv_push().await.expect("push").body[..], b"marker");
}

#[tokio::test]
async fn broadcast_room_reaches_exactly_the_rooms_members_over_both_transports() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let room = |i: usize| format!("live://{}", i % 3);
    let mut all = clients(&node, 12, room, &[]).await;

    node.grpc
        .clone()
        .broadcast_room(BroadcastRoomReq {
            room_id: "live://1".to_owned(),
            proto: Some(proto(1000, b"room one")),
        })
        .await
        .expect("room push");
    broadcast_marker(&node).await;
    let mut reached = HashSet::new();
    for (i, client) in all.iter_mut().enumerate() {
        let got = client.recv_push().await.expect("push");
        if &got.body[..] == b"room one" {
            reached.insert(i);
            assert_eq!(
                &client.recv_push().await.expect("marker").body[..],
                b"marker"
            );
        } else {
            assert_eq!(&got.body[..], b"marker");
        }
    }
    assert_eq!(
        reached,
        HashSet::from([1, 4, 7, 10]),
        "members only, WS and TCP alike"
    );

    let rooms = node
        .grpc
        .clone()
        .rooms(RoomsReq {})
        .await
        .expect("rooms")
        .into_inner()
        .rooms;
    let mut names: Vec<_> = rooms.into_keys().collect();
    names.sort();
    assert_eq!(names, ["live://0", "live://1", "live://2"]);
}

#[tokio::test]
async fn broadcast_reaches_the_connections_that_accept_its_op() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 4, |_| String::new(), &[1000]).await;
    all[2].watch(&[1001]).await.expect("watch");
    all[3].watch(&[1001, 1002]).await.expect("watch");

    let mut grpc = node.grpc.clone();
    grpc.broadcast(BroadcastReq {
        proto_op: 1001,
        proto: Some(proto(1001, b"for watchers")),
        speed: 0,
    })
    .await
    .expect("broadcast");
    broadcast_marker(&node).await;
    for (i, client) in all.iter_mut().enumerate() {
        let got = client.recv_push().await.expect("push");
        if i >= 2 {
            assert_eq!(&got.body[..], b"for watchers", "client {i}");
            client.recv_push().await.expect("marker");
        } else {
            assert_eq!(&got.body[..], b"marker", "client {i} does not accept 1001");
        }
    }

    // A paced broadcast reaches everyone too, over time.
    grpc.broadcast(BroadcastReq {
        proto_op: 1000,
        proto: Some(proto(1000, b"paced")),
        speed: 20,
    })
    .await
    .expect("paced broadcast");
    for client in &mut all {
        assert_eq!(&client.recv_push().await.expect("push").body[..], b"paced");
    }
}

#[tokio::test]
async fn invalid_requests_are_refused_not_silently_accepted() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut grpc = node.grpc.clone();

    let no_keys = grpc
        .push_msg(PushMsgReq {
            keys: vec![],
            seqs: Vec::new(),
            proto_op: 0,
            proto: Some(proto(1000, b"x")),
        })
        .await
        .expect_err("no keys");
    let no_proto = grpc
        .push_msg(PushMsgReq {
            keys: vec!["k".into()],
            seqs: Vec::new(),
            proto_op: 0,
            proto: None,
        })
        .await
        .expect_err("no proto");
    let protocol_op = grpc
        .push_msg(PushMsgReq {
            keys: vec!["k".into()],
            seqs: Vec::new(),
            proto_op: 0,
            proto: Some(proto(6, b"{}")),
        })
        .await
        .expect_err("op 6 is the server's");
    let empty_room = grpc
        .broadcast_room(BroadcastRoomReq {
            room_id: String::new(),
            proto: Some(proto(1000, b"x")),
        })
        .await
        .expect_err("empty room");
    let negative_speed = grpc
        .broadcast(BroadcastReq {
            proto_op: 0,
            proto: Some(proto(1000, b"x")),
            speed: -1,
        })
        .await
        .expect_err("negative speed");
    for (status, words) in [
        (no_keys, "keys"),
        (no_proto, "proto"),
        (protocol_op, "business op"),
        (empty_room, "roomID"),
        (negative_speed, "speed"),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(words), "{status:?}");
    }
    grpc.ping(Empty {}).await.expect("still serving");
}

#[tokio::test]
async fn close_drains_every_client_and_stops_the_node() {
    let logic = LogicNode::start().await;
    let mut node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 6, |_| "live://1".to_owned(), &[]).await;
    assert_eq!(http_get(node.http, "/health").await.0, 200);
    let (_, metrics) = http_get(node.http, "/metrics").await;
    assert!(
        metrics.contains("imcloud_cloud_connections{transport=\"tcp\"} 3"),
        "{metrics}"
    );

    node.grpc.clone().close(Empty {}).await.expect("close");
    for client in &mut all {
        let body = client.closed().await.expect("op 6");
        assert_eq!(body.close_reason(), Some(CloseReason::Draining));
        assert!(body.reconnect);
    }
    let cloud = node.cloud.take().expect("running");
    assert_eq!(cloud.metrics().closes(CloseReason::Draining), 6);
    cloud.wait().await.expect("the node stops cleanly");
    assert!(
        tokio::net::TcpStream::connect(node.tcp).await.is_err(),
        "no longer accepting"
    );
}

/// What SIGINT/SIGTERM do in the binary: cancel the shutdown token. The
/// node drains exactly as for `Close`.
#[tokio::test]
async fn cancelling_the_shutdown_token_drains_like_close() {
    let logic = LogicNode::start().await;
    let mut node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 2, |_| String::new(), &[]).await;
    node.shutdown.cancel();
    for client in &mut all {
        let body = client.closed().await.expect("op 6");
        assert_eq!(body.close_reason(), Some(CloseReason::Draining));
    }
    node.cloud
        .take()
        .expect("running")
        .wait()
        .await
        .expect("stops cleanly");
}

#[tokio::test]
async fn a_drain_is_paced_and_spreads_reconnects() {
    let logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.drain_rate = 10;
    config.drain_jitter = std::time::Duration::from_secs(3);
    config.drain_grace = std::time::Duration::from_secs(10);
    let mut node = CloudNode::start(config).await;
    let mut all = clients(&node, 12, |_| String::new(), &[]).await;

    node.grpc.clone().close(Empty {}).await.expect("close");
    let first = all[0].closed().await.expect("op 6");
    // At 10 per second, when one client has heard, most have not yet.
    let told_by_then = node.cloud().metrics().closes(CloseReason::Draining);
    assert!(told_by_then < 12, "{told_by_then} told at once");
    let mut hints = vec![first.retry_after_ms.expect("a reconnect hint")];
    for client in &mut all[1..] {
        let body = client.closed().await.expect("op 6 before close");
        assert_eq!(body.close_reason(), Some(CloseReason::Draining));
        hints.push(body.retry_after_ms.expect("a reconnect hint"));
    }
    assert!(hints.iter().all(|hint| *hint <= 3000), "{hints:?}");
    hints.sort_unstable();
    hints.dedup();
    assert!(hints.len() > 1, "hints are jittered: {hints:?}");
    node.cloud
        .take()
        .expect("running")
        .wait()
        .await
        .expect("stops");
}

/// Clients get `drain_grace` to leave after op 6: one that leaves at once
/// is not cut, one that lingers is cut only when the grace runs out (both
/// were once cut within milliseconds of their op 6).
#[tokio::test]
async fn a_drain_gives_lingering_clients_the_grace_to_leave() {
    let logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.drain_grace = std::time::Duration::from_millis(1500);
    let mut node = CloudNode::start(config).await;
    let mut all = clients(&node, 2, |_| String::new(), &[]).await;
    let mut leaver = all.pop().expect("tcp client");
    let mut lingerer = all.pop().expect("ws client");

    node.grpc.clone().close(Empty {}).await.expect("close");
    let said = leaver.closed().await.expect("op 6");
    assert_eq!(said.close_reason(), Some(CloseReason::Draining));
    drop(leaver);
    let said = lingerer.closed().await.expect("op 6");
    assert_eq!(said.close_reason(), Some(CloseReason::Draining));
    // Still connected after its op 6: the lingerer can still talk.
    lingerer
        .send(imcloud_protocol::Packet::new(Op::HEARTBEAT, 9, Vec::new()))
        .await
        .expect("still connected after op 6");

    let cloud = node.cloud.take().expect("running");
    let metrics = cloud.metrics();
    cloud.wait().await.expect("drained");
    assert_eq!(
        metrics.limits_hit("drain_grace"),
        1,
        "only the lingerer is cut"
    );
    assert!(
        lingerer.recv().await.is_err(),
        "cut at the end of the grace"
    );
}

/// The Disconnects of a drain reach logic before the node exits, even when
/// logic is slow to answer them (they were once dropped with the process).
#[tokio::test]
async fn a_drain_finishes_telling_logic_before_the_node_exits() {
    let mut logic = LogicNode::start().await;
    logic
        .disconnect_delay
        .store(300, std::sync::atomic::Ordering::Relaxed);
    let mut node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 6, |_| String::new(), &[]).await;
    node.grpc.clone().close(Empty {}).await.expect("close");
    for client in &mut all {
        client.closed().await.expect("op 6");
    }
    drop(all);
    node.cloud
        .take()
        .expect("running")
        .wait()
        .await
        .expect("drained");
    let mut disconnects = 0;
    while let Ok(event) = logic.events.try_recv() {
        if matches!(event, imcloud_testkit::fake_logic::Event::Disconnect { .. }) {
            disconnects += 1;
        }
    }
    assert_eq!(disconnects, 6, "every Disconnect answered before the exit");
}

#[tokio::test]
async fn push_msg_with_seqs_gives_each_key_its_users_number() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 3, |_| String::new(), &[]).await;
    let keys = vec!["key-0".to_owned(), "key-1".into(), "key-2".into()];
    node.grpc
        .clone()
        .push_msg(PushMsgReq {
            keys: keys.clone(),
            seqs: vec![7, 9, 7],
            proto_op: 0,
            proto: Some(proto(1000, b"numbered")),
        })
        .await
        .expect("push");
    for (client, seq) in all.iter_mut().zip([7, 9, 7]) {
        let got = client.recv_push().await.expect("push");
        assert_eq!((got.seq, &got.body[..]), (seq, &b"numbered"[..]));
    }
    let status = node
        .grpc
        .clone()
        .push_msg(PushMsgReq {
            keys,
            seqs: vec![1],
            proto_op: 0,
            proto: Some(proto(1000, b"x")),
        })
        .await
        .expect_err("one seq for three keys");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("one number per key"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn deliver_carries_several_pushes_in_order_and_answers_each() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut all = clients(&node, 2, |_| "live://1".to_owned(), &[]).await;
    let keys = |keys: &[&str], body: &'static [u8]| Delivery {
        kind: Some(Kind::Keys(PushMsgReq {
            keys: keys.iter().map(|key| key.to_string()).collect(),
            seqs: Vec::new(),
            proto_op: 0,
            proto: Some(proto(1000, body)),
        })),
    };
    let room = |room: &str, op: i32, body: &'static [u8]| Delivery {
        kind: Some(Kind::Room(BroadcastRoomReq {
            room_id: room.to_owned(),
            proto: Some(proto(op, body)),
        })),
    };
    let reply = node
        .grpc
        .clone()
        .deliver(DeliverReq {
            deliveries: vec![
                keys(&["key-0"], b"first"),
                room("live://1", 1000, b"second"),
                room("live://1", 1000, b"second again"),
                // Refused, alone: an op clients cannot be pushed.
                room("live://1", 7, b"bad op"),
                Delivery { kind: None },
                keys(&["key-0", "key-1"], b"third"),
            ],
        })
        .await
        .expect("deliver")
        .into_inner();
    let codes: Vec<Code> = reply
        .results
        .iter()
        .map(|result| Code::from(result.code))
        .collect();
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::InvalidArgument,
            Code::InvalidArgument,
            Code::Ok
        ]
    );
    assert!(
        reply.results[3].message.contains("business op"),
        "{reply:?}"
    );
    assert!(reply.results[4].message.contains("neither"), "{reply:?}");
    let bodies = async |client: &mut Client, n: usize| {
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(client.recv_push().await.expect("push").body.to_vec());
        }
        got
    };
    assert_eq!(
        bodies(&mut all[0], 4).await,
        [&b"first"[..], b"second", b"second again", b"third"]
    );
    assert_eq!(
        bodies(&mut all[1], 3).await,
        [&b"second"[..], b"second again", b"third"]
    );
}
