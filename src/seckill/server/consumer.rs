//! One group member of server_kafka: reads messages into per-activity batches
//! ([`Intake`]), sends a due batch's purchase in one script call with up to `concurrency`
//! calls in flight, publishes a decided batch's answers, and stores offsets behind finished
//! batches ([`BatchOffsets`]).
//!
//! A batch waiting for its answers' acknowledgements holds no call slot (with the slots held
//! through the results' linger and acknowledgement, Redis sat idle a tenth of the time in
//! the server benchmark, docs/BENCHMARKS.md). Nor does a call that failed and waits to be
//! tried again (Redis unreachable, the master of its slot down, replicas behind, a sale whose
//! live state is gone): it backs off outside the slots, so the other sales go on. At most
//! `concurrency x RETRYING_PER_SLOT` batches wait so; beyond that reading pauses, since a
//! partition's offsets cannot pass a batch that waits.

use super::answer::{publish_results, send_dead_letter};
use super::batch::{Batch, Intake};
use super::counters::latency_histogram;
use super::rebalance::{consumer_config, RebalanceContext};
use super::{ServerError, Shared};
use crate::backoff::RetryError;
use crate::common::SeckillOutcome;
use crate::config::GroupProtocol;
use crate::kafka::broker::BrokerKind;
use crate::kafka::KafkaError;
use crate::redis_state::RedisStateError;
use crate::report::Report;
use crate::seckill::offsets::BatchOffsets;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The Prometheus summary of request ages takes one request in this many (the summary
/// printed at exit takes every one): quantiles stay the same, and the exporter's clock read
/// per sample was 6% of server_kafka's CPU (perf, docs/BENCHMARKS.md).
const AGE_SAMPLE_EVERY: usize = 16;

/// Batches waiting for their answers' acknowledgements, per call slot: bounds what a slow
/// results topic keeps in memory (each batch holds up to `batch_size` requests).
const ANSWERING_PER_SLOT: usize = 4;

/// Batches whose call waits to be tried again, per call slot.
const RETRYING_PER_SLOT: usize = 8;

/// Messages one consumer holds in open batches at most, per `batch_size`: with many sales
/// in one burst, what lets each call carry many requests.
const OPEN_BATCHES_PER_BATCH_SIZE: usize = 64;

/// Where an attempt to decide a batch left it.
enum Step {
    /// Decided (or needing no call): its answers go out next.
    Decided,
    /// The call failed for now; try again after a backoff.
    Retry(RedisStateError),
    /// Shutdown came first: not processed, offsets not stored, delivered again later.
    Abandoned,
    Failed(ServerError),
}

type Attempt = (Batch, Step);

/// Dead-letters the batch's malformed messages and makes one attempt at its script call.
async fn decide_batch(shared: Arc<Shared>, mut batch: Batch, stop: CancellationToken) -> Attempt {
    for dead_letter in std::mem::take(&mut batch.dead_letters) {
        let sent = send_dead_letter(&shared, &dead_letter, &stop).await;
        batch.dead_letters.push(dead_letter);
        match sent {
            Ok(()) => {}
            Err(RetryError::Stopped(_)) => return (batch, Step::Abandoned),
            Err(RetryError::Failed(error)) => return (batch, Step::Failed(error.into())),
        }
    }
    // Malformed messages are answered (dead-lettered) once, even when the call is retried.
    let step = attempt_call(&shared, &mut batch).await;
    (batch, step)
}

async fn attempt_call(shared: &Shared, batch: &mut Batch) -> Step {
    let Some(purchase) = batch
        .purchase
        .as_ref()
        .filter(|purchase| !purchase.is_empty())
    else {
        return Step::Decided;
    };
    batch.attempts += 1;
    match shared.redis.run_purchase_batch(purchase).await {
        Ok(decided) => {
            shared.counters.calls.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .called_requests
                .fetch_add(purchase.len() as u64, Ordering::Relaxed);
            batch.decided(decided);
            Step::Decided
        }
        Err(RedisStateError::NotInitialised(activity_id)) => {
            match shared.redis.is_registered(activity_id).await {
                // Never created: answered at once, not remembered.
                Ok(false) => {
                    batch.answer_all(SeckillOutcome::UnknownActivity);
                    Step::Decided
                }
                // Created, and its live state is gone: an operator's matter; keep asking.
                Ok(true) => Step::Retry(RedisStateError::NotInitialised(activity_id)),
                Err(error) => Step::Retry(error),
            }
        }
        Err(RedisStateError::NotReplicated {
            activity_id,
            acked,
            needed,
            decided,
        }) => {
            batch.earlier.get_or_insert(decided.decisions.clone());
            Step::Retry(RedisStateError::NotReplicated {
                activity_id,
                acked,
                needed,
                decided,
            })
        }
        Err(error) if error.is_transient() => Step::Retry(error),
        Err(error) => Step::Failed(error.into()),
    }
}

/// Waits out the batch's backoff, then attempts its call again.
async fn retry_batch(shared: Arc<Shared>, mut batch: Batch, stop: CancellationToken) -> Attempt {
    let delay = batch.backoff.next_delay();
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.cancelled() => return (batch, Step::Abandoned),
    }
    let step = attempt_call(&shared, &mut batch).await;
    (batch, step)
}

/// Publishes every answer of a decided batch to the results topic (when on), waiting for the
/// broker to have them.
async fn answer_batch(shared: Arc<Shared>, mut batch: Batch, stop: CancellationToken) -> Attempt {
    if let Some(results) = &shared.results {
        match publish_results(results, &mut batch, &stop).await {
            Ok(()) => {}
            Err(RetryError::Stopped(_)) => return (batch, Step::Abandoned),
            Err(RetryError::Failed(error)) => return (batch, Step::Failed(error.into())),
        }
    }
    (batch, Step::Decided)
}

/// What one consumer task keeps between messages.
struct ConsumerState {
    index: usize,
    offsets: BatchOffsets,
    latency: Histogram<u64>,
    store: Vec<(i32, i64)>,
    consume_errors: u64,
    activities: HashSet<u64>,
}

impl ConsumerState {
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

    /// Takes one received message into its batch. Errors only for a fatal consumer error.
    fn take(
        &mut self,
        received: Option<Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>>,
        intake: &mut Intake,
        context: &RebalanceContext,
    ) -> Result<(), ServerError> {
        match received {
            Some(Ok(message)) => {
                self.forget_revoked(context);
                let seq = intake.add(&message);
                self.offsets.add(seq, message.partition(), message.offset());
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
        batch: &Batch,
        shared: &Shared,
        consumer: &StreamConsumer<RebalanceContext>,
        topic: &str,
    ) {
        self.account(batch, shared);
        self.store.clear();
        self.offsets.finish(batch.seq, &mut self.store);
        for &(partition, offset) in &self.store {
            if let Err(error) = consumer.store_offset(topic, partition, offset) {
                // The partition was revoked meanwhile; its new owner re-reads from the commit.
                tracing::debug!(partition, offset, %error, "offset not stored");
            }
        }
    }

    fn account(&mut self, batch: &Batch, shared: &Shared) {
        let counters = &shared.counters;
        if let Some(activity_id) = batch.activity_id {
            self.activities.insert(activity_id);
        }
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

/// What a consumer's run produced: its latency histogram and the activities it answered.
pub(super) struct ConsumerReport {
    pub latency: Histogram<u64>,
    pub activities: HashSet<u64>,
}

/// Says loudly, now and then, that a batch's call waits to be tried again.
fn report_retry(batch: &Batch, error: &RedisStateError, consumer: usize) {
    if !batch.attempts.is_power_of_two() {
        return;
    }
    let activity_id = batch.activity_id.unwrap_or_default();
    match error {
        RedisStateError::NotInitialised(_) => tracing::error!(
            event = "retry",
            consumer,
            activity_id,
            attempts = batch.attempts,
            error = %Report(error),
            "a created sale has no live state in Redis: its requests wait, unanswered"
        ),
        _ => tracing::warn!(
            event = "retry",
            consumer,
            activity_id,
            attempts = batch.attempts,
            error = %Report(error),
            "purchase call failed; trying the batch again"
        ),
    }
}

/// One group member: fills per-activity batches, sends up to `concurrency` script calls at
/// once, answers each decided batch, stores offsets behind answered batches, and on stop
/// sends what it holds, drains and commits.
pub(super) async fn consume(
    index: usize,
    shared: Arc<Shared>,
    broker: BrokerKind,
    stop: CancellationToken,
) -> Result<ConsumerReport, ServerError> {
    let settings = &shared.settings.server;
    if broker.is_mock() && index == 0 && settings.group_protocol == GroupProtocol::Classic {
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
        consumer_config(&shared.settings.kafka, settings, index, broker)?
            .create_with_context(context)?;
    let topic = shared.settings.seckill.requests_topic.as_str();
    consumer.subscribe(&[topic])?;
    let mut stream = consumer.stream();

    let mut state = ConsumerState {
        index,
        offsets: BatchOffsets::new(),
        latency: latency_histogram()?,
        store: Vec::new(),
        consume_errors: 0,
        activities: HashSet::new(),
    };
    let mut intake = Intake::new(
        shared.redis.clone(),
        shared.settings.seckill.activity_id,
        settings.batch_size,
        Duration::from_millis(settings.batch_wait_ms),
        settings
            .batch_size
            .saturating_mul(OPEN_BATCHES_PER_BATCH_SIZE),
    );
    let mut deciding = FuturesUnordered::new();
    let mut retrying = FuturesUnordered::new();
    let mut answering = FuturesUnordered::new();
    let answering_limit = settings.concurrency.saturating_mul(ANSWERING_PER_SLOT);
    let retrying_limit = settings.concurrency.saturating_mul(RETRYING_PER_SLOT);
    let mut fatal: Option<ServerError> = None;

    // What a finished attempt leads to: answering, a retry, or the end of the batch.
    macro_rules! after_attempt {
        ($attempt:expr) => {{
            let (batch, step) = $attempt;
            match step {
                Step::Decided => {
                    answering.push(answer_batch(shared.clone(), batch, stop.clone()));
                }
                Step::Retry(error) => {
                    shared
                        .counters
                        .retried_calls
                        .fetch_add(1, Ordering::Relaxed);
                    report_retry(&batch, &error, index);
                    retrying.push(retry_batch(shared.clone(), batch, stop.clone()));
                }
                // Its offsets stay unstored and block its partitions' commits.
                Step::Abandoned => intake.recycle(batch),
                Step::Failed(error) => {
                    intake.recycle(batch);
                    fatal.get_or_insert(error);
                }
            }
        }};
    }

    // A batch whose answers were published (or not): its offsets, or the end of the run.
    macro_rules! after_answer {
        ($answered:expr) => {{
            let (batch, step) = $answered;
            match step {
                Step::Decided => state.complete(&batch, &shared, &consumer, topic),
                Step::Failed(error) => {
                    fatal.get_or_insert(error);
                }
                Step::Retry(_) | Step::Abandoned => {}
            }
            intake.recycle(batch);
        }};
    }

    'consume: while !stop.is_cancelled() && fatal.is_none() {
        let reading = retrying.len() < retrying_limit;
        // What is waiting already, without waiting.
        let mut idle = true;
        while reading && !intake.is_full() {
            let Some(received) = stream.next().now_or_never() else {
                break;
            };
            idle = false;
            if let Err(error) = state.take(received, &mut intake, consumer.context()) {
                fatal = Some(error);
                break 'consume;
            }
        }
        let idle = idle && !intake.is_full();
        let free_slot = deciding.len() < settings.concurrency && answering.len() < answering_limit;
        if free_slot {
            if let Some(due) = intake.next_due(idle, Instant::now()) {
                if let Some(mut batch) = intake.take(due) {
                    if let Some(first) = batch.first_at {
                        shared.counters.received(shared.started, first);
                    }
                    batch.seal(settings.timeout_ms);
                    deciding.push(decide_batch(shared.clone(), batch, stop.clone()));
                    continue;
                }
            }
        }
        let deadline = if free_slot {
            intake.next_deadline(idle)
        } else {
            None
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(attempt) = deciding.next(), if !deciding.is_empty() => after_attempt!(attempt),
            Some(attempt) = retrying.next(), if !retrying.is_empty() => after_attempt!(attempt),
            Some(answered) = answering.next(), if !answering.is_empty() => after_answer!(answered),
            received = stream.next(), if reading && !intake.is_full() => {
                if let Err(error) = state.take(received, &mut intake, consumer.context()) {
                    fatal = Some(error);
                    break;
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {}
        }
    }

    // Drain: what was received is sent (its offsets can then be committed), and every batch
    // in flight finishes (or is abandoned if its service is down).
    if fatal.is_none() {
        for mut batch in intake.take_all() {
            if let Some(first) = batch.first_at {
                shared.counters.received(shared.started, first);
            }
            batch.seal(settings.timeout_ms);
            deciding.push(decide_batch(shared.clone(), batch, stop.clone()));
        }
    }
    while !deciding.is_empty() || !retrying.is_empty() || !answering.is_empty() {
        tokio::select! {
            Some(attempt) = deciding.next(), if !deciding.is_empty() => after_attempt!(attempt),
            Some(attempt) = retrying.next(), if !retrying.is_empty() => after_attempt!(attempt),
            Some(answered) = answering.next(), if !answering.is_empty() => after_answer!(answered),
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
        None => Ok(ConsumerReport {
            latency: state.latency,
            activities: state.activities,
        }),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
