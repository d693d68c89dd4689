//! The local test broker: librdkafka's in-memory mock cluster, with the suite's topics
//! created up front and its bootstrap address written to a file for scripts and tests.
//!
//! It speaks the real Kafka protocol, so every client of the suite talks to it as to Apache
//! Kafka, but it is a test tool: no persistence, no SASL, no CreateTopics API, and each
//! partition keeps only roughly its last 5 MB or 100,000 message sets.
//!
//! [`create_suite_topics`] creates the same topics on a real broker (Apache Kafka in CI).

use rdkafka::producer::Producer as _;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The suite's topics and their partition counts.
pub const SUITE_TOPICS: &[(&str, i32)] = &[
    ("seckill-requests", 8),
    ("seckill-requests.dlq", 1),
    ("seckill-results", 8),
    ("seckill-payments", 8),
    ("seckill-payments.dlq", 1),
    ("seckill-order-events", 8),
    ("integer-list-input-avro", 3),
    ("integer-list-input-avro.dlq", 1),
    ("integer-sum-output-avro", 3),
    ("integer-list-input-benchmark", 12),
    ("integer-sum-output-benchmark", 12),
    // The bench's baselines write here: as many partitions as stream_sum's output.
    ("integer-sum-output-benchmark.baseline", 12),
    ("user-events", 3),
];

#[derive(Debug, Clone)]
pub struct DevBrokerOptions {
    pub brokers: i32,
    /// Where the bootstrap address is written once the cluster is up.
    pub bootstrap_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevBrokerError {
    #[error("cannot start the mock cluster")]
    Start(#[source] rdkafka::error::KafkaError),
    #[error("cannot create topic {topic}")]
    CreateTopic {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot write the bootstrap file {path}")]
    WriteBootstrap {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the suite's topics (as the dev broker has them) on a real broker through the
/// Admin API; those that exist are left alone. Returns the names created.
pub async fn create_suite_topics(brokers: &str) -> Result<Vec<String>, crate::kafka::KafkaError> {
    let kafka = crate::config::KafkaConfig {
        brokers: brokers.to_string(),
        ..crate::config::KafkaConfig::default()
    };
    crate::kafka::admin::ensure_topics(&kafka, "dev_broker-admin", SUITE_TOPICS).await
}

/// Runs the mock cluster until `shutdown` fires, then removes the bootstrap file.
pub async fn run(
    options: DevBrokerOptions,
    shutdown: CancellationToken,
) -> Result<(), DevBrokerError> {
    // The mock through a client of our own, to reach its group settings below.
    let owner: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("test.mock.num.brokers", options.brokers.to_string())
        .create()
        .map_err(DevBrokerError::Start)?;
    let cluster = owner.client().mock_cluster().ok_or(DevBrokerError::Start(
        rdkafka::error::KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail),
    ))?;
    // KIP-848 groups (group.protocol=consumer): the session a member's partitions outlive it
    // by is the broker's (group.consumer.session.timeout.ms): 6 s here, as server_kafka's
    // classic session, instead of the mock's 30 s (Apache Kafka: 45 s by default).
    // SAFETY: `owner` created the mock and outlives these calls; the pointer is the mock
    // cluster of that live handle (null checked).
    unsafe {
        let mock = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        if !mock.is_null() {
            rdkafka::bindings::rd_kafka_mock_set_group_consumer_session_timeout_ms(mock, 6_000);
            rdkafka::bindings::rd_kafka_mock_set_group_consumer_heartbeat_interval_ms(mock, 1_000);
        }
    }
    let replication = options.brokers.min(3);
    for (topic, partitions) in SUITE_TOPICS {
        cluster
            .create_topic(topic, *partitions, replication)
            .map_err(|source| DevBrokerError::CreateTopic {
                topic: topic.to_string(),
                source,
            })?;
    }
    let bootstrap = cluster.bootstrap_servers();
    // Write then rename, so a reader never sees a half-written address.
    let partial = options.bootstrap_file.with_extension("partial");
    std::fs::write(&partial, format!("{bootstrap}\n"))
        .and_then(|()| std::fs::rename(&partial, &options.bootstrap_file))
        .map_err(|source| DevBrokerError::WriteBootstrap {
            path: options.bootstrap_file.clone(),
            source,
        })?;
    tracing::info!(
        %bootstrap,
        brokers = options.brokers,
        topics = SUITE_TOPICS.len(),
        file = %options.bootstrap_file.display(),
        "dev broker up"
    );
    shutdown.cancelled().await;
    let _ = std::fs::remove_file(&options.bootstrap_file);
    tracing::info!("dev broker stopped");
    drop(cluster);
    drop(owner);
    Ok(())
}
