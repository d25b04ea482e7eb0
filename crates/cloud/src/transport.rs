//! What a connection reads packets from and writes packets to: TCP and
//! WebSocket behind one trait, so the connection's life is written once.

use std::future::{Future, poll_fn};
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use imcloud_protocol::{CloseBody, Packet, PacketCodec, ProtocolError};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::outbox::Outbox;
use crate::wire::{self, Framing};

/// Why reading or writing a client failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// The client sent bytes that are not a valid packet.
    #[error(transparent)]
    Packet(ProtocolError),
    /// A WebSocket client sent a text frame; packets travel in binary frames.
    #[error("text frames are not accepted: send packets in binary frames")]
    TextFrame,
    /// A WebSocket frame over the size limit (`max_body` + header).
    #[error("websocket frame too large: {0}")]
    FrameTooLarge(String),
    /// A WebSocket client broke RFC 6455.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The socket failed or the peer went away.
    #[error("connection lost: {0}")]
    Io(std::io::Error),
}

impl TransportError {
    /// Whether the client broke the protocol (and should be told so with op
    /// 6), as opposed to the connection simply failing.
    pub(crate) fn is_violation(&self) -> bool {
        !matches!(self, TransportError::Io(_))
    }

    /// Whether the client hit the `max_body` limit.
    pub(crate) fn is_too_large(&self) -> bool {
        matches!(
            self,
            TransportError::FrameTooLarge(_)
                | TransportError::Packet(ProtocolError::BodyTooLarge { .. })
        )
    }
}

impl From<ProtocolError> for TransportError {
    fn from(err: ProtocolError) -> Self {
        match err {
            ProtocolError::Io(err) => TransportError::Io(err),
            other => TransportError::Packet(other),
        }
    }
}

/// A client connection's packet I/O. Both futures are cancel-safe: the
/// connection's loop drops `recv` whenever something else is ready first.
pub(crate) trait Transport: Send + 'static {
    /// `"tcp"` or `"ws"`, for logs and metrics.
    const NAME: &'static str;
    /// How packets are framed on this transport's wire.
    const FRAMING: Framing;

    /// The socket, for writes made straight from a bucket (see
    /// [`Outbox`]); `None`: every write goes through [`Transport::send`].
    fn socket(&self) -> Option<Arc<TcpStream>>;

    /// From now on, whatever the transport writes by itself (WebSocket
    /// pongs and close replies) goes through `outbox`, in turn with the
    /// packets, so it never cuts into a frame a bucket is writing.
    fn attach(&mut self, _outbox: &Arc<Outbox>) {}

    /// The next packet; `None` when the client closed cleanly.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Packet, TransportError>>> + Send;

    /// Writes `chunks` (bytes framed for [`Transport::FRAMING`]) in order,
    /// skipping the first `written` bytes and counting up `written` as
    /// bytes leave. Cancel-safe in that sense: a write abandoned midway is
    /// finished by calling again with the same chunks.
    fn send(
        &mut self,
        chunks: &[Bytes],
        written: &mut usize,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Closes the connection politely: a TCP FIN; on WebSocket a Close
    /// frame carrying `close`'s code and reason, or the answer to the
    /// client's own Close.
    fn shutdown(&mut self, close: Option<&CloseBody>) -> impl Future<Output = ()> + Send;
}

/// Bytes read at a time. Client traffic is heartbeats and small messages, so
/// a small buffer keeps idle connections cheap; the codec grows it for one
/// large packet and it is given back once that packet is decoded.
const TCP_READ_CHUNK: usize = 256;

/// Packets back to back on a TCP stream.
pub(crate) struct TcpTransport {
    socket: Arc<TcpStream>,
    codec: PacketCodec,
    read_buf: BytesMut,
}

impl TcpTransport {
    pub(crate) fn new(socket: TcpStream, max_body: usize) -> Self {
        TcpTransport {
            socket: Arc::new(socket),
            codec: PacketCodec::new(max_body),
            read_buf: BytesMut::new(),
        }
    }
}

impl Transport for TcpTransport {
    const NAME: &'static str = "tcp";
    const FRAMING: Framing = Framing::Tcp;

    fn socket(&self) -> Option<Arc<TcpStream>> {
        Some(self.socket.clone())
    }

    async fn recv(&mut self) -> Option<Result<Packet, TransportError>> {
        loop {
            match self.codec.decode(&mut self.read_buf) {
                Ok(Some(packet)) => return Some(Ok(packet)),
                Ok(None) => {}
                Err(err) => return Some(Err(err.into())),
            }
            if self.read_buf.is_empty() && self.read_buf.capacity() > 4 * TCP_READ_CHUNK {
                // One big packet grew the buffer: don't keep it while idle.
                self.read_buf = BytesMut::new();
            }
            self.read_buf.reserve(TCP_READ_CHUNK);
            // The socket's own reader waker, not a `readable()` future:
            // that future would sit in every idle connection's state.
            if let Err(err) = poll_fn(|cx| self.socket.poll_read_ready(cx)).await {
                return Some(Err(TransportError::Io(err)));
            }
            match self.socket.try_read_buf(&mut self.read_buf) {
                Ok(0) => {
                    return match self.codec.decode_eof(&mut self.read_buf) {
                        Ok(None) => None,
                        Ok(Some(packet)) => Some(Ok(packet)),
                        Err(err) => Some(Err(err.into())),
                    };
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Some(Err(TransportError::Io(err))),
            }
        }
    }

    async fn send(&mut self, chunks: &[Bytes], written: &mut usize) -> Result<(), TransportError> {
        wire::write_all(&self.socket, chunks, written)
            .await
            .map_err(TransportError::Io)
    }

    async fn shutdown(&mut self, _: Option<&CloseBody>) {
        shutdown_write(&self.socket);
    }
}

/// Sends our FIN: the client reads everything written, then the end.
fn shutdown_write(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
}

/// An in-memory transport for unit tests: packets in through a channel,
/// written packets out through another.
#[cfg(test)]
pub(crate) mod memory {
    use super::*;
    use tokio::sync::mpsc;

    /// What the session wrote, as the test sees it.
    #[derive(Debug)]
    pub(crate) enum Out {
        Packet(Packet),
        Shutdown(Option<CloseBody>),
    }

    pub(crate) struct MemoryTransport {
        pub(crate) inbound: mpsc::UnboundedReceiver<Packet>,
        pub(crate) outbound: mpsc::UnboundedSender<Out>,
    }

    impl Transport for MemoryTransport {
        const NAME: &'static str = "tcp";
        const FRAMING: Framing = Framing::Tcp;

        fn socket(&self) -> Option<Arc<TcpStream>> {
            None
        }

        async fn recv(&mut self) -> Option<Result<Packet, TransportError>> {
            self.inbound.recv().await.map(Ok)
        }

        async fn send(
            &mut self,
            chunks: &[Bytes],
            written: &mut usize,
        ) -> Result<(), TransportError> {
            // Each chunk is one whole packet: the outbox never splits one
            // without a socket to write part of it to.
            for chunk in chunks {
                let decoded =
                    Packet::from_frame(chunk.clone(), usize::MAX).map_err(TransportError::from)?;
                let _ = self.outbound.send(Out::Packet(decoded));
                *written += chunk.len();
            }
            Ok(())
        }

        async fn shutdown(&mut self, close: Option<&CloseBody>) {
            let _ = self.outbound.send(Out::Shutdown(close.cloned()));
        }
    }
}
