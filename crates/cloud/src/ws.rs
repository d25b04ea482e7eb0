//! WebSocket clients: the `/sub` upgrade and packets in binary frames.

use futures_util::{SinkExt, StreamExt};
use std::io::{IoSlice, Write};

use imcloud_protocol::{CloseBody, EncodedPacket, HEADER_LEN, Packet, batch_header, batch_runs};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, FrameHeader};
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
/// unmasked binary frame (server to client, formatted by tungstenite), then,
/// for a run of several packets, the op-9 header that makes them one batch.
struct FrameHead {
    bytes: [u8; 10 + HEADER_LEN],
    len: usize,
}

impl FrameHead {
    fn new(run: &[EncodedPacket]) -> FrameHead {
        let inner: usize = run.iter().map(EncodedPacket::len).sum();
        let batched = run.len() > 1;
        let payload = if batched { HEADER_LEN + inner } else { inner };
        let mut bytes = [0; 10 + HEADER_LEN];
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Binary),
            ..FrameHeader::default()
        };
        let mut out = &mut bytes[..];
        // The buffer holds the longest header (10 bytes) and an op-9 header.
        let _ = header.format(payload as u64, &mut out);
        if batched {
            let _ = out.write_all(&batch_header(inner));
        }
        let len = 10 + HEADER_LEN - out.len();
        FrameHead { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The socket under a WebSocket, to write frames to by hand. Only made by
/// [`RawFrames::after_flush`], so nothing can be written before the bytes
/// tungstenite owes the client (a pong, a close answer): frames never
/// interleave.
struct RawFrames<'a> {
    socket: &'a mut TcpStream,
}

impl<'a> RawFrames<'a> {
    /// Flushes what tungstenite owes, then hands out the socket. With
    /// `mid_write` (a write already started), nothing is flushed: it would
    /// land inside the frame being written.
    async fn after_flush(
        ws: &'a mut WebSocketStream<TcpStream>,
        mid_write: bool,
    ) -> Result<RawFrames<'a>, TransportError> {
        if !mid_write {
            ws.flush().await.map_err(map_ws_error)?;
        }
        Ok(RawFrames {
            socket: ws.get_mut(),
        })
    }

    /// Writes `packets` as frames (runs of up to `max_batch` bytes become
    /// op-9 batches) in one vectored write, header then the shared packet
    /// buffers: tungstenite would copy every frame into an output buffer
    /// that it then keeps, sized to the largest burst, for the rest of the
    /// connection.
    async fn write(
        self,
        packets: &[EncodedPacket],
        max_batch: usize,
        written: &mut usize,
    ) -> Result<(), TransportError> {
        let frames: Vec<(FrameHead, &[EncodedPacket])> = batch_runs(packets, max_batch)
            .map(|run| (FrameHead::new(run), run))
            .collect();
        let mut slices = Vec::with_capacity(frames.len() + packets.len());
        for (head, run) in &frames {
            slices.push(IoSlice::new(head.as_bytes()));
            slices.extend(run.iter().map(|packet| IoSlice::new(packet.as_bytes())));
        }
        write_all_vectored(self.socket, &mut slices, written)
            .await
            .map_err(TransportError::Io)
    }
}

/// How WebSocket connections are read and written (from the node's config).
#[derive(Clone, Debug)]
pub(crate) struct WsSettings {
    /// tungstenite's read buffer per connection.
    pub(crate) read_buffer: usize,
    /// Largest client packet body.
    pub(crate) max_body: usize,
    /// Largest op-9 batch frame written.
    pub(crate) max_batch: usize,
}

impl From<&CloudConfig> for WsSettings {
    fn from(config: &CloudConfig) -> Self {
        WsSettings {
            read_buffer: config.ws_read_buffer,
            max_body: config.max_body,
            max_batch: config.max_batch_bytes,
        }
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
pub(crate) async fn accept(stream: TcpStream, settings: &WsSettings) -> Result<Upgrade, WsError> {
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(settings.read_buffer)
        // Frames are written straight through: the writer already gathers
        // queued packets into one op-9 frame.
        .write_buffer_size(0)
        .max_message_size(Some(settings.max_body + HEADER_LEN))
        .max_frame_size(Some(settings.max_body + HEADER_LEN));
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
            max_body: settings.max_body,
            max_batch: settings.max_batch,
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

/// The longest prefix of `text`, on a character boundary, that fits a
/// Close frame's reason (125 bytes of control frame payload, 2 of them the code).
fn control_frame_text(text: &str) -> &str {
    const MAX: usize = 123;
    if text.len() <= MAX {
        return text;
    }
    let end = (0..=MAX)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..end]
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

    async fn send(
        &mut self,
        packets: &[EncodedPacket],
        written: &mut usize,
    ) -> Result<(), TransportError> {
        if packets.is_empty() {
            return Ok(());
        }
        RawFrames::after_flush(&mut self.ws, *written > 0)
            .await?
            .write(packets, self.max_batch, written)
            .await
    }

    async fn shutdown(&mut self, close: Option<&CloseBody>) {
        if let Some(body) = close {
            let frame = CloseFrame {
                code: CloseCode::from(body.code),
                reason: control_frame_text(&body.reason).into(),
            };
            // Refused when the client closed first: its answer is then
            // what tungstenite owes, and the flush below sends it.
            let _ = self.ws.close(Some(frame)).await;
        }
        // The answer to a client's Close, queued by tungstenite when it
        // read it (RFC 6455 5.5.1).
        let _ = self.ws.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imcloud_protocol::{BatchIter, Op};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// Ends the connection from the server's side.
    async fn close(mut upgrade: Upgrade) {
        let body = CloseBody::new(imcloud_protocol::CloseReason::Draining, None);
        upgrade.transport.shutdown(Some(&body)).await;
    }

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
        let upgrade = accept(stream, &WsSettings::from(config))
            .await
            .expect("upgrade");
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
        upgrade
            .transport
            .send(&packets[..1], &mut 0)
            .await
            .expect("one");
        // Three 36-byte packets: two fit a 100-byte batch, the third starts another.
        upgrade
            .transport
            .send(&packets[1..], &mut 0)
            .await
            .expect("three");
        close(upgrade).await;

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
                .send(std::slice::from_ref(packet), &mut 0)
                .await
                .expect("send");
        }
        close(upgrade).await;
        let frames = client.await.expect("client");
        let expected: Vec<&[u8]> = packets.iter().map(|p| &p.as_bytes()[..]).collect();
        let got: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(got, expected);
    }
}
