//! Hands a user's numbered messages to the app exactly once and in order,
//! whatever order they arrive in: a duplicate is dropped; a message that
//! arrives early (two logic nodes numbered 5 and 6 and 6 came first) waits
//! for the missing one, and when it does not come within the gap wait the
//! device resumes from the gap. Sans I/O: [`crate::Device`] feeds it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use imcloud_protocol::Packet;
use serde::Deserialize;

/// What the app is handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A push. Numbered ones (`seq` > 0, pushes to the user) come once and
    /// in order; pushes by key, room or broadcast (`seq` 0) as they arrive.
    Message(Packet),
    /// Messages after the last one handed and before `oldest` are no longer
    /// kept by the server (the device was away too long): fetch them from
    /// the backend if they matter. The messages from `oldest` follow.
    Reset {
        /// The oldest message the server still keeps (0: none kept).
        oldest: u64,
    },
}

/// The body of op 19.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Resumed {
    /// The user's latest sequence number.
    pub last: u64,
    /// The replay could not start right after the device's `since`.
    #[serde(default)]
    pub reset: bool,
    /// With `reset`: the oldest message kept.
    #[serde(default)]
    pub oldest: u64,
}

/// Orders one user's messages for the app.
#[derive(Debug)]
pub struct Sequencer {
    /// The last sequence number handed to the app.
    last: u64,
    /// Arrived ahead of a missing one, by sequence number.
    early: BTreeMap<u64, Packet>,
    /// Since when the oldest early message has waited.
    waiting_since: Option<Instant>,
    /// While a resume is answered: what arrived, judged once op 19 says
    /// whether the numbering was reset.
    resuming: Option<Vec<Packet>>,
    ready: VecDeque<Event>,
    gap_wait: Duration,
}

impl Sequencer {
    /// A sequencer that has handed everything up to `last` (0: nothing yet)
    /// and waits `gap_wait` for a missing message before asking to resume.
    pub fn new(last: u64, gap_wait: Duration) -> Self {
        Sequencer {
            last,
            early: BTreeMap::new(),
            waiting_since: None,
            resuming: None,
            ready: VecDeque::new(),
            gap_wait,
        }
    }

    /// The last sequence number handed to the app: the `since` of a resume.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A resume (op 18) was sent: hold judgement until its op 19.
    pub fn resuming(&mut self) {
        self.resuming.get_or_insert_with(Vec::new);
    }

    /// A push arrived.
    pub fn push(&mut self, packet: Packet, now: Instant) {
        let seq = u64::from(packet.seq);
        if seq == 0 {
            // Not a user message (by key, room, broadcast): as it comes.
            self.ready.push_back(Event::Message(packet));
        } else if let Some(gathered) = &mut self.resuming {
            gathered.push(packet);
        } else if seq <= self.last {
            // A duplicate: a resume replayed it, or it was pushed twice.
        } else if seq == self.last + 1 {
            self.last = seq;
            self.ready.push_back(Event::Message(packet));
            self.take_consecutive();
        } else {
            self.early.insert(seq, packet);
            self.waiting_since.get_or_insert(now);
        }
    }

    /// The resume was answered (op 19): what arrived meanwhile is judged now.
    pub fn resumed(&mut self, resumed: Resumed, now: Instant) {
        if resumed.reset {
            self.last = resumed.oldest.saturating_sub(1);
            if resumed.oldest == 0 {
                self.last = resumed.last;
            }
            self.early.clear();
            self.ready.push_back(Event::Reset {
                oldest: resumed.oldest,
            });
        }
        let mut gathered = self.resuming.take().unwrap_or_default();
        gathered.sort_by_key(|packet| packet.seq);
        for packet in gathered {
            self.push(packet, now);
        }
        // The replay went up to `last`: whatever is still missing below it
        // is not coming; the server said so by not sending it.
        if self.early.is_empty() {
            self.waiting_since = None;
        } else {
            self.waiting_since = Some(now);
        }
    }

    /// The next event for the app.
    pub fn pop(&mut self) -> Option<Event> {
        self.ready.pop_front()
    }

    /// When a resume from the gap is due, if something waits for a missing
    /// message (and no resume is being answered).
    pub fn resume_due(&self) -> Option<Instant> {
        if self.resuming.is_some() {
            return None;
        }
        self.waiting_since.map(|since| since + self.gap_wait)
    }

    fn take_consecutive(&mut self) {
        while let Some(packet) = self.early.remove(&(self.last + 1)) {
            self.last += 1;
            self.ready.push_back(Event::Message(packet));
        }
        self.early.retain(|seq, _| *seq > self.last);
        if self.early.is_empty() {
            self.waiting_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imcloud_protocol::Op;

    fn message(seq: u32) -> Packet {
        Packet::new(Op(1000), seq, Vec::new())
    }

    fn seqs(sequencer: &mut Sequencer) -> Vec<u32> {
        std::iter::from_fn(|| sequencer.pop())
            .map(|event| match event {
                Event::Message(packet) => packet.seq,
                Event::Reset { .. } => u32::MAX,
            })
            .collect()
    }

    #[test]
    fn early_messages_wait_for_the_missing_one_and_duplicates_are_dropped() {
        let now = Instant::now();
        let mut sequencer = Sequencer::new(4, Duration::from_millis(500));
        sequencer.push(message(6), now);
        assert!(seqs(&mut sequencer).is_empty());
        assert_eq!(
            sequencer.resume_due(),
            Some(now + Duration::from_millis(500))
        );
        sequencer.push(message(5), now);
        sequencer.push(message(5), now);
        sequencer.push(message(0), now);
        assert_eq!(seqs(&mut sequencer), [5, 6, 0]);
        assert_eq!(sequencer.resume_due(), None);
        assert_eq!(sequencer.last(), 6);
    }

    #[test]
    fn a_resume_is_judged_when_its_answer_says_how() {
        let now = Instant::now();
        let mut sequencer = Sequencer::new(3, Duration::from_millis(500));
        sequencer.resuming();
        for seq in [4, 5, 4, 6] {
            sequencer.push(message(seq), now);
        }
        assert!(seqs(&mut sequencer).is_empty());
        sequencer.resumed(
            Resumed {
                last: 6,
                ..Resumed::default()
            },
            now,
        );
        assert_eq!(seqs(&mut sequencer), [4, 5, 6]);

        // Numbering restarted on the server: 1 and 2 are new.
        sequencer.resuming();
        sequencer.push(message(1), now);
        sequencer.push(message(2), now);
        let reset = Resumed {
            last: 2,
            reset: true,
            oldest: 1,
        };
        sequencer.resumed(reset, now);
        assert_eq!(seqs(&mut sequencer), [u32::MAX, 1, 2]);
    }
}
