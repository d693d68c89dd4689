//! client_kafka: generates flash-sale requests and produces them to Kafka.

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs, RequestsArgs};
use seckill_kafka::seckill::client::run_client;
use std::process::ExitCode;

/// Flash-sale load generator: N users' requests, shuffled, JSON keyed by user id.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    requests: RequestsArgs,
    /// Distinct users (client_kafka.users)
    #[arg(long)]
    users: Option<u64>,
    /// Requests per user (client_kafka.requests_per_user)
    #[arg(long)]
    requests_per_user: Option<u32>,
    /// Requests per second, 0 = unlimited (client_kafka.rate)
    #[arg(long)]
    rate: Option<u64>,
    /// Milliseconds to wait before sending (client_kafka.delay_ms)
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Shuffle seed (client_kafka.seed)
    #[arg(long)]
    seed: Option<u64>,
    /// Then read every request's result and report outcomes and latency; exit 1 if some got
    /// none (client_kafka.await_results)
    #[arg(long)]
    await_results: bool,
    /// How long to wait for the results after the last send, ms
    /// (client_kafka.results_timeout_ms)
    #[arg(long)]
    results_timeout_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut flags = args.requests.overrides();
    flags
        .set("client_kafka.users", "users", args.users)
        .set(
            "client_kafka.requests_per_user",
            "requests-per-user",
            args.requests_per_user,
        )
        .set("client_kafka.rate", "rate", args.rate)
        .set("client_kafka.delay_ms", "delay-ms", args.delay_ms)
        .set("client_kafka.seed", "seed", args.seed)
        .switch(
            "client_kafka.await_results",
            "await-results",
            args.await_results,
        )
        .set(
            "client_kafka.results_timeout_ms",
            "results-timeout-ms",
            args.results_timeout_ms,
        );
    cli::run(
        "client_kafka",
        &args.common,
        flags,
        |config, shutdown| async move {
            let summary = run_client(&config, shutdown).await?;
            println!("{summary}");
            // Exit non-zero when a request did not reach the broker, or got no answer.
            anyhow::ensure!(summary.failed == 0, "{} requests failed", summary.failed);
            if let Some(results) = &summary.results {
                anyhow::ensure!(
                    results.unanswered() == 0,
                    "{} requests got no result within {:.0} s",
                    results.unanswered(),
                    results.timeout.as_secs_f64()
                );
            }
            anyhow::Ok(())
        },
    )
    .await
}
