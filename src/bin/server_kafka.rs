//! server_kafka: consumes seckill requests and runs the atomic Redis purchase for them, a
//! batch per script call.

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs, RequestsArgs};
use seckill_kafka::config::OffsetReset;
use seckill_kafka::seckill::server::run_server;
use seckill_kafka::secret::SecretUrl;
use std::process::ExitCode;

/// Flash-sale request processor: Kafka consumer group -> one Lua call per batch of requests
/// in Redis.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    requests: RequestsArgs,
    /// Consumer group id (server_kafka.group_id)
    #[arg(long)]
    group_id: Option<String>,
    /// Stock set in Redis at start (server_kafka.initial_stock)
    #[arg(long)]
    initial_stock: Option<u64>,
    /// Consumer tasks (server_kafka.consumers)
    #[arg(long)]
    consumers: Option<usize>,
    /// Purchase script calls in flight per consumer (server_kafka.concurrency)
    #[arg(long)]
    concurrency: Option<usize>,
    /// Requests per purchase script call at most (server_kafka.batch_size)
    #[arg(long)]
    batch_size: Option<usize>,
    /// Longest wait for a batch to fill, ms; 0 = send when nothing more waits
    /// (server_kafka.batch_wait_ms)
    #[arg(long)]
    batch_wait_ms: Option<u64>,
    /// Static group membership: consumer n joins as <ID>-<n> (server_kafka.instance_id)
    #[arg(long, value_name = "ID")]
    instance_id: Option<String>,
    /// Requests older than this are answered TIMEOUT; 0 disables (server_kafka.timeout_ms)
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Where a new consumer group starts (server_kafka.offset_reset)
    #[arg(long, value_enum)]
    offset_reset: Option<OffsetReset>,
    /// Keep the stock and counters already in Redis (server_kafka.keep_state)
    #[arg(long)]
    keep_state: bool,
    /// Seconds between status lines (server_kafka.status_interval_secs)
    #[arg(long)]
    status_interval_secs: Option<u64>,
    /// Dead-letter topic (server_kafka.dlq_topic; default <topic>.dlq)
    #[arg(long)]
    dlq_topic: Option<String>,
    /// Do not publish results (server_kafka.publish_results = false), for pure load tests
    #[arg(long)]
    no_results: bool,
    /// Redis URL (redis.url). Prefer REDIS_URL: other local users can read flags with ps
    #[arg(long, value_name = "URL")]
    redis_url: Option<SecretUrl>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut flags = args.requests.overrides();
    flags
        .set("server_kafka.group_id", "group-id", args.group_id)
        .set(
            "server_kafka.initial_stock",
            "initial-stock",
            args.initial_stock,
        )
        .set("server_kafka.consumers", "consumers", args.consumers)
        .set("server_kafka.concurrency", "concurrency", args.concurrency)
        .set("server_kafka.batch_size", "batch-size", args.batch_size)
        .set(
            "server_kafka.batch_wait_ms",
            "batch-wait-ms",
            args.batch_wait_ms,
        )
        .set("server_kafka.instance_id", "instance-id", args.instance_id)
        .set("server_kafka.timeout_ms", "timeout-ms", args.timeout_ms)
        .set(
            "server_kafka.offset_reset",
            "offset-reset",
            args.offset_reset,
        )
        .switch("server_kafka.keep_state", "keep-state", args.keep_state)
        .set(
            "server_kafka.status_interval_secs",
            "status-interval-secs",
            args.status_interval_secs,
        )
        .set("server_kafka.dlq_topic", "dlq-topic", args.dlq_topic)
        .set("redis.url", "redis-url", args.redis_url)
        .set(
            "server_kafka.publish_results",
            "no-results",
            args.no_results.then_some(false),
        );
    cli::run(
        "server_kafka",
        &args.common,
        flags,
        |config, shutdown| async move {
            let summary = run_server(&config, shutdown).await?;
            println!("{summary}");
            anyhow::Ok(())
        },
    )
    .await
}
