//! `KafkaSink<T>`: the suite's generic producer library, one file per concern:
//!
//! | file                | what lives there                                                   |
//! |---------------------|--------------------------------------------------------------------|
//! | `config.rs`         | `SinkConfig`, `DeliveryGuarantee`, `Acks`, `Compression`, checks     |
//! | `message.rs`        | `KafkaMessage<T>`: key, topic/partition overrides, headers, timestamp |
//! | `serializer.rs`     | `MessageSerializer<T>`; JSON, bincode, Avro and protobuf serializers |
//! | `partition.rs`      | `PartitionStrategy`, Java-compatible murmur2                         |
//! | `circuit_breaker.rs`| Closed / Open / HalfOpen breaker                                     |
//! | `metrics.rs`        | counters, latency histogram, `metrics` facade                        |
//! | `context.rs`        | `SinkContext`: delivery reports, statistics, the partitioner; the   |
//! |                     | state it shares with the sink; delivery groups                      |
//! | `events.rs`         | the producer's events served by the sink, reports a batch at a time  |
//! | `batch.rs`          | `enqueue_batch_in`: many messages in one librdkafka call             |
//! | `delivery_group.rs` | `try_enqueue_in` / `wait_group`: messages awaited together, once     |
//! | `topic_handle.rs`   | the default topic's handle: `rd_kafka_produce` and its batch call    |
//! | `polling.rs`        | `PolledProducer`: delivery reports served by the fast-path sender,   |
//! |                     | or by a thread while no sender does                                  |
//! | `sink.rs`           | `KafkaSink`: send, send_batch, the enqueue fast path, flush, close   |
//! | `connect.rs`        | `connect`: waiting for the topic's metadata and the producer id      |
//! | `transaction.rs`    | the transaction state machine, async and blocking entry points      |
//!
//! Retries reuse [`crate::backoff`]; errors are classified by [`crate::kafka::error`].

mod batch;
pub mod circuit_breaker;
pub mod config;
mod connect;
pub mod context;
mod delivery_group;
mod events;
pub mod message;
pub mod metrics;
pub mod partition;
mod polling;
pub mod serializer;
#[allow(clippy::module_inception)] // the sink itself, beside its parts
pub mod sink;
mod topic_handle;
mod transaction;

pub use circuit_breaker::{BreakerState, CircuitBreaker};
pub use config::{Acks, Compression, DeliveryGuarantee, InvalidSinkConfig, SinkConfig};
pub use context::{DeliveryGroup, DeliveryReport, GroupDelivery, SinkStatistics};
pub use message::KafkaMessage;
pub use metrics::{LastError, MetricsSnapshot};
pub use partition::{java_partition, murmur2, PartitionStrategy};
pub use serializer::{
    AvroSerializer, BincodeSerializer, BytesSerializer, JsonSerializer, MessageSerializer,
    ProtobufSerializer, SerializeError, CONTENT_TYPE_HEADER,
};
pub use sink::{CloseReport, KafkaSink, SinkError};
