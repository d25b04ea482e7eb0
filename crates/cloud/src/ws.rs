//! WebSocket clients: the `/sub` upgrade and packets in binary frames.

use futures_util::{SinkExt, StreamExt};
use imcloud_protocol::{BatchBuilder, EncodedPacket, HEADER_LEN, Packet};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::CloudConfig;
use crate::transport::{Transport, TransportError};

/// The only path clients may upgrade on.
pub(crate) const PATH: &str = "/sub";

/// A WebSocket client after the upgrade.
pub(crate) struct WsTransport {
    ws: WebSocketStream<TcpStream>,
    max_body: usize,
    max_batch: usize,
}

/// What the upgrade request told us about the client.
pub(crate) struct Upgrade {
    pub(crate) transport: WsTransport,
    /// The request's `Cookie` header, passed to logic's `Connect`.
    pub(crate) cookie: String,
}

/// Runs the RFC 6455 handshake (tungstenite checks the method, version and
/// key). Any path but `/sub` gets a 404; a requested subprotocol is echoed.
pub(crate) async fn accept(stream: TcpStream, config: &CloudConfig) -> Result<Upgrade, WsError> {
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer)
        // Frames are written straight through: the writer already gathers
        // queued packets into one op-9 frame.
        .write_buffer_size(0)
        .max_message_size(Some(config.max_body + HEADER_LEN))
        .max_frame_size(Some(config.max_body + HEADER_LEN));
    let mut cookie = String::new();
    // tungstenite's callback type fixes the error type; it is built once per
    // refused upgrade.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != PATH {
            let mut refusal = ErrorResponse::new(Some(format!("not found: upgrade on {PATH}\n")));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        if let Some(value) = request.headers().get(header::COOKIE) {
            cookie = String::from_utf8_lossy(value.as_bytes()).into_owned();
        }
        if let Some(protocol) = first_subprotocol(request) {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        Ok(response)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config)).await?;
    Ok(Upgrade {
        transport: WsTransport {
            ws,
            max_body: config.max_body,
            max_batch: config.max_batch_bytes,
        },
        cookie,
    })
}

/// The first of the subprotocols the client offered, to echo back.
fn first_subprotocol(request: &Request) -> Option<HeaderValue> {
    let offered = request.headers().get(header::SEC_WEBSOCKET_PROTOCOL)?;
    let first = offered.to_str().ok()?.split(',').next()?.trim();
    HeaderValue::from_str(first)
        .ok()
        .filter(|_| !first.is_empty())
}

fn map_ws_error(err: WsError) -> TransportError {
    match err {
        WsError::Io(err) => TransportError::Io(err),
        // A peer that vanishes without a close frame lost its connection; it
        // did not break the protocol.
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            TransportError::Io(std::io::ErrorKind::ConnectionReset.into())
        }
        WsError::Capacity(err) => TransportError::FrameTooLarge(err.to_string()),
        other => TransportError::WebSocket(other.to_string()),
    }
}

impl Transport for WsTransport {
    const NAME: &'static str = "ws";

    async fn recv(&mut self) -> Option<Result<Packet, TransportError>> {
        loop {
            let message = match self.ws.next().await? {
                Ok(message) => message,
                Err(err) => return Some(Err(map_ws_error(err))),
            };
            return Some(match message {
                Message::Binary(frame) => {
                    Packet::from_frame(frame, self.max_body).map_err(TransportError::from)
                }
                Message::Text(_) => Err(TransportError::TextFrame),
                Message::Close(_) => return None,
                // tungstenite answers pings itself; nothing to hand up.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            });
        }
    }

    async fn send(&mut self, packets: &[EncodedPacket]) -> Result<(), TransportError> {
        match packets {
            [] => return Ok(()),
            [one] => {
                self.ws
                    .feed(Message::Binary(one.as_bytes().clone()))
                    .await
                    .map_err(map_ws_error)?;
            }
            many => {
                // Several queued packets leave as op-9 batch frames.
                let mut batch = BatchBuilder::new(self.max_batch);
                for packet in many {
                    if batch.push(packet) {
                        continue;
                    }
                    if !batch.is_empty() {
                        let full = std::mem::replace(&mut batch, BatchBuilder::new(self.max_batch));
                        self.ws
                            .feed(Message::Binary(full.finish().into_bytes()))
                            .await
                            .map_err(map_ws_error)?;
                    }
                    if !batch.push(packet) {
                        // Bigger than any batch: it goes alone.
                        self.ws
                            .feed(Message::Binary(packet.as_bytes().clone()))
                            .await
                            .map_err(map_ws_error)?;
                    }
                }
                if !batch.is_empty() {
                    self.ws
                        .feed(Message::Binary(batch.finish().into_bytes()))
                        .await
                        .map_err(map_ws_error)?;
                }
            }
        }
        self.ws.flush().await.map_err(map_ws_error)
    }

    async fn shutdown(&mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imcloud_protocol::{BatchIter, Op};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn queued_packets_leave_as_one_batch_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/sub", listener.local_addr().expect("addr"));
        let client = tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let mut frames = Vec::new();
            while let Some(Ok(Message::Binary(frame))) = ws.next().await {
                frames.push(frame);
            }
            frames
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let config = CloudConfig {
            max_batch_bytes: 100,
            ..CloudConfig::default()
        };
        let mut upgrade = accept(stream, &config).await.expect("upgrade");
        let packets: Vec<EncodedPacket> = (0..4)
            .map(|seq| {
                Packet::new(Op(1000), seq, vec![0u8; 20])
                    .encode()
                    .expect("encode")
            })
            .collect();
        upgrade.transport.send(&packets[..1]).await.expect("one");
        // Three 36-byte packets: two fit a 100-byte batch, the third starts another.
        upgrade.transport.send(&packets[1..]).await.expect("three");
        upgrade.transport.shutdown().await;

        let frames = client.await.expect("client");
        assert_eq!(frames.len(), 3);
        assert_eq!(
            &frames[0][..],
            &packets[0].as_bytes()[..],
            "one packet goes unbatched"
        );
        let mut seqs = Vec::new();
        for frame in &frames[1..] {
            let outer = Packet::from_frame(frame.clone(), 1 << 20).expect("frame");
            assert_eq!(outer.op, Op::BATCH);
            for inner in BatchIter::new(outer.body, 1 << 20) {
                seqs.push(inner.expect("inner").seq);
            }
        }
        assert_eq!(seqs, [1, 2, 3]);
    }
}
