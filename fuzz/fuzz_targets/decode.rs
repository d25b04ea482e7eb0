//! The protocol decoder on arbitrary bytes: the TCP stream codec (cut into
//! reads where the input says), WebSocket frames and op-9 batch bodies must
//! return packets or errors, never panic, and never yield a body over max_body.
#![no_main]

use bytes::{Bytes, BytesMut};
use imcloud_protocol::{BatchIter, Packet, PacketCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let cut = usize::from(cut).max(1);

    let mut codec = PacketCodec::new(MAX_BODY);
    let mut buf = BytesMut::new();
    'stream: for chunk in data.chunks(cut) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => assert!(packet.body.len() <= MAX_BODY),
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);

    let frame = Bytes::copy_from_slice(data);
    if let Ok(packet) = Packet::from_frame(frame.clone(), MAX_BODY) {
        assert_eq!(packet.wire_len(), data.len());
    }
    for inner in BatchIter::new(frame, MAX_BODY) {
        if let Ok(packet) = inner {
            assert!(packet.body.len() <= MAX_BODY);
        }
    }
});
