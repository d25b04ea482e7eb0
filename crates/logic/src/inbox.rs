//! Users' inboxes: every message pushed to a user gets the user's next
//! sequence number (1, 2, 3... with no gaps, however many logic nodes number
//! at once) and is kept, the newest `inbox_max` of them, for `inbox_ttl`
//! after the last write, so a device that was away can be given what it
//! missed. The counter lives as long as the inbox: when the inbox expires,
//! numbering starts again at 1.
//!
//! In memory for one logic node; in Redis (one Lua script per user, all of a
//! push's users in one pipeline) for several.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::session::StoreError;

/// One kept message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The user's sequence number of this message.
    pub seq: u64,
    /// Its business op.
    pub op: i32,
    /// Its body.
    pub body: Bytes,
}

/// What an inbox holds after a sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Since {
    /// The latest sequence number given (0: none, or the inbox expired).
    pub last: u64,
    /// The oldest sequence number still kept (0 when none is).
    pub oldest: u64,
    /// The kept messages after the one asked for, oldest first.
    pub messages: Vec<Kept>,
}

/// Where users' messages are numbered and kept.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Numbers one message for each user and keeps it; returns each user's
    /// sequence number, in the order of `mids`.
    async fn store(&self, mids: &[i64], op: i32, body: &Bytes) -> Result<Vec<u64>, StoreError>;

    /// The messages of `mid` after `since`, with the latest and oldest
    /// sequence numbers.
    async fn since(&self, mid: i64, since: u64) -> Result<Since, StoreError>;
}

/// How many messages an inbox keeps, and for how long after its last write.
#[derive(Clone, Copy, Debug)]
pub struct InboxLimits {
    /// Messages kept per user (the newest).
    pub max: usize,
    /// How long an inbox (and its counter) lives after its last write.
    pub ttl: Duration,
}

/// Inboxes in this process's memory, for a single logic node.
#[derive(Debug)]
pub struct MemoryInbox {
    limits: InboxLimits,
    users: Mutex<Users>,
}

#[derive(Debug, Default)]
struct Users {
    inboxes: HashMap<i64, UserInbox>,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct UserInbox {
    last: u64,
    kept: VecDeque<Kept>,
    expires: Instant,
}

impl MemoryInbox {
    /// Empty inboxes with these limits.
    pub fn new(limits: InboxLimits) -> Self {
        MemoryInbox {
            limits,
            users: Mutex::new(Users::default()),
        }
    }
}

impl Users {
    /// Drops expired inboxes, at most once per quarter TTL, so memory
    /// follows the live ones without a task of its own.
    fn sweep(&mut self, now: Instant, ttl: Duration) {
        if self.last_sweep.is_some_and(|at| now - at < ttl / 4) {
            return;
        }
        self.last_sweep = Some(now);
        self.inboxes.retain(|_, inbox| inbox.expires > now);
    }
}

#[async_trait]
impl InboxStore for MemoryInbox {
    async fn store(&self, mids: &[i64], op: i32, body: &Bytes) -> Result<Vec<u64>, StoreError> {
        let now = Instant::now();
        let mut users = self.users.lock();
        users.sweep(now, self.limits.ttl);
        Ok(mids
            .iter()
            .map(|mid| {
                let inbox = users.inboxes.entry(*mid).or_insert_with(|| UserInbox {
                    last: 0,
                    kept: VecDeque::new(),
                    expires: now,
                });
                if inbox.expires <= now {
                    // Expired: the counter goes with the inbox.
                    inbox.last = 0;
                    inbox.kept.clear();
                }
                inbox.last += 1;
                inbox.expires = now + self.limits.ttl;
                inbox.kept.push_back(Kept {
                    seq: inbox.last,
                    op,
                    body: body.clone(),
                });
                while inbox.kept.len() > self.limits.max {
                    inbox.kept.pop_front();
                }
                inbox.last
            })
            .collect())
    }

    async fn since(&self, mid: i64, since: u64) -> Result<Since, StoreError> {
        let users = self.users.lock();
        let Some(inbox) = users
            .inboxes
            .get(&mid)
            .filter(|inbox| inbox.expires > Instant::now())
        else {
            return Ok(Since::default());
        };
        Ok(Since {
            last: inbox.last,
            oldest: inbox.kept.front().map_or(0, |kept| kept.seq),
            messages: inbox
                .kept
                .iter()
                .filter(|kept| kept.seq > since)
                .cloned()
                .collect(),
        })
    }
}
