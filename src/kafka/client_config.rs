//! The one place where [`KafkaConfig`] becomes an rdkafka [`ClientConfig`].
//!
//! The typed keys of `kafka:` and the settings the suite relies on for its guarantees (such
//! as storing consumer offsets by hand) are "managed" properties; `kafka.properties` may set
//! anything else, and setting a managed property there is an error rather than a silent
//! override, so there is exactly one place for each setting.

use crate::kafka::config::KafkaConfig;
use crate::kafka::KafkaError;
use rdkafka::ClientConfig;

/// What kind of client the configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole<'a> {
    Producer,
    /// A group member that stores offsets itself, only after a message is fully processed
    /// (`enable.auto.offset.store=false`); the stored offsets are auto-committed.
    Consumer {
        group_id: &'a str,
    },
    Admin,
}

/// Properties set from a typed key, with the key to use instead.
const TYPED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("client.id", "kafka.client_id"),
    ("security.protocol", "kafka.security_protocol"),
    ("sasl.mechanism", "kafka.sasl_mechanism"),
    ("sasl.mechanisms", "kafka.sasl_mechanism"),
    ("sasl.username", "kafka.sasl_username"),
    ("sasl.password", "kafka.sasl_password"),
    ("ssl.ca.location", "kafka.ssl_ca_location"),
    ("ssl.certificate.location", "kafka.ssl_certificate_location"),
    ("ssl.key.location", "kafka.ssl_key_location"),
    ("ssl.key.password", "kafka.ssl_key_password"),
    ("statistics.interval.ms", "kafka.statistics_interval_ms"),
];

/// Properties the suite sets itself because its guarantees depend on them.
const SUITE_PROPERTIES: &[(&str, &str)] = &[
    ("group.id", "the program's group id option"),
    ("group.instance.id", "server_kafka.instance_id"),
    (
        "enable.auto.offset.store",
        "the suite (offsets are stored after processing)",
    ),
];

/// A raw property that would override a typed or suite-managed setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{property}` is set by {owner}; set it there instead of in kafka.properties")]
pub struct PropertyClash {
    pub property: String,
    pub owner: &'static str,
}

/// Rejects raw properties that clash with a typed or managed setting.
pub fn check_properties(kafka: &KafkaConfig) -> Result<(), PropertyClash> {
    for property in kafka.properties.0.keys() {
        let normalized = property.trim().to_ascii_lowercase();
        let owner = TYPED_PROPERTIES
            .iter()
            .chain(SUITE_PROPERTIES)
            .find(|(name, _)| *name == normalized)
            .map(|(_, owner)| *owner);
        if let Some(owner) = owner {
            return Err(PropertyClash {
                property: property.clone(),
                owner,
            });
        }
    }
    Ok(())
}

/// Builds the rdkafka configuration for `role` from the typed settings and the raw
/// properties. `program` is appended to the client id so brokers can tell programs apart.
///
/// The result holds credentials in clear text: never log it with `{:?}`.
pub fn client_config(
    kafka: &KafkaConfig,
    role: ClientRole<'_>,
    program: &str,
) -> Result<ClientConfig, KafkaError> {
    check_properties(kafka)?;
    let mut config = ClientConfig::new();
    for (property, value) in &kafka.properties.0 {
        config.set(property.trim(), value);
    }
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("{}-{program}", kafka.client_id))
        .set("security.protocol", kafka.security_protocol.as_librdkafka());
    let optional = [
        ("sasl.mechanism", kafka.sasl_mechanism.as_deref()),
        ("sasl.username", kafka.sasl_username.as_deref()),
        (
            "sasl.password",
            kafka.sasl_password.as_ref().map(|s| s.expose()),
        ),
        ("ssl.ca.location", kafka.ssl_ca_location.as_deref()),
        (
            "ssl.certificate.location",
            kafka.ssl_certificate_location.as_deref(),
        ),
        ("ssl.key.location", kafka.ssl_key_location.as_deref()),
        (
            "ssl.key.password",
            kafka.ssl_key_password.as_ref().map(|s| s.expose()),
        ),
    ];
    for (property, value) in optional {
        if let Some(value) = value {
            config.set(property, value);
        }
    }
    if kafka.statistics_interval_ms > 0 {
        config.set(
            "statistics.interval.ms",
            kafka.statistics_interval_ms.to_string(),
        );
    }
    if let ClientRole::Consumer { group_id } = role {
        config
            .set("group.id", group_id)
            .set("enable.auto.offset.store", "false");
    }
    Ok(config)
}

/// Sets `property` unless the user's raw properties already did: the suite's tuning is a
/// default, not an override.
pub fn set_default(config: &mut ClientConfig, property: &str, value: &str) {
    if config.get(property).is_none() {
        config.set(property, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::config::{KafkaProperties, SecurityProtocol};
    use crate::secret::Secret;

    fn kafka_with(properties: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            properties: KafkaProperties(
                properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn typed_keys_and_raw_properties_are_applied() {
        let mut kafka = kafka_with(&[("linger.ms", "7"), ("compression.type", "lz4")]);
        kafka.brokers = "b1:9092,b2:9092".into();
        kafka.security_protocol = SecurityProtocol::SaslSsl;
        kafka.sasl_mechanism = Some("SCRAM-SHA-512".into());
        kafka.sasl_username = Some("app".into());
        kafka.sasl_password = Some(Secret::new("pw"));
        let config = client_config(&kafka, ClientRole::Producer, "client_kafka").unwrap();
        assert_eq!(config.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(config.get("client.id"), Some("seckill-kafka-client_kafka"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.password"), Some("pw"));
        assert_eq!(config.get("linger.ms"), Some("7"));
        assert_eq!(config.get("compression.type"), Some("lz4"));
        assert_eq!(config.get("group.id"), None);
        // librdkafka itself accepts the result.
        config
            .create::<rdkafka::producer::BaseProducer>()
            .map(drop)
            .unwrap_or_else(|e| panic!("librdkafka rejected the config: {e}"));
    }

    #[test]
    fn consumer_role_stores_offsets_by_hand() {
        let config = client_config(
            &KafkaConfig::default(),
            ClientRole::Consumer { group_id: "g1" },
            "t",
        )
        .unwrap();
        assert_eq!(config.get("group.id"), Some("g1"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn clashing_properties_are_rejected() {
        for property in [
            "bootstrap.servers",
            "sasl.password",
            "group.id",
            "Enable.Auto.Offset.Store",
        ] {
            let kafka = kafka_with(&[(property, "x")]);
            let error = client_config(&kafka, ClientRole::Admin, "t").unwrap_err();
            assert!(
                matches!(&error, KafkaError::Config(clash) if clash.property == property),
                "{error}"
            );
        }
    }
}
