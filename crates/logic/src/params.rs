//! The HTTP API's request parameters in every form it accepts (query,
//! form, JSON; lists repeated, with brackets or commas), and the typed push
//! they make.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{StatusCode, header};
use imcloud_protocol::RoomId;
use serde_json::Value;

use crate::http::ApiError;
use crate::push::{Message, Target};

/// Request parameters from the query string and, for im-cloud style
/// routes, a form or JSON body. Lists may repeat a name (`keys=a&keys=b`),
/// use PHP brackets (`keys[]=a`) or commas (`keys=a,b`).
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn from_query(query: Option<&str>) -> Params {
        let mut params = Params::default();
        params.add_form(query.unwrap_or("").as_bytes());
        params
    }

    pub(crate) fn add_form(&mut self, form: &[u8]) {
        for (name, value) in form_urlencoded::parse(form) {
            let name = name.trim_end_matches("[]").to_owned();
            self.0.push((name, value.into_owned()));
        }
    }

    pub(crate) fn add_json(&mut self, body: &[u8]) -> Result<(), ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad(format!("body is not JSON: {err}")))?;
        let Value::Object(fields) = value else {
            return Err(ApiError::bad("JSON body must be an object"));
        };
        for (name, value) in fields {
            let values = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            for value in values {
                let text = match value {
                    Value::String(text) => text,
                    Value::Null => continue,
                    // A structured msg travels as its JSON text.
                    other => other.to_string(),
                };
                self.0.push((name.clone(), text));
            }
        }
        Ok(())
    }

    pub(crate) fn first(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub(crate) fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.first(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| ApiError::bad(format!("{name} {v:?} is not a number")))
            })
            .transpose()
    }

    pub(crate) fn mids(&self) -> Result<Vec<i64>, ApiError> {
        self.list("mids")
            .iter()
            .map(|mid| {
                mid.parse()
                    .map_err(|_| ApiError::bad(format!("mid {mid:?} is not a number")))
            })
            .collect()
    }

    /// The required `type` of the online routes.
    pub(crate) fn room_type(&self) -> Result<&str, ApiError> {
        self.first("type")
            .ok_or_else(|| ApiError::bad("type is required"))
    }

    /// `type` + `room` -> `type://room`; a full `type://id` room is taken as is.
    pub(crate) fn room(&self) -> Result<RoomId, ApiError> {
        let room = self.first("room").unwrap_or("");
        let parsed = match (self.first("type"), room) {
            (_, room) if room.contains("://") => RoomId::parse(room),
            (Some(kind), room) if !room.is_empty() => RoomId::from_parts(kind, room),
            _ => return Err(ApiError::bad("type and room are required")),
        };
        parsed.map_err(|err| ApiError::bad(err.to_string()))
    }
}

/// A push as the API takes it: who for, and the message.
#[derive(Debug)]
pub(crate) struct PushRequest {
    pub(crate) target: Target,
    pub(crate) message: Message,
}

impl PushRequest {
    /// The push of route `kind` (keys, mids, room, all) from `params`.
    pub(crate) fn parse(kind: &str, params: &Params, msg: Bytes) -> Result<PushRequest, ApiError> {
        let message = Message::new(params.number("operation")?, msg)?;
        let target = match kind {
            "keys" => Target::Keys(params.list("keys")),
            "mids" => Target::Mids(params.mids()?),
            "room" => Target::Room(params.room()?),
            "all" => Target::All {
                speed: params.number("speed")?.unwrap_or(0),
            },
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no push by {other:?}: use keys, mids, room or all"),
                ));
            }
        };
        Ok(PushRequest { target, message })
    }
}

/// `/{style}/push/{kind}`: `im` takes parameters and `msg` from the query,
/// a form or JSON; `goim` takes parameters from the query and the raw body
/// as the message.
impl<S: Send + Sync> FromRequest<S> for PushRequest {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let Path((style, kind)) = Path::<(String, String)>::from_request_parts(&mut parts, state)
            .await
            .map_err(|err| ApiError::new(StatusCode::NOT_FOUND, err.body_text()))?;
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let mut params = Params::from_query(parts.uri.query());
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|err| ApiError::new(err.status(), err.body_text()))?;
        match style.as_str() {
            "goim" => PushRequest::parse(&kind, &params, body),
            "im" => {
                if json || body.first() == Some(&b'{') {
                    params.add_json(&body)?;
                } else {
                    params.add_form(&body);
                }
                let msg = Bytes::from(params.first("msg").unwrap_or("").to_owned());
                PushRequest::parse(&kind, &params, msg)
            }
            other => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no push API {other:?}: use /im/push or /goim/push"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_accept_repeats_brackets_and_commas() {
        let params = Params::from_query(Some("keys=a&keys[]=b&keys=c,d&operation=1001"));
        assert_eq!(params.list("keys"), ["a", "b", "c", "d"]);
        assert_eq!(params.number::<i32>("operation").ok().flatten(), Some(1001));
    }

    #[test]
    fn json_bodies_keep_structured_messages_as_json_text() {
        let mut params = Params::default();
        params
            .add_json(br#"{"mids":[1,2],"msg":{"text":"hi"},"operation":1002}"#)
            .expect("json");
        assert_eq!(params.mids().ok(), Some(vec![1, 2]));
        assert_eq!(params.first("msg"), Some(r#"{"text":"hi"}"#));
        assert_eq!(params.first("operation"), Some("1002"));
    }

    #[test]
    fn rooms_come_from_type_and_room() {
        assert_eq!(
            Params::from_query(Some("type=live&room=1000"))
                .room()
                .ok()
                .as_deref(),
            Some("live://1000")
        );
        assert_eq!(
            Params::from_query(Some("room=live://7"))
                .room()
                .ok()
                .as_deref(),
            Some("live://7")
        );
        assert!(Params::from_query(Some("room=1000")).room().is_err());
        let bad = Params::from_query(Some("type=Live&room=1"))
            .room()
            .expect_err("bad type");
        assert!(bad.message.contains("room type"), "{}", bad.message);
        assert!(Params::from_query(Some("room=live://")).room().is_err());
        assert!(Params::from_query(Some("mids=x")).mids().is_err());
    }
}
