//! imbench's modes as a library, so its own tests run them on small N
//! against in-process servers.

pub mod conns;
pub mod drain;
pub mod fanout;
pub mod httpfloor;
pub mod ingest;
mod jetstream;
pub mod push;
pub mod raw;
pub mod stats;
mod wsframe;

use std::time::{SystemTime, UNIX_EPOCH};

use imcloud_logic::{Claims, Jwt};

/// A token for imcloud's default (development) JWT secret, or `secret`.
pub fn token(secret: &str, mid: i64, room: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let claims = Claims {
        mid: Some(mid),
        room_id: room.to_owned(),
        accepts: vec![1000],
        exp,
        ..Claims::default()
    };
    Jwt::mint_hs256(secret.as_bytes(), &claims).unwrap_or_default()
}
