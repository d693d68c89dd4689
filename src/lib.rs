//! seckill-kafka: a flash-sale ("seckill") pipeline and Kafka throughput tools on rdkafka,
//! Redis and PostgreSQL.
//!
//! # Layout
//!
//! | module          | what lives there                                                     |
//! |-----------------|----------------------------------------------------------------------|
//! | [`config`]      | layered configuration: defaults < `config.yaml` < env < CLI flags    |
//! | [`secret`]      | `Secret` / `SecretUrl`: credentials kept out of logs and `Debug`      |
//! | [`cli`]         | flags shared by every program, config loading, one-line errors        |
//! | [`telemetry`]   | `tracing` setup (text or JSON, `RUST_LOG`)                           |
//! | [`shutdown`]    | SIGINT/SIGTERM to a shutdown handle every task watches                |
//! | [`common`]      | `SeckillRequest`, `SeckillRecord`, `SeckillResult`, `SeckillOutcome`  |
//! | [`redis_state`] | the flash-sale state in Redis, the atomic Lua purchase script, and   |
//! |                 | each log_worker's side of the reliable log queue (`LogQueue`)        |
//! | [`report`]      | an error with its causes on one line, each cause once               |
//! | [`postgres`]    | PostgreSQL pool and the embedded `migrations/`                       |
//! | [`kafka`]       | rdkafka client config, the Kafka error taxonomy, `KafkaSink<T>`      |
//! | [`dev_broker`]  | the local test broker: librdkafka's mock cluster with the suite topics |
//! | [`seckill`]     | the flash-sale programs: client, server, log worker, verification    |
//! | [`backoff`]     | exponential backoff with jitter for unreachable services             |
//! | [`avro`]        | allocation-free binary Avro for `IntegerList` / `SumResult`          |
//! | [`proto`]       | protobuf types generated from `schemas/proto/` (`UserEvent`)          |
//! | [`schemas`]     | validation of `schemas/` and the ConfigMap that ships it              |
//! | [`zstd_producer`] | realistic protobuf `UserEvent`s with zstd; the read-back check      |
//! | [`stream_sum`]  | the streaming-sum processor (at least once / exactly once) and bench  |
//!
//! The programs in `src/bin/` are thin: they parse flags, set up logging, load the
//! configuration and call one function of this library.

pub mod avro;
pub mod backoff;
pub mod cli;
pub mod common;
pub mod config;
pub mod dev_broker;
pub mod kafka;
pub mod postgres;
pub mod proto;
pub mod redis_state;
pub mod report;
pub mod schemas;
pub mod seckill;
pub mod secret;
pub mod shutdown;
pub mod stream_sum;
pub mod telemetry;
pub mod zstd_producer;
