//! WebSocket clients: the `/sub` upgrade and packets in binary frames.

use futures_util::{SinkExt, StreamExt};
use std::io::IoSlice;

use imcloud_protocol::{EncodedPacket, HEADER_LEN, Packet, batch_header, batch_runs};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::CloudConfig;
use crate::transport::{Transport, TransportError, write_all_vectored};

/// The only path clients may upgrade on.
pub(crate) const PATH: &str = "/sub";

/// A WebSocket client after the upgrade.
pub(crate) struct WsTransport {
    ws: WebSocketStream<TcpStream>,
    max_body: usize,
    max_batch: usize,
}

/// The bytes before a frame's packets: the WebSocket header of a final,
/// unmasked binary frame (server to client), then, for a run of several
/// packets, the op-9 header that makes them one batch.
struct FrameHead {
    bytes: [u8; 10 + HEADER_LEN],
    len: usize,
}

impl FrameHead {
    fn new(run: &[EncodedPacket]) -> FrameHead {
        let inner: usize = run.iter().map(EncodedPacket::len).sum();
        let payload = if run.len() > 1 {
            HEADER_LEN + inner
        } else {
            inner
        };
        let mut head = FrameHead {
            bytes: [0; 10 + HEADER_LEN],
            len: 0,
        };
        head.put(&[0x82]); // FIN, binary
        match payload {
            0..=125 => head.put(&[payload as u8]),
            126..=0xffff => {
                head.put(&[126]);
                head.put(&(payload as u16).to_be_bytes());
            }
            _ => {
                head.put(&[127]);
                head.put(&(payload as u64).to_be_bytes());
            }
        }
        if run.len() > 1 {
            head.put(&batch_header(inner));
        }
        head
    }

    fn put(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
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
        if packets.is_empty() {
            return Ok(());
        }
        // Whatever tungstenite owes the client (a pong) leaves first; after
        // that the frames are written here, header then the shared packet
        // buffers, in one vectored write: tungstenite would copy every frame
        // into an output buffer that it then keeps, sized to the largest
        // burst, for the rest of the connection.
        self.ws.flush().await.map_err(map_ws_error)?;
        let frames: Vec<(FrameHead, &[EncodedPacket])> = batch_runs(packets, self.max_batch)
            .map(|run| (FrameHead::new(run), run))
            .collect();
        let mut slices = Vec::with_capacity(frames.len() + packets.len());
        for (head, run) in &frames {
            slices.push(IoSlice::new(head.as_bytes()));
            slices.extend(run.iter().map(|packet| IoSlice::new(packet.as_bytes())));
        }
        write_all_vectored(self.ws.get_mut(), &mut slices)
            .await
            .map_err(TransportError::Io)
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
    use tokio::task::JoinHandle;

    /// A server-side upgraded connection, and its client collecting every
    /// binary frame until the connection closes.
    async fn upgraded(config: &CloudConfig) -> (Upgrade, JoinHandle<Vec<bytes::Bytes>>) {
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
        let upgrade = accept(stream, config).await.expect("upgrade");
        (upgrade, client)
    }

    #[tokio::test]
    async fn queued_packets_leave_as_one_batch_frame() {
        let config = CloudConfig {
            max_batch_bytes: 100,
            ..CloudConfig::default()
        };
        let (mut upgrade, client) = upgraded(&config).await;
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
        let outer = Packet::from_frame(frames[1].clone(), 1 << 20).expect("frame");
        assert_eq!(outer.op, Op::BATCH);
        let seqs: Vec<u32> = BatchIter::new(outer.body, 1 << 20)
            .map(|inner| inner.expect("inner").seq)
            .collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(
            &frames[2][..],
            &packets[3].as_bytes()[..],
            "a run of one goes unbatched"
        );
    }

    /// Frames of every WebSocket length encoding (7-bit, 16-bit, 64-bit),
    /// written by hand, read back by tungstenite.
    #[tokio::test]
    async fn hand_written_frames_of_every_length_encoding_parse() {
        let (mut upgrade, client) = upgraded(&CloudConfig::default()).await;
        let sizes = [0, 109, 110, 65_519, 65_520, 200_000];
        let packets: Vec<EncodedPacket> = sizes
            .iter()
            .map(|size| {
                Packet::new(Op(1000), 0, vec![7u8; *size])
                    .encode()
                    .expect("encode")
            })
            .collect();
        for packet in &packets {
            upgrade
                .transport
                .send(std::slice::from_ref(packet))
                .await
                .expect("send");
        }
        upgrade.transport.shutdown().await;
        let frames = client.await.expect("client");
        let expected: Vec<&[u8]> = packets.iter().map(|p| &p.as_bytes()[..]).collect();
        let got: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(got, expected);
    }
}
