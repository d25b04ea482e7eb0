//! Two logic nodes and two cloud nodes sharing one real redis-server.

use std::time::Duration;

use imcloud_client::{Client, ClientError};
use imcloud_logic::SessionStoreKind;
use imcloud_testkit::cluster::{cluster_of, token};
use imcloud_testkit::{RedisServer, eventually};

async fn shared_cluster(redis: &RedisServer) -> imcloud_testkit::cluster::Cluster {
    let url = redis.url.clone();
    cluster_of(2, 2, move |_, config| {
        config.session_store = SessionStoreKind::Redis;
        config.redis_url = url.clone();
        config.redis_timeout = Duration::from_millis(500);
    })
    .await
}

#[tokio::test]
async fn a_client_authenticated_through_one_logic_node_gets_pushes_sent_through_the_other() {
    let redis = RedisServer::start();
    let cluster = shared_cluster(&redis).await;
    // Cloud node 0 authenticates through logic 0; cloud node 1 through logic 1.
    let mut on_a = cluster.ws(0, token(5, None, "live://7", &[])).await;
    let mut on_b = cluster.tcp(1, token(5, None, "live://7", &[])).await;

    let (status, body) = cluster
        .post_form_to(1, "/im/push/mids", "mids=5&msg=via+b")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["keys"], 2);
    assert_eq!(&on_a.recv_push().await.expect("a").body[..], b"via b");
    assert_eq!(&on_b.recv_push().await.expect("b").body[..], b"via b");

    // Both logic nodes see the same cluster-wide counts.
    for logic in [0, 1] {
        let rooms = cluster
            .eventually_at(logic, "/im/online/room?type=live&rooms=7", |d| d["7"] == 2)
            .await;
        assert_eq!(rooms["7"], 2, "logic {logic}");
    }
}

#[tokio::test]
async fn redis_down_is_a_503_with_the_reason_and_its_return_heals() {
    let mut redis = RedisServer::start();
    let cluster = shared_cluster(&redis).await;
    let mut client = cluster.ws(0, token(8, Some("k8"), "", &[])).await;

    redis.kill();
    let (status, body) = cluster
        .post_form_to(1, "/im/push/mids", "mids=8&msg=lost?")
        .await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("session store unavailable"), "{message}");
    // The established connection stays up through the outage.
    assert_eq!(client.heartbeat().await.expect("still connected"), 0);

    redis.restart();
    // The restarted Redis is empty: the session comes back with the next
    // renewal; re-authenticating is the quickest way to make one here. A
    // client told "logic unavailable" retries, as the close code asks.
    let mut again = None;
    eventually("authenticated once Redis is back", async || {
        let mut client = Client::connect_ws(&cluster.clouds[0].ws_url)
            .await
            .expect("ws");
        match client.auth(token(8, Some("k8b"), "", &[])).await {
            Ok(_) => again = Some(client),
            Err(ClientError::Closed(body)) if body.reconnect => {}
            Err(err) => panic!("auth after the restart: {err}"),
        }
        again.is_some()
    })
    .await;
    let mut again = again.expect("authenticated");
    let (status, body) = cluster
        .post_form_to(1, "/im/push/mids", "mids=8&msg=back")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(&again.recv_push().await.expect("push").body[..], b"back");
}

/// Redis comes back empty (restarted without persistence): every cloud node
/// registers its sessions again, through either logic node, so pushes by
/// mid reach the connected clients without waiting for their renewals.
#[tokio::test]
async fn sessions_come_back_by_themselves_after_redis_comes_back_empty() {
    let mut redis = RedisServer::start();
    let cluster = shared_cluster(&redis).await;
    let mut on_a = cluster.ws(0, token(5, Some("a5"), "", &[])).await;
    let mut on_b = cluster.tcp(1, token(6, Some("b6"), "", &[])).await;

    redis.kill();
    redis.restart();
    cluster.push_until_routed(1, 5, "back-a").await;
    cluster.push_until_routed(0, 6, "back-b").await;
    assert_eq!(&on_a.recv_push().await.expect("a").body[..], b"back-a");
    assert_eq!(&on_b.recv_push().await.expect("b").body[..], b"back-b");
}

/// gRPC calls a cloud node has served, all methods together.
fn calls_served(cluster: &imcloud_testkit::cluster::Cluster, node: usize) -> u64 {
    let cloud = cluster.clouds[node].cloud.as_ref().expect("running");
    cloud
        .metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with("imcloud_cloud_grpc_calls_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn room_pushes_go_only_where_members_are_and_follow_a_join_through_the_other_logic_node() {
    let redis = RedisServer::start();
    let url = redis.url.clone();
    // Three cloud nodes; node 0 and 2 authenticate through logic 0, node 1
    // through logic 1.
    let cluster = cluster_of(2, 3, move |_, config| {
        config.session_store = SessionStoreKind::Redis;
        config.redis_url = url.clone();
    })
    .await;
    let mut on_a = cluster.ws(0, token(1, None, "group://r", &[])).await;
    let before = [calls_served(&cluster, 1), calls_served(&cluster, 2)];

    let (status, body) = cluster
        .post_form_to(1, "/im/push/room", "type=group&room=r&msg=only+a")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], 1, "{body}");
    assert_eq!(&on_a.recv_push().await.expect("a").body[..], b"only a");
    assert_eq!(
        [calls_served(&cluster, 1), calls_served(&cluster, 2)],
        before,
        "the nodes without members were not called"
    );

    // A member joins on node 1 (through logic 1); a push through logic 0
    // sent as soon as the join is answered reaches it.
    let mut on_b = cluster.ws(1, token(2, None, "", &[])).await;
    on_b.join("group://r").await.expect("join");
    let (status, body) = cluster
        .post_form_to(0, "/im/push/room", "type=group&room=r&msg=both")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], 2, "{body}");
    assert_eq!(&on_b.recv_push().await.expect("b").body[..], b"both");
    assert_eq!(&on_a.recv_push().await.expect("a").body[..], b"both");
    assert_eq!(calls_served(&cluster, 2), before[1], "node 2 never called");
}

#[tokio::test]
async fn presence_lists_devices_on_every_node_and_forgets_them_when_they_go() {
    let redis = RedisServer::start();
    let cluster = shared_cluster(&redis).await;
    let device = |mid: i64, platform: &str| {
        serde_json::json!({"mid": mid, "platform": platform, "room_id": "group://p"}).to_string()
    };
    let web = cluster.ws(0, device(7, "web")).await;
    let _phone = cluster.tcp(1, device(7, "ios")).await;
    let _other = cluster.ws(1, device(9, "web")).await;

    // Asked of logic 1; the web device authenticated through logic 0.
    let (status, users) = cluster.get_from(1, "/im/online/users?mids=7,8").await;
    assert_eq!(status, 200, "{users}");
    let seven = users["data"]["7"].as_array().expect("user 7 listed");
    let mut seen: Vec<(String, String)> = seven
        .iter()
        .map(|d| {
            (
                d["node"].as_str().unwrap_or("").to_owned(),
                d["platform"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("cloud-0".to_owned(), "web".to_owned()),
            ("cloud-1".to_owned(), "ios".to_owned())
        ]
    );
    assert_eq!(seven[0]["rooms"], serde_json::json!(["group://p"]));
    assert_eq!(
        users["data"]["8"],
        serde_json::json!([]),
        "offline users are listed empty"
    );

    let (_, members) = cluster
        .get_from(0, "/im/online/members?room=group://p&limit=10")
        .await;
    assert_eq!(
        members["data"],
        serde_json::json!({"room": "group://p", "online": 3, "members": [7, 9], "truncated": false})
    );
    let (_, first) = cluster
        .get_from(0, "/im/online/members?room=group://p&limit=1")
        .await;
    assert_eq!(
        (&first["data"]["members"], &first["data"]["truncated"]),
        (&serde_json::json!([7]), &serde_json::json!(true))
    );

    // The web device disconnects: gone at once.
    drop(web);
    cluster
        .eventually_at(1, "/im/online/users?mids=7", |d| {
            d["7"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
}
