//! The reference: the fastest known way to fan a room out over WebSocket on
//! one core, doing the same work imcloud does and nothing else.
//!
//! One thread, one loop. Each published payload is encoded once as a
//! complete WebSocket frame around an op-1000 packet. Every payload that
//! arrived while the loop was writing goes to each connection in one
//! non-blocking vectored write; only a connection whose socket is full gets
//! a backlog, written by its own task when the socket drains. No task is
//! woken per connection per message: what is left is the cost of the
//! sockets. Clients authenticate like imcloud's (op 7, answered by op 8,
//! the token not checked), so the same harness measures both.
//!
//! Publishing: `[u32 BE length][payload]` messages on a TCP connection to
//! the publish address (as `fanbench serve-raw` takes them). With `--tcp`,
//! TCP clients get the same packets back to back, as on imcloud's TCP port.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use imcloud_protocol::{Op, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::wsframe;

/// Slices per `writev`.
const MAX_SLICES: usize = 64;
/// Frames a connection may fall behind by before it is dropped.
const MAX_BACKLOG: usize = 100_000;

/// Where clients come in: WebSocket, and optionally plain TCP (goim
/// packets back to back, as on imcloud's TCP port).
pub struct Listeners {
    pub ws: std::net::TcpListener,
    pub tcp: Option<std::net::TcpListener>,
    pub publish: std::net::TcpListener,
}

/// Runs the raw writer on the current thread until the process is killed.
pub fn serve(listeners: Listeners) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listen = |listener: std::net::TcpListener| {
                listener.set_nonblocking(true)?;
                TcpListener::from_std(listener)
            };
            let (joined_tx, joined) = mpsc::unbounded_channel();
            let (published_tx, published) = mpsc::unbounded_channel();
            tokio::spawn(accept_clients(
                listen(listeners.ws)?,
                false,
                joined_tx.clone(),
            ));
            if let Some(tcp) = listeners.tcp {
                tokio::spawn(accept_clients(listen(tcp)?, true, joined_tx));
            }
            tokio::spawn(accept_publishers(listen(listeners.publish)?, published_tx));
            fan_out(joined, published).await;
            Ok(())
        })
}

/// A subscribed client: its socket, its wire, what it has not taken yet.
struct Conn {
    socket: Arc<TcpStream>,
    tcp: bool,
    backlog: Arc<Mutex<Backlog>>,
}

#[derive(Default)]
struct Backlog {
    frames: VecDeque<Bytes>,
    /// Bytes of the first frame already written.
    head: usize,
    /// The socket failed, or the client fell too far behind.
    dead: bool,
}

/// The loop: new clients join; everything published since the last round
/// goes to every client in one write each.
async fn fan_out(
    mut joined: mpsc::UnboundedReceiver<Conn>,
    mut published: mpsc::UnboundedReceiver<Vec<Bytes>>,
) {
    let mut conns: Vec<Conn> = Vec::new();
    let (mut packets, mut frames) = (Vec::new(), Vec::new());
    loop {
        tokio::select! {
            conn = joined.recv() => match conn {
                Some(conn) => conns.push(conn),
                None => return,
            },
            batch = published.recv() => {
                let Some(batch) = batch else { return };
                packets.extend(batch);
                while let Ok(batch) = published.try_recv() {
                    packets.extend(batch);
                }
                frames.extend(packets.iter().map(|packet: &Bytes| frame(packet)));
                let tcp: Vec<IoSlice<'_>> = packets.iter().map(|p| IoSlice::new(p)).collect();
                let ws: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
                conns.retain(|conn| match conn.tcp {
                    true => offer(conn, &packets, &tcp),
                    false => offer(conn, &frames, &ws),
                });
                drop((tcp, ws));
                packets.clear();
                frames.clear();
            }
        }
    }
}

/// Writes `frames` (whose slices are `slices`, made once for everyone) to
/// `conn` now, or behind its backlog. False: drop it.
fn offer(conn: &Conn, frames: &[Bytes], slices: &[IoSlice<'_>]) -> bool {
    let mut backlog = conn.backlog.lock().expect("backlog lock");
    if backlog.dead {
        return false;
    }
    if !backlog.frames.is_empty() {
        if backlog.frames.len() + frames.len() > MAX_BACKLOG {
            backlog.dead = true;
            return false;
        }
        backlog.frames.extend(frames.iter().cloned());
        return true;
    }
    let mut done = 0;
    while done < frames.len() {
        let count = (frames.len() - done).min(MAX_SLICES);
        let mut written = match conn.socket.try_write_vectored(&slices[done..done + count]) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return false,
        };
        let end = done + count;
        while done < end && written >= frames[done].len() {
            written -= frames[done].len();
            done += 1;
        }
        if done < end {
            backlog.head = written;
            break;
        }
    }
    if done < frames.len() {
        backlog.frames.extend(frames[done..].iter().cloned());
        tokio::spawn(write_backlog(conn.socket.clone(), conn.backlog.clone()));
    }
    true
}

/// Writes a connection's backlog as its socket drains, until it is empty.
async fn write_backlog(socket: Arc<TcpStream>, backlog: Arc<Mutex<Backlog>>) {
    loop {
        if socket.writable().await.is_err() {
            break;
        }
        let mut backlog = backlog.lock().expect("backlog lock");
        let head = backlog.head;
        let slices: Vec<IoSlice<'_>> = backlog
            .frames
            .iter()
            .take(MAX_SLICES)
            .enumerate()
            .map(|(i, f)| IoSlice::new(if i == 0 { &f[head..] } else { f }))
            .collect();
        let mut written = match socket.try_write_vectored(&slices) {
            Ok(n) => n + head,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        };
        drop(slices);
        while let Some(frame) = backlog.frames.front()
            && written >= frame.len()
        {
            written -= frame.len();
            backlog.frames.pop_front();
        }
        backlog.head = written;
        if backlog.frames.is_empty() {
            return;
        }
    }
    backlog.lock().expect("backlog lock").dead = true;
}

async fn accept_clients(listener: TcpListener, tcp: bool, joined: mpsc::UnboundedSender<Conn>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: wait, don't die.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let joined = joined.clone();
        tokio::spawn(async move {
            if let Ok(conn) = subscribe(stream, tcp).await {
                let _ = joined.send(conn);
            }
        });
    }
}

/// The upgrade (WebSocket), then op 7 answered by op 8 like imcloud.
async fn subscribe(mut stream: TcpStream, tcp: bool) -> anyhow::Result<Conn> {
    stream.set_nodelay(true)?;
    let auth = if tcp {
        wsframe::read_packet(&mut stream, &mut BytesMut::new()).await?
    } else {
        let mut buf = wsframe::server_upgrade(&mut stream).await?;
        let (_, header, len) = wsframe::read_frame(&mut stream, &mut buf).await?;
        Packet::from_frame(Bytes::copy_from_slice(&buf[header..header + len]), 4096)?
    };
    anyhow::ensure!(auth.op == Op::AUTH, "the first packet must be auth");
    let reply = auth
        .reply(
            Op::AUTH_REPLY,
            r#"{"mid":0,"key":"raw","room_id":"","heartbeat":30}"#,
        )
        .encode()?;
    let reply = if tcp {
        reply.into_bytes()
    } else {
        frame(reply.as_bytes())
    };
    stream.write_all(&reply).await?;
    Ok(Conn {
        socket: Arc::new(stream),
        tcp,
        backlog: Arc::default(),
    })
}

/// `packet` as one complete server frame.
fn frame(packet: &[u8]) -> Bytes {
    let mut frame = wsframe::server_header(packet.len());
    frame.extend_from_slice(packet);
    frame.into()
}

async fn accept_publishers(listener: TcpListener, published: mpsc::UnboundedSender<Vec<Bytes>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(read_published(stream, published.clone()));
    }
}

/// Each `[len][payload]` becomes one packet, encoded once for everyone
/// (and framed once for WebSocket clients by the loop).
async fn read_published(mut stream: TcpStream, published: mpsc::UnboundedSender<Vec<Bytes>>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
        let mut batch = Vec::new();
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            buf.advance(4);
            let payload = buf.split_to(len).freeze();
            if let Ok(packet) = Packet::new(Op(1000), 0, payload).encode() {
                batch.push(packet.into_bytes());
            }
        }
        if !batch.is_empty() && published.send(batch).is_err() {
            return;
        }
    }
}
