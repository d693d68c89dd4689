//! Kafka plumbing shared by every program: creating topics ([`admin`]), what kind of broker
//! it is ([`broker`]), turning the typed configuration into an rdkafka
//! `ClientConfig` ([`client_config`]) and the error taxonomy that tells callers whether to
//! retry, back off, abort a transaction or give up ([`error`]), and the generic producer
//! `KafkaSink<T>` ([`sink`]), and reading fixed offset ranges back ([`topic_reader`]).

pub mod admin;
pub mod broker;
pub mod client_config;
pub mod error;
pub mod sink;
pub mod topic_reader;

pub use client_config::{client_config, ClientRole, PropertyClash};
pub use error::{ErrorClass, KafkaError};
