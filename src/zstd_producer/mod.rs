//! zstd_producer's engine: realistic protobuf `UserEvent`s ([`events`]) sent through
//! `KafkaSink` with zstd batches, with the compression achieved read from librdkafka's
//! statistics ([`run_zstd_producer`]); and the consumer-side check that reads the topic
//! back and decodes every record ([`verify_topic`]).

pub mod events;

use crate::config::Config;
use crate::kafka::sink::{
    Compression, KafkaMessage, KafkaSink, ProtobufSerializer, SinkConfig, SinkError, SinkStatistics,
};
use crate::kafka::statistics::StatisticsContext;
use crate::kafka::{client_config, ClientRole, KafkaError};
use crate::pace::Pacer;
use crate::proto::{EventType, UserEvent};
use crate::report::Report;
use events::EventGenerator;
use prost::Message as _;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use tokio_util::sync::CancellationToken;

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
    #[error("the producing thread failed")]
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
    shutdown: CancellationToken,
) -> Result<ProducerReport, ZstdProducerError> {
    let settings = config.zstd_producer.clone();
    let sink = Arc::new(event_sink(config)?);
    tracing::info!(
        topic = %settings.topic,
        events = settings.events,
        rate = settings.rate,
        users = settings.users,
        "zstd_producer started"
    );
    let started = Instant::now();
    let mut producing = {
        let (sink, stop) = (sink.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || produce(&sink, &settings, &stop))
    };
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    let sent = loop {
        tokio::select! {
            done = &mut producing => break done??,
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
    stop: &CancellationToken,
) -> Result<u64, ZstdProducerError> {
    let mut generator = EventGenerator::new(settings.seed, settings.users);
    let mut message = KafkaMessage::new(EventGenerator::empty_event());
    message.key = Some(Vec::with_capacity(16));
    let pacer = Pacer::new(settings.rate);
    let mut sent = 0_u64;
    while settings.events == 0 || sent < settings.events {
        // Checked every 1,024 events: an atomic load per event is not free either.
        if sent % 1_024 == 0 {
            if stop.is_cancelled() {
                break;
            }
            pacer.wait_for(sent, Duration::ZERO);
        }
        generator.fill(&mut message.value);
        if let Some(key) = message.key.as_mut() {
            key.clear();
            key.extend_from_slice(message.value.user_id.as_bytes());
        }
        sink.enqueue(&message)?;
        sent += 1;
        // Below 1,024 events per second the batch check above paces too coarsely.
        if settings.rate < 1_024 {
            pacer.wait_for(sent, Duration::ZERO);
        }
    }
    Ok(sent)
}

/// The events a producing run sent, to compare the topic with: the flags of that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedEvents {
    pub events: u64,
    /// The run's seed; 0 (random) cannot be checked.
    pub seed: u64,
    pub users: u64,
}

/// How the topic compares with the expected events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub expected: u64,
    /// Records equal to an expected event, field by field (timestamps aside), key included.
    pub matched: u64,
    /// Expected events the topic does not hold.
    pub missing: u64,
    /// Records that are no expected event, or an expected event a second time.
    pub extra: u64,
    /// Records with an expected event id whose other fields or key differ.
    pub different: u64,
    /// Up to [`EXAMPLES`] of each kind of mismatch, described.
    pub examples: Vec<String>,
}

/// Mismatches described per kind.
pub const EXAMPLES: usize = 5;

/// What [`verify_topic`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// Decoded events per event type name (`USER_LOGIN`, ...).
    pub by_type: BTreeMap<String, u64>,
    pub undecodable: u64,
    /// With [`ExpectedEvents`]: how the records compare with them.
    pub comparison: Option<Comparison>,
}

impl VerifyReport {
    /// No undecodable record, and, when compared, exactly the expected events.
    pub fn holds(&self) -> bool {
        self.undecodable == 0
            && self
                .comparison
                .as_ref()
                .is_none_or(|c| c.missing == 0 && c.extra == 0 && c.different == 0)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zstd_producer verify: records={}", self.records)?;
        for (kind, count) in &self.by_type {
            write!(f, " {kind}={count}")?;
        }
        write!(f, " undecodable={}", self.undecodable)?;
        if let Some(c) = &self.comparison {
            write!(
                f,
                " expected={} matched={} missing={} extra={} different={}",
                c.expected, c.matched, c.missing, c.extra, c.different
            )?;
            for example in &c.examples {
                write!(f, "\n  {example}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Read(#[from] crate::kafka::topic_reader::ReadRangesError),
    #[error("--verify --events needs the producing run's --seed (0 picks a random seed, whose events cannot be known)")]
    RandomSeed,
    #[error("--verify --events 0: a run until SIGTERM sent an unknown number of events; give the number it sent")]
    UnknownCount,
    #[error("the verifying thread failed")]
    Thread(#[from] tokio::task::JoinError),
}

impl From<rdkafka::error::KafkaError> for VerifyError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// How long a read waits for records the watermark says exist.
const VERIFY_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// After reading to the watermarks, how long they must stay put before the read is final
/// (a broker may acknowledge records before its watermark covers them).
const VERIFY_SETTLE: Duration = Duration::from_secs(2);

/// Reads the topic from its oldest retained record to its end, decodes every record as a
/// `UserEvent` and counts them by type, logging each undecodable one. With `expected`,
/// also compares the records with the events that run sent.
pub async fn verify_topic(
    config: &Config,
    expected: Option<ExpectedEvents>,
) -> Result<VerifyReport, VerifyError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || verify_blocking(&config, expected)).await?
}

/// The expected events by event id: their place in the sequence and a fingerprint of
/// everything but the timestamp.
struct Expected {
    by_id: HashMap<String, ExpectedEvent>,
    settings: ExpectedEvents,
}

struct ExpectedEvent {
    index: u64,
    fingerprint: u64,
    seen: bool,
}

/// A fingerprint of the event's fields but its timestamp, and of the record's key.
fn fingerprint(event: &mut UserEvent, key: &[u8], buffer: &mut Vec<u8>) -> u64 {
    use std::hash::{Hash, Hasher};
    let timestamp = std::mem::take(&mut event.timestamp);
    buffer.clear();
    // Maps are BTreeMaps (build.rs), so equal events encode equally.
    let _ = event.encode(buffer);
    event.timestamp = timestamp;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    buffer.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

impl Expected {
    fn generate(settings: ExpectedEvents) -> Self {
        let mut generator = EventGenerator::new(settings.seed, settings.users);
        let mut event = EventGenerator::empty_event();
        let mut buffer = Vec::new();
        let mut by_id = HashMap::with_capacity(settings.events as usize);
        for index in 0..settings.events {
            generator.fill(&mut event);
            let key = event.user_id.clone();
            let fingerprint = fingerprint(&mut event, key.as_bytes(), &mut buffer);
            by_id.insert(
                event.event_id.clone(),
                ExpectedEvent {
                    index,
                    fingerprint,
                    seen: false,
                },
            );
        }
        Self { by_id, settings }
    }

    /// The expected event at `index` (the sequence generated again).
    fn event_at(&self, index: u64) -> UserEvent {
        let mut generator = EventGenerator::new(self.settings.seed, self.settings.users);
        let mut event = EventGenerator::empty_event();
        for _ in 0..=index {
            generator.fill(&mut event);
        }
        event
    }
}

/// The fields in which two events differ (timestamps aside), and the key.
fn differing_fields(expected: &UserEvent, got: &UserEvent, key: &[u8]) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if expected.user_id != got.user_id {
        fields.push("user_id");
    }
    if expected.event_type != got.event_type {
        fields.push("event_type");
    }
    let (want, have) = (
        expected.data.clone().unwrap_or_default(),
        got.data.clone().unwrap_or_default(),
    );
    if want.email != have.email {
        fields.push("data.email");
    }
    if want.username != have.username {
        fields.push("data.username");
    }
    if want.metadata != have.metadata {
        fields.push("data.metadata");
    }
    if key != expected.user_id.as_bytes() {
        fields.push("key");
    }
    fields
}

fn verify_blocking(
    config: &Config,
    expected: Option<ExpectedEvents>,
) -> Result<VerifyReport, VerifyError> {
    use crate::kafka::topic_reader::{ranges_between, read_ranges, retained_ranges};
    if expected.is_some_and(|e| e.seed == 0) {
        return Err(VerifyError::RandomSeed);
    }
    if expected.is_some_and(|e| e.events == 0) {
        return Err(VerifyError::UnknownCount);
    }
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
    let mut expected = expected.map(Expected::generate);
    let mut report = VerifyReport::default();
    let mut comparison = Comparison {
        expected: expected.as_ref().map_or(0, |e| e.settings.events),
        ..Comparison::default()
    };
    let mut differences: Vec<(u64, UserEvent, Vec<u8>)> = Vec::new();
    let mut extras = Vec::new();
    let mut event = UserEvent::default();
    let mut buffer = Vec::new();
    let mut visit = |message: &rdkafka::message::BorrowedMessage<'_>| {
        report.records += 1;
        if let Err(error) = event.merge(message.payload().unwrap_or_default()) {
            report.undecodable += 1;
            tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                error = %Report(&error),
                "undecodable record"
            );
            event.clear();
            return;
        }
        let kind =
            EventType::try_from(event.event_type).map_or("UNRECOGNISED", |kind| kind.as_str_name());
        *report.by_type.entry(kind.to_string()).or_default() += 1;
        if let Some(expected) = expected.as_mut() {
            let key = message.key().unwrap_or_default();
            match expected.by_id.get_mut(&event.event_id) {
                Some(known) if !known.seen => {
                    known.seen = true;
                    if known.fingerprint == fingerprint(&mut event, key, &mut buffer) {
                        comparison.matched += 1;
                    } else {
                        comparison.different += 1;
                        if differences.len() < EXAMPLES {
                            differences.push((known.index, event.clone(), key.to_vec()));
                        }
                    }
                }
                known => {
                    comparison.extra += 1;
                    if extras.len() < EXAMPLES {
                        let why = if known.is_some() {
                            "a second time"
                        } else {
                            "not expected"
                        };
                        extras.push(format!(
                            "extra: partition {} offset {} event {} ({why})",
                            message.partition(),
                            message.offset(),
                            event.event_id
                        ));
                    }
                }
            }
        }
        event.clear();
    };
    let mut read_to = retained_ranges(&consumer, topic, Duration::from_secs(10))?;
    read_ranges(&consumer, topic, &read_to, VERIFY_IDLE_LIMIT, &mut visit)?;
    // Until the watermarks stay put: records acknowledged before they were covered.
    let mut settled_since = Instant::now();
    while settled_since.elapsed() < VERIFY_SETTLE {
        std::thread::sleep(Duration::from_millis(200));
        let now = retained_ranges(&consumer, topic, Duration::from_secs(10))?;
        let grown = ranges_between(&read_to, &now);
        if grown.iter().any(|range| !range.is_empty()) {
            read_ranges(&consumer, topic, &grown, VERIFY_IDLE_LIMIT, &mut visit)?;
            read_to = now;
            settled_since = Instant::now();
        }
    }
    if let Some(expected) = &expected {
        let mut missing: Vec<(u64, &str)> = expected
            .by_id
            .iter()
            .filter(|(_, known)| !known.seen)
            .map(|(id, known)| (known.index, id.as_str()))
            .collect();
        comparison.missing = missing.len() as u64;
        missing.sort_unstable();
        for (index, id) in missing.iter().take(EXAMPLES) {
            comparison
                .examples
                .push(format!("missing: event #{index} ({id})"));
        }
        comparison.examples.extend(extras);
        for (index, got, key) in &differences {
            let want = expected.event_at(*index);
            comparison.examples.push(format!(
                "different: event #{index} ({}): {}",
                got.event_id,
                differing_fields(&want, got, key).join(", ")
            ));
        }
        report.comparison = Some(comparison);
    }
    Ok(report)
}
