//! A client connection's whole life, for TCP and WebSocket alike, top to
//! bottom: authenticate, serve (one `select!` over the outbox, the client's
//! packets and the heartbeat deadline), close with a reason.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use imcloud_protocol::{CloseBody, CloseReason, EncodedPacket, Op, Packet};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, warn};

use crate::bucket::{BucketHandle, Key, Member, RoomId};
use crate::listener::IpSlot;
use crate::logic::AuthError;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::transport::{Transport, TransportError};

/// Time the last words (queued packets and op 6) get before the socket is dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Client messages (op 4) of one connection in flight to logic at once.
const MAX_RECEIVES_IN_FLIGHT: usize = 16;
/// Longest room id a client may ask for.
const MAX_ROOM_LEN: usize = 256;

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The server closes it and tells the client why (op 6).
    Close(CloseBody),
    /// The server closes it but the stream is unusable (a write was cut
    /// midway), so the reason is only counted and logged.
    Abort(CloseBody),
    /// The client left or the socket failed; nothing more can be said.
    Gone(String),
}

impl End {
    fn close(reason: CloseReason, detail: impl AsRef<str>) -> End {
        End::Close(CloseBody::new(reason, Some(detail.as_ref())))
    }

    fn protocol(detail: impl AsRef<str>) -> End {
        End::close(CloseReason::ProtocolError, detail)
    }
}

impl From<TransportError> for End {
    fn from(err: TransportError) -> End {
        if err.is_violation() {
            End::protocol(err.to_string())
        } else {
            End::Gone(err.to_string())
        }
    }
}

/// Serves one client from its first byte to its last. `permit` is `None`
/// when the node is at its connection limit: the client is told so and closed.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// async fn keeps a second copy of its arguments (the transport alone is
/// over 300 bytes) in every idle connection's state. Everything that only
/// lives through the handshake or the close is boxed for the same reason.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<T: Transport>(
    mut transport: T,
    node: Arc<Node>,
    cookie: String,
    permit: Option<(OwnedSemaphorePermit, Option<IpSlot>)>,
) -> impl Future<Output = ()> + Send {
    async move {
        let _open = node.metrics.connection_open(T::NAME);
        let admitted = permit.is_some();
        let Some(mut session) = Box::pin(open(&mut transport, &node, cookie, admitted)).await
        else {
            return;
        };
        let end = session.run(&mut transport).await;
        Box::pin(finish(&mut transport, &node, Some(session), end)).await;
        drop(permit);
    }
}

/// Authenticates the client, or closes the connection with the reason
/// (connection limit, no auth in time, refused token...).
async fn open<T: Transport>(
    transport: &mut T,
    node: &Arc<Node>,
    cookie: String,
    admitted: bool,
) -> Option<Session> {
    let authenticated = if admitted {
        authenticate(transport, node, cookie).await
    } else {
        Err(End::close(
            CloseReason::ConnectionLimit,
            "this node is full, or your address has too many connections",
        ))
    };
    match authenticated {
        Ok(session) => Some(session),
        Err(end) => {
            finish(transport, node, None, end).await;
            None
        }
    }
}

/// The first packet must be auth (op 7) within the handshake timeout; logic
/// verifies the token; the connection joins its bucket; op 8 answers.
async fn authenticate<T: Transport>(
    transport: &mut T,
    node: &Arc<Node>,
    cookie: String,
) -> Result<Session, End> {
    let handshake = node.config.handshake_timeout;
    let first = tokio::select! {
        () = node.stop.cancelled() => {
            return Err(End::close(CloseReason::Draining, "the node is shutting down"));
        }
        first = timeout(handshake, transport.recv()) => first,
    };
    let auth = match first {
        Err(_) => {
            return Err(End::close(
                CloseReason::HandshakeTimeout,
                format!("no auth packet within {handshake:?}"),
            ));
        }
        Ok(None) => return Err(End::Gone("closed before auth".to_owned())),
        Ok(Some(Err(err))) => return Err(transport_end(node, err)),
        Ok(Some(Ok(packet))) if packet.op != Op::AUTH => {
            return Err(End::protocol(format!(
                "the first packet must be auth (op 7), got {}",
                packet.op
            )));
        }
        Ok(Some(Ok(packet))) => packet,
    };

    let reply = node
        .logic
        .connect(auth.body.clone(), cookie)
        .await
        .map_err(|err| {
            let reason = match err {
                AuthError::Refused(_) => CloseReason::AuthFailed,
                AuthError::Unavailable(_) => CloseReason::LogicUnavailable,
            };
            node.metrics.auth_failed(reason);
            End::close(reason, err.to_string())
        })?;
    if reply.key.is_empty() {
        return Err(End::close(
            CloseReason::ServerError,
            "logic returned no key",
        ));
    }

    let key: Key = reply.key.as_str().into();
    let room: Option<RoomId> = (!reply.room_id.is_empty()).then(|| reply.room_id.as_str().into());
    let heartbeat = u64::try_from(reply.heartbeat)
        .ok()
        .filter(|secs| *secs > 0)
        .map_or(node.config.heartbeat, Duration::from_secs);
    let session = Session {
        id: node.next_conn_id.fetch_add(1, Ordering::Relaxed),
        mid: reply.mid,
        key: key.clone(),
        room: room.clone(),
        heartbeat,
        outbox: Arc::new(Outbox::new(node.config.send_queue)),
        bucket: node.buckets.for_key(&key).clone(),
        node: node.clone(),
        last_renew: Instant::now(),
        receives: None,
        pending: Vec::new(),
    };
    let member = Member {
        id: session.id,
        outbox: session.outbox.clone(),
        room,
        accepts: reply
            .accepts
            .iter()
            .filter_map(|op| u32::try_from(*op).ok())
            .collect(),
    };
    if session.bucket.register(key, member).await.is_err() {
        return Err(End::close(
            CloseReason::Draining,
            "the node is shutting down",
        ));
    }
    node.metrics.auth_ok();
    if node.stop.is_cancelled() {
        // Registered after the drain began: leave with the others.
        session
            .outbox
            .close(CloseBody::new(CloseReason::Draining, None));
    }

    let identity = AuthReply {
        mid: reply.mid,
        key: &session.key,
        room_id: session.room.as_deref().unwrap_or(""),
        heartbeat: session.heartbeat.as_secs(),
    };
    let body = serde_json::to_vec(&identity).unwrap_or_default();
    session.reply(&auth, Op::AUTH_REPLY, body);
    debug!(mid = session.mid, key = %session.key, "client authenticated");
    Ok(session)
}

/// The body of op 8.
#[derive(Serialize)]
struct AuthReply<'a> {
    mid: i64,
    key: &'a str,
    room_id: &'a str,
    heartbeat: u64,
}

/// An authenticated connection.
struct Session {
    id: u64,
    mid: i64,
    key: Key,
    room: Option<RoomId>,
    heartbeat: Duration,
    outbox: Arc<Outbox>,
    bucket: BucketHandle,
    node: Arc<Node>,
    last_renew: Instant,
    /// Limits client messages in flight to logic; made on the first op 4.
    receives: Option<Arc<Semaphore>>,
    /// Packets drained from the outbox but not written yet.
    pending: Vec<EncodedPacket>,
}

impl Session {
    /// Serves the client until something ends the connection.
    async fn run<T: Transport>(&mut self, transport: &mut T) -> End {
        let idle = self.heartbeat * 2;
        let deadline = sleep(idle);
        tokio::pin!(deadline);
        loop {
            // Unbiased: a busy outbox must not starve the client's packets.
            tokio::select! {
                () = self.node.cut.cancelled() => {
                    return End::Abort(CloseBody::new(CloseReason::Draining, Some("drain grace ran out")));
                }
                () = self.outbox.ready() => {
                    let drained = self.outbox.drain(&mut self.pending);
                    if let Some(close) = drained.close {
                        return End::Close(close);
                    }
                    // Boxed: the write (with its timeout) would otherwise
                    // size every idle connection's future; one small
                    // allocation per write is nothing next to the syscall.
                    if let Err(end) = Box::pin(self.write(transport, drained.oldest_push)).await {
                        return end;
                    }
                }
                received = transport.recv() => match received {
                    None => return End::Gone("client closed".to_owned()),
                    Some(Err(err)) => return transport_end(&self.node, err),
                    Some(Ok(packet)) => {
                        deadline.as_mut().reset(Instant::now() + idle);
                        // Boxed: client packets are rare (heartbeats), and the
                        // handler's future would otherwise size every idle connection.
                        if let Err(end) = Box::pin(self.handle(packet)).await {
                            return end;
                        }
                    }
                },
                () = &mut deadline => {
                    return End::close(
                        CloseReason::HeartbeatTimeout,
                        format!("no packet for {idle:?}"),
                    );
                }
            }
        }
    }

    /// Writes what was drained. A write that takes longer than
    /// `write_timeout` means a client that stopped reading: it is cut, as a
    /// slow consumer, without waiting for its queue to overflow.
    async fn write<T: Transport>(
        &mut self,
        transport: &mut T,
        oldest_push: Option<std::time::Instant>,
    ) -> Result<(), End> {
        let write_timeout = self.node.config.write_timeout;
        let result = timeout(write_timeout, transport.send(&self.pending)).await;
        let written = self.pending.len();
        self.pending.clear();
        match result {
            Ok(Ok(())) => {
                self.node.metrics.written(written, oldest_push);
                Ok(())
            }
            Ok(Err(err)) => Err(End::Gone(err.to_string())),
            // The write was cut midway: the stream cannot carry op 6 any more.
            Err(_) => Err(End::Abort(CloseBody::new(
                CloseReason::SlowConsumer,
                Some(&format!("a write took longer than {write_timeout:?}")),
            ))),
        }
    }

    /// Answers one client packet.
    async fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet.op {
            Op::HEARTBEAT => {
                // Counts are reported every few seconds; a client that just
                // joined is online all the same.
                let count = self
                    .room
                    .as_deref()
                    .map_or(0, |room| self.node.online.count(room).max(1));
                self.reply(&packet, Op::HEARTBEAT_REPLY, count.to_be_bytes().to_vec());
                self.renew();
            }
            Op::SEND_MSG => self.receive(packet).await,
            Op::CHANGE_ROOM => {
                let room = parse_room(&packet.body)?;
                self.bucket
                    .change_room(self.key.clone(), self.id, room.clone())
                    .await
                    .map_err(|_| stopping())?;
                self.room = room;
                self.reply(&packet, Op::CHANGE_ROOM_REPLY, packet.body.clone());
            }
            Op::WATCH | Op::UNWATCH => {
                let ops = parse_ops(&packet.body)?;
                self.bucket
                    .watch(self.key.clone(), self.id, ops, packet.op == Op::WATCH)
                    .await
                    .map_err(|_| stopping())?;
                let reply_op = packet.op.reply().unwrap_or(Op::WATCH_REPLY);
                self.reply(&packet, reply_op, packet.body.clone());
            }
            Op::AUTH => return Err(End::protocol("already authenticated")),
            other => return Err(End::protocol(format!("{other} is not a client request"))),
        }
        Ok(())
    }

    /// Queues a reply like any other packet, so replies and pushes leave in
    /// order and in the same writes.
    fn reply(&self, request: &Packet, op: Op, body: impl Into<Bytes>) {
        if let Ok(encoded) = request.reply(op, body).encode() {
            // A full queue closes the connection; the loop sees it next.
            let _ = self.outbox.push(encoded);
        }
    }

    /// Renews the session with logic, at most once per `renew_interval`.
    fn renew(&mut self) {
        if self.last_renew.elapsed() < self.node.config.renew_interval {
            return;
        }
        self.last_renew = Instant::now();
        let (logic, mid, key) = (self.node.logic.clone(), self.mid, self.key.clone());
        tokio::spawn(async move {
            if let Err(status) = logic.heartbeat(mid, &key).await {
                warn!(mid, %key, error = %status.message(), "session renewal failed");
            }
        });
    }

    /// Forwards a client message to logic and acks it (op 5, same seq) once
    /// logic has it; if logic fails, the ack carries the error instead of
    /// pretending the message was delivered.
    async fn receive(&mut self, packet: Packet) {
        let limit = self
            .receives
            .get_or_insert_with(|| Arc::new(Semaphore::new(MAX_RECEIVES_IN_FLIGHT)))
            .clone();
        let Ok(permit) = limit.acquire_owned().await else {
            return;
        };
        let (logic, mid, outbox) = (self.node.logic.clone(), self.mid, self.outbox.clone());
        tokio::spawn(async move {
            let body = match logic.receive(mid, &packet).await {
                Ok(()) => Bytes::new(),
                Err(status) => {
                    let error = serde_json::json!({
                        "code": status.code() as i32,
                        "error": status.message(),
                    });
                    Bytes::from(error.to_string())
                }
            };
            if let Ok(ack) = packet.reply(Op::SEND_MSG_REPLY, body).encode() {
                let _ = outbox.push(ack);
            }
            drop(permit);
        });
    }
}

/// The end a transport error means, counting a `max_body` hit.
fn transport_end(node: &Node, err: TransportError) -> End {
    if err.is_too_large() {
        node.metrics.limit_hit("max_body");
    }
    err.into()
}

fn stopping() -> End {
    End::close(CloseReason::Draining, "the node is shutting down")
}

/// An op-12 body: a room id (`type://id`), or empty to leave the room.
fn parse_room(body: &[u8]) -> Result<Option<RoomId>, End> {
    if body.is_empty() {
        return Ok(None);
    }
    let room = std::str::from_utf8(body).map_err(|_| End::protocol("room id is not UTF-8"))?;
    if body.len() > MAX_ROOM_LEN || !room.contains("://") {
        return Err(End::protocol(format!(
            "room id must look like type://id and be at most {MAX_ROOM_LEN} bytes"
        )));
    }
    Ok(Some(room.into()))
}

/// An op-14/16 body: comma-separated ops.
fn parse_ops(body: &[u8]) -> Result<Vec<u32>, End> {
    let text = std::str::from_utf8(body).map_err(|_| End::protocol("ops are not UTF-8"))?;
    text.split(',')
        .map(str::trim)
        .filter(|op| !op.is_empty())
        .map(|op| {
            op.parse::<u32>()
                .map_err(|_| End::protocol(format!("{op:?} is not an op number")))
        })
        .collect()
}

/// Says the last words, then leaves the bucket and tells logic.
async fn finish<T: Transport>(transport: &mut T, node: &Node, session: Option<Session>, end: End) {
    match &end {
        End::Close(body) => {
            let reason = body.close_reason().unwrap_or(CloseReason::ServerError);
            node.metrics.closed(reason);
            match reason {
                CloseReason::SlowConsumer => node.metrics.limit_hit("send_queue"),
                CloseReason::HandshakeTimeout => node.metrics.limit_hit("handshake_timeout"),
                _ => {}
            }
            debug!(code = body.code, reason = %body.reason, "closing connection");
            let mut last = match (&session, reason) {
                // What a slow consumer did not read would only delay the close.
                (_, CloseReason::SlowConsumer) | (None, _) => Vec::new(),
                (Some(session), _) => session.pending.clone(),
            };
            if let Ok(close) = body.packet().encode() {
                last.push(close);
            }
            let _ = timeout(CLOSE_WRITE_TIMEOUT, async {
                if transport.send(&last).await.is_ok() {
                    transport.shutdown().await;
                }
            })
            .await;
        }
        End::Abort(body) => {
            let reason = body.close_reason().unwrap_or(CloseReason::ServerError);
            node.metrics.closed(reason);
            debug!(code = body.code, reason = %body.reason, "dropping connection");
        }
        End::Gone(why) => debug!(why, "connection ended"),
    }
    let Some(session) = session else { return };
    let _ = session
        .bucket
        .unregister(session.key.clone(), session.id)
        .await;
    let kicked =
        matches!(&end, End::Close(body) if body.close_reason() == Some(CloseReason::Kicked));
    if !kicked {
        // A kicked connection's key now belongs to the newer connection:
        // telling logic to drop it would drop the newer session.
        let (logic, mid, key) = (node.logic.clone(), session.mid, session.key.clone());
        tokio::spawn(async move {
            if let Err(status) = logic.disconnect(mid, &key).await {
                warn!(mid, %key, error = %status.message(), "disconnect not recorded by logic");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_must_be_type_and_id() {
        assert_eq!(parse_room(b"").ok(), Some(None));
        assert_eq!(
            parse_room(b"live://1000").ok().flatten().as_deref(),
            Some("live://1000")
        );
        assert!(parse_room(b"no-scheme").is_err());
        assert!(parse_room(&[0xff, b':', b'/', b'/']).is_err());
        assert!(parse_room(format!("t://{}", "x".repeat(300)).as_bytes()).is_err());
    }

    #[test]
    fn ops_are_comma_separated_numbers() {
        assert_eq!(parse_ops(b"1000, 1001,").ok(), Some(vec![1000, 1001]));
        assert_eq!(parse_ops(b"").ok(), Some(vec![]));
        assert!(parse_ops(b"1000,abc").is_err());
    }
}
