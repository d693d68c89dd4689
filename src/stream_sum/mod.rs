//! stream_sum's engine: binary-Avro `IntegerList` records in, their `SumResult` out, at
//! least once.
//!
//! Each worker is one member of the consumer group (so it owns the partitions the group gives
//! it) and two halves joined by a bounded channel: an async consumer that decodes each record
//! straight into its sum, and a producer thread that enqueues the results on the shared
//! output sink (its allocation-free fast path). A slow producer fills the channel and so
//! throttles consumption instead of growing memory. Every `COMMIT_EVERY` results or
//! `COMMIT_INTERVAL`, the producer thread flushes the sink and only then stores the input
//! offsets it has sent, so a crash can repeat sums but never lose one. Undecodable records
//! go to `<input>.dlq` with the reason in a header.

use crate::avro::{encode_sum_result, sum_integer_list};
use crate::config::Config;
use crate::kafka::sink::{
    BytesSerializer, KafkaMessage, KafkaSink, MessageSerializer, SerializeError, SinkConfig,
    SinkError,
};
use crate::kafka::{client_config, ClientRole, KafkaError};
use crate::shutdown::Shutdown;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Results sent between two offset commits, at most.
const COMMIT_EVERY: u64 = 20_000;
/// Time between two offset commits, at most.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How often the throughput line is logged.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Header of a dead-letter record that says why it was rejected.
pub const DLQ_ERROR_HEADER: &str = "stream_sum.error";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamSumError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot read the partitions of {topic}: {source}")]
    Metadata { topic: String, source: KafkaError },
    #[error("a worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl From<rdkafka::error::KafkaError> for StreamSumError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// `SumResult` as binary Avro.
#[derive(Debug, Clone, Copy, Default)]
pub struct SumResultSerializer;

impl MessageSerializer<i64> for SumResultSerializer {
    fn serialize(&self, sum: &i64, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        encode_sum_result(*sum, buffer);
        Ok(())
    }

    fn content_type(&self) -> &str {
        "avro/binary"
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSumSummary {
    pub workers: usize,
    pub processed: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
}

impl fmt::Display for StreamSumSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            // No overall rate: the run includes idle time; the periodic throughput line is
            // the measure.
            "stream_sum summary: workers={} processed={} dead_lettered={} elapsed={:.2}s",
            self.workers,
            self.processed,
            self.dead_lettered,
            self.elapsed.as_secs_f64()
        )
    }
}

/// A decoded record on its way to the producer thread. Short keys travel inline, so
/// nothing is allocated per record for them.
struct Sum {
    partition: i32,
    offset: i64,
    key: Key,
    /// `None` for a dead-lettered record: nothing to produce, only its offset to commit.
    sum: Option<i64>,
}

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

struct Counters {
    processed: AtomicU64,
    dead_lettered: AtomicU64,
}

/// Runs the continuous processor until `shutdown`; then drains, flushes and commits.
pub async fn run_stream_sum(
    config: &Config,
    shutdown: Shutdown,
) -> Result<StreamSumSummary, StreamSumError> {
    let started = Instant::now();
    let settings = &config.stream_sum;
    let workers = match settings.workers {
        0 => input_partitions(config)?.max(1),
        workers => workers,
    };
    let mut output_config = SinkConfig::new(config.kafka.clone(), settings.output_topic.clone());
    output_config.client_id = "stream_sum".into();
    // The benchmark spec: large batches, 10-20 ms linger, snappy.
    output_config.linger = Duration::from_millis(20);
    output_config.batch_size = 1_000_000;
    output_config.batch_messages = 10_000;
    output_config.compression = crate::kafka::sink::Compression::Snappy;
    output_config.content_type_header = false;
    output_config.breaker_threshold = 0;
    let output = Arc::new(KafkaSink::with_serializer(
        output_config,
        SumResultSerializer,
    )?);
    let mut dlq_config = SinkConfig::new(
        config.kafka.clone(),
        format!("{}.dlq", settings.input_topic),
    );
    dlq_config.client_id = "stream_sum-dlq".into();
    dlq_config.breaker_threshold = 0;
    let dlq = Arc::new(KafkaSink::with_serializer(dlq_config, BytesSerializer)?);
    let counters = Arc::new(Counters {
        processed: AtomicU64::new(0),
        dead_lettered: AtomicU64::new(0),
    });
    tracing::info!(
        workers,
        input = %settings.input_topic,
        output = %settings.output_topic,
        group = %settings.group_id,
        "stream_sum started"
    );

    let reporter = tokio::spawn(report_throughput(counters.clone(), shutdown.clone()));
    let mut tasks = Vec::new();
    for index in 0..workers {
        tasks.push(tokio::spawn(worker(
            index,
            config.clone(),
            output.clone(),
            dlq.clone(),
            counters.clone(),
            shutdown.clone(),
        )));
    }
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "worker failed");
                first_error.get_or_insert(error);
            }
            Err(join) => {
                first_error.get_or_insert(join.into());
            }
        }
    }
    reporter.abort();
    for sink in [
        output.close(Duration::from_secs(30)).await,
        dlq.close(Duration::from_secs(30)).await,
    ] {
        match sink {
            Ok(report) if report.undelivered > 0 => {
                tracing::error!(
                    undelivered = report.undelivered,
                    "results left undelivered; their offsets were not committed"
                )
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "closing a sink"),
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    Ok(StreamSumSummary {
        workers,
        processed: counters.processed.load(Ordering::Relaxed),
        dead_lettered: counters.dead_lettered.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// The input topic's partition count (the default number of workers).
fn input_partitions(config: &Config) -> Result<usize, StreamSumError> {
    let topic = &config.stream_sum.input_topic;
    let consumer: rdkafka::consumer::BaseConsumer =
        client_config(&config.kafka, ClientRole::Admin, "stream_sum-metadata")?.create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|source| StreamSumError::Metadata {
            topic: topic.clone(),
            source: source.into(),
        })?;
    Ok(metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()))
}

/// Logs `(current - previous) / 5` messages per second every 5 s, as the spec asks.
async fn report_throughput(counters: Arc<Counters>, mut shutdown: Shutdown) {
    let mut previous = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPORT_INTERVAL) => {}
            _ = shutdown.wait() => return,
        }
        let current = counters.processed.load(Ordering::Relaxed);
        tracing::info!(
            messages_per_sec = (current - previous) / REPORT_INTERVAL.as_secs(),
            total = current,
            "throughput"
        );
        previous = current;
    }
}

async fn worker(
    index: usize,
    config: Config,
    output: Arc<KafkaSink<i64, SumResultSerializer>>,
    dlq: Arc<KafkaSink<Option<Vec<u8>>, BytesSerializer>>,
    counters: Arc<Counters>,
    mut shutdown: Shutdown,
) -> Result<(), StreamSumError> {
    let settings = &config.stream_sum;
    let mut consumer_config = client_config(
        &config.kafka,
        ClientRole::Consumer {
            group_id: &settings.group_id,
        },
        "stream_sum",
    )?;
    consumer_config
        .set("auto.offset.reset", "earliest")
        // Offsets are committed by the producer side after each flush.
        .set("enable.auto.commit", "false");
    crate::kafka::client_config::set_default(&mut consumer_config, "fetch.error.backoff.ms", "10");
    crate::kafka::client_config::set_default(&mut consumer_config, "socket.nagle.disable", "true");
    let consumer: Arc<StreamConsumer> = Arc::new(consumer_config.create()?);
    consumer.subscribe(&[&settings.input_topic])?;

    let (sender, receiver) = tokio::sync::mpsc::channel::<Sum>(settings.channel_capacity);
    let producer = {
        let consumer = consumer.clone();
        let output = output.clone();
        let counters = counters.clone();
        let topic = settings.input_topic.clone();
        tokio::task::spawn_blocking(move || {
            produce_results(receiver, &output, &consumer, &topic, &counters)
        })
    };

    loop {
        let message = tokio::select! {
            _ = shutdown.wait() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                let error = KafkaError::from(error);
                if error.is_fatal() {
                    return Err(error.into());
                }
                tracing::warn!(worker = index, %error, "consume error (retrying)");
                continue;
            }
        };
        let decoded = match message.payload() {
            Some(payload) => sum_integer_list(payload).map_err(|e| e.to_string()),
            None => Err("empty record (no payload)".to_string()),
        };
        match decoded {
            Ok(sum) => {
                let item = Sum {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: Key::from(message.key()),
                    sum: Some(sum),
                };
                // Waits when the producer side is behind: back-pressure, bounded memory.
                if sender.send(item).await.is_err() {
                    break;
                }
            }
            Err(reason) => {
                tracing::warn!(worker = index, %reason, partition = message.partition(), offset = message.offset(), "undecodable record sent to the dead-letter topic");
                let mut record = KafkaMessage::new(message.payload().map(<[u8]>::to_vec))
                    .header(DLQ_ERROR_HEADER, reason);
                record.key = message.key().map(<[u8]>::to_vec);
                dlq.send(record).await?;
                counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                // Its offset is stored with the next flush of results of this partition
                // (or the final one): a dead-lettered record is never read twice for nothing.
                let item = Sum {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: Key::None,
                    sum: None,
                };
                if sender.send(item).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(sender);
    producer.await??;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(())
        | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(error) => tracing::warn!(worker = index, %error, "final commit failed"),
    }
    Ok(())
}

/// The producer half of a worker: enqueues results on the output sink and, every
/// `COMMIT_EVERY` results or `COMMIT_INTERVAL`, flushes the sink and then stores and commits
/// the input offsets behind what it flushed.
fn produce_results(
    mut receiver: tokio::sync::mpsc::Receiver<Sum>,
    output: &KafkaSink<i64, SumResultSerializer>,
    consumer: &StreamConsumer,
    topic: &str,
    counters: &Counters,
) -> Result<(), StreamSumError> {
    let runtime = tokio::runtime::Handle::current();
    let mut message = KafkaMessage::new(0_i64);
    let mut spare_key = Vec::new();
    // The highest offset per partition sent (or dead-lettered) since the last commit.
    let mut sent: HashMap<i32, i64> = HashMap::new();
    let mut since_commit = 0_u64;
    let mut last_commit = Instant::now();
    loop {
        let next = runtime.block_on(tokio::time::timeout(COMMIT_INTERVAL, receiver.recv()));
        let closed = matches!(next, Ok(None));
        if let Ok(Some(item)) = next {
            if let Some(sum) = item.sum {
                message.value = sum;
                match item.key.as_slice() {
                    Some(key) => {
                        let buffer = message
                            .key
                            .get_or_insert_with(|| std::mem::take(&mut spare_key));
                        buffer.clear();
                        buffer.extend_from_slice(key);
                    }
                    None => {
                        if let Some(buffer) = message.key.take() {
                            spare_key = buffer;
                        }
                    }
                }
                output.enqueue(&message)?;
                counters.processed.fetch_add(1, Ordering::Relaxed);
            }
            let highest = sent.entry(item.partition).or_insert(item.offset);
            *highest = (*highest).max(item.offset);
            since_commit += 1;
        }
        let due = since_commit >= COMMIT_EVERY
            || (since_commit > 0 && last_commit.elapsed() >= COMMIT_INTERVAL);
        if due || (closed && since_commit > 0) {
            let undelivered = runtime.block_on(output.flush(Duration::from_secs(60)))?;
            if undelivered == 0 {
                for (&partition, &offset) in &sent {
                    if let Err(error) = consumer.store_offset(topic, partition, offset) {
                        // Revoked meanwhile: its new owner re-reads from the last commit.
                        tracing::debug!(partition, offset, %error, "offset not stored");
                    }
                }
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Async) {
                    tracing::debug!(%error, "commit skipped");
                }
                sent.clear();
                since_commit = 0;
            } else {
                tracing::warn!(undelivered, "results not yet delivered; offsets kept back");
            }
            last_commit = Instant::now();
        }
        if closed {
            return Ok(());
        }
    }
}
