//! Logic and cloud nodes end to end on 127.0.0.1:0: real WebSocket and TCP
//! clients, real gRPC between the nodes, real HTTP pushes.

use std::time::Duration;

use imcloud_proto::logic::{InboxReq, NodesReq, PushMidsReq};
use imcloud_protocol::Op;
use imcloud_testkit::cluster::{bind, cluster, cluster_tuned, token};
use serde_json::json;

#[tokio::test]
async fn push_by_key_reaches_that_connection() {
    let cluster = cluster(1, |_| {}).await;
    let mut client = cluster.ws(0, token(1, Some("k1"), "", &[])).await;
    let (status, body) = cluster
        .post_form("/im/push/keys", "keys=k1&msg=hello")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"code": 0, "message": "ok", "data": {"nodes": 1, "keys": 1}})
    );
    let got = client.recv_push().await.expect("push");
    assert_eq!((got.op, &got.body[..]), (Op(1000), &b"hello"[..]));
}

#[tokio::test]
async fn push_by_mid_reaches_every_device_of_the_user() {
    let cluster = cluster(1, |_| {}).await;
    // No key in the tokens: logic generates one per connection.
    let mut ws = cluster.ws(0, token(42, None, "", &[])).await;
    let mut tcp = cluster.tcp(0, token(42, None, "", &[])).await;
    let mut other = cluster.ws(0, token(43, None, "", &[])).await;
    let (status, body) = cluster
        .post_form("/im/push/mids", "mids[]=42&operation=1001&msg=both")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["keys"], 2);
    for device in [&mut ws, &mut tcp] {
        let got = device.recv_push().await.expect("push");
        assert_eq!((got.op, &got.body[..]), (Op(1001), &b"both"[..]));
    }
    // User 43 got nothing: the next thing it receives is its own push.
    let (_, body) = cluster
        .post_form("/im/push/mids", "mids=43&msg=yours")
        .await;
    assert_eq!(body["data"]["keys"], 1);
    assert_eq!(&other.recv_push().await.expect("push").body[..], b"yours");
}

#[tokio::test]
async fn room_push_reaches_only_that_room_over_both_transports() {
    let cluster = cluster(1, |_| {}).await;
    let mut inside = vec![
        cluster.ws(0, token(1, None, "live://1000", &[1000])).await,
        cluster.tcp(0, token(2, None, "live://1000", &[1000])).await,
    ];
    let mut outside = cluster.tcp(0, token(3, None, "live://2000", &[1000])).await;
    // JSON body this time.
    let response = cluster
        .web
        .post(format!("{}/im/push/room", cluster.http))
        .json(&json!({"type": "live", "room": "1000", "msg": {"text": "hi room"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let (status, _) = cluster.post_form("/im/push/all", "msg=marker").await;
    assert_eq!(status, 200);
    for client in &mut inside {
        assert_eq!(
            &client.recv_push().await.expect("push").body[..],
            br#"{"text":"hi room"}"#
        );
        assert_eq!(
            &client.recv_push().await.expect("marker").body[..],
            b"marker"
        );
    }
    assert_eq!(
        &outside.recv_push().await.expect("marker").body[..],
        b"marker"
    );
}

#[tokio::test]
async fn push_all_reaches_the_connections_that_accept_the_op() {
    let cluster = cluster(1, |_| {}).await;
    let mut news = cluster.ws(0, token(1, None, "", &[1000, 1005])).await;
    let mut plain = cluster.tcp(0, token(2, None, "", &[1000])).await;
    let (status, body) = cluster
        .post_raw("/goim/push/all?operation=1005", "news")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], 1);
    cluster
        .post_raw("/goim/push/all?operation=1000", "marker")
        .await;
    let got = news.recv_push().await.expect("push");
    assert_eq!((got.op, &got.body[..]), (Op(1005), &b"news"[..]));
    assert_eq!(&news.recv_push().await.expect("marker").body[..], b"marker");
    assert_eq!(
        &plain.recv_push().await.expect("marker").body[..],
        b"marker"
    );
}

#[tokio::test]
async fn goim_style_routes_take_the_raw_body_as_the_message() {
    let cluster = cluster(1, |_| {}).await;
    let mut client = cluster.ws(0, token(7, Some("gk"), "live://5", &[])).await;
    for (path, body) in [
        ("/goim/push/keys?operation=1001&keys=gk", "by key"),
        ("/goim/push/mids?operation=1002&mids=7", "by mid"),
        ("/goim/push/room?operation=1003&type=live&room=5", "by room"),
    ] {
        let (status, answer) = cluster.post_raw(path, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let got = client.recv_push().await.expect("push");
        assert_eq!(&got.body[..], body.as_bytes(), "{path}");
    }
}

#[tokio::test]
async fn online_counts_follow_the_cloud_reports() {
    let cluster = cluster(2, |_| {}).await;
    let _a = cluster.ws(0, token(1, None, "live://1", &[])).await;
    let _b = cluster.tcp(1, token(2, None, "live://1", &[])).await;
    let _c = cluster.ws(1, token(3, None, "live://2", &[])).await;
    let _d = cluster.ws(0, token(4, None, "chat://9", &[])).await;

    let rooms = cluster
        .eventually("/im/online/room?type=live&rooms=1&rooms=2&rooms=3", |d| {
            d["1"] == 2 && d["2"] == 1
        })
        .await;
    assert_eq!(rooms, json!({"1": 2, "2": 1, "3": 0}));
    let (_, top) = cluster.get("/im/online/top?type=live&limit=1").await;
    assert_eq!(top["data"], json!([{"room_id": "1", "count": 2}]));
    let total = cluster
        .eventually("/goim/online/total", |d| d["conn_count"] == 4)
        .await;
    assert_eq!(
        total,
        json!({"conn_count": 4, "room_count": 3, "node_count": 2})
    );
    let (status, body) = cluster.get("/im/online/top").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("type is required"))
    );
}

#[tokio::test]
async fn bad_parameters_get_400_with_a_reason() {
    let cluster = cluster(1, |_| {}).await;
    for (path, form, words) in [
        ("/im/push/keys", "msg=x", "keys must not be empty"),
        ("/im/push/mids", "mids=abc&msg=x", "not a number"),
        ("/im/push/keys", "keys=k&msg=x&operation=5", "reserved"),
        ("/im/push/keys", "keys=k", "msg is required"),
        ("/im/push/room", "room=1000&msg=x", "type and room"),
        ("/im/push/all", "msg=x&speed=-3", "negative"),
    ] {
        let (status, body) = cluster.post_form(path, form).await;
        assert_eq!(status, 400, "{path}?{form}: {body}");
        assert_eq!(body["code"], 400);
        let message = body["message"].as_str().expect("message");
        assert!(message.contains(words), "{path}?{form}: {message}");
    }
    let (status, body) = cluster.post_form("/im/push/everyone", "msg=x").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = cluster.get("/no/such/route").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_push_while_the_only_cloud_node_is_down_is_503() {
    let mut cluster = cluster(1, |config| config.call_timeout = Duration::from_millis(500)).await;
    let _client = cluster.ws(0, token(1, Some("k"), "live://1", &[])).await;
    let node = &mut cluster.clouds[0];
    node.shutdown.cancel();
    node.cloud
        .take()
        .expect("running")
        .wait()
        .await
        .expect("stopped");

    for (path, form) in [
        ("/im/push/room", "type=live&room=1&msg=x"),
        ("/im/push/all", "msg=x"),
    ] {
        let (status, body) = cluster.post_form(path, form).await;
        assert_eq!(status, 503, "{path}: {body}");
        let message = body["message"].as_str().expect("message");
        assert!(
            message.contains("no cloud node reachable") && message.contains("cloud-0"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_mid_push_reaches_devices_on_two_cloud_nodes() {
    let cluster = cluster(2, |_| {}).await;
    let mut on_a = cluster.ws(0, token(9, None, "", &[])).await;
    let mut on_b = cluster.tcp(1, token(9, None, "", &[])).await;
    let (status, body) = cluster
        .post_form("/im/push/mids", "mids=9&msg=everywhere")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], json!({"nodes": 2, "keys": 2, "stored": 1}));
    assert_eq!(&on_a.recv_push().await.expect("a").body[..], b"everywhere");
    assert_eq!(&on_b.recv_push().await.expect("b").body[..], b"everywhere");

    // The same through gRPC, and the nodes advice lists both.
    let mut logic = cluster.logic_grpc().await;
    let reply = logic
        .push_mids(PushMidsReq {
            mids: vec!["9".into()],
            msg: b"grpc".to_vec().into(),
            operation: 1010,
        })
        .await
        .expect("push_mids")
        .into_inner();
    assert_eq!((reply.nodes, reply.keys), (2, 2));
    let got = on_b.recv_push().await.expect("b");
    assert_eq!((got.op, &got.body[..]), (Op(1010), &b"grpc"[..]));
    let nodes = logic
        .nodes(NodesReq::default())
        .await
        .expect("nodes")
        .into_inner();
    assert_eq!(nodes.nodes.len(), 2);
    assert_eq!(nodes.heartbeat, 30);
    let status = logic
        .push_mids(PushMidsReq {
            mids: vec!["nine".into()],
            msg: b"x".to_vec().into(),
            operation: 0,
        })
        .await
        .expect_err("bad mid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn client_messages_are_posted_to_the_webhook() {
    use axum::extract::State;
    use axum::http::HeaderMap;
    use tokio::sync::mpsc;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let hook = bind().await;
    let url = format!("http://{}/hook", hook.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(tx): State<mpsc::UnboundedSender<(String, Vec<u8>)>>,
                 headers: HeaderMap,
                 body: bytes::Bytes| async move {
                    let mid = headers["x-imcloud-mid"].to_str().unwrap_or("").to_owned();
                    let _ = tx.send((mid, body.to_vec()));
                    "ok"
                },
            ),
        )
        .with_state(tx);
    tokio::spawn(async move { axum::serve(hook, app).await });

    let cluster = cluster(1, |config| config.receive_webhook = Some(url.clone())).await;
    let mut client = cluster.ws(0, token(77, None, "", &[])).await;
    let ack = client.send_msg(&b"\x00binary\xff"[..]).await.expect("ack");
    assert!(ack.is_empty(), "delivered: {ack:?}");
    let (mid, body) = rx.recv().await.expect("webhook called");
    assert_eq!((mid.as_str(), &body[..]), ("77", &b"\x00binary\xff"[..]));
}

#[tokio::test]
async fn push_limits_refuse_oversized_requests_and_count_them() {
    let cluster = cluster(1, |config| {
        config.max_push_targets = 2;
        config.max_push_body = 64;
    })
    .await;
    let (status, body) = cluster.post_form("/im/push/keys", "keys=a,b,c&msg=x").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("limit is 2")
    );
    let response = cluster
        .web
        .post(format!("{}/goim/push/all?operation=1000", cluster.http))
        .body(vec![b'x'; 65])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 413);
    let answer: serde_json::Value = response
        .json()
        .await
        .expect("a JSON answer, as docs/api.md says");
    assert_eq!(answer["code"], 413, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_push_body") && m.contains("64")),
        "{answer}"
    );
    let (_, metrics) = {
        let response = cluster
            .web
            .get(format!("{}/metrics", cluster.http))
            .send()
            .await
            .expect("get");
        (response.status(), response.text().await.expect("text"))
    };
    assert!(
        metrics.contains("imcloud_logic_limits_hit_total{kind=\"push_targets\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imcloud_logic_limits_hit_total{kind=\"push_body\"} 1"),
        "{metrics}"
    );
}

/// A logic node on the memory store restarts empty: the cloud node notices
/// (logic's store epoch changed) and registers every session again at once,
/// so pushes by mid reach a connected client that never renews by itself
/// (its renewal would be a minute away).
#[tokio::test]
async fn sessions_come_back_by_themselves_after_logic_restarts() {
    let mut cluster = cluster(1, |_| {}).await;
    let mut client = cluster.ws(0, token(5, Some("k5"), "", &[])).await;
    let (_, before) = cluster.post_form("/im/push/mids", "mids=5&msg=one").await;
    assert_eq!(before["data"]["keys"], 1, "{before}");
    assert_eq!(&client.recv_push().await.expect("one").body[..], b"one");

    cluster.restart_logic(0).await;
    cluster.push_until_routed(0, 5, "back").await;
    assert_eq!(&client.recv_push().await.expect("back").body[..], b"back");
}

/// The same for room routes: the cloud node reports its rooms as soon as it
/// sees logic's store was reset, not at its next report (an hour away here).
#[tokio::test]
async fn room_routes_come_back_by_themselves_after_logic_restarts() {
    let mut cluster = cluster_tuned(
        1,
        1,
        "",
        |_, _| {},
        |cloud| {
            cloud.online_report_interval = Duration::from_secs(3600);
        },
    )
    .await;
    let mut client = cluster.ws(0, token(6, Some("k6"), "live://6", &[])).await;
    cluster.restart_logic(0).await;
    imcloud_testkit::eventually("the room routed again", async || {
        let (status, body) = cluster
            .post_form("/im/push/room", "type=live&room=6&msg=back")
            .await;
        status == 200 && body["data"]["nodes"] == 1
    })
    .await;
    assert_eq!(&client.recv_push().await.expect("back").body[..], b"back");
}

/// Pushes by mid are numbered per user (the packet's seq: 1, 2, 3), kept
/// in the user's inbox before they are answered (`stored`), also while no
/// device is connected, and readable by backends over HTTP and gRPC.
#[tokio::test]
async fn pushes_by_mid_are_numbered_and_kept_in_the_users_inbox() {
    let cluster = cluster(1, |_| {}).await;
    let mut phone = cluster.ws(0, token(5, Some("p5"), "", &[])).await;
    for (n, text) in ["one", "two", "three"].into_iter().enumerate() {
        let (status, body) = cluster
            .post_form("/im/push/mids", &format!("mids=5&msg={text}"))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["data"]["stored"], &body["data"]["keys"]),
            (&json!(1), &json!(1))
        );
        let got = phone.recv_push().await.expect("push");
        assert_eq!((got.seq, &got.body[..]), (n as u32 + 1, text.as_bytes()));
    }
    // Pushes by key keep seq 0: they are not numbered.
    let (_, body) = cluster.post_form("/im/push/keys", "keys=p5&msg=k").await;
    assert!(body["data"].get("stored").is_none(), "{body}");
    assert_eq!(phone.recv_push().await.expect("by key").seq, 0);

    // Nobody online: stored all the same, written to no device.
    let (_, body) = cluster
        .post_form("/im/push/mids", "mids=9&msg=hi&operation=1002")
        .await;
    assert_eq!(
        (&body["data"]["stored"], &body["data"]["keys"]),
        (&json!(1), &json!(0))
    );
    let (status, inbox) = cluster.get("/im/inbox?mid=9&since=0").await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(
        inbox["data"],
        json!({"mid": 9, "last": 1, "oldest": 1, "messages": [{"seq": 1, "op": 1002, "body": "aGk="}]})
    );
    let (_, inbox) = cluster.get("/im/inbox?mid=5&since=2").await;
    assert_eq!(inbox["data"]["last"], 3);
    assert_eq!(inbox["data"]["messages"][0]["seq"], 3, "{inbox}");
    let (status, _) = cluster.get("/im/inbox?since=1").await;
    assert_eq!(status, 400, "mid is required");

    let mut logic = cluster.logic_grpc().await;
    let reply = logic
        .push_mids(PushMidsReq {
            mids: vec!["9".into()],
            msg: b"again".to_vec().into(),
            operation: 1000,
        })
        .await
        .expect("push_mids")
        .into_inner();
    assert_eq!(reply.stored, 1);
    let kept = logic
        .inbox(InboxReq { mid: 9, since: 1 })
        .await
        .expect("inbox")
        .into_inner();
    assert_eq!((kept.last, kept.oldest, kept.messages.len()), (2, 1, 1));
    assert_eq!(&kept.messages[0].body[..], b"again");
}
