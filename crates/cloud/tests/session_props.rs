//! The session state machine under arbitrary client input: whatever packets
//! a client sends, in whatever order, over either transport, the node never
//! panics, and once the client is gone nothing of it stays registered.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use imcloud_proto::cloud::{Empty, RoomsReq};
use imcloud_protocol::{Op, Packet};
use imcloud_testkit::eventually;
use imcloud_testkit::fake_logic::{CloudNode, LogicNode, test_config, token};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Debug)]
enum Action {
    /// A well-formed packet with any op and body.
    Packet {
        op: u32,
        seq: u32,
        body: Vec<u8>,
    },
    /// Bytes that may be anything at all.
    Raw(Vec<u8>),
    /// Protocol requests with plausible bodies.
    ChangeRoom(String),
    Watch(String),
    Heartbeat,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0u32..20, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(op, seq, body)| Action::Packet { op, seq, body }),
        1 => (1000u32..1010, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(op, seq, body)| Action::Packet { op, seq, body }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Action::Raw),
        2 => "(live|chat)://[0-9]{1,3}|[a-z]{0,5}|".prop_map(Action::ChangeRoom),
        1 => "[0-9,]{0,12}|x".prop_map(Action::Watch),
        2 => Just(Action::Heartbeat),
    ]
}

fn encode(packet: Packet) -> Vec<u8> {
    packet.encode().expect("encode").into_bytes().to_vec()
}

fn bytes_of(action: &Action) -> Vec<u8> {
    match action {
        Action::Packet { op, seq, body } => encode(Packet::new(Op(*op), *seq, body.clone())),
        Action::Raw(bytes) => bytes.clone(),
        Action::ChangeRoom(room) => encode(Packet::new(Op::CHANGE_ROOM, 1, room.clone())),
        Action::Watch(ops) => encode(Packet::new(Op::WATCH, 2, ops.clone())),
        Action::Heartbeat => encode(Packet::new(Op::HEARTBEAT, 3, Bytes::new())),
    }
}

/// Plays one client: optionally authenticates, sends everything, leaves.
async fn play(node: &CloudNode, ws: bool, authenticate: bool, actions: &[Action], key: u32) {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    if authenticate {
        frames.push(encode(Packet::new(
            Op::AUTH,
            0,
            token(i64::from(key), &format!("k{key}"), "live://1", &[1000]),
        )));
    }
    frames.extend(actions.iter().map(bytes_of));
    if ws {
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&node.ws_url).await else {
            return;
        };
        for frame in frames {
            // The server may already have closed us: that is fine.
            if socket.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        // Close, then wait for the server to end the connection: only then
        // has it seen everything this client sent.
        let _ = socket.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    } else {
        let Ok(mut socket) = tokio::net::TcpStream::connect(node.tcp).await else {
            return;
        };
        for frame in frames {
            if socket.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = socket.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut rest)).await;
    }
}

#[test]
fn arbitrary_client_input_never_panics_and_never_leaks_a_registration() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (node, _logic) = runtime.block_on(async {
        let logic = LogicNode::start().await;
        let mut config = test_config(logic.addr);
        config.handshake_timeout = Duration::from_secs(2);
        (CloudNode::start(config).await, logic)
    });
    let next_key = AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ws in any::<bool>(), authenticate in prop::bool::weighted(0.8), actions in proptest::collection::vec(action(), 0..10))| {
        let key = next_key.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(async {
            play(&node, ws, authenticate, &actions, key).await;
            // Once the connection task is gone, nothing of it may remain.
            let metrics = node.cloud().metrics();
            eventually("the connection task gone", async || {
                metrics.connections("ws") + metrics.connections("tcp") == 0
            })
            .await;
            let mut grpc = node.grpc.clone();
            let rooms = grpc.rooms(RoomsReq {}).await.expect("rooms").into_inner().rooms;
            assert!(rooms.is_empty(), "still registered in {rooms:?}");
            grpc.ping(Empty {}).await.expect("the node is alive");
        });
    });
}
