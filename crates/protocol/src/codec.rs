//! The TCP stream codec: packets back to back, split across reads or
//! coalesced into one.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::packet::{HEADER_LEN, Header};
use crate::{Packet, ProtocolError};

/// Decodes packets from a byte stream and encodes packets onto one.
///
/// The decoder validates each header as soon as its 16 bytes are in, so a
/// packet over `max_body` is refused before its body is buffered.
#[derive(Clone, Copy, Debug)]
pub struct PacketCodec {
    max_body: usize,
}

impl PacketCodec {
    /// A codec that refuses bodies larger than `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        PacketCodec { max_body }
    }

    /// The body limit this codec enforces.
    pub fn max_body(&self) -> usize {
        self.max_body
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtocolError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = Header::parse(src)?;
        let packet_len = header.validate(self.max_body)?;
        if src.len() < packet_len {
            src.reserve(packet_len - src.len());
            return Ok(None);
        }
        let mut packet = src.split_to(packet_len);
        packet.advance(HEADER_LEN);
        Ok(Some(header.into_packet(packet.freeze())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtocolError> {
        match self.decode(src)? {
            Some(packet) => Ok(Some(packet)),
            None if src.is_empty() => Ok(None),
            None => {
                let need = match Header::parse(src) {
                    Ok(header) => header.packet_len as usize,
                    Err(_) => HEADER_LEN,
                };
                Err(ProtocolError::Truncated {
                    have: src.len(),
                    need,
                })
            }
        }
    }
}

impl Encoder<Packet> for PacketCodec {
    type Error = ProtocolError;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        packet.encode_into(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;
    use bytes::Bytes;

    fn encode_all(packets: &[Packet]) -> BytesMut {
        let mut wire = BytesMut::new();
        for packet in packets {
            PacketCodec::new(usize::MAX)
                .encode(packet.clone(), &mut wire)
                .expect("encode");
        }
        wire
    }

    fn sample() -> Vec<Packet> {
        vec![
            Packet::new(Op::AUTH, 1, Bytes::from_static(b"{\"mid\":1}")),
            Packet::new(Op::HEARTBEAT, 2, Bytes::new()),
            Packet::new(Op::SEND_MSG, 3, vec![9u8; 300]),
        ]
    }

    #[test]
    fn coalesced_packets_decode_one_by_one() {
        let mut wire = encode_all(&sample());
        let mut codec = PacketCodec::new(4096);
        let mut got = Vec::new();
        while let Some(packet) = codec.decode(&mut wire).expect("decode") {
            got.push(packet);
        }
        assert_eq!(got, sample());
        assert!(wire.is_empty());
    }

    #[test]
    fn a_packet_split_at_every_byte_decodes_once_whole() {
        let wire = encode_all(&sample());
        let mut codec = PacketCodec::new(4096);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(packet) = codec.decode(&mut buf).expect("decode") {
                got.push(packet);
            }
        }
        assert_eq!(got, sample());
    }

    #[test]
    fn stream_errors_name_the_rule_broken() {
        let cases: [(&str, &[u8]); 3] = [
            (
                "header_len",
                &[0, 0, 0, 16, 0, 15, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1],
            ),
            (
                "packet_len",
                &[0, 0, 0, 3, 0, 16, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1],
            ),
            (
                "max_body",
                &[0, 0, 16, 17, 0, 16, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1],
            ),
        ];
        for (rule, wire) in cases {
            let mut buf = BytesMut::from(wire);
            let err = PacketCodec::new(4096).decode(&mut buf).expect_err(rule);
            assert!(err.to_string().contains(rule), "{rule}: {err}");
        }
    }

    #[test]
    fn oversized_body_is_refused_on_the_header_alone() {
        // Only the header has arrived; the body would be 4097 bytes.
        let mut buf = BytesMut::from(&[0, 0, 16, 17, 0, 16, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        let err = PacketCodec::new(4096)
            .decode(&mut buf)
            .expect_err("too big");
        assert!(
            matches!(
                err,
                ProtocolError::BodyTooLarge {
                    len: 4097,
                    max: 4096
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn stream_ending_inside_a_packet_is_truncated() {
        let whole = encode_all(&sample()[2..]);
        for cut in [1, 15, 16, 17, whole.len() - 1] {
            let mut buf = BytesMut::from(&whole[..cut]);
            let err = PacketCodec::new(4096)
                .decode_eof(&mut buf)
                .expect_err("truncated");
            assert!(
                matches!(err, ProtocolError::Truncated { have, .. } if have == cut),
                "cut at {cut}: {err}"
            );
        }
        let mut empty = BytesMut::new();
        assert!(
            PacketCodec::new(4096)
                .decode_eof(&mut empty)
                .expect("clean end")
                .is_none()
        );
    }
}
