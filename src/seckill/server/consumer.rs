//! One group member of server_kafka: fills batches from its message stream, sends each
//! batch's purchase in one script call with up to `concurrency` calls in flight, publishes
//! the batch's answers, and stores offsets behind finished batches ([`BatchOffsets`]).
//!
//! A batch waiting for its answers to be acknowledged holds no script-call slot: with the
//! slots held through the results' linger and acknowledgement, Redis sat idle a tenth of
//! the time in the server benchmark (docs/BENCHMARKS.md).
//!
//! A batch is sent when it is full (`batch_size` requests), or when no more messages are
//! waiting and either `batch_wait_ms` passed since its first message or that wait is 0. Under
//! a burst every slot is busy and batches grow to full size; a trickle goes out at once. Per
//! message the loop copies the request id into the batch's buffer and nothing else: no
//! allocation, no future, no clock read.

use super::{
    latency_histogram, ResultSink, ServerError, Shared, DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER,
};
use crate::backoff::Backoff;
use crate::backoff::{retry, RetryError};
use crate::common::{now_ms, Decision, RequestView, SeckillOutcome, SeckillResult};
use crate::config::{Config, OffsetReset};
use crate::kafka::broker::BrokerKind;
use crate::kafka::client_config::set_default;
use crate::kafka::sink::{KafkaMessage, SinkError};
use crate::kafka::{client_config, ClientRole, KafkaError};
use crate::redis_state::{PurchaseBatch, RedisStateError};
use crate::report::Report;
use crate::seckill::offsets::BatchOffsets;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Records rebalances: which partitions to forget, and whether this consumer holds an
/// assignment (for `/ready`).
pub(super) struct RebalanceContext {
    consumer_index: usize,
    shared: Arc<Shared>,
    revoked: Mutex<Vec<i32>>,
    /// Set with `revoked`, so the loop checks a flag per message, not a lock.
    rebalanced: AtomicBool,
    assigned: AtomicBool,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::kafka::statistics::publish(&statistics);
    }
}

fn partition_ids(partitions: &rdkafka::TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl RebalanceContext {
    /// Gives every newly assigned partition without a committed offset an explicit start:
    /// the end (offset_reset latest) or the start (earliest) as of now. librdkafka would
    /// look the position up only at its first fetch, so requests written between this
    /// assignment and that fetch would be skipped under `latest`, although `/ready` already
    /// said the server has its partitions.
    fn pin_start_offsets(&self, consumer: &BaseConsumer<Self>, assigned: &mut TopicPartitionList) {
        const TIMEOUT: Duration = Duration::from_secs(5);
        let committed = match consumer.committed_offsets(assigned.clone(), TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(consumer = self.consumer_index, %error, "cannot read committed offsets; librdkafka resolves the start");
                return;
            }
        };
        let latest = self.shared.config.server_kafka.offset_reset == OffsetReset::Latest;
        for element in committed.elements() {
            if element.offset() != Offset::Invalid {
                continue;
            }
            let (topic, partition) = (element.topic(), element.partition());
            match consumer.fetch_watermarks(topic, partition, TIMEOUT) {
                Ok((low, high)) => {
                    let start = if latest { high } else { low };
                    let _ = assigned.set_partition_offset(topic, partition, Offset::Offset(start));
                }
                Err(error) => {
                    tracing::warn!(consumer = self.consumer_index, partition, %error, "cannot read watermarks; librdkafka resolves the start")
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    /// rdkafka's own handling, with [`RebalanceContext::pin_start_offsets`] before an
    /// assignment takes effect.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.pin_start_offsets(consumer, partitions);
                let done = if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                self.post_rebalance(consumer, &Rebalance::Assign(partitions));
                done
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let done = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                self.post_rebalance(consumer, &Rebalance::Revoke(partitions));
                done
            }
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                self.post_rebalance(
                    consumer,
                    &Rebalance::Error(rdkafka::error::KafkaError::Rebalance(code)),
                );
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::error!(consumer = self.consumer_index, %error, "applying a rebalance failed");
        }
    }

    fn main_queue_min_poll_interval(&self) -> rdkafka::util::Timeout {
        rdkafka::util::Timeout::After(Duration::from_millis(50))
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned = partition_ids(partitions);
                tracing::info!(
                    event = "rebalance",
                    consumer = self.consumer_index,
                    ?assigned,
                    "rebalance: partitions assigned"
                );
                if !self.assigned.swap(true, Ordering::SeqCst) {
                    self.shared.assignment_changed(true);
                }
            }
            Rebalance::Revoke(partitions) => {
                let revoked = partition_ids(partitions);
                tracing::info!(
                    event = "rebalance",
                    consumer = self.consumer_index,
                    ?revoked,
                    "rebalance: partitions revoked"
                );
                if self.assigned.swap(false, Ordering::SeqCst) {
                    self.shared.assignment_changed(false);
                }
                if let Ok(mut pending) = self.revoked.lock() {
                    pending.extend(revoked);
                }
                self.rebalanced.store(true, Ordering::SeqCst);
            }
            Rebalance::Error(error) => {
                tracing::warn!(event = "rebalance", consumer = self.consumer_index, %error, "rebalance error");
            }
        }
    }
}

/// The consumer settings server_kafka needs on top of the shared ones. Each is a default:
/// `kafka.properties` can still set it.
fn consumer_config(
    config: &Config,
    index: usize,
    broker: BrokerKind,
) -> Result<rdkafka::ClientConfig, KafkaError> {
    let settings = &config.server_kafka;
    let mut consumer = client_config(
        &config.kafka,
        ClientRole::Consumer {
            group_id: &settings.group_id,
        },
        "server_kafka",
    )?;
    consumer.set("auto.offset.reset", settings.offset_reset.as_librdkafka());
    if let Some(instance_id) = &settings.instance_id {
        // Static membership: a restarted consumer with the same id gets its partitions back
        // without a rebalance (KIP-345).
        consumer.set("group.instance.id", format!("{instance_id}-{index}"));
    }
    if broker.is_mock() {
        // The mock does not implement static membership: a restarted member is a new one,
        // and the group waits for the dead one's session to end, then rebalances (about
        // session + session - 1 s). A 4 s session keeps that near 7 s. (Not 3 s: the mock
        // also expires members waiting in a join, and a new group's first join waits 3 s.)
        // Apache Kafka would refuse it (group.min.session.timeout.ms is 6 s) and needs none
        // of it.
        set_default(&mut consumer, "session.timeout.ms", "4000");
        set_default(&mut consumer, "heartbeat.interval.ms", "1000");
    }
    // A dead member is noticed in 6 s (Apache Kafka's smallest allowed session) rather than
    // librdkafka's 45 s, so a server restarted without static membership (or after a
    // scale-down) gets its partitions back within seconds.
    set_default(&mut consumer, "session.timeout.ms", "6000");
    set_default(&mut consumer, "heartbeat.interval.ms", "1500");
    // librdkafka waits up to 1 s (its default) before fetching again for a partition whose
    // local queue was full: a buyer would wait that long behind a burst.
    set_default(&mut consumer, "fetch.queue.backoff.ms", "1");
    // Small fetch requests are not held back by Nagle's algorithm.
    set_default(&mut consumer, "socket.nagle.disable", "true");
    if broker.is_mock() {
        // The mock answers a fetch that found no data only after the whole
        // fetch.wait.max.ms (500 ms), even when data arrives meanwhile; Apache Kafka answers
        // as soon as there is data. Only there is the wait shortened.
        set_default(&mut consumer, "fetch.wait.max.ms", "5");
    }
    Ok(consumer)
}

/// The Prometheus summary of request ages takes one request in this many (the summary
/// printed at exit takes every one): quantiles stay the same, and the exporter's clock read
/// per sample was 6% of server_kafka's CPU (perf, docs/BENCHMARKS.md).
const AGE_SAMPLE_EVERY: usize = 16;

/// A request of this activity waiting in a batch: where its id ends in the batch's id
/// buffer (it starts where the previous one ends), its user and creation time.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id_end: usize,
    user_id: u64,
    initiated: i64,
}

#[derive(Debug)]
struct DeadLetter {
    reason: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    source: String,
}

/// One batch: the messages it holds, and once sent, what they came to. Reused.
struct Batch {
    seq: u64,
    purchase: PurchaseBatch,
    ids: String,
    pending: Vec<Pending>,
    /// `cost_ms` of each pending request, taken when the batch was sealed.
    costs: Vec<u64>,
    /// Each pending request's answer: TIMEOUT set when sealed, the others from the script.
    decisions: Vec<Decision>,
    /// Which pending requests were sent to the script, in the order of its answers.
    sent: Vec<usize>,
    /// When the batch was sealed (ms since the epoch): the requests' `processed_time`.
    decided_at: i64,
    other_activity: u64,
    dead_letters: Vec<DeadLetter>,
    first_at: Option<Instant>,
    messages: usize,
    /// Reused for every result this batch publishes.
    result: KafkaMessage<SeckillResult>,
}

impl Batch {
    fn new(purchase: PurchaseBatch) -> Self {
        let mut result = KafkaMessage::new(SeckillResult {
            request_id: String::with_capacity(64),
            user_id: 0,
            activity_id: 0,
            outcome: SeckillOutcome::Success,
            repeat: false,
            request_initiation_time: 0,
            decided_at: 0,
            cost_ms: 0,
        });
        result.key = Some(Vec::with_capacity(24));
        Self {
            seq: 0,
            purchase,
            ids: String::new(),
            pending: Vec::new(),
            costs: Vec::new(),
            decisions: Vec::new(),
            sent: Vec::new(),
            decided_at: 0,
            other_activity: 0,
            dead_letters: Vec::new(),
            first_at: None,
            messages: 0,
            result,
        }
    }

    fn reset(&mut self, seq: u64) {
        self.seq = seq;
        self.ids.clear();
        self.pending.clear();
        self.costs.clear();
        self.decisions.clear();
        self.sent.clear();
        self.other_activity = 0;
        self.dead_letters.clear();
        self.first_at = None;
        self.messages = 0;
    }

    fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Full at `batch_size` requests; other messages (other activities) cost next to
    /// nothing, but are bounded too.
    fn is_full(&self, batch_size: usize) -> bool {
        self.pending.len() >= batch_size || self.messages >= batch_size.saturating_mul(4)
    }

    /// Adds a message: a request of `activity_id`, a request of another activity (skipped),
    /// or a malformed one (dead-lettered when the batch is sent).
    fn add(&mut self, message: &BorrowedMessage<'_>, activity_id: u64) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        self.messages += 1;
        let decoded = match message.payload() {
            Some(payload) => RequestView::from_json(payload).map_err(|e| Report(&e).to_string()),
            None => Err("empty message (no payload)".to_string()),
        };
        match decoded {
            Ok(request) if request.activity_id == activity_id => {
                self.ids.push_str(&request.request_id);
                self.pending.push(Pending {
                    id_end: self.ids.len(),
                    user_id: request.user_id,
                    initiated: request.request_initiation_time,
                });
            }
            Ok(_) => self.other_activity += 1,
            Err(reason) => self.dead_letters.push(DeadLetter {
                reason,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                source: format!(
                    "{}/{}/{}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                ),
            }),
        }
    }

    /// Encodes the requests into the script call, processed now: requests older than
    /// `timeout_ms` are answered TIMEOUT instead and never reach Redis.
    fn seal(&mut self, timeout_ms: u64) {
        let now = now_ms();
        self.decided_at = now;
        self.purchase.start(now);
        let mut id_start = 0;
        for (index, request) in self.pending.iter().enumerate() {
            let request_id = &self.ids[id_start..request.id_end];
            id_start = request.id_end;
            let cost_ms = u64::try_from(now.saturating_sub(request.initiated)).unwrap_or(0);
            self.costs.push(cost_ms);
            if timeout_ms > 0 && cost_ms > timeout_ms {
                self.decisions
                    .push(Decision::first(SeckillOutcome::Timeout));
            } else {
                self.purchase
                    .push(request_id, request.user_id, request.initiated, cost_ms);
                // Replaced by the script's answer.
                self.decisions
                    .push(Decision::first(SeckillOutcome::Timeout));
                self.sent.push(index);
            }
        }
    }
}

/// How a sent batch ended.
enum BatchEnd {
    Done,
    /// Shutdown came while Redis or the dead-letter topic was unreachable: not processed,
    /// offsets not stored, so its messages are delivered again.
    Abandoned,
}

type Finished = (Batch, Result<BatchEnd, ServerError>);

/// Batches waiting for their answers' acknowledgements, per script-call slot: bounds what a
/// slow results topic keeps in memory (each batch holds up to `batch_size` requests).
const ANSWERING_PER_SLOT: usize = 4;

/// Dead-letters the batch's malformed messages and runs its purchase script call.
async fn decide_batch(shared: Arc<Shared>, mut batch: Batch, stop: CancellationToken) -> Finished {
    for dead_letter in &batch.dead_letters {
        match send_dead_letter(&shared, dead_letter, &stop).await {
            Ok(()) => {}
            Err(RetryError::Stopped(_)) => return (batch, Ok(BatchEnd::Abandoned)),
            Err(RetryError::Failed(error)) => return (batch, Err(error.into())),
        }
    }
    if !batch.purchase.is_empty() {
        let result = retry(
            "Redis",
            &stop,
            || shared.redis.run_purchase_batch(&batch.purchase),
            RedisStateError::is_transient,
        )
        .await;
        match result {
            Ok(decisions) => {
                for (decision, &index) in decisions.into_iter().zip(&batch.sent) {
                    batch.decisions[index] = decision;
                }
            }
            Err(RetryError::Stopped(_)) => return (batch, Ok(BatchEnd::Abandoned)),
            Err(RetryError::Failed(error)) => return (batch, Err(error.into())),
        }
    }
    (batch, Ok(BatchEnd::Done))
}

/// Publishes every answer of a decided batch to the results topic (when on), waiting for the
/// broker to have them.
async fn answer_batch(shared: Arc<Shared>, mut batch: Batch, stop: CancellationToken) -> Finished {
    if let Some(results) = &shared.results {
        match publish_results(
            results,
            &mut batch,
            shared.config.seckill.activity_id,
            &stop,
        )
        .await
        {
            Ok(()) => {}
            Err(RetryError::Stopped(_)) => return (batch, Ok(BatchEnd::Abandoned)),
            Err(RetryError::Failed(error)) => return (batch, Err(error.into())),
        }
    }
    (batch, Ok(BatchEnd::Done))
}

/// Publishes an answer for every request of the batch (keyed by user id) and waits until the
/// broker has all of them. A batch whose results did not all arrive is published again, with
/// backoff, until they do or shutdown comes (a result may then be read twice, with the same
/// outcome: a request id's outcome is decided once).
async fn publish_results(
    results: &ResultSink,
    batch: &mut Batch,
    activity_id: u64,
    stop: &CancellationToken,
) -> Result<(), RetryError<SinkError>> {
    if batch.pending.is_empty() {
        return Ok(());
    }
    let mut backoff = Backoff::default();
    let stop = stop.clone();
    loop {
        let group = results.delivery_group();
        let mut failure = None;
        {
            let Batch {
                ids,
                pending,
                costs,
                decisions,
                decided_at,
                result,
                ..
            } = &mut *batch;
            let mut id_start = 0;
            for ((request, decision), cost_ms) in
                pending.iter().zip(decisions.iter()).zip(costs.iter())
            {
                let value = &mut result.value;
                value.request_id.clear();
                value.request_id.push_str(&ids[id_start..request.id_end]);
                id_start = request.id_end;
                value.user_id = request.user_id;
                value.activity_id = activity_id;
                value.outcome = decision.outcome;
                value.repeat = decision.repeat;
                value.request_initiation_time = request.initiated;
                value.decided_at = *decided_at;
                value.cost_ms = *cost_ms;
                if let Some(key) = result.key.as_mut() {
                    key.clear();
                    let _ = std::io::Write::write_fmt(key, format_args!("{}", request.user_id));
                }
                loop {
                    match results.try_enqueue_in(&group, result) {
                        Ok(true) => break,
                        // librdkafka's queue is full: it drains as deliveries come back.
                        Ok(false) => tokio::time::sleep(Duration::from_millis(1)).await,
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
        }
        let delivery = results.wait_group(group).await;
        match failure {
            Some(error) if !error.is_retriable() => return Err(RetryError::Failed(error)),
            Some(error) => {
                tracing::warn!(event = "retry", error = %Report(&error), "publishing results failed; publishing the batch's results again")
            }
            None if delivery.failed == 0 => return Ok(()),
            None => {
                let error = delivery
                    .last_error
                    .map(|e| Report(&e).to_string())
                    .unwrap_or_default();
                tracing::warn!(event = "retry", failed = delivery.failed, %error, "results not delivered; publishing the batch's results again");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return Err(RetryError::Stopped(SinkError::Closed)),
        }
    }
}

async fn send_dead_letter(
    shared: &Shared,
    dead_letter: &DeadLetter,
    stop: &CancellationToken,
) -> Result<(), RetryError<SinkError>> {
    tracing::warn!(event = "dlq", reason = %dead_letter.reason, source = %dead_letter.source, dlq = %shared.dlq.config().topic, "malformed request sent to the dead-letter topic");
    let mut message = KafkaMessage::new(dead_letter.payload.clone())
        .header(DLQ_ERROR_HEADER, dead_letter.reason.as_str())
        .header(DLQ_SOURCE_HEADER, dead_letter.source.as_str());
    message.key = dead_letter.key.clone();
    let send = || shared.dlq.send(message.clone());
    retry(
        "Kafka dead-letter topic",
        stop,
        send,
        SinkError::is_retriable,
    )
    .await
    .map(|_| ())
}

/// What one consumer task keeps between messages.
struct ConsumerState {
    index: usize,
    offsets: BatchOffsets,
    latency: Histogram<u64>,
    next_seq: u64,
    spare: Vec<Batch>,
    store: Vec<(i32, i64)>,
    consume_errors: u64,
}

impl ConsumerState {
    fn next_batch(&mut self, shared: &Shared) -> Batch {
        let mut batch = self.spare.pop().unwrap_or_else(|| {
            Batch::new(
                shared
                    .redis
                    .purchase_batch(shared.config.seckill.activity_id),
            )
        });
        batch.reset(self.next_seq);
        self.next_seq += 1;
        batch
    }

    /// Forgets what a rebalance took away, before any message received after it is added.
    fn forget_revoked(&mut self, context: &RebalanceContext) {
        if !context.rebalanced.swap(false, Ordering::SeqCst) {
            return;
        }
        let revoked: Vec<i32> = match context.revoked.lock() {
            Ok(mut pending) => pending.drain(..).collect(),
            Err(_) => return,
        };
        for partition in revoked {
            self.offsets.forget(partition);
        }
    }

    /// Takes one received message into `batch`. Errors only for a fatal consumer error.
    fn take(
        &mut self,
        received: Option<Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>>,
        batch: &mut Batch,
        context: &RebalanceContext,
        activity_id: u64,
    ) -> Result<(), ServerError> {
        match received {
            Some(Ok(message)) => {
                self.forget_revoked(context);
                self.offsets
                    .add(batch.seq, message.partition(), message.offset());
                batch.add(&message, activity_id);
                Ok(())
            }
            Some(Err(error)) => {
                let error = KafkaError::from(error);
                if error.is_fatal() {
                    return Err(error.into());
                }
                self.consume_errors += 1;
                // librdkafka recovers by itself; say so now and then, not per poll.
                if self.consume_errors.is_power_of_two() {
                    tracing::warn!(event = "retry", consumer = self.index, error = %Report(&error), count = self.consume_errors, "consume error (retrying)");
                }
                Ok(())
            }
            // A message stream never ends.
            None => Ok(()),
        }
    }

    /// Accounts a finished batch: counters, latency, metrics, and the offsets it frees.
    fn complete(
        &mut self,
        finished: Finished,
        shared: &Shared,
        consumer: &StreamConsumer<RebalanceContext>,
        topic: &str,
    ) -> Result<(), ServerError> {
        let (batch, result) = finished;
        let end = match result {
            Ok(end) => end,
            Err(error) => {
                self.spare.push(batch);
                return Err(error);
            }
        };
        if let BatchEnd::Done = end {
            self.account(&batch, shared);
            self.store.clear();
            self.offsets.finish(batch.seq, &mut self.store);
            for &(partition, offset) in &self.store {
                if let Err(error) = consumer.store_offset(topic, partition, offset) {
                    // The partition was revoked meanwhile; its new owner re-reads from the commit.
                    tracing::debug!(partition, offset, %error, "offset not stored");
                }
            }
        }
        // An abandoned batch's offsets stay unstored and block its partitions' commits.
        self.spare.push(batch);
        Ok(())
    }

    fn account(&mut self, batch: &Batch, shared: &Shared) {
        let counters = &shared.counters;
        let mut first = [0_u64; SeckillOutcome::ALL.len()];
        let mut repeated = 0_u64;
        for decision in &batch.decisions {
            if decision.repeat {
                repeated += 1;
            } else {
                first[decision.outcome as usize] += 1;
            }
        }
        for outcome in SeckillOutcome::ALL {
            let count = first[outcome as usize];
            if count > 0 {
                counters.add(outcome, count);
                metrics::counter!("seckill_requests_total", "outcome" => outcome.as_str())
                    .increment(count);
            }
        }
        if repeated > 0 {
            counters.repeated.fetch_add(repeated, Ordering::Relaxed);
            metrics::counter!("seckill_requests_total", "outcome" => "REPEAT").increment(repeated);
        }
        let age = metrics::histogram!("seckill_request_age_seconds");
        for (index, &cost_ms) in batch.costs.iter().enumerate() {
            self.latency.saturating_record(cost_ms);
            // Request age when answered: client send to the end of the Lua call. One request
            // in AGE_SAMPLE_EVERY: the exporter reads the clock for every sample it stores.
            if index % AGE_SAMPLE_EVERY == 0 {
                age.record(cost_ms as f64 / 1e3);
            }
        }
        let malformed = batch.dead_letters.len() as u64;
        if malformed > 0 {
            counters.malformed.fetch_add(malformed, Ordering::Relaxed);
            metrics::counter!("seckill_requests_total", "outcome" => "MALFORMED")
                .increment(malformed);
            metrics::counter!("dead_lettered_total", "program" => "server_kafka")
                .increment(malformed);
        }
        if batch.other_activity > 0 {
            counters
                .other_activity
                .fetch_add(batch.other_activity, Ordering::Relaxed);
            metrics::counter!("seckill_requests_total", "outcome" => "OTHER_ACTIVITY")
                .increment(batch.other_activity);
        }
        counters.finished(shared.started);
    }
}

/// One group member: fills batches, sends up to `concurrency` script calls at once, answers
/// each decided batch, stores offsets behind answered batches, and on stop sends what it
/// holds, drains and commits.
pub(super) async fn consume(
    index: usize,
    shared: Arc<Shared>,
    broker: BrokerKind,
    stop: CancellationToken,
) -> Result<Histogram<u64>, ServerError> {
    let config = &shared.config;
    let settings = &config.server_kafka;
    if broker.is_mock() && index == 0 {
        tracing::info!("the broker is librdkafka's mock cluster (dev broker): fetch.wait.max.ms 5 ms (it does not answer a waiting fetch when data arrives) and a 4 s session (it has no static membership)");
    }
    let context = RebalanceContext {
        consumer_index: index,
        shared: shared.clone(),
        revoked: Mutex::new(Vec::new()),
        rebalanced: AtomicBool::new(false),
        assigned: AtomicBool::new(false),
    };
    let consumer: StreamConsumer<RebalanceContext> =
        consumer_config(config, index, broker)?.create_with_context(context)?;
    let topic = config.seckill.requests_topic.as_str();
    consumer.subscribe(&[topic])?;
    let mut stream = consumer.stream();
    let activity_id = config.seckill.activity_id;
    let batch_wait = Duration::from_millis(settings.batch_wait_ms);

    let mut state = ConsumerState {
        index,
        offsets: BatchOffsets::new(),
        latency: latency_histogram()?,
        next_seq: 0,
        spare: Vec::new(),
        store: Vec::new(),
        consume_errors: 0,
    };
    let mut filling = state.next_batch(&shared);
    let mut deciding = FuturesUnordered::new();
    let mut answering = FuturesUnordered::new();
    let answering_limit = settings.concurrency.saturating_mul(ANSWERING_PER_SLOT);
    let mut fatal: Option<ServerError> = None;

    'consume: while !stop.is_cancelled() {
        // What is waiting already, without waiting.
        while !filling.is_full(settings.batch_size) {
            let Some(received) = stream.next().now_or_never() else {
                break;
            };
            if let Err(error) = state.take(received, &mut filling, consumer.context(), activity_id)
            {
                fatal = Some(error);
                break 'consume;
            }
        }
        let free_slot = deciding.len() < settings.concurrency && answering.len() < answering_limit;
        let waited_enough = batch_wait.is_zero()
            || filling
                .first_at
                .is_some_and(|first| first.elapsed() >= batch_wait);
        if free_slot
            && !filling.is_empty()
            && (filling.is_full(settings.batch_size) || waited_enough)
        {
            let mut batch = std::mem::replace(&mut filling, state.next_batch(&shared));
            if let Some(first) = batch.first_at {
                shared.counters.received(shared.started, first);
            }
            batch.seal(settings.timeout_ms);
            deciding.push(decide_batch(shared.clone(), batch, stop.clone()));
            continue;
        }
        let fill_deadline = match filling.first_at {
            Some(first) if free_slot && !filling.is_empty() => Some(first + batch_wait),
            _ => None,
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(decided) = deciding.next(), if !deciding.is_empty() => {
                match decided {
                    (batch, Ok(BatchEnd::Done)) => {
                        answering.push(answer_batch(shared.clone(), batch, stop.clone()));
                    }
                    finished => {
                        if let Err(error) = state.complete(finished, &shared, &consumer, topic) {
                            fatal = Some(error);
                            break;
                        }
                    }
                }
            }
            Some(done) = answering.next(), if !answering.is_empty() => {
                if let Err(error) = state.complete(done, &shared, &consumer, topic) {
                    fatal = Some(error);
                    break;
                }
            }
            received = stream.next(), if !filling.is_full(settings.batch_size) => {
                if let Err(error) = state.take(received, &mut filling, consumer.context(), activity_id) {
                    fatal = Some(error);
                    break;
                }
            }
            _ = sleep_until(fill_deadline), if fill_deadline.is_some() => {}
        }
    }

    // Drain: what was received is sent (its offsets can then be committed), and every batch
    // in flight finishes (or is abandoned if its service is down).
    if fatal.is_none() && !filling.is_empty() {
        if let Some(first) = filling.first_at {
            shared.counters.received(shared.started, first);
        }
        filling.seal(settings.timeout_ms);
        deciding.push(decide_batch(shared.clone(), filling, stop.clone()));
    }
    while let Some(decided) = deciding.next().await {
        match decided {
            (batch, Ok(BatchEnd::Done)) => {
                answering.push(answer_batch(shared.clone(), batch, stop.clone()));
            }
            finished => {
                if let Err(error) = state.complete(finished, &shared, &consumer, topic) {
                    fatal.get_or_insert(error);
                }
            }
        }
    }
    while let Some(done) = answering.next().await {
        if let Err(error) = state.complete(done, &shared, &consumer, topic) {
            fatal.get_or_insert(error);
        }
    }
    drop(stream);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(event = "commit", consumer = index, "offsets committed"),
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(error) => {
            tracing::warn!(event = "commit", consumer = index, %error, "final commit failed; the next start re-reads from the last commit")
        }
    }
    match fatal {
        Some(error) => Err(error),
        None => Ok(state.latency),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
