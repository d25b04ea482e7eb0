//! Room ids: `type://id`, checked once where a room enters (a token's
//! claim, op 12, the HTTP and gRPC APIs), so no later code checks again.
//!
//! The rules (docs/protocol.md):
//! - at most [`MAX_ROOM_LEN`] bytes of UTF-8;
//! - a type of one or more `[a-z0-9_-]`, then `://`;
//! - an id of one or more characters, none of them whitespace or control.

use std::fmt;
use std::sync::Arc;

/// Longest room id, in bytes.
pub const MAX_ROOM_LEN: usize = 256;

/// A valid room id. Cheap to clone: rooms are map keys in every bucket.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

/// Which rule a room id broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRoomId {
    /// The bytes are not UTF-8.
    #[error("room id is not UTF-8")]
    NotUtf8,
    /// Longer than [`MAX_ROOM_LEN`].
    #[error("room id is {0} bytes; the limit is {MAX_ROOM_LEN}")]
    TooLong(usize),
    /// No `://` between a type and an id.
    #[error("room id {0:?} must look like type://id")]
    NoSeparator(String),
    /// The type is empty or has a character outside `[a-z0-9_-]`.
    #[error("room type {0:?} must be one or more of a-z, 0-9, '_' and '-'")]
    BadType(String),
    /// The id is empty.
    #[error("room id {0:?} has an empty id after '://'")]
    EmptyId(String),
    /// The id holds whitespace or a control character.
    #[error("room id {0:?} must not contain whitespace or control characters")]
    BadId(String),
}

impl RoomId {
    /// Checks `text` against the rules.
    pub fn parse(text: &str) -> Result<RoomId, BadRoomId> {
        if text.len() > MAX_ROOM_LEN {
            return Err(BadRoomId::TooLong(text.len()));
        }
        let Some((kind, id)) = text.split_once("://") else {
            return Err(BadRoomId::NoSeparator(text.to_owned()));
        };
        let type_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if kind.is_empty() || !kind.chars().all(type_char) {
            return Err(BadRoomId::BadType(kind.to_owned()));
        }
        if id.is_empty() {
            return Err(BadRoomId::EmptyId(text.to_owned()));
        }
        if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BadRoomId::BadId(text.to_owned()));
        }
        Ok(RoomId(text.into()))
    }

    /// A room id from raw bytes (a client packet's body).
    pub fn from_bytes(bytes: &[u8]) -> Result<RoomId, BadRoomId> {
        RoomId::parse(std::str::from_utf8(bytes).map_err(|_| BadRoomId::NotUtf8)?)
    }

    /// `kind://id`, as goim's APIs name a room by its two halves.
    pub fn from_parts(kind: &str, id: &str) -> Result<RoomId, BadRoomId> {
        RoomId::parse(&format!("{kind}://{id}"))
    }

    /// The whole id, `type://id`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The type, before `://`.
    pub fn kind(&self) -> &str {
        self.0.split_once("://").map_or("", |(kind, _)| kind)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::ops::Deref for RoomId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for RoomId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for RoomId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RoomId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        RoomId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional room where goim writes "no room" as `""`.
pub mod optional {
    use super::RoomId;
    use serde::{Deserialize, Deserializer, Serializer};

    /// `""` (or null) is no room; anything else must be a valid room id.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<RoomId>, D::Error> {
        let text = Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        match text.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => RoomId::parse(text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    /// No room is written `""`.
    pub fn serialize<S: Serializer>(
        room: &Option<RoomId>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(room.as_deref().unwrap_or(""))
    }
}

/// Which rooms a token lets its connection join (its `allow_rooms` claim):
/// a room id (`chat://42`), or a prefix ending in `*` (`group://*`, or `*`
/// for every room).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomPattern(Box<str>);

/// A pattern with a `*` anywhere but at its end, or none at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRoomPattern {
    /// Neither a room id nor a prefix ending in `*`.
    #[error("room pattern {0:?} is neither a room id nor a prefix ending in '*': {1}")]
    NotARoom(String, BadRoomId),
    /// A prefix (ending in `*`) with another `*` in it.
    #[error("room pattern {0:?} may hold '*' only at its end")]
    InnerStar(String),
}

impl RoomPattern {
    /// Checks a pattern: a valid room id, or any prefix of one then `*`.
    pub fn parse(text: &str) -> Result<RoomPattern, BadRoomPattern> {
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(BadRoomPattern::InnerStar(text.to_owned())),
            Some(_) => Ok(RoomPattern(text.into())),
            // A room id may itself hold a `*`: then it is matched exactly.
            None => RoomId::parse(text)
                .map(|_| RoomPattern(text.into()))
                .map_err(|err| BadRoomPattern::NotARoom(text.to_owned(), err)),
        }
    }

    /// Whether `room` is one this pattern allows.
    pub fn allows(&self, room: &RoomId) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => *self.0 == **room,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RoomId {
    type Err = BadRoomId;

    fn from_str(text: &str) -> Result<RoomId, BadRoomId> {
        RoomId::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_allow_their_room_or_their_prefix() {
        let room = |text| RoomId::parse(text).expect(text);
        let exact = RoomPattern::parse("chat://42").expect("exact");
        assert!(exact.allows(&room("chat://42")));
        assert!(!exact.allows(&room("chat://420")));
        let prefix = RoomPattern::parse("group://*").expect("prefix");
        assert!(prefix.allows(&room("group://7")));
        assert!(!prefix.allows(&room("groups://7")));
        assert!(
            RoomPattern::parse("*")
                .expect("all")
                .allows(&room("dm://a"))
        );
        assert!(matches!(
            RoomPattern::parse("group*://x*"),
            Err(BadRoomPattern::InnerStar(_))
        ));
        assert!(matches!(
            RoomPattern::parse("lobby"),
            Err(BadRoomPattern::NotARoom(..))
        ));
    }

    #[test]
    fn good_rooms_parse() {
        for good in [
            "live://1000",
            "chat://42",
            "group_2-b://x/y:z",
            "dm://alice@bob",
            "t://é",
        ] {
            let room = RoomId::parse(good).expect(good);
            assert_eq!(room.as_str(), good);
        }
        assert_eq!(
            RoomId::from_parts("live", "7").expect("room").kind(),
            "live"
        );
    }

    #[test]
    fn each_rule_names_itself() {
        type Rule = fn(&BadRoomId) -> bool;
        let cases: [(&[u8], Rule); 8] = [
            (b"\xff://1", |e| matches!(e, BadRoomId::NotUtf8)),
            (b"no-separator", |e| matches!(e, BadRoomId::NoSeparator(_))),
            (b"://1", |e| matches!(e, BadRoomId::BadType(_))),
            (b"Live://1", |e| matches!(e, BadRoomId::BadType(_))),
            (b"li ve://1", |e| matches!(e, BadRoomId::BadType(_))),
            (b"live://", |e| matches!(e, BadRoomId::EmptyId(_))),
            (b"live://a b", |e| matches!(e, BadRoomId::BadId(_))),
            (b"live://a\x07", |e| matches!(e, BadRoomId::BadId(_))),
        ];
        for (bytes, rule) in cases {
            let err = RoomId::from_bytes(bytes).expect_err("refused");
            assert!(rule(&err), "{bytes:?}: {err}");
        }
        let long = format!("t://{}", "x".repeat(MAX_ROOM_LEN));
        assert_eq!(RoomId::parse(&long), Err(BadRoomId::TooLong(long.len())));
        let exactly = format!("t://{}", "x".repeat(MAX_ROOM_LEN - 4));
        assert!(RoomId::parse(&exactly).is_ok());
    }
}
