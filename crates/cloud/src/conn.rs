//! A client connection's whole life, for TCP and WebSocket alike, top to
//! bottom: authenticate, serve (one `select!` over the outbox and the
//! client's packets), close with a reason.
//!
//! A connection is given a [`ConnContext`]: what it uses and nothing more,
//! so a session runs against a fake logic and an in-memory transport in the
//! unit tests below, without a node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use imcloud_protocol::{CloseBody, CloseReason, EncodedPacket, Op, RoomId};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::bucket::{BucketHandle, Key, Member};
use crate::listener::Admitted;
use crate::logic::AuthError;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::silence::Silence;
use crate::transport::{Transport, TransportError};
use crate::wire;

/// Time the last words (queued packets and op 6) get before the socket is dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The same for a client that stopped reading: its socket is full, so only
/// a write it takes at once is worth making.
const SLOW_CLOSE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// Client messages (op 4) of one connection in flight to logic at once.
const MAX_RECEIVES_IN_FLIGHT: usize = 16;

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The server closes it and tells the client why (op 6).
    Close(CloseBody),
    /// The drain grace ran out: the connection is cut, nothing more said.
    Cut,
    /// The client said goodbye (a WebSocket Close, a TCP FIN): answered.
    Left,
    /// The socket failed; nothing more can be said.
    Gone(String),
}

impl End {
    fn close(reason: CloseReason, detail: impl AsRef<str>) -> End {
        End::Close(CloseBody::new(reason, Some(detail.as_ref())))
    }

    fn protocol(detail: impl AsRef<str>) -> End {
        End::close(CloseReason::ProtocolError, detail)
    }

    fn stopping() -> End {
        End::close(CloseReason::Draining, "the node is shutting down")
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

/// Serves one client from its first byte to its last. `admitted` is `None`
/// when the node is at its connection limit: the client is told so and
/// closed.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// async fn keeps a second copy of its arguments (the transport alone is
/// nearly 300 bytes) in every idle connection's state. What only lives
/// through the handshake or the close (the cookie among it) is boxed for
/// the same reason.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<T: Transport>(
    transport: T,
    ctx: Arc<ConnContext>,
    cookie: String,
    admitted: Option<Admitted>,
) -> impl Future<Output = ()> + Send {
    let open_connection = ctx.metrics.connection_open(T::NAME);
    let opening = Box::pin(open(transport, ctx.clone(), cookie, admitted.is_some()));
    async move {
        let Some((mut transport, mut session)) = opening.await else {
            return;
        };
        let end = session.run(&mut transport).await;
        Box::pin(finish(&mut transport, &ctx, Some(session), end)).await;
        drop((admitted, open_connection));
    }
}

/// Authenticates the client, or closes the connection with the reason
/// (connection limit, no auth in time, refused token...).
async fn open<T: Transport>(
    mut transport: T,
    ctx: Arc<ConnContext>,
    cookie: String,
    admitted: bool,
) -> Option<(T, Session)> {
    let authenticated = if admitted {
        authenticate(&mut transport, &ctx, cookie).await
    } else {
        Err(End::close(
            CloseReason::ConnectionLimit,
            "this node is full, or your address has too many connections",
        ))
    };
    match authenticated {
        Ok(session) => Some((transport, session)),
        Err(end) => {
            finish(&mut transport, &ctx, None, end).await;
            None
        }
    }
}

/// The first packet must be auth (op 7) within the handshake timeout; logic
/// verifies the token; the connection joins its bucket; op 8 answers.
async fn authenticate<T: Transport>(
    transport: &mut T,
    ctx: &Arc<ConnContext>,
    cookie: String,
) -> Result<Session, End> {
    let handshake = ctx.limits.handshake_timeout;
    let first = tokio::select! {
        () = ctx.shutdown.stop.cancelled() => return Err(End::stopping()),
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
        Ok(Some(Err(err))) => return Err(transport_end(&ctx.metrics, err)),
        Ok(Some(Ok(packet))) if packet.op != Op::AUTH => {
            return Err(End::protocol(format!(
                "the first packet must be auth (op 7), got {}",
                packet.op
            )));
        }
        Ok(Some(Ok(packet))) => packet,
    };

    let reply = ctx
        .logic
        .connect(auth.body.clone(), cookie)
        .await
        .map_err(|err| {
            let reason = match err {
                AuthError::Refused(_) => CloseReason::AuthFailed,
                AuthError::Unavailable(_) => CloseReason::LogicUnavailable,
            };
            ctx.metrics.auth_failed(reason);
            End::close(reason, err.to_string())
        })?;
    if reply.key.is_empty() {
        return Err(End::close(
            CloseReason::ServerError,
            "logic returned no key",
        ));
    }
    let rooms = Rooms::from_reply(&reply, ctx.limits.max_rooms).map_err(|why| {
        ctx.metrics.auth_failed(CloseReason::AuthFailed);
        End::close(CloseReason::AuthFailed, why)
    })?;

    let key: Key = reply.key.as_str().into();
    let heartbeat = u64::try_from(reply.heartbeat)
        .ok()
        .filter(|secs| *secs > 0)
        .map_or(ctx.limits.heartbeat, Duration::from_secs);
    // Held until the client's first packet, or this long: a resume (op 18)
    // sent right after auth is replayed before any live user push.
    let resume_wait = u64::try_from(reply.resume_wait_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let outbox = Arc::new(Outbox::new(
        ctx.limits.send_queue,
        T::FRAMING,
        transport.socket(),
        Silence::new(heartbeat * 2),
    ));
    if resume_wait.is_some() {
        outbox.hold();
    }
    transport.attach(&outbox);
    let session = Session {
        id: ctx.next_id.fetch_add(1, Ordering::Relaxed),
        mid: reply.mid,
        key: key.clone(),
        rooms: (!rooms.joined().is_empty() || rooms.restricts()).then(|| Box::new(rooms)),
        heartbeat,
        outbox,
        hold: resume_wait.map(|wait| Box::pin(sleep(wait))),
        acked: 0,
        bucket: ctx.buckets.for_key(&key).clone(),
        ctx: ctx.clone(),
        last_renew: Instant::now(),
        receives: None,
        pending: Vec::new(),
        written: 0,
    };
    let member = Member {
        id: session.id,
        mid: session.mid,
        outbox: session.outbox.clone(),
        rooms: session
            .rooms
            .as_ref()
            .map(|rooms| rooms.joined().to_vec())
            .unwrap_or_default(),
        platform: reply.platform.as_str().into(),
        accepts: reply
            .accepts
            .iter()
            .filter_map(|op| u32::try_from(*op).ok())
            .collect(),
    };
    if session.bucket.register(key, member).await.is_err() {
        return Err(End::stopping());
    }
    ctx.metrics.auth_ok();
    if ctx.shutdown.stop.is_cancelled() {
        // Registered after the drain began: leave with the others.
        session
            .outbox
            .close(CloseBody::new(CloseReason::Draining, None));
    }

    let identity = AuthReply {
        mid: reply.mid,
        key: &session.key,
        room_id: session.first_room().map_or("", |room| room),
        rooms: session.rooms.as_ref().map_or(&[], |rooms| rooms.joined()),
        heartbeat: session.heartbeat.as_secs(),
    };
    let body = serde_json::to_vec(&identity).unwrap_or_default();
    session.reply(&auth, Op::AUTH_REPLY, body);
    debug!(mid = session.mid, key = %session.key, "client authenticated");
    Ok(session)
}

/// The body of op 8: `room_id` is the first of `rooms`, for goim clients.
#[derive(Serialize)]
struct AuthReply<'a> {
    mid: i64,
    key: &'a str,
    room_id: &'a str,
    rooms: &'a [RoomId],
    heartbeat: u64,
}

/// An authenticated connection.
struct Session {
    id: u64,
    mid: i64,
    key: Key,
    /// `None` until the connection is in a room or its token limits joins.
    rooms: Option<Box<Rooms>>,
    heartbeat: Duration,
    outbox: Arc<Outbox>,
    /// While set, the outbox holds user pushes: until the client's first
    /// packet after auth, or this timer. Boxed: most connections never
    /// hold, and a timer would size every idle one's state.
    hold: Option<Pin<Box<Sleep>>>,
    /// The highest ack (op 20) forwarded to logic.
    acked: u64,
    bucket: BucketHandle,
    ctx: Arc<ConnContext>,
    last_renew: Instant,
    /// Limits client messages in flight to logic; made on the first op 4.
    receives: Option<Arc<Semaphore>>,
    /// Bytes drained from the outbox but not fully written yet.
    pending: Vec<Bytes>,
    /// Bytes of `pending` already on the wire: a write abandoned midway
    /// (its client stopped reading) is finished from here before op 6.
    written: usize,
}

impl Session {
    /// Serves the client until something ends the connection. A client
    /// silent for two heartbeats is closed by its bucket (see
    /// [`crate::silence`]), through the outbox like any other close.
    async fn run<T: Transport>(&mut self, transport: &mut T) -> End {
        let mut hold = self.hold.take();
        loop {
            // Unbiased: a busy outbox must not starve the client's packets.
            tokio::select! {
                () = self.ctx.shutdown.cut.cancelled() => return End::Cut,
                () = self.outbox.ready() => {
                    let drained = self.outbox.drain(&mut self.pending);
                    self.written = drained.written;
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
                    None => return End::Left,
                    Some(Err(err)) => return transport_end(&self.ctx.metrics, err),
                    Some(Ok(packet)) => {
                        self.outbox.silence().heard();
                        if hold.take().is_some() && packet.op != Op::RESUME {
                            // Not resuming: the held pushes go out now.
                            self.release(Vec::new(), 0);
                        }
                        // Boxed: client packets are rare (heartbeats), and the
                        // handler's future would otherwise size every idle connection.
                        if let Err(end) = Box::pin(self.handle(packet)).await {
                            return end;
                        }
                    }
                },
                () = async { hold.as_mut().expect("a hold").await }, if hold.is_some() => {
                    hold = None;
                    self.release(Vec::new(), 0);
                }
            }
        }
    }

    /// Ends the hold on user pushes (see [`Outbox::release`]), counting
    /// what went straight to the socket.
    fn release(&self, replay: Vec<EncodedPacket>, replayed: u32) {
        let (written, oldest) = self.outbox.release(replay, replayed);
        if written > 0 {
            self.ctx.metrics.written_directly(written, oldest);
        }
    }

    /// Writes what was drained. A client that stopped reading is closed as
    /// a slow consumer as soon as its queue overflows, even while a write
    /// to it is stuck, and at the latest when a write takes `write_timeout`.
    async fn write<T: Transport>(
        &mut self,
        transport: &mut T,
        oldest_push: Option<std::time::Instant>,
    ) -> Result<(), End> {
        let write_timeout = self.ctx.limits.write_timeout;
        let result = tokio::select! {
            result = timeout(write_timeout, transport.send(&self.pending, &mut self.written)) => result,
            close = self.outbox.overflowed() => return Err(End::Close(close)),
        };
        match result {
            Ok(Ok(())) => {
                self.ctx.metrics.written(self.pending.len(), oldest_push);
                self.pending.clear();
                self.written = 0;
                self.outbox.wrote();
                Ok(())
            }
            Ok(Err(err)) => Err(End::Gone(err.to_string())),
            Err(_) => Err(End::close(
                CloseReason::SlowConsumer,
                format!("a write took longer than {write_timeout:?}"),
            )),
        }
    }
}

/// The end a transport error means, counting a `max_body` hit.
fn transport_end(metrics: &Metrics, err: TransportError) -> End {
    if err.is_too_large() {
        metrics.limit_hit("max_body");
    }
    err.into()
}

/// Says the last words, then leaves the bucket and tells logic.
async fn finish<T: Transport>(
    transport: &mut T,
    ctx: &ConnContext,
    mut session: Option<Session>,
    end: End,
) {
    if let Some(session) = &session {
        // Nothing more reaches the client but what is said below.
        session.outbox.seal();
    }
    match &end {
        End::Close(body) => {
            let reason = body.close_reason().unwrap_or(CloseReason::ServerError);
            ctx.metrics.closed(reason);
            match reason {
                CloseReason::SlowConsumer => ctx.metrics.limit_hit("send_queue"),
                CloseReason::HandshakeTimeout => ctx.metrics.limit_hit("handshake_timeout"),
                _ => {}
            }
            debug!(code = body.code, reason = %body.reason, "closing connection");
            let slow = reason == CloseReason::SlowConsumer;
            let said = timeout(
                if slow {
                    SLOW_CLOSE_WRITE_TIMEOUT
                } else {
                    CLOSE_WRITE_TIMEOUT
                },
                last_words(transport, session.as_mut(), body, slow),
            )
            .await
            .is_ok_and(|said| said);
            if said && reason == CloseReason::Draining && linger(transport, &ctx.shutdown.cut).await
            {
                // Clients leave by themselves on op 6, each when it is
                // ready; the rest are cut when the drain grace runs out.
                ctx.metrics.limit_hit("drain_grace");
            }
            if said {
                let _ = timeout(CLOSE_WRITE_TIMEOUT, transport.shutdown(Some(body))).await;
            }
        }
        End::Cut => {
            ctx.metrics.closed(CloseReason::Draining);
            ctx.metrics.limit_hit("drain_grace");
            debug!("drain grace ran out; connection cut");
        }
        End::Left => {
            // Answer the client's close (RFC 6455 5.5.1), or send our FIN.
            let _ = timeout(CLOSE_WRITE_TIMEOUT, transport.shutdown(None)).await;
            debug!("client left");
        }
        End::Gone(why) => debug!(why, "connection ended"),
    }
    let Some(mut session) = session else { return };
    session.stop_counts();
    let _ = session
        .bucket
        .unregister(session.key.clone(), session.id)
        .await;
    let kicked =
        matches!(&end, End::Close(body) if body.close_reason() == Some(CloseReason::Kicked));
    if !kicked {
        // A kicked connection's key now belongs to the newer connection:
        // telling logic to drop it would drop the newer session.
        let (logic, mid, key) = (ctx.logic.clone(), session.mid, session.key.clone());
        ctx.shutdown.background.spawn(async move {
            let _ = logic.disconnect(mid, &key).await;
        });
    }
}

/// Writes what is owed before op 6, then op 6. A slow consumer is owed only
/// the rest of a write cut midway (so op 6 starts on a packet boundary);
/// everyone else gets every packet queued before the close. Returns whether
/// the client got it all.
async fn last_words<T: Transport>(
    transport: &mut T,
    session: Option<&mut Session>,
    body: &CloseBody,
    slow: bool,
) -> bool {
    if let Some(session) = session {
        if slow {
            // Only the packet a write was cut in is owed.
            let (cut, skip) = wire::locate(&session.pending, session.written);
            let owed = if skip > 0 { cut + 1 } else { cut };
            session.pending.truncate(owed);
        }
        if transport
            .send(&session.pending, &mut session.written)
            .await
            .is_err()
        {
            return false;
        }
    }
    let Ok(close) = body.packet().encode() else {
        return false;
    };
    transport
        .send(&[T::FRAMING.frame(&close)], &mut 0)
        .await
        .is_ok()
}

/// Reads and drops whatever a drained client still sends, until it leaves
/// (false) or the drain grace runs out (true).
async fn linger<T: Transport>(transport: &mut T, cut: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            () = cut.cancelled() => return true,
            received = transport.recv() => {
                if !matches!(received, Some(Ok(_))) {
                    return false;
                }
            }
        }
    }
}

mod context;
mod requests;
mod rooms;
#[cfg(test)]
mod tests;

pub(crate) use context::{ConnContext, ConnLimits, Shutdown};
use rooms::Rooms;
