//! Kafka plumbing shared by every program: creating topics ([`admin`]), what kind of broker
//! it is ([`broker`]), the connection settings ([`config`]), turning them into an rdkafka
//! `ClientConfig` ([`client_config`]) and the error taxonomy that tells callers whether to
//! retry, back off, abort a transaction or give up ([`error`]), and the generic producer
//! `KafkaSink<T>` ([`sink`]), librdkafka's statistics as metrics ([`statistics`]), taking a
//! consumer's records in batches ([`fetch_queue`]), and reading fixed offset ranges back
//! ([`topic_reader`]).
//!
//! Nothing here depends on an application module (configuration loading, telemetry, the
//! programs): only on the small utilities [`crate::backoff`], [`crate::report`] and
//! [`crate::secret`], so this could become a crate of its own.

pub mod admin;
pub mod broker;
pub mod client_config;
pub mod config;
pub mod error;
pub mod fetch_queue;
pub mod sink;
pub mod statistics;
pub mod topic_reader;

pub use client_config::{client_config, ClientRole, PropertyClash};
pub use error::{ErrorClass, KafkaError};
