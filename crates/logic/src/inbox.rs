//! Users' inboxes: every message pushed to a user gets the user's next
//! sequence number (1, 2, 3... with no gaps, however many logic nodes number
//! at once) and is kept, the newest `inbox_max` of them, for `inbox_ttl`
//! after the last write, so a device that was away can be given what it
//! missed. The counter lives as long as the inbox: when the inbox expires,
//! numbering starts again at 1.
//!
//! Devices acknowledge what they handled (cumulatively, per user). While an
//! offline webhook is configured, every kept message is also due for it at
//! `ack_timeout` after it was stored, unless acknowledged by then: the
//! webhook worker claims the due ones (see `offline.rs`).
//!
//! In memory for one logic node; in Redis (one Lua script per user, all of a
//! push's users in one pipeline) for several.

use std::collections::{BTreeSet, HashMap, VecDeque};
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

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    /// Recorded (or already covered by an earlier one).
    Recorded,
    /// Above the latest sequence number given: a client error.
    AboveLatest {
        /// The latest sequence number of the user.
        last: u64,
    },
}

/// A kept message no device acknowledged within `ack_timeout`, claimed for
/// the offline webhook. Until settled it is not offered again before the
/// claim's lease runs out, so a worker that dies mid-call loses nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unacked {
    /// The user.
    pub mid: i64,
    /// The message.
    pub message: Kept,
    /// Earlier failed webhook calls for it.
    pub attempt: u32,
}

/// Where users' messages are numbered and kept.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Numbers one message for each user and keeps it; returns each user's
    /// sequence number, in the order of `mids`. A push stored again under
    /// the same `id` within `id_window` (a redelivery after a logic node died
    /// between storing and acknowledging) gets the numbers it got the first
    /// time, so devices see one message, not two.
    async fn store(
        &self,
        mids: &[i64],
        op: i32,
        body: &Bytes,
        id: Option<&str>,
    ) -> Result<Vec<u64>, StoreError>;

    /// The messages of `mid` after `since`, with the latest and oldest
    /// sequence numbers.
    async fn since(&self, mid: i64, since: u64) -> Result<Since, StoreError>;

    /// Records that a device of `mid` handled everything up to `ack`.
    async fn ack(&self, mid: i64, ack: u64) -> Result<Acked, StoreError>;

    /// Claims up to `limit` messages whose ack deadline passed unacknowledged,
    /// each for `lease`; messages acknowledged or no longer kept are dropped
    /// from the due ones on the way.
    async fn claim_unacked(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Unacked>, StoreError>;

    /// Settles a claimed message: done (`None`), or due again after `retry`.
    async fn settle(&self, unacked: &Unacked, retry: Option<Duration>) -> Result<(), StoreError>;
}

/// How many messages an inbox keeps, for how long after its last write, and
/// whether unacknowledged messages become due for the offline webhook.
#[derive(Clone, Copy, Debug)]
pub struct InboxLimits {
    /// Messages kept per user (the newest).
    pub max: usize,
    /// How long an inbox (and its counter) lives after its last write.
    pub ttl: Duration,
    /// Set when an offline webhook is configured: a message not acknowledged
    /// this long after it was stored is due for it.
    pub ack_timeout: Option<Duration>,
    /// How long a push id's numbers are remembered (`dedupe_window`).
    pub id_window: Duration,
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
    /// Messages due for the offline webhook: (when, mid, seq), and the
    /// attempts made for each.
    due: BTreeSet<(Instant, i64, u64)>,
    attempts: HashMap<(i64, u64), (Instant, u32)>,
    /// The number each (push id, user) got, until when.
    numbered: HashMap<(String, i64), (u64, Instant)>,
}

#[derive(Debug)]
struct UserInbox {
    last: u64,
    acked: u64,
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
        self.numbered.retain(|_, (_, until)| *until > now);
    }

    /// The live inbox of `mid`, if any.
    fn live(&self, mid: i64, now: Instant) -> Option<&UserInbox> {
        self.inboxes.get(&mid).filter(|inbox| inbox.expires > now)
    }

    fn schedule(&mut self, mid: i64, seq: u64, at: Instant, attempt: u32) {
        self.unschedule(mid, seq);
        self.due.insert((at, mid, seq));
        self.attempts.insert((mid, seq), (at, attempt));
    }

    fn unschedule(&mut self, mid: i64, seq: u64) {
        if let Some((at, _)) = self.attempts.remove(&(mid, seq)) {
            self.due.remove(&(at, mid, seq));
        }
    }
}

#[async_trait]
impl InboxStore for MemoryInbox {
    async fn store(
        &self,
        mids: &[i64],
        op: i32,
        body: &Bytes,
        id: Option<&str>,
    ) -> Result<Vec<u64>, StoreError> {
        let now = Instant::now();
        let mut users = self.users.lock();
        users.sweep(now, self.limits.ttl.min(self.limits.id_window));
        Ok(mids
            .iter()
            .map(|mid| {
                let id = id.map(|id| (id.to_owned(), *mid));
                if let Some((seq, until)) = id.as_ref().and_then(|id| users.numbered.get(id))
                    && *until > now
                {
                    return *seq;
                }
                let inbox = users.inboxes.entry(*mid).or_insert_with(|| UserInbox {
                    last: 0,
                    acked: 0,
                    kept: VecDeque::new(),
                    expires: now,
                });
                if inbox.expires <= now {
                    // Expired: the counter and acks go with the inbox.
                    inbox.last = 0;
                    inbox.acked = 0;
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
                let seq = inbox.last;
                if let Some(timeout) = self.limits.ack_timeout {
                    users.schedule(*mid, seq, now + timeout, 0);
                }
                if let Some(id) = id {
                    users
                        .numbered
                        .insert(id, (seq, now + self.limits.id_window));
                }
                seq
            })
            .collect())
    }

    async fn since(&self, mid: i64, since: u64) -> Result<Since, StoreError> {
        let users = self.users.lock();
        let Some(inbox) = users.live(mid, Instant::now()) else {
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

    async fn ack(&self, mid: i64, ack: u64) -> Result<Acked, StoreError> {
        let now = Instant::now();
        let mut users = self.users.lock();
        let (last, acked) = users
            .live(mid, now)
            .map_or((0, 0), |inbox| (inbox.last, inbox.acked));
        if ack > last {
            return Ok(Acked::AboveLatest { last });
        }
        if ack > acked {
            if let Some(inbox) = users.inboxes.get_mut(&mid) {
                inbox.acked = ack;
            }
            // Only an optimisation (a claim skips acknowledged messages),
            // so bounded to the messages kept.
            let from = acked.max(ack.saturating_sub(self.limits.max as u64));
            for seq in from + 1..=ack {
                users.unschedule(mid, seq);
            }
        }
        Ok(Acked::Recorded)
    }

    async fn claim_unacked(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Unacked>, StoreError> {
        let now = Instant::now();
        let mut users = self.users.lock();
        let due: Vec<(i64, u64)> = users
            .due
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .map(|(_, mid, seq)| (*mid, *seq))
            .collect();
        let mut claimed = Vec::new();
        for (mid, seq) in due {
            if claimed.len() == limit {
                break;
            }
            let attempt = users.attempts.get(&(mid, seq)).map_or(0, |(_, n)| *n);
            let message = users
                .live(mid, now)
                .filter(|inbox| inbox.acked < seq)
                .and_then(|inbox| inbox.kept.iter().find(|kept| kept.seq == seq).cloned());
            match message {
                Some(message) => {
                    users.schedule(mid, seq, now + lease, attempt);
                    claimed.push(Unacked {
                        mid,
                        message,
                        attempt,
                    });
                }
                None => users.unschedule(mid, seq),
            }
        }
        Ok(claimed)
    }

    async fn settle(&self, unacked: &Unacked, retry: Option<Duration>) -> Result<(), StoreError> {
        let (mid, seq) = (unacked.mid, unacked.message.seq);
        let mut users = self.users.lock();
        match retry {
            Some(after) => users.schedule(mid, seq, Instant::now() + after, unacked.attempt + 1),
            None => users.unschedule(mid, seq),
        }
        Ok(())
    }
}

/// No inbox (`inbox_max = 0`): pushes by mid are neither numbered nor kept,
/// as in goim; resumes find nothing and acks have nothing to cover.
#[derive(Debug)]
pub struct NoInbox;

#[async_trait]
impl InboxStore for NoInbox {
    async fn store(
        &self,
        mids: &[i64],
        _op: i32,
        _body: &Bytes,
        _id: Option<&str>,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(vec![0; mids.len()])
    }

    async fn since(&self, _mid: i64, _since: u64) -> Result<Since, StoreError> {
        Ok(Since::default())
    }

    async fn ack(&self, _mid: i64, ack: u64) -> Result<Acked, StoreError> {
        Ok(if ack == 0 {
            Acked::Recorded
        } else {
            Acked::AboveLatest { last: 0 }
        })
    }

    async fn claim_unacked(&self, _: usize, _: Duration) -> Result<Vec<Unacked>, StoreError> {
        Ok(Vec::new())
    }

    async fn settle(&self, _: &Unacked, _: Option<Duration>) -> Result<(), StoreError> {
        Ok(())
    }
}
