//! Op-9 batches: several whole packets in one WebSocket frame.
//!
//! On WebSocket a batch is one frame: an op-9 header whose body is N whole
//! packets back to back. On TCP no outer header is needed: the writer puts the
//! N packets on the stream back to back.

use bytes::{BufMut, Bytes, BytesMut};

use crate::packet::{HEADER_LEN, Header, MAX_PACKET_LEN, VERSION};
use crate::{EncodedPacket, Op, Packet, ProtocolError};

/// Builds one op-9 batch from already encoded packets, copying each once.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: usize,
    max_len: usize,
}

impl BatchBuilder {
    /// A batch that grows to at most `max_len` bytes, header included
    /// (capped at what `packet_len` can describe).
    pub fn new(max_len: usize) -> Self {
        let mut buf = BytesMut::with_capacity(max_len.min(64 * 1024));
        buf.put_bytes(0, HEADER_LEN);
        BatchBuilder {
            buf,
            count: 0,
            max_len: max_len.min(MAX_PACKET_LEN),
        }
    }

    /// Adds a packet. Returns false, leaving the batch as it was, when the
    /// packet does not fit: send this batch and start another, or send the
    /// packet on its own if even an empty batch cannot hold it.
    pub fn push(&mut self, packet: &EncodedPacket) -> bool {
        if self.buf.len() + packet.len() > self.max_len {
            return false;
        }
        self.buf.extend_from_slice(packet.as_bytes());
        self.count += 1;
        true
    }

    /// How many packets the batch holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The batch's length on the wire so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no packet was added yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished op-9 packet.
    pub fn finish(mut self) -> EncodedPacket {
        let header = batch_header(self.buf.len() - HEADER_LEN);
        self.buf[..HEADER_LEN].copy_from_slice(&header);
        EncodedPacket::from_encoded(self.buf.freeze())
    }
}

/// The op-9 header of a batch whose packets take `inner_len` bytes: a
/// writer can send it followed by the packets themselves (one vectored
/// write) instead of copying them into one buffer.
///
/// `inner_len` must leave the whole batch within [`MAX_PACKET_LEN`], as
/// [`batch_runs`] ensures.
pub fn batch_header(inner_len: usize) -> [u8; HEADER_LEN] {
    let header = Header {
        packet_len: u32::try_from(HEADER_LEN + inner_len).unwrap_or(u32::MAX),
        header_len: HEADER_LEN as u16,
        ver: VERSION,
        op: Op::BATCH,
        seq: 0,
    };
    let mut bytes = [0; HEADER_LEN];
    header.put(&mut &mut bytes[..]);
    bytes
}

/// Splits queued packets into runs, in order, each of which is sent as one
/// op-9 batch of at most `max_len` bytes (header included). A run of one
/// packet is sent as itself: it is alone because the next one did not fit,
/// or because it is too big for any batch.
pub fn batch_runs(packets: &[EncodedPacket], max_len: usize) -> BatchRuns<'_> {
    BatchRuns {
        rest: packets,
        max_len: max_len.min(MAX_PACKET_LEN),
    }
}

/// The iterator of [`batch_runs`].
#[derive(Debug)]
pub struct BatchRuns<'a> {
    rest: &'a [EncodedPacket],
    max_len: usize,
}

impl<'a> Iterator for BatchRuns<'a> {
    type Item = &'a [EncodedPacket];

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut len = HEADER_LEN;
        let mut count = 0;
        for packet in self.rest {
            if len + packet.len() > self.max_len {
                break;
            }
            len += packet.len();
            count += 1;
        }
        let (run, rest) = self.rest.split_at(count.max(1));
        self.rest = rest;
        Some(run)
    }
}

/// Iterates over the packets inside an op-9 batch body.
///
/// Each inner packet is checked like any other (header rules and
/// `max_body`); an error ends the iteration.
#[derive(Debug)]
pub struct BatchIter {
    rest: Bytes,
    max_body: usize,
    failed: bool,
}

impl BatchIter {
    /// Reads the packets of `body`, the body of an op-9 packet.
    pub fn new(body: Bytes, max_body: usize) -> Self {
        BatchIter {
            rest: body,
            max_body,
            failed: false,
        }
    }
}

impl Iterator for BatchIter {
    type Item = Result<Packet, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let next = Header::parse(&self.rest).and_then(|header| {
            let len = header.validate(self.max_body)?;
            if self.rest.len() < len {
                return Err(ProtocolError::Truncated {
                    have: self.rest.len(),
                    need: len,
                });
            }
            let packet = self.rest.split_to(len);
            Ok(header.into_packet(packet.slice(HEADER_LEN..)))
        });
        self.failed = next.is_err();
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets() -> Vec<Packet> {
        (0..5)
            .map(|i| Packet::new(Op(1000 + i), i, vec![i as u8; i as usize * 10]))
            .collect()
    }

    #[test]
    fn batch_round_trips_through_a_frame() {
        let mut batch = BatchBuilder::new(64 * 1024);
        for packet in packets() {
            assert!(batch.push(&packet.encode().expect("encode")));
        }
        assert_eq!(batch.count(), 5);
        let frame = batch.finish();
        assert_eq!(frame.op(), Op::BATCH);

        let outer = Packet::from_frame(frame.into_bytes(), usize::MAX).expect("outer");
        assert_eq!((outer.op, outer.ver, outer.seq), (Op::BATCH, VERSION, 0));
        let inner: Vec<Packet> = BatchIter::new(outer.body, 4096)
            .collect::<Result<_, _>>()
            .expect("inner packets");
        assert_eq!(inner, packets());
    }

    #[test]
    fn batch_header_is_byte_exact() {
        let heartbeat = Packet::new(Op::HEARTBEAT_REPLY, 1, 5u32.to_be_bytes().to_vec())
            .encode()
            .expect("encode");
        let mut batch = BatchBuilder::new(1024);
        assert!(batch.push(&heartbeat));
        let frame = batch.finish();
        let bytes = frame.as_bytes();
        assert_eq!(
            &bytes[..HEADER_LEN],
            &[0, 0, 0, 36, 0, 16, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0]
        );
        assert_eq!(&bytes[HEADER_LEN..], &heartbeat.as_bytes()[..]);
    }

    #[test]
    fn a_full_batch_refuses_more_and_stays_intact() {
        let packet = Packet::new(Op(1000), 0, vec![0u8; 84])
            .encode()
            .expect("encode");
        let mut batch = BatchBuilder::new(HEADER_LEN + 2 * packet.len());
        assert!(batch.push(&packet));
        assert!(batch.push(&packet));
        assert!(!batch.push(&packet), "a third does not fit");
        assert_eq!(batch.count(), 2);
        assert_eq!(batch.len(), HEADER_LEN + 200);

        let mut tiny = BatchBuilder::new(HEADER_LEN + 10);
        assert!(!tiny.push(&packet), "too big even for an empty batch");
        assert!(tiny.is_empty());
    }

    #[test]
    fn runs_fill_batches_in_order_and_oversized_packets_go_alone() {
        let small = Packet::new(Op(1000), 0, vec![0u8; 84])
            .encode()
            .expect("encode");
        let big = Packet::new(Op(1001), 0, vec![0u8; 500])
            .encode()
            .expect("encode");
        let queued = [&small, &small, &small, &big, &small]
            .map(|p| (*p).clone())
            .to_vec();
        let runs: Vec<usize> = batch_runs(&queued, HEADER_LEN + 2 * small.len())
            .map(<[EncodedPacket]>::len)
            .collect();
        assert_eq!(runs, [2, 1, 1, 1]);
        assert_eq!(batch_runs(&[], 1024).count(), 0);
    }

    #[test]
    fn a_header_then_the_packets_is_the_same_batch_the_builder_makes() {
        let encoded: Vec<EncodedPacket> = packets()
            .iter()
            .map(|p| p.encode().expect("encode"))
            .collect();
        let mut batch = BatchBuilder::new(64 * 1024);
        for packet in &encoded {
            assert!(batch.push(packet));
        }
        let inner: usize = encoded.iter().map(EncodedPacket::len).sum();
        let mut gathered = batch_header(inner).to_vec();
        for packet in &encoded {
            gathered.extend_from_slice(packet.as_bytes());
        }
        assert_eq!(gathered, batch.finish().as_bytes()[..]);
    }

    #[test]
    fn a_truncated_batch_body_yields_the_whole_packets_then_an_error() {
        let mut batch = BatchBuilder::new(64 * 1024);
        for packet in packets() {
            batch.push(&packet.encode().expect("encode"));
        }
        let body = batch.finish().into_bytes().slice(HEADER_LEN..);
        let cut = body.slice(..body.len() - 1);
        let results: Vec<_> = BatchIter::new(cut, 4096).collect();
        assert_eq!(results.len(), 5);
        assert!(results[..4].iter().all(Result::is_ok));
        assert!(matches!(results[4], Err(ProtocolError::Truncated { .. })));
    }
}
