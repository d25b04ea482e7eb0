//! A real cloud node (and a real logic node, insecure-json tokens) on
//! loopback, fed arbitrary session input: the first byte picks TCP or
//! WebSocket; over TCP the rest is written raw, over WebSocket it is split
//! into binary frames at 0xff bytes. The node must never panic and must stay
//! able to serve.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use futures_util::SinkExt;
use imcloud_cloud::{Cloud, CloudConfig};
use imcloud_logic::{Logic, LogicConfig, VerifierKind};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Target {
    runtime: Runtime,
    tcp: std::net::SocketAddr,
    ws_url: String,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = Runtime::new().expect("runtime");
        let (tcp, ws_url) = runtime.block_on(async {
            let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
            let logic_listeners = imcloud_logic::Listeners { grpc: bind().await, http: bind().await };
            let logic_grpc = logic_listeners.grpc.local_addr().expect("addr");
            let config = LogicConfig { verifier: VerifierKind::InsecureJson, cloud_nodes: Vec::new(), ..LogicConfig::default() };
            std::mem::forget(Logic::start(logic_listeners, config, CancellationToken::new()).expect("logic"));
            let listeners = imcloud_cloud::Listeners { tcp: bind().await, ws: bind().await, grpc: bind().await, http: bind().await };
            let tcp = listeners.tcp.local_addr().expect("addr");
            let ws = listeners.ws.local_addr().expect("addr");
            let config = CloudConfig {
                logic_addrs: vec![logic_grpc.to_string()],
                handshake_timeout: Duration::from_millis(200),
                ..CloudConfig::default()
            };
            std::mem::forget(Cloud::start(listeners, config, CancellationToken::new()).expect("cloud"));
            (tcp, format!("ws://{ws}/sub"))
        });
        Target { runtime, tcp, ws_url }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let target = target();
    target.runtime.block_on(async {
        if mode % 2 == 0 {
            let mut socket = tokio::net::TcpStream::connect(target.tcp).await.expect("tcp");
            let _ = socket.write_all(input).await;
            let _ = socket.shutdown().await;
        } else {
            let (mut socket, _) = tokio_tungstenite::connect_async(target.ws_url.as_str()).await.expect("ws");
            for frame in input.split(|byte| *byte == 0xff) {
                if socket.send(Message::Binary(frame.to_vec().into())).await.is_err() {
                    break;
                }
            }
            let _ = socket.close(None).await;
        }
        // The node still accepts and answers.
        let socket = tokio::net::TcpStream::connect(target.tcp).await;
        assert!(socket.is_ok(), "the node stopped accepting");
    });
});
