//! Op-6 close reasons: why the server ends a connection, and whether the
//! client should come back.
//!
//! Codes follow Centrifugo's convention: 3000-3499 tell the client to
//! reconnect (with backoff), 3500-3999 tell it not to, because reconnecting
//! would fail the same way or fight another session.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Op, Packet, ProtocolError};

/// Why the server closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// An internal error on the server.
    ServerError,
    /// The node is shutting down or draining; reconnect to another node.
    Draining,
    /// The client did not read fast enough and its send queue overflowed.
    SlowConsumer,
    /// No packet arrived for two heartbeat intervals.
    HeartbeatTimeout,
    /// No auth packet arrived within the handshake timeout.
    HandshakeTimeout,
    /// The logic node (or the token verifier behind it) could not be reached.
    LogicUnavailable,
    /// The node or the client's address is at its connection limit.
    ConnectionLimit,
    /// The token was refused.
    AuthFailed,
    /// The client broke the wire protocol (bad header, oversized body,
    /// unknown op, text frame...).
    ProtocolError,
    /// A newer connection with the same key replaced this one.
    Kicked,
}

impl CloseReason {
    /// Every reason, for tests and metrics labels.
    pub const ALL: [CloseReason; 10] = [
        CloseReason::ServerError,
        CloseReason::Draining,
        CloseReason::SlowConsumer,
        CloseReason::HeartbeatTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::LogicUnavailable,
        CloseReason::ConnectionLimit,
        CloseReason::AuthFailed,
        CloseReason::ProtocolError,
        CloseReason::Kicked,
    ];

    /// The numeric code sent to the client.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ServerError => 3000,
            CloseReason::Draining => 3001,
            CloseReason::SlowConsumer => 3002,
            CloseReason::HeartbeatTimeout => 3003,
            CloseReason::HandshakeTimeout => 3004,
            CloseReason::LogicUnavailable => 3005,
            CloseReason::ConnectionLimit => 3006,
            CloseReason::AuthFailed => 3500,
            CloseReason::ProtocolError => 3501,
            CloseReason::Kicked => 3502,
        }
    }

    /// The short, stable text sent to the client (also a metrics label).
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ServerError => "server error",
            CloseReason::Draining => "draining",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::LogicUnavailable => "logic unavailable",
            CloseReason::ConnectionLimit => "connection limit",
            CloseReason::AuthFailed => "auth failed",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::Kicked => "kicked",
        }
    }

    /// Whether the client should reconnect (with backoff) after this close.
    pub fn reconnect(self) -> bool {
        self.code() < 3500
    }

    /// The reason for a code, if it is one of ours.
    pub fn from_code(code: u16) -> Option<CloseReason> {
        CloseReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The op-6 packet that tells the client; `detail` (if any) follows the
    /// reason's text, as in `protocol error: header_len is 12, expected 16`.
    pub fn packet(self, detail: Option<&str>) -> Packet {
        CloseBody::new(self, detail).packet()
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// The JSON body of an op-6 packet:
/// `{"code":3002,"reason":"slow consumer","reconnect":true}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseBody {
    /// One of [`CloseReason::code`].
    pub code: u16,
    /// Human-readable reason: the reason's text, then any detail.
    pub reason: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
    /// When set, the client should wait this long before reconnecting
    /// (drains spread their clients' reconnects out with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl CloseBody {
    /// The body for `reason`, with optional detail.
    pub fn new(reason: CloseReason, detail: Option<&str>) -> Self {
        CloseBody {
            code: reason.code(),
            reason: match detail {
                Some(detail) => format!("{}: {detail}", reason.text()),
                None => reason.text().to_owned(),
            },
            reconnect: reason.reconnect(),
            retry_after_ms: None,
        }
    }

    /// The reason this body's code stands for, if known.
    pub fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.code)
    }

    /// The op-6 packet carrying this body.
    pub fn packet(&self) -> Packet {
        // Serializing a struct of plain fields cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        Packet::new(Op::DISCONNECT, 0, Bytes::from(json))
    }

    /// Reads the body of an op-6 packet.
    pub fn parse(body: &[u8]) -> Result<CloseBody, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

impl From<&ProtocolError> for CloseBody {
    fn from(err: &ProtocolError) -> Self {
        CloseBody::new(CloseReason::ProtocolError, Some(&err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let codes: HashSet<u16> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), CloseReason::ALL.len());
        for reason in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(CloseReason::from_code(4000), None);
    }

    #[test]
    fn only_transient_reasons_ask_for_a_reconnect() {
        let reconnect: Vec<_> = CloseReason::ALL
            .into_iter()
            .filter(|r| r.reconnect())
            .collect();
        assert!(reconnect.contains(&CloseReason::Draining));
        assert!(reconnect.contains(&CloseReason::SlowConsumer));
        assert!(reconnect.contains(&CloseReason::HeartbeatTimeout));
        for terminal in [
            CloseReason::AuthFailed,
            CloseReason::ProtocolError,
            CloseReason::Kicked,
        ] {
            assert!(!terminal.reconnect(), "{terminal} must not reconnect");
        }
    }

    #[test]
    fn close_packet_is_op_6_with_json_body() {
        let packet = CloseReason::SlowConsumer.packet(None);
        assert_eq!(packet.op, Op::DISCONNECT);
        assert_eq!(
            &packet.body[..],
            br#"{"code":3002,"reason":"slow consumer","reconnect":true}"#
        );
        let body = CloseBody::parse(&packet.body).expect("parse");
        assert_eq!(body.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn protocol_errors_become_a_detailed_close() {
        let body = CloseBody::from(&ProtocolError::BadHeaderLen(12));
        assert_eq!(body.code, 3501);
        assert_eq!(body.reason, "protocol error: header_len is 12, expected 16");
        assert!(!body.reconnect);
    }

    #[test]
    fn retry_hint_is_carried_when_set() {
        let mut body = CloseBody::new(CloseReason::Draining, None);
        body.retry_after_ms = Some(1500);
        let parsed = CloseBody::parse(&body.packet().body).expect("parse");
        assert_eq!(parsed.retry_after_ms, Some(1500));
        assert!(parsed.reconnect);
    }
}
