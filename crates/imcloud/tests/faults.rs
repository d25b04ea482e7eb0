//! Fault tests with real processes: the `imcloud` binary as logic and cloud
//! nodes, killed with SIGKILL while clients are connected, and what the
//! nodes log through an outage (once, not per client).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use imcloud_client::{Client, ClientError};
use imcloud_client::{Device, Event};
use imcloud_proto::cloud::cloud_client::CloudClient;
use imcloud_proto::cloud::{BroadcastReq, Proto};
use imcloud_protocol::CloseReason;
use imcloud_testkit::standalone::scrape;
use imcloud_testkit::{ConsulServer, NatsServer, RedisServer, eventually};
use serde_json::Value;

/// A node process; killed (SIGKILL) when dropped.
struct Process {
    child: Child,
    /// The fields of its "serving" log line (addresses).
    fields: HashMap<String, String>,
    /// Every log line it wrote, as JSON.
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Process {
    /// Its log lines at WARN or ERROR.
    fn warnings(&self) -> Vec<Value> {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|line| line["level"] == "WARN" || line["level"] == "ERROR")
            .cloned()
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imcloud-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Runs `imcloud <mode>` with `config` and waits for its log line `ready`.
fn spawn(mode: &str, name: &str, config: &str, ready: &str) -> Process {
    let path = dir().join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imcloud"))
        .args([mode, "--log-format", "json", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imcloud");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let ready = ready.to_owned();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let kept = logs.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(json) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            kept.lock().expect("logs").push(json.clone());
            if !sent && json["fields"]["message"] == ready.as_str() {
                let fields = json["fields"]
                    .as_object()
                    .map(|f| {
                        f.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = tx.send(fields);
                sent = true;
            }
        }
    });
    let fields = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node comes up");
    Process {
        child,
        fields,
        logs,
    }
}

fn logic_config(grpc: &str, extra: &str) -> String {
    format!(
        "[listen]\ngrpc = \"{grpc}\"\nhttp = \"127.0.0.1:0\"\n{extra}\n[logic]\nverifier = \"insecure-json\"\ncloud_nodes = []\n"
    )
}

fn cloud_config(id: &str, logic: &str, extra: &str) -> String {
    format!(
        "[listen]\ntcp = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n{extra}\n[cloud]\nserver_id = \"{id}\"\nlogic_addrs = [{logic}]\nlogic_timeout = \"1s\"\n"
    )
}

async fn auth(ws: &str, mid: i64) -> Result<Client, ClientError> {
    let mut client = Client::connect_ws(ws).await?;
    client
        .auth(serde_json::json!({"mid": mid, "room_id": "live://1", "accepts": [1000]}).to_string())
        .await?;
    Ok(client)
}

#[tokio::test]
async fn killing_logic_keeps_clients_connected_and_pushable_until_it_returns() {
    let logic = spawn(
        "logic",
        "logic",
        &logic_config("127.0.0.1:0", ""),
        "logic node serving",
    );
    let logic_grpc = logic.fields["grpc"].clone();
    let cloud = spawn(
        "cloud",
        "cloud",
        &cloud_config("cloud-1", &format!("\"{logic_grpc}\""), ""),
        "cloud node serving",
    );
    let ws = format!("ws://{}/sub", cloud.fields["ws"]);

    let mut clients = Vec::with_capacity(1000);
    for mid in 0..1000 {
        clients.push(auth(&ws, mid).await.expect("auth"));
    }

    drop(logic); // SIGKILL

    // Pushes straight to the cloud node still reach every client.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cloud.fields["grpc"]))
            .expect("endpoint")
            .connect()
            .await
            .expect("cloud grpc");
    CloudClient::new(channel)
        .broadcast(BroadcastReq {
            proto_op: 1000,
            proto: Some(Proto {
                ver: 1,
                op: 1000,
                seq: 0,
                body: b"still here".to_vec().into(),
            }),
            speed: 0,
        })
        .await
        .expect("broadcast");
    for client in &mut clients {
        assert_eq!(
            &client.recv_push().await.expect("push").body[..],
            b"still here"
        );
    }

    // New clients are told logic is unavailable, and to come back.
    match auth(&ws, 5000).await {
        Err(ClientError::Closed(body)) => {
            assert_eq!(
                body.close_reason(),
                Some(CloseReason::LogicUnavailable),
                "{body:?}"
            );
            assert!(body.reconnect);
        }
        other => panic!(
            "expected op 6 logic unavailable, got {:?}",
            other.map(|_| ())
        ),
    }

    // Logic comes back on its address: new clients get in again.
    let _logic = spawn(
        "logic",
        "logic-again",
        &logic_config(&logic_grpc, ""),
        "logic node serving",
    );
    let mut back = None;
    eventually("auth works again once logic is back", async || {
        back = auth(&ws, 5001).await.ok();
        back.is_some()
    })
    .await;
    let mut back = back.expect("authenticated");
    assert!(back.heartbeat().await.expect("heartbeat") >= 1);
    // And the clients from before never noticed.
    assert!(clients[999].heartbeat().await.expect("still connected") >= 1);
}

#[tokio::test]
async fn killing_a_cloud_node_is_reported_and_the_others_keep_working() {
    let consul = ConsulServer::start_new().await;
    let discovery = format!(
        "[discovery]\nkind = \"consul\"\n[discovery.consul]\naddress = \"{}\"\nttl = \"2s\"\nwait = \"1s\"\n",
        consul.url()
    );
    let logic = spawn(
        "logic",
        "logic-c",
        &logic_config("127.0.0.1:0", &discovery),
        "logic node serving",
    );
    let api = format!("http://{}", logic.fields["http"]);
    let a = spawn(
        "cloud",
        "cloud-a",
        &cloud_config("a", "", &discovery),
        "cloud node serving",
    );
    let b = spawn(
        "cloud",
        "cloud-b",
        &cloud_config("b", "", &discovery),
        "cloud node serving",
    );
    consul
        .until("both cloud nodes passing", |c| {
            c.passing("im-cloud").len() == 2
        })
        .await;
    consul
        .until("logic passing", |c| c.passing("im-logic").len() == 1)
        .await;

    let mut on_a = None;
    eventually("a client on node a", async || {
        on_a = auth(&format!("ws://{}/sub", a.fields["ws"]), 1).await.ok();
        on_a.is_some()
    })
    .await;
    let mut on_a = on_a.expect("authenticated");
    // A member on b too: room pushes go only where members are.
    let mut on_b = None;
    eventually("a client on node b", async || {
        on_b = auth(&format!("ws://{}/sub", b.fields["ws"]), 2).await.ok();
        on_b.is_some()
    })
    .await;
    let web = reqwest::Client::new();
    let push = |msg: &'static str| {
        web.post(format!("{api}/im/push/room"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("type=live&room=1&msg={msg}"))
            .send()
    };
    // Wait until logic's own watch has both nodes.
    eventually("logic pushing to both cloud nodes", async || {
        let answer: Value = push("warmup")
            .await
            .expect("push")
            .json()
            .await
            .expect("json");
        assert_eq!(&on_a.recv_push().await.expect("warmup").body[..], b"warmup");
        answer["data"]["nodes"] == 2
    })
    .await;

    drop(b); // SIGKILL: no deregistration
    let answer: Value = push("after")
        .await
        .expect("push")
        .json()
        .await
        .expect("json");
    assert_eq!(
        &on_a.recv_push().await.expect("push").body[..],
        b"after",
        "{answer}"
    );
    // Logic still routes to b (its TTL has not run out): the call fails,
    // and the answer names b, and only b, as failed.
    assert_eq!(answer["data"]["nodes"], 1, "{answer}");
    let failed = answer["data"]["failed"].as_array().expect("failed nodes");
    assert_eq!(failed.len(), 1, "{answer}");
    assert!(
        failed[0].as_str().is_some_and(|why| why.starts_with("b: ")),
        "the dead node is named: {answer}"
    );
    // After its TTL the dead node drops out of routing altogether.
    consul
        .until("b expired", |c| c.passing("im-cloud").len() == 1)
        .await;
    eventually("pushes stop trying the dead node", async || {
        let answer: Value = push("clean")
            .await
            .expect("push")
            .json()
            .await
            .expect("json");
        assert_eq!(&on_a.recv_push().await.expect("push").body[..], b"clean");
        answer["data"]["nodes"] == 1 && answer["data"].get("failed").is_none()
    })
    .await;
    // Presence: the dead node's device is gone, the live node's listed.
    let users: Value = web
        .get(format!("{api}/im/online/users?mids=1,2"))
        .send()
        .await
        .expect("presence")
        .json()
        .await
        .expect("json");
    assert_eq!(users["data"]["2"], serde_json::json!([]), "{users}");
    let on_a_devices = users["data"]["1"].as_array().expect("user 1");
    assert_eq!(on_a_devices.len(), 1, "{users}");
    assert_eq!(on_a_devices[0]["node"], "a", "{users}");
}

/// A Redis outage is one WARN line on the cloud node, not one per client
/// per failed renewal (once ~1,500 lines in 5 s with 500 clients): 300
/// clients heartbeating, each renewing every second, through an outage
/// long enough for each to fail at least twice.
#[tokio::test]
async fn a_redis_outage_is_logged_once_however_many_clients_renew() {
    let mut redis = RedisServer::start();
    let logic = spawn(
        "logic",
        "logic-redis",
        &format!(
            "[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[logic]\nverifier = \"insecure-json\"\n\
             cloud_nodes = []\nsession_store = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"300ms\"\n",
            redis.url
        ),
        "logic node serving",
    );
    let cloud = spawn(
        "cloud",
        "cloud-redis",
        &cloud_config("cloud-r", &format!("\"{}\"", logic.fields["grpc"]), "").replace(
            "logic_timeout = \"1s\"",
            "logic_timeout = \"1s\"\nrenew_interval = \"1s\"",
        ),
        "cloud node serving",
    );
    let ws = format!("ws://{}/sub", cloud.fields["ws"]);
    let mut clients = Vec::with_capacity(300);
    for mid in 0..300 {
        clients.push(auth(&ws, mid).await.expect("auth"));
    }
    let renew_failures = || async {
        scrape(&format!("http://{}", logic.fields["http"]))
            .await
            .get("imcloud_logic_store_errors_total{op=\"renew\"}")
            .copied()
            .unwrap_or(0.0)
    };

    redis.kill();
    // Every client heartbeats until logic has refused 600 renewals.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while renew_failures().await < 600.0 {
        tick.tick().await;
        for client in &mut clients {
            client.heartbeat().await.expect("clients stay connected");
        }
    }
    redis.restart();
    for client in &mut clients {
        client.heartbeat().await.expect("still connected");
    }
    let warnings = cloud.warnings();
    assert!(
        warnings.len() < 20,
        "{} WARN/ERROR lines through the outage: {warnings:#?}",
        warnings.len()
    );
}

/// A node registered in Consul logs its registration once, not at every
/// refresh, and none of the Consul client's per-request lines: fewer than
/// 10 lines through ten check passes (start-up included).
#[tokio::test]
async fn consul_registration_is_logged_once() {
    let consul = ConsulServer::start_new().await;
    let discovery = format!(
        "[discovery]\nkind = \"consul\"\n[discovery.consul]\naddress = \"{}\"\nttl = \"1s\"\nwait = \"1s\"\n",
        consul.url()
    );
    let cloud = spawn(
        "cloud",
        "cloud-quiet",
        &cloud_config("quiet", "", &discovery),
        "cloud node serving",
    );
    consul.until_passes(10).await;
    let lines: Vec<Value> = cloud.logs.lock().expect("logs").clone();
    assert!(lines.len() < 10, "{} lines: {lines:#?}", lines.len());
    let registered = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "registered in consul")
        .count();
    assert_eq!(registered, 1, "{lines:#?}");
}

/// A NATS outage is one line when it starts and one when it ends on the
/// logic node, not one per reconnection attempt (ten of them here).
#[tokio::test]
async fn a_nats_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let mut nats = NatsServer::start();
    let logic = spawn(
        "logic",
        "logic-nats",
        &logic_config("127.0.0.1:0", "").replace(
            "cloud_nodes = []",
            &format!(
                "cloud_nodes = []\n[logic.ingest]\nnats_url = \"{}\"",
                nats.url
            ),
        ),
        "logic node serving",
    );
    let http = format!("http://{}", logic.fields["http"]);
    let consuming = async |up: f64| {
        eventually("ingest_consuming", async || {
            scrape(&http).await.get("imcloud_logic_ingest_consuming") == Some(&up)
        })
        .await;
    };
    consuming(1.0).await;
    nats.kill();
    consuming(0.0).await;
    // The outage lasts for ten reconnection attempts: a listener on the
    // dead server's port takes them and closes each one.
    let port = nats.url.rsplit(':').next().expect("port");
    let stand_in = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("the dead server's port");
    for _ in 0..10 {
        drop(stand_in.accept().await.expect("a reconnection attempt"));
    }
    drop(stand_in);
    nats.restart();
    consuming(1.0).await;
    let lines: Vec<String> = logic
        .logs
        .lock()
        .expect("logs")
        .iter()
        .map(|line| {
            line["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let count = |message: &str| lines.iter().filter(|line| line.contains(message)).count();
    assert_eq!(count("ingest lost its NATS connection"), 1, "{lines:#?}");
    assert_eq!(count("ingest reconnected to NATS"), 1, "{lines:#?}");
    assert!(lines.len() < 10, "{} lines: {lines:#?}", lines.len());
}

/// Users with a device online while the commands flow.
const USERS: i64 = 10;
/// Commands published, each to every user.
const COMMANDS: usize = 10_000;

/// 10,000 push-by-mid commands published to NATS JetStream while the one
/// logic node consuming them is SIGKILLed mid-stream and started again:
/// every device gets every message exactly once (numbers 1..=10,000, each
/// body once), and the consumer's lag comes back to 0. Commands carry no
/// id: a command the dead node had stored but not acknowledged is numbered
/// again under its stream sequence, which gives it the numbers it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_survives_its_logic_node_killed_mid_stream_and_delivers_every_message_once() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    // The logic node comes back on the address the cloud node knows.
    let logic_grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let cloud = spawn(
        "cloud",
        "cloud-ingest",
        &cloud_config("cloud-i", &format!("\"{logic_grpc}\""), ""),
        "cloud node serving",
    );
    let ws = format!("ws://{}/sub", cloud.fields["ws"]);
    let logic_toml = format!(
        "[listen]\ngrpc = \"{logic_grpc}\"\nhttp = \"127.0.0.1:0\"\n\
         [logic]\nverifier = \"insecure-json\"\nsession_store = \"redis\"\nredis_url = \"{}\"\n\
         inbox_max = 20000\n\
         [logic.ingest]\nnats_url = \"{}\"\nretry_delay = \"100ms\"\nack_wait = \"2s\"\n\
         [[logic.cloud_nodes]]\nid = \"cloud-i\"\ngrpc = \"{}\"\nws = \"{ws}\"\ntcp = \"{}\"\n",
        redis.url, nats.url, cloud.fields["grpc"], cloud.fields["tcp"]
    );
    let logic = spawn("logic", "logic-ingest", &logic_toml, "logic node serving");

    // Every device online before the first command.
    let handed = Arc::new(AtomicUsize::new(0));
    let a_quarter = Arc::new(tokio::sync::Notify::new());
    let mut devices = Vec::new();
    for mid in 1..=USERS {
        let ws = ws.clone();
        let connector = move || {
            let ws = ws.clone();
            async move { Client::connect_ws(&ws).await }
        };
        let token = serde_json::json!({"mid": mid, "accepts": [1000]}).to_string();
        let mut device = Device::new(connector, token, 0);
        device.online().await.expect("online");
        let (handed, a_quarter) = (handed.clone(), a_quarter.clone());
        devices.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(COMMANDS);
            while got.len() < COMMANDS {
                match device.next().await.expect("device") {
                    Event::Message(packet) => {
                        got.push((
                            packet.seq,
                            String::from_utf8_lossy(&packet.body).into_owned(),
                        ));
                    }
                    Event::Reset { oldest } => panic!("user {mid} reset to {oldest}"),
                }
                if handed.fetch_add(1, Ordering::Relaxed) + 1 == COMMANDS * USERS as usize / 4 {
                    a_quarter.notify_one();
                }
            }
            got
        }));
    }

    let client = async_nats::connect(&nats.url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    eventually("the logic node's stream", async || {
        js.get_stream("IMCLOUD_PUSH").await.is_ok()
    })
    .await;
    let mids: Vec<i64> = (1..=USERS).collect();
    let publisher = tokio::spawn(async move {
        let mut acks = Vec::new();
        for n in 0..COMMANDS {
            let command = serde_json::json!({"type": "mids", "mids": mids, "msg": format!("m{n}")});
            let ack = js
                .publish("imcloud.push", command.to_string().into())
                .await
                .expect("publish");
            acks.push(ack);
            if acks.len() == 500 {
                for ack in acks.drain(..) {
                    ack.await.expect("stored by the stream");
                }
            }
        }
        for ack in acks {
            ack.await.expect("stored by the stream");
        }
    });

    a_quarter.notified().await;
    drop(logic); // SIGKILL, mid-stream
    let logic = spawn(
        "logic",
        "logic-ingest-again",
        &logic_toml,
        "logic node serving",
    );
    publisher.await.expect("published");

    for (mid, device) in (1..=USERS).zip(devices) {
        let got = tokio::time::timeout(Duration::from_secs(180), device)
            .await
            .unwrap_or_else(|_| panic!("user {mid} still waiting for messages"))
            .expect("device task");
        let seqs: Vec<u32> = got.iter().map(|(seq, _)| *seq).collect();
        assert!(
            seqs.iter().copied().eq(1..=COMMANDS as u32),
            "user {mid}: numbered 1..={COMMANDS} in order"
        );
        let mut bodies: Vec<&str> = got.iter().map(|(_, body)| body.as_str()).collect();
        bodies.sort_unstable();
        bodies.dedup();
        assert_eq!(bodies.len(), COMMANDS, "user {mid}: every message once");
    }
    let http = format!("http://{}", logic.fields["http"]);
    eventually("the lag back to 0", async || {
        scrape(&http).await.get("imcloud_logic_ingest_pending") == Some(&0.0)
    })
    .await;
}
