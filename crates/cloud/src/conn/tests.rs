//! A session against a fake logic and an in-memory transport: the whole
//! connection life, without a node or a socket.

use super::*;
use crate::bucket::Buckets;
use crate::counts::RoomCounts;
use crate::listener::Admitted;
use crate::logic::SessionLogic;
use crate::online::Online;
use crate::transport::memory::{MemoryTransport, Out};
use async_trait::async_trait;
use bytes::Bytes;
use imcloud_proto::logic::{ConnectReply, InboxMessage, InboxReply};
use imcloud_protocol::Packet;
use tokio::sync::mpsc;
use tonic::Status;

/// What the fake logic was asked.
#[derive(Debug, PartialEq)]
enum Call {
    Heartbeat(i64, String),
    Disconnect(i64, String),
    Receive(i64, Bytes),
}

/// Tokens are `mid:key:rooms|allow_rooms` (lists comma-separated);
/// `refused` is refused, `down` is unavailable. Joins: `private://1` is
/// refused, `down://1` cannot be checked.
struct FakeLogic {
    calls: mpsc::UnboundedSender<Call>,
}

#[async_trait]
impl SessionLogic for FakeLogic {
    async fn connect(&self, token: Bytes, _cookie: String) -> Result<ConnectReply, AuthError> {
        let token = String::from_utf8_lossy(&token).into_owned();
        match token.as_str() {
            "refused" => return Err(AuthError::Refused("bad token".to_owned())),
            "down" => return Err(AuthError::Unavailable("logic down".to_owned())),
            _ => {}
        }
        let mut parts = token.splitn(3, ':');
        let list = |part: &str| -> Vec<String> {
            part.split(',')
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mid = parts.next().and_then(|mid| mid.parse().ok()).unwrap_or(0);
        let key = parts.next().unwrap_or("").to_owned();
        let rest = parts.next().unwrap_or("");
        let (rooms, allow) = rest.split_once('|').unwrap_or((rest, ""));
        let mut rooms = list(rooms);
        Ok(ConnectReply {
            mid,
            key,
            room_id: if rooms.is_empty() {
                String::new()
            } else {
                rooms.remove(0)
            },
            rooms,
            allow_rooms: list(allow),
            platform: "test".to_owned(),
            accepts: vec![1000],
            heartbeat: 10,
            resume_wait_ms: 200,
        })
    }

    /// One node: the totals are this node's counts.
    async fn room_counts(
        &self,
        local: std::collections::HashMap<String, i32>,
    ) -> Result<std::collections::HashMap<String, i32>, Status> {
        Ok(local)
    }

    async fn join(&self, _mid: i64, _key: &str, room: &str) -> Result<(), AuthError> {
        match room {
            "private://1" => Err(AuthError::Refused("members only".to_owned())),
            "down://1" => Err(AuthError::Unavailable("logic down".to_owned())),
            _ => Ok(()),
        }
    }

    async fn heartbeat(&self, mid: i64, key: &str) -> Result<(), Status> {
        let _ = self.calls.send(Call::Heartbeat(mid, key.to_owned()));
        Ok(())
    }

    async fn disconnect(&self, mid: i64, key: &str) -> Result<(), Status> {
        let _ = self.calls.send(Call::Disconnect(mid, key.to_owned()));
        Ok(())
    }

    async fn receive(&self, mid: i64, packet: &Packet) -> Result<(), Status> {
        let _ = self.calls.send(Call::Receive(mid, packet.body.clone()));
        Ok(())
    }

    /// User 1 has had 5 messages and 3..=5 are kept; nobody else has any.
    async fn inbox(&self, mid: i64, since: u64) -> Result<InboxReply, Status> {
        if mid != 1 {
            return Ok(InboxReply::default());
        }
        Ok(InboxReply {
            mid,
            last: 5,
            oldest: 3,
            messages: (since.max(2) + 1..=5)
                .map(|seq| InboxMessage {
                    seq,
                    op: 1000,
                    body: Bytes::from(format!("m{seq}")),
                })
                .collect(),
        })
    }

    async fn ack(&self, mid: i64, ack: u64) -> Result<(), Status> {
        let latest = if mid == 1 { 5 } else { 0 };
        if ack > latest {
            return Err(Status::invalid_argument(format!(
                "ack {ack} is above the latest sequence number, {latest}"
            )));
        }
        Ok(())
    }
}

/// One connection being served, as the client and logic see it.
struct Harness {
    to_server: mpsc::UnboundedSender<Packet>,
    from_server: mpsc::UnboundedReceiver<Out>,
    calls: mpsc::UnboundedReceiver<Call>,
    ctx: Arc<ConnContext>,
    served: tokio::task::JoinHandle<()>,
}

fn limits() -> ConnLimits {
    ConnLimits {
        handshake_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(30),
        send_queue: 4,
        max_rooms: 3,
        renew_interval: Duration::ZERO,
        write_timeout: Duration::from_secs(10),
    }
}

fn start() -> Harness {
    let (calls_tx, calls) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::default());
    let buckets = Buckets::spawn(2, &metrics);
    let logic: Arc<dyn SessionLogic> = Arc::new(FakeLogic { calls: calls_tx });
    let counts = RoomCounts::spawn(buckets.clone(), logic.clone(), Default::default());
    let ctx = Arc::new(ConnContext::new(
        limits(),
        buckets,
        logic,
        Arc::new(Online::default()),
        counts,
        metrics,
        Shutdown::default(),
    ));
    let (to_server, inbound) = mpsc::unbounded_channel();
    let (outbound, from_server) = mpsc::unbounded_channel();
    let transport = MemoryTransport { inbound, outbound };
    let permit = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("permit");
    let served = tokio::spawn(serve(
        transport,
        ctx.clone(),
        String::new(),
        Some(Admitted::new(permit)),
    ));
    Harness {
        to_server,
        from_server,
        calls,
        ctx,
        served,
    }
}

impl Harness {
    fn send(&self, op: Op, body: &[u8]) {
        self.to_server
            .send(Packet::new(op, 1, Bytes::copy_from_slice(body)))
            .expect("session alive");
    }

    async fn next(&mut self) -> Out {
        self.from_server.recv().await.expect("the session wrote")
    }

    async fn packet(&mut self) -> Packet {
        match self.next().await {
            Out::Packet(packet) => packet,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    async fn close(&mut self) -> CloseBody {
        let packet = self.packet().await;
        assert_eq!(packet.op, Op::DISCONNECT, "{packet:?}");
        CloseBody::parse(&packet.body).expect("op-6 body")
    }

    async fn authenticated(&mut self, token: &str) -> serde_json::Value {
        self.send(Op::AUTH, token.as_bytes());
        let reply = self.packet().await;
        assert_eq!(reply.op, Op::AUTH_REPLY);
        serde_json::from_slice(&reply.body).expect("op-8 JSON")
    }
}

#[tokio::test]
async fn auth_heartbeat_push_and_a_goodbye() {
    let mut conn = start();
    let me = conn.authenticated("7:k7:live://1").await;
    assert_eq!(me["mid"], 7);
    assert_eq!(me["key"], "k7");
    assert_eq!(me["room_id"], "live://1");
    assert_eq!(me["heartbeat"], 10);

    conn.send(Op::HEARTBEAT, b"");
    let reply = conn.packet().await;
    assert_eq!(reply.op, Op::HEARTBEAT_REPLY);
    assert_eq!(
        &reply.body[..],
        &1u32.to_be_bytes(),
        "the client itself is online"
    );
    assert_eq!(
        conn.calls.recv().await,
        Some(Call::Heartbeat(7, "k7".to_owned()))
    );

    let push = crate::wire::Push::new(
        Packet::new(Op(1000), 0, Bytes::from_static(b"hi"))
            .encode()
            .expect("encode"),
        std::time::Instant::now(),
    );
    conn.ctx
        .buckets
        .push_room(RoomId::parse("live://1").expect("room"), &push)
        .await
        .expect("buckets");
    let got = conn.packet().await;
    assert_eq!((got.op, &got.body[..]), (Op(1000), &b"hi"[..]));

    conn.send(Op::SEND_MSG, b"up");
    assert_eq!(conn.packet().await.op, Op::SEND_MSG_REPLY);
    assert_eq!(
        conn.calls.recv().await,
        Some(Call::Receive(7, Bytes::from_static(b"up")))
    );

    // The client leaves: its goodbye is answered, logic is told.
    conn.to_server = mpsc::unbounded_channel().0;
    assert!(matches!(conn.next().await, Out::Shutdown(None)));
    conn.served.await.expect("served");
    conn.ctx.shutdown.background.close();
    conn.ctx.shutdown.background.wait().await;
    assert_eq!(
        conn.calls.recv().await,
        Some(Call::Disconnect(7, "k7".to_owned()))
    );
}

#[tokio::test]
async fn refusals_close_with_the_reason_and_register_nothing() {
    for (token, reason) in [
        ("refused", CloseReason::AuthFailed),
        ("down", CloseReason::LogicUnavailable),
        ("1:k1:Not A Room", CloseReason::AuthFailed),
    ] {
        let mut conn = start();
        conn.send(Op::AUTH, token.as_bytes());
        let close = conn.close().await;
        assert_eq!(close.close_reason(), Some(reason), "{token}: {close:?}");
        match conn.next().await {
            Out::Shutdown(Some(body)) => {
                assert_eq!(body, close, "the WebSocket close says the same")
            }
            other => panic!("{token}: expected the close, got {other:?}"),
        }
        conn.served.await.expect("served");
        assert!(
            conn.ctx
                .buckets
                .sessions()
                .await
                .expect("buckets")
                .is_empty()
        );
    }
}

#[tokio::test]
async fn protocol_errors_name_what_was_wrong() {
    let mut conn = start();
    conn.send(Op::HEARTBEAT, b"");
    let close = conn.close().await;
    assert_eq!(close.close_reason(), Some(CloseReason::ProtocolError));
    assert!(close.reason.contains("must be auth"), "{}", close.reason);

    let mut conn = start();
    conn.authenticated("1:k1:").await;
    conn.send(Op::CHANGE_ROOM, b"Live://x");
    let close = conn.close().await;
    assert!(close.reason.contains("room type"), "{}", close.reason);

    let mut conn = start();
    conn.authenticated("1:k1:").await;
    conn.send(Op(999), b"");
    let close = conn.close().await;
    assert!(
        close.reason.contains("not a client request"),
        "{}",
        close.reason
    );
}

#[tokio::test(start_paused = true)]
async fn silence_for_two_heartbeats_closes() {
    let mut conn = start();
    conn.authenticated("1:k1:").await;
    // Paused time: the 20 s deadline passes as soon as everything is idle.
    let close = conn.close().await;
    assert_eq!(close.close_reason(), Some(CloseReason::HeartbeatTimeout));
}

#[tokio::test]
async fn an_overflowing_queue_closes_as_a_slow_consumer() {
    let mut conn = start();
    conn.authenticated("1:k1:").await;
    let outboxes = conn.ctx.buckets.select(None).await.expect("select");
    let push = crate::wire::Push::new(
        Packet::new(Op(1000), 0, Bytes::from_static(b"x"))
            .encode()
            .expect("encode"),
        std::time::Instant::now(),
    );
    // More than `send_queue` (4) in one go, with no chance to drain between.
    for _ in 0..16 {
        crate::bucket::deliver_group(&outboxes, &push, &conn.ctx.metrics);
    }
    let close = conn.close().await;
    assert_eq!(close.close_reason(), Some(CloseReason::SlowConsumer));
    conn.served.await.expect("served");
    assert_eq!(conn.ctx.metrics.limits_hit("send_queue"), 1);
}

/// A user push numbered `seq`, as logic sends it by key.
async fn push_user(conn: &Harness, key: &str, seq: u32) {
    let push = crate::wire::Push::new(
        Packet::new(Op(1000), seq, Bytes::from(format!("m{seq}")))
            .encode()
            .expect("encode"),
        std::time::Instant::now(),
    );
    conn.ctx
        .buckets
        .push_keys([(Key::from(key), push)], None)
        .await
        .expect("buckets");
}

impl Harness {
    async fn seqs_until_resumed(&mut self) -> (Vec<u32>, serde_json::Value) {
        let mut seqs = Vec::new();
        loop {
            let packet = self.packet().await;
            if packet.op == Op::RESUMED {
                return (
                    seqs,
                    serde_json::from_slice(&packet.body).expect("op-19 JSON"),
                );
            }
            assert_eq!(packet.op, Op(1000), "{packet:?}");
            assert_eq!(&packet.body[..], format!("m{}", packet.seq).as_bytes());
            seqs.push(packet.seq);
        }
    }
}

#[tokio::test]
async fn a_resume_replays_what_was_missed_before_the_held_pushes() {
    let mut conn = start();
    conn.authenticated("1:k1:").await;
    // Live pushes that race the resume: 5 is also in the inbox.
    push_user(&conn, "k1", 5).await;
    push_user(&conn, "k1", 6).await;
    conn.send(Op::RESUME, br#"{"since":2}"#);
    let (replayed, done) = conn.seqs_until_resumed().await;
    assert_eq!(replayed, [3, 4, 5]);
    assert_eq!(done, serde_json::json!({"last": 5}));
    assert_eq!(conn.packet().await.seq, 6, "the held push, once");
    push_user(&conn, "k1", 7).await;
    assert_eq!(conn.packet().await.seq, 7, "then live pushes");

    // Again on a live connection (the SDK does after a gap): same answer.
    conn.send(Op::RESUME, br#"{"since":4}"#);
    let (replayed, done) = conn.seqs_until_resumed().await;
    assert_eq!((replayed, done["last"].clone()), (vec![5], 5.into()));
    assert_eq!(conn.ctx.metrics.resumes("resumed"), 2);
}

#[tokio::test]
async fn a_resume_from_before_the_oldest_kept_says_reset() {
    let mut conn = start();
    conn.authenticated("1:k1:").await;
    conn.send(Op::RESUME, br#"{"since":1}"#);
    let (replayed, done) = conn.seqs_until_resumed().await;
    assert_eq!(replayed, [3, 4, 5]);
    assert_eq!(
        done,
        serde_json::json!({"last": 5, "reset": true, "oldest": 3})
    );

    // Above the latest: numbering restarted; everything kept is replayed.
    conn.send(Op::RESUME, br#"{"since":9}"#);
    let (replayed, done) = conn.seqs_until_resumed().await;
    assert_eq!(replayed, [3, 4, 5]);
    assert_eq!(done["reset"], true);
    assert_eq!(conn.ctx.metrics.resumes("reset"), 2);

    // An empty inbox: nothing replayed, last 0.
    let mut conn = start();
    conn.authenticated("2:k2:").await;
    conn.send(Op::RESUME, br#"{"since":0}"#);
    let (replayed, done) = conn.seqs_until_resumed().await;
    assert!(replayed.is_empty());
    assert_eq!(done, serde_json::json!({"last": 0}));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_resumes_gets_its_pushes_after_the_hold() {
    let mut conn = start();
    conn.authenticated("1:k1:").await;
    push_user(&conn, "k1", 6).await;
    let started = Instant::now();
    assert_eq!(conn.packet().await.seq, 6);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "held first"
    );
    push_user(&conn, "k1", 7).await;
    assert_eq!(conn.packet().await.seq, 7);
}

#[tokio::test]
async fn bad_resumes_and_acks_are_protocol_errors() {
    for (op, body, says) in [
        (Op::RESUME, &br#"{"since":-1}"#[..], "since"),
        (Op::RESUME, br#"{"since":"3"}"#, "since"),
        (Op::RESUME, b"3", "since"),
        (Op::ACK, br#"{"ack":1.5}"#, "ack"),
        (Op::ACK, br#"{"ack":6}"#, "above the latest"),
    ] {
        let mut conn = start();
        conn.authenticated("1:k1:").await;
        conn.send(op, body);
        let close = conn.close().await;
        assert_eq!(close.close_reason(), Some(CloseReason::ProtocolError));
        assert!(close.reason.contains(says), "{op}: {}", close.reason);
    }
    // Before auth, like any other packet.
    for op in [Op::RESUME, Op::ACK] {
        let mut conn = start();
        conn.send(op, br#"{"since":0,"ack":0}"#);
        let close = conn.close().await;
        assert!(close.reason.contains("must be auth"), "{}", close.reason);
    }
    // An ack in range is taken without a reply.
    let mut conn = start();
    conn.authenticated("1:k1:").await;
    conn.send(Op::ACK, br#"{"ack":5}"#);
    conn.send(Op::HEARTBEAT, b"");
    assert_eq!(conn.packet().await.op, Op::HEARTBEAT_REPLY);
}

impl Harness {
    /// Sends a room request (op 22, 24 or 12) and reads its answer.
    async fn ask(&mut self, op: Op, body: &str) -> Packet {
        self.send(op, body.as_bytes());
        let answer = self.packet().await;
        assert_eq!(Some(answer.op), op.reply(), "{answer:?}");
        answer
    }

    async fn room_answer(&mut self, op: Op, room: &str) -> serde_json::Value {
        let answer = self.ask(op, &format!(r#"{{"room":"{room}"}}"#)).await;
        serde_json::from_slice(&answer.body).expect("a JSON answer")
    }

    /// Pushes `body` to `room` on this node's buckets.
    async fn push_room(&self, room: &str, body: &'static [u8]) {
        let push = crate::wire::Push::new(
            Packet::new(Op(1000), 0, Bytes::from_static(body))
                .encode()
                .expect("encode"),
            std::time::Instant::now(),
        );
        self.ctx
            .buckets
            .push_room(RoomId::parse(room).expect("room"), &push)
            .await
            .expect("buckets");
    }
}

#[tokio::test]
async fn a_connection_joins_and_leaves_several_rooms() {
    let mut conn = start();
    let me = conn.authenticated("7:k7:live://1,dm://7").await;
    assert_eq!(me["room_id"], "live://1");
    assert_eq!(me["rooms"], serde_json::json!(["live://1", "dm://7"]));

    let joined = conn.room_answer(Op::JOIN_ROOM, "group://2").await;
    assert_eq!(joined, serde_json::json!({"room": "group://2", "ok": true}));
    // Joined already: ok, and still counted once.
    let again = conn.room_answer(Op::JOIN_ROOM, "group://2").await;
    assert_eq!(again["ok"], true);
    for (room, body) in [("live://1", b"a"), ("dm://7", b"b"), ("group://2", b"c")] {
        conn.push_room(room, body).await;
        assert_eq!(&conn.packet().await.body[..], body, "a push to {room}");
    }

    // Three rooms is this node's max_rooms: the fourth is refused, and
    // the connection goes on.
    let over = conn.room_answer(Op::JOIN_ROOM, "group://3").await;
    let error = over["error"].as_str().expect("an error");
    assert!(error.contains("max_rooms"), "{error}");
    assert_eq!(over.get("ok"), None);

    let left = conn.room_answer(Op::LEAVE_ROOM, "dm://7").await;
    assert_eq!(left, serde_json::json!({"room": "dm://7", "ok": true}));
    let not_in = conn.room_answer(Op::LEAVE_ROOM, "dm://7").await;
    assert_eq!(not_in["ok"], true, "leaving a room not joined is ok");
    conn.push_room("dm://7", b"gone").await;
    conn.push_room("group://2", b"here").await;
    assert_eq!(
        &conn.packet().await.body[..],
        b"here",
        "nothing from the room left"
    );

    // A bad room id is refused with the rule it broke.
    let bad = conn.room_answer(Op::JOIN_ROOM, "Live://x").await;
    assert!(
        bad["error"]
            .as_str()
            .expect("an error")
            .contains("room type")
    );

    // Op 12 leaves every room and joins the one named.
    let changed = conn.ask(Op::CHANGE_ROOM, "live://9").await;
    assert_eq!(&changed.body[..], b"live://9");
    conn.push_room("live://1", b"old").await;
    conn.push_room("live://9", b"new").await;
    assert_eq!(&conn.packet().await.body[..], b"new");
    conn.send(Op::HEARTBEAT, b"");
    let beat = conn.packet().await;
    assert_eq!(beat.op, Op::HEARTBEAT_REPLY, "still serving");
}

#[tokio::test]
async fn joins_outside_allow_rooms_or_refused_by_logic_are_answered_and_change_nothing() {
    let mut conn = start();
    conn.authenticated("7:k7:live://1|group://*,private://1,down://1")
        .await;
    let outside = conn.room_answer(Op::JOIN_ROOM, "chat://5").await;
    let error = outside["error"].as_str().expect("an error");
    assert!(error.contains("allow_rooms"), "{error}");
    let webhook = conn.room_answer(Op::JOIN_ROOM, "private://1").await;
    assert_eq!(webhook["error"], "refused: members only");
    let down = conn.room_answer(Op::JOIN_ROOM, "down://1").await;
    assert!(
        down["error"]
            .as_str()
            .expect("an error")
            .contains("try again")
    );
    // Op 12 to a room outside allow_rooms: refused, the rooms kept.
    let changed = conn.ask(Op::CHANGE_ROOM, "chat://5").await;
    let answer: serde_json::Value = serde_json::from_slice(&changed.body).expect("JSON");
    assert!(
        answer["error"]
            .as_str()
            .expect("an error")
            .contains("allow_rooms")
    );

    conn.push_room("chat://5", b"private").await;
    conn.push_room("private://1", b"private").await;
    conn.push_room("live://1", b"kept").await;
    assert_eq!(&conn.packet().await.body[..], b"kept");
    // Inside the patterns, and the token's own room after leaving it.
    assert_eq!(
        conn.room_answer(Op::JOIN_ROOM, "group://4").await["ok"],
        true
    );
    assert_eq!(
        conn.room_answer(Op::LEAVE_ROOM, "live://1").await["ok"],
        true
    );
    assert_eq!(
        conn.room_answer(Op::JOIN_ROOM, "live://1").await["ok"],
        true
    );
}

#[tokio::test]
async fn a_token_with_more_rooms_than_max_rooms_is_refused() {
    let mut conn = start();
    conn.send(Op::AUTH, b"7:k7:a://1,a://2,a://3,a://4");
    let close = conn.close().await;
    assert_eq!(close.close_reason(), Some(CloseReason::AuthFailed));
    assert!(close.reason.contains("max_rooms"), "{}", close.reason);
}

#[tokio::test]
async fn a_room_request_that_is_not_json_is_a_protocol_error() {
    let mut conn = start();
    conn.authenticated("7:k7:").await;
    conn.send(Op::JOIN_ROOM, b"live://1");
    let close = conn.close().await;
    assert_eq!(close.close_reason(), Some(CloseReason::ProtocolError));
    assert!(close.reason.contains("join room"), "{}", close.reason);
}
