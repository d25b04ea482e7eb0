//! Client connections end to end: real WebSocket and TCP clients, a real
//! cloud node, a real (fake-behaviour) logic gRPC server.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use imcloud_client::{AuthReply, Client, ClientError};
use imcloud_proto::cloud::BroadcastRoomReq;
use imcloud_protocol::{CloseBody, CloseReason, Op, Packet};
use imcloud_testkit::eventually;
use imcloud_testkit::fake_logic::{CloudNode, Event, LogicNode, proto, test_config, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Ws,
    Tcp,
}

const BOTH: [Transport; 2] = [Transport::Ws, Transport::Tcp];

async fn connect(node: &CloudNode, transport: Transport) -> Client {
    match transport {
        Transport::Ws => Client::connect_ws(&node.ws_url).await.expect("ws connect"),
        Transport::Tcp => Client::connect_tcp(node.tcp).await.expect("tcp connect"),
    }
}

fn closed_with(
    result: Result<impl std::fmt::Debug, ClientError>,
    reason: CloseReason,
) -> CloseBody {
    match result {
        Err(ClientError::Closed(body)) => {
            assert_eq!(body.close_reason(), Some(reason), "{body:?}");
            body
        }
        other => panic!("expected op 6 {reason}, got {other:?}"),
    }
}

#[tokio::test]
async fn clients_authenticate_over_both_transports() {
    let mut logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    for (i, transport) in BOTH.into_iter().enumerate() {
        let mut client = connect(&node, transport).await;
        let key = format!("key-{i}");
        let reply = client
            .auth(token(7, &key, "live://1", &[1000]))
            .await
            .expect("auth ok");
        assert_eq!(
            reply,
            AuthReply {
                mid: 7,
                key: key.clone(),
                room_id: "live://1".to_owned(),
                rooms: vec!["live://1".to_owned()],
                heartbeat: 30,
            },
            "{transport:?}"
        );
        let server = logic
            .next(|e| match e {
                Event::Connect { key: k, server, .. } if k == key => Some(server),
                _ => None,
            })
            .await;
        assert_eq!(server, "cloud-test");
        // Leaving tells logic.
        drop(client);
        logic
            .next(|e| {
                matches!(e, Event::Disconnect { mid: 7, key: ref k } if *k == key).then_some(())
            })
            .await;
    }
    assert_eq!(node.cloud().metrics().connections("ws"), 0);
}

#[tokio::test]
async fn a_bad_token_is_refused_with_a_reason() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    for transport in BOTH {
        let mut client = connect(&node, transport).await;
        let body = closed_with(client.auth("not json").await, CloseReason::AuthFailed);
        assert!(body.reason.contains("bad token"), "{}", body.reason);
        assert!(!body.reconnect);
        assert!(
            matches!(client.recv().await, Err(ClientError::Ended)),
            "{transport:?} closed"
        );
    }
    assert_eq!(node.cloud().metrics().closes(CloseReason::AuthFailed), 2);
}

#[tokio::test]
async fn a_client_that_never_authenticates_is_closed() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    for transport in BOTH {
        let mut client = connect(&node, transport).await;
        let body = client.closed().await.expect("op 6");
        assert_eq!(body.close_reason(), Some(CloseReason::HandshakeTimeout));
    }
}

#[tokio::test]
async fn logic_down_means_auth_unavailable_and_a_reconnect_hint() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let node = CloudNode::start(test_config(dead)).await;
    for transport in BOTH {
        let mut client = connect(&node, transport).await;
        let body = closed_with(
            client.auth(token(1, "k", "", &[])).await,
            CloseReason::LogicUnavailable,
        );
        assert!(body.reconnect);
    }
}

#[tokio::test]
async fn the_first_packet_must_be_auth() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    for transport in BOTH {
        let mut client = connect(&node, transport).await;
        client
            .send(Packet::new(Op::HEARTBEAT, 1, Bytes::new()))
            .await
            .expect("send");
        let body = client.closed().await.expect("op 6");
        assert_eq!(body.close_reason(), Some(CloseReason::ProtocolError));
        assert!(body.reason.contains("must be auth"), "{}", body.reason);
    }
}

#[tokio::test]
async fn heartbeat_replies_with_the_cluster_count_else_the_local_one() {
    let mut logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut ws = connect(&node, Transport::Ws).await;
    ws.auth(token(1, "a", "live://9", &[])).await.expect("auth");
    let mut tcp = connect(&node, Transport::Tcp).await;
    tcp.auth(token(2, "b", "live://9", &[]))
        .await
        .expect("auth");
    let mut roomless = connect(&node, Transport::Tcp).await;
    roomless.auth(token(3, "c", "", &[])).await.expect("auth");
    // Before any report names its room, a client still counts itself.
    let mut newcomer = connect(&node, Transport::Ws).await;
    newcomer
        .auth(token(4, "d", "live://new", &[]))
        .await
        .expect("auth");
    assert_eq!(newcomer.heartbeat().await.expect("heartbeat"), 1);

    // Logic knows no totals: the node's own count (2) is used once reported.
    // Reports are sequential, so after the second report naming 2 members,
    // the first one's answer is in place.
    for _ in 0..2 {
        logic
            .next(|e| {
                matches!(e, Event::RenewOnline { ref rooms } if rooms.get("live://9") == Some(&2))
                    .then_some(())
            })
            .await;
    }
    assert_eq!(ws.heartbeat().await.expect("heartbeat"), 2);
    assert_eq!(roomless.heartbeat().await.expect("heartbeat"), 0);

    // Logic answers cluster totals: they win.
    logic.totals.lock().insert("live://9".to_owned(), 42);
    for _ in 0..2 {
        logic
            .next(|e| matches!(e, Event::RenewOnline { .. }).then_some(()))
            .await;
    }
    assert_eq!(ws.heartbeat().await.expect("heartbeat"), 42);
    assert_eq!(tcp.heartbeat().await.expect("heartbeat"), 42);
}

#[tokio::test]
async fn heartbeats_renew_the_session_at_most_once_per_interval() {
    let mut logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.renew_interval = Duration::ZERO;
    let node = CloudNode::start(config).await;
    let mut client = connect(&node, Transport::Tcp).await;
    client.auth(token(5, "renew", "", &[])).await.expect("auth");
    client.heartbeat().await.expect("heartbeat");
    logic
        .next(|e| matches!(e, Event::Heartbeat { mid: 5, .. }).then_some(()))
        .await;

    let mut config = test_config(logic.addr);
    config.renew_interval = Duration::from_secs(3600);
    let quiet = CloudNode::start(config).await;
    let mut client = connect(&quiet, Transport::Tcp).await;
    client.auth(token(6, "quiet", "", &[])).await.expect("auth");
    for _ in 0..5 {
        client.heartbeat().await.expect("heartbeat");
    }
    // Closing produces a Disconnect; no Heartbeat for mid 6 may come before it.
    drop(client);
    let first = logic
        .next(|e| match e {
            Event::Heartbeat { mid: 6, .. } | Event::Disconnect { mid: 6, .. } => Some(e),
            _ => None,
        })
        .await;
    assert!(matches!(first, Event::Disconnect { .. }), "{first:?}");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_two_heartbeats() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut client = connect(&node, Transport::Ws).await;
    let one_second = serde_json::json!({"mid": 1, "key": "quiet", "heartbeat": 1}).to_string();
    let reply = client.auth(one_second).await.expect("auth");
    assert_eq!(reply.heartbeat, 1);
    let started = std::time::Instant::now();
    let body = client.closed().await.expect("op 6");
    assert_eq!(body.close_reason(), Some(CloseReason::HeartbeatTimeout));
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "not before 2 heartbeats"
    );
}

/// Silence is about what the client sends: pushes flowing to it do not keep
/// a silent client open, and a client that heartbeats stays open while its
/// silent neighbour in the same room is closed.
#[tokio::test]
async fn pushes_do_not_keep_a_silent_client_open_and_heartbeats_do() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let auth = |mid: i64, key: &str| {
        serde_json::json!({"mid": mid, "key": key, "heartbeat": 1, "room_id": "live://hb"})
            .to_string()
    };
    let mut quiet = connect(&node, Transport::Tcp).await;
    quiet.auth(auth(1, "quiet")).await.expect("auth");
    let mut talker = connect(&node, Transport::Ws).await;
    talker.auth(auth(2, "talker")).await.expect("auth");

    let grpc = node.grpc.clone();
    let pusher = tokio::spawn(async move {
        let mut grpc = grpc;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let push = BroadcastRoomReq {
                room_id: "live://hb".to_owned(),
                proto: Some(proto(1000, b"tick")),
            };
            if grpc.broadcast_room(push).await.is_err() {
                return;
            }
        }
    });
    // The talker heartbeats every half second until the quiet client is
    // closed; pushes arrive meanwhile.
    let (quiet_closed, mut stop_talking) = tokio::sync::oneshot::channel::<()>();
    let talking = tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut stop_talking => return talker,
                _ = beat.tick() => {
                    talker.heartbeat().await.expect("the talker stays open");
                }
            }
        }
    });

    let mut pushes = 0;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let packet = quiet.recv().await.expect("packet");
            match packet.op {
                Op::DISCONNECT => break CloseBody::parse(&packet.body).expect("op 6 body"),
                _ => pushes += 1,
            }
        }
    });
    let close = closed.await.expect("the quiet client is closed");
    assert_eq!(close.close_reason(), Some(CloseReason::HeartbeatTimeout));
    assert!(pushes >= 10, "pushes reached the quiet client: {pushes}");
    let _ = quiet_closed.send(());
    let mut talker = talking.await.expect("talker");
    talker
        .heartbeat()
        .await
        .expect("still open after its neighbour was closed");
    pusher.abort();
}

#[tokio::test]
async fn client_messages_reach_logic_and_are_acked() {
    let mut logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    for transport in BOTH {
        let mut client = connect(&node, transport).await;
        client
            .auth(token(9, "talker", "", &[]))
            .await
            .expect("auth");
        let ack = client.send_msg("hello").await.expect("ack");
        assert!(ack.is_empty(), "logic took it");
        let body = logic
            .next(|e| match e {
                Event::Receive { mid: 9, body } => Some(body),
                _ => None,
            })
            .await;
        assert_eq!(body, b"hello");
        // A message logic refuses is acked with the error, never as delivered.
        let ack = client.send_msg("fail").await.expect("ack");
        let ack: serde_json::Value = serde_json::from_slice(&ack).expect("error json");
        assert_eq!(ack["error"], "backend refused the message");
    }
}

#[tokio::test]
async fn changing_room_moves_the_client_between_room_pushes() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut client = connect(&node, Transport::Ws).await;
    client
        .auth(token(1, "mover", "live://1", &[]))
        .await
        .expect("auth");
    client.change_room("live://2").await.expect("change room");

    let room_push = |room: &str, body: &[u8]| BroadcastRoomReq {
        room_id: room.to_owned(),
        proto: Some(proto(1000, body)),
    };
    let mut grpc = node.grpc.clone();
    grpc.broadcast_room(room_push("live://1", b"old room"))
        .await
        .expect("push");
    grpc.broadcast_room(room_push("live://2", b"new room"))
        .await
        .expect("push");
    let got = client.recv_push().await.expect("push");
    assert_eq!(&got.body[..], b"new room");

    // Leaving the room: room pushes stop, key pushes still arrive.
    client.change_room("").await.expect("leave");
    grpc.broadcast_room(room_push("live://2", b"left"))
        .await
        .expect("push");
    node.push_keys(&["mover"], 1001, b"direct").await;
    let got = client.recv_push().await.expect("push");
    assert_eq!((got.op, &got.body[..]), (Op(1001), &b"direct"[..]));

    // A malformed room id is a protocol error.
    client
        .send(Packet::new(Op::CHANGE_ROOM, 99, "no-scheme"))
        .await
        .expect("send");
    let body = client.closed().await.expect("op 6");
    assert_eq!(body.close_reason(), Some(CloseReason::ProtocolError));
}

#[tokio::test]
async fn the_same_key_twice_kicks_the_older_connection() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let mut old = connect(&node, Transport::Tcp).await;
    old.auth(token(1, "device", "", &[])).await.expect("auth");
    let mut new = connect(&node, Transport::Ws).await;
    new.auth(token(1, "device", "", &[])).await.expect("auth");

    let body = old.closed().await.expect("op 6");
    assert_eq!(body.close_reason(), Some(CloseReason::Kicked));
    assert!(!body.reconnect, "a kicked client must not fight back");

    node.push_keys(&["device"], 1000, b"to the newest").await;
    let got = new.recv_push().await.expect("push");
    assert_eq!(&got.body[..], b"to the newest");
}

#[tokio::test]
async fn oversized_and_malformed_packets_close_the_connection() {
    let logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.max_body = 64;
    let node = CloudNode::start(config).await;

    for transport in BOTH {
        // A body over max_body, after auth.
        let mut client = connect(&node, transport).await;
        client.auth(token(1, "big", "", &[])).await.expect("auth");
        client
            .send(Packet::new(Op::SEND_MSG, 2, vec![0u8; 65]))
            .await
            .expect("send");
        let body = client.closed().await.expect("op 6");
        assert_eq!(
            body.close_reason(),
            Some(CloseReason::ProtocolError),
            "{transport:?}"
        );
        assert!(
            body.reason.contains("65") || body.reason.contains("80"),
            "{}",
            body.reason
        );
        assert!(
            node.cloud().metrics().limits_hit("max_body") >= 1,
            "counted"
        );

        // An op a client may not send.
        let mut client = connect(&node, transport).await;
        client.auth(token(1, "op", "", &[])).await.expect("auth");
        client
            .send(Packet::new(Op(1000), 3, Bytes::new()))
            .await
            .expect("send");
        let body = client.closed().await.expect("op 6");
        assert!(
            body.reason.contains("not a client request"),
            "{}",
            body.reason
        );
    }

    // A bad header over raw TCP: header_len 12.
    let mut raw = TcpStream::connect(node.tcp).await.expect("connect");
    raw.write_all(&[0, 0, 0, 16, 0, 12, 0, 1, 0, 0, 0, 7, 0, 0, 0, 1])
        .await
        .expect("write");
    let close = read_close(&mut raw).await;
    assert_eq!(
        close.reason,
        "protocol error: header_len is 12, expected 16"
    );

    // A text frame over WebSocket.
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.ws_url)
        .await
        .expect("ws");
    ws.send(Message::Text("hello".into())).await.expect("send");
    let frame = ws.next().await.expect("a frame").expect("ok");
    let packet = Packet::from_frame(frame.into_data(), 1 << 20).expect("packet");
    let close = CloseBody::parse(&packet.body).expect("op 6");
    assert!(close.reason.contains("text frames"), "{}", close.reason);
    assert!(
        matches!(
            ws.next().await,
            None | Some(Ok(Message::Close(_))) | Some(Err(_))
        ),
        "closed after op 6"
    );
}

/// Reads one op-6 packet from a raw TCP stream and checks the stream ends.
async fn read_close(raw: &mut TcpStream) -> CloseBody {
    let mut bytes = Vec::new();
    raw.read_to_end(&mut bytes).await.expect("read");
    let packet = Packet::from_frame(Bytes::from(bytes), 1 << 20).expect("exactly one packet");
    assert_eq!(packet.op, Op::DISCONNECT);
    CloseBody::parse(&packet.body).expect("close body")
}

#[tokio::test]
async fn websocket_upgrades_only_on_sub_and_echoes_the_subprotocol() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;

    let wrong = format!("ws://{}/other", node.ws);
    match tokio_tungstenite::connect_async(&wrong).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404);
        }
        other => panic!("expected 404, got {other:?}"),
    }

    let mut request = node.ws_url.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "goim, other".parse().expect("header"),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.as_bytes()),
        Some(&b"goim"[..])
    );
}

/// RFC 6455 5.5.1: a client's Close is answered with a Close (it was once
/// left unanswered, so clients saw 1006), and a close the server starts
/// carries op 6's code and reason.
#[tokio::test]
async fn websocket_closes_are_answered_and_carry_a_code_and_reason() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    let auth = |token: String| {
        let packet = Packet::new(Op::AUTH, 1, token.into_bytes())
            .encode()
            .expect("encode");
        Message::Binary(packet.as_bytes().clone())
    };

    // The client says goodbye: the server answers with its own Close.
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.ws_url)
        .await
        .expect("connect");
    ws.send(auth(token(1, "polite", "", &[])))
        .await
        .expect("auth");
    assert!(
        matches!(ws.next().await, Some(Ok(Message::Binary(_)))),
        "op 8"
    );
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("close");
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the server's Close answer, got {other:?}"),
    }

    // The server closes: op 6, then a Close frame with the same code and reason.
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.ws_url)
        .await
        .expect("connect");
    ws.send(Message::Binary(Bytes::from_static(b"not json")))
        .await
        .expect("garbage");
    let op6 = match ws.next().await {
        Some(Ok(Message::Binary(frame))) => Packet::from_frame(frame, 1 << 20).expect("op 6"),
        other => panic!("expected op 6, got {other:?}"),
    };
    let said = CloseBody::parse(&op6.body).expect("op-6 body");
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), said.code);
            assert_eq!(
                frame.code,
                CloseCode::from(CloseReason::ProtocolError.code())
            );
            assert!(
                frame.reason.starts_with("protocol error"),
                "{}",
                frame.reason
            );
        }
        other => panic!("expected a Close with a code, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_slow_and_the_room_still_gets_everything() {
    let logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.send_queue = 8;
    config.write_timeout = Duration::from_secs(30);
    let node = CloudNode::start(config).await;

    let mut reader = connect(&node, Transport::Ws).await;
    reader
        .auth(token(1, "reader", "live://slow", &[]))
        .await
        .expect("auth");
    let mut sleeper = connect(&node, Transport::Tcp).await;
    sleeper
        .auth(token(2, "sleeper", "live://slow", &[]))
        .await
        .expect("auth");

    // 32 KiB messages fill the sleeper's socket buffers, then its queue.
    // The reader takes each one before the next is pushed, so only the
    // sleeper can fall behind.
    let body = vec![7u8; 32 * 1024];
    let mut grpc = node.grpc.clone();
    let count = 400u32;
    for seq in 0..count {
        let mut message = proto(1000, &body);
        message.seq = seq as i32;
        grpc.broadcast_room(BroadcastRoomReq {
            room_id: "live://slow".to_owned(),
            proto: Some(message),
        })
        .await
        .expect("push");
        let got = reader.recv_push().await.expect("reader keeps up");
        assert_eq!(got.seq, seq, "the reader gets every message in order");
    }

    // The sleeper is closed as soon as its queue overflows, while it still
    // reads nothing, long before the 30 s write timeout.
    let metrics = node.cloud().metrics();
    eventually("the sleeper closed as a slow consumer", async || {
        metrics.closes(CloseReason::SlowConsumer) == 1
    })
    .await;
    assert_eq!(metrics.limits_hit("send_queue"), 1);

    // The sleeper wakes up: it finds an unbroken prefix, then op 6 if its
    // socket had room for it, else the end of the stream.
    let mut expected = 0;
    loop {
        let packet = match sleeper.recv().await {
            Ok(packet) => packet,
            Err(_) => break,
        };
        if packet.op == Op::DISCONNECT {
            let close = CloseBody::parse(&packet.body).expect("close body");
            assert_eq!(close.close_reason(), Some(CloseReason::SlowConsumer));
            break;
        }
        assert_eq!(packet.seq, expected, "no gap before the close");
        expected += 1;
    }
    assert!(expected < count, "the sleeper fell behind");
}

/// A client that never reads again: closed within a second of its queue
/// overflowing, counted, whatever the writer was doing (the write timeout
/// is far away). It once stayed until the write timeout, its pushes neither
/// queued nor counted.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_when_its_queue_overflows() {
    let logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.send_queue = 16;
    config.write_timeout = Duration::from_secs(120);
    let node = CloudNode::start(config).await;
    let mut sleeper = connect(&node, Transport::Tcp).await;
    sleeper
        .auth(token(2, "sleeper", "live://stuck", &[]))
        .await
        .expect("auth");

    let body = vec![7u8; 16 * 1024];
    let metrics = node.cloud().metrics();
    let mut grpc = node.grpc.clone();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut pushed = 0;
    while metrics.closes(CloseReason::SlowConsumer) == 0 {
        assert!(pushed < 5000, "still open after {pushed} pushes of 16 KiB");
        ticks.tick().await;
        grpc.broadcast_room(BroadcastRoomReq {
            room_id: "live://stuck".to_owned(),
            proto: Some(proto(1000, &body)),
        })
        .await
        .expect("push");
        pushed += 1;
    }
    assert_eq!(metrics.limits_hit("send_queue"), 1);
    eventually("the connection gone", async || {
        metrics.connections("tcp") == 0
    })
    .await;
}

#[tokio::test]
async fn a_full_node_refuses_more_clients_with_a_reason() {
    let logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.max_connections = 1;
    let node = CloudNode::start(config).await;
    let mut first = connect(&node, Transport::Tcp).await;
    first.auth(token(1, "first", "", &[])).await.expect("auth");
    for transport in BOTH {
        let mut extra = connect(&node, transport).await;
        let body = extra.closed().await.expect("op 6");
        assert_eq!(body.close_reason(), Some(CloseReason::ConnectionLimit));
        assert!(body.reconnect, "come back later");
    }
    assert_eq!(first.heartbeat().await.expect("still served"), 0);
}

#[tokio::test]
async fn connections_per_address_are_limited_when_configured() {
    let logic = LogicNode::start().await;
    let mut config = test_config(logic.addr);
    config.max_connections_per_ip = 2;
    let node = CloudNode::start(config).await;
    let mut first = connect(&node, Transport::Ws).await;
    first.auth(token(1, "one", "", &[])).await.expect("auth");
    let mut second = connect(&node, Transport::Tcp).await;
    second.auth(token(2, "two", "", &[])).await.expect("auth");

    let mut third = connect(&node, Transport::Tcp).await;
    let body = third.closed().await.expect("op 6");
    assert_eq!(body.close_reason(), Some(CloseReason::ConnectionLimit));
    assert!(body.reason.contains("your address"), "{}", body.reason);
    assert_eq!(node.cloud().metrics().limits_hit("connections_per_ip"), 1);

    // A slot is freed when a connection leaves.
    drop(first);
    let metrics = node.cloud().metrics();
    eventually("the first connection gone", async || {
        metrics.connections("ws") + metrics.connections("tcp") == 1
    })
    .await;
    let mut again = connect(&node, Transport::Ws).await;
    again
        .auth(token(3, "three", "", &[]))
        .await
        .expect("a slot again");
    assert_eq!(again.heartbeat().await.expect("served"), 0);
}

#[tokio::test]
async fn a_slowloris_is_cut_at_the_handshake_timeout_while_others_are_served() {
    let logic = LogicNode::start().await;
    let node = CloudNode::start(test_config(logic.addr)).await;
    // Open sockets that never finish: a TCP client that sends half a header,
    // and a raw socket on the WebSocket port that never sends its upgrade.
    let mut tcp_loris = TcpStream::connect(node.tcp).await.expect("connect");
    tcp_loris.write_all(&[0, 0, 0]).await.expect("write");
    let mut ws_loris = TcpStream::connect(node.ws).await.expect("connect");
    ws_loris
        .write_all(b"GET /sub HTTP/1.1\r\n")
        .await
        .expect("write");

    let mut honest = connect(&node, Transport::Ws).await;
    honest
        .auth(token(1, "honest", "", &[]))
        .await
        .expect("served meanwhile");

    let close = read_close(&mut tcp_loris).await;
    assert_eq!(close.close_reason(), Some(CloseReason::HandshakeTimeout));
    let mut rest = Vec::new();
    ws_loris.read_to_end(&mut rest).await.expect("closed");
    assert!(node.cloud().metrics().limits_hit("handshake_timeout") >= 1);
    assert_eq!(honest.heartbeat().await.expect("still served"), 0);
}
