//! Packets as they leave on a connection's socket.
//!
//! A push is framed once per wire format when it reaches the node (a TCP
//! packet is the packet itself; a WebSocket message is one binary frame
//! around it), so every member of a room is written the same shared bytes:
//! a write is a vectored `writev` of buffers nobody copies again.

use std::io::{self, IoSlice};
use std::time::Instant;

use bytes::Bytes;
use imcloud_protocol::EncodedPacket;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// How a connection's packets are framed on its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Packets back to back.
    Tcp,
    /// One unmasked binary frame per packet (RFC 6455, server to client).
    Ws,
}

impl Framing {
    /// `packet` as this wire carries it. WebSocket copies it once behind
    /// its frame header; a push does that once for all its connections.
    pub(crate) fn frame(self, packet: &EncodedPacket) -> Bytes {
        match self {
            Framing::Tcp => packet.as_bytes().clone(),
            Framing::Ws => ws_frame(packet.as_bytes()),
        }
    }
}

/// `payload` in one unfragmented, unmasked binary frame.
fn ws_frame(payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        ..FrameHeader::default()
    };
    let mut frame = Vec::with_capacity(10 + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut frame);
    frame.extend_from_slice(payload);
    frame.into()
}

/// A push on its way to connections: the packet, encoded once and framed
/// once per wire, and when it reached the API (for the push latency metric).
#[derive(Clone, Debug)]
pub(crate) struct Push {
    pub(crate) packet: EncodedPacket,
    ws: Bytes,
    pub(crate) at: Instant,
}

impl Push {
    pub(crate) fn new(packet: EncodedPacket, at: Instant) -> Push {
        let ws = Framing::Ws.frame(&packet);
        Push { packet, ws, at }
    }

    /// The push's bytes on a `framing` wire.
    pub(crate) fn wire(&self, framing: Framing) -> &Bytes {
        match framing {
            Framing::Tcp => self.packet.as_bytes(),
            Framing::Ws => &self.ws,
        }
    }

    /// The user push's sequence number; 0 for a push that has none.
    pub(crate) fn seq(&self) -> u32 {
        self.packet.seq()
    }
}

/// Slices handed to one `writev`: far below any system's `IOV_MAX` (1024 on
/// Linux), and more than a burst for one connection usually holds.
pub(crate) const MAX_SLICES: usize = 64;

/// One non-blocking vectored write of `chunks` (at most [`MAX_SLICES`] of
/// them), skipping the first `skip` bytes of the first. Returns the bytes
/// written: 0 when the socket's buffer is full or the socket failed (the
/// connection task meets the failure on its own next read or write).
pub(crate) fn try_write<'a>(
    socket: &TcpStream,
    chunks: impl Iterator<Item = &'a Bytes>,
    skip: usize,
) -> usize {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let mut count = 0;
    for (slot, chunk) in slices.iter_mut().zip(chunks) {
        let chunk = if count == 0 { &chunk[skip..] } else { chunk };
        *slot = IoSlice::new(chunk);
        count += 1;
    }
    if count == 0 {
        return 0;
    }
    socket.try_write_vectored(&slices[..count]).unwrap_or(0)
}

/// Writes every chunk but the first `written` bytes, waiting for the socket
/// as needed, adding what leaves to `written`. Cancel-safe in the sense of
/// [`crate::transport::Transport::send`].
pub(crate) async fn write_all(
    socket: &TcpStream,
    chunks: &[Bytes],
    written: &mut usize,
) -> io::Result<()> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    while *written < total {
        let (first, skip) = locate(chunks, *written);
        socket.writable().await?;
        match socket.try_write_vectored(&slices(&chunks[first..], skip)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The chunk holding byte `offset` of `chunks`, and the offset within it.
pub(crate) fn locate(chunks: &[Bytes], mut offset: usize) -> (usize, usize) {
    for (index, chunk) in chunks.iter().enumerate() {
        if offset < chunk.len() {
            return (index, offset);
        }
        offset -= chunk.len();
    }
    (chunks.len(), 0)
}

fn slices(chunks: &[Bytes], skip: usize) -> Vec<IoSlice<'_>> {
    chunks
        .iter()
        .take(MAX_SLICES)
        .enumerate()
        .map(|(i, chunk)| IoSlice::new(if i == 0 { &chunk[skip..] } else { chunk }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imcloud_protocol::{Op, Packet};

    #[test]
    fn a_websocket_push_is_one_binary_frame_around_the_packet() {
        let packet = Packet::new(Op(1000), 7, vec![b'x'; 200])
            .encode()
            .expect("encode");
        let push = Push::new(packet.clone(), Instant::now());
        assert_eq!(push.wire(Framing::Tcp), packet.as_bytes());
        let frame = push.wire(Framing::Ws);
        // FIN + binary, then the 16-bit length form (216 > 125), unmasked.
        assert_eq!(&frame[..4], &[0x82, 126, 0, 216]);
        assert_eq!(&frame[4..], &packet.as_bytes()[..]);
    }

    #[test]
    fn locate_finds_the_chunk_a_byte_is_in() {
        let chunks = [Bytes::from_static(b"abc"), Bytes::from_static(b"de")];
        assert_eq!(locate(&chunks, 0), (0, 0));
        assert_eq!(locate(&chunks, 3), (1, 0));
        assert_eq!(locate(&chunks, 4), (1, 1));
        assert_eq!(locate(&chunks, 5), (2, 0));
    }
}
