//! One at-least-once worker: a consuming thread and a producing thread joined by a bounded
//! [`BatchQueue`].
//!
//! The consuming thread takes its records in batches ([`FetchQueue`]; partitions it did not
//! know at start come one by one through the consumer's poll), decodes each `IntegerList`
//! straight into its sum (no allocation) and fills batches. When the queue stays full it pauses its partitions
//! and keeps polling, so rebalances are still served while the producer catches up (a
//! consumer that stops polling stalls its whole group until the session times out).
//!
//! The producing thread hands each batch's results to the worker's own output sink in one
//! call ([`Results`], the allocation-free fast path), in one delivery group per
//! [`CHECKPOINT_INTERVAL`]; the input offsets behind a group are stored and committed once
//! it and every group before it are delivered, without stopping to wait (a flush every
//! interval cost a fifth of the throughput: docs/BENCHMARKS.md). A crash repeats sums, never
//! loses one. Undecodable records go through the same sink to `<input>.dlq`.

use super::batch_queue::{BatchQueue, Popped};
use super::checkpoint::Checkpoint;
use super::connect_output;
use super::results::Results;
use super::{dead_letter, sum_of, StreamOutputSerializer};
use super::{known_partitions, output_sink, worker_consumer, Counters, Seat};
use super::{StreamOutput, StreamSumError};
use crate::config::Config;
use crate::kafka::fetch_queue::FetchQueue;
use crate::kafka::sink::KafkaSink;
use crate::kafka::KafkaError;
use crate::report::Report;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Results in one delivery group: how far commits trail what is enqueued.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a full queue is waited on before the consumer pauses its partitions.
const FULL_QUEUE_PATIENCE: Duration = Duration::from_millis(100);
/// Records per batch handed from the consuming to the producing thread.
const BATCH_LEN: usize = 1_024;
/// How long a partly filled batch waits for another record before it is handed over.
const STAGED_LINGER: Duration = Duration::from_millis(1);
/// How often the fetch queue's partitions are routed again (see [`FetchQueue`]).
const REROUTE_INTERVAL: Duration = Duration::from_millis(100);

/// A record key, inline when short so ordinary keys cost no allocation.
enum Key {
    None,
    Inline { len: u8, bytes: [u8; 32] },
    Heap(Vec<u8>),
}

impl Key {
    fn from(key: Option<&[u8]>) -> Self {
        match key {
            None => Self::None,
            Some(key) if key.len() <= 32 => {
                let mut bytes = [0; 32];
                bytes[..key.len()].copy_from_slice(key);
                Self::Inline {
                    len: key.len() as u8,
                    bytes,
                }
            }
            Some(key) => Self::Heap(key.to_vec()),
        }
    }

    fn as_slice(&self) -> Option<&[u8]> {
        match self {
            Self::None => None,
            Self::Inline { len, bytes } => Some(&bytes[..usize::from(*len)]),
            Self::Heap(bytes) => Some(bytes),
        }
    }
}

/// A decoded record on its way to the producing thread.
struct Item {
    partition: i32,
    offset: i64,
    key: Key,
    outcome: Outcome,
}

enum Outcome {
    Sum(i64),
    /// Rare, so it may allocate: the record as it came and why it was rejected.
    Undecodable(Box<(Option<Vec<u8>>, String)>),
}

fn item(message: &BorrowedMessage<'_>) -> Item {
    item_of(
        message.partition(),
        message.offset(),
        message.key(),
        message.payload(),
    )
}

fn item_of(partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) -> Item {
    let outcome = match sum_of(payload) {
        Ok(sum) => Outcome::Sum(sum),
        Err(reason) => Outcome::Undecodable(Box::new((payload.map(<[u8]>::to_vec), reason))),
    };
    Item {
        partition,
        offset,
        key: Key::from(key),
        outcome,
    }
}

/// A batch being filled by the consuming thread, and one waiting for room in the queue.
#[derive(Default)]
struct Staged {
    parked: Option<Vec<Item>>,
    current: Vec<Item>,
}

/// What the consuming thread shares with its rebalance callback and the producing thread.
pub struct Handoff {
    queue: BatchQueue<Item>,
    /// Kept here, not on the consuming thread's stack, so a revocation (a callback inside
    /// `poll`) can hand it over first. Only the consuming thread locks it: never contended.
    staged: Mutex<Staged>,
    /// Set by an assignment: the fetch queue's partitions must be routed again.
    assigned: AtomicBool,
}

impl Handoff {
    fn staged(&self) -> MutexGuard<'_, Staged> {
        self.staged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves the staged records into the queue, oldest first, waiting up to `patience` for
    /// room. True when nothing is left staged.
    fn push_staged(&self, patience: Duration) -> bool {
        let mut staged = self.staged();
        loop {
            if staged.parked.is_none() {
                if staged.current.is_empty() {
                    return true;
                }
                let fresh = self.queue.empty_batch();
                staged.parked = Some(std::mem::replace(&mut staged.current, fresh));
            }
            let Some(batch) = staged.parked.take() else {
                continue;
            };
            if let Err(batch) = self.queue.push(batch, patience) {
                staged.parked = Some(batch);
                return false;
            }
        }
    }
}

/// The consumer context of an at-least-once worker: before partitions are revoked, hands
/// over what was consumed and waits for the producing thread to flush it and commit its
/// offsets, so the partitions' next owner starts right after it (no repeats).
pub struct HandoffContext {
    worker: usize,
    handoff: Arc<Handoff>,
}

/// How long a revocation waits for the checkpoint (then the next owner may repeat some).
const REVOKE_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(30);

impl ClientContext for HandoffContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::kafka::statistics::publish(&statistics);
    }
}

impl ConsumerContext for HandoffContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if self.handoff.queue.is_closed() {
                // Leaving the group at shutdown: the worker's final checkpoint already ran
                // (and reported its own failure, if any).
                tracing::info!(
                    event = "rebalance",
                    worker = self.worker,
                    revoked = partitions.count(),
                    "rebalance: partitions released at shutdown"
                );
                return;
            }
            let committed = self.handoff.push_staged(REVOKE_CHECKPOINT_TIMEOUT)
                && self
                    .handoff
                    .queue
                    .request_checkpoint(REVOKE_CHECKPOINT_TIMEOUT);
            tracing::info!(
                event = "rebalance",
                worker = self.worker,
                revoked = partitions.count(),
                committed,
                "rebalance: partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.handoff.assigned.store(true, Ordering::Release);
        }
        super::log_rebalance(self.worker, rebalance);
    }
}

/// Runs one worker of `group_id` until `stop` is cancelled. Drains, flushes and commits
/// before returning.
pub fn run_worker(
    seat: Seat<'_>,
    config: &Config,
    group_id: &str,
    counters: &Counters,
    stop: &CancellationToken,
) -> Result<(), StreamSumError> {
    let index = seat.index;
    let settings = &config.stream_sum;
    let capacity = settings.channel_capacity.div_ceil(BATCH_LEN).max(1);
    let handoff = Arc::new(Handoff {
        queue: BatchQueue::new(capacity, BATCH_LEN.min(settings.channel_capacity.max(1))),
        staged: Mutex::new(Staged::default()),
        assigned: AtomicBool::new(false),
    });
    let context = HandoffContext {
        worker: index,
        handoff: handoff.clone(),
    };
    let consumer = worker_consumer(config, group_id, context, |_| {})?;
    // Routed before they are assigned: from their first fetch on, these partitions'
    // records come in batches (see FetchQueue); others come one by one through the poll.
    let mut fetch = FetchQueue::new(&consumer, &settings.input_topic)?;
    let partitions = known_partitions(&consumer, &settings.input_topic);
    fetch.route(0..partitions);
    let output_partitions = known_partitions(&consumer, &settings.output_topic);
    // Ready before the partitions come: an idempotent producer without its id holds every
    // result back (librdkafka asks for one only once a broker is up, else every 0.5 s).
    let sink = output_sink(config, format!("stream_sum-{index}"), None)?;
    connect_output(&sink, index);
    seat.take(&consumer, &settings.input_topic, partitions, stop)?;
    let dlq_topic = format!("{}.dlq", settings.input_topic);
    let queue = &handoff.queue;
    std::thread::scope(|scope| {
        let producer = std::thread::Builder::new()
            .name(format!("stream-sum-produce-{index}"))
            .spawn_scoped(scope, || {
                let outcome = produce(
                    queue,
                    &sink,
                    &consumer,
                    &settings.input_topic,
                    output_partitions,
                    &dlq_topic,
                    counters,
                );
                // Wakes a consumer waiting for room, which then sees the queue closed.
                queue.close();
                outcome
            })
            .map_err(StreamSumError::Thread)?;
        let consumed = Consuming {
            index,
            fetch,
            counters,
            consumer: &consumer,
            handoff: &handoff,
            stop,
            paused: false,
            paused_partitions: TopicPartitionList::new(),
        }
        .run();
        queue.close();
        let produced = producer.join().unwrap_or_else(|_| {
            Err(StreamSumError::WorkerPanicked {
                worker: index,
                reason: "the producing thread panicked".into(),
            })
        });
        consumed.and(produced)
    })
}

struct Consuming<'a> {
    index: usize,
    fetch: FetchQueue<'a, HandoffContext>,
    counters: &'a Counters,
    consumer: &'a BaseConsumer<HandoffContext>,
    handoff: &'a Handoff,
    stop: &'a CancellationToken,
    paused: bool,
    /// Every partition paused for back-pressure and not resumed since. librdkafka keeps a
    /// partition paused across a rebalance, so resuming only the current assignment would
    /// leave one that was revoked and assigned again paused for good.
    paused_partitions: TopicPartitionList,
}

impl Consuming<'_> {
    fn run(mut self) -> Result<(), StreamSumError> {
        let batch_len = self.handoff.queue.batch_len();
        let mut routed_at = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            // A partition whose fetching stopped (revoked, maybe assigned again) lost its
            // route; the route may also be dropped by a stop that finishes after an
            // assignment, hence the periodic pass.
            if self.handoff.assigned.swap(false, Ordering::AcqRel)
                || routed_at.elapsed() >= REROUTE_INTERVAL
            {
                self.fetch.reroute();
                routed_at = Instant::now();
            }
            // Rebalances and errors, and the records of partitions not routed.
            self.serve_consumer_queue()?;
            let staged_records = self.handoff.staged().current.len();
            if staged_records >= batch_len {
                self.hand_over()?;
                continue;
            }
            // Nothing staged: wait a while for data. Otherwise hand over what there is once
            // no record came for a millisecond: handing over whenever the local queue ran
            // dry made batches of a few records, and their hand-over cost showed in the
            // profile; waiting for a full batch held the last records of a backlog for the
            // whole wait. A batch never holds more than fits: nothing taken waits unstaged
            // while the consumer is polled (a revocation hands over what is staged).
            let timeout = if staged_records == 0 {
                Duration::from_millis(100)
            } else {
                STAGED_LINGER
            };
            let taken = self.fetch.take(timeout, batch_len - staged_records)?;
            let took = taken.len();
            let handoff = self.handoff;
            let mut staged = handoff.staged();
            for record in taken.iter() {
                match record.error() {
                    None => {
                        staged.current.push(item_of(
                            record.partition(),
                            record.offset(),
                            record.key(),
                            record.payload(),
                        ));
                    }
                    Some(RDKafkaErrorCode::PartitionEOF) => {}
                    Some(code) => consume_error(
                        self.index,
                        Some(record.partition()),
                        rdkafka::error::KafkaError::MessageConsumption(code).into(),
                    )?,
                }
            }
            let staged_records = staged.current.len();
            drop(staged);
            if staged_records >= batch_len || (took == 0 && staged_records > 0) {
                self.hand_over()?;
            }
        }
        self.hand_over()
    }

    /// Serves the consumer queue until it is empty: rebalance callbacks, errors, and the
    /// records of partitions the fetch queue does not have (one per poll, in order).
    fn serve_consumer_queue(&mut self) -> Result<(), StreamSumError> {
        let batch_len = self.handoff.queue.batch_len();
        loop {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    let mut staged = self.handoff.staged();
                    staged.current.push(item(&message));
                    let full = staged.current.len() >= batch_len;
                    drop(staged);
                    if full {
                        self.hand_over()?;
                    }
                }
                Some(Err(error)) => consume_error(self.index, None, error.into())?,
                None => return Ok(()),
            }
        }
    }

    /// Queues the staged records. While the queue stays full, pauses the partitions and
    /// keeps polling (serving rebalances) until there is room.
    fn hand_over(&mut self) -> Result<(), StreamSumError> {
        if self.handoff.push_staged(FULL_QUEUE_PATIENCE) {
            return Ok(());
        }
        loop {
            if self.handoff.queue.is_closed() {
                // The producing thread stopped; its error is reported by the worker.
                return Ok(());
            }
            if !self.paused {
                self.set_paused(true);
                self.counters.pauses.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stream_sum_pauses_total").increment(1);
                tracing::debug!(worker = self.index, "output is behind: partitions paused");
            }
            // Paused partitions deliver nothing; this serves rebalance events. A partition
            // assigned meanwhile is not paused yet: keep its records and pause it too.
            if let Some(Ok(message)) = self.consumer.poll(Duration::from_millis(10)) {
                self.handoff.staged().current.push(item(&message));
                self.set_paused(true);
            }
            if self.handoff.push_staged(Duration::from_millis(10)) {
                self.set_paused(false);
                return Ok(());
            }
        }
    }

    fn set_paused(&mut self, paused: bool) {
        let changed = if paused {
            let Ok(assignment) = self.consumer.assignment() else {
                return;
            };
            for element in assignment.elements() {
                let known = self
                    .paused_partitions
                    .find_partition(element.topic(), element.partition())
                    .is_some();
                if !known {
                    self.paused_partitions
                        .add_partition(element.topic(), element.partition());
                }
            }
            self.consumer.pause(&assignment)
        } else {
            let mut resume = TopicPartitionList::new();
            for element in self.paused_partitions.elements() {
                resume.add_partition(element.topic(), element.partition());
            }
            self.paused_partitions = TopicPartitionList::new();
            self.consumer.resume(&resume)
        };
        if let Err(error) = changed {
            tracing::warn!(worker = self.index, error = %Report(&error), paused, "cannot pause or resume partitions");
        }
        self.paused = paused;
    }
}

/// The producing thread: enqueues every result; every [`CHECKPOINT_INTERVAL`] seals the
/// results since the last seal as one delivery group, and commits the input offsets behind
/// each sealed group once it is delivered, without waiting for it; a revocation and the end
/// flush and commit everything.
fn produce(
    queue: &BatchQueue<Item>,
    sink: &KafkaSink<StreamOutput, StreamOutputSerializer>,
    consumer: &BaseConsumer<HandoffContext>,
    input_topic: &str,
    output_partitions: i32,
    dlq_topic: &str,
    counters: &Counters,
) -> Result<(), StreamSumError> {
    let mut results = Results::new(output_partitions);
    let mut checkpoint = Checkpoint::new(sink, consumer, input_topic);
    loop {
        let wait = CHECKPOINT_INTERVAL.saturating_sub(checkpoint.since_seal());
        match queue.pop(wait) {
            Popped::Batch(batch) => {
                results.clear();
                let mut dead = 0;
                for item in &batch {
                    match &item.outcome {
                        Outcome::Sum(sum) => {
                            results.push(item.partition, item.key.as_slice(), *sum);
                        }
                        Outcome::Undecodable(record) => {
                            let (payload, reason) = record.as_ref();
                            tracing::warn!(
                                event = "dlq",
                                partition = item.partition,
                                offset = item.offset,
                                %reason,
                                "undecodable record sent to the dead-letter topic"
                            );
                            sink.enqueue_in(
                                checkpoint.group(),
                                &dead_letter(
                                    dlq_topic,
                                    payload.clone(),
                                    item.key.as_slice(),
                                    reason,
                                ),
                            )?;
                            dead += 1;
                        }
                    }
                }
                sink.enqueue_batch_in(checkpoint.group(), results.as_slice())?;
                sink.serve_deliveries();
                checkpoint.note(batch.iter().map(|item| (item.partition, item.offset)));
                queue.recycle(batch);
                counters.add(results.len() as u64, dead);
            }
            Popped::Empty => {}
            Popped::CheckpointRequested => {
                // A revocation waits on this: everything it handed over is now enqueued.
                let outcome = checkpoint.run();
                queue.checkpoint_done(matches!(outcome, Ok(true)));
                outcome?;
            }
            Popped::Closed => return checkpoint.run().map(drop),
        }
        if checkpoint.since_seal() >= CHECKPOINT_INTERVAL {
            checkpoint.seal();
        }
        checkpoint.commit_delivered()?;
    }
}

/// A consume error ends the worker when fatal; librdkafka recovers from the others by itself.
fn consume_error(
    worker: usize,
    partition: Option<i32>,
    error: KafkaError,
) -> Result<(), StreamSumError> {
    if error.is_fatal() {
        return Err(error.into());
    }
    tracing::warn!(event = "retry", worker, partition, error = %Report(&error), "consume error (retrying)");
    Ok(())
}
