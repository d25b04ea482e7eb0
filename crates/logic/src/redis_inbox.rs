//! Users' inboxes in Redis, beside the sessions and in the same style:
//!
//! - `inbox_seq_<mid>`: string, the user's last sequence number;
//! - `inbox_<mid>`: sorted set, score = sequence number, member =
//!   `<seq>:<op>:<body>` (the body's bytes as they are).
//!
//! One Lua script numbers, keeps, trims and sets both TTLs, atomically, so
//! logic nodes numbering the same user at once never skip nor repeat a
//! number. A push to many users is one pipeline: one round trip.

use async_trait::async_trait;
use bytes::Bytes;

use crate::inbox::{InboxStore, Kept, Since};
use crate::redis_store::RedisStore;
use crate::session::StoreError;

/// KEYS: the counter, the inbox. ARGV: op, body, max kept, TTL (s).
pub(crate) const STORE_MESSAGE: &str = r"
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. ':' .. ARGV[1] .. ':' .. ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return seq
";

impl RedisStore {
    fn seq_key(&self, mid: i64) -> String {
        self.prefixed(format_args!("inbox_seq_{mid}"))
    }

    fn inbox_key(&self, mid: i64) -> String {
        self.prefixed(format_args!("inbox_{mid}"))
    }
}

/// A member of an inbox set: `<seq>:<op>:<body>`.
fn parse_member(member: &[u8]) -> Option<Kept> {
    let mut parts = member.splitn(3, |byte| *byte == b':');
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let op = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let body = Bytes::copy_from_slice(parts.next()?);
    Some(Kept { seq, op, body })
}

#[async_trait]
impl InboxStore for RedisStore {
    async fn store(&self, mids: &[i64], op: i32, body: &Bytes) -> Result<Vec<u64>, StoreError> {
        if mids.is_empty() {
            return Ok(Vec::new());
        }
        let (max, ttl) = (self.inbox.max, self.inbox.ttl.as_secs().max(1));
        let mut pipe = redis::pipe();
        // Loaded once per pipeline, so a Redis that restarted (and forgot
        // its scripts) never fails a push with NOSCRIPT.
        pipe.cmd("SCRIPT").arg("LOAD").arg(STORE_MESSAGE).ignore();
        for mid in mids {
            pipe.cmd("EVALSHA")
                .arg(self.store_message.get_hash())
                .arg(2)
                .arg(self.seq_key(*mid))
                .arg(self.inbox_key(*mid))
                .arg(op)
                .arg(&body[..])
                .arg(max)
                .arg(ttl);
        }
        self.run(async |mut conn| pipe.query_async::<Vec<u64>>(&mut conn).await)
            .await
    }

    async fn since(&self, mid: i64, since: u64) -> Result<Since, StoreError> {
        let (seq_key, inbox_key) = (self.seq_key(mid), self.inbox_key(mid));
        let (last, oldest, members): (Option<u64>, Vec<(Vec<u8>, u64)>, Vec<Vec<u8>>) = self
            .run(async |mut conn| {
                redis::pipe()
                    .get(&seq_key)
                    .zrange_withscores(&inbox_key, 0, 0)
                    .zrangebyscore(&inbox_key, format!("({since}"), "+inf")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Since {
            last: last.unwrap_or(0),
            oldest: oldest.first().map_or(0, |(_, seq)| *seq),
            messages: members.iter().filter_map(|m| parse_member(m)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_bodies_with_colons_and_any_bytes() {
        let kept = parse_member(b"12:1001:a:b\xff").expect("member");
        assert_eq!((kept.seq, kept.op), (12, 1001));
        assert_eq!(&kept.body[..], b"a:b\xff");
        assert!(parse_member(b"x:1:").is_none());
    }
}
