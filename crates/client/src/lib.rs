//! imcloud's Rust client SDK: connect over WebSocket or TCP, authenticate,
//! receive pushes (op-9 batches unpacked), and make protocol requests
//! ([`Client`]); or let a [`Device`] do it all and hand the app every
//! message to its user once, in order, across reconnects.
//! Used by the integration tests and by `imbench`.

mod device;
mod sequencer;

pub use device::{ACK_DELAY, Connector, DEFAULT_GAP_WAIT, Device};
pub use sequencer::{Event, Resumed, Sequencer};

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use imcloud_protocol::{BatchIter, CloseBody, Op, Packet, PacketCodec, ProtocolError};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::codec::Framed;

/// Largest packet the client accepts from a server.
const MAX_SERVER_BODY: usize = 16 * 1024 * 1024;

/// What can go wrong talking to imcloud.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server closed the connection with op 6.
    #[error("closed by server: {} ({})", .0.reason, .0.code)]
    Closed(CloseBody),
    /// The connection ended without op 6.
    #[error("connection ended")]
    Ended,
    /// The server sent something that is not a valid packet.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The WebSocket layer failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server's reply was not what the protocol says.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    /// The server refused to join (or leave) a room; the connection goes on.
    #[error("room {room}: {reason}")]
    Room {
        /// The room asked for.
        room: String,
        /// The server's reason (`max_rooms`, `allow_rooms`, the join webhook...).
        reason: String,
    },
}

/// The identity the server confirmed in op 8.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AuthReply {
    /// The user id.
    pub mid: i64,
    /// This connection's key.
    pub key: String,
    /// The first room joined at auth, empty for none (goim's field).
    pub room_id: String,
    /// Every room joined at auth.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Heartbeat interval, in seconds.
    pub heartbeat: u64,
}

enum Io {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Tcp(Framed<TcpStream, PacketCodec>),
}

/// One connection to a cloud node.
pub struct Client {
    io: Io,
    /// Packets received but not yet returned (the rest of a batch, or
    /// pushes that arrived while waiting for a reply).
    inbox: VecDeque<Packet>,
    next_seq: u32,
}

impl Client {
    /// Connects to a WebSocket URL such as `ws://127.0.0.1:3102/sub`.
    pub async fn connect_ws(url: &str) -> Result<Client, ClientError> {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
        Ok(Client::new(Io::Ws(Box::new(ws))))
    }

    /// Connects to a `ws://host:port/...` URL from the local address `from`
    /// (benchmarks spread thousands of clients over 127.0.0.x addresses).
    pub async fn connect_ws_from(url: &str, from: IpAddr) -> Result<Client, ClientError> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = url
            .parse()
            .map_err(|err| ClientError::Unexpected(format!("{url}: {err}")))?;
        let host = uri.host().unwrap_or("127.0.0.1");
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(ProtocolError::Io)?
            .next()
            .ok_or_else(|| ClientError::Unexpected(format!("{url}: no address")))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(ProtocolError::Io)?;
        socket
            .bind(SocketAddr::new(from, 0))
            .map_err(ProtocolError::Io)?;
        let stream = socket.connect(addr).await.map_err(ProtocolError::Io)?;
        stream.set_nodelay(true).map_err(ProtocolError::Io)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(ws_config()),
        )
        .await?;
        Ok(Client::new(Io::Ws(Box::new(ws))))
    }

    /// Connects to a TCP address.
    pub async fn connect_tcp(addr: SocketAddr) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(ProtocolError::Io)?;
        stream.set_nodelay(true).map_err(ProtocolError::Io)?;
        Ok(Client::new(Io::Tcp(Framed::new(
            stream,
            PacketCodec::new(MAX_SERVER_BODY),
        ))))
    }

    fn new(io: Io) -> Client {
        Client {
            io,
            inbox: VecDeque::new(),
            next_seq: 1,
        }
    }

    /// Sends one packet as is.
    pub async fn send(&mut self, packet: Packet) -> Result<(), ClientError> {
        match &mut self.io {
            Io::Ws(ws) => {
                let frame = packet.encode()?.into_bytes();
                ws.send(Message::Binary(frame)).await?;
            }
            Io::Tcp(framed) => framed.send(packet).await?,
        }
        Ok(())
    }

    /// The next packet from the server; op-9 batches come out one packet at
    /// a time. An op-6 packet is returned like any other.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.inbox.pop_front() {
                return Ok(packet);
            }
            let packet = match &mut self.io {
                Io::Ws(ws) => match ws.next().await.ok_or(ClientError::Ended)?? {
                    Message::Binary(frame) => Packet::from_frame(frame, MAX_SERVER_BODY)?,
                    Message::Close(_) => return Err(ClientError::Ended),
                    _ => continue,
                },
                Io::Tcp(framed) => framed.next().await.ok_or(ClientError::Ended)??,
            };
            if packet.op == Op::BATCH {
                for inner in BatchIter::new(packet.body, MAX_SERVER_BODY) {
                    self.inbox.push_back(inner?);
                }
            } else {
                return Ok(packet);
            }
        }
    }

    /// The next packet that is not a reply, turning op 6 into an error.
    pub async fn recv_push(&mut self) -> Result<Packet, ClientError> {
        let packet = self.recv().await?;
        if packet.op == Op::DISCONNECT {
            return Err(close_error(&packet));
        }
        Ok(packet)
    }

    /// Sends a request and waits for its reply (same seq, the request's
    /// reply op). Pushes that arrive meanwhile are kept for [`Client::recv`].
    pub async fn request(&mut self, op: Op, body: impl Into<Bytes>) -> Result<Packet, ClientError> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let reply_op = op
            .reply()
            .ok_or_else(|| ClientError::Unexpected(format!("{op} is not a client request")))?;
        self.send(Packet::new(op, seq, body)).await?;
        let mut held = VecDeque::new();
        let result = loop {
            let packet = match self.recv().await {
                Ok(packet) => packet,
                Err(err) => break Err(err),
            };
            if packet.op == reply_op && packet.seq == seq {
                break Ok(packet);
            }
            if packet.op == Op::DISCONNECT {
                break Err(close_error(&packet));
            }
            held.push_back(packet);
        };
        held.append(&mut self.inbox);
        self.inbox = held;
        result
    }

    /// Authenticates with `token` (op 7) and returns the identity (op 8).
    pub async fn auth(&mut self, token: impl Into<Bytes>) -> Result<AuthReply, ClientError> {
        let reply = self.request(Op::AUTH, token).await?;
        serde_json::from_slice(&reply.body)
            .map_err(|err| ClientError::Unexpected(format!("auth reply: {err}")))
    }

    /// Sends a heartbeat (op 2); returns the room's online count (op 3).
    pub async fn heartbeat(&mut self) -> Result<u32, ClientError> {
        let reply = self.request(Op::HEARTBEAT, Bytes::new()).await?;
        let count: [u8; 4] = reply.body[..].try_into().map_err(|_| {
            ClientError::Unexpected(format!("heartbeat reply of {} bytes", reply.body.len()))
        })?;
        Ok(u32::from_be_bytes(count))
    }

    /// Moves to `room` (`type://id`), or leaves the room when empty (op 12).
    pub async fn change_room(&mut self, room: &str) -> Result<(), ClientError> {
        self.request(Op::CHANGE_ROOM, room.to_owned())
            .await
            .map(drop)
    }

    /// Joins `room` (op 22) beside the rooms this connection is in; once
    /// this returns, pushes to the room reach it. A refusal is
    /// [`ClientError::Room`], with the server's reason.
    pub async fn join(&mut self, room: &str) -> Result<(), ClientError> {
        self.room_request(Op::JOIN_ROOM, room, false).await
    }

    /// As [`Client::join`], asking for the room's online count too: op 26
    /// packets (`{"room","online"}`) follow, now and as the count changes.
    pub async fn join_counting(&mut self, room: &str) -> Result<(), ClientError> {
        self.room_request(Op::JOIN_ROOM, room, true).await
    }

    /// Leaves `room` (op 24).
    pub async fn leave(&mut self, room: &str) -> Result<(), ClientError> {
        self.room_request(Op::LEAVE_ROOM, room, false).await
    }

    async fn room_request(&mut self, op: Op, room: &str, count: bool) -> Result<(), ClientError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            error: Option<String>,
        }
        let body = serde_json::json!({ "room": room, "count": count }).to_string();
        let reply = self.request(op, body).await?;
        let answer: Answer = serde_json::from_slice(&reply.body)
            .map_err(|err| ClientError::Unexpected(format!("{}: {err}", reply.op)))?;
        match answer.error {
            None => Ok(()),
            Some(reason) => Err(ClientError::Room {
                room: room.to_owned(),
                reason,
            }),
        }
    }

    /// Adds ops to this connection's accepts (op 14).
    pub async fn watch(&mut self, ops: &[u32]) -> Result<(), ClientError> {
        self.request(Op::WATCH, join(ops)).await.map(drop)
    }

    /// Removes ops from this connection's accepts (op 16).
    pub async fn unwatch(&mut self, ops: &[u32]) -> Result<(), ClientError> {
        self.request(Op::UNWATCH, join(ops)).await.map(drop)
    }

    /// Sends a message to the backend (op 4); returns the ack's body (op 5),
    /// empty when logic took the message.
    pub async fn send_msg(&mut self, body: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.request(Op::SEND_MSG, body).await.map(|ack| ack.body)
    }

    /// Asks for the user's messages after `since` (op 18); they come as
    /// pushes, then op 19 ([`Resumed`]).
    pub async fn resume(&mut self, since: u64) -> Result<(), ClientError> {
        let body = serde_json::json!({ "since": since }).to_string();
        self.send(Packet::new(Op::RESUME, 0, body)).await
    }

    /// Acknowledges every message of the user up to `ack` (op 20).
    pub async fn ack(&mut self, ack: u64) -> Result<(), ClientError> {
        let body = serde_json::json!({ "ack": ack }).to_string();
        self.send(Packet::new(Op::ACK, 0, body)).await
    }

    /// Waits for the server to close the connection and returns its op 6
    /// body, skipping anything else that arrives first.
    pub async fn closed(&mut self) -> Result<CloseBody, ClientError> {
        loop {
            let packet = self.recv().await?;
            if packet.op == Op::DISCONNECT {
                return CloseBody::parse(&packet.body)
                    .map_err(|err| ClientError::Unexpected(err.to_string()));
            }
        }
    }
}

/// Small buffers: a benchmark holds thousands of clients in one process
/// (tungstenite's default is 128 KiB of read buffer per connection).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

fn join(ops: &[u32]) -> String {
    ops.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn close_error(packet: &Packet) -> ClientError {
    match CloseBody::parse(&packet.body) {
        Ok(body) => ClientError::Closed(body),
        Err(err) => ClientError::Unexpected(format!("op 6 body: {err}")),
    }
}
