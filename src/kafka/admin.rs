//! Creating the topics a program or a test needs through the Admin API, with the partition
//! counts it needs, on any broker: topics that exist are left alone, and a broker that
//! cannot create topics (the dev broker has no CreateTopics) is left to create them when
//! they are first used, with a warning.

use crate::kafka::broker::BrokerKind;
use crate::kafka::config::KafkaConfig;
use crate::kafka::{client_config, ClientRole, KafkaError};
use crate::report::Report;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The partition count of `topic`, `None` when it does not exist.
pub fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<Option<usize>, KafkaError> {
    count_partitions(&metadata_client(kafka)?, topic)
}

fn metadata_client(kafka: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    Ok(client_config(kafka, ClientRole::Admin, "metadata")?.create()?)
}

fn count_partitions(client: &BaseConsumer, topic: &str) -> Result<Option<usize>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    Ok(metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// Which of `topics` are missing, and what kind of broker it is (asked only when some are),
/// through one metadata client.
fn find_missing(
    kafka: &KafkaConfig,
    topics: &[String],
) -> Result<(Vec<usize>, BrokerKind), KafkaError> {
    let client = metadata_client(kafka)?;
    let mut missing = Vec::new();
    for (index, topic) in topics.iter().enumerate() {
        if count_partitions(&client, topic)?.is_none() {
            missing.push(index);
        }
    }
    let broker = if missing.is_empty() {
        BrokerKind::Kafka
    } else {
        BrokerKind::of_client(client.client(), METADATA_TIMEOUT)
    };
    Ok((missing, broker))
}

/// Creates those of `topics` (name, partitions) that do not exist yet, with the broker's
/// default replication factor (on the dev broker: with its default partition count). Returns
/// the names it created.
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    program: &str,
    topics: &[(&str, i32)],
) -> Result<Vec<String>, KafkaError> {
    let (missing, broker) = {
        let kafka = kafka.clone();
        let names: Vec<String> = topics.iter().map(|(topic, _)| topic.to_string()).collect();
        tokio::task::spawn_blocking(move || find_missing(&kafka, &names))
            .await
            .map_err(|_| KafkaError::from(rdkafka::error::KafkaError::Canceled))??
    };
    let missing: Vec<(&str, i32)> = missing.into_iter().map(|index| topics[index]).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if broker.is_mock() {
        // The dev broker has no CreateTopics (a request would wait for its timeout); it
        // creates a topic, with its default partition count, when a producer asks for the
        // topic's metadata. A consumer subscribed to a topic that does not exist yet only
        // looks for it again at the next metadata refresh (5 minutes by default), so the
        // topic is made now.
        let kafka = kafka.clone();
        let names: Vec<String> = missing.iter().map(|(topic, _)| topic.to_string()).collect();
        let program = program.to_string();
        return tokio::task::spawn_blocking(move || {
            let producer: rdkafka::producer::BaseProducer =
                client_config(&kafka, ClientRole::Producer, &program)?.create()?;
            for topic in &names {
                rdkafka::producer::Producer::client(&producer)
                    .fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
            }
            tracing::debug!(topics = names.len(), "topics made on the dev broker");
            Ok(names)
        })
        .await
        .map_err(|_| KafkaError::from(rdkafka::error::KafkaError::Canceled))?;
    }
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka, ClientRole::Admin, program)?.create()?;
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        // -1: the broker's default replication factor.
        .map(|(topic, partitions)| NewTopic::new(topic, *partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        // A broker without CreateTopics never answers: do not wait a minute for it.
        .request_timeout(Some(Duration::from_secs(5)));
    let mut created = Vec::new();
    match admin.create_topics(&new_topics, &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(topic) => {
                        tracing::info!(%topic, "topic created");
                        created.push(topic);
                    }
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        tracing::warn!(%topic, error = %code, "cannot create topic; relying on auto-creation")
                    }
                }
            }
        }
        Err(error) => {
            tracing::warn!(error = %Report(&error), "cannot create topics (a broker without CreateTopics, such as the dev broker?); relying on auto-creation")
        }
    }
    Ok(created)
}
