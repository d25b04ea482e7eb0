//! A connection's way out: after the handshake, the one path by which bytes
//! reach its socket, shared by the buckets that push to it, its own task
//! (replies, replays) and the WebSocket layer (pongs, close replies).
//!
//! Pushes are queued, and the bucket that queued them into an idle outbox
//! writes them in its next sweep ([`Outbox::flush`]): everything queued
//! meanwhile goes in the same non-blocking `writev`, straight to the socket,
//! and no task is woken. Waking a task per connection per message was most
//! of what a room fan-out cost. The connection's own packets (replies) go
//! straight out when nothing is queued. Only what the socket does not take
//! at once is left to the connection's task, woken once to write it as the
//! socket drains; until it has written everything it took, everything else
//! queues behind it, so order is kept whoever writes.
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
use std::iter;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use imcloud_protocol::{CloseBody, CloseReason, EncodedPacket};
use parking_lot::{Mutex, MutexGuard};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::silence::Silence;
use crate::wire::{self, Framing, MAX_SLICES, Push};

/// Queue capacity (in chunks) kept after a drain; more is freed.
const SHRINK_ABOVE: usize = 32;

/// Why a push was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// The queue was full: this push closed the connection as a slow consumer.
    Overflow,
    /// The connection was already closing.
    Closed,
}

/// What one drain took out of the queue.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// The close asked for, if any: the connection ends after writing.
    pub(crate) close: Option<CloseBody>,
    /// When the oldest push among the drained packets reached the API.
    pub(crate) oldest_push: Option<Instant>,
    /// Bytes of the drained chunks already on the wire (a direct write the
    /// socket took only part of): the task writes from there.
    pub(crate) written: usize,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    changed: Notify,
    capacity: usize,
    framing: Framing,
    /// Where writes go straight when nothing is queued; `None`: everything
    /// queues for the connection task (the in-memory transport of the tests).
    socket: Option<Arc<TcpStream>>,
    /// When the client last sent a packet: here because the bucket, which
    /// closes silent connections, holds each one's outbox.
    silence: Silence,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes for the wire, in order, not written yet.
    queue: VecDeque<Bytes>,
    /// Bytes of the first queued chunk already on the wire.
    head_written: usize,
    /// A bucket queued pushes here and will write them in its next sweep
    /// ([`Outbox::flush`]): nobody else writes, and the task is not woken.
    flushing: bool,
    /// The connection task took the queue and has not finished writing it:
    /// nobody else may write to the socket meanwhile.
    task_writes: bool,
    /// The connection is ending: nothing more is accepted, and only its
    /// task writes.
    sealed: bool,
    close: Option<CloseBody>,
    oldest_push: Option<Instant>,
    /// User pushes waiting for a resume to end; `None` when not holding.
    held: Option<Vec<Push>>,
    /// User pushes numbered up to this were replayed: dropped as duplicates.
    replayed: u32,
}

impl State {
    fn refuses(&self) -> bool {
        self.sealed || self.close.is_some()
    }
}

impl Outbox {
    pub(crate) fn new(
        capacity: usize,
        framing: Framing,
        socket: Option<Arc<TcpStream>>,
        silence: Silence,
    ) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            capacity,
            framing,
            socket,
            silence,
        }
    }

    /// When the client was last heard from.
    pub(crate) fn silence(&self) -> &Silence {
        &self.silence
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Holds user pushes from now until [`Outbox::release`].
    pub(crate) fn hold(&self) {
        self.lock().held.get_or_insert_with(Vec::new);
    }

    /// Sends `replay` (the messages a resume found, and its op 19), then
    /// the held user pushes numbered above `replayed`, and stops holding.
    /// User pushes up to `replayed` are dropped from now on: the replay had
    /// them. A replay may go over the queue's capacity: it is bounded by
    /// the inbox, and the client asked for it.
    /// Returns what went straight to the socket: how many packets, and
    /// when the oldest held push among them reached the API.
    pub(crate) fn release(
        &self,
        replay: Vec<EncodedPacket>,
        replayed: u32,
    ) -> (usize, Option<Instant>) {
        let framing = self.framing;
        let replay: Vec<Bytes> = replay.iter().map(|packet| framing.frame(packet)).collect();
        let mut state = self.lock();
        state.replayed = replayed;
        let held = state.held.take().unwrap_or_default();
        if state.refuses() {
            return (0, None);
        }
        let held_wire = held
            .iter()
            .filter(|push| push.seq() > replayed)
            .map(|push| push.wire(framing));
        let oldest = held.first().map(|push| push.at);
        let written = self
            .send(&mut state, replay.iter().chain(held_wire), oldest, false)
            .unwrap_or(0);
        (written, oldest.filter(|_| written > 0))
    }

    /// Sends a reply or an ack without waiting: straight to the socket
    /// when nobody else is writing and nothing is queued, else behind what
    /// is. A full queue closes the connection as with pushes. Returns
    /// whether it went straight to the socket.
    pub(crate) fn push(&self, packet: &EncodedPacket) -> Result<bool, Rejected> {
        let framed = self.framing.frame(packet);
        let mut state = self.lock();
        if state.refuses() {
            return Err(Rejected::Closed);
        }
        Ok(self.send(&mut state, iter::once(&framed), None, true)? == 1)
    }

    /// Bytes the WebSocket layer writes by itself (a pong, the answer to a
    /// client's Close): they take their turn like any packet. Dropped once
    /// the connection is closing.
    pub(crate) fn write_raw(&self, bytes: &[u8]) {
        let chunk = Bytes::copy_from_slice(bytes);
        let mut state = self.lock();
        if !state.refuses() {
            let _ = self.send(&mut state, iter::once(&chunk), None, true);
        }
    }

    /// Queues a push; see [`Outbox::deliver_all`].
    pub(crate) fn deliver(&self, push: &Push) -> Result<bool, Rejected> {
        self.deliver_all(std::slice::from_ref(push))
    }

    /// Queues pushes, in order, without waiting or writing. `Ok(true)`:
    /// nobody was writing to this connection, and the caller now is: it
    /// must call [`Outbox::flush`] soon (a bucket does, in its next sweep,
    /// so everything queued meanwhile leaves in the same write). On overflow
    /// the connection is closed with `slow consumer` and every later push
    /// is refused.
    pub(crate) fn deliver_all(&self, pushes: &[Push]) -> Result<bool, Rejected> {
        let mut state = self.lock();
        if state.refuses() {
            return Err(Rejected::Closed);
        }
        let replayed = state.replayed;
        let live = pushes
            .iter()
            .filter(move |push| push.seq() == 0 || push.seq() > replayed);
        if state.held.is_some() {
            // A resume may come: user pushes wait for its replay.
            for push in live {
                if push.seq() == 0 {
                    self.send(
                        &mut state,
                        iter::once(push.wire(self.framing)),
                        Some(push.at),
                        true,
                    )?;
                    continue;
                }
                let held = state.held.as_ref().map_or(0, Vec::len);
                if state.queue.len() + held >= self.capacity {
                    return Err(self.overflow(&mut state));
                }
                state.oldest_push.get_or_insert(push.at);
                state.held.get_or_insert_with(Vec::new).push(push.clone());
            }
            return Ok(false);
        }
        let was_empty = state.queue.is_empty();
        for push in live {
            if state.queue.len() >= self.capacity {
                return Err(self.overflow(&mut state));
            }
            state.queue.push_back(push.wire(self.framing).clone());
        }
        if state.queue.is_empty() {
            return Ok(false);
        }
        if state.oldest_push.is_none() {
            state.oldest_push = pushes.first().map(|push| push.at);
        }
        if !was_empty || state.flushing || state.task_writes {
            // Whoever writes now takes these along.
            return Ok(false);
        }
        if self.socket.is_some() {
            state.flushing = true;
            return Ok(true);
        }
        self.changed.notify_waiters();
        Ok(false)
    }

    /// Writes what is queued straight to the socket, in as few `writev`s
    /// as it takes, without waiting: for the one [`Outbox::deliver_all`]
    /// made the writer. What the socket does not take is left to the
    /// connection's task, woken for it. Returns how many packets went out,
    /// and when the oldest push among them reached the API.
    pub(crate) fn flush(&self) -> (usize, Option<Instant>) {
        let mut state = self.lock();
        state.flushing = false;
        let Some(socket) = self.socket.as_deref() else {
            return (0, None);
        };
        if state.task_writes || state.queue.is_empty() {
            return (0, None);
        }
        let mut whole = 0;
        loop {
            let offered = state.queue.len().min(MAX_SLICES);
            let head = state.head_written;
            let mut written = head + wire::try_write(socket, state.queue.iter(), head);
            let mut taken = 0;
            while taken < offered
                && let Some(front) = state.queue.front()
                && written >= front.len()
            {
                written -= front.len();
                state.queue.pop_front();
                taken += 1;
            }
            state.head_written = written;
            whole += taken;
            if taken < offered || state.queue.is_empty() {
                break;
            }
        }
        if state.queue.is_empty() {
            return (whole, state.oldest_push.take());
        }
        // The socket is full: the task writes the rest as it drains.
        drop(state);
        self.changed.notify_waiters();
        (whole, None)
    }

    /// Writes `chunks` straight to the socket if nothing is ahead of them
    /// and nobody else is writing, and queues what the socket did not take
    /// (all of it otherwise) for whoever is.
    /// Returns how many chunks were written whole. `bounded`: the queue's
    /// capacity applies.
    fn send<'a, I>(
        &self,
        state: &mut State,
        chunks: I,
        oldest: Option<Instant>,
        bounded: bool,
    ) -> Result<usize, Rejected>
    where
        I: Iterator<Item = &'a Bytes> + Clone,
    {
        let mut rest = chunks.peekable();
        let mut whole = 0;
        let mut skip = 0;
        if let Some(socket) = self.socket.as_deref()
            && state.queue.is_empty()
            && !state.task_writes
            && !state.flushing
        {
            while rest.peek().is_some() {
                let mut written = wire::try_write(socket, rest.clone(), 0);
                let mut taken = 0;
                while taken < MAX_SLICES
                    && let Some(chunk) = rest.peek()
                    && written >= chunk.len()
                {
                    written -= chunk.len();
                    rest.next();
                    taken += 1;
                }
                whole += taken;
                if taken < MAX_SLICES {
                    // The socket took only part: the rest waits in the queue.
                    skip = written;
                    break;
                }
            }
        }
        if rest.peek().is_none() {
            return Ok(whole);
        }
        let was_empty = state.queue.is_empty();
        if was_empty {
            state.head_written = skip;
        }
        for chunk in rest {
            let held = state.held.as_ref().map_or(0, Vec::len);
            if bounded && state.queue.len() + held >= self.capacity {
                return Err(self.overflow(state));
            }
            state.queue.push_back(chunk.clone());
        }
        if state.oldest_push.is_none() {
            state.oldest_push = oldest;
        }
        if was_empty && !state.flushing {
            // Only the first queued chunk wakes the task: it takes
            // everything queued when it runs. (A bucket about to flush
            // takes it along instead.)
            self.changed.notify_waiters();
        }
        Ok(whole)
    }

    /// Closes as a slow consumer: the queue is full.
    fn overflow(&self, state: &mut State) -> Rejected {
        let detail = format!("send queue of {} packets is full", self.capacity);
        state.close = Some(CloseBody::new(CloseReason::SlowConsumer, Some(&detail)));
        self.changed.notify_waiters();
        Rejected::Overflow
    }

    /// Asks the connection to close with `body` after what is already queued.
    /// The first close wins; returns whether this one did.
    pub(crate) fn close(&self, body: CloseBody) -> bool {
        let first = {
            let mut state = self.lock();
            let first = !state.refuses();
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

    /// The connection is ending: nothing more is accepted, and from now on
    /// only its task writes (its last words, its close).
    pub(crate) fn seal(&self) {
        let mut state = self.lock();
        state.sealed = true;
        state.task_writes = true;
    }

    /// Moves every queued chunk into `out` for the connection task to
    /// write; until it calls [`Outbox::wrote`] nobody else writes. Says
    /// whether a close was asked for, how old the oldest push is, and how
    /// much of the first chunk is already on the wire.
    pub(crate) fn drain(&self, out: &mut Vec<Bytes>) -> Drained {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            state.task_writes = true;
        }
        out.extend(state.queue.drain(..));
        if state.queue.capacity() > SHRINK_ABOVE {
            // A burst grew the queue; the queue is empty now, so give the
            // memory back rather than hold it while the connection idles.
            state.queue.shrink_to_fit();
        }
        Drained {
            close: state.close.clone(),
            oldest_push: state.oldest_push.take(),
            written: std::mem::take(&mut state.head_written),
        }
    }

    /// The connection task wrote everything it drained: direct writes may
    /// resume once the queue is empty again.
    pub(crate) fn wrote(&self) {
        let mut state = self.lock();
        if !state.sealed {
            state.task_writes = false;
        }
    }

    /// Waits until the task has something to drain: a packet nobody else
    /// will write, or a close.
    pub(crate) async fn ready(&self) {
        self.wait(|state| (!state.queue.is_empty() && !state.flushing) || state.close.is_some())
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
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn packet(n: u32) -> EncodedPacket {
        Packet::new(Op(1000), n, Vec::new())
            .encode()
            .expect("encode")
    }

    fn bytes(n: u32) -> Bytes {
        packet(n).into_bytes()
    }

    /// An outbox with no socket: everything queues for the task.
    fn queued(capacity: usize) -> Outbox {
        Outbox::new(capacity, Framing::Tcp, None, Silence::new(Duration::MAX))
    }

    fn holding(capacity: usize) -> Outbox {
        let outbox = queued(capacity);
        outbox.hold();
        outbox
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_keeps_what_was_queued() {
        let outbox = queued(2);
        assert_eq!(outbox.push(&packet(1)), Ok(false));
        assert_eq!(outbox.push(&packet(2)), Ok(false));
        assert_eq!(outbox.push(&packet(3)), Err(Rejected::Overflow));
        assert_eq!(outbox.push(&packet(4)), Err(Rejected::Closed));
        let mut out = Vec::new();
        let close = outbox.drain(&mut out).close.expect("closed");
        assert_eq!(close.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(out, vec![bytes(1), bytes(2)]);
    }

    #[test]
    fn first_close_wins() {
        let outbox = queued(2);
        assert!(outbox.close(CloseBody::new(CloseReason::Kicked, None)));
        assert!(!outbox.close(CloseBody::new(CloseReason::Draining, None)));
        let close = outbox.drain(&mut Vec::new()).close.expect("closed");
        assert_eq!(close.close_reason(), Some(CloseReason::Kicked));
    }

    #[test]
    fn a_drain_reports_its_oldest_push_and_replies_carry_none() {
        let outbox = queued(8);
        outbox.push(&packet(1)).expect("reply");
        let first = Instant::now();
        outbox.deliver(&Push::new(packet(2), first)).expect("push");
        outbox
            .deliver(&Push::new(packet(3), Instant::now()))
            .expect("push");
        let drained = outbox.drain(&mut Vec::new());
        assert_eq!(drained.oldest_push, Some(first));
        outbox.push(&packet(4)).expect("reply");
        assert_eq!(outbox.drain(&mut Vec::new()).oldest_push, None);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_push_and_on_close() {
        let outbox = Arc::new(queued(4));
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
        outbox.push(&packet(7)).expect("push");
        outbox.close(CloseBody::new(CloseReason::Draining, None));
        // The reader finishes once it sees the close, having drained the
        // packet queued before it.
        assert_eq!(reader.await.expect("reader"), vec![bytes(7)]);
        assert_eq!(outbox.push(&packet(8)), Err(Rejected::Closed));
    }

    fn user_push(seq: u32) -> Push {
        Push::new(packet(seq), Instant::now())
    }

    #[test]
    fn held_user_pushes_follow_the_replay_without_duplicates() {
        let outbox = holding(8);
        outbox.push(&packet(0)).expect("op 8");
        for seq in [4, 6, 5] {
            outbox.deliver(&user_push(seq)).expect("held");
        }
        outbox
            .deliver(&user_push(0))
            .expect("a key push is never held");
        let mut out = Vec::new();
        outbox.drain(&mut out);
        assert_eq!(out, vec![bytes(0), bytes(0)], "user pushes are held");

        // The replay carried 3..=5: only 6 of the held ones is left to send.
        let replay = vec![packet(3), packet(4), packet(5), packet(19)];
        outbox.release(replay, 5);
        out.clear();
        outbox.drain(&mut out);
        assert_eq!(out, vec![bytes(3), bytes(4), bytes(5), bytes(19), bytes(6)]);

        // Later pushes are live, and a late duplicate of the replay is dropped.
        outbox.deliver(&user_push(5)).expect("dropped");
        outbox.deliver(&user_push(7)).expect("live");
        out.clear();
        outbox.drain(&mut out);
        assert_eq!(out, vec![bytes(7)]);
    }

    #[test]
    fn held_pushes_count_against_the_queue() {
        let outbox = holding(2);
        outbox.deliver(&user_push(1)).expect("held");
        outbox.deliver(&user_push(2)).expect("held");
        assert_eq!(outbox.deliver(&user_push(3)), Err(Rejected::Overflow));
    }

    /// A connected socket pair: the server's end shared as an outbox's.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Arc::new(server), client)
    }

    #[tokio::test]
    async fn queued_pushes_leave_in_one_write_from_whoever_was_told_to_flush() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(8, Framing::Tcp, Some(server), Silence::new(Duration::MAX));
        let burst: Vec<Push> = (1..=2).map(user_push).collect();
        assert_eq!(outbox.deliver_all(&burst), Ok(true), "the caller writes");
        assert_eq!(
            outbox.deliver(&user_push(3)),
            Ok(false),
            "already to be written"
        );
        assert_eq!(
            outbox.flush(),
            (3, Some(burst[0].at)),
            "one write for all three"
        );
        assert_eq!(
            outbox.push(&packet(4)),
            Ok(true),
            "idle again: straight out"
        );
        let mut out = Vec::new();
        let drained = outbox.drain(&mut out);
        assert!(out.is_empty(), "nothing was left for the task");
        assert_eq!(drained.oldest_push, None);

        let mut got = vec![0; 4 * 16];
        client.read_exact(&mut got).await.expect("read");
        let want: Vec<u8> = (1..=4).flat_map(|n| bytes(n).to_vec()).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn what_a_full_socket_refuses_is_left_to_the_task_in_order() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(
            1 << 20,
            Framing::Ws,
            Some(server.clone()),
            Silence::new(Duration::MAX),
        );
        // Big pushes until the socket stops taking them whole.
        let body = vec![b'x'; 60_000];
        let mut sent = Vec::new();
        for seq in 1.. {
            let push = Push::new(
                Packet::new(Op(1000), seq, body.clone())
                    .encode()
                    .expect("encode"),
                Instant::now(),
            );
            sent.push(push.wire(Framing::Ws).clone());
            assert_eq!(outbox.deliver(&push), Ok(true));
            if outbox.flush().0 == 0 {
                break;
            }
        }
        // The rest waits for the task, and a push now is queued behind it.
        assert_eq!(outbox.deliver(&user_push(9_999)), Ok(false));
        // The task's turn: whatever is queued, from where the cut left off.
        let mut out = Vec::new();
        let drained = outbox.drain(&mut out);
        assert_eq!(out.first(), sent.last(), "the cut push was queued");
        let cut = drained.written;
        assert!(cut < out[0].len());
        assert_eq!(out.len(), 2, "the cut push and the one behind it");
        // While the task writes, later pushes queue behind it.
        let later = user_push(10_000);
        assert_eq!(outbox.deliver(&later), Ok(false));

        sent.push(user_push(9_999).wire(Framing::Ws).clone());
        let all: Vec<u8> = sent.iter().flat_map(|chunk| chunk.to_vec()).collect();
        let read = tokio::spawn(async move {
            let mut got = vec![0; all.len() + later.wire(Framing::Ws).len()];
            client.read_exact(&mut got).await.expect("read");
            (got, all)
        });
        let mut written = cut;
        wire::write_all(&server, &out, &mut written)
            .await
            .expect("write");
        outbox.wrote();
        out.clear();
        let drained = outbox.drain(&mut out);
        assert_eq!(drained.written, 0);
        let mut written = 0;
        wire::write_all(&server, &out, &mut written)
            .await
            .expect("write");
        outbox.wrote();

        let (got, all) = read.await.expect("reader");
        assert_eq!(&got[..all.len()], &all[..], "every byte once, in order");
        assert_eq!(&got[all.len()..], &user_push(10_000).wire(Framing::Ws)[..]);
    }
}
