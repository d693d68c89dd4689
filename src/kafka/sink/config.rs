//! [`SinkConfig`]: every producer setting of the sink with its documented default, the
//! delivery-guarantee presets, and the checks that reject contradictory combinations at
//! construction.

use super::partition::PartitionStrategy;
use crate::kafka::client_config::{check_properties, set_default};
use crate::kafka::config::KafkaConfig;
use crate::kafka::{client_config, ClientRole, KafkaError};
use rdkafka::ClientConfig;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Broker acknowledgements a send waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// `acks=0`: none; the send is done when it leaves the client.
    None,
    /// `acks=1`: the partition leader.
    Leader,
    /// `acks=all`: every in-sync replica.
    #[default]
    All,
}

impl Acks {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::None => "0",
            Self::Leader => "1",
            Self::All => "all",
        }
    }
}

/// What the sink promises about each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryGuarantee {
    /// `acks=0`, no retries, no idempotence: may lose, never duplicates.
    AtMostOnce,
    /// Acknowledged and retried; with idempotence (the default) librdkafka's own retries
    /// cannot duplicate, but a message the sink re-sends after a timeout may arrive twice.
    #[default]
    AtLeastOnce,
    /// Idempotent and transactional: a `read_committed` consumer sees each committed message
    /// once and never an aborted one. Needs a transactional id.
    ExactlyOnce,
}

/// Settings of a [`KafkaSink`](super::KafkaSink). Start from [`SinkConfig::new`] and change
/// fields; [`SinkConfig::with_guarantee`] applies a guarantee's settings together.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Connection and security settings (brokers, SASL, TLS, raw properties).
    pub kafka: KafkaConfig,
    /// Default topic; a message may override it.
    pub topic: String,
    /// `client.id` suffix. Default `kafka-sink`.
    pub client_id: String,
    /// Most bytes per partition batch (`batch.size`). Default 1,000,000.
    pub batch_size: usize,
    /// Most messages per batch (`batch.num.messages`). Default 10,000.
    pub batch_messages: usize,
    /// How long to wait for a batch to fill (`linger.ms`). Default 5 ms.
    pub linger: Duration,
    /// Default none.
    pub compression: Compression,
    /// Default all.
    pub acks: Acks,
    /// Idempotent producer (`enable.idempotence`). Default on.
    pub idempotence: bool,
    /// Requests in flight per broker connection. Default 5 (the most idempotence allows).
    pub max_in_flight: u32,
    /// How long librdkafka may try to deliver a message (`message.timeout.ms`). Default 30 s.
    pub message_timeout: Duration,
    /// How long a send waits for room in a full queue before failing. Default 30 s.
    pub send_timeout: Duration,
    /// Producer queue size in KiB (`queue.buffering.max.kbytes`). Default 1 GiB.
    pub buffer_memory_kb: usize,
    /// Producer queue size in messages (`queue.buffering.max.messages`). Default 1,000,000.
    pub buffer_messages: usize,
    /// Times `send` re-sends a message whose delivery failed with a retriable error.
    /// Default 3.
    pub retries: u32,
    /// First retry delay; doubles per retry, with jitter. Default 100 ms.
    pub retry_backoff: Duration,
    /// Consecutive failed messages that open the circuit breaker; 0 disables it. Default 5.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a trial send. Default 30 s.
    pub breaker_timeout: Duration,
    /// Required for (and only for) exactly-once.
    pub transactional_id: Option<String>,
    pub guarantee: DeliveryGuarantee,
    pub partition_strategy: PartitionStrategy,
    /// Add the serializer's `content-type` header to every message. Default on. Headers
    /// cost throughput in librdkafka (see docs/BENCHMARKS.md); turn it off when consumers
    /// know the format.
    pub content_type_header: bool,
    /// How often librdkafka reports statistics (`statistics.interval.ms`); read them with
    /// `KafkaSink::statistics`. Default off.
    pub statistics_interval: Option<Duration>,
}

/// A setting the sink rejects, with the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sink config `{field}`: {reason}")]
pub struct InvalidSinkConfig {
    pub field: &'static str,
    pub reason: String,
}

/// Properties the sink sets from its typed fields; `kafka.properties` may not.
const SINK_PROPERTIES: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "transactional.id",
    "compression.type",
    "compression.codec",
    "linger.ms",
    "queue.buffering.max.ms",
    "batch.size",
    "batch.num.messages",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "partitioner",
    "statistics.interval.ms",
];

impl SinkConfig {
    pub fn new(kafka: KafkaConfig, topic: impl Into<String>) -> Self {
        Self {
            kafka,
            topic: topic.into(),
            client_id: "kafka-sink".into(),
            batch_size: 1_000_000,
            batch_messages: 10_000,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            acks: Acks::All,
            idempotence: true,
            max_in_flight: 5,
            message_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            buffer_memory_kb: 1_048_576,
            buffer_messages: 1_000_000,
            retries: 3,
            retry_backoff: Duration::from_millis(100),
            breaker_threshold: 5,
            breaker_timeout: Duration::from_secs(30),
            transactional_id: None,
            guarantee: DeliveryGuarantee::AtLeastOnce,
            partition_strategy: PartitionStrategy::KeyHash,
            content_type_header: true,
            statistics_interval: None,
        }
    }

    /// A config for `brokers` with default security settings.
    pub fn for_brokers(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        let kafka = KafkaConfig {
            brokers: brokers.into(),
            ..KafkaConfig::default()
        };
        Self::new(kafka, topic)
    }

    /// Applies a guarantee with the settings it implies: AtMostOnce turns acks off,
    /// idempotence and retries off; AtLeastOnce and ExactlyOnce need acks=all and
    /// idempotence. ExactlyOnce still needs `transactional_id`.
    pub fn with_guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.guarantee = guarantee;
        match guarantee {
            DeliveryGuarantee::AtMostOnce => {
                self.acks = Acks::None;
                self.idempotence = false;
                self.retries = 0;
            }
            DeliveryGuarantee::AtLeastOnce | DeliveryGuarantee::ExactlyOnce => {
                self.acks = Acks::All;
                self.idempotence = true;
            }
        }
        self
    }

    /// Rejects contradictions, naming the field.
    pub fn validate(&self) -> Result<(), InvalidSinkConfig> {
        let invalid = |field: &'static str, reason: &str| {
            Err(InvalidSinkConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must not be empty");
        }
        if self.topic.trim().is_empty() {
            return invalid("topic", "must not be empty");
        }
        if self.batch_size == 0
            || self.batch_messages == 0
            || self.buffer_messages == 0
            || self.buffer_memory_kb == 0
        {
            return invalid("batch_size", "batch and buffer sizes must be at least 1");
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1");
        }
        if self.idempotence && self.acks != Acks::All {
            return invalid(
                "acks",
                "idempotence needs acks=all (or turn idempotence off)",
            );
        }
        if self.idempotence && self.max_in_flight > 5 {
            return invalid(
                "max_in_flight",
                "idempotence allows at most 5 requests in flight",
            );
        }
        if self.message_timeout <= self.linger {
            return invalid("message_timeout", "must be longer than linger");
        }
        match self.guarantee {
            DeliveryGuarantee::AtMostOnce if self.acks == Acks::All => {
                return invalid(
                    "guarantee",
                    "AtMostOnce does not wait for acknowledgements: use acks None or Leader",
                );
            }
            DeliveryGuarantee::ExactlyOnce if self.transactional_id.is_none() => {
                return invalid("transactional_id", "ExactlyOnce needs a transactional id");
            }
            DeliveryGuarantee::ExactlyOnce if !self.idempotence => {
                return invalid("idempotence", "ExactlyOnce needs idempotence");
            }
            DeliveryGuarantee::AtMostOnce | DeliveryGuarantee::AtLeastOnce
                if self.transactional_id.is_some() =>
            {
                return invalid(
                    "transactional_id",
                    "a transactional id is only used with ExactlyOnce",
                );
            }
            _ => {}
        }
        if self
            .transactional_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return invalid("transactional_id", "must not be empty");
        }
        if let Err(clash) = check_properties(&self.kafka) {
            return Err(InvalidSinkConfig {
                field: "kafka.properties",
                reason: clash.to_string(),
            });
        }
        if let Some(property) = self
            .kafka
            .properties
            .0
            .keys()
            .find(|p| SINK_PROPERTIES.contains(&p.trim()))
        {
            return Err(InvalidSinkConfig {
                field: "kafka.properties",
                reason: format!("`{property}` is set by the sink's typed settings; set it there"),
            });
        }
        Ok(())
    }

    /// The librdkafka configuration this sink runs with.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaError> {
        let mut config = client_config(&self.kafka, ClientRole::Producer, &self.client_id)?;
        let millis = |d: Duration| d.as_millis().to_string();
        config
            .set("acks", self.acks.as_librdkafka())
            .set("enable.idempotence", self.idempotence.to_string())
            .set("compression.type", self.compression.as_librdkafka())
            .set("linger.ms", millis(self.linger))
            .set("batch.size", self.batch_size.to_string())
            .set("batch.num.messages", self.batch_messages.to_string())
            .set(
                "max.in.flight.requests.per.connection",
                self.max_in_flight.to_string(),
            )
            .set("message.timeout.ms", millis(self.message_timeout))
            .set(
                "queue.buffering.max.kbytes",
                self.buffer_memory_kb.to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                self.buffer_messages.to_string(),
            );
        if let PartitionStrategy::KeyHash = self.partition_strategy {
            // librdkafka's own murmur2 places keys exactly where the Java client does (the
            // Rust murmur2 in partition.rs is the test oracle) without a callback per
            // message; unkeyed messages stay sticky per batch.
            config.set("partitioner", "murmur2_random");
        } else {
            // The strategy's callback runs for unkeyed messages too.
            config.set("sticky.partitioning.linger.ms", "0");
        }
        if self.guarantee == DeliveryGuarantee::AtMostOnce {
            set_default(&mut config, "message.send.max.retries", "0");
        }
        if let Some(id) = &self.transactional_id {
            config.set("transactional.id", id);
        }
        if let Some(interval) = self.statistics_interval {
            config.set("statistics.interval.ms", millis(interval));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SinkConfig {
        SinkConfig::for_brokers("localhost:9092", "t")
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let config = base();
        config.validate().unwrap();
        assert!(config.idempotence && config.acks == Acks::All);
        assert_eq!(config.guarantee, DeliveryGuarantee::AtLeastOnce);
        let librdkafka = config.client_config().unwrap();
        assert_eq!(librdkafka.get("enable.idempotence"), Some("true"));
        assert_eq!(librdkafka.get("acks"), Some("all"));
        assert_eq!(librdkafka.get("linger.ms"), Some("5"));
        assert_eq!(
            librdkafka.get("queue.buffering.max.kbytes"),
            Some("1048576")
        );
    }

    #[test]
    fn guarantees_map_to_producer_settings() {
        let at_most = base().with_guarantee(DeliveryGuarantee::AtMostOnce);
        at_most.validate().unwrap();
        let librdkafka = at_most.client_config().unwrap();
        assert_eq!(librdkafka.get("acks"), Some("0"));
        assert_eq!(librdkafka.get("enable.idempotence"), Some("false"));
        assert_eq!(librdkafka.get("message.send.max.retries"), Some("0"));

        let mut exactly = base().with_guarantee(DeliveryGuarantee::ExactlyOnce);
        exactly.transactional_id = Some("tx-1".into());
        exactly.validate().unwrap();
        assert_eq!(
            exactly.client_config().unwrap().get("transactional.id"),
            Some("tx-1")
        );
    }

    #[test]
    fn contradictions_are_rejected_with_the_field() {
        let field = |config: SinkConfig| config.validate().unwrap_err().field;
        let mut c = base();
        c.acks = Acks::Leader;
        assert_eq!(field(c), "acks", "idempotence with acks=1");
        assert_eq!(
            field(base().with_guarantee(DeliveryGuarantee::ExactlyOnce)),
            "transactional_id"
        );
        let mut c = base();
        c.transactional_id = Some("tx".into());
        assert_eq!(
            field(c),
            "transactional_id",
            "transactional id without ExactlyOnce"
        );
        let mut c = base();
        c.guarantee = DeliveryGuarantee::AtMostOnce;
        assert_eq!(field(c), "guarantee", "AtMostOnce with acks=all");
        let mut c = base();
        c.max_in_flight = 6;
        assert_eq!(field(c), "max_in_flight");
        let mut c = base();
        c.kafka.properties.0.insert("linger.ms".into(), "50".into());
        assert_eq!(field(c), "kafka.properties");
        let mut c = base();
        c.topic = " ".into();
        assert_eq!(field(c), "topic");
    }
}
