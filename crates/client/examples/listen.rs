//! Listens as one device of a user: prints every push, user messages once
//! and in order with their sequence numbers, across reconnects (it resumes
//! from the last one printed, and acknowledges what it printed).
//!
//! `cargo run -p imcloud-client --example listen -- ws://127.0.0.1:3102/sub '{"mid":123}'`
//! (a `host:port` address instead of a `ws://` URL connects over TCP).

use imcloud_client::{Client, ClientError, Device, Event};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:3102/sub".to_owned());
    let token = args
        .next()
        .unwrap_or_else(|| r#"{"mid":123,"room_id":"live://1000","accepts":[1000]}"#.to_owned());
    let connect = move || {
        let target = target.clone();
        async move {
            if target.starts_with("ws") {
                Client::connect_ws(&target).await
            } else {
                let addr = target
                    .parse()
                    .map_err(|err| ClientError::Unexpected(format!("{target}: {err}")))?;
                Client::connect_tcp(addr).await
            }
        }
    };
    let mut device = Device::new(connect, token, 0);
    device.online().await?;
    println!("online");
    loop {
        match device.next().await? {
            Event::Message(push) if push.seq > 0 => println!(
                "#{} op {}: {}",
                push.seq,
                push.op.0,
                String::from_utf8_lossy(&push.body)
            ),
            Event::Message(push) => {
                println!("op {}: {}", push.op.0, String::from_utf8_lossy(&push.body))
            }
            Event::Reset { oldest } => println!("(messages before #{oldest} are no longer kept)"),
        }
    }
}
