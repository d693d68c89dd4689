//! One exactly-once worker: a transactional consume-transform-produce loop, its records
//! taken in batches ([`FetchQueue`]) and each batch's results handed to the sink in one call
//! ([`Results`]).
//!
//! Each transaction holds up to `stream_sum.transaction_records` results (or 100 ms of
//! them) and the input offsets that produced them, sent to the transaction with the
//! consumer's group metadata; both commit or neither does. A crash leaves an open
//! transaction that the restarted worker's `init_transactions` (same transactional id)
//! aborts, and the restart reads on from the offsets of the last committed transaction, so a
//! `read_committed` reader of the output sees each sum once.
//!
//! After a rebalance or a failed commit the open transaction is aborted and the consumer
//! rewound to the committed offsets: its records are read again, by this worker or by the
//! partition's new owner.

use super::connect_output;
use super::results::Results;
use super::{dead_letter, sum_of, StreamOutputSerializer, StreamSumError};
use super::{known_partitions, output_sink, worker_consumer, Counters, Seat};
use super::{StreamContext, StreamOutput};
use crate::config::Config;
use crate::kafka::broker::BrokerKind;
use crate::kafka::fetch_queue::FetchQueue;
use crate::kafka::sink::{KafkaSink, SinkError};
use crate::kafka::KafkaError;
use crate::report::Report;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A transaction is committed after this long even when it holds few records.
pub const TRANSACTION_MAX_DURATION: Duration = Duration::from_millis(100);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// Records taken from the fetch queue at most at a time.
const BATCH_LEN: usize = 1_024;
/// How often the fetch queue's partitions are routed again (see [`FetchQueue`]).
const REROUTE_INTERVAL: Duration = Duration::from_millis(100);

/// The transactional id of worker `index`: stable across restarts, so a restarted worker
/// fences its crashed predecessor and aborts what it left open.
pub fn transactional_id(group_id: &str, index: usize) -> String {
    format!("{group_id}-stream-sum-{index}")
}

/// Runs worker `index` of `group_id` until `stop` is cancelled; commits its open
/// transaction before returning.
pub fn run_worker(
    seat: Seat<'_>,
    config: &Config,
    group_id: &str,
    broker: BrokerKind,
    counters: &Counters,
    stop: &CancellationToken,
) -> Result<(), StreamSumError> {
    let index = seat.index;
    let settings = &config.stream_sum;
    let consumer = worker_consumer(config, group_id, StreamContext::new(index), |consumer| {
        // Input written by transactional producers: only committed records.
        consumer.set("isolation.level", "read_committed");
    })?;
    // Records in batches, as the at-least-once worker takes them (see FetchQueue): routed
    // before they are assigned; others come one by one through the poll.
    let mut fetch = FetchQueue::new(&consumer, &settings.input_topic)?;
    let partitions = known_partitions(&consumer, &settings.input_topic);
    fetch.route(0..partitions);
    let output_partitions = known_partitions(&consumer, &settings.output_topic);
    let sink = output_sink(
        config,
        format!("stream_sum-txn-{index}"),
        Some(transactional_id(group_id, index)),
    )?;
    // Before consuming: a predecessor with this id is fenced and its open transaction
    // aborted before this worker reads the committed offsets, and the first transaction
    // does not wait for the registration (~50 ms on the dev broker) with a batch in hand.
    // Now and then librdkafka finds no broker up for the coordinator and looks again only
    // 0.5 s later; the start line keeps the other workers from starting without this one.
    // (Connecting first made that the rule, not the exception: 7 in 12 against 2 in 9.)
    sink.init_transactions_blocking()?;
    connect_output(&sink, index);
    seat.take(&consumer, &settings.input_topic, partitions, stop)?;
    let mut worker = TransactionalWorker {
        index,
        consumer: &consumer,
        sink: &sink,
        input_topic: &settings.input_topic,
        dlq_topic: format!("{}.dlq", settings.input_topic),
        max_records: settings.transaction_records,
        plain_commit: broker.is_mock(),
        results: Results::new(output_partitions),
        next_offsets: HashMap::new(),
        open_since: None,
        sums: 0,
        dead: 0,
    };
    let outcome = worker.run(&mut fetch, counters, stop);
    drop(fetch);
    let closed = sink.close_blocking(CLOSE_TIMEOUT);
    outcome?;
    closed?;
    Ok(())
}

struct TransactionalWorker<'a> {
    index: usize,
    /// Commit each transaction's offsets plainly too (the dev broker, which does not store
    /// offsets sent to a transaction).
    plain_commit: bool,
    consumer: &'a BaseConsumer<StreamContext>,
    sink: &'a KafkaSink<StreamOutput, StreamOutputSerializer>,
    input_topic: &'a str,
    dlq_topic: String,
    max_records: usize,
    /// Sums of the records taken since they were last handed to the sink (`hand_over`).
    results: Results,
    /// The next offset to read per partition, for the open transaction.
    next_offsets: HashMap<i32, i64>,
    open_since: Option<Instant>,
    sums: u64,
    dead: u64,
}

impl TransactionalWorker<'_> {
    fn run(
        &mut self,
        fetch: &mut FetchQueue<'_, StreamContext>,
        counters: &Counters,
        stop: &CancellationToken,
    ) -> Result<(), StreamSumError> {
        let mut routed_at = Instant::now();
        'serve: loop {
            let stopping = stop.is_cancelled();
            if let Some(since) = self.open_since {
                let records = self.sums + self.dead;
                if stopping
                    || records >= self.max_records as u64
                    || since.elapsed() >= TRANSACTION_MAX_DURATION
                {
                    self.commit(counters)?;
                }
            }
            if stopping {
                return Ok(());
            }
            if routed_at.elapsed() >= REROUTE_INTERVAL {
                fetch.reroute();
                routed_at = Instant::now();
            }
            // Rebalances and errors, and the records of partitions not routed, before the
            // batch: each partition's records in order.
            loop {
                let polled = self.consumer.poll(Duration::ZERO);
                if self.consumer.context().take_rebalanced() {
                    fetch.reroute();
                    routed_at = Instant::now();
                    if self.open_since.is_some() {
                        // The transaction may hold records of partitions that moved: drop
                        // it. The record just polled, if any, is read again after the rewind.
                        tracing::info!(
                            event = "rebalance",
                            worker = self.index,
                            "rebalance: open transaction aborted"
                        );
                        self.abort_and_rewind()?;
                        continue 'serve;
                    }
                }
                match polled {
                    None => break,
                    Some(Err(error)) => self.consume_error(KafkaError::from(error))?,
                    Some(Ok(record)) => self.take(
                        record.partition(),
                        record.offset(),
                        record.key(),
                        record.payload(),
                    )?,
                }
            }
            let timeout = self.open_since.map_or(Duration::from_millis(100), |since| {
                TRANSACTION_MAX_DURATION.saturating_sub(since.elapsed())
            });
            // Never more than the transaction may still hold.
            let room = (self.max_records as u64).saturating_sub(self.sums + self.dead);
            let taken = fetch.take(timeout, (room as usize).clamp(1, BATCH_LEN))?;
            for record in taken.iter() {
                match record.error() {
                    None => self.take(
                        record.partition(),
                        record.offset(),
                        record.key(),
                        record.payload(),
                    )?,
                    Some(RDKafkaErrorCode::PartitionEOF) => {}
                    Some(code) => self.consume_error(
                        rdkafka::error::KafkaError::MessageConsumption(code).into(),
                    )?,
                }
            }
            self.hand_over()?;
        }
    }

    /// A consume error ends the worker when fatal; librdkafka recovers from the others.
    fn consume_error(&self, error: KafkaError) -> Result<(), StreamSumError> {
        if error.is_fatal() {
            return Err(error.into());
        }
        tracing::warn!(event = "retry", worker = self.index, error = %Report(&error), "consume error (retrying)");
        Ok(())
    }

    /// One record into the open transaction (opened first when there is none).
    fn take(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<(), StreamSumError> {
        if self.open_since.is_none() {
            self.sink.begin_transaction_blocking()?;
            self.open_since = Some(Instant::now());
        }
        self.transform(partition, offset, key, payload)?;
        self.next_offsets.insert(partition, offset + 1);
        Ok(())
    }

    /// Produces the record's sum (or dead letter) inside the open transaction.
    fn transform(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<(), StreamSumError> {
        match sum_of(payload) {
            Ok(sum) => {
                self.results.push(partition, key, sum);
                self.sums += 1;
            }
            Err(reason) => {
                tracing::warn!(
                    event = "dlq",
                    worker = self.index,
                    partition,
                    offset,
                    %reason,
                    "undecodable record sent to the dead-letter topic"
                );
                self.sink.enqueue(&dead_letter(
                    &self.dlq_topic,
                    payload.map(<[u8]>::to_vec),
                    key,
                    &reason,
                ))?;
                self.dead += 1;
            }
        }
        Ok(())
    }

    /// Hands the sums taken so far to the sink, in one call, inside the open transaction.
    fn hand_over(&mut self) -> Result<(), StreamSumError> {
        if self.results.len() > 0 {
            self.sink.enqueue_batch(self.results.as_slice())?;
            self.results.clear();
        }
        Ok(())
    }

    /// Sends the offsets to the transaction and commits it. A commit that fails is aborted
    /// and the consumer rewound, so its records are processed again.
    fn commit(&mut self, counters: &Counters) -> Result<(), StreamSumError> {
        self.hand_over()?;
        let mut offsets = TopicPartitionList::new();
        for (&partition, &next) in &self.next_offsets {
            offsets.add_partition_offset(self.input_topic, partition, Offset::Offset(next))?;
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or(StreamSumError::NoGroupMetadata);
        let started = Instant::now();
        let committed = group.and_then(|group| {
            self.sink
                .send_offsets_to_transaction_blocking(offsets.clone(), group)
                .and_then(|()| self.sink.commit_transaction_blocking())
                .map_err(StreamSumError::from)
        });
        match committed {
            Ok(()) => {
                let committing = started.elapsed();
                // Only on the dev broker (librdkafka's mock): it acknowledges TxnOffsetCommit
                // without storing it, so only a plain commit lets a restart resume there;
                // synchronous, so a kill repeats at most the open transactions. On Apache
                // Kafka the transaction committed these offsets.
                if self.plain_commit {
                    if let Err(error) = self.consumer.commit(&offsets, CommitMode::Sync) {
                        // The next one carries these offsets too; until then a restart
                        // repeats this transaction's records as well.
                        tracing::warn!(event = "commit", worker = self.index, error = %Report(&error), "plain offset commit failed");
                    }
                }
                counters.committed(committing, started.elapsed().saturating_sub(committing));
                counters.add(self.sums, self.dead);
                self.reset();
                Ok(())
            }
            Err(error) => {
                tracing::warn!(event = "commit", worker = self.index, error = %Report(&error), "transaction commit failed; aborting and rewinding");
                self.abort_and_rewind()
            }
        }
    }

    fn reset(&mut self) {
        // Sums not handed over yet belong to the transaction being dropped or committed.
        self.results.clear();
        self.next_offsets.clear();
        self.open_since = None;
        self.sums = 0;
        self.dead = 0;
    }

    fn abort_and_rewind(&mut self) -> Result<(), StreamSumError> {
        match self.sink.abort_transaction_blocking() {
            // A failed commit may already have aborted it.
            Ok(()) | Err(SinkError::TransactionState(_)) => {}
            Err(error) => return Err(error.into()),
        }
        self.reset();
        let committed = self.consumer.committed(COMMITTED_TIMEOUT)?;
        let mut positions = TopicPartitionList::new();
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                // Nothing committed yet: where `auto.offset.reset` (earliest) starts.
                _ => Offset::Beginning,
            };
            positions.add_partition_offset(element.topic(), element.partition(), offset)?;
        }
        if positions.count() > 0 {
            let sought = self
                .consumer
                .seek_partitions(positions, COMMITTED_TIMEOUT)?;
            for element in sought.elements() {
                if let Err(error) = element.error() {
                    tracing::warn!(worker = self.index, partition = element.partition(), error = %Report(&error), "rewind failed");
                }
            }
        }
        Ok(())
    }
}
