//! zstd_producer's engine: realistic protobuf `UserEvent`s ([`events`]) sent through
//! `KafkaSink` with zstd batches, with the compression achieved read from librdkafka's
//! statistics ([`run_zstd_producer`]); and the consumer-side check that reads the topic
//! back and decodes every record ([`verify_topic`]).

pub mod events;

use crate::config::Config;
use crate::kafka::sink::{
    Compression, KafkaMessage, KafkaSink, ProtobufSerializer, SinkConfig, SinkError, SinkStatistics,
};
use crate::kafka::{client_config, ClientRole, KafkaError};
use crate::proto::{EventType, UserEvent};
use crate::shutdown::Shutdown;
use crate::telemetry::StatisticsContext;
use events::EventGenerator;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// librdkafka's statistics interval: the compression figures come from these reports.
const STATISTICS_INTERVAL: Duration = Duration::from_millis(500);
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZstdProducerError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the producing thread failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

impl From<rdkafka::error::KafkaError> for ZstdProducerError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// What a run sent, and what compression librdkafka reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerReport {
    pub sent: u64,
    /// Not acknowledged: failed for good, or still undelivered at the end.
    pub failed: u64,
    pub seconds: f64,
    pub statistics: SinkStatistics,
}

impl fmt::Display for ProducerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "zstd_producer summary: sent={} failed={} seconds={:.2} events_per_sec={:.0} \
             uncompressed_bytes={} compressed_bytes={} compression_ratio={:.2}",
            self.sent,
            self.failed,
            self.seconds,
            self.sent as f64 / self.seconds.max(f64::MIN_POSITIVE),
            self.statistics.message_bytes,
            self.statistics.batch_bytes,
            self.statistics.compression_ratio().unwrap_or(0.0)
        )
    }
}

/// The producer the spec asks for: zstd, up to 10,000 messages per batch, 5 s message
/// timeout, a 1 GB queue, idempotence on.
fn event_sink(
    config: &Config,
) -> Result<KafkaSink<UserEvent, ProtobufSerializer<UserEvent>>, ZstdProducerError> {
    let mut sink = SinkConfig::new(config.kafka.clone(), config.zstd_producer.topic.clone());
    sink.client_id = "zstd_producer".into();
    sink.compression = Compression::Zstd;
    sink.batch_messages = 10_000;
    sink.batch_size = 1_000_000;
    sink.linger = Duration::from_millis(20);
    sink.message_timeout = Duration::from_secs(5);
    sink.buffer_memory_kb = 1_048_576;
    sink.idempotence = true;
    // The event type is in the payload; a per-message header would cost more than the
    // event itself to produce (see docs/BENCHMARKS.md, KafkaSink).
    sink.content_type_header = false;
    sink.breaker_threshold = 0;
    sink.statistics_interval = Some(STATISTICS_INTERVAL);
    Ok(KafkaSink::with_serializer(
        sink,
        ProtobufSerializer::default(),
    )?)
}

/// Sends `zstd_producer.events` events (or until `shutdown` when 0) at up to
/// `zstd_producer.rate` per second, keyed by user id; logs progress every 5 s.
pub async fn run_zstd_producer(
    config: &Config,
    mut shutdown: Shutdown,
) -> Result<ProducerReport, ZstdProducerError> {
    let settings = config.zstd_producer.clone();
    let sink = Arc::new(event_sink(config)?);
    let stop = Arc::new(AtomicBool::new(false));
    tracing::info!(
        topic = %settings.topic,
        events = settings.events,
        rate = settings.rate,
        users = settings.users,
        "zstd_producer started"
    );
    let started = Instant::now();
    let mut producing = {
        let (sink, stop) = (sink.clone(), stop.clone());
        tokio::task::spawn_blocking(move || produce(&sink, &settings, &stop))
    };
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    let sent = loop {
        tokio::select! {
            done = &mut producing => break done??,
            _ = shutdown.wait(), if !stop.load(Ordering::Relaxed) => {
                stop.store(true, Ordering::Relaxed);
            }
            _ = progress.tick() => {
                let metrics = sink.metrics();
                tracing::info!(
                    delivered = metrics.messages_sent,
                    failed = metrics.messages_failed,
                    in_flight = sink.in_flight(),
                    per_sec = (metrics.messages_sent as f64 / started.elapsed().as_secs_f64()) as u64,
                    "progress"
                );
            }
        }
    };
    let undelivered = sink.flush(FLUSH_TIMEOUT).await?;
    let seconds = started.elapsed().as_secs_f64();
    // The last batches are counted in the next statistics report.
    let reports = sink.statistics().reports;
    let deadline = Instant::now() + 4 * STATISTICS_INTERVAL;
    while sink.statistics().reports == reports && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statistics = sink.statistics();
    let closed = sink.close(FLUSH_TIMEOUT).await?;
    Ok(ProducerReport {
        sent,
        failed: closed.metrics.messages_failed + undelivered,
        seconds,
        statistics,
    })
}

/// The producing loop (a blocking thread: the fast path waits when librdkafka's queue is
/// full). Returns how many events it handed over.
fn produce(
    sink: &KafkaSink<UserEvent, ProtobufSerializer<UserEvent>>,
    settings: &crate::config::ZstdProducerConfig,
    stop: &AtomicBool,
) -> Result<u64, ZstdProducerError> {
    let mut generator = EventGenerator::new(settings.seed, settings.users);
    let mut message = KafkaMessage::new(EventGenerator::empty_event());
    message.key = Some(Vec::with_capacity(16));
    let started = Instant::now();
    let mut sent = 0_u64;
    while settings.events == 0 || sent < settings.events {
        // Checked every 1,024 events: an atomic load per event is not free either.
        if sent % 1_024 == 0 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if settings.rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / settings.rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
        generator.fill(&mut message.value);
        if let Some(key) = message.key.as_mut() {
            key.clear();
            key.extend_from_slice(message.value.user_id.as_bytes());
        }
        sink.enqueue(&message)?;
        sent += 1;
        // Below 1,024 events per second the batch check above paces too coarsely.
        if settings.rate > 0 && settings.rate < 1_024 {
            let due = Duration::from_secs_f64(sent as f64 / settings.rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    Ok(sent)
}

/// What [`verify_topic`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// Decoded events per event type name (`USER_LOGIN`, ...).
    pub by_type: BTreeMap<String, u64>,
    pub undecodable: u64,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zstd_producer verify: records={}", self.records)?;
        for (kind, count) in &self.by_type {
            write!(f, " {kind}={count}")?;
        }
        write!(f, " undecodable={}", self.undecodable)
    }
}

/// Reads the topic from its oldest retained record to its end now and decodes every
/// record as a `UserEvent`; counts them by type and logs each undecodable one.
pub async fn verify_topic(config: &Config) -> Result<VerifyReport, ZstdProducerError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || verify_blocking(&config)).await?
}

fn verify_blocking(config: &Config) -> Result<VerifyReport, ZstdProducerError> {
    let topic = &config.zstd_producer.topic;
    let mut consumer_config = client_config(
        &config.kafka,
        ClientRole::Consumer {
            group_id: "zstd_producer-verify",
        },
        "zstd_producer-verify",
    )?;
    consumer_config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer<StatisticsContext> =
        consumer_config.create_with_context(StatisticsContext)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len()) as i32;
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    let mut remaining = 0;
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if low < high {
            assignment.add_partition_offset(topic, partition, rdkafka::Offset::Offset(low))?;
            ends.insert(partition, high);
            remaining += high - low;
        }
    }
    consumer.assign(&assignment)?;
    let mut report = VerifyReport::default();
    let mut last_record = Instant::now();
    while remaining > 0 && last_record.elapsed() < Duration::from_secs(30) {
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = received?;
        last_record = Instant::now();
        if message.offset() >= ends.get(&message.partition()).copied().unwrap_or(0) {
            continue;
        }
        remaining -= 1;
        report.records += 1;
        match UserEvent::decode(message.payload().unwrap_or_default()) {
            Ok(event) => {
                let kind = EventType::try_from(event.event_type)
                    .map_or("UNRECOGNISED", |kind| kind.as_str_name());
                *report.by_type.entry(kind.to_string()).or_default() += 1;
            }
            Err(error) => {
                report.undecodable += 1;
                tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    %error,
                    "undecodable record"
                );
            }
        }
    }
    if remaining > 0 {
        tracing::warn!(
            remaining,
            "records not received (removed by retention meanwhile?)"
        );
    }
    Ok(report)
}
