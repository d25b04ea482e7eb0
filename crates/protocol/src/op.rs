//! Operation codes: what a packet means.

use std::fmt;

/// A packet's operation code.
///
/// A newtype rather than an enum because business ops (>= 1000) are the
/// backend's choice: any `u32` is a valid op on the wire, and only the cloud
/// node decides which ones a client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Op(pub u32);

impl Op {
    /// Client heartbeat (c->s).
    pub const HEARTBEAT: Op = Op(2);
    /// Heartbeat reply; body = u32 online count of the client's room (s->c).
    pub const HEARTBEAT_REPLY: Op = Op(3);
    /// Client message, forwarded to logic `Receive` (c->s).
    pub const SEND_MSG: Op = Op(4);
    /// Ack of a client message; echoes its seq (s->c).
    pub const SEND_MSG_REPLY: Op = Op(5);
    /// The server is closing the connection; body is a [`crate::CloseBody`] (s->c).
    pub const DISCONNECT: Op = Op(6);
    /// Authentication; body is the token (c->s). Must be the first packet.
    pub const AUTH: Op = Op(7);
    /// Authentication reply; body is the identity as JSON (s->c).
    pub const AUTH_REPLY: Op = Op(8);
    /// A batch of whole packets (s->c); see [`crate::BatchBuilder`].
    pub const BATCH: Op = Op(9);
    /// Change room; body = new room id, empty = leave (c->s).
    pub const CHANGE_ROOM: Op = Op(12);
    /// Change room reply; echoes the body (s->c).
    pub const CHANGE_ROOM_REPLY: Op = Op(13);
    /// Watch ops: body = comma-separated ops added to the accepts set (c->s).
    pub const WATCH: Op = Op(14);
    /// Watch reply; echoes the body (s->c).
    pub const WATCH_REPLY: Op = Op(15);
    /// Unwatch ops: body = comma-separated ops removed from the accepts set (c->s).
    pub const UNWATCH: Op = Op(16);
    /// Unwatch reply; echoes the body (s->c).
    pub const UNWATCH_REPLY: Op = Op(17);
    /// imcloud: resume, `{"since":N}`: replay the user's messages after N (c->s).
    pub const RESUME: Op = Op(18);
    /// imcloud: replay done, `{"last":M}` (+ `"reset":true,"oldest":K`) (s->c).
    pub const RESUMED: Op = Op(19);
    /// imcloud: ack, `{"ack":N}`: cumulative, no reply (c->s).
    pub const ACK: Op = Op(20);
    /// imcloud: join a room, `{"room":"type://id","count":bool}` (c->s).
    pub const JOIN_ROOM: Op = Op(22);
    /// imcloud: join answer, `{"room":..,"ok":true}` or `{"room":..,"error":..}` (s->c).
    pub const JOIN_ROOM_REPLY: Op = Op(23);
    /// imcloud: leave a room, `{"room":"type://id"}` (c->s).
    pub const LEAVE_ROOM: Op = Op(24);
    /// imcloud: leave answer, the same shape as op 23 (s->c).
    pub const LEAVE_ROOM_REPLY: Op = Op(25);
    /// imcloud: a room's online count changed, `{"room":..,"online":N}` (s->c).
    pub const ROOM_COUNT: Op = Op(26);
    /// The first business op: ops from here on are pushed by backends.
    pub const FIRST_BUSINESS: Op = Op(1000);

    /// The reply op the server answers a client request with, or `None` when
    /// a client may not send this op at all.
    pub fn reply(self) -> Option<Op> {
        match self {
            Op::HEARTBEAT => Some(Op::HEARTBEAT_REPLY),
            Op::SEND_MSG => Some(Op::SEND_MSG_REPLY),
            Op::AUTH => Some(Op::AUTH_REPLY),
            Op::CHANGE_ROOM => Some(Op::CHANGE_ROOM_REPLY),
            Op::WATCH => Some(Op::WATCH_REPLY),
            Op::UNWATCH => Some(Op::UNWATCH_REPLY),
            Op::JOIN_ROOM => Some(Op::JOIN_ROOM_REPLY),
            Op::LEAVE_ROOM => Some(Op::LEAVE_ROOM_REPLY),
            _ => None,
        }
    }

    /// Whether this is a business op, pushed by backends.
    pub fn is_business(self) -> bool {
        self >= Op::FIRST_BUSINESS
    }

    /// The protocol name of a protocol op, or `None` for business and unknown ops.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Op::HEARTBEAT => "heartbeat",
            Op::HEARTBEAT_REPLY => "heartbeat reply",
            Op::SEND_MSG => "send msg",
            Op::SEND_MSG_REPLY => "send msg reply",
            Op::DISCONNECT => "disconnect",
            Op::AUTH => "auth",
            Op::AUTH_REPLY => "auth reply",
            Op::BATCH => "batch",
            Op::CHANGE_ROOM => "change room",
            Op::CHANGE_ROOM_REPLY => "change room reply",
            Op::WATCH => "watch",
            Op::WATCH_REPLY => "watch reply",
            Op::UNWATCH => "unwatch",
            Op::UNWATCH_REPLY => "unwatch reply",
            Op::RESUME => "resume",
            Op::RESUMED => "resumed",
            Op::ACK => "ack",
            Op::JOIN_ROOM => "join room",
            Op::JOIN_ROOM_REPLY => "join room reply",
            Op::LEAVE_ROOM => "leave room",
            Op::LEAVE_ROOM_REPLY => "leave room reply",
            Op::ROOM_COUNT => "room count",
            _ => return None,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None if self.is_business() => write!(f, "business op {}", self.0),
            None => write!(f, "unknown op {}", self.0),
        }
    }
}

impl From<u32> for Op {
    fn from(op: u32) -> Self {
        Op(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_requests_have_replies_and_nothing_else_does() {
        let requests = [
            Op::HEARTBEAT,
            Op::SEND_MSG,
            Op::AUTH,
            Op::CHANGE_ROOM,
            Op::WATCH,
            Op::UNWATCH,
            Op::JOIN_ROOM,
            Op::LEAVE_ROOM,
        ];
        for op in requests {
            let reply = op.reply().expect("a client request has a reply");
            assert_eq!(reply.0, op.0 + 1, "{op} is answered by the next op");
        }
        for op in [
            0, 1, 3, 5, 6, 8, 9, 10, 11, 13, 15, 17, 18, 23, 25, 26, 999, 1000, 5000,
        ] {
            assert_eq!(Op(op).reply(), None, "{} is not a client request", Op(op));
        }
    }

    #[test]
    fn display_names_protocol_business_and_unknown_ops() {
        assert_eq!(Op::HEARTBEAT.to_string(), "heartbeat (2)");
        assert_eq!(Op(1001).to_string(), "business op 1001");
        assert_eq!(Op(99).to_string(), "unknown op 99");
        assert!(Op(1000).is_business() && !Op(999).is_business());
    }
}
