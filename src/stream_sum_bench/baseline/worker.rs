//! One baseline thread's loop, the C program's: `rd_kafka_consume_batch_queue` of up to
//! [`BATCH`] records, one `rd_kafka_produce` per sum, one `rd_kafka_poll` per batch; with
//! transactions, each holds up to `max_records` results or [`TRANSACTION_MAX_DURATION`] of
//! them, the consumed offsets sent inside it.

use super::raw::{produce_sum, ConsumerQueue, RawProducer, TopicHandle};
use super::BaselineError;
use crate::stream_sum::exactly_once::TRANSACTION_MAX_DURATION;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
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
    pub(super) ends: HashMap<i32, i64>,
    pub(super) unread: u64,
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
    // The open transaction: since when, its records, the next offset per partition.
    let mut open_since: Option<Instant> = None;
    let mut in_transaction = 0_usize;
    let mut next = HashMap::new();
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
            let in_range = share
                .ends
                .get(&record.partition())
                .is_some_and(|end| record.offset() < *end);
            if !in_range {
                return;
            }
            let partition = output_partitions
                .filter(|&partitions| !record.has_key() && record.partition() < partitions)
                .map(|_| record.partition());
            match produce_sum(&record, partition, topic, producer, &mut value) {
                Ok(()) => {
                    taken += 1;
                    next.insert(record.partition(), record.offset() + 1);
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
                for (&partition, &offset) in &next {
                    offsets
                        .add_partition_offset(&share.topic, partition, Offset::Offset(offset))
                        .map_err(|e| BaselineError::Transaction(e.to_string()))?;
                }
                producer.commit_transaction(consumer, &offsets, TRANSACTION_TIMEOUT)?;
                open_since = None;
                in_transaction = 0;
                next.clear();
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(produced)
}
