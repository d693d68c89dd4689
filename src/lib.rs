//! seckill-kafka: a flash-sale ("seckill") pipeline and Kafka throughput tools on rdkafka,
//! Redis and PostgreSQL.
//!
//! # Layout
//!
//! | module          | what lives there                                                     |
//! |-----------------|----------------------------------------------------------------------|
//! | [`config`]      | layered configuration: defaults < `config.yaml` < env < CLI flags    |
//! | [`secret`]      | `Secret` / `SecretUrl`: credentials kept out of logs and `Debug`      |
//! | [`cli`]         | flags shared by every program, config loading, shutdown on signals   |
//! |                 | (a `CancellationToken` every task watches), one-line errors, exit status |
//! | [`telemetry`]   | `tracing` setup (text or JSON, `RUST_LOG`)                           |
//! | [`common`]      | `SeckillRequest`, `SeckillRecord`, `SeckillResult`, `SeckillOutcome`  |
//! | [`redis_state`] | the flash-sale state in Redis, the atomic Lua purchase script, and   |
//! |                 | each log_worker's side of the reliable log queue (`LogQueue`)        |
//! | [`report`]      | an error with its causes on one line, each cause once               |
//! | [`postgres`]    | PostgreSQL pool and the embedded `migrations/`                       |
//! | [`kafka`]       | Kafka settings and client config, error taxonomy, `KafkaSink<T>`;    |
//! |                 | depends on no application module                                     |
//! | [`gateway`]     | seckill_gateway: buyers over HTTP (axum), tokens, limits, outcomes   |
//! | [`dev_broker`]  | the local test broker: librdkafka's mock cluster with the suite topics |
//! | [`seckill`]     | the flash-sale programs: client, server, log worker, verification    |
//! | [`backoff`]     | exponential backoff with jitter for unreachable services             |
//! | [`pace`]        | `Pacer`: a sending loop at a fixed rate                              |
//! | [`avro`]        | allocation-free binary Avro for `IntegerList` / `SumResult`          |
//! | [`proto`]       | protobuf types generated from `schemas/proto/` (`UserEvent`)          |
//! | [`schemas`]     | validation of `schemas/` and the ConfigMap that ships it              |
//! | [`zstd_producer`] | realistic protobuf `UserEvent`s with zstd; the read-back check      |
//! | [`stream_sum`]  | the streaming-sum processor (at least once / exactly once)            |
//! | [`stream_sum_bench`] | `stream_sum bench`: the processor against plain librdkafka loops |
//!
//! The programs in `src/bin/` are thin: they parse flags and hand [`cli::run`] one function
//! of this library to run with the loaded configuration and a shutdown token.

pub mod avro;
pub mod backoff;
pub mod cli;
pub mod common;
pub mod config;
pub mod dev_broker;
pub mod gateway;
pub mod kafka;
pub mod pace;
pub mod postgres;
pub mod proto;
pub mod redis_state;
pub mod report;
pub mod schemas;
pub mod seckill;
pub mod secret;
pub mod stream_sum;
pub mod stream_sum_bench;
pub mod telemetry;
pub mod zstd_producer;
