//! imcloud's client wire protocol (DESIGN.md section 2, goim v1 compatible),
//! with no sockets: packets, ops, the TCP stream codec, WebSocket frames, op-9
//! batches and op-6 close reasons. Everything here is tested from bytes.
//!
//! Every packet is a 16-byte big-endian header followed by the body:
//!
//! ```text
//! packet_len u32 | header_len u16 (=16) | ver u16 | op u32 | seq u32 | body
//! ```
//!
//! A packet meant for many receivers is encoded once into an
//! [`EncodedPacket`], whose clones share the same bytes.

mod batch;
mod close;
mod codec;
mod error;
mod op;
mod packet;
pub mod room;

pub use batch::{BatchBuilder, BatchIter, BatchRuns, batch_header, batch_runs};
pub use close::{CloseBody, CloseReason};
pub use codec::PacketCodec;
pub use error::ProtocolError;
pub use op::Op;
pub use packet::{DEFAULT_MAX_BODY, EncodedPacket, HEADER_LEN, MAX_PACKET_LEN, Packet, VERSION};
pub use room::{BadRoomId, BadRoomPattern, MAX_ROOM_LEN, RoomId, RoomPattern};
