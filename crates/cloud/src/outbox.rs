//! A connection's bounded send queue, shared by the bucket that fills it and
//! the connection task that drains it.
//!
//! Pushes never wait: a full queue closes the connection as a slow consumer,
//! so one slow socket can never stall a room broadcast. Closing (kicked,
//! draining, slow) goes through the same queue, so the connection task sees
//! everything queued before the close and then the reason, in that order.
//!
//! User pushes (a push with a sequence number, see DESIGN §8) can be held
//! while a connection may still resume (op 18), then released behind the
//! replay of what the device missed, minus what the replay already carried:
//! the device gets its messages in order, once, without a gap.
//!
//! A `Mutex<VecDeque>` rather than a tokio channel: an idle connection's
//! queue allocates nothing, where a bounded mpsc allocates a block of slots
//! up front, and that matters at 10,000s of idle connections per node.

use std::collections::VecDeque;
use std::pin::pin;
use std::time::Instant;

use imcloud_protocol::{CloseBody, CloseReason, EncodedPacket};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// Queue capacity (in packets) kept after a drain; more is freed.
const SHRINK_ABOVE: usize = 32;

/// Why a push was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// The queue was full: this push closed the connection as a slow consumer.
    Overflow,
    /// The connection was already closing.
    Closed,
}

/// A push on its way to connections: the packet, encoded once and shared,
/// and when it reached the API (for the push latency metric).
#[derive(Clone, Debug)]
pub(crate) struct Push {
    pub(crate) packet: EncodedPacket,
    pub(crate) at: Instant,
}

impl Push {
    pub(crate) fn new(packet: EncodedPacket, at: Instant) -> Push {
        Push { packet, at }
    }
}

/// What one drain took out of the queue.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// The close asked for, if any: the connection ends after writing.
    pub(crate) close: Option<CloseBody>,
    /// When the oldest push among the drained packets reached the API.
    pub(crate) oldest_push: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    changed: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<EncodedPacket>,
    close: Option<CloseBody>,
    oldest_push: Option<Instant>,
    /// User pushes waiting for a resume to end; `None` when not holding.
    held: Option<Vec<EncodedPacket>>,
    /// User pushes numbered up to this were replayed: dropped as duplicates.
    replayed: u32,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            capacity,
        }
    }

    /// An outbox that holds user pushes from the start, until [`Outbox::release`].
    pub(crate) fn holding(capacity: usize) -> Self {
        let outbox = Outbox::new(capacity);
        outbox.hold();
        outbox
    }

    /// Holds user pushes from now until [`Outbox::release`].
    pub(crate) fn hold(&self) {
        self.lock().held.get_or_insert_with(Vec::new);
    }

    /// Queues `replay` (the messages a resume found, and its op 19), then
    /// the held user pushes numbered above `replayed`, and stops holding.
    /// User pushes up to `replayed` are dropped from now on: the replay had
    /// them. A replay may go over the queue's capacity: it is bounded by
    /// the inbox, and the client asked for it.
    pub(crate) fn release(&self, replay: Vec<EncodedPacket>, replayed: u32) {
        {
            let mut state = self.lock();
            state.replayed = replayed;
            let held = state.held.take().unwrap_or_default();
            state.queue.extend(replay);
            state
                .queue
                .extend(held.into_iter().filter(|push| push.seq() > replayed));
            if state.queue.is_empty() {
                return;
            }
        }
        self.changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Queues a reply or an ack without waiting (see [`Outbox::deliver`]).
    pub(crate) fn push(&self, packet: EncodedPacket) -> Result<(), Rejected> {
        self.enqueue(packet, None)
    }

    /// Queues a push without waiting. On overflow the queue is closed with
    /// `slow consumer` and every later push is refused.
    pub(crate) fn deliver(&self, push: &Push) -> Result<(), Rejected> {
        self.enqueue(push.packet.clone(), Some(push.at))
    }

    fn enqueue(&self, packet: EncodedPacket, at: Option<Instant>) -> Result<(), Rejected> {
        {
            let mut state = self.lock();
            if state.close.is_some() {
                return Err(Rejected::Closed);
            }
            // A push with a sequence number (replies echo the client's seq).
            let seq = if at.is_some() { packet.seq() } else { 0 };
            let user_push = seq != 0;
            if user_push && seq <= state.replayed {
                return Ok(());
            }
            let held = state.held.as_ref().map_or(0, Vec::len);
            if state.queue.len() + held >= self.capacity {
                let detail = format!("send queue of {} packets is full", self.capacity);
                state.close = Some(CloseBody::new(CloseReason::SlowConsumer, Some(&detail)));
                drop(state);
                self.changed.notify_waiters();
                return Err(Rejected::Overflow);
            }
            if state.oldest_push.is_none() {
                state.oldest_push = at;
            }
            if user_push && let Some(held) = &mut state.held {
                held.push(packet);
                return Ok(());
            }
            state.queue.push_back(packet);
            if state.queue.len() > 1 {
                // The reader was already woken by the first queued packet and
                // drains everything when it runs: no second wake-up needed.
                return Ok(());
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Asks the connection to close with `body` after what is already queued.
    /// The first close wins; returns whether this one did.
    pub(crate) fn close(&self, body: CloseBody) -> bool {
        let first = {
            let mut state = self.lock();
            let first = state.close.is_none();
            if first {
                state.close = Some(body);
            }
            first
        };
        if first {
            self.changed.notify_waiters();
        }
        first
    }

    /// Moves every queued packet into `out`; says whether a close was asked
    /// for and how old the oldest push is.
    pub(crate) fn drain(&self, out: &mut Vec<EncodedPacket>) -> Drained {
        let mut state = self.lock();
        out.extend(state.queue.drain(..));
        if state.queue.capacity() > SHRINK_ABOVE {
            // A burst grew the queue; the queue is empty now, so give the
            // memory back rather than hold it while the connection idles.
            state.queue.shrink_to_fit();
        }
        Drained {
            close: state.close.clone(),
            oldest_push: state.oldest_push.take(),
        }
    }

    /// Waits until there is something to drain: a packet or a close.
    pub(crate) async fn ready(&self) {
        self.wait(|state| !state.queue.is_empty() || state.close.is_some())
            .await
    }

    /// Waits until the queue overflows, and says why: a write in progress
    /// to a client that stopped reading is abandoned then, not when the
    /// write times out.
    pub(crate) async fn overflowed(&self) -> CloseBody {
        let slow = |state: &State| {
            state
                .close
                .as_ref()
                .filter(|close| close.close_reason() == Some(CloseReason::SlowConsumer))
                .cloned()
        };
        self.wait(|state| slow(state).is_some()).await;
        slow(&self.lock()).unwrap_or_else(|| CloseBody::new(CloseReason::SlowConsumer, None))
    }

    async fn wait(&self, done: impl Fn(&State) -> bool) {
        loop {
            let mut changed = pin!(self.changed.notified());
            // Register before checking, so a change between the check and
            // the await still wakes us.
            changed.as_mut().enable();
            if done(&self.lock()) {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imcloud_protocol::{Op, Packet};
    use std::sync::Arc;

    fn packet(n: u32) -> EncodedPacket {
        Packet::new(Op(1000), n, Vec::new())
            .encode()
            .expect("encode")
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_keeps_what_was_queued() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(packet(1)), Ok(()));
        assert_eq!(outbox.push(packet(2)), Ok(()));
        assert_eq!(outbox.push(packet(3)), Err(Rejected::Overflow));
        assert_eq!(outbox.push(packet(4)), Err(Rejected::Closed));
        let mut out = Vec::new();
        let close = outbox.drain(&mut out).close.expect("closed");
        assert_eq!(close.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(out, vec![packet(1), packet(2)]);
    }

    #[test]
    fn first_close_wins() {
        let outbox = Outbox::new(2);
        assert!(outbox.close(CloseBody::new(CloseReason::Kicked, None)));
        assert!(!outbox.close(CloseBody::new(CloseReason::Draining, None)));
        let close = outbox.drain(&mut Vec::new()).close.expect("closed");
        assert_eq!(close.close_reason(), Some(CloseReason::Kicked));
    }

    #[test]
    fn a_drain_reports_its_oldest_push_and_replies_carry_none() {
        let outbox = Outbox::new(8);
        outbox.push(packet(1)).expect("reply");
        let first = Instant::now();
        outbox.deliver(&Push::new(packet(2), first)).expect("push");
        outbox
            .deliver(&Push::new(packet(3), Instant::now()))
            .expect("push");
        let drained = outbox.drain(&mut Vec::new());
        assert_eq!(drained.oldest_push, Some(first));
        outbox.push(packet(4)).expect("reply");
        assert_eq!(outbox.drain(&mut Vec::new()).oldest_push, None);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_push_and_on_close() {
        let outbox = Arc::new(Outbox::new(4));
        let reader = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let mut out = Vec::new();
                loop {
                    outbox.ready().await;
                    if outbox.drain(&mut out).close.is_some() {
                        return out;
                    }
                }
            }
        });
        outbox.push(packet(7)).expect("push");
        outbox.close(CloseBody::new(CloseReason::Draining, None));
        // The reader finishes once it sees the close, having drained the
        // packet queued before it.
        assert_eq!(reader.await.expect("reader"), vec![packet(7)]);
        assert_eq!(outbox.push(packet(8)), Err(Rejected::Closed));
    }

    fn user_push(seq: u32) -> Push {
        Push::new(packet(seq), Instant::now())
    }

    #[test]
    fn held_user_pushes_follow_the_replay_without_duplicates() {
        let outbox = Outbox::holding(8);
        outbox.push(packet(0)).expect("op 8");
        for seq in [4, 6, 5] {
            outbox.deliver(&user_push(seq)).expect("held");
        }
        outbox
            .deliver(&user_push(0))
            .expect("a key push is never held");
        let mut out = Vec::new();
        outbox.drain(&mut out);
        assert_eq!(out, vec![packet(0), packet(0)], "user pushes are held");

        // The replay carried 3..=5: only 6 of the held ones is left to send.
        let replay = vec![packet(3), packet(4), packet(5), packet(19)];
        outbox.release(replay, 5);
        out.clear();
        outbox.drain(&mut out);
        assert_eq!(
            out,
            vec![packet(3), packet(4), packet(5), packet(19), packet(6)]
        );

        // Later pushes are live, and a late duplicate of the replay is dropped.
        outbox.deliver(&user_push(5)).expect("dropped");
        outbox.deliver(&user_push(7)).expect("live");
        out.clear();
        outbox.drain(&mut out);
        assert_eq!(out, vec![packet(7)]);
    }

    #[test]
    fn held_pushes_count_against_the_queue() {
        let outbox = Outbox::holding(2);
        outbox.deliver(&user_push(1)).expect("held");
        outbox.deliver(&user_push(2)).expect("held");
        assert_eq!(outbox.deliver(&user_push(3)), Err(Rejected::Overflow));
    }
}
