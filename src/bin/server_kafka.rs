//! server_kafka: consumes seckill requests and runs the atomic Redis purchase for them, one
//! script call per batch of one activity's requests.

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs, RequestsArgs};
use seckill_kafka::config::{GroupProtocol, OffsetReset};
use seckill_kafka::seckill::server::{run_server, ServerSettings};
use seckill_kafka::secret::SecretUrl;
use std::process::ExitCode;

/// Flash-sale request processor: Kafka consumer group -> one Lua call per batch of an
/// activity's requests in Redis (one node or a cluster), for every activity or one.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    requests: RequestsArgs,
    /// Consumer group id
    #[arg(long = "group-id", id = "server_kafka.group_id")]
    group_id: Option<String>,
    /// Group protocol: classic, or consumer (KIP-848, Kafka 4)
    #[arg(
        long = "group-protocol",
        id = "server_kafka.group_protocol",
        value_enum
    )]
    group_protocol: Option<GroupProtocol>,
    /// With --activity-id: reset that sale to a fresh, open one of this stock
    #[arg(long = "initial-stock", id = "server_kafka.initial_stock")]
    initial_stock: Option<u64>,
    /// Consumer tasks
    #[arg(long = "consumers", id = "server_kafka.consumers")]
    consumers: Option<usize>,
    /// Purchase script calls in flight per consumer
    #[arg(long = "concurrency", id = "server_kafka.concurrency")]
    concurrency: Option<usize>,
    /// Requests per purchase script call at most
    #[arg(long = "batch-size", id = "server_kafka.batch_size")]
    batch_size: Option<usize>,
    /// Longest wait for a batch to fill, ms; 0 = send when nothing more waits
    #[arg(long = "batch-wait-ms", id = "server_kafka.batch_wait_ms")]
    batch_wait_ms: Option<u64>,
    /// Static group membership: consumer n joins as <ID>-<n>
    #[arg(
        long = "instance-id",
        id = "server_kafka.instance_id",
        value_name = "ID"
    )]
    instance_id: Option<String>,
    /// Requests older than this are answered TIMEOUT; 0 disables
    #[arg(long = "timeout-ms", id = "server_kafka.timeout_ms")]
    timeout_ms: Option<u64>,
    /// Where a new consumer group starts
    #[arg(long = "offset-reset", id = "server_kafka.offset_reset", value_enum)]
    offset_reset: Option<OffsetReset>,
    /// With --initial-stock: keep the sale's state already in Redis
    #[arg(long = "keep-state", id = "server_kafka.keep_state")]
    keep_state: bool,
    /// Seconds between status lines
    #[arg(
        long = "status-interval-secs",
        id = "server_kafka.status_interval_secs"
    )]
    status_interval_secs: Option<u64>,
    /// Dead-letter topic (default <topic>.dlq)
    #[arg(long = "dlq-topic", id = "server_kafka.dlq_topic")]
    dlq_topic: Option<String>,
    /// Do not publish results (false), for pure load tests
    #[arg(
        long = "no-results",
        id = "server_kafka.publish_results",
        action = clap::ArgAction::SetFalse
    )]
    publish_results: bool,
    /// Redis URL. Prefer REDIS_URL: other local users can read flags with ps
    #[arg(long = "redis-url", id = "redis.url", value_name = "URL")]
    redis_url: Option<SecretUrl>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, flags) = cli::parse::<Args>();
    cli::run(
        "server_kafka",
        &args.common,
        flags,
        |config, shutdown| async move {
            let summary = run_server(ServerSettings::from(&config), shutdown).await?;
            println!("{summary}");
            anyhow::Ok(())
        },
    )
    .await
}
