//! The connection settings every Kafka client of the suite shares (`kafka` section of the
//! configuration): brokers, client id, security, statistics and raw librdkafka properties.
//! They live here, beside the code that turns them into an rdkafka `ClientConfig`, so the
//! Kafka plumbing needs nothing from the application's configuration module.

use crate::secret::{is_sensitive_key, Secret, REDACTED};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Connection settings shared by every Kafka client of the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// `client.id` prefix; each program appends its own name.
    pub client_id: String,
    pub security_protocol: SecurityProtocol,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// Only from the environment (`SECKILL_KAFKA_SASL_PASSWORD`) or `sasl_password_file`:
    /// a password written in a config file is rejected.
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password (e.g. a mounted Kubernetes secret).
    pub sasl_password_file: Option<String>,
    pub ssl_ca_location: Option<String>,
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
    /// Like `sasl_password`: environment or `ssl_key_password_file` only.
    pub ssl_key_password: Option<Secret>,
    pub ssl_key_password_file: Option<String>,
    /// `statistics.interval.ms`: how often librdkafka reports statistics, published as
    /// metrics. 0 = off, unless `telemetry.metrics_addr` is set (then 5000).
    pub statistics_interval_ms: u64,
    /// Raw librdkafka properties passed through as they are. A property that a typed key
    /// above (or the suite itself) sets is rejected, so there is one place for each setting.
    pub properties: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            client_id: "seckill-kafka".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            ssl_key_password_file: None,
            statistics_interval_ms: 0,
            properties: KafkaProperties::default(),
        }
    }
}

/// Raw librdkafka properties; `Debug` hides the values of credential-like keys.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if is_sensitive_key(key) {
                    REDACTED
                } else {
                    value.as_str()
                };
                (key, shown)
            }))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka expects for `security.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}
