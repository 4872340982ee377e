//! Where the idle connections a draining worker hands over go, one by one,
//! and how the batch they came in is settled once every part is.
//!
//! Each connection of a batch goes to the least loaded worker that may take
//! it, counting the ones placed before it. Giving a whole batch to one
//! worker was worse than it looks: a draining worker hands its keep-alive
//! clients over in batches of up to 32, so a reload could put every
//! keep-alive client of the host on one new worker, where each later reload
//! found them together again and moved them on together, one worker of
//! each generation serving dozens of times more requests than its siblings.
//!
//! A worker of the draining worker's own generation may take connections
//! too, while it serves: in a rollout, the old worker of the slot not
//! replaced yet. Without it the first new worker would be the only taker of
//! the first old worker's clients, however many of the host's they were;
//! with it they spread, and move on with their worker's drain a moment
//! later, to the newest generation.

use std::collections::HashMap;

use crate::master::worker::WorkerId;
use crate::protocol::Settlement;

/// A worker that may take handed-over connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taker {
    pub id: WorkerId,
    pub generation: u64,
    /// Its connections open now, as near as the master knows.
    pub open: u64,
}

/// The worker each of `count` connections goes to, in order: the one with
/// the fewest open, counting those placed so far; between equals, the
/// newest generation, then the lowest id. Empty when there is no taker.
pub fn place(takers: &[Taker], count: usize) -> Vec<WorkerId> {
    let mut open: Vec<Taker> = takers.to_vec();
    let mut placement = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(taker) = open
            .iter_mut()
            .min_by_key(|t| (t.open, std::cmp::Reverse(t.generation), t.id))
        else {
            break;
        };
        taker.open += 1;
        placement.push(taker.id);
    }
    placement
}

/// The batches given to workers in parts and not all settled yet, by the
/// worker that handed them over and its batch number.
#[derive(Debug, Default)]
pub struct Settling {
    batches: HashMap<(WorkerId, u64), Parts>,
}

#[derive(Debug)]
struct Parts {
    /// Connections in the batch.
    count: usize,
    /// Parts not settled yet.
    left: usize,
    /// Positions that came back.
    returned: Vec<u32>,
}

impl Settling {
    /// Batch `batch` of worker `from`, `count` connections, went out in
    /// `parts` parts.
    pub fn expect(&mut self, from: WorkerId, batch: u64, count: usize, parts: usize) {
        self.batches.insert(
            (from, batch),
            Parts {
                count,
                left: parts,
                returned: Vec::new(),
            },
        );
    }

    /// One part of a batch is settled: how the whole batch is, once this
    /// was its last part. A part of no batch expected is a batch of its
    /// own.
    pub fn part(
        &mut self,
        from: WorkerId,
        batch: u64,
        positions: Vec<u32>,
        taken: bool,
    ) -> Option<Settlement> {
        let Some(parts) = self.batches.get_mut(&(from, batch)) else {
            return Some(if taken {
                Settlement::Taken
            } else {
                Settlement::Returned
            });
        };
        if !taken {
            parts.returned.extend(positions);
        }
        parts.left -= 1;
        if parts.left > 0 {
            return None;
        }
        let parts = self.batches.remove(&(from, batch))?;
        Some(Settlement::of(parts.count, parts.returned))
    }

    /// Batches with a part still out.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.batches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taker(id: WorkerId, generation: u64, open: u64) -> Taker {
        Taker {
            id,
            generation,
            open,
        }
    }

    #[test]
    fn a_batch_spreads_to_even_out_the_takers() {
        let takers = [taker(3, 2, 0), taker(2, 1, 5)];
        let placement = place(&takers, 9);
        let to = |id| placement.iter().filter(|&&t| t == id).count();
        assert_eq!((to(3), to(2)), (7, 2), "0 + 7 against 5 + 2");
        assert_eq!(
            &placement[..6],
            [3, 3, 3, 3, 3, 3],
            "the newer wins a tie at 5"
        );
        assert!(place(&[], 3).is_empty());
    }

    #[test]
    fn a_batch_is_settled_once_its_last_part_is() {
        let mut settling = Settling::default();
        settling.expect(1, 7, 4, 2);
        assert_eq!(settling.part(1, 7, vec![0, 2], true), None);
        assert_eq!(
            settling.part(1, 7, vec![3, 1], false),
            Some(Settlement::Partly(vec![1, 3]))
        );
        assert_eq!(settling.len(), 0);

        settling.expect(1, 8, 2, 2);
        assert_eq!(settling.part(1, 8, vec![1], false), None);
        assert_eq!(
            settling.part(1, 8, vec![0], false),
            Some(Settlement::Returned)
        );
        assert_eq!(
            settling.part(2, 1, vec![0, 1], true),
            Some(Settlement::Taken),
            "a batch given whole"
        );
    }
}
