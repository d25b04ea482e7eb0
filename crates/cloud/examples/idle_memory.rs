//! Measures a cloud node's memory per idle, authenticated WebSocket
//! connection: the node runs in a child process (with a test logic server),
//! this process opens the clients, and the child's RSS is read before and
//! after. Prints one JSON line.
//!
//! `cargo run --release -p imcloud-cloud --example idle_memory -- 5000`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use imcloud_client::Client;
use imcloud_testkit::fake_logic::{CloudNode, LogicNode, test_config, token};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        let mut logic = LogicNode::start().await;
        let mut config = test_config(logic.addr);
        // The test logic records every call; drop the records so they are
        // not counted as the cloud node's memory.
        tokio::spawn(async move { while logic.events.recv().await.is_some() {} });
        config.handshake_timeout = std::time::Duration::from_secs(30);
        let node = CloudNode::start(config).await;
        println!("{}", node.ws_url);
        // Serve until the parent closes our stdin.
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
        return;
    }
    let n: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(5000);
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let mut url = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut url)
        .expect("node url");
    let url = url.trim().to_owned();
    let pid = child.id();

    // One client first, so lazily-initialised state is not counted per connection.
    let mut warm = Client::connect_ws(&url).await.expect("connect");
    warm.auth(token(0, "warm", "live://1", &[1000]))
        .await
        .expect("auth");
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = Client::connect_ws(&url).await.expect("connect");
        client
            .auth(token(i as i64 + 1, &format!("k{i}"), "live://1", &[1000]))
            .await
            .expect("auth");
        clients.push(client);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let after = rss_kib(pid);
    println!(
        "{{\"connections\":{n},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_connection\":{:.2},\"connect_secs\":{connect_secs:.2}}}",
        (after - before) as f64 / n as f64
    );
    drop(clients);
    drop(child.stdin.take());
    let _ = child.wait();
}
