//! Users' inboxes in Redis, beside the sessions and in the same style:
//!
//! - `inbox_seq_<mid>`: string, the user's last sequence number;
//! - `inbox_<mid>`: sorted set, score = sequence number, member =
//!   `<seq>:<op>:<body>` (the body's bytes as they are);
//! - `inbox_ack_<mid>`: string, the highest sequence number acknowledged;
//! - `inbox_push_<id>`: hash, mid -> the sequence number a push with that
//!   id got, for `dedupe_window` (only for pushes that carry an id);
//! - `inbox_due`: sorted set (all users), score = when the message is due
//!   for the offline webhook (Redis time, ms), member = `<mid>:<seq>:<attempt>`;
//!   only written while an offline webhook is configured.
//!
//! One Lua script numbers, keeps, trims and sets the TTLs, atomically, so
//! logic nodes numbering the same user at once never skip nor repeat a
//! number. A push to many users is one pipeline: one round trip.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;

use crate::inbox::{Acked, InboxStore, Kept, Since, Unacked};
use crate::redis_store::RedisStore;
use crate::session::StoreError;

/// KEYS: the counter, the inbox, the acks, the due set, the push's ids.
/// ARGV: op, body, max kept, TTL (s), ack timeout (ms, 0: not due for a
/// webhook), mid, id window (ms, 0: the push has no id).
pub(crate) const STORE_MESSAGE: &str = r"
local once = tonumber(ARGV[7]) > 0
if once then
  local seen = redis.call('HGET', KEYS[5], ARGV[6])
  if seen then return tonumber(seen) end
end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. ':' .. ARGV[1] .. ':' .. ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if tonumber(ARGV[5]) > 0 then
  local now = redis.call('TIME')
  local due = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[5])
  redis.call('ZADD', KEYS[4], due, ARGV[6] .. ':' .. seq .. ':0')
end
if once then
  redis.call('HSET', KEYS[5], ARGV[6], seq)
  redis.call('PEXPIRE', KEYS[5], ARGV[7])
end
return seq
";

/// KEYS: the counter, the acks, the due set. ARGV: the ack, mid, max kept.
/// Returns the latest sequence number, negated when the ack is above it.
const ACK: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local ack = tonumber(ARGV[1])
if ack > last then return -last - 1 end
local acked = tonumber(redis.call('GET', KEYS[2]) or '0')
if ack > acked then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[2], ack, 'PX', ttl) end
  for seq = math.max(acked, ack - tonumber(ARGV[3])) + 1, ack do
    redis.call('ZREM', KEYS[3], ARGV[2] .. ':' .. seq .. ':0')
  end
end
return last
";

/// KEYS: the due set. ARGV: how many, lease (ms). Leases the due members.
const CLAIM_DUE: &str = r"
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), member)
end
return due
";

/// KEYS: the due set. ARGV: the claimed member, delay (ms, < 0: done), the
/// member of the next attempt. Settles a claim.
const RESCHEDULE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) >= 0 then
  local now = redis.call('TIME')
  local due = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], due, ARGV[3])
end
return 0
";

/// The scripts of the inbox, hashed once.
pub(crate) struct InboxScripts {
    pub(crate) store_message: Script,
    ack: Script,
    claim_due: Script,
    reschedule: Script,
}

impl Default for InboxScripts {
    fn default() -> Self {
        InboxScripts {
            store_message: Script::new(STORE_MESSAGE),
            ack: Script::new(ACK),
            claim_due: Script::new(CLAIM_DUE),
            reschedule: Script::new(RESCHEDULE),
        }
    }
}

impl RedisStore {
    fn seq_key(&self, mid: i64) -> String {
        self.prefixed(format_args!("inbox_seq_{mid}"))
    }

    fn inbox_key(&self, mid: i64) -> String {
        self.prefixed(format_args!("inbox_{mid}"))
    }

    fn ack_key(&self, mid: i64) -> String {
        self.prefixed(format_args!("inbox_ack_{mid}"))
    }

    fn push_key(&self, id: &str) -> String {
        self.prefixed(format_args!("inbox_push_{id}"))
    }

    fn due_key(&self) -> String {
        self.prefixed(format_args!("inbox_due"))
    }
}

/// A member of the due set: `<mid>:<seq>:<attempt>`.
fn parse_due(member: &str) -> Option<(i64, u64, u32)> {
    let mut parts = member.split(':');
    let mid = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    Some((mid, seq, attempt))
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
    async fn store(
        &self,
        mids: &[i64],
        op: i32,
        body: &Bytes,
        id: Option<&str>,
    ) -> Result<Vec<u64>, StoreError> {
        if mids.is_empty() {
            return Ok(Vec::new());
        }
        let (max, ttl) = (self.inbox.max, self.inbox.ttl.as_secs().max(1));
        let ack_timeout = self.inbox.ack_timeout.map_or(0, |t| t.as_millis().max(1));
        let due_key = self.due_key();
        let (push_key, id_window) = match id {
            Some(id) => (self.push_key(id), self.inbox.id_window.as_millis().max(1)),
            None => (self.push_key(""), 0),
        };
        let mut pipe = redis::pipe();
        // Loaded once per pipeline, so a Redis that restarted (and forgot
        // its scripts) never fails a push with NOSCRIPT.
        pipe.cmd("SCRIPT").arg("LOAD").arg(STORE_MESSAGE).ignore();
        for mid in mids {
            pipe.cmd("EVALSHA")
                .arg(self.scripts.store_message.get_hash())
                .arg(5)
                .arg(self.seq_key(*mid))
                .arg(self.inbox_key(*mid))
                .arg(self.ack_key(*mid))
                .arg(&due_key)
                .arg(&push_key)
                .arg(op)
                .arg(&body[..])
                .arg(max)
                .arg(ttl)
                .arg(ack_timeout as u64)
                .arg(*mid)
                .arg(id_window as u64);
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

    async fn ack(&self, mid: i64, ack: u64) -> Result<Acked, StoreError> {
        let mut invocation = self.scripts.ack.prepare_invoke();
        invocation
            .key(self.seq_key(mid))
            .key(self.ack_key(mid))
            .key(self.due_key())
            .arg(ack)
            .arg(mid)
            .arg(self.inbox.max);
        let last: i64 = self
            .run(async |mut conn| invocation.invoke_async(&mut conn).await)
            .await?;
        Ok(if last < 0 {
            Acked::AboveLatest {
                last: (-last - 1) as u64,
            }
        } else {
            Acked::Recorded
        })
    }

    async fn claim_unacked(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Unacked>, StoreError> {
        let due_key = self.due_key();
        let mut invocation = self.scripts.claim_due.prepare_invoke();
        invocation
            .key(&due_key)
            .arg(limit)
            .arg(lease.as_millis() as u64);
        let members: Vec<String> = self
            .run(async |mut conn| invocation.invoke_async(&mut conn).await)
            .await?;
        let due: Vec<(String, (i64, u64, u32))> = members
            .into_iter()
            .filter_map(|member| parse_due(&member).map(|due| (member, due)))
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // Each one's ack and message, in one round trip.
        let mut pipe = redis::pipe();
        for (_, (mid, seq, _)) in &due {
            pipe.get(self.ack_key(*mid))
                .zrangebyscore(self.inbox_key(*mid), *seq, *seq);
        }
        let found: Vec<redis::Value> = self
            .run(async |mut conn| pipe.query_async(&mut conn).await)
            .await?;
        let mut claimed = Vec::new();
        let mut settled = redis::pipe();
        for ((member, (mid, seq, attempt)), pair) in due.into_iter().zip(found.chunks(2)) {
            let acked: u64 = redis::from_redis_value::<Option<u64>>(&pair[0])
                .ok()
                .flatten()
                .unwrap_or(0);
            let message = redis::from_redis_value::<Vec<Vec<u8>>>(&pair[1])
                .ok()
                .and_then(|members| members.first().and_then(|m| parse_member(m)));
            match message {
                Some(message) if acked < seq => claimed.push(Unacked {
                    mid,
                    message,
                    attempt,
                }),
                _ => {
                    settled.zrem(&due_key, member).ignore();
                }
            }
        }
        self.run(async |mut conn| settled.query_async::<()>(&mut conn).await)
            .await?;
        Ok(claimed)
    }

    async fn settle(&self, unacked: &Unacked, retry: Option<Duration>) -> Result<(), StoreError> {
        let (mid, seq, attempt) = (unacked.mid, unacked.message.seq, unacked.attempt);
        let mut invocation = self.scripts.reschedule.prepare_invoke();
        invocation
            .key(self.due_key())
            .arg(format!("{mid}:{seq}:{attempt}"))
            .arg(retry.map_or(-1, |after| after.as_millis() as i64))
            .arg(format!("{mid}:{seq}:{}", attempt + 1));
        self.run(async |mut conn| invocation.invoke_async::<()>(&mut conn).await)
            .await
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
