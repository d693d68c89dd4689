//! At-least-once offset tracking for a consumer that processes messages in batches, several
//! batches at once.
//!
//! A consumer puts each message into a batch; several batches fill at once (server_kafka
//! keeps one per activity), so a partition's messages are spread over batches in runs, and
//! batches finish out of order. An offset may be stored (and so committed) only when every
//! earlier message of that partition has finished, otherwise a crash would skip the
//! unfinished ones. [`BatchOffsets`] keeps, per partition, the runs in consumption order
//! with the batch and last offset of each, and says after each finished batch which offsets
//! are now safe to store. Its cost is per run of a batch in a partition, not per message.

use std::collections::{HashMap, VecDeque};

/// A run of consecutive messages of one partition in one batch.
#[derive(Debug, Clone, Copy)]
struct Span {
    batch: u64,
    last_offset: i64,
    done: bool,
}

/// One partition's runs, oldest first; the front run's id is `front_id`, the next ones
/// count up from it, so a batch finds its runs by id without a scan.
#[derive(Debug, Default)]
struct Runs {
    front_id: u64,
    spans: VecDeque<Span>,
}

/// Offset tracking for every partition one consumer reads.
#[derive(Debug, Default)]
pub struct BatchOffsets {
    partitions: HashMap<i32, Runs>,
    /// Per partition, the id the next run gets; kept across [`BatchOffsets::forget`], so a
    /// batch from before a revocation never names a run of the partition's next assignment.
    next_ids: HashMap<i32, u64>,
    /// Per batch in flight, its runs: partition and run id.
    members: HashMap<u64, Vec<(i32, u64)>>,
}

impl BatchOffsets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Message `offset` of `partition` joined batch `batch` (messages of a partition come in
    /// offset order).
    pub fn add(&mut self, batch: u64, partition: i32, offset: i64) {
        let next_id = self.next_ids.entry(partition).or_insert(0);
        let runs = self.partitions.entry(partition).or_insert_with(|| Runs {
            front_id: *next_id,
            spans: VecDeque::new(),
        });
        match runs.spans.back_mut() {
            Some(span) if span.batch == batch => span.last_offset = span.last_offset.max(offset),
            _ => {
                runs.spans.push_back(Span {
                    batch,
                    last_offset: offset,
                    done: false,
                });
                self.members
                    .entry(batch)
                    .or_default()
                    .push((partition, *next_id));
                *next_id += 1;
            }
        }
    }

    /// Batch `batch` finished. Appends to `store` each partition whose every message up to
    /// some offset is now finished, with that offset (the one to hand to `store_offset`,
    /// which commits `offset + 1`).
    pub fn finish(&mut self, batch: u64, store: &mut Vec<(i32, i64)>) {
        let Some(runs_of_batch) = self.members.remove(&batch) else {
            return;
        };
        let mut touched: Vec<i32> = Vec::new();
        for (partition, id) in runs_of_batch {
            let Some(runs) = self.partitions.get_mut(&partition) else {
                continue; // forgotten after a rebalance
            };
            let Some(index) = id.checked_sub(runs.front_id) else {
                continue; // a run of an earlier assignment
            };
            if let Some(span) = runs.spans.get_mut(index as usize) {
                span.done = true;
                if !touched.contains(&partition) {
                    touched.push(partition);
                }
            }
        }
        for partition in touched {
            let Some(runs) = self.partitions.get_mut(&partition) else {
                continue;
            };
            let mut safe = None;
            while let Some(front) = runs.spans.front().filter(|span| span.done) {
                safe = Some(front.last_offset);
                runs.spans.pop_front();
                runs.front_id += 1;
            }
            if let Some(offset) = safe {
                store.push((partition, offset));
            }
        }
    }

    /// Runs holding unfinished messages, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|runs| runs.spans.len()).sum()
    }

    /// Forgets a partition a rebalance took away: batches from before the revocation must
    /// not store offsets over what its next owner commits.
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn stores_only_behind_finished_batches() {
        let mut offsets = BatchOffsets::new();
        // Batch 0: offsets 10-12 of partition 0; batch 1: 13-14 of p0 and 5 of p1.
        for offset in 10..=12 {
            offsets.add(0, 0, offset);
        }
        offsets.add(1, 0, 13);
        offsets.add(1, 1, 5);
        offsets.add(1, 0, 14);
        let mut store = Vec::new();
        offsets.finish(1, &mut store);
        assert_eq!(store, vec![(1, 5)], "p0 waits for batch 0");
        store.clear();
        offsets.finish(0, &mut store);
        assert_eq!(store, vec![(0, 14)]);
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn interleaved_batches_store_behind_every_run() {
        let mut offsets = BatchOffsets::new();
        // Partition 0: 1-2 in batch A (0), 3 in B (1), 4 in A again, 5 in B.
        offsets.add(0, 0, 1);
        offsets.add(0, 0, 2);
        offsets.add(1, 0, 3);
        offsets.add(0, 0, 4);
        offsets.add(1, 0, 5);
        let mut store = Vec::new();
        offsets.finish(0, &mut store);
        assert_eq!(store, vec![(0, 2)], "4 waits behind 3, which B holds");
        store.clear();
        offsets.finish(1, &mut store);
        assert_eq!(store, vec![(0, 5)]);
        assert_eq!(offsets.in_flight(), 0);
    }

    #[test]
    fn unknown_repeated_and_forgotten_batches_store_nothing() {
        let mut offsets = BatchOffsets::new();
        let mut store = Vec::new();
        offsets.finish(7, &mut store);
        offsets.add(0, 3, 1);
        offsets.finish(0, &mut store);
        offsets.finish(0, &mut store);
        assert_eq!(store, vec![(3, 1)]);
        store.clear();
        offsets.add(1, 3, 2);
        offsets.forget(3);
        offsets.finish(1, &mut store);
        assert!(store.is_empty(), "forgotten after a rebalance");
        // Re-assigned: the batch being filled holds new messages of the partition.
        offsets.add(2, 3, 40);
        offsets.finish(1, &mut store);
        assert!(
            store.is_empty(),
            "a batch from before the revocation stores nothing"
        );
        offsets.finish(2, &mut store);
        assert_eq!(store, vec![(3, 40)]);
    }

    /// Random, interleaved batches over several partitions finishing in random orders never
    /// store past an unfinished message, and end with every partition's last offset stored.
    #[test]
    fn never_passes_an_unfinished_message() {
        use rand::seq::SliceRandom;
        use rand::Rng;
        let mut rng = rand::rng();
        for round in 0..200 {
            let mut offsets = BatchOffsets::new();
            let mut next_offset = [0_i64; 3];
            let mut members: Vec<Vec<(i32, i64)>> = vec![Vec::new(); 20];
            // Every batch gets a message first, then messages go to random batches: several
            // batches fill at once, as one per activity does.
            for message in 0..100_u64 {
                let batch = if message < 20 {
                    message
                } else {
                    rng.random_range(0..20)
                };
                let partition = rng.random_range(0..3);
                let offset = next_offset[partition as usize];
                next_offset[partition as usize] += 1;
                offsets.add(batch, partition, offset);
                members[batch as usize].push((partition, offset));
            }
            let mut order: Vec<u64> = (0..20).collect();
            order.shuffle(&mut rng);
            let mut finished: BTreeSet<(i32, i64)> = BTreeSet::new();
            let mut stored = [-1_i64; 3];
            for batch in order {
                finished.extend(members[batch as usize].iter().copied());
                let mut store = Vec::new();
                offsets.finish(batch, &mut store);
                for (partition, offset) in store {
                    assert!(
                        (0..=offset).all(|o| finished.contains(&(partition, o))),
                        "round {round}: stored {offset} of partition {partition}"
                    );
                    assert!(offset > stored[partition as usize]);
                    stored[partition as usize] = offset;
                }
            }
            for partition in 0..3 {
                assert_eq!(stored[partition], next_offset[partition] - 1);
            }
        }
    }
}
