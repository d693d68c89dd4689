//! Reading fixed offset ranges of a topic to their end, outside any consumer group: the
//! checks that read back what a run produced (`stream_sum bench`'s scans and
//! `zstd_producer --verify`).
//!
//! A range's end is a high watermark taken before reading. Records at or past it are
//! skipped, and a range whose records stop arriving (removed by retention meanwhile, or a
//! broker whose watermark runs ahead of what it serves) is an error naming how many never
//! came, not a short read that passes.

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Offsets `start..end` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl PartitionRange {
    pub fn len(&self) -> i64 {
        (self.end - self.start).max(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `topic`'s partitions of `ranges`, each at the offset `at` picks (its start, its end).
    pub fn offsets(
        topic: &str,
        ranges: &[PartitionRange],
        at: impl Fn(&PartitionRange) -> i64,
    ) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
        let mut list = TopicPartitionList::new();
        for range in ranges {
            list.add_partition_offset(topic, range.partition, Offset::Offset(at(range)))?;
        }
        Ok(list)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadRangesError {
    #[error("reading {topic} failed")]
    Kafka {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{topic}: {missing} offsets below the high watermark never arrived (nothing for {idle:?}; removed by retention meanwhile?)")]
    Stalled {
        topic: String,
        missing: i64,
        idle: Duration,
    },
}

/// Every partition of `topic` from its oldest retained offset to its high watermark now.
pub fn retained_ranges<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionRange>, ReadRangesError> {
    let kafka = |source| ReadRangesError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32;
    (0..partitions)
        .map(|partition| {
            let (start, end) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(kafka)?;
            Ok(PartitionRange {
                partition,
                start,
                end,
            })
        })
        .collect()
}

/// The ranges between two readings of the same partitions' high watermarks.
pub fn ranges_between(before: &[PartitionRange], after: &[PartitionRange]) -> Vec<PartitionRange> {
    after
        .iter()
        .map(|now| {
            let start = before
                .iter()
                .find(|earlier| earlier.partition == now.partition)
                .map_or(now.start, |earlier| earlier.end.max(now.start));
            PartitionRange {
                partition: now.partition,
                start,
                end: now.end,
            }
        })
        .collect()
}

/// Assigns `ranges` of `topic` to `consumer` and hands every record in them to `visit`, in
/// each partition's order. Returns the records read. Fails when no record arrives for
/// `idle_limit` while some are still missing.
///
/// A partition written by transactions ends in a commit marker, a record the consumer
/// never delivers: a partition whose position (which moves past markers) reached its end
/// is read to its end too. So the count read is the records, not the offsets, of a range.
pub fn read_ranges<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    ranges: &[PartitionRange],
    idle_limit: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, ReadRangesError> {
    let kafka = |source| ReadRangesError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let mut assignment = TopicPartitionList::new();
    // Ranges not read to their end yet: partition -> (start, end).
    let mut unread = HashMap::new();
    for range in ranges.iter().filter(|range| !range.is_empty()) {
        assignment
            .add_partition_offset(topic, range.partition, Offset::Offset(range.start))
            .map_err(kafka)?;
        unread.insert(range.partition, (range.start, range.end));
    }
    if unread.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let mut read = 0_u64;
    let mut last_record = Instant::now();
    while !unread.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_record = Instant::now();
                let Some(&(_, end)) = unread.get(&message.partition()) else {
                    continue;
                };
                if message.offset() < end {
                    read += 1;
                    visit(&message);
                }
                if message.offset() + 1 >= end {
                    unread.remove(&message.partition());
                }
            }
            Some(Err(error)) => return Err(kafka(error)),
            None => {
                let positions = consumer.position().map_err(kafka)?;
                let mut missing = 0;
                unread.retain(|&partition, &mut (start, end)| {
                    let position = match positions
                        .find_partition(topic, partition)
                        .map(|element| element.offset())
                    {
                        Some(Offset::Offset(position)) => position,
                        _ => start,
                    };
                    missing += (end - position).max(0);
                    position < end
                });
                if !unread.is_empty() && last_record.elapsed() > idle_limit {
                    return Err(ReadRangesError::Stalled {
                        topic: topic.to_string(),
                        missing,
                        idle: idle_limit,
                    });
                }
            }
        }
    }
    consumer.unassign().map_err(kafka)?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_between_two_readings() {
        let before = [
            PartitionRange {
                partition: 0,
                start: 0,
                end: 10,
            },
            PartitionRange {
                partition: 1,
                start: 5,
                end: 5,
            },
        ];
        let after = [
            PartitionRange {
                partition: 0,
                start: 3,
                end: 14,
            },
            PartitionRange {
                partition: 1,
                start: 5,
                end: 5,
            },
            PartitionRange {
                partition: 2,
                start: 0,
                end: 7,
            },
        ];
        let new: Vec<(i32, i64, i64)> = ranges_between(&before, &after)
            .iter()
            .map(|r| (r.partition, r.start, r.end))
            .collect();
        assert_eq!(new, vec![(0, 10, 14), (1, 5, 5), (2, 0, 7)]);
    }
}
