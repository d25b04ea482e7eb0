//! The rooms a connection is in, and the requests that change them: op 22
//! (join), op 24 (leave) and goim's op 12 (leave every room, join one).
//! A join is checked here first (the room id, `max_rooms`, the token's
//! `allow_rooms`), then by logic (its join webhook), then made so in the
//! bucket, and only then answered: a refused join never lets a push in.

use imcloud_proto::logic::ConnectReply;
use imcloud_protocol::{Op, Packet, RoomId, RoomPattern};
use serde::{Deserialize, Serialize};

use super::requests::parse_body;
use super::{End, Session};
use crate::logic::AuthError;

/// A connection's rooms. Boxed in the session (most connections are in at
/// most one room and never change it; an idle one pays a pointer).
#[derive(Debug, Default)]
pub(super) struct Rooms {
    /// In the order joined: the first is the room goim clients know.
    joined: Vec<RoomId>,
    /// What op 22 and op 12 may join; empty: any room.
    allow: Vec<RoomPattern>,
    /// The joined rooms whose counts this connection asked for (op 26).
    counted: Vec<RoomId>,
}

impl Rooms {
    /// The rooms and patterns logic's Connect answer names (`room_id`
    /// first, then `rooms`), or why the token cannot be served here.
    pub(super) fn from_reply(reply: &ConnectReply, max_rooms: usize) -> Result<Rooms, String> {
        let mut joined: Vec<RoomId> = Vec::new();
        let named = std::iter::once(&reply.room_id).chain(&reply.rooms);
        for room in named.filter(|room| !room.is_empty()) {
            let room = RoomId::parse(room).map_err(|err| format!("the token's room: {err}"))?;
            if !joined.contains(&room) {
                joined.push(room);
            }
        }
        if joined.len() > max_rooms {
            return Err(format!(
                "the token names {} rooms; this node allows {max_rooms} per connection (max_rooms)",
                joined.len()
            ));
        }
        let mut allow = reply
            .allow_rooms
            .iter()
            .map(|pattern| RoomPattern::parse(pattern).map_err(|err| err.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if !allow.is_empty() {
            // What the token joined, it may join again after leaving.
            allow.extend(
                joined
                    .iter()
                    .filter_map(|room| RoomPattern::parse(room).ok()),
            );
        }
        Ok(Rooms {
            joined,
            allow,
            counted: Vec::new(),
        })
    }

    pub(super) fn joined(&self) -> &[RoomId] {
        &self.joined
    }

    /// Whether the token limits what may be joined.
    pub(super) fn restricts(&self) -> bool {
        !self.allow.is_empty()
    }

    fn allows(&self, room: &RoomId) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|pattern| pattern.allows(room))
    }
}

/// The body of op 22 and op 24.
#[derive(Deserialize)]
struct RoomRequest {
    room: String,
    /// Op 22: send the room's online count (op 26) now and as it changes.
    #[serde(default)]
    count: bool,
}

/// The body of op 23 and op 25.
#[derive(Serialize)]
struct RoomAnswer<'a> {
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl RoomAnswer<'_> {
    fn body(room: &str, outcome: &Result<(), String>) -> Vec<u8> {
        let answer = RoomAnswer {
            room,
            ok: outcome.is_ok().then_some(true),
            error: outcome.as_ref().err().map(String::as_str),
        };
        serde_json::to_vec(&answer).unwrap_or_default()
    }
}

impl Session {
    /// The room goim clients know: the first joined.
    pub(super) fn first_room(&self) -> Option<&RoomId> {
        self.rooms.as_ref()?.joined.first()
    }

    /// Op 22: joins a room, or says why not; the connection goes on either way.
    pub(super) async fn join(&mut self, packet: &Packet) -> Result<(), End> {
        let RoomRequest { room, count } =
            parse_body(packet, r#"{"room": "type://id", "count": bool}"#)?;
        let (outcome, id) = match RoomId::parse(&room) {
            Ok(id) => (self.enter(id.clone(), false).await?, Some(id)),
            Err(err) => (Err(err.to_string()), None),
        };
        self.reply(
            packet,
            Op::JOIN_ROOM_REPLY,
            RoomAnswer::body(&room, &outcome),
        );
        // Counted after the answer, so op 26 follows op 23.
        if let (Ok(()), Some(id), true) = (&outcome, id, count) {
            self.count(id);
        }
        Ok(())
    }

    /// Has the room's online count sent to this connection (op 26).
    fn count(&mut self, room: RoomId) {
        let rooms = self.rooms.get_or_insert_default();
        if !rooms.counted.contains(&room) {
            rooms.counted.push(room.clone());
            self.ctx.counts.watch(room, self.id, self.outbox.clone());
        }
    }

    /// Stops every count this connection asked for (it is closing).
    pub(super) fn stop_counts(&mut self) {
        if let Some(rooms) = self.rooms.as_mut() {
            for room in rooms.counted.drain(..) {
                self.ctx.counts.unwatch(room, self.id);
            }
        }
    }

    /// Stops the counts of the rooms this connection is no longer in.
    fn uncount(&mut self) {
        let Some(rooms) = self.rooms.as_mut() else {
            return;
        };
        let joined = &rooms.joined;
        let counts = &self.ctx.counts;
        rooms.counted.retain(|room| {
            let keep = joined.contains(room);
            if !keep {
                counts.unwatch(room.clone(), self.id);
            }
            keep
        });
    }

    /// Op 24: leaves a room (a room not joined is left already).
    pub(super) async fn leave(&mut self, packet: &Packet) -> Result<(), End> {
        let RoomRequest { room, .. } = parse_body(packet, r#"{"room": "type://id"}"#)?;
        let outcome = match RoomId::parse(&room) {
            Ok(id) => {
                let mut joined = self
                    .rooms
                    .as_ref()
                    .map(|r| r.joined.clone())
                    .unwrap_or_default();
                if joined.contains(&id) {
                    joined.retain(|r| *r != id);
                    self.set_rooms(joined).await?;
                }
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        };
        self.reply(
            packet,
            Op::LEAVE_ROOM_REPLY,
            RoomAnswer::body(&room, &outcome),
        );
        Ok(())
    }

    /// Op 12, goim's change room: leaves every room and joins the one named
    /// (an empty body joins none). Answered by op 13 echoing the body; a
    /// room refused (by `allow_rooms` or the join webhook) is answered by
    /// op 13 with op 23's error shape, and the connection keeps the rooms it
    /// had.
    pub(super) async fn change_room(&mut self, packet: &Packet) -> Result<(), End> {
        let outcome = match &packet.body[..] {
            b"" => self.set_rooms(Vec::new()).await.map(|()| Ok(()))?,
            // goim clients know no refusal shape: a malformed room is a
            // protocol error, as it always was.
            body => {
                let room =
                    RoomId::from_bytes(body).map_err(|err| End::protocol(err.to_string()))?;
                self.enter(room, true).await?
            }
        };
        let body = match &outcome {
            Ok(()) => packet.body.to_vec(),
            Err(_) => RoomAnswer::body(&String::from_utf8_lossy(&packet.body), &outcome),
        };
        self.reply(packet, Op::CHANGE_ROOM_REPLY, body);
        Ok(())
    }

    /// Joins `room` (alone, for op 12, or beside the others), once checked
    /// here and by logic. The outer error ends the connection (the node is
    /// stopping); the inner one is the refusal the client is told.
    async fn enter(&mut self, room: RoomId, alone: bool) -> Result<Result<(), String>, End> {
        let rooms = self.rooms.get_or_insert_default();
        if rooms.joined.contains(&room) && (!alone || rooms.joined.len() == 1) {
            return Ok(Ok(()));
        }
        let max_rooms = self.ctx.limits.max_rooms;
        if !alone && rooms.joined.len() >= max_rooms {
            self.ctx.metrics.limit_hit("max_rooms");
            return Ok(Err(format!(
                "this connection is in {max_rooms} rooms, the most allowed (max_rooms)"
            )));
        }
        if !rooms.allows(&room) {
            return Ok(Err(format!(
                "the token's allow_rooms does not include {room}"
            )));
        }
        let mut joined = if alone {
            Vec::new()
        } else {
            rooms.joined.clone()
        };
        if let Err(err) = self.ctx.logic.join(self.mid, &self.key, &room).await {
            return Ok(Err(match err {
                AuthError::Refused(reason) => format!("refused: {reason}"),
                AuthError::Unavailable(why) => format!("cannot be checked now, try again: {why}"),
            }));
        }
        joined.push(room);
        self.set_rooms(joined).await?;
        Ok(Ok(()))
    }

    /// Makes `joined` the connection's rooms, in its bucket and here.
    async fn set_rooms(&mut self, joined: Vec<RoomId>) -> Result<(), End> {
        self.bucket
            .set_rooms(self.key.clone(), self.id, joined.clone())
            .await
            .map_err(|_| End::stopping())?;
        self.rooms.get_or_insert_default().joined = joined;
        self.uncount();
        Ok(())
    }
}
