//! The rolling restart as a small state machine: start a new worker for a
//! slot, wait until it is ready, and only then retire the old one, so that
//! serving capacity never drops below the configured worker count.
//!
//! `--reload-batch N` lets N slots' new workers start at once (like
//! Kubernetes' `maxSurge`): as each becomes ready its old worker drains and
//! the next slot starts, so at most N workers more than the worker count
//! run during the rollout, and a rollout of many workers takes about
//! 1/N of the time of one slot at a time.

use tokio::time::Instant;

use super::worker::WorkerId;

/// A reload in progress.
#[derive(Debug)]
pub struct Rollout {
    /// The generation being rolled in.
    pub generation: u64,
    /// When the reload was asked for, to report its duration.
    pub started: Instant,
    /// The slot to start next; equal to `slots` once every slot has started.
    next_slot: usize,
    slots: usize,
    /// How many new workers may be starting at once.
    batch: usize,
    /// The new workers started, not yet ready, with their slots.
    pending: Vec<(usize, WorkerId)>,
}

impl Rollout {
    pub fn new(generation: u64, slots: usize, batch: usize) -> Self {
        Rollout {
            generation,
            started: Instant::now(),
            next_slot: 0,
            slots,
            batch: batch.max(1),
            pending: Vec::new(),
        }
    }

    /// The slot that needs a new worker started now, if any: none while a
    /// batch is pending, none once every slot has started.
    pub fn slot_to_start(&self) -> Option<usize> {
        (self.pending.len() < self.batch && self.next_slot < self.slots).then_some(self.next_slot)
    }

    /// Records the worker started for the slot [`Rollout::slot_to_start`]
    /// named.
    pub fn started(&mut self, id: WorkerId) {
        debug_assert!(self.pending.len() < self.batch);
        self.pending.push((self.next_slot, id));
        self.next_slot += 1;
    }

    /// The new workers being waited for.
    pub fn pending(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.pending.iter().map(|&(_, id)| id)
    }

    /// Whether `id` is a new worker being waited for.
    pub fn is_pending(&self, id: WorkerId) -> bool {
        self.pending.iter().any(|&(_, pending)| pending == id)
    }

    /// If `id` is a pending worker, counts its slot as replaced and returns
    /// it.
    pub fn ready(&mut self, id: WorkerId) -> Option<usize> {
        let at = self
            .pending
            .iter()
            .position(|&(_, pending)| pending == id)?;
        let (slot, _) = self.pending.remove(at);
        Some(slot)
    }

    /// Moves past the next slot without starting a worker for it (it
    /// already runs the new generation).
    pub fn skip(&mut self) {
        self.next_slot += 1;
    }

    /// Slots already handed to the new generation: every slot started or
    /// skipped, but for those whose new worker is not ready yet.
    pub fn replaced(&self) -> usize {
        self.next_slot - self.pending.len()
    }

    pub fn is_complete(&self) -> bool {
        self.replaced() == self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_at_a_time() {
        let mut rollout = Rollout::new(2, 2, 1);
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
        let mut rollout = Rollout::new(3, 2, 1);
        rollout.skip();
        assert_eq!(rollout.slot_to_start(), Some(1));
        rollout.started(20);
        assert_eq!(rollout.ready(20), Some(1));
        assert!(rollout.is_complete());
    }

    #[test]
    fn a_batch_starts_that_many_slots_and_slides_as_each_is_ready() {
        let mut rollout = Rollout::new(4, 5, 2);
        assert_eq!(rollout.slot_to_start(), Some(0));
        rollout.started(30);
        assert_eq!(rollout.slot_to_start(), Some(1));
        rollout.started(31);
        assert_eq!(rollout.slot_to_start(), None, "two are starting");
        assert!(rollout.is_pending(30) && rollout.is_pending(31));
        // Whichever is ready first frees its place for the next slot.
        assert_eq!(rollout.ready(31), Some(1));
        assert_eq!(rollout.slot_to_start(), Some(2));
        rollout.started(32);
        assert_eq!(rollout.ready(30), Some(0));
        rollout.skip();
        assert_eq!(rollout.slot_to_start(), Some(4));
        rollout.started(34);
        assert_eq!(rollout.pending().collect::<Vec<_>>(), [32, 34]);
        assert!(!rollout.is_complete());
        assert_eq!(rollout.ready(34), Some(4));
        assert_eq!(rollout.ready(32), Some(2));
        assert!(rollout.is_complete());
        assert_eq!(rollout.replaced(), 5);
    }
}
