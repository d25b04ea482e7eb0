//! Several rooms per connection, end to end: real logic and cloud nodes on
//! 127.0.0.1:0, real WebSocket clients, and a join webhook served over HTTP.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use imcloud_client::{Client, ClientError, Device, Event};
use imcloud_testkit::cluster::{Cluster, bind, cluster};
use serde_json::{Value, json};

/// A join webhook that lets everyone into `group://` rooms but
/// `group://vip`, whose refusal gives a reason.
async fn join_webhook() -> String {
    let hook = bind().await;
    let url = format!("http://{}/join", hook.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/join",
        axum::routing::post(|Json(asked): Json<Value>| async move {
            assert!(asked["mid"].is_i64() && asked["key"].is_string(), "{asked}");
            if asked["room"] == "group://vip" {
                (StatusCode::FORBIDDEN, "members only")
            } else {
                (StatusCode::OK, "")
            }
        }),
    );
    tokio::spawn(async move { axum::serve(hook, app).await });
    url
}

fn token(mid: i64, rooms: &[&str], allow: &[&str]) -> String {
    json!({"mid": mid, "rooms": rooms, "allow_rooms": allow, "accepts": [1000]}).to_string()
}

async fn push_room(cluster: &Cluster, room: &str, msg: &str) {
    let (kind, id) = room.split_once("://").expect("type://id");
    let (status, body) = cluster
        .post_form("/im/push/room", &format!("type={kind}&room={id}&msg={msg}"))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn next_body(client: &mut Client) -> String {
    let push = client.recv_push().await.expect("push");
    String::from_utf8_lossy(&push.body).into_owned()
}

#[tokio::test]
async fn a_connection_in_three_rooms_gets_each_and_refusals_say_why() {
    let url = join_webhook().await;
    let cluster = cluster(1, |config| config.join_webhook = Some(url.clone())).await;
    let mut client = Client::connect_ws(&cluster.clouds[0].ws_url)
        .await
        .expect("ws");
    let me = client
        .auth(token(1, &["dm://1"], &["group://*"]))
        .await
        .expect("auth");
    assert_eq!(
        (me.room_id.as_str(), &me.rooms[..]),
        ("dm://1", &["dm://1".to_owned()][..])
    );

    client
        .join("group://a")
        .await
        .expect("the webhook lets it in");
    client
        .join("group://b")
        .await
        .expect("the webhook lets it in");
    for room in ["dm://1", "group://a", "group://b"] {
        push_room(&cluster, room, room).await;
        assert_eq!(next_body(&mut client).await, room);
    }

    let refused = client.join("group://vip").await.expect_err("refused");
    assert!(
        matches!(&refused, ClientError::Room { room, reason } if room == "group://vip" && reason == "refused: members only"),
        "{refused}"
    );
    let outside = client
        .join("chat://9")
        .await
        .expect_err("not in allow_rooms");
    assert!(outside.to_string().contains("allow_rooms"), "{outside}");

    client.leave("group://a").await.expect("leave");
    push_room(&cluster, "group://a", "gone").await;
    push_room(&cluster, "group://vip", "secret").await;
    push_room(&cluster, "group://b", "still").await;
    assert_eq!(
        next_body(&mut client).await,
        "still",
        "nothing from left or refused rooms"
    );
    assert!(client.heartbeat().await.is_ok(), "the connection goes on");

    let metrics = cluster
        .web
        .get(format!("{}/metrics", cluster.http))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("imcloud_logic_joins_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_device_joins_its_rooms_again_after_a_reconnect() {
    let cluster = cluster(1, |_| {}).await;
    let url = Arc::new(cluster.clouds[0].ws_url.clone());
    let connector = move || {
        let url = url.clone();
        async move { Client::connect_ws(&url).await }
    };
    let mut device = Device::new(connector, token(2, &[], &[]), 0);
    device.join("group://c").await.expect("join");
    device.cut();
    // The next `next` reconnects and joins again. Until it has, a room push
    // finds nobody, so one goes every 50 ms until the device hands one
    // over (room pushes carry no number: a second copy is harmless).
    let pushing = async {
        loop {
            push_room(&cluster, "group://c", "again").await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let event = tokio::select! {
        event = device.next() => event.expect("event"),
        _ = pushing => unreachable!("pushes until the device takes one"),
    };
    match event {
        Event::Message(packet) => assert_eq!(&packet.body[..], b"again"),
        other => panic!("expected the push, got {other:?}"),
    }
    assert_eq!(device.connections(), 2, "it reconnected");
}

/// The next op-26 count of `client`, skipping anything else.
async fn next_count(client: &mut Client) -> Value {
    loop {
        let packet = client.recv_push().await.expect("packet");
        if packet.op == imcloud_protocol::Op::ROOM_COUNT {
            return serde_json::from_slice(&packet.body).expect("op-26 JSON");
        }
    }
}

#[tokio::test]
async fn room_counts_are_pushed_at_join_and_as_they_change_at_most_once_a_second() {
    let cluster = cluster(2, |_| {}).await;
    let mut watcher = cluster.ws(0, token(100, &[], &[])).await;
    watcher.join_counting("group://n").await.expect("join");
    assert_eq!(
        next_count(&mut watcher).await,
        json!({"room": "group://n", "online": 1}),
        "told at once, itself included"
    );
    let started = std::time::Instant::now();

    // A burst: ten members join, five on each node, and four of them leave.
    let mut members = Vec::new();
    for mid in 0..10 {
        members.push(
            cluster
                .ws(mid as usize % 2, token(mid, &["group://n"], &[]))
                .await,
        );
    }
    for mut member in members.drain(..4) {
        member.leave("group://n").await.expect("leave");
    }
    let mut told = 0;
    loop {
        let count = next_count(&mut watcher).await;
        told += 1;
        if count["online"] == 7 {
            break;
        }
    }
    // Counts go out on a one-second tick: never more than one per second
    // (plus the one a tick may send right after the join's).
    let limit = started.elapsed().as_secs() + 2;
    assert!(told <= limit, "{told} counts in {:?}", started.elapsed());
    // A room push says how many connections the room has, as counted.
    let (status, body) = cluster
        .post_form("/im/push/room", "type=group&room=n&msg=all")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["data"]["nodes"], &body["data"]["members"]),
        (&json!(2), &json!(7)),
        "{body}"
    );
    // The count heartbeat replies carry is the first room's, for goim clients.
    assert!(members[0].heartbeat().await.expect("heartbeat") >= 1);
}
