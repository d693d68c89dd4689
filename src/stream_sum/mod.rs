//! stream_sum's engine: the public "streaming sum" benchmark. Binary-Avro `IntegerList`
//! records in, their `SumResult` out under the same key; undecodable records to
//! `<input>.dlq`.
//!
//! - [`run_stream_sum`]: the continuous processor. One worker per input partition by
//!   default, each a member of the consumer group owning the partitions it is given.
//!   At least once ([`at_least_once`]: a consuming and a producing thread joined by a bounded
//!   [`batch_queue`]) or, with `exactly_once`, a transactional consume-transform-produce loop
//!   ([`exactly_once`]).
//!
//! `stream_sum bench` (load a backlog, time this processor and plain librdkafka loops on it)
//! lives apart, in [`crate::stream_sum_bench`]: it drives [`run_stream_sum_with`] from
//! outside, as a user would.

pub mod at_least_once;
pub mod batch_queue;
mod checkpoint;
pub mod exactly_once;
mod results;
mod start_line;
mod threads;

use crate::avro::encode_sum_result;
use crate::config::Config;
use crate::kafka::sink::{
    Compression, KafkaSink, MessageSerializer, SerializeError, SinkConfig, SinkError,
};
use crate::kafka::{client_config, ClientRole, KafkaError};
use crate::report::Report;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use start_line::Departure;
pub use start_line::{Seat, StartLine};
use threads::run_seated;

/// How often the throughput line is logged (the spec: every 5 seconds).
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Partitions of the topics stream_sum creates when they are missing (the spec's 3).
pub const CREATED_TOPIC_PARTITIONS: i32 = 3;
/// Header of a dead-letter record that says why it was rejected.
pub const DLQ_ERROR_HEADER: &str = "stream_sum.error";
/// How long a worker waits for its output producer to be able to send before it takes its
/// partitions: the topic's metadata, and an idempotent producer's id (librdkafka holds every
/// message until it has one, and asks for one only once a broker is up, else every 0.5 s:
/// half a second of results queued, docs/BENCHMARKS.md). Past it, the worker starts anyway.
const SINK_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits up to [`SINK_READY_TIMEOUT`] for worker `index`'s output producer to be able to
/// send. An unreachable broker is only reported: the worker starts anyway and its results
/// wait in the producer's queue, as they would have (librdkafka keeps reconnecting).
pub(crate) fn connect_output(sink: &KafkaSink<StreamOutput, StreamOutputSerializer>, index: usize) {
    if let Err(error) = sink.connect_blocking(SINK_READY_TIMEOUT) {
        tracing::warn!(event = "retry", worker = index, error = %Report(&error), "output producer not ready: starting anyway");
    }
}

/// How often the output producers report statistics: how a worker sees its producer id
/// arrive (and the producer metrics of `kafka::statistics`).
const SINK_STATISTICS_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamSumError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot read the partitions of {topic}")]
    Metadata { topic: String, source: KafkaError },
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error(
        "stream_sum.static_assignment: no partition count for {0} (missing, or its metadata \
         could not be read); the shares need it"
    )]
    NoPartitionCount(String),
    #[error("{failed} results failed delivery; their input offsets were not committed")]
    Undelivered { failed: u64 },
    #[error("worker {worker} stopped: {reason}")]
    WorkerPanicked { worker: usize, reason: String },
    #[error("cannot start a worker thread")]
    Thread(#[source] std::io::Error),
    #[error("the consumer has no group metadata to send to the transaction")]
    NoGroupMetadata,
    #[error(transparent)]
    Fetch(#[from] crate::kafka::fetch_queue::FetchQueueError),
}

impl From<rdkafka::error::KafkaError> for StreamSumError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// What stream_sum writes: a sum to the output topic, or an undecodable input record, as it
/// came, to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOutput {
    Sum(i64),
    Undecodable(Option<Vec<u8>>),
}

/// `SumResult` as binary Avro; dead letters pass through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOutputSerializer;

impl MessageSerializer<StreamOutput> for StreamOutputSerializer {
    fn serialize(&self, value: &StreamOutput, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        match value {
            StreamOutput::Sum(sum) => encode_sum_result(*sum, buffer),
            StreamOutput::Undecodable(payload) => {
                buffer.extend_from_slice(payload.as_deref().unwrap_or_default())
            }
        }
        Ok(())
    }

    fn content_type(&self) -> &str {
        "avro/binary"
    }

    fn is_null(&self, value: &StreamOutput) -> bool {
        matches!(value, StreamOutput::Undecodable(None))
    }
}

/// A record's sum, or why it cannot be read (it then goes to the dead-letter topic).
pub(crate) fn sum_of(payload: Option<&[u8]>) -> Result<i64, String> {
    match payload {
        Some(payload) => crate::avro::sum_integer_list(payload).map_err(|e| e.to_string()),
        None => Err("empty record (no payload)".to_string()),
    }
}

/// The dead-letter message of an undecodable record: its payload and key as they came, the
/// reason in the [`DLQ_ERROR_HEADER`] header.
pub(crate) fn dead_letter(
    topic: &str,
    payload: Option<Vec<u8>>,
    key: Option<&[u8]>,
    reason: &str,
) -> crate::kafka::sink::KafkaMessage<StreamOutput> {
    let mut message = crate::kafka::sink::KafkaMessage::new(StreamOutput::Undecodable(payload))
        .topic(topic)
        .header(DLQ_ERROR_HEADER, reason);
    message.key = key.map(<[u8]>::to_vec);
    message
}

/// The output sink of one worker: the spec's producer tuning (large batches, 20 ms linger,
/// snappy), no per-message header.
pub(crate) fn output_sink(
    config: &Config,
    client_id: String,
    transactional_id: Option<String>,
) -> Result<KafkaSink<StreamOutput, StreamOutputSerializer>, StreamSumError> {
    let sink = output_sink_config(config, client_id, transactional_id);
    Ok(KafkaSink::with_serializer(sink, StreamOutputSerializer)?)
}

/// The settings of [`output_sink`] (the bench's baseline producers start from them too).
pub(crate) fn output_sink_config(
    config: &Config,
    client_id: String,
    transactional_id: Option<String>,
) -> SinkConfig {
    let mut sink = SinkConfig::new(config.kafka.clone(), config.stream_sum.output_topic.clone());
    sink.client_id = client_id;
    sink.linger = Duration::from_millis(20);
    sink.batch_size = 1_000_000;
    sink.batch_messages = 10_000;
    sink.compression = Compression::Snappy;
    sink.content_type_header = false;
    sink.buffer_messages = config.stream_sum.producer_queue_messages;
    // Failures stop the worker (its offsets are not committed); nothing to trip.
    sink.breaker_threshold = 0;
    sink.statistics_interval = Some(
        sink.statistics_interval
            .map_or(SINK_STATISTICS_INTERVAL, |interval| {
                interval.min(SINK_STATISTICS_INTERVAL)
            }),
    );
    if let Some(id) = transactional_id {
        sink = sink.with_guarantee(crate::kafka::sink::DeliveryGuarantee::ExactlyOnce);
        sink.transactional_id = Some(id);
    }
    let mut kafka = sink.kafka.clone();
    kafka
        .properties
        .0
        .entry("socket.nagle.disable".into())
        .or_insert_with(|| "true".into());
    sink.kafka = kafka;
    sink
}

/// Counters shared by every worker, updated once per batch.
#[derive(Debug, Default)]
pub struct Counters {
    pub processed: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Times a worker paused its partitions because its output was behind.
    pub pauses: AtomicU64,
    /// Exactly-once: transactions committed, and the workers' time spent committing them
    /// (offsets sent, messages flushed, EndTxn), ns summed over workers.
    pub transactions: AtomicU64,
    pub committing_ns: AtomicU64,
    /// Of no transaction: the plain offset commit after each one that only the dev broker
    /// needs (see `exactly_once`), ns summed over workers.
    pub plain_committing_ns: AtomicU64,
}

impl Counters {
    /// Counts a batch: results produced and records dead-lettered (also as metrics).
    pub fn add(&self, sums: u64, dead: u64) {
        self.processed.fetch_add(sums, Ordering::Relaxed);
        metrics::counter!("stream_sum_records_total").increment(sums);
        if dead > 0 {
            self.dead_lettered.fetch_add(dead, Ordering::Relaxed);
            metrics::counter!("dead_lettered_total", "program" => "stream_sum").increment(dead);
        }
    }

    /// Counts a committed transaction and the time its commit took (and the plain commit's).
    pub fn committed(&self, committing: Duration, plain_committing: Duration) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        let nanos = |time: Duration| u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.committing_ns
            .fetch_add(nanos(committing), Ordering::Relaxed);
        self.plain_committing_ns
            .fetch_add(nanos(plain_committing), Ordering::Relaxed);
        metrics::histogram!("stream_sum_transaction_commit_seconds")
            .record(committing.as_secs_f64());
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSumSummary {
    pub workers: usize,
    pub processed: u64,
    pub dead_lettered: u64,
    pub pauses: u64,
    pub elapsed: Duration,
    /// Exactly-once only.
    pub commits: CommitTimes,
}

/// Exactly-once: transactions committed, the workers' time in their commits, and in the dev
/// broker's plain commits (summed over workers).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommitTimes {
    pub transactions: u64,
    pub committing: Duration,
    pub plain_committing: Duration,
}

impl fmt::Display for StreamSumSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            // No overall rate: a run includes idle time; the periodic throughput line and
            // `stream_sum bench` are the measures.
            "stream_sum summary: workers={} processed={} dead_lettered={} pauses={} elapsed={:.2}s",
            self.workers,
            self.processed,
            self.dead_lettered,
            self.pauses,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Logs an assignment or a rebalance error (revocations are logged by each context, with
/// what it did about them).
pub(crate) fn log_rebalance(worker: usize, rebalance: &Rebalance<'_>) {
    match rebalance {
        Rebalance::Assign(partitions) => {
            tracing::info!(
                event = "rebalance",
                worker,
                assigned = partitions.count(),
                "rebalance: partitions assigned"
            );
        }
        Rebalance::Revoke(_) => {}
        Rebalance::Error(error) => {
            tracing::warn!(event = "rebalance", worker, %error, "rebalance error")
        }
    }
}

/// The consumer context of an exactly-once worker: tells it a rebalance happened.
pub struct StreamContext {
    worker: usize,
    rebalanced: AtomicBool,
}

impl StreamContext {
    pub(crate) fn new(worker: usize) -> Self {
        Self {
            worker,
            rebalanced: AtomicBool::new(false),
        }
    }

    /// Whether a rebalance happened since the last call.
    pub fn take_rebalanced(&self) -> bool {
        self.rebalanced.load(Ordering::Acquire) && self.rebalanced.swap(false, Ordering::AcqRel)
    }
}

impl ClientContext for StreamContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::kafka::statistics::publish(&statistics);
    }
}

impl ConsumerContext for StreamContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.rebalanced.store(true, Ordering::Release);
            tracing::info!(
                event = "rebalance",
                worker = self.worker,
                revoked = partitions.count(),
                "rebalance: partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.rebalanced.store(true, Ordering::Release);
        }
        log_rebalance(self.worker, rebalance);
    }
}

/// How a worker gets its input partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The consumer group assigns them, and moves them as members come and go.
    Group,
    /// `stream_sum.static_assignment`: worker `index` of `workers` takes the partitions with
    /// `partition % workers == index`, from the group's committed offsets (else
    /// `auto.offset.reset`), without joining the group.
    Static { index: usize, workers: usize },
}

impl Membership {
    /// Subscribes `consumer` to `topic`, or assigns it its share of `partitions` (the
    /// topic's partition count, which a static share needs).
    pub(crate) fn attach<C: ConsumerContext>(
        self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partitions: i32,
    ) -> Result<(), StreamSumError> {
        match self {
            Self::Group => consumer.subscribe(&[topic])?,
            Self::Static { index, workers } => {
                if partitions <= 0 {
                    return Err(StreamSumError::NoPartitionCount(topic.to_string()));
                }
                let mut share = rdkafka::TopicPartitionList::new();
                for partition in (0..partitions).filter(|p| *p as usize % workers.max(1) == index) {
                    share.add_partition_offset(topic, partition, rdkafka::Offset::Stored)?;
                }
                consumer.assign(&share)?;
            }
        }
        Ok(())
    }

    /// Worker `index` of `workers`'s: its static share with `stream_sum.static_assignment`,
    /// else the group's.
    fn of(static_assignment: bool, index: usize, workers: usize) -> Self {
        if static_assignment {
            Self::Static { index, workers }
        } else {
            Self::Group
        }
    }
}

/// How many partitions `topic` has now, as far as `consumer` can tell (0 when it cannot).
pub(crate) fn known_partitions<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> i32 {
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(metadata) => metadata
            .topics()
            .first()
            .map_or(0, |topic| topic.partitions().len() as i32),
        Err(error) => {
            tracing::warn!(%topic, error = %Report(&error), "no partition count");
            0
        }
    }
}

/// A consumer for one worker, tuned for throughput (short fetch error backoff, Nagle off,
/// a deep prefetch queue); `tune` adjusts it further.
pub(crate) fn worker_consumer<C: ConsumerContext>(
    config: &Config,
    group_id: &str,
    context: C,
    tune: impl FnOnce(&mut rdkafka::ClientConfig),
) -> Result<BaseConsumer<C>, StreamSumError> {
    let mut consumer_config = client_config(
        &config.kafka,
        ClientRole::Consumer { group_id },
        "stream_sum",
    )?;
    consumer_config
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for (property, value) in [
        ("fetch.error.backoff.ms", "10"),
        // librdkafka waits this long (default 1 s) before fetching again for a partition
        // whose local queue was full; a fast consumer then starves: measured 3.2x slower
        // with one worker (docs/BENCHMARKS.md).
        ("fetch.queue.backoff.ms", "10"),
        ("socket.nagle.disable", "true"),
        ("fetch.wait.max.ms", "100"),
        ("queued.min.messages", "200000"),
    ] {
        crate::kafka::client_config::set_default(&mut consumer_config, property, value);
    }
    tune(&mut consumer_config);
    Ok(consumer_config.create_with_context(context)?)
}

/// The partition count of `topic`, or an error when it does not exist.
pub(crate) fn partition_count(config: &Config, topic: &str) -> Result<usize, StreamSumError> {
    crate::kafka::admin::partition_count(&config.kafka, topic)
        .map_err(|source| StreamSumError::Metadata {
            topic: topic.to_string(),
            source,
        })?
        .ok_or_else(|| StreamSumError::NoSuchTopic(topic.to_string()))
}

pub(crate) async fn ensure_topics(config: &Config, topics: &[&str]) -> Result<(), StreamSumError> {
    let specs: Vec<(&str, i32)> = topics
        .iter()
        .map(|topic| (*topic, CREATED_TOPIC_PARTITIONS))
        .collect();
    crate::kafka::admin::ensure_topics(&config.kafka, "stream_sum-admin", &specs).await?;
    Ok(())
}

/// Logs `(current - previous) / 5` messages per second every 5 s, as the spec asks.
async fn report_throughput(counters: Arc<Counters>, shutdown: CancellationToken) {
    let mut previous = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPORT_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
        let current = counters.processed.load(Ordering::Relaxed);
        let rate = (current - previous) / REPORT_INTERVAL.as_secs();
        metrics::gauge!("stream_sum_messages_per_second").set(rate as f64);
        tracing::info!(messages_per_sec = rate, total = current, "throughput");
        previous = current;
    }
}

/// Runs the continuous processor until `shutdown`; then drains, flushes and commits.
pub async fn run_stream_sum(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<StreamSumSummary, StreamSumError> {
    run_stream_sum_with(config, Arc::new(Counters::default()), shutdown).await
}

/// [`run_stream_sum`], counting into `counters` (which a caller may watch while it runs).
pub async fn run_stream_sum_with(
    config: &Config,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> Result<StreamSumSummary, StreamSumError> {
    let started = Instant::now();
    let settings = &config.stream_sum;
    ensure_topics(config, &[&settings.input_topic, &settings.output_topic]).await?;
    let workers = match settings.workers {
        0 => match partition_count(config, &settings.input_topic) {
            Ok(partitions) => partitions,
            // Not created (a broker without CreateTopics): it will be auto-created with the
            // first record, with as many partitions as stream_sum would have made.
            Err(StreamSumError::NoSuchTopic(_)) => CREATED_TOPIC_PARTITIONS as usize,
            Err(error) => return Err(error),
        },
        workers => workers,
    };
    tracing::info!(
        workers,
        input = %settings.input_topic,
        output = %settings.output_topic,
        group = %settings.group_id,
        exactly_once = settings.exactly_once,
        static_assignment = settings.static_assignment,
        "stream_sum started"
    );
    let reporter = tokio::spawn(report_throughput(counters.clone(), shutdown.clone()));
    // One worker's failure stops them all (see `threads.rs`).
    let stop = shutdown.child_token();
    let outcome = {
        let config = config.clone();
        let counters = counters.clone();
        let static_assignment = settings.static_assignment;
        if settings.exactly_once {
            let broker =
                crate::kafka::broker::BrokerKind::detect_for(&config.kafka, "stream_sum").await;
            if broker.is_mock() {
                tracing::info!("the broker is librdkafka's mock cluster (dev broker): each transaction's offsets are also committed plainly, since it does not store offsets sent to a transaction");
            }
            run_seated(
                "stream-sum-txn",
                workers,
                static_assignment,
                stop,
                move |seat, stop| {
                    exactly_once::run_worker(
                        seat,
                        &config,
                        &config.stream_sum.group_id,
                        broker,
                        &counters,
                        stop,
                    )
                },
            )
            .await
        } else {
            run_seated(
                "stream-sum",
                workers,
                static_assignment,
                stop,
                move |seat, stop| {
                    at_least_once::run_worker(
                        seat,
                        &config,
                        &config.stream_sum.group_id,
                        &counters,
                        stop,
                    )
                },
            )
            .await
        }
    };
    reporter.abort();
    outcome?;
    Ok(StreamSumSummary {
        workers,
        processed: counters.processed.load(Ordering::Relaxed),
        dead_lettered: counters.dead_lettered.load(Ordering::Relaxed),
        pauses: counters.pauses.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        commits: CommitTimes {
            transactions: counters.transactions.load(Ordering::Relaxed),
            committing: Duration::from_nanos(counters.committing_ns.load(Ordering::Relaxed)),
            plain_committing: Duration::from_nanos(
                counters.plain_committing_ns.load(Ordering::Relaxed),
            ),
        },
    })
}
