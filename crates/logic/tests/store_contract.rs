//! One contract, two session stores: the in-memory store and the Redis
//! store (against a real redis-server) must behave the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use imcloud_logic::{MemoryStore, RedisStore, SessionStore};
use imcloud_testkit::{RedisServer, eventually};

const TTL: Duration = Duration::from_secs(1);
const ONLINE_TTL: Duration = Duration::from_secs(1);

fn sorted(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.sort();
    pairs
}

/// `(key, server)` of each route, sorted.
fn routes(routes: Vec<imcloud_logic::Route>) -> Vec<(String, String)> {
    sorted(routes.into_iter().map(|r| (r.key, r.server)).collect())
}

fn pair(key: &str, server: &str) -> (String, String) {
    (key.to_owned(), server.to_owned())
}

async fn contract(store: Arc<dyn SessionStore>) {
    // A user with two devices on two nodes; another user.
    store.connect(1, "phone", "cloud-a").await.expect("connect");
    store
        .connect(1, "laptop", "cloud-b")
        .await
        .expect("connect");
    store.connect(2, "other", "cloud-a").await.expect("connect");
    assert_eq!(
        routes(store.keys_of_mids(&[1, 3]).await.expect("mids")),
        [pair("laptop", "cloud-b"), pair("phone", "cloud-a")]
    );
    assert_eq!(
        store
            .servers_of_keys(&["other".into(), "nobody".into()])
            .await
            .expect("keys"),
        [pair("other", "cloud-a")]
    );

    // The same key reconnecting elsewhere: the old node's disconnect keeps it.
    store
        .connect(2, "other", "cloud-b")
        .await
        .expect("reconnect");
    assert!(
        !store
            .disconnect(2, "other", "cloud-a")
            .await
            .expect("stale")
    );
    assert_eq!(
        routes(store.keys_of_mids(&[2]).await.expect("mids")),
        [pair("other", "cloud-b")]
    );
    assert!(
        store
            .disconnect(2, "other", "cloud-b")
            .await
            .expect("disconnect")
    );
    assert!(store.keys_of_mids(&[2]).await.expect("mids").is_empty());

    // Sessions of a node that stops renewing expire; renewing re-adds.
    eventually("session expiry", async || {
        store.keys_of_mids(&[1]).await.expect("mids").is_empty()
    })
    .await;
    store.renew(1, "phone", "cloud-a").await.expect("renew");
    assert_eq!(
        routes(store.keys_of_mids(&[1]).await.expect("mids")),
        [pair("phone", "cloud-a")]
    );

    // A node re-registers many sessions at once; the epoch stays while the
    // store keeps its sessions.
    let epoch = store.epoch().await.expect("epoch");
    assert!(!epoch.is_empty());
    store
        .renew_many("cloud-c", &[(7, "k7".to_owned()), (8, "k8".to_owned())])
        .await
        .expect("renew many");
    assert_eq!(
        routes(store.keys_of_mids(&[7, 8]).await.expect("mids")),
        [pair("k7", "cloud-c"), pair("k8", "cloud-c")]
    );
    assert_eq!(store.epoch().await.expect("epoch"), epoch);

    // Online counts merge over nodes; a node that stops reporting drops out.
    let rooms = |n| HashMap::from([("live://1".to_owned(), n), ("live://2".to_owned(), 1)]);
    store
        .report_online("cloud-a", rooms(3))
        .await
        .expect("report");
    store
        .report_online("cloud-b", rooms(4))
        .await
        .expect("report");
    let online = store.online().await.expect("online");
    assert_eq!(online.rooms["live://1"], 7);
    assert_eq!(online.rooms["live://2"], 2);
    assert_eq!(online.servers["cloud-a"], 4);
    eventually("stale counts dropping out", async || {
        store
            .report_online("cloud-b", rooms(4))
            .await
            .expect("report");
        let online = store.online().await.expect("online");
        !online.servers.contains_key("cloud-a") && online.rooms["live://1"] == 4
    })
    .await;

    // Room routes: a join routes at once, a report routes what it names,
    // and a server nobody hears about for the online TTL drops out.
    let servers = async |room: &str| {
        let mut servers = store.room_servers(room).await.expect("servers");
        servers.sort();
        servers
    };
    assert!(servers("group://9").await.is_empty());
    store
        .route_rooms("cloud-c", &["group://9".to_owned()])
        .await
        .expect("route");
    assert_eq!(servers("group://9").await, ["cloud-c"]);
    assert_eq!(servers("live://2").await, ["cloud-b"], "cloud-a went stale");
    eventually("an unrenewed route dropping out", async || {
        store
            .report_online("cloud-b", rooms(4))
            .await
            .expect("report");
        servers("group://9").await.is_empty()
    })
    .await;
    assert_eq!(
        servers("live://1").await,
        ["cloud-b"],
        "the reports keep it"
    );

    // Some rooms' counts merge into a node's report; totals sum the nodes.
    store
        .update_online("cloud-d", HashMap::from([("live://1".to_owned(), 2)]))
        .await
        .expect("update");
    store
        .update_online("cloud-b", HashMap::from([("live://2".to_owned(), 0)]))
        .await
        .expect("update");
    let rooms = [
        "live://1".to_owned(),
        "live://2".to_owned(),
        "none://0".to_owned(),
    ];
    let totals = store.room_totals(&rooms).await.expect("totals");
    assert_eq!(
        totals,
        HashMap::from([
            ("live://1".to_owned(), 6),
            ("live://2".to_owned(), 0),
            ("none://0".to_owned(), 0),
        ]),
        "cloud-b's live://1 kept, its live://2 gone"
    );
    assert_eq!(servers("live://1").await, ["cloud-b", "cloud-d"]);
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new(TTL, ONLINE_TTL))).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis.url, "test:", TTL, ONLINE_TTL, Duration::from_secs(1))
        .expect("store");
    contract(Arc::new(store)).await;
}

/// Redis restarted without persistence has lost every session: the epoch
/// every logic node reads changes (once), so cloud nodes re-register.
#[tokio::test]
async fn the_redis_epoch_changes_when_redis_comes_back_empty() {
    let mut redis = RedisServer::start();
    let store = |prefix| {
        RedisStore::new(&redis.url, prefix, TTL, ONLINE_TTL, Duration::from_secs(1)).expect("store")
    };
    let (one, two) = (store("e:"), store("e:"));
    let before = one.epoch().await.expect("epoch");
    assert_eq!(
        two.epoch().await.expect("epoch"),
        before,
        "one epoch per Redis"
    );
    redis.kill();
    redis.restart();
    // The first call on a connection Redis dropped fails; the next reconnects.
    let mut after = Vec::new();
    for store in [&two, &one] {
        eventually("redis back", async || match store.epoch().await {
            Ok(epoch) => {
                after.push(epoch);
                true
            }
            Err(_) => false,
        })
        .await;
    }
    assert_ne!(after[0], before);
    assert_eq!(after[0], after[1], "every logic node reads the new epoch");
}

#[tokio::test]
async fn a_lookup_of_1000_mids_finds_every_key_in_one_pipeline() {
    let redis = RedisServer::start();
    let store = RedisStore::new(
        &redis.url,
        "",
        Duration::from_secs(60),
        ONLINE_TTL,
        Duration::from_secs(1),
    )
    .expect("store");
    for mid in 0..1000 {
        store
            .connect(mid, &format!("k{mid}"), "cloud-a")
            .await
            .expect("connect");
    }
    let mids: Vec<i64> = (0..1000).collect();
    let started = std::time::Instant::now();
    let keys = store.keys_of_mids(&mids).await.expect("lookup");
    let took = started.elapsed();
    assert_eq!(keys.len(), 1000);
    // Reported, not asserted: timing belongs in benchmarks.
    println!("keys_of_mids(1000 mids) through redis: {took:?}");
}
