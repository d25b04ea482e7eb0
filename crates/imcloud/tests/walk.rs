//! The README's walk: start imcloud standalone, mint a development token,
//! connect a WebSocket client, authenticate, push over HTTP, see it arrive. Once in-process, once with
//! the real binary (which must also drain on SIGTERM).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use imcloud::{Standalone, TokenArgs};
use imcloud_client::Client;
use imcloud_protocol::{CloseReason, Op};
use imcloud_testkit::standalone::any_ports;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Connects, authenticates with `token` (user 123), and has the push API
/// deliver one message to the user.
async fn walk(ws_url: &str, api_url: &str, token: String) -> Client {
    let mut client = Client::connect_ws(ws_url).await.expect("connect");
    let me = client.auth(token).await.expect("auth");
    assert_eq!((me.mid, me.room_id.as_str()), (123, "live://1000"));

    // curl -d 'mids=123&msg=hello' http://127.0.0.1:3111/im/push/mids
    let response = reqwest::Client::new()
        .post(format!("{api_url}/im/push/mids"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("mids=123&msg=hello")
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["data"]["keys"], 1, "{answer}");

    let got = client.recv_push().await.expect("the push arrives");
    assert_eq!((got.op, &got.body[..]), (Op(1000), &b"hello"[..]));
    client
}

#[tokio::test]
async fn the_walk_in_process() {
    let shutdown = CancellationToken::new();
    let imcloud = Standalone::start(any_ports(), shutdown.clone())
        .await
        .expect("start");
    let args = TokenArgs {
        mid: 123,
        room: Some("live://1000".to_owned()),
        accepts: vec![1000, 1001],
        key: None,
        platform: None,
        ttl: std::time::Duration::from_secs(60),
    };
    let token = imcloud::mint_token(None, &args).expect("token");
    let mut client = walk(&imcloud.ws_url, &imcloud.api_url, token).await;
    shutdown.cancel();
    let body = client.closed().await.expect("op 6");
    assert_eq!(body.close_reason(), Some(CloseReason::Draining));
    imcloud.wait().await.expect("stops cleanly");
}

/// The real binary in standalone mode on ports the OS picks, with `args`;
/// its config file, WebSocket URL and API URL. Its logs are drained in the
/// background so it never blocks on a full pipe.
fn spawn_standalone(name: &str, args: &[&str]) -> (Child, PathBuf, String, String) {
    let dir = std::env::temp_dir().join(format!("imcloud-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = dir.join("standalone.toml");
    let ports = "[cloud_listen]\ntcp = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\n\
                 grpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\
                 [logic_listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n";
    std::fs::write(&config, ports).expect("config");

    let mut child = Command::new(env!("CARGO_BIN_EXE_imcloud"))
        .args(["standalone", "--log-format", "json", "--config"])
        .arg(&config)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imcloud");
    let mut logs = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let ready = logs
        .by_ref()
        .map(|line| line.expect("log line"))
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .find(|line| line["fields"]["message"] == "imcloud standalone ready")
        .expect("a ready line");
    let ws_url = ready["fields"]["ws"].as_str().expect("ws").to_owned();
    let api_url = ready["fields"]["api"].as_str().expect("api").to_owned();
    std::thread::spawn(move || logs.for_each(drop));
    (child, config, ws_url, api_url)
}

/// `--server-id` and `--api-key` reach both nodes of a standalone imcloud
/// (they were once accepted and ignored).
#[tokio::test]
async fn standalone_takes_the_server_id_and_api_key_flags() {
    let (mut child, _, _, api_url) =
        spawn_standalone("flags", &["--server-id", "pod-7", "--api-key", "k3y"]);
    let web = reqwest::Client::new();
    let push = || {
        web.post(format!("{api_url}/im/push/mids"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("mids=1&msg=hi")
    };
    assert_eq!(push().send().await.expect("push").status(), 401);
    let keyed = push().bearer_auth("k3y").send().await.expect("push");
    assert_eq!(keyed.status(), 200, "the key opens logic's API");
    let nodes: Value = web
        .get(format!("{api_url}/im/nodes"))
        .send()
        .await
        .expect("nodes")
        .json()
        .await
        .expect("json");
    assert_eq!(nodes["data"]["nodes"][0]["id"], "pod-7", "{nodes}");
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[tokio::test]
async fn the_walk_with_the_binary_and_a_sigterm() {
    let (mut child, config, ws_url, api_url) = spawn_standalone("walk", &[]);

    // imcloud token --mid 123 --room live://1000 --accepts 1000, with the same config.
    let minted = Command::new(env!("CARGO_BIN_EXE_imcloud"))
        .args([
            "token",
            "--mid",
            "123",
            "--room",
            "live://1000",
            "--accepts",
            "1000",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("imcloud token");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let mut client = walk(&ws_url, &api_url, token).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let body = client.closed().await.expect("op 6 on SIGTERM");
    assert_eq!(body.close_reason(), Some(CloseReason::Draining));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "exit status {exit}");
}

/// The README's ingest walk: standalone consuming from NATS JetStream, and
/// `imcloud publish` sending a command that arrives; a bad command is
/// refused by `imcloud publish` itself, with the reason, and not sent.
#[tokio::test]
async fn the_ingest_walk_with_imcloud_publish() {
    let nats = imcloud_testkit::NatsServer::start();
    let shutdown = CancellationToken::new();
    let mut file = any_ports();
    file.logic.ingest.nats_url = nats.url.clone();
    let imcloud = Standalone::start(file, shutdown.clone())
        .await
        .expect("start");
    let mut client = Client::connect_ws(&imcloud.ws_url).await.expect("connect");
    let token = imcloud::mint_token(
        None,
        &TokenArgs {
            mid: 123,
            room: None,
            accepts: vec![],
            key: None,
            platform: None,
            ttl: std::time::Duration::from_secs(60),
        },
    )
    .expect("token");
    client.auth(token).await.expect("auth");
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.expect("nats"));
    imcloud_testkit::eventually("the stream made by the logic node", async || {
        js.get_stream("IMCLOUD_PUSH").await.is_ok()
    })
    .await;

    let publish = |command: &str| {
        Command::new(env!("CARGO_BIN_EXE_imcloud"))
            .args(["publish", "--nats", &nats.url, command])
            .output()
            .expect("imcloud publish")
    };
    let sent = publish(r#"{"type":"mids","mids":[123],"msg":"from nats"}"#);
    assert!(sent.status.success(), "{sent:?}");
    assert_eq!(String::from_utf8_lossy(&sent.stdout), "IMCLOUD_PUSH 1\n");
    let got = client.recv_push().await.expect("the command arrives");
    assert_eq!((got.seq, &got.body[..]), (1, &b"from nats"[..]));

    let refused = publish(r#"{"type":"mids","mids":[123]}"#);
    assert!(!refused.status.success());
    let says = String::from_utf8_lossy(&refused.stderr);
    assert!(says.contains("msg is required"), "{says}");
    let stream = js.get_stream("IMCLOUD_PUSH").await.expect("stream");
    assert_eq!(
        stream.cached_info().state.messages,
        1,
        "nothing more was sent"
    );
    shutdown.cancel();
    imcloud.wait().await.expect("stops cleanly");
}
