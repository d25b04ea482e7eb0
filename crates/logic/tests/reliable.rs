//! Reliable delivery to users, end to end: real logic and cloud nodes on
//! real sockets, a real redis-server, real WebSocket clients. Every message
//! to a user is numbered and kept; a device that was away resumes (op 18)
//! on any cloud node and gets exactly what it missed, in order, once; what
//! no device acknowledges in time goes to the offline webhook.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use imcloud_client::{Client, Device, Event};
use imcloud_logic::SessionStoreKind;
use imcloud_protocol::{Op, Packet};
use imcloud_testkit::cluster::{Cluster, bind, cluster, cluster_of, token};
use imcloud_testkit::standalone::{sample, scrape};
use imcloud_testkit::{RedisServer, eventually};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

/// Two logic nodes and two cloud nodes sharing one redis-server.
async fn shared_cluster(redis: &RedisServer) -> Cluster {
    let url = redis.url.clone();
    cluster_of(2, 2, move |_, config| {
        config.session_store = SessionStoreKind::Redis;
        config.redis_url = url.clone();
    })
    .await
}

/// Pushes `msg` to `mid` through logic node `logic`; returns the answer's data.
async fn push(cluster: &Cluster, logic: usize, mid: i64, msg: &str) -> Value {
    let (status, body) = cluster
        .post_form_to(logic, "/im/push/mids", &format!("mids={mid}&msg={msg}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// The user pushes a raw client receives up to op 19, and op 19's body.
async fn replay(client: &mut Client) -> (Vec<(u32, String)>, Value) {
    let mut got = Vec::new();
    loop {
        let packet = client.recv_push().await.expect("replay");
        if packet.op == Op::RESUMED {
            return (got, serde_json::from_slice(&packet.body).expect("op 19"));
        }
        got.push((packet.seq, body_text(&packet)));
    }
}

fn body_text(packet: &Packet) -> String {
    String::from_utf8_lossy(&packet.body).into_owned()
}

#[tokio::test]
async fn a_device_cut_off_resumes_on_another_cloud_node_with_exactly_what_it_missed() {
    let redis = RedisServer::start();
    let cluster = shared_cluster(&redis).await;
    let mut phone = cluster.ws(0, token(5, Some("p5"), "", &[])).await;
    phone.resume(0).await.expect("resume");
    assert_eq!(replay(&mut phone).await, (vec![], json!({"last": 0})));
    for (n, text) in ["one", "two", "three"].into_iter().enumerate() {
        push(&cluster, 0, 5, text).await;
        let got = phone.recv_push().await.expect("push");
        assert_eq!((got.seq, body_text(&got)), (n as u32 + 1, text.to_owned()));
    }
    phone.ack(3).await.expect("ack");

    // The socket is cut; once logic has closed the session, pushes are
    // stored and reach no device.
    drop(phone);
    eventually("the phone's session closed", async || {
        let (_, body) = cluster
            .post_form("/im/push/keys", "keys=p5&msg=probe")
            .await;
        body["data"]["keys"] == 0
    })
    .await;
    for text in ["four", "five", "six"] {
        let data = push(&cluster, 1, 5, text).await;
        assert_eq!((&data["stored"], &data["keys"]), (&json!(1), &json!(0)));
    }

    // Back on the other cloud node: 4, 5, 6 in order, op 19, then live.
    let mut phone = cluster.ws(1, token(5, Some("p5"), "", &[])).await;
    phone.resume(3).await.expect("resume");
    let (replayed, done) = replay(&mut phone).await;
    assert_eq!(
        replayed,
        [(4, "four".into()), (5, "five".into()), (6, "six".into())]
    );
    assert_eq!(done, json!({"last": 6}));
    push(&cluster, 0, 5, "seven").await;
    let live = phone.recv_push().await.expect("live");
    assert_eq!((live.seq, body_text(&live)), (7, "seven".to_owned()));
    phone.ack(7).await.expect("ack");

    // An ack above the latest is a protocol error, with the reason.
    phone.ack(99).await.expect("send");
    let close = phone.closed().await.expect("op 6");
    assert_eq!(
        close.code,
        imcloud_protocol::CloseReason::ProtocolError.code()
    );
    assert!(
        close.reason.contains("above the latest"),
        "{}",
        close.reason
    );
}

#[tokio::test]
async fn a_resume_from_before_the_oldest_kept_says_so_and_gives_the_oldest() {
    let cluster = cluster(1, |config| config.inbox_max = 3).await;
    for n in 1..=5 {
        push(&cluster, 0, 8, &format!("m{n}")).await;
    }
    let mut tab = cluster.ws(0, token(8, None, "", &[])).await;
    tab.resume(1).await.expect("resume");
    let (replayed, done) = replay(&mut tab).await;
    let seqs: Vec<u32> = replayed.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(done, json!({"last": 5, "reset": true, "oldest": 3}));
    let cloud = cluster.clouds[0].cloud.as_ref().expect("running");
    assert_eq!(cloud.metrics().resumes("reset"), 1);
}

/// A device of `mid` connecting to a random cloud node of `cluster`.
fn device(cluster: &Cluster, mid: i64) -> Device<impl imcloud_client::Connector + use<>> {
    let urls: Arc<Vec<String>> =
        Arc::new(cluster.clouds.iter().map(|c| c.ws_url.clone()).collect());
    let connector = move || {
        let url = urls[fastrand::usize(..urls.len())].clone();
        async move { Client::connect_ws(&url).await }
    };
    Device::new(connector, token(mid, None, "", &[]), 0)
}

/// The numbered messages a device handed over, as (seq, body).
async fn take(device: &mut Device<impl imcloud_client::Connector>, n: usize) -> Vec<(u32, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match device.next().await.expect("device") {
            Event::Message(packet) => got.push((packet.seq, body_text(&packet))),
            Event::Reset { oldest } => panic!("reset to {oldest}: nothing should be lost"),
        }
    }
    got
}

#[tokio::test]
async fn two_logic_nodes_pushing_to_one_user_at_once_number_without_gaps_and_the_sdk_orders() {
    let redis = RedisServer::start();
    let cluster = Arc::new(shared_cluster(&redis).await);
    let mut phone = device(&cluster, 3);
    // Online before the pushes, so they are live ones, racing each other.
    phone.online().await.expect("online");
    let pushes: Vec<_> = (1..=100)
        .map(|n| {
            let cluster = cluster.clone();
            tokio::spawn(async move { push(&cluster, n % 2, 3, &format!("m{n}")).await })
        })
        .collect();
    let got = take(&mut phone, 100).await;
    for task in pushes {
        task.await.expect("push");
    }
    let seqs: Vec<u32> = got.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<u32>>(), "in order, once");
    let mut bodies: Vec<String> = got.into_iter().map(|(_, body)| body).collect();
    bodies.sort();
    let mut sent: Vec<String> = (1..=100).map(|n| format!("m{n}")).collect();
    sent.sort();
    assert_eq!(bodies, sent, "every message, whoever numbered it");
}

/// 200 users with 2 devices each, cut at random while 20,000 messages go
/// out through two logic nodes (2,000 pushes to 10 users each, as a
/// backend fans out): every device ends with every message of its user
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_devices_cut_at_random_end_with_every_message_once_and_in_order() {
    const USERS: i64 = 200;
    const PUSHES: usize = 2_000;
    const USERS_PER_PUSH: usize = 10;
    let redis = RedisServer::start();
    let cluster = Arc::new(shared_cluster(&redis).await);

    // Each device runs until it has handed over its user's last message,
    // known once every push is answered.
    let cuts: Arc<Vec<Notify>> = Arc::new((0..USERS * 2).map(|_| Notify::new()).collect());
    let (targets_tx, targets) = watch::channel(None::<Arc<HashMap<i64, u32>>>);
    let mut devices = Vec::new();
    for i in 0..USERS * 2 {
        let mid = 1000 + i / 2;
        let mut phone = device(&cluster, mid);
        phone.online().await.expect("online");
        let (cuts, mut targets) = (cuts.clone(), targets.clone());
        devices.push(tokio::spawn(async move {
            let mut got: Vec<u32> = Vec::new();
            loop {
                let target = targets.borrow().as_ref().map(|all| all[&mid]);
                if target.is_some() && got.last().copied() == target {
                    return (mid, got, phone.connections());
                }
                tokio::select! {
                    event = phone.next() => match event.expect("device") {
                        Event::Message(packet) => got.push(packet.seq),
                        Event::Reset { oldest } => panic!("reset to {oldest}: nothing may be lost"),
                    },
                    // Cut midway through `next`, as a network would.
                    () = cuts[i as usize].notified() => phone.cut(),
                    _ = targets.changed() => {}
                }
            }
        }));
    }

    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..32)
        .map(|worker| {
            let (cluster, next, cuts) = (cluster.clone(), next.clone(), cuts.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= PUSHES {
                        return;
                    }
                    let first = n * USERS_PER_PUSH;
                    let mids: Vec<String> = (first..first + USERS_PER_PUSH)
                        .map(|user| (1000 + user % USERS as usize).to_string())
                        .collect();
                    let form = format!("mids={}&msg=p{n}", mids.join(","));
                    let (status, body) = cluster
                        .post_form_to(worker % 2, "/im/push/mids", &form)
                        .await;
                    assert_eq!(
                        (status, &body["data"]["stored"]),
                        (200, &json!(USERS_PER_PUSH)),
                        "{body}"
                    );
                    // Every push cuts a device somewhere, midway through
                    // whatever it was doing, as a network would.
                    cuts[fastrand::usize(..cuts.len())].notify_one();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender");
    }

    let mut last = HashMap::new();
    for mid in 1000..1000 + USERS {
        let (_, inbox) = cluster
            .get(&format!("/im/inbox?mid={mid}&since=4294967295"))
            .await;
        let latest = inbox["data"]["last"].as_u64().expect("last");
        last.insert(mid, u32::try_from(latest).expect("u32"));
    }
    let total: u32 = last.values().sum();
    assert_eq!(total as usize, PUSHES * USERS_PER_PUSH, "messages numbered");
    targets_tx.send_replace(Some(Arc::new(last.clone())));
    let mut reconnects = 0;
    for device in devices {
        let (mid, got, connections) = device.await.expect("device");
        assert_eq!(
            got,
            (1..=last[&mid]).collect::<Vec<u32>>(),
            "user {mid}: every message once, in order"
        );
        reconnects += connections - 1;
    }
    eprintln!("soak: {reconnects} reconnects");
    assert!(
        reconnects > 100,
        "only {reconnects} reconnects: the soak cut too little"
    );
}

/// A backend's offline webhook: records each POST as (mid, seq, op, body);
/// answers 500 to the first `failures` calls.
async fn offline_hook(
    failures: usize,
) -> (String, mpsc::UnboundedReceiver<(i64, u64, i32, String)>) {
    type Hook = (
        mpsc::UnboundedSender<(i64, u64, i32, String)>,
        Arc<AtomicUsize>,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = bind().await;
    let url = format!("http://{}/offline", listener.local_addr().expect("addr"));
    let header = |headers: &HeaderMap, name: &str| -> String {
        headers[name].to_str().expect("header").to_owned()
    };
    let app =
        axum::Router::new()
            .route(
                "/offline",
                axum::routing::post(
                    move |State((tx, calls)): State<Hook>,
                          headers: HeaderMap,
                          body: bytes::Bytes| async move {
                        if calls.fetch_add(1, Ordering::SeqCst) < failures {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        let _ = tx.send((
                            header(&headers, "x-imcloud-mid").parse().expect("mid"),
                            header(&headers, "x-imcloud-seq").parse().expect("seq"),
                            header(&headers, "x-imcloud-op").parse().expect("op"),
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                        StatusCode::OK
                    },
                ),
            )
            .with_state((tx, Arc::new(AtomicUsize::new(0))));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn messages_no_device_acknowledged_in_time_go_to_the_offline_webhook_once() {
    let (url, mut posted) = offline_hook(0).await;
    let cluster = cluster(1, |config| {
        config.offline_webhook = Some(url.clone());
        config.ack_timeout = Duration::from_millis(300);
    })
    .await;

    // No device: one POST, after the ack timeout.
    let pushed = tokio::time::Instant::now();
    push(&cluster, 0, 21, "for-21").await;
    let call = posted.recv().await.expect("posted");
    assert_eq!(call, (21, 1, 1000, "for-21".to_owned()));
    assert!(
        pushed.elapsed() >= Duration::from_millis(300),
        "not before the ack timeout"
    );

    // A device that acknowledges in time: no POST.
    let mut phone = cluster.ws(0, token(22, None, "", &[])).await;
    phone.resume(0).await.expect("resume");
    replay(&mut phone).await;
    push(&cluster, 0, 22, "for-22").await;
    assert_eq!(phone.recv_push().await.expect("push").seq, 1);
    phone.ack(1).await.expect("ack");
    eventually("the ack recorded", async || {
        sample(&scrape(&cluster.http).await, "imcloud_logic_acks_total") == 1.0
    })
    .await;
    // Pushed after it, so due after it: once 23's POST arrives, 22's would
    // have come first.
    push(&cluster, 0, 23, "for-23").await;
    let call = posted.recv().await.expect("posted");
    assert_eq!((call.0, call.3.as_str()), (23, "for-23"));
    push(&cluster, 0, 24, "for-24").await;
    assert_eq!(posted.recv().await.expect("posted").0, 24);
    assert!(
        posted.try_recv().is_err(),
        "22 acknowledged in time: never posted"
    );
    let samples = scrape(&cluster.http).await;
    assert_eq!(
        sample(
            &samples,
            "imcloud_logic_offline_webhook_total{result=\"ok\"}"
        ),
        3.0
    );
}

#[tokio::test]
async fn a_failing_offline_webhook_is_retried_with_backoff_and_the_inbox_keeps_the_message() {
    let (url, mut posted) = offline_hook(2).await;
    let cluster = cluster(1, |config| {
        config.offline_webhook = Some(url.clone());
        config.ack_timeout = Duration::from_millis(100);
    })
    .await;
    push(&cluster, 0, 31, "retry-me").await;
    // Two failures (500), retried 1 s then 2 s later; the third call lands.
    let call = posted.recv().await.expect("posted");
    assert_eq!(call, (31, 1, 1000, "retry-me".to_owned()));
    let samples = scrape(&cluster.http).await;
    assert_eq!(
        sample(
            &samples,
            "imcloud_logic_offline_webhook_total{result=\"failed\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &samples,
            "imcloud_logic_offline_webhook_total{result=\"ok\"}"
        ),
        1.0
    );
    let (_, inbox) = cluster.get("/im/inbox?mid=31&since=0").await;
    assert_eq!(inbox["data"]["last"], 1, "{inbox}");
    assert_eq!(
        inbox["data"]["messages"][0]["seq"], 1,
        "nothing lost from the inbox"
    );
}

#[tokio::test]
async fn with_inbox_max_zero_pushes_by_mid_are_neither_numbered_nor_kept() {
    let cluster = cluster(1, |config| config.inbox_max = 0).await;
    let mut phone = cluster.ws(0, token(41, None, "", &[])).await;
    let data = push(&cluster, 0, 41, "ephemeral").await;
    assert_eq!((&data["stored"], &data["keys"]), (&json!(0), &json!(1)));
    let got = phone.recv_push().await.expect("push");
    assert_eq!((got.seq, body_text(&got)), (0, "ephemeral".to_owned()));
    phone.resume(0).await.expect("resume");
    assert_eq!(replay(&mut phone).await, (vec![], json!({"last": 0})));
}

#[tokio::test]
async fn malformed_resumes_and_acks_close_with_a_protocol_error_over_real_sockets() {
    let cluster = cluster(1, |_| {}).await;
    for body in [r#"{"since":-1}"#, r#"{"since":"ten"}"#, "10"] {
        let mut tab = cluster.ws(0, token(51, None, "", &[])).await;
        tab.send(Packet::new(Op::RESUME, 0, body))
            .await
            .expect("send");
        let close = tab.closed().await.expect("op 6");
        assert_eq!(
            close.code,
            imcloud_protocol::CloseReason::ProtocolError.code()
        );
        assert!(close.reason.contains("since"), "{body}: {}", close.reason);
    }
    // Before auth, over TCP: the first packet must be auth.
    let mut raw = Client::connect_tcp(cluster.clouds[0].tcp)
        .await
        .expect("tcp");
    raw.send(Packet::new(Op::ACK, 0, r#"{"ack":1}"#))
        .await
        .expect("send");
    let close = raw.closed().await.expect("op 6");
    assert!(close.reason.contains("must be auth"), "{}", close.reason);
}
