//! Which commands may be delivered at the same time. Commands for
//! different receivers run concurrently; a command waits while an earlier
//! one for any of its receivers (a user, a key, a room) is still being
//! delivered, so each receiver gets its pushes in the order they were
//! published and a user's messages are numbered in that order. A push to
//! everyone runs alone.

use std::collections::HashMap;

use crate::push::Target;

/// The receivers a command's order is kept for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lanes {
    /// These receivers (`m:<mid>`, `k:<key>`, `r:<room>`).
    Some(Vec<String>),
    /// Everyone.
    All,
}

impl Lanes {
    pub(crate) fn of(target: &Target) -> Lanes {
        match target {
            Target::Mids(mids) => Lanes::Some(mids.iter().map(|mid| format!("m:{mid}")).collect()),
            Target::Keys(keys) => Lanes::Some(keys.iter().map(|key| format!("k:{key}")).collect()),
            Target::Room(room) => Lanes::Some(vec![format!("r:{room}")]),
            Target::All { .. } => Lanes::All,
        }
    }
}

/// The lanes of the commands being delivered.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    lanes: HashMap<String, usize>,
    running: usize,
    everyone: bool,
}

impl Busy {
    /// Whether a command on `lanes` may start now.
    pub(crate) fn free(&self, lanes: &Lanes) -> bool {
        match lanes {
            _ if self.everyone => false,
            Lanes::All => self.running == 0,
            Lanes::Some(lanes) => !lanes.iter().any(|lane| self.lanes.contains_key(lane)),
        }
    }

    /// Commands being delivered.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    pub(crate) fn start(&mut self, lanes: &Lanes) {
        self.running += 1;
        match lanes {
            Lanes::All => self.everyone = true,
            Lanes::Some(lanes) => {
                for lane in lanes {
                    *self.lanes.entry(lane.clone()).or_default() += 1;
                }
            }
        }
    }

    pub(crate) fn finish(&mut self, lanes: &Lanes) {
        self.running -= 1;
        match lanes {
            Lanes::All => self.everyone = false,
            Lanes::Some(lanes) => {
                for lane in lanes {
                    if let Some(count) = self.lanes.get_mut(lane) {
                        *count -= 1;
                        if *count == 0 {
                            self.lanes.remove(lane);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_has_one_command_at_a_time_and_everyone_runs_alone() {
        let (one, two) = (
            Lanes::of(&Target::Mids(vec![1, 2])),
            Lanes::of(&Target::Mids(vec![2])),
        );
        let other = Lanes::of(&Target::Mids(vec![3]));
        let mut busy = Busy::default();
        busy.start(&one);
        assert!(!busy.free(&two), "user 2 is busy");
        assert!(busy.free(&other));
        assert!(!busy.free(&Lanes::All));
        busy.start(&other);
        busy.finish(&one);
        assert!(busy.free(&two));
        busy.finish(&other);
        assert_eq!(busy.running(), 0);
        busy.start(&Lanes::All);
        assert!(!busy.free(&other), "nothing beside a push to everyone");
        busy.finish(&Lanes::All);
        assert!(busy.free(&other));
    }
}
