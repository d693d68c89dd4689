//! What kind of broker a client talks to, found at run time.
//!
//! The suite is written for Apache Kafka. The dev broker (librdkafka's mock cluster) differs
//! in a few ways that matter (a fetch with no data waits its whole `fetch.wait.max.ms` even
//! when data arrives meanwhile; TxnOffsetCommit is acknowledged but not stored). Workarounds
//! for it are applied only when [`BrokerKind::detect`] finds it, by the cluster id the mock
//! reports (`mockCluster...`), and each one says so in the log.

use crate::kafka::config::KafkaConfig;
use crate::kafka::{client_config, ClientRole};
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::Duration;

/// How long a program's start waits for the cluster id.
const DETECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Prefix of the cluster id librdkafka's mock cluster reports (rdkafka_mock.c).
const MOCK_CLUSTER_ID_PREFIX: &str = "mockCluster";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Apache Kafka or a compatible broker (also assumed when the id cannot be read).
    Kafka,
    /// librdkafka's in-memory mock cluster: the dev broker.
    LibrdkafkaMock,
}

impl BrokerKind {
    /// Asks the cluster for its id through a short-lived client built from `config` (the
    /// caller's connection settings). Unreachable within `timeout`: [`BrokerKind::Kafka`].
    pub fn detect(config: &ClientConfig, timeout: Duration) -> Self {
        let client: Result<BaseConsumer, _> = config.create();
        client.map_or(Self::Kafka, |client| {
            Self::of_client(client.client(), timeout)
        })
    }

    /// Asks the cluster for its id through a client the caller already has.
    pub fn of_client<C: ClientContext>(client: &Client<C>, timeout: Duration) -> Self {
        Self::of_cluster_id(client.fetch_cluster_id(timeout).as_deref())
    }

    /// What a program's start asks once: [`detect`](Self::detect) with the program's
    /// connection settings, off the async runtime.
    pub async fn detect_for(kafka: &KafkaConfig, program: &str) -> Self {
        let Ok(client) = client_config(kafka, ClientRole::Admin, &format!("{program}-probe"))
        else {
            return Self::Kafka;
        };
        tokio::task::spawn_blocking(move || Self::detect(&client, DETECT_TIMEOUT))
            .await
            .unwrap_or(Self::Kafka)
    }

    pub fn of_cluster_id(cluster_id: Option<&str>) -> Self {
        match cluster_id {
            Some(id) if id.starts_with(MOCK_CLUSTER_ID_PREFIX) => Self::LibrdkafkaMock,
            _ => Self::Kafka,
        }
    }

    pub fn is_mock(self) -> bool {
        self == Self::LibrdkafkaMock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mock_is_known_by_its_cluster_id() {
        assert_eq!(
            BrokerKind::of_cluster_id(Some("mockCluster1a2b")),
            BrokerKind::LibrdkafkaMock
        );
        assert_eq!(
            BrokerKind::of_cluster_id(Some("MkU3OEVBNTcwNTJENDM2Qk")),
            BrokerKind::Kafka
        );
        assert_eq!(BrokerKind::of_cluster_id(None), BrokerKind::Kafka);
    }

    #[test]
    fn detects_a_mock_cluster() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        assert_eq!(
            BrokerKind::detect(&config, Duration::from_secs(5)),
            BrokerKind::LibrdkafkaMock
        );
        let mut nowhere = ClientConfig::new();
        nowhere.set("bootstrap.servers", "127.0.0.1:1");
        assert_eq!(
            BrokerKind::detect(&nowhere, Duration::from_millis(200)),
            BrokerKind::Kafka
        );
    }
}
