//! A cluster that finds itself through Consul: against the testkit's Consul
//! stand-in, or against a real Consul when `CONSUL_HTTP_ADDR` is set. Each
//! test uses service names of its own, so tests never see each other.

use std::time::Duration;

use imcloud::{CloudFile, LogicFile, Node, start_cloud, start_logic};
use imcloud_client::{Client, ClientError};
use imcloud_cloud::Cloud;
use imcloud_discovery::{
    CLOUD_SERVICE, ConsulConfig, ConsulDiscovery, Discovery, DiscoveryConfig, DiscoveryKind,
    LOGIC_SERVICE,
};
use imcloud_logic::Logic;
use imcloud_protocol::CloseReason;
use imcloud_testkit::{ConsulServer, eventually};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ANY: &str = "127.0.0.1:0";

/// Consul for one test: the stand-in, unless `CONSUL_HTTP_ADDR` names a real one.
struct Consul {
    url: String,
    fake: Option<ConsulServer>,
    prefix: String,
}

impl Consul {
    async fn new(test: &str) -> Consul {
        let prefix = format!("{test}-{}", std::process::id());
        match std::env::var("CONSUL_HTTP_ADDR") {
            Ok(url) if !url.is_empty() => Consul {
                url,
                fake: None,
                prefix,
            },
            _ => {
                let fake = ConsulServer::start_new().await;
                Consul {
                    url: fake.url(),
                    fake: Some(fake),
                    prefix,
                }
            }
        }
    }

    fn config(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            kind: DiscoveryKind::Consul,
            advertise_host: String::new(),
            consul: ConsulConfig {
                address: self.url.clone(),
                cloud_service: format!("{}-cloud", self.prefix),
                logic_service: format!("{}-logic", self.prefix),
                ttl: Duration::from_secs(2),
                deregister_after: Duration::from_secs(60),
                wait: Duration::from_secs(1),
                ..ConsulConfig::default()
            },
        }
    }

    /// A watch of our own, to see what Consul reports.
    fn observer(&self) -> ConsulDiscovery {
        ConsulDiscovery::new(self.config().consul).expect("observer")
    }

    async fn logic(&self) -> (Node<Logic>, String) {
        let mut file = LogicFile::default();
        file.listen.grpc = ANY.parse().expect("addr");
        file.listen.http = ANY.parse().expect("addr");
        file.discovery = self.config();
        file.logic.cloud_nodes = Vec::new();
        file.logic.verifier = imcloud_logic::VerifierKind::InsecureJson;
        let node = start_logic(file, CancellationToken::new())
            .await
            .expect("logic");
        let api = format!("http://{}", node.addrs["http"]);
        (node, api)
    }

    async fn cloud(&self, id: &str, shutdown: CancellationToken) -> Node<Cloud> {
        let mut file = CloudFile::default();
        for addr in [
            &mut file.listen.tcp,
            &mut file.listen.ws,
            &mut file.listen.grpc,
            &mut file.listen.http,
        ] {
            *addr = ANY.parse().expect("addr");
        }
        file.discovery = self.config();
        file.cloud.server_id = id.to_owned();
        file.cloud.logic_addrs = Vec::new();
        file.cloud.online_report_interval = Duration::from_millis(200);
        start_cloud(file, shutdown).await.expect("cloud")
    }
}

/// Waits for the watched set to satisfy `done`; each change is an event.
async fn until_nodes(observer: &ConsulDiscovery, service: &str, done: impl Fn(&[String]) -> bool) {
    let mut nodes = observer.watch(service);
    let wait = async {
        loop {
            let ids: Vec<String> = nodes
                .borrow_and_update()
                .iter()
                .map(|n| n.id.clone())
                .collect();
            if done(&ids) {
                return;
            }
            nodes.changed().await.expect("watch");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("consul reports the expected nodes within 20 s");
}

/// The cloud nodes logic tells clients about (`GET /im/nodes`), once it
/// names exactly `ids` (its own watch may be a round behind ours).
async fn nodes_from_logic(api: &str, ids: &[&str]) -> Vec<Value> {
    let mut nodes = Vec::new();
    eventually(&format!("logic lists {ids:?}"), async || {
        let answer: Value = reqwest::get(format!("{api}/im/nodes"))
            .await
            .expect("nodes")
            .json()
            .await
            .expect("json");
        nodes = answer["data"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut named: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
        named.sort_unstable();
        named == ids
    })
    .await;
    nodes
}

/// Connects and authenticates, retrying while the cloud node has not yet
/// discovered a logic node (op 6 `logic unavailable` asks clients to retry).
async fn client(ws: &str, mid: i64, room: &str) -> Client {
    let token = serde_json::json!({"mid": mid, "room_id": room}).to_string();
    let mut authenticated = None;
    eventually("the cloud node finds a logic node", async || {
        let mut client = Client::connect_ws(ws).await.expect("connect");
        match client.auth(token.clone()).await {
            Ok(_) => authenticated = Some(client),
            Err(ClientError::Closed(body))
                if body.close_reason() == Some(CloseReason::LogicUnavailable) => {}
            Err(err) => panic!("auth: {err}"),
        }
        authenticated.is_some()
    })
    .await;
    authenticated.expect("authenticated")
}

async fn push(api: &str, route: &str, form: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{api}{route}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .expect("push");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

fn ws_of(node: &Value) -> String {
    node["ws"].as_str().expect("ws").to_owned()
}

#[tokio::test]
async fn a_node_registers_passes_its_check_and_deregisters() {
    let consul = Consul::new("register").await;
    let observer = consul.observer();
    let shutdown = CancellationToken::new();
    let cloud = consul.cloud("solo", shutdown.clone()).await;
    // Passing means registered and its TTL check passed.
    until_nodes(&observer, CLOUD_SERVICE, |ids| ids == ["solo"]).await;
    let nodes = observer.watch(CLOUD_SERVICE).borrow().clone();
    assert_eq!(nodes[0].grpc, cloud.addrs["grpc"].to_string());
    assert_eq!(
        nodes[0].ws,
        format!("ws://127.0.0.1:{}/sub", cloud.addrs["ws"].port())
    );
    if let Some(fake) = &consul.fake {
        assert_eq!(fake.passing(&format!("{}-cloud", consul.prefix)).len(), 1);
    }

    // A graceful stop deregisters.
    shutdown.cancel();
    let Node { node, .. } = cloud;
    node.wait().await.expect("drained");
    until_nodes(&observer, CLOUD_SERVICE, <[String]>::is_empty).await;
    if let Some(fake) = &consul.fake {
        fake.until("deregistered", |f| f.registered().is_empty())
            .await;
    }
}

#[tokio::test]
async fn a_cluster_finds_itself_follows_joins_and_drops_dead_nodes() {
    let consul = Consul::new("cluster").await;
    let observer = consul.observer();
    let (_logic, api) = consul.logic().await;
    let b_stop = CancellationToken::new();
    let _a = consul.cloud("a", CancellationToken::new()).await;
    let mut b = consul.cloud("b", b_stop.clone()).await;
    until_nodes(&observer, LOGIC_SERVICE, |ids| ids.len() == 1).await;

    // One logic and two cloud nodes, no addresses configured anywhere.
    let nodes = nodes_from_logic(&api, &["a", "b"]).await;
    let mut on_a = client(&ws_of(&nodes[0]), 1, "live://1").await;
    let mut on_b = client(&ws_of(&nodes[1]), 1, "live://1").await;
    let (status, body) = push(&api, "/im/push/mids", "mids=1&msg=both").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], 2);
    assert_eq!(&on_a.recv_push().await.expect("a").body[..], b"both");
    assert_eq!(&on_b.recv_push().await.expect("b").body[..], b"both");

    // A third node started later gets room pushes once logic has seen it.
    let _c = consul.cloud("c", CancellationToken::new()).await;
    let nodes = nodes_from_logic(&api, &["a", "b", "c"]).await;
    let c_ws = nodes.iter().find(|n| n["id"] == "c").map(ws_of).expect("c");
    let mut on_c = client(&c_ws, 3, "live://1").await;
    let (status, body) = push(&api, "/im/push/room", "type=live&room=1&msg=room").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], 3);
    for client in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(&client.recv_push().await.expect("room").body[..], b"room");
    }

    // b dies without deregistering: it stops passing its check.
    b.abandon_registration();
    b_stop.cancel();
    let Node { node, .. } = b;
    node.wait().await.expect("b stopped");
    // Meanwhile pushes still reach the others.
    let (status, body) = push(&api, "/im/push/room", "type=live&room=1&msg=meanwhile").await;
    assert_eq!(status, 200, "{body}");
    for client in [&mut on_a, &mut on_c] {
        assert_eq!(
            &client.recv_push().await.expect("room").body[..],
            b"meanwhile"
        );
    }
    // After its TTL, b is no longer routed to.
    nodes_from_logic(&api, &["a", "c"]).await;
    let (status, body) = push(&api, "/im/push/room", "type=live&room=1&msg=after").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nodes"], 2);
    assert!(body["data"].get("failed").is_none(), "{body}");
}

#[tokio::test]
async fn consul_going_away_and_back_does_not_take_the_cluster_down() {
    let mut consul = Consul::new("outage").await;
    if consul.fake.is_none() {
        // A real Consul cannot be stopped from here.
        eprintln!("skipped against a real Consul: it cannot be stopped by the test");
        return;
    }
    let (_logic, api) = consul.logic().await;
    let _a = consul.cloud("a", CancellationToken::new()).await;
    let nodes = nodes_from_logic(&api, &["a"]).await;
    let mut on_a = client(&ws_of(&nodes[0]), 1, "").await;

    consul.fake.as_mut().expect("fake").stop();
    let (status, body) = push(&api, "/im/push/mids", "mids=1&msg=during").await;
    assert_eq!(status, 200, "logic keeps the last known nodes: {body}");
    assert_eq!(&on_a.recv_push().await.expect("push").body[..], b"during");

    consul.fake.as_mut().expect("fake").start().await;
    // Registrations and watches come back by themselves: a node started now is found.
    let _b = consul.cloud("b", CancellationToken::new()).await;
    nodes_from_logic(&api, &["a", "b"]).await;
    let (status, _) = push(&api, "/im/push/mids", "mids=1&msg=after").await;
    assert_eq!(status, 200);
    assert_eq!(&on_a.recv_push().await.expect("push").body[..], b"after");
}

#[test]
fn the_consul_token_never_shows_in_logs() {
    let config = ConsulConfig {
        token: serde_json::from_str("\"s3cret\"").expect("token"),
        ..ConsulConfig::default()
    };
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("***"));
}
