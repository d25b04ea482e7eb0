//! What an authenticated client may ask (heartbeat, op 4 messages, watched
//! ops, resume and ack; rooms are in [`super::rooms`]) and how each is
//! answered. Replies go through the outbox like pushes, so they leave in
//! order and in the same writes.

use std::sync::Arc;

use bytes::Bytes;
use imcloud_protocol::{CloseBody, CloseReason, EncodedPacket, Op, Packet};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Status;

use super::{End, MAX_RECEIVES_IN_FLIGHT, Session};
use crate::metrics::Metrics;
use crate::outbox::Outbox;

impl Session {
    /// Answers one client packet.
    pub(super) async fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet.op {
            Op::HEARTBEAT => {
                // Counts are reported every few seconds; a client that just
                // joined is online all the same.
                let count = self
                    .first_room()
                    .map_or(0, |room| self.ctx.online.count(room).max(1));
                self.reply(&packet, Op::HEARTBEAT_REPLY, count.to_be_bytes().to_vec());
                self.renew();
            }
            Op::SEND_MSG => self.receive(packet).await,
            Op::CHANGE_ROOM => self.change_room(&packet).await?,
            Op::JOIN_ROOM => self.join(&packet).await?,
            Op::LEAVE_ROOM => self.leave(&packet).await?,
            Op::WATCH | Op::UNWATCH => {
                let ops = parse_ops(&packet.body)?;
                self.bucket
                    .watch(self.key.clone(), self.id, ops, packet.op == Op::WATCH)
                    .await
                    .map_err(|_| End::stopping())?;
                let reply_op = packet.op.reply().unwrap_or(Op::WATCH_REPLY);
                self.reply(&packet, reply_op, packet.body.clone());
            }
            Op::RESUME => self.resume(&packet).await?,
            Op::ACK => self.ack(&packet)?,
            Op::AUTH => return Err(End::protocol("already authenticated")),
            other => return Err(End::protocol(format!("{other} is not a client request"))),
        }
        Ok(())
    }

    /// Sends a reply through the outbox like any other packet, so replies
    /// and pushes leave in order.
    pub(super) fn reply(&self, request: &Packet, op: Op, body: impl Into<Bytes>) {
        if let Ok(encoded) = request.reply(op, body).encode() {
            send(&self.outbox, &self.ctx.metrics, &encoded);
        }
    }

    /// Renews the session with logic, at most once per `renew_interval`.
    /// Failures are logged by the logic client, once per outage.
    fn renew(&mut self) {
        if self.last_renew.elapsed() < self.ctx.limits.renew_interval {
            return;
        }
        self.last_renew = Instant::now();
        let (logic, mid, key) = (self.ctx.logic.clone(), self.mid, self.key.clone());
        self.ctx.shutdown.background.spawn(async move {
            let _ = logic.heartbeat(mid, &key).await;
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
        let (logic, mid, outbox) = (self.ctx.logic.clone(), self.mid, self.outbox.clone());
        let metrics = self.ctx.metrics.clone();
        self.ctx.shutdown.background.spawn(async move {
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
                send(&outbox, &metrics, &ack);
            }
            drop(permit);
        });
    }
}

/// The body of op 18.
#[derive(Deserialize)]
struct Resume {
    since: u64,
}

/// The body of op 19.
#[derive(Serialize)]
struct Resumed {
    last: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reset: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest: Option<u64>,
}

/// The body of op 20.
#[derive(Deserialize)]
struct Ack {
    ack: u64,
}

/// A JSON body of an imcloud op, or the protocol error that names the shape.
pub(super) fn parse_body<T: DeserializeOwned>(packet: &Packet, shape: &str) -> Result<T, End> {
    serde_json::from_slice(&packet.body)
        .map_err(|err| End::protocol(format!("{} wants {shape}: {err}", packet.op)))
}

impl Session {
    /// Replays what the user's inbox keeps after the device's `since`, then
    /// op 19, then the user pushes held meanwhile (see [`Outbox::release`]).
    /// If logic cannot be asked, the connection is closed so the device
    /// comes back and resumes again: nothing it missed goes unsaid.
    async fn resume(&mut self, packet: &Packet) -> Result<(), End> {
        let Resume { since } = parse_body(packet, r#"{"since": N} with N >= 0"#)?;
        self.outbox.hold();
        let unavailable = |status: Status| {
            End::close(
                CloseReason::LogicUnavailable,
                format!("cannot read the inbox to resume: {}", status.message()),
            )
        };
        let logic = &self.ctx.logic;
        let mut kept = logic.inbox(self.mid, since).await.map_err(unavailable)?;
        // Above the latest: the inbox expired and numbering restarted, so
        // everything kept is new to the device.
        let restarted = since > kept.last;
        if restarted {
            kept = logic.inbox(self.mid, 0).await.map_err(unavailable)?;
        }
        let reset = restarted || (kept.last > since && kept.oldest > since + 1);
        let mut replay: Vec<EncodedPacket> = kept
            .messages
            .into_iter()
            .filter_map(|message| {
                let op = u32::try_from(message.op).ok()?;
                Packet::new(Op(op), seq_of(message.seq), message.body)
                    .encode()
                    .ok()
            })
            .collect();
        self.ctx.metrics.resumed(replay.len(), reset);
        let resumed = Resumed {
            last: kept.last,
            reset,
            oldest: reset.then_some(kept.oldest),
        };
        let body = serde_json::to_vec(&resumed).unwrap_or_default();
        if let Ok(done) = packet.reply(Op::RESUMED, body).encode() {
            replay.push(done);
        }
        self.release(replay, seq_of(kept.last));
        Ok(())
    }

    /// Forwards a device's cumulative ack to logic, once per new high; an
    /// ack above the user's latest sequence closes the connection.
    fn ack(&mut self, packet: &Packet) -> Result<(), End> {
        let Ack { ack } = parse_body(packet, r#"{"ack": N} with N >= 0"#)?;
        if ack <= self.acked {
            return Ok(());
        }
        self.acked = ack;
        let (logic, mid, outbox) = (self.ctx.logic.clone(), self.mid, self.outbox.clone());
        self.ctx.shutdown.background.spawn(async move {
            if let Err(status) = logic.ack(mid, ack).await
                && status.code() == tonic::Code::InvalidArgument
            {
                outbox.close(CloseBody::new(
                    CloseReason::ProtocolError,
                    Some(status.message()),
                ));
            }
        });
        Ok(())
    }
}

/// A user sequence number in a packet header (32 bits, like goim's seq).
fn seq_of(seq: u64) -> u32 {
    u32::try_from(seq).unwrap_or(u32::MAX)
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

/// Sends one packet of ours (not a push), counting it if it went straight
/// out. A full queue closes the connection; its loop sees that next.
fn send(outbox: &Outbox, metrics: &Metrics, packet: &EncodedPacket) {
    if outbox.push(packet) == Ok(true) {
        metrics.written_directly(1, None);
    }
}
