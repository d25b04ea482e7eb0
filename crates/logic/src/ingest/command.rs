//! A push command: one JSON object with the fields the HTTP API takes
//! (`keys`, `mids`, `room`, `msg`, `operation`, `speed`) plus `type`
//! (`keys`, `mids`, `room`, `all`) and an optional `id`. Validated by the
//! same code as an HTTP push.

use bytes::Bytes;
use serde_json::Value;

use crate::params::{Params, PushRequest};
use crate::push::{Message, Target};

/// A valid command.
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) target: Target,
    pub(crate) message: Message,
    /// Delivered at most once within the dedupe window, when set.
    pub(crate) id: Option<String>,
}

impl Command {
    /// The command in `payload`, or why it can never be delivered.
    pub(crate) fn parse(payload: &[u8]) -> Result<Command, String> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|err| format!("not JSON: {err}"))?;
        let Value::Object(mut fields) = value else {
            return Err("a command is a JSON object".to_owned());
        };
        let kind = match fields.remove("type") {
            Some(Value::String(kind)) => kind,
            _ => return Err(r#"type is required: "keys", "mids", "room" or "all""#.to_owned()),
        };
        let id = match fields.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if !id.is_empty() => Some(id),
            Some(Value::Number(id)) => Some(id.to_string()),
            Some(_) => return Err("id must be a non-empty string".to_owned()),
        };
        let mut params = Params::default();
        params
            .add_json(Value::Object(fields).to_string().as_bytes())
            .map_err(|err| err.message)?;
        let msg = Bytes::from(params.first("msg").unwrap_or("").to_owned());
        let request = PushRequest::parse(&kind, &params, msg).map_err(|err| err.message)?;
        Ok(Command {
            target: request.target,
            message: request.message,
            id,
        })
    }

    /// Whether delivering it numbers messages (a push by mid).
    pub(crate) fn numbered(&self) -> bool {
        matches!(self.target, Target::Mids(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_take_the_http_fields_and_a_type() {
        let mids =
            Command::parse(br#"{"type":"mids","mids":[1,2],"msg":"hi","id":"a1"}"#).expect("mids");
        assert!(matches!(&mids.target, Target::Mids(m) if m == &[1, 2]));
        assert_eq!(&mids.message.body[..], b"hi");
        let room =
            Command::parse(br#"{"type":"room","room":"live://7","msg":"x","operation":1001}"#)
                .expect("room");
        assert!(matches!(&room.target, Target::Room(r) if r.as_str() == "live://7"));
        assert_eq!(room.message.operation, 1001);
    }

    #[test]
    fn bad_commands_say_why() {
        for (payload, says) in [
            (&b"not json"[..], "not JSON"),
            (b"[1]", "JSON object"),
            (br#"{"mids":[1]}"#, "type is required"),
            (br#"{"type":"mids","mids":["x"],"msg":"m"}"#, "not a number"),
            (
                br#"{"type":"mids","mids":[1],"msg":"m","operation":5}"#,
                "reserved",
            ),
            (br#"{"type":"room","room":"Bad Room","msg":"m"}"#, "room"),
            (br#"{"type":"nope","msg":"m"}"#, "no push by"),
        ] {
            let err = Command::parse(payload).expect_err("refused");
            assert!(err.contains(says), "{payload:?}: {err}");
        }
    }
}
