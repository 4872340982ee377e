//! The rolling restart as a small state machine: one slot at a time, start the
//! new worker, wait until it is ready, and only then retire the old one, so
//! that serving capacity never drops below the configured worker count.

use tokio::time::Instant;

use super::worker::WorkerId;

/// A reload in progress.
#[derive(Debug)]
pub struct Rollout {
    /// The generation being rolled in.
    pub generation: u64,
    /// When the reload was asked for, to report its duration.
    pub started: Instant,
    /// The slot to replace next; equal to `slots` when every slot is done.
    next_slot: usize,
    slots: usize,
    /// The new worker started for `next_slot`, not yet ready.
    pending: Option<WorkerId>,
}

impl Rollout {
    pub fn new(generation: u64, slots: usize) -> Self {
        Rollout {
            generation,
            started: Instant::now(),
            next_slot: 0,
            slots,
            pending: None,
        }
    }

    /// The slot that needs a new worker started now, if any: none while one
    /// is pending, none once every slot is replaced.
    pub fn slot_to_start(&self) -> Option<usize> {
        (self.pending.is_none() && self.next_slot < self.slots).then_some(self.next_slot)
    }

    /// Records the worker started for the current slot.
    pub fn started(&mut self, id: WorkerId) {
        debug_assert!(self.pending.is_none());
        self.pending = Some(id);
    }

    /// The new worker being waited for.
    pub fn pending(&self) -> Option<WorkerId> {
        self.pending
    }

    /// If `id` is the pending worker, moves on and returns the slot it takes
    /// over.
    pub fn ready(&mut self, id: WorkerId) -> Option<usize> {
        if self.pending != Some(id) {
            return None;
        }
        self.pending = None;
        let slot = self.next_slot;
        self.next_slot += 1;
        Some(slot)
    }

    /// Moves past the current slot without starting a worker for it (it
    /// already runs the new generation).
    pub fn skip(&mut self) {
        debug_assert!(self.pending.is_none());
        self.next_slot += 1;
    }

    /// Slots already handed to the new generation.
    pub fn replaced(&self) -> usize {
        self.next_slot
    }

    pub fn is_complete(&self) -> bool {
        self.next_slot == self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_at_a_time() {
        let mut rollout = Rollout::new(2, 2);
        assert_eq!(rollout.slot_to_start(), Some(0));
        rollout.started(10);
        assert_eq!(rollout.slot_to_start(), None, "wait for the pending worker");
        assert_eq!(
            rollout.ready(11),
            None,
            "another worker's readiness is not ours"
        );
        assert_eq!(rollout.ready(10), Some(0));
        assert_eq!(rollout.slot_to_start(), Some(1));
        rollout.started(12);
        assert_eq!(rollout.ready(12), Some(1));
        assert!(rollout.is_complete());
        assert_eq!(rollout.slot_to_start(), None);
    }

    #[test]
    fn a_slot_already_in_the_new_generation_is_skipped() {
        let mut rollout = Rollout::new(3, 2);
        rollout.skip();
        assert_eq!(rollout.slot_to_start(), Some(1));
        rollout.started(20);
        assert_eq!(rollout.ready(20), Some(1));
        assert!(rollout.is_complete());
    }
}
