//! The packet, its 16-byte header, and encoding a packet once for many receivers.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Op, ProtocolError};

/// Length of the fixed header, and the only valid `header_len`.
pub const HEADER_LEN: usize = 16;
/// The protocol version the server uses for its own pushes.
pub const VERSION: u16 = 1;
/// Default limit on a client packet's body (`max_body`).
pub const DEFAULT_MAX_BODY: usize = 4096;
/// The largest packet the 32-bit `packet_len` can describe.
pub const MAX_PACKET_LEN: usize = u32::MAX as usize;

/// One protocol packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Protocol version: 1 for server pushes; replies echo the client's.
    pub ver: u16,
    /// What the packet means.
    pub op: Op,
    /// Client-chosen sequence number; replies echo it.
    pub seq: u32,
    /// The payload.
    pub body: Bytes,
}

impl Packet {
    /// A packet with version [`VERSION`].
    pub fn new(op: Op, seq: u32, body: impl Into<Bytes>) -> Self {
        Packet {
            ver: VERSION,
            op,
            seq,
            body: body.into(),
        }
    }

    /// The server's answer to this packet: same `ver` and `seq`, the given op and body.
    pub fn reply(&self, op: Op, body: impl Into<Bytes>) -> Packet {
        Packet {
            ver: self.ver,
            op,
            seq: self.seq,
            body: body.into(),
        }
    }

    /// The packet's length on the wire, header included.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Encodes the packet once; the result can be cloned to any number of
    /// receivers without copying. Fails only for a body too large for the
    /// 32-bit `packet_len`.
    pub fn encode(&self) -> Result<EncodedPacket, ProtocolError> {
        let mut buf = BytesMut::with_capacity(self.wire_len());
        self.encode_into(&mut buf)?;
        Ok(EncodedPacket(buf.freeze()))
    }

    /// Appends the encoded packet to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let packet_len =
            u32::try_from(self.wire_len()).map_err(|_| ProtocolError::BodyTooLarge {
                len: self.body.len(),
                max: MAX_PACKET_LEN - HEADER_LEN,
            })?;
        dst.reserve(self.wire_len());
        Header {
            packet_len,
            header_len: HEADER_LEN as u16,
            ver: self.ver,
            op: self.op,
            seq: self.seq,
        }
        .put(dst);
        dst.extend_from_slice(&self.body);
        Ok(())
    }

    /// Decodes a WebSocket binary frame, which must hold exactly one packet.
    pub fn from_frame(mut frame: Bytes, max_body: usize) -> Result<Packet, ProtocolError> {
        let header = Header::parse(&frame)?;
        let need = header.validate(max_body)?;
        match frame.len().cmp(&need) {
            std::cmp::Ordering::Less => Err(ProtocolError::Truncated {
                have: frame.len(),
                need,
            }),
            std::cmp::Ordering::Greater => Err(ProtocolError::TrailingBytes {
                extra: frame.len() - need,
            }),
            std::cmp::Ordering::Equal => {
                frame.advance(HEADER_LEN);
                Ok(header.into_packet(frame))
            }
        }
    }
}

/// A packet encoded once. Cloning shares the bytes, so a room broadcast
/// encodes its message once and hands the same buffer to every member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedPacket(Bytes);

impl EncodedPacket {
    /// Wraps bytes that already hold one whole, valid packet.
    pub(crate) fn from_encoded(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() >= HEADER_LEN);
        EncodedPacket(bytes)
    }

    /// The whole packet, header included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The whole packet as a shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an encoded packet holds at least its header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The op written in the header.
    pub fn op(&self) -> Op {
        Op(u32::from_be_bytes([
            self.0[8], self.0[9], self.0[10], self.0[11],
        ]))
    }

    /// The seq written in the header: a user push's sequence number.
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes([self.0[12], self.0[13], self.0[14], self.0[15]])
    }

    /// The same packet with another seq (a copy: the original stays shared).
    pub fn with_seq(&self, seq: u32) -> EncodedPacket {
        let mut bytes = bytes::BytesMut::from(&self.0[..]);
        bytes[12..16].copy_from_slice(&seq.to_be_bytes());
        EncodedPacket(bytes.freeze())
    }
}

/// The fixed header, as read from the wire.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) packet_len: u32,
    pub(crate) header_len: u16,
    pub(crate) ver: u16,
    pub(crate) op: Op,
    pub(crate) seq: u32,
}

impl Header {
    /// Reads a header from the start of `buf`.
    pub(crate) fn parse(mut buf: &[u8]) -> Result<Header, ProtocolError> {
        if buf.len() < HEADER_LEN {
            return Err(ProtocolError::Truncated {
                have: buf.len(),
                need: HEADER_LEN,
            });
        }
        Ok(Header {
            packet_len: buf.get_u32(),
            header_len: buf.get_u16(),
            ver: buf.get_u16(),
            op: Op(buf.get_u32()),
            seq: buf.get_u32(),
        })
    }

    /// Checks the header against the protocol's rules and returns the
    /// packet's whole length. Runs before any body byte is buffered, so a
    /// hostile `packet_len` never makes us allocate.
    pub(crate) fn validate(&self, max_body: usize) -> Result<usize, ProtocolError> {
        let packet_len = self.packet_len as usize;
        if packet_len < HEADER_LEN {
            return Err(ProtocolError::PacketTooShort(self.packet_len));
        }
        if usize::from(self.header_len) != HEADER_LEN {
            return Err(ProtocolError::BadHeaderLen(self.header_len));
        }
        let body_len = packet_len - HEADER_LEN;
        if body_len > max_body {
            return Err(ProtocolError::BodyTooLarge {
                len: body_len,
                max: max_body,
            });
        }
        Ok(packet_len)
    }

    pub(crate) fn put(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.packet_len);
        dst.put_u16(self.header_len);
        dst.put_u16(self.ver);
        dst.put_u32(self.op.0);
        dst.put_u32(self.seq);
    }

    pub(crate) fn into_packet(self, body: Bytes) -> Packet {
        Packet {
            ver: self.ver,
            op: self.op,
            seq: self.seq,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: String = s.split_whitespace().collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn goim_js_heartbeat_is_byte_exact() {
        let wire = hex("00000010 0010 0001 00000002 00000001");
        let heartbeat = Packet::new(Op::HEARTBEAT, 1, Bytes::new());
        assert_eq!(heartbeat.encode().expect("encode").as_bytes()[..], wire[..]);
        let decoded = Packet::from_frame(Bytes::from(wire), DEFAULT_MAX_BODY).expect("decode");
        assert_eq!(decoded, heartbeat);
    }

    #[test]
    fn heartbeat_reply_with_online_count_is_byte_exact() {
        let wire = hex("00000014 0010 0001 00000003 00000001 00000005");
        let request = Packet::new(Op::HEARTBEAT, 1, Bytes::new());
        let reply = request.reply(Op::HEARTBEAT_REPLY, 5u32.to_be_bytes().to_vec());
        let encoded = reply.encode().expect("encode");
        assert_eq!(encoded.as_bytes()[..], wire[..]);
        assert_eq!(encoded.op(), Op::HEARTBEAT_REPLY);
        assert_eq!(encoded.len(), 20);
    }

    #[test]
    fn reply_echoes_version_and_seq() {
        let request = Packet {
            ver: 7,
            op: Op::SEND_MSG,
            seq: 42,
            body: Bytes::from_static(b"hi"),
        };
        let ack = request.reply(Op::SEND_MSG_REPLY, Bytes::new());
        assert_eq!((ack.ver, ack.op, ack.seq), (7, Op::SEND_MSG_REPLY, 42));
    }

    #[test]
    fn encoded_packet_clones_share_one_buffer() {
        let encoded = Packet::new(Op(1000), 0, vec![7u8; 64])
            .encode()
            .expect("encode");
        let copies: Vec<EncodedPacket> = (0..100).map(|_| encoded.clone()).collect();
        for copy in &copies {
            assert_eq!(copy.as_bytes().as_ptr(), encoded.as_bytes().as_ptr());
        }
    }

    #[test]
    fn frame_with_bad_header_len_is_refused() {
        let wire = hex("00000010 000c 0001 00000002 00000001");
        let err = Packet::from_frame(Bytes::from(wire), DEFAULT_MAX_BODY).expect_err("bad");
        assert!(matches!(err, ProtocolError::BadHeaderLen(12)), "{err}");
    }

    #[test]
    fn frame_with_packet_len_below_header_is_refused() {
        let wire = hex("0000000f 0010 0001 00000002 00000001");
        let err = Packet::from_frame(Bytes::from(wire), DEFAULT_MAX_BODY).expect_err("bad");
        assert!(matches!(err, ProtocolError::PacketTooShort(15)), "{err}");
    }

    #[test]
    fn frame_over_max_body_is_refused_before_reading_the_body() {
        // Announces a 4 GiB packet but carries none of it: refused on the header alone.
        let wire = hex("ffffffff 0010 0001 00000004 00000001");
        let err = Packet::from_frame(Bytes::from(wire), DEFAULT_MAX_BODY).expect_err("bad");
        assert!(
            matches!(err, ProtocolError::BodyTooLarge { len, max: 4096 } if len == u32::MAX as usize - 16),
            "{err}"
        );
    }

    #[test]
    fn frame_body_at_the_limit_is_accepted_and_one_over_is_not() {
        let at_limit = Packet::new(Op::SEND_MSG, 1, vec![1u8; 100]);
        let frame = at_limit.encode().expect("encode").into_bytes();
        assert_eq!(
            Packet::from_frame(frame.clone(), 100).expect("at limit"),
            at_limit
        );
        let err = Packet::from_frame(frame, 99).expect_err("over limit");
        assert!(
            matches!(err, ProtocolError::BodyTooLarge { len: 100, max: 99 }),
            "{err}"
        );
    }

    #[test]
    fn truncated_frames_are_refused() {
        let frame = Packet::new(Op::SEND_MSG, 1, vec![1u8; 10])
            .encode()
            .expect("encode")
            .into_bytes();
        let err = Packet::from_frame(frame.slice(..20), 4096).expect_err("cut body");
        assert!(
            matches!(err, ProtocolError::Truncated { have: 20, need: 26 }),
            "{err}"
        );
        let err = Packet::from_frame(frame.slice(..9), 4096).expect_err("cut header");
        assert!(
            matches!(err, ProtocolError::Truncated { have: 9, need: 16 }),
            "{err}"
        );
        let err = Packet::from_frame(Bytes::new(), 4096).expect_err("empty");
        assert!(
            matches!(err, ProtocolError::Truncated { have: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn frame_with_two_packets_is_refused() {
        let one = Packet::new(Op::HEARTBEAT, 1, Bytes::new())
            .encode()
            .expect("encode");
        let mut two = BytesMut::new();
        two.extend_from_slice(one.as_bytes());
        two.extend_from_slice(one.as_bytes());
        let err = Packet::from_frame(two.freeze(), 4096).expect_err("two packets");
        assert!(
            matches!(err, ProtocolError::TrailingBytes { extra: 16 }),
            "{err}"
        );
    }
}
