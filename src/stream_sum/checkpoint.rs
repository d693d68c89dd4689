//! The at-least-once worker's checkpoints: its results go out in KafkaSink delivery
//! groups, one per [`CHECKPOINT_INTERVAL`](super::at_least_once::CHECKPOINT_INTERVAL), and
//! the input offsets behind a group are stored and committed once it and every older group
//! are delivered, without waiting for it; a revocation and the end flush and commit
//! everything.

use super::{StreamOutput, StreamOutputSerializer, StreamSumError};
use crate::kafka::sink::{DeliveryGroup, KafkaSink};
use crate::report::Report;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Longest wait, after a flush, for the sink's callbacks of the last delivery reports.
const REPORTS_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the flush of a revocation or of the end.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The offsets behind what was enqueued, and how they become durable (see the module): a
/// crash repeats what was not committed, never loses a sum.
pub(super) struct Checkpoint<'a, C: ConsumerContext> {
    sink: &'a KafkaSink<StreamOutput, StreamOutputSerializer>,
    consumer: &'a BaseConsumer<C>,
    input_topic: &'a str,
    /// The group being filled, and the highest offset per partition of its records.
    group: DeliveryGroup,
    highest: HashMap<i32, i64>,
    /// Sealed groups, oldest first, with their offsets.
    sealed: VecDeque<(DeliveryGroup, HashMap<i32, i64>)>,
    last: Instant,
}

impl<'a, C: ConsumerContext> Checkpoint<'a, C> {
    pub(super) fn new(
        sink: &'a KafkaSink<StreamOutput, StreamOutputSerializer>,
        consumer: &'a BaseConsumer<C>,
        input_topic: &'a str,
    ) -> Self {
        Self {
            sink,
            consumer,
            input_topic,
            group: sink.delivery_group(),
            highest: HashMap::new(),
            sealed: VecDeque::new(),
            last: Instant::now(),
        }
    }

    /// The group the results being enqueued now belong to.
    pub(super) fn group(&self) -> &DeliveryGroup {
        &self.group
    }

    /// Time since the last seal.
    pub(super) fn since_seal(&self) -> Duration {
        self.last.elapsed()
    }

    /// Notes the (partition, offset) of each record enqueued, in the order they came.
    pub(super) fn note(&mut self, records: impl Iterator<Item = (i32, i64)>) {
        // Records of one partition arrive in order: only the last of each run matters.
        let mut runs = records.peekable();
        while let Some((partition, offset)) = runs.next() {
            if runs.peek().is_none_or(|next| next.0 != partition) {
                self.highest.insert(partition, offset);
            }
        }
    }

    /// Closes the group being filled (when it holds anything) and opens the next.
    pub(super) fn seal(&mut self) {
        self.last = Instant::now();
        if self.highest.is_empty() {
            return;
        }
        let group = std::mem::replace(&mut self.group, self.sink.delivery_group());
        self.sealed
            .push_back((group, std::mem::take(&mut self.highest)));
    }

    /// Commits (asynchronously) the offsets of the delivered groups at the front, if any.
    pub(super) fn commit_delivered(&mut self) -> Result<(), StreamSumError> {
        if self.store_delivered()? {
            self.commit(CommitMode::Async);
        }
        Ok(())
    }

    /// Stores the offsets of the delivered groups at the front; true when there were any. A
    /// group with a failed delivery stops the worker: committing past it would lose sums.
    fn store_delivered(&mut self) -> Result<bool, StreamSumError> {
        let mut stored = false;
        while let Some((group, offsets)) = self.sealed.pop_front() {
            match self.sink.try_finish_group(group) {
                Ok(delivery) if delivery.failed > 0 => {
                    return Err(StreamSumError::Undelivered {
                        failed: delivery.failed,
                    })
                }
                Ok(_) => {
                    self.store(&offsets);
                    stored = true;
                }
                Err(group) => {
                    self.sealed.push_front((group, offsets));
                    break;
                }
            }
        }
        Ok(stored)
    }

    fn store(&self, offsets: &HashMap<i32, i64>) {
        for (&partition, &offset) in offsets {
            // `store_offset` commits offset + 1: the next record to read.
            if let Err(error) = self
                .consumer
                .store_offset(self.input_topic, partition, offset)
            {
                // Revoked meanwhile: its next owner re-reads from the last commit.
                tracing::debug!(partition, offset, error = %Report(&error), "offset not stored");
            }
        }
    }

    /// Commits the stored offsets; false when the broker refused (they stay stored, and
    /// the next commit carries them).
    fn commit(&self, mode: CommitMode) -> bool {
        match self.consumer.commit_consumer_state(mode) {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => true,
            Err(error) => {
                tracing::warn!(event = "commit", error = %Report(&error), "offset commit failed; the next one retries");
                false
            }
        }
    }

    /// Flushes, then stores and commits (synchronously, even with nothing new: an earlier
    /// asynchronous commit may have been refused) the offsets of everything enqueued. True
    /// when everything enqueued so far is delivered and its offsets committed.
    pub(super) fn run(&mut self) -> Result<bool, StreamSumError> {
        self.seal();
        let undelivered = self.sink.flush_blocking(FINAL_FLUSH_TIMEOUT)?;
        // The flush returns once the last delivery report is taken off librdkafka's queue;
        // the sink's polling thread may still be running its callbacks.
        let settled = Instant::now() + REPORTS_SETTLE_TIMEOUT;
        loop {
            self.store_delivered()?;
            if self.sealed.is_empty() || undelivered > 0 || Instant::now() >= settled {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if undelivered > 0 || !self.sealed.is_empty() {
            return Err(StreamSumError::Undelivered {
                failed: undelivered.max(1),
            });
        }
        Ok(self.commit(CommitMode::Sync))
    }
}
