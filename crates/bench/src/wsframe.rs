//! Just enough RFC 6455 for the harness and the raw writer to stay out of
//! their own measurements: the upgrade on both sides, frames as bytes.
//! Nothing here allocates per message. (And, for their TCP clients, one
//! goim packet read off plain TCP, at subscription.)

use std::io;

use bytes::BytesMut;
use imcloud_protocol::{DEFAULT_MAX_BODY, Packet, PacketCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::codec::Decoder;

/// A fixed client key: the harness checks nothing it would protect.
const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The header of an unmasked (server) binary frame of `len` bytes.
pub(crate) fn server_header(len: usize) -> Vec<u8> {
    let mut header = Vec::with_capacity(10);
    header.push(0x82);
    match len {
        0..=125 => header.push(len as u8),
        126..=65_535 => {
            header.push(126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(127);
            header.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    header
}

/// `payload` as a masked (client) binary frame. The mask key is zero, so
/// the payload goes as is.
pub(crate) fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut header = server_header(payload.len());
    header[1] |= 0x80;
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(payload);
    header
}

/// A frame at the start of `buf`: (opcode, header length, payload length),
/// once its header is complete; the payload may still be partial.
pub(crate) fn parse_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let masked = second & 0x80 != 0;
    let (len, at) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        len => (usize::from(len), 2),
    };
    let header = if masked { at + 4 } else { at };
    (buf.len() >= header).then_some((first & 0x0f, header, len))
}

/// The client's side of the upgrade on `path`. Returns bytes read past the
/// response (the server may write right after it).
pub(crate) async fn client_upgrade(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
) -> io::Result<Vec<u8>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let (head, rest) = read_head(stream).await?;
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or(&[]));
        return Err(io::Error::other(format!("upgrade refused: {line}")));
    }
    Ok(rest)
}

/// The server's side of the upgrade, on any path.
pub(crate) async fn server_upgrade(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let (head, rest) = read_head(stream).await?;
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| io::Error::other("no Sec-WebSocket-Key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(rest)
}

/// Reads an HTTP head; returns it and whatever came after it.
async fn read_head(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 8192 || stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("no HTTP head"));
        }
    }
}

/// Reads until one whole frame is at the start of `buf` (which may already
/// hold bytes); returns (opcode, header length, payload length).
pub(crate) async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<(u8, usize, usize)> {
    loop {
        if let Some((op, header, len)) = parse_header(buf)
            && buf.len() >= header + len
        {
            return Ok((op, header, len));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The next goim packet on a plain TCP stream; `buf` keeps what was read
/// past it.
pub(crate) async fn read_packet(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> anyhow::Result<Packet> {
    let mut codec = PacketCodec::new(DEFAULT_MAX_BODY);
    loop {
        if let Some(packet) = codec.decode(buf)? {
            return Ok(packet);
        }
        anyhow::ensure!(stream.read_buf(buf).await? > 0, "closed mid-packet");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_form_parse_back() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let header = server_header(len);
            assert_eq!(parse_header(&header), Some((2, header.len(), len)));
        }
        let frame = client_frame(b"hi");
        assert_eq!(parse_header(&frame), Some((2, 6, 2)));
        assert_eq!(&frame[6..], b"hi");
        assert_eq!(parse_header(&[0x82]), None, "incomplete");
    }
}
