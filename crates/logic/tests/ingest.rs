//! Push commands from a real nats-server with JetStream, consumed by real
//! logic nodes and delivered to real WebSocket clients.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use imcloud_logic::SessionStoreKind;
use imcloud_testkit::cluster::{Cluster, cluster, cluster_of, token};
use imcloud_testkit::standalone::{sample, scrape};
use imcloud_testkit::{NatsServer, eventually};

async fn ingesting(nats: &NatsServer) -> Cluster {
    let url = nats.url.clone();
    cluster(1, move |config| {
        config.ingest.nats_url = url.clone();
        config.ingest.retry_delay = Duration::from_millis(100);
        config.max_push_body = 256;
    })
    .await
}

/// A JetStream context on `nats`, once the logic node has made its stream.
async fn publisher(nats: &NatsServer) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(&nats.url).await.expect("nats");
    let js = jetstream::new(client.clone());
    eventually("the logic node's stream", async || {
        js.get_stream("IMCLOUD_PUSH").await.is_ok()
    })
    .await;
    (client, js)
}

async fn publish(js: &jetstream::Context, command: &str) {
    js.publish("imcloud.push", command.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("stored by the stream");
}

#[tokio::test]
async fn commands_are_delivered_and_bad_ones_dead_lettered_with_the_reason() {
    let nats = NatsServer::start();
    let cluster = ingesting(&nats).await;
    let (client, js) = publisher(&nats).await;
    let mut dead = client
        .subscribe("imcloud.push.dead")
        .await
        .expect("subscribe");
    let mut phone = cluster.ws(0, token(61, None, "live://ingest", &[])).await;

    let too_big = format!(
        r#"{{"type":"mids","mids":[61],"msg":"{}"}}"#,
        "x".repeat(300)
    );

    // Published three times (a backend retrying): delivered once.
    for _ in 0..3 {
        let command = r#"{"type":"mids","mids":[61],"msg":"by mid","id":"c1"}"#;
        publish(&js, command).await;
    }
    let got = phone.recv_push().await.expect("push");
    assert_eq!((got.seq, &got.body[..]), (1, &b"by mid"[..]));

    for (bad, says) in [
        ("not json", "not JSON"),
        (
            r#"{"type":"mids","mids":[61],"msg":"m","operation":7}"#,
            "reserved",
        ),
        (r#"{"mids":[61],"msg":"m"}"#, "type is required"),
        (r#"{"type":"mids","mids":[61]}"#, "msg is required"),
        (r#"{"type":"room","msg":"m"}"#, "room"),
        (&too_big, "over max_push_body"),
    ] {
        publish(&js, bad).await;
        let letter = dead.next().await.expect("dead letter");
        assert_eq!(&letter.payload[..], bad.as_bytes());
        let reason = reason(&letter);
        assert!(reason.contains(says), "{bad}: {reason}");
    }
    // The stream keeps flowing.
    publish(
        &js,
        r#"{"type":"room","room":"live://ingest","msg":"to the room"}"#,
    )
    .await;
    let got = phone.recv_push().await.expect("push");
    assert_eq!(&got.body[..], b"to the room");

    let samples = scrape(&cluster.http).await;
    let count = |result: &str| {
        sample(
            &samples,
            &format!("imcloud_logic_ingest_commands_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        (
            count("delivered"),
            count("duplicate"),
            count("dead_lettered")
        ),
        (2.0, 2.0, 6.0)
    );
    assert_eq!(sample(&samples, "imcloud_logic_ingest_pending"), 0.0);
    assert_eq!(
        sample(&samples, "imcloud_logic_ingest_latency_seconds_count"),
        10.0
    );
}

#[tokio::test]
async fn a_command_whose_cloud_node_is_down_is_retried_then_dead_lettered() {
    let nats = NatsServer::start();
    let url = nats.url.clone();
    let mut cluster = cluster(1, move |config| {
        config.ingest.nats_url = url.clone();
        config.ingest.retry_delay = Duration::from_millis(50);
        config.ingest.max_deliver = 3;
    })
    .await;
    let (client, js) = publisher(&nats).await;
    let mut dead = client
        .subscribe("imcloud.push.dead")
        .await
        .expect("subscribe");
    // A member routes the room to node 0, which then goes down.
    drop(cluster.ws(0, token(71, None, "live://gone", &[])).await);
    cluster.stop_cloud(0).await;
    publish(
        &js,
        r#"{"type":"room","room":"live://gone","msg":"nobody home"}"#,
    )
    .await;
    let letter = dead.next().await.expect("dead letter");
    let reason = reason(&letter);
    assert!(reason.contains("failed 3 times"), "{reason}");
    let samples = scrape(&cluster.http).await;
    assert_eq!(
        sample(
            &samples,
            "imcloud_logic_ingest_commands_total{result=\"retried\"}"
        ),
        2.0
    );
}

/// A room command while its cloud node is down is retried (backing off),
/// and delivered once the node is back: one `BroadcastRoom` reaches it.
#[tokio::test]
async fn a_command_whose_cloud_node_is_down_is_delivered_once_it_is_back() {
    let nats = NatsServer::start();
    let url = nats.url.clone();
    let mut cluster = cluster(1, move |config| {
        config.ingest.nats_url = url.clone();
        config.ingest.retry_delay = Duration::from_millis(20);
        config.ingest.max_deliver = 100;
    })
    .await;
    let (_, js) = publisher(&nats).await;
    // A member routes the room to node 0; the node then goes down (its
    // route lasts the online TTL, so logic keeps trying it).
    drop(cluster.ws(0, token(70, None, "live://back", &[])).await);
    cluster.stop_cloud(0).await;
    publish(&js, r#"{"type":"room","room":"live://back","msg":"later"}"#).await;
    let http = cluster.http.clone();
    let count = async |result: &str| {
        let samples = scrape(&http).await;
        sample(
            &samples,
            &format!("imcloud_logic_ingest_commands_total{{result=\"{result}\"}}"),
        )
    };
    eventually("a retry while the node is down", async || {
        count("retried").await >= 2.0
    })
    .await;
    cluster.start_cloud(0).await;
    eventually("delivered once the node is back", async || {
        count("delivered").await == 1.0
    })
    .await;
    let cloud = cluster.clouds[0].cloud.as_ref().expect("running");
    let rooms: f64 = cloud
        .metrics()
        .render()
        .lines()
        .filter(|line| {
            line.starts_with("imcloud_cloud_pushed_total") && line.contains("kind=\"room\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(rooms, 1.0, "one room push reached the node");
    assert_eq!(count("dead_lettered").await, 0.0);
}

#[tokio::test]
async fn nats_killed_and_restarted_the_node_consumes_again_and_http_keeps_working() {
    let mut nats = NatsServer::start();
    let cluster = ingesting(&nats).await;
    drop(publisher(&nats).await);
    let mut phone = cluster.ws(0, token(62, None, "", &[])).await;
    nats.kill();
    eventually("health saying the ingest is not consuming", async || {
        cluster.get("/health").await.1["data"] == "serving; ingest not consuming"
    })
    .await;
    let (status, body) = cluster.post_form("/im/push/mids", "mids=62&msg=sync").await;
    assert_eq!(
        status, 200,
        "the synchronous API does not need NATS: {body}"
    );
    assert_eq!(&phone.recv_push().await.expect("push").body[..], b"sync");

    nats.restart();
    let (_, js) = publisher(&nats).await;
    publish(
        &js,
        r#"{"type":"mids","mids":[62],"msg":"after the restart"}"#,
    )
    .await;
    let got = phone.recv_push().await.expect("push");
    assert_eq!(&got.body[..], b"after the restart");
    assert_eq!(got.seq, 2, "numbered after the synchronous push");
}

/// Commands run concurrently, but each user's are numbered in the order
/// they were published: 300 commands alternating between two users and a
/// room, waiting in the stream while the logic node is stopped, and each
/// receiver's follow the publish order.
#[tokio::test]
async fn each_receiver_gets_its_commands_in_publish_order() {
    let (nats, redis) = (NatsServer::start(), imcloud_testkit::RedisServer::start());
    let (nats_url, redis_url) = (nats.url.clone(), redis.url.clone());
    let mut cluster = cluster(1, move |config| {
        config.ingest.nats_url = nats_url.clone();
        // Sessions outlive the logic node's stop.
        config.session_store = SessionStoreKind::Redis;
        config.redis_url = redis_url.clone();
    })
    .await;
    let (_, js) = publisher(&nats).await;
    let mut phones = Vec::new();
    for mid in [71, 72] {
        phones.push(cluster.ws(0, token(mid, None, "live://ordered", &[])).await);
    }
    cluster.stop_logic(0).await;
    for n in 0..300 {
        let command = match n % 3 {
            0 => format!(r#"{{"type":"mids","mids":[71],"msg":"{n}"}}"#),
            1 => format!(r#"{{"type":"mids","mids":[72],"msg":"{n}"}}"#),
            _ => format!(r#"{{"type":"room","room":"live://ordered","msg":"{n}"}}"#),
        };
        publish(&js, &command).await;
    }
    cluster.start_logic(0).await;
    for (phone, first) in phones.iter_mut().zip([0, 1]) {
        let (mut numbered, mut room) = (Vec::new(), Vec::new());
        while numbered.len() + room.len() < 200 {
            let push = phone.recv_push().await.expect("push");
            let n: u32 = String::from_utf8_lossy(&push.body).parse().expect("n");
            if push.seq == 0 {
                room.push(n);
            } else {
                numbered.push((push.seq, n));
            }
        }
        numbered.sort_unstable();
        let want: Vec<(u32, u32)> = (0..100).map(|k| (k + 1, first + 3 * k)).collect();
        assert_eq!(numbered, want, "numbered in publish order");
        assert_eq!(
            room,
            (0..100).map(|k| 2 + 3 * k).collect::<Vec<u32>>(),
            "the room's in order"
        );
    }
}

/// Two logic nodes sharing Redis pull from the one consumer: each command is
/// delivered once; with one stopped, the other drains the rest.
#[tokio::test]
async fn two_logic_nodes_share_the_commands_and_one_drains_alone() {
    let (nats, redis) = (NatsServer::start(), imcloud_testkit::RedisServer::start());
    let (nats_url, redis_url) = (nats.url.clone(), redis.url.clone());
    let mut cluster = cluster_of(2, 1, move |_, config| {
        config.ingest.nats_url = nats_url.clone();
        config.session_store = SessionStoreKind::Redis;
        config.redis_url = redis_url.clone();
    })
    .await;
    let (_, js) = publisher(&nats).await;
    let mut phone = cluster.ws(0, token(63, None, "live://shared", &[])).await;
    let expect = |got: &mut Vec<String>, from: usize, to: usize| {
        got.sort();
        let mut want: Vec<String> = (from..to).map(|n| format!("c{n}")).collect();
        want.sort();
        assert_eq!(*got, want, "each command once");
    };
    let mut got = room_commands(&js, &mut phone, 0..200).await;
    expect(&mut got, 0, 200);
    let https = cluster.https.clone();
    let delivered = async |logic: usize| {
        let samples = scrape(&https[logic]).await;
        sample(
            &samples,
            "imcloud_logic_ingest_commands_total{result=\"delivered\"}",
        )
    };
    // A command is counted once settled, just after its push arrives.
    eventually("each command handled by one node", async || {
        delivered(0).await + delivered(1).await == 200.0
    })
    .await;

    // One id published three times, whichever nodes take it: once (Redis).
    for _ in 0..3 {
        let command = r#"{"type":"room","room":"live://shared","msg":"once","id":"same"}"#;
        publish(&js, command).await;
    }
    eventually("the three copies handled", async || {
        delivered(0).await + delivered(1).await == 201.0 && duplicates(&https).await == 2.0
    })
    .await;
    let push = phone.recv_push().await.expect("push");
    assert_eq!(&push.body[..], b"once");
    let second = delivered(1).await;

    cluster.stop_logic(0).await;
    let mut got = room_commands(&js, &mut phone, 200..300).await;
    expect(&mut got, 200, 300);
    // The counter moves once a command is settled, just after its push
    // reached the phone: await it rather than read it at once.
    eventually("the other node drained the rest", async || {
        delivered(1).await == second + 100.0
    })
    .await;
}

/// Duplicate commands acknowledged, over every logic node.
async fn duplicates(https: &[String]) -> f64 {
    let mut total = 0.0;
    for http in https {
        let samples = scrape(http).await;
        total += sample(
            &samples,
            "imcloud_logic_ingest_commands_total{result=\"duplicate\"}",
        );
    }
    total
}

/// The reason a dead letter carries.
fn reason(letter: &async_nats::Message) -> String {
    letter
        .headers
        .as_ref()
        .and_then(|headers| headers.get("imcloud-reason"))
        .map(|value| value.as_str().to_owned())
        .expect("a reason")
}

/// Publishes room commands `c{n}` for `live://shared`, and returns the bodies
/// `phone` received, as many as were published.
async fn room_commands(
    js: &jetstream::Context,
    phone: &mut imcloud_client::Client,
    numbers: std::ops::Range<usize>,
) -> Vec<String> {
    let count = numbers.len();
    for n in numbers {
        let command = format!(r#"{{"type":"room","room":"live://shared","msg":"c{n}"}}"#);
        publish(js, &command).await;
    }
    let mut got = Vec::new();
    while got.len() < count {
        let push = phone.recv_push().await.expect("push");
        got.push(String::from_utf8_lossy(&push.body).into_owned());
    }
    got
}

/// A backend retrying an HTTP push (and a gRPC push) with its idempotency
/// key, on whichever logic node: delivered once, every retry answered with
/// the first answer and told so.
#[tokio::test]
async fn pushes_retried_with_the_same_idempotency_key_are_delivered_once() {
    let redis = imcloud_testkit::RedisServer::start();
    let redis_url = redis.url.clone();
    let cluster = cluster_of(2, 1, move |_, config| {
        config.session_store = SessionStoreKind::Redis;
        config.redis_url = redis_url.clone();
    })
    .await;
    let mut phone = cluster.ws(0, token(64, None, "live://keyed", &[])).await;
    let mut answers = Vec::new();
    for attempt in 0..3 {
        let response = cluster
            .web
            .post(format!("{}/im/push/mids", cluster.https[attempt % 2]))
            .header("idempotency-key", "order-17-shipped")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("mids=64&msg=shipped")
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200);
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let body: serde_json::Value = response.json().await.expect("json");
        answers.push((replayed, body["data"].clone()));
    }
    assert_eq!(answers[0].1["stored"], 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .map(|(replayed, _)| *replayed)
            .collect::<Vec<_>>(),
        [false, true, true]
    );
    assert!(answers.iter().all(|(_, data)| *data == answers[0].1));

    let mut grpc = cluster.logic_grpc().await;
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let mut request = tonic::Request::new(imcloud_proto::logic::PushRoomReq {
            r#type: "live".to_owned(),
            room: "keyed".to_owned(),
            operation: 1000,
            msg: b"to the room once".to_vec().into(),
        });
        request
            .metadata_mut()
            .insert("idempotency-key", "room-notice-3".parse().expect("ascii"));
        let reply = grpc.push_room(request).await.expect("push");
        assert_eq!(reply.get_ref().nodes, 1);
        replayed.push(reply.metadata().get("idempotent-replayed").is_some());
    }
    assert_eq!(replayed, [false, true, true]);

    // A key nobody can keep is refused, and nothing is delivered.
    let long = "k".repeat(256);
    let response = cluster
        .web
        .post(format!("{}/im/push/mids", cluster.http))
        .header("idempotency-key", long)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("mids=64&msg=never")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);

    // What the phone got: each push once, and the next one (the user
    // pushes are held for the resume wait, so the room push may come first).
    cluster.post_form("/im/push/mids", "mids=64&msg=next").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let push = phone.recv_push().await.expect("push");
        got.push((push.seq, String::from_utf8_lossy(&push.body).into_owned()));
    }
    got.sort();
    assert_eq!(
        got,
        [
            (0, "to the room once".to_owned()),
            (1, "shipped".to_owned()),
            (2, "next".to_owned())
        ]
    );
}
