//! Why bytes from a client are not a valid packet.

use crate::packet::HEADER_LEN;

/// A protocol violation in bytes received from a peer. Each one is fatal for
/// the connection: the server answers op 6 with the error's text and closes.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The header's `header_len` field is not 16.
    #[error("header_len is {0}, expected {HEADER_LEN}")]
    BadHeaderLen(u16),
    /// `packet_len` is smaller than the header itself.
    #[error("packet_len {0} is shorter than the {HEADER_LEN}-byte header")]
    PacketTooShort(u32),
    /// The body is larger than the configured `max_body`.
    #[error("body of {len} bytes exceeds max_body {max}")]
    BodyTooLarge {
        /// The body length the header announced.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The input ended inside a packet.
    #[error("truncated packet: got {have} of {need} bytes")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the header announced (or the header length, if even it is cut).
        need: usize,
    },
    /// A WebSocket frame held bytes after its one packet.
    #[error("{extra} unexpected bytes after the packet in one frame")]
    TrailingBytes {
        /// How many bytes followed the packet.
        extra: usize,
    },
    /// The underlying stream failed (only from the stream codec).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
