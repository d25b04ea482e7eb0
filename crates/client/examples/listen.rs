//! Connects to imcloud, authenticates, heartbeats, and prints every push.
//!
//! `cargo run -p imcloud-client --example listen -- ws://127.0.0.1:3102/sub '{"mid":123}'`
//! (a `host:port` address instead of a `ws://` URL connects over TCP).

use std::time::Duration;

use imcloud_client::{Client, ClientError};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:3102/sub".to_owned());
    let token = args
        .next()
        .unwrap_or_else(|| r#"{"mid":123,"room_id":"live://1000","accepts":[1000]}"#.to_owned());
    let mut client = if target.starts_with("ws") {
        Client::connect_ws(&target).await?
    } else {
        let addr = target
            .parse()
            .map_err(|err| ClientError::Unexpected(format!("{target}: {err}")))?;
        Client::connect_tcp(addr).await?
    };
    let me = client.auth(token).await?;
    println!(
        "authenticated: mid {} key {} room {:?}",
        me.mid, me.key, me.room_id
    );
    let mut heartbeat = tokio::time::interval(Duration::from_secs(me.heartbeat.max(1)));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let online = client.heartbeat().await?;
                println!("heartbeat: {online} online in my room");
            }
            push = client.recv_push() => {
                let push = push?;
                println!("op {}: {}", push.op.0, String::from_utf8_lossy(&push.body));
            }
        }
    }
}
