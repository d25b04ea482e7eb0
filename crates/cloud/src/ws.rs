//! WebSocket clients: the `/sub` upgrade and packets in binary frames.

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use imcloud_protocol::{CloseBody, HEADER_LEN, Packet};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{
    Error as WsError, HandshakeError, Message, WebSocket, accept_hdr_with_config,
};

use crate::config::CloudConfig;
use crate::outbox::Outbox;
use crate::transport::{Transport, TransportError};
use crate::wire::{self, Framing};

/// The only path clients may upgrade on.
pub(crate) const PATH: &str = "/sub";

/// A WebSocket client after the upgrade.
///
/// tungstenite's blocking-style `WebSocket` over the non-blocking socket,
/// not tokio-tungstenite's stream: a read that would block waits for the
/// socket here, so no waker proxies (two shared allocations per
/// connection) stand between the socket and the connection's task.
pub(crate) struct WsTransport {
    ws: WebSocket<WsSocket>,
    max_body: usize,
}

/// The byte stream under tungstenite: reads come from the socket; writes
/// (the upgrade response, then pongs and close frames) go to the socket
/// until the connection has an outbox, and through the outbox after.
/// Never blocks: an I/O that would, says so (`WouldBlock`) and notes which
/// way, for [`WsSocket::ready`].
pub(crate) struct WsSocket {
    socket: Arc<TcpStream>,
    outbox: Option<Arc<Outbox>>,
    /// The last `WouldBlock` came from a write.
    write_blocked: bool,
}

impl WsSocket {
    /// Waits until the I/O that last would have blocked can go on. Polls
    /// the socket's own readiness (one waker slot per direction) rather
    /// than holding a `ready()` future: that future would sit in every
    /// idle connection's state.
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        let write = std::mem::take(&mut self.write_blocked);
        let socket = &self.socket;
        poll_fn(move |cx| {
            if write {
                socket.poll_write_ready(cx)
            } else {
                socket.poll_read_ready(cx)
            }
        })
    }
}

impl Read for WsSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.try_read(buf)
    }
}

impl Write for WsSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(outbox) = &self.outbox {
            outbox.write_raw(buf);
            return Ok(buf.len());
        }
        let written = self.socket.try_write(buf);
        self.write_blocked =
            matches!(&written, Err(err) if err.kind() == io::ErrorKind::WouldBlock);
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether tungstenite stopped because the socket would block.
fn would_block(err: &WsError) -> bool {
    matches!(err, WsError::Io(err) if err.kind() == io::ErrorKind::WouldBlock)
}

/// How WebSocket connections are read and written (from the node's config).
#[derive(Clone, Debug)]
pub(crate) struct WsSettings {
    /// tungstenite's read buffer per connection.
    pub(crate) read_buffer: usize,
    /// Largest client packet body.
    pub(crate) max_body: usize,
}

impl From<&CloudConfig> for WsSettings {
    fn from(config: &CloudConfig) -> Self {
        WsSettings {
            read_buffer: config.ws_read_buffer,
            max_body: config.max_body,
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
        // Frames are written straight through: tungstenite writes only
        // control frames, and those take their turn in the outbox.
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
    let socket = WsSocket {
        socket: Arc::new(stream),
        outbox: None,
        write_blocked: false,
    };
    let mut handshake = accept_hdr_with_config(socket, callback, Some(ws_config));
    let ws = loop {
        match handshake {
            Ok(ws) => break ws,
            Err(HandshakeError::Interrupted(mut mid)) => {
                mid.get_mut().get_mut().ready().await?;
                handshake = mid.handshake();
            }
            Err(HandshakeError::Failure(err)) => return Err(err),
        }
    };
    Ok(Upgrade {
        transport: WsTransport {
            ws,
            max_body: settings.max_body,
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
    const FRAMING: Framing = Framing::Ws;

    fn socket(&self) -> Option<Arc<TcpStream>> {
        Some(self.ws.get_ref().socket.clone())
    }

    fn attach(&mut self, outbox: &Arc<Outbox>) {
        self.ws.get_mut().outbox = Some(outbox.clone());
    }

    async fn recv(&mut self) -> Option<Result<Packet, TransportError>> {
        loop {
            // The match ends before the wait below, so nothing it holds
            // sizes the idle connection's state.
            match self.ws.read() {
                Ok(Message::Binary(frame)) => {
                    return Some(
                        Packet::from_frame(frame, self.max_body).map_err(TransportError::from),
                    );
                }
                Ok(Message::Text(_)) => return Some(Err(TransportError::TextFrame)),
                Ok(Message::Close(_)) | Err(WsError::ConnectionClosed) => return None,
                // tungstenite answers pings itself; nothing to hand up.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Err(err) if would_block(&err) => {}
                Err(err) => return Some(Err(map_ws_error(err))),
            }
            // Cancel-safe: tungstenite keeps a partly read frame.
            if let Err(err) = self.ws.get_mut().ready().await {
                return Some(Err(TransportError::Io(err)));
            }
        }
    }

    async fn send(&mut self, chunks: &[Bytes], written: &mut usize) -> Result<(), TransportError> {
        wire::write_all(&self.ws.get_ref().socket, chunks, written)
            .await
            .map_err(TransportError::Io)
    }

    async fn shutdown(&mut self, close: Option<&CloseBody>) {
        let socket = self.ws.get_mut();
        if let Some(outbox) = socket.outbox.take() {
            // Control frames tungstenite queued behind our last packets
            // (the answer to a client's Close, say) go first; from here on
            // the connection's task is the only writer, so tungstenite
            // writes to the socket itself.
            let mut rest = Vec::new();
            let mut written = outbox.drain(&mut rest).written;
            let _ = wire::write_all(&socket.socket, &rest, &mut written).await;
        }
        let mut sent = match close {
            Some(body) => self.ws.close(Some(CloseFrame {
                code: CloseCode::from(body.code),
                reason: control_frame_text(&body.reason).into(),
            })),
            // The answer to a client's Close, queued by tungstenite when it
            // read it (RFC 6455 5.5.1).
            None => self.ws.flush(),
        };
        // Refused (`ConnectionClosed`) when the client closed first and was
        // answered already: nothing more is owed.
        while let Err(err) = &sent
            && would_block(err)
        {
            if self.ws.get_mut().ready().await.is_err() {
                return;
            }
            sent = self.ws.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use imcloud_protocol::{EncodedPacket, Op};
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
    async fn pongs_take_their_turn_behind_pushes_written_from_the_outbox() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/sub", listener.local_addr().expect("addr"));
        let (pushed_tx, pushed_rx) = tokio::sync::oneshot::channel::<()>();
        let client = tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let _ = pushed_rx.await;
            ws.send(Message::Ping(Bytes::from_static(b"hi")))
                .await
                .expect("ping");
            let hello = Packet::new(Op::HEARTBEAT, 1, Vec::new())
                .encode()
                .expect("encode");
            ws.send(Message::Binary(hello.into_bytes()))
                .await
                .expect("packet");
            let mut got = Vec::new();
            while got.len() < 2 {
                match ws.next().await {
                    Some(Ok(message @ (Message::Binary(_) | Message::Pong(_)))) => {
                        got.push(message)
                    }
                    Some(Ok(_)) => {}
                    other => panic!("connection ended early: {other:?}"),
                }
            }
            got
        });
        let (stream, _) = listener.accept().await.expect("accept");
        let mut upgrade = accept(stream, &WsSettings::from(&CloudConfig::default()))
            .await
            .expect("upgrade");
        let transport = &mut upgrade.transport;
        let outbox = Arc::new(Outbox::new(
            8,
            Framing::Ws,
            transport.socket(),
            crate::silence::Silence::new(std::time::Duration::MAX),
        ));
        transport.attach(&outbox);
        let push = Packet::new(Op(1000), 0, b"news".to_vec())
            .encode()
            .expect("encode");
        assert_eq!(outbox.push(&push), Ok(true), "written straight away");
        let _ = pushed_tx.send(());
        let heartbeat = transport.recv().await.expect("packet").expect("valid");
        assert_eq!(heartbeat.op, Op::HEARTBEAT);

        let got = client.await.expect("client");
        assert_eq!(got[0], Message::Binary(push.into_bytes()));
        assert_eq!(got[1], Message::Pong(Bytes::from_static(b"hi")));
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
                .send(&[Framing::Ws.frame(packet)], &mut 0)
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
