//! The reference: a minimal WebSocket writer. Each connection is one task
//! that writes every published frame, encoded once, as soon as it is
//! published. No buckets, no queues of our own, no logic: what is left is
//! the cost of the sockets themselves, the practical limit for imcloud.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use futures_util::{SinkExt, StreamExt};
use imcloud_protocol::{Op, Packet};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Serves WebSocket clients on `ws` (any path; the auth packet is answered
/// without checking it) and `POST /publish` on `http` (the body is the message).
pub async fn serve(ws: TcpListener, http: TcpListener) -> anyhow::Result<()> {
    let (tx, _) = broadcast::channel::<Bytes>(4096);
    let tx = Arc::new(tx);
    let app = Router::new()
        .route(
            "/publish",
            post(
                |State(tx): State<Arc<broadcast::Sender<Bytes>>>, body: Bytes| async move {
                    let frame = Packet::new(Op(1000), 0, body)
                        .encode()
                        .map(|p| p.into_bytes());
                    if let Ok(frame) = frame {
                        let _ = tx.send(frame);
                    }
                    "ok"
                },
            ),
        )
        .with_state(tx.clone());
    tokio::spawn(async move { axum::serve(http, app).await });
    loop {
        let stream = match ws.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, most likely: wait, don't die.
                eprintln!("raw: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(512)
                .write_buffer_size(0);
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            // Answer the auth packet like imcloud, so the same client works.
            let Some(Ok(Message::Binary(frame))) = ws.next().await else {
                return;
            };
            let Ok(auth) = Packet::from_frame(frame, 4096) else {
                return;
            };
            let reply = auth.reply(
                Op::AUTH_REPLY,
                r#"{"mid":0,"key":"raw","room_id":"","heartbeat":30}"#,
            );
            let Ok(reply) = reply.encode() else { return };
            if ws.send(Message::Binary(reply.into_bytes())).await.is_err() {
                return;
            }
            // Read too, or a client that left would hold its socket (and
            // file descriptor) until the next publish.
            loop {
                tokio::select! {
                    published = rx.recv() => {
                        let Ok(frame) = published else { return };
                        if ws.send(Message::Binary(frame)).await.is_err() {
                            return;
                        }
                    }
                    received = ws.next() => {
                        if !matches!(received, Some(Ok(_))) {
                            return;
                        }
                    }
                }
            }
        });
    }
}
