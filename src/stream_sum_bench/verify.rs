//! What the bench reads back: the offsets a topic holds, the backlog's records and sum, and
//! a run's output (how many results, their sum, when the first was produced).

use super::BenchError;
use crate::avro::{decode_sum_result, for_each_number};
use crate::config::Config;
use crate::kafka::statistics::StatisticsContext;
use crate::kafka::topic_reader::{ranges_between, read_ranges, retained_ranges, PartitionRange};
use crate::stream_sum::{partition_count, worker_consumer, StreamSumError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, Timestamp};
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scan waits for a record it knows exists before failing.
const SCAN_IDLE_LIMIT: Duration = Duration::from_secs(30);

/// What a scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Scanned {
    pub(super) records: u64,
    pub(super) sum: i64,
    /// The oldest record's timestamp (CreateTime: when its producer took it), ms since the
    /// epoch.
    pub(super) first_ms: Option<i64>,
}

/// The partition count of a topic the bench needs, or an error that says what to do.
pub(super) fn existing_partitions(config: &Config, topic: &str) -> Result<usize, BenchError> {
    partition_count(config, topic).map_err(|error| match error {
        StreamSumError::NoSuchTopic(topic) => BenchError::MissingTopic(topic),
        other => BenchError::Processor(other),
    })
}

/// What the topic holds now, per partition: from the oldest retained offset to the end.
pub(super) fn retained(config: &Config, topic: &str) -> Result<Vec<PartitionRange>, BenchError> {
    let consumer: BaseConsumer = crate::kafka::client_config(
        &config.kafka,
        crate::kafka::ClientRole::Admin,
        "stream_sum-bench-metadata",
    )?
    .create()
    .map_err(crate::kafka::KafkaError::from)?;
    Ok(retained_ranges(&consumer, topic, METADATA_TIMEOUT)?)
}

/// The `SumResult`s written to `topic` since `before` (its retained ranges then).
pub(super) fn new_sums(
    config: &Config,
    topic: &str,
    before: &[PartitionRange],
) -> Result<Scanned, BenchError> {
    let after = retained(config, topic)?;
    // `ranges_between` starts a range at what is still there: a start that moved past the
    // earlier end means some of this run's records are gone, not that there were fewer.
    for now in &after {
        if let Some(earlier) = before.iter().find(|b| b.partition == now.partition) {
            if now.start > earlier.end {
                return Err(BenchError::Trimmed {
                    topic: topic.to_string(),
                    partition: now.partition,
                    from: earlier.end,
                    to: now.start,
                });
            }
        }
    }
    scan(config, topic, &ranges_between(before, &after), |payload| {
        decode_sum_result(payload).ok()
    })
}

/// The sum of one `IntegerList`'s numbers.
pub(super) fn sum_of_list(payload: &[u8]) -> Option<i64> {
    let mut sum = 0_i64;
    for_each_number(payload, |n| sum += i64::from(n)).ok()?;
    Some(sum)
}

/// Commits each range's start for `group`: a new group's members begin there.
pub(super) fn commit_starts(
    config: &Config,
    group: &str,
    backlog: &[PartitionRange],
) -> Result<(), BenchError> {
    let consumer = worker_consumer(config, group, StatisticsContext, |_| {})?;
    let starts =
        PartitionRange::offsets(&config.stream_sum.input_topic, backlog, |range| range.start)
            .map_err(crate::kafka::KafkaError::from)?;
    consumer
        .commit(&starts, CommitMode::Sync)
        .map_err(crate::kafka::KafkaError::from)?;
    Ok(())
}

/// Reads `ranges` of `topic`: how many records `value` accepted, the sum of what it
/// returned, and their timestamps' span. A record it rejects fails the scan.
pub(super) fn scan(
    config: &Config,
    topic: &str,
    ranges: &[PartitionRange],
    value: impl Fn(&[u8]) -> Option<i64>,
) -> Result<Scanned, BenchError> {
    let consumer = worker_consumer(
        config,
        "stream-sum-bench-scan",
        StatisticsContext,
        |consumer| {
            // What a transactional run committed (the exactly-once bench), nothing aborted.
            consumer
                .set("auto.offset.reset", "error")
                .set("isolation.level", "read_committed");
        },
    )?;
    let mut scanned = Scanned::default();
    let mut invalid = None;
    read_ranges(
        &consumer,
        topic,
        ranges,
        SCAN_IDLE_LIMIT,
        |message| match message.payload().and_then(&value) {
            Some(parsed) => {
                scanned.records += 1;
                scanned.sum += parsed;
                if let Timestamp::CreateTime(ms) = message.timestamp() {
                    scanned.first_ms = Some(scanned.first_ms.map_or(ms, |first| first.min(ms)));
                }
            }
            None => {
                invalid.get_or_insert((message.partition(), message.offset()));
            }
        },
    )?;
    if let Some((partition, offset)) = invalid {
        return Err(BenchError::InvalidOutput {
            topic: topic.to_string(),
            partition,
            offset,
        });
    }
    Ok(scanned)
}
