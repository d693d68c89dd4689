//! One baseline thread's loop, the C program's: `rd_kafka_consume_batch_queue` of up to
//! [`BATCH`] records, one `rd_kafka_produce` per sum, one `rd_kafka_poll` per batch; with
//! transactions, each holds up to `max_records` results or [`TRANSACTION_MAX_DURATION`] of
//! them, the consumed offsets sent inside it.

use super::raw::{produce_sum, ConsumerQueue, RawProducer, TopicHandle};
use super::BaselineError;
use crate::stream_sum::exactly_once::TRANSACTION_MAX_DURATION;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Records per `rd_kafka_consume_batch_queue` call, as in the C program.
pub(super) const BATCH: usize = 10_000;
/// Longest wait of one batch call.
const BATCH_WAIT_MS: i32 = 100;
/// How long the loop waits for a record it knows exists before failing.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What one thread reads: its partitions' end offsets and how many records remain.
pub(super) struct Share {
    pub(super) topic: String,
    /// The end offset of each partition of the share, indexed by partition (0 for one not
    /// in it): a lookup per record, an array's as in the C program, not a hash map's (whose
    /// hashing cost the loop about 290 instructions a record, callgrind).
    pub(super) ends: Vec<i64>,
    pub(super) unread: u64,
}

impl Share {
    /// The share of `(partition, end offset)` pairs, `unread` records in all.
    pub(super) fn new(
        topic: String,
        ends: impl IntoIterator<Item = (i32, i64)>,
        unread: u64,
    ) -> Self {
        let mut by_partition = Vec::new();
        for (partition, end) in ends {
            let Ok(index) = usize::try_from(partition) else {
                continue;
            };
            if by_partition.len() <= index {
                by_partition.resize(index + 1, 0);
            }
            by_partition[index] = end;
        }
        Self {
            topic,
            ends: by_partition,
            unread,
        }
    }

    /// Whether the record at `partition`/`offset` is in the share.
    fn holds(&self, partition: i32, offset: i64) -> bool {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.ends.get(index))
            .is_some_and(|&end| offset < end)
    }
}

/// Reads the thread's share to its ends, producing each sum; with `max_records`, inside
/// transactions; with `output_partitions` (the output's partition count), a keyless result on
/// its record's partition when the output has it, as stream_sum places it. Returns the
/// results produced, every one delivered.
pub(super) fn run_thread<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    producer: &RawProducer,
    topic: &TopicHandle,
    mut share: Share,
    max_records: Option<usize>,
    output_partitions: Option<i32>,
) -> Result<u64, BaselineError> {
    let mut queue = ConsumerQueue::of(consumer, BATCH);
    let mut value = Vec::with_capacity(16);
    let mut produced = 0_u64;
    let mut last_progress = Instant::now();
    // The open transaction: since when, its records, the next offset per partition (by
    // partition, -1 for none; kept only with transactions).
    let mut open_since: Option<Instant> = None;
    let mut in_transaction = 0_usize;
    let tracked_partitions = if max_records.is_some() {
        share.ends.len()
    } else {
        0
    };
    let mut next = vec![-1_i64; tracked_partitions];
    while share.unread > 0 {
        let (max, wait_ms) = match (max_records, open_since) {
            (Some(limit), Some(since)) => (
                limit - in_transaction,
                TRANSACTION_MAX_DURATION
                    .saturating_sub(since.elapsed())
                    .as_millis() as i32,
            ),
            (Some(limit), None) => (limit, BATCH_WAIT_MS),
            (None, _) => (BATCH, BATCH_WAIT_MS),
        };
        if max_records.is_some() && open_since.is_none() {
            producer.begin_transaction()?;
            open_since = Some(Instant::now());
        }
        let mut failure = None;
        let mut taken = 0_u64;
        let count = queue.consume_batch(wait_ms, max, |record| {
            if failure.is_some() {
                return;
            }
            if let Some(code) = record.error() {
                failure = Some(BaselineError::Consume(code));
                return;
            }
            if !share.holds(record.partition(), record.offset()) {
                return;
            }
            let partition = output_partitions
                .filter(|&partitions| !record.has_key() && record.partition() < partitions)
                .map(|_| record.partition());
            match produce_sum(&record, partition, topic, producer, &mut value) {
                Ok(()) => {
                    taken += 1;
                    // `holds` checked the partition is an index of the share.
                    if let Some(slot) = next.get_mut(record.partition() as usize) {
                        *slot = record.offset() + 1;
                    }
                }
                Err(error) => failure = Some(error),
            }
        })?;
        if let Some(error) = failure {
            return Err(error);
        }
        share.unread = share.unread.saturating_sub(taken);
        produced += taken;
        in_transaction += taken as usize;
        if count > 0 {
            last_progress = Instant::now();
            producer.poll(0);
        } else if last_progress.elapsed() > IDLE_LIMIT {
            return Err(BaselineError::Stalled(IDLE_LIMIT, share.unread));
        }
        if let (Some(limit), Some(since)) = (max_records, open_since) {
            if in_transaction >= limit
                || since.elapsed() >= TRANSACTION_MAX_DURATION
                || share.unread == 0
            {
                let mut offsets = TopicPartitionList::new();
                for (partition, &offset) in next.iter().enumerate() {
                    if offset < 0 {
                        continue;
                    }
                    offsets
                        .add_partition_offset(
                            &share.topic,
                            partition as i32,
                            Offset::Offset(offset),
                        )
                        .map_err(|e| BaselineError::Transaction(e.to_string()))?;
                }
                producer.commit_transaction(consumer, &offsets, TRANSACTION_TIMEOUT)?;
                open_since = None;
                in_transaction = 0;
                next.fill(-1);
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::Share;

    #[test]
    fn a_share_holds_the_records_before_its_partitions_ends_only() {
        let share = Share::new("input".into(), [(3, 10), (0, 5)], 15);
        assert!(share.holds(0, 4) && share.holds(3, 9));
        assert!(
            !share.holds(0, 5),
            "the end is the first offset past the share"
        );
        assert!(
            !share.holds(1, 0) && !share.holds(2, 0),
            "partitions between: not in it"
        );
        assert!(
            !share.holds(4, 0) && !share.holds(-1, 0),
            "beyond it or no partition"
        );
    }
}
