//! At-least-once offset tracking for a consumer that processes messages concurrently.
//!
//! Messages of one partition finish out of order. An offset may be stored (and so
//! committed) only when every earlier message of that partition has finished, otherwise a
//! crash would skip the unfinished ones. [`PartitionOffsets`] keeps the in-flight offsets per
//! partition and says, after each completion, which offset is now safe to store.

use std::collections::{BTreeSet, HashMap};

/// In-flight and finished offsets of one partition.
#[derive(Debug, Default, Clone)]
struct Partition {
    /// The first offset started since the last clear: nothing below it was seen.
    first_started: Option<i64>,
    in_flight: BTreeSet<i64>,
    highest_done: Option<i64>,
    last_stored: Option<i64>,
}

/// Offset tracking for every partition one consumer reads.
#[derive(Debug, Default)]
pub struct PartitionOffsets {
    partitions: HashMap<i32, Partition>,
}

impl PartitionOffsets {
    pub fn new() -> Self {
        Self::default()
    }

    /// A message was received and its processing started.
    pub fn start(&mut self, partition: i32, offset: i64) {
        let state = self.partitions.entry(partition).or_default();
        state.first_started = Some(
            state
                .first_started
                .map_or(offset, |first| first.min(offset)),
        );
        state.in_flight.insert(offset);
    }

    /// A message finished. Returns the offset of the last message that, with every earlier
    /// one of the partition, is finished, when that advanced since the last call; that is
    /// the offset to hand to `store_offset` (which commits `offset + 1`).
    pub fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&partition)?;
        if !state.in_flight.remove(&offset) {
            return None;
        }
        state.highest_done = Some(state.highest_done.map_or(offset, |done| done.max(offset)));
        let safe = match state.in_flight.first() {
            // Everything below the oldest in-flight message is done.
            Some(&oldest) => oldest - 1,
            None => state.highest_done?,
        };
        let below_everything_seen = state.first_started.is_none_or(|first| safe < first);
        if below_everything_seen || state.last_stored.is_some_and(|stored| safe <= stored) {
            return None;
        }
        state.last_stored = Some(safe);
        Some(safe)
    }

    /// Messages still being processed, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Forgets a partition a rebalance took away: completions from before the revocation
    /// must not be stored over what its next owner commits.
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_past_contiguous_finished_messages() {
        let mut offsets = PartitionOffsets::new();
        for offset in 10..15 {
            offsets.start(0, offset);
        }
        // 11 and 12 finish before 10: nothing may be stored yet.
        assert_eq!(offsets.finish(0, 11), None);
        assert_eq!(offsets.finish(0, 12), None);
        // 10 finishes: 10, 11, 12 are done, 13 is in flight.
        assert_eq!(offsets.finish(0, 10), Some(12));
        assert_eq!(offsets.finish(0, 14), None, "13 still in flight");
        assert_eq!(offsets.finish(0, 13), Some(14));
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut offsets = PartitionOffsets::new();
        offsets.start(0, 100);
        offsets.start(1, 5);
        offsets.start(0, 101);
        assert_eq!(offsets.finish(1, 5), Some(5));
        assert_eq!(offsets.finish(0, 101), None);
        assert_eq!(offsets.finish(0, 100), Some(101));
    }

    #[test]
    fn unknown_or_repeated_completions_are_ignored() {
        let mut offsets = PartitionOffsets::new();
        assert_eq!(offsets.finish(3, 1), None);
        offsets.start(3, 1);
        assert_eq!(offsets.finish(3, 1), Some(1));
        assert_eq!(offsets.finish(3, 1), None);
        offsets.start(3, 2);
        offsets.forget(3);
        assert_eq!(offsets.finish(3, 2), None, "forgotten after a rebalance");
    }

    /// Random completion orders never store past an unfinished message.
    #[test]
    fn never_passes_an_unfinished_message() {
        use rand::seq::SliceRandom;
        for round in 0..200 {
            let mut offsets = PartitionOffsets::new();
            let mut pending: Vec<i64> = (0..50).collect();
            for &offset in &pending {
                offsets.start(0, offset);
            }
            pending.shuffle(&mut rand::rng());
            let mut finished = BTreeSet::new();
            for offset in pending {
                finished.insert(offset);
                if let Some(stored) = offsets.finish(0, offset) {
                    assert!(
                        (0..=stored).all(|o| finished.contains(&o)),
                        "round {round}: stored {stored}"
                    );
                }
            }
            assert_eq!(offsets.partitions[&0].last_stored, Some(49));
        }
    }
}
