//! Property and stream tests: whatever packets are sent, and however the
//! stream cuts them into reads, the decoder yields exactly what was sent.

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use imcloud_protocol::{BatchBuilder, BatchIter, Op, Packet, PacketCodec};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

const MAX_BODY: usize = 2048;

fn packet() -> impl Strategy<Value = Packet> {
    (
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..MAX_BODY),
    )
        .prop_map(|(ver, op, seq, body)| Packet {
            ver,
            op: Op(op),
            seq,
            body: Bytes::from(body),
        })
}

/// Feeds `wire` to a fresh decoder in reads that end at `cuts`, like a TCP
/// stream would, and returns everything decoded.
fn decode_in_reads(wire: &[u8], cuts: &[usize]) -> Vec<Packet> {
    let mut codec = PacketCodec::new(MAX_BODY);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut start = 0;
    for end in cuts {
        buf.extend_from_slice(&wire[start..end]);
        start = end;
        while let Some(packet) = codec.decode(&mut buf).expect("valid stream") {
            got.push(packet);
        }
    }
    assert!(
        codec.decode_eof(&mut buf).expect("clean end").is_none(),
        "nothing left over"
    );
    got
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity(packet in packet()) {
        let frame = packet.encode().expect("encode").into_bytes();
        prop_assert_eq!(frame.len(), packet.wire_len());
        prop_assert_eq!(Packet::from_frame(frame, MAX_BODY).expect("decode"), packet);
    }

    #[test]
    fn any_read_split_yields_the_same_packets(
        packets in proptest::collection::vec(packet(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        let mut codec = PacketCodec::new(MAX_BODY);
        for packet in &packets {
            codec.encode(packet.clone(), &mut wire).expect("encode");
        }
        prop_assert_eq!(decode_in_reads(&wire, &cuts), packets);
    }

    #[test]
    fn a_batch_holds_exactly_its_packets(packets in proptest::collection::vec(packet(), 0..8)) {
        let mut batch = BatchBuilder::new(usize::MAX);
        for packet in &packets {
            prop_assert!(batch.push(&packet.encode().expect("encode")));
        }
        let outer = Packet::from_frame(batch.finish().into_bytes(), usize::MAX).expect("outer");
        prop_assert_eq!(outer.op, Op::BATCH);
        let inner: Vec<Packet> = BatchIter::new(outer.body, MAX_BODY)
            .collect::<Result<_, _>>()
            .expect("inner");
        prop_assert_eq!(inner, packets);
    }
}

/// The codec over a real loopback TCP connection, with the sender writing one
/// byte at a time (each a separate segment with Nagle off) and then a burst.
#[tokio::test]
async fn codec_over_a_real_tcp_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let packets: Vec<Packet> = (0..20)
        .map(|i| Packet::new(Op(1000 + i), i, vec![i as u8; (i * 37) as usize]))
        .collect();

    let expected = packets.clone();
    let sender = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let first = packets[0].encode().expect("encode");
        for byte in first.as_bytes().iter() {
            stream.write_all(&[*byte]).await.expect("write byte");
            stream.flush().await.expect("flush");
        }
        let mut framed = FramedWrite::new(stream, PacketCodec::new(MAX_BODY));
        for packet in packets.into_iter().skip(1) {
            framed.feed(packet).await.expect("feed");
        }
        framed.close().await.expect("close");
    });

    let (socket, _) = listener.accept().await.expect("accept");
    let received: Vec<Packet> = FramedRead::new(socket, PacketCodec::new(MAX_BODY))
        .map(|packet| packet.expect("valid packet"))
        .collect()
        .await;
    sender.await.expect("sender");
    assert_eq!(received, expected);
}

/// A peer that hangs up inside a packet is reported as truncated, not as a
/// clean end of stream.
#[tokio::test]
async fn hang_up_inside_a_packet_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sender = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let whole = Packet::new(Op::SEND_MSG, 1, vec![1u8; 100])
            .encode()
            .expect("encode");
        stream
            .write_all(&whole.as_bytes()[..50])
            .await
            .expect("write");
    });
    let (socket, _) = listener.accept().await.expect("accept");
    let mut framed = FramedRead::new(socket, PacketCodec::new(MAX_BODY));
    let err = framed
        .next()
        .await
        .expect("an item")
        .expect_err("truncated");
    assert_eq!(err.to_string(), "truncated packet: got 50 of 116 bytes");
    sender.await.expect("sender");
}
