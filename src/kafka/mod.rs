//! Kafka plumbing shared by every program: turning the typed configuration into an rdkafka
//! `ClientConfig` ([`client_config`]) and the error taxonomy that tells callers whether to
//! retry, back off, abort a transaction or give up ([`error`]), and the generic producer
//! `KafkaSink<T>` ([`sink`]).

pub mod client_config;
pub mod error;
pub mod sink;

pub use client_config::{client_config, ClientRole, PropertyClash};
pub use error::{ErrorClass, KafkaError};
