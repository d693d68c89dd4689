//! client_kafka: the flash-sale load generator (JSON requests keyed by user id), over one
//! activity or several.

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs, RequestsArgs};
use seckill_kafka::seckill::client::{run_client, ClientSettings};
use std::process::ExitCode;

/// Sends `users x requests-per-user` flash-sale requests, shuffled, optionally rate-limited,
/// and with --await-results reads every answer.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    requests: RequestsArgs,
    /// Spread the requests over these sales (each user asks one or more of them)
    #[arg(
        long = "activity-ids",
        id = "client_kafka.activity_ids",
        value_name = "ID,ID,..."
    )]
    activity_ids: Option<String>,
    /// Distinct users
    #[arg(long = "users", id = "client_kafka.users")]
    users: Option<u64>,
    /// Requests each user sends
    #[arg(long = "requests-per-user", id = "client_kafka.requests_per_user")]
    requests_per_user: Option<u32>,
    /// Requests per second; 0 = as fast as possible
    #[arg(long = "rate", id = "client_kafka.rate")]
    rate: Option<u64>,
    /// Wait before sending, ms
    #[arg(long = "delay-ms", id = "client_kafka.delay_ms")]
    delay_ms: Option<u64>,
    /// Seed of the shuffle (and of the request ids)
    #[arg(long = "seed", id = "client_kafka.seed")]
    seed: Option<u64>,
    /// Read every request's answer from the results topic and report
    #[arg(long = "await-results", id = "client_kafka.await_results")]
    await_results: bool,
    /// How long to wait for the answers after the last send, ms
    #[arg(long = "results-timeout-ms", id = "client_kafka.results_timeout_ms")]
    results_timeout_ms: Option<u64>,
    /// With --await-results: pay for this share of the run's reservations (0 to 1)
    #[arg(
        long = "pay-ratio",
        id = "client_kafka.pay_ratio",
        value_name = "SHARE"
    )]
    pay_ratio: Option<f64>,
    /// Delay before each payment, ms: MIN..MAX (or one number)
    #[arg(
        long = "pay-delay-ms",
        id = "client_kafka.pay_delay_ms",
        value_name = "MIN..MAX"
    )]
    pay_delay_ms: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, flags) = cli::parse::<Args>();
    cli::run(
        "client_kafka",
        &args.common,
        flags,
        |config, shutdown| async move {
            let summary = run_client(&ClientSettings::from(&config), shutdown).await?;
            println!("{summary}");
            anyhow::ensure!(summary.failed == 0, "{} requests failed", summary.failed);
            if let Some(results) = &summary.results {
                anyhow::ensure!(
                    results.unanswered() == 0,
                    "{} requests got no result within {:.0} s",
                    results.unanswered(),
                    results.timeout.as_secs_f64()
                );
            }
            if let Some(orders) = &summary.orders {
                anyhow::ensure!(
                    orders.unsettled == 0 && orders.unanswered == 0,
                    "{} reservations unsettled and {} payments unanswered (is log_worker running?)",
                    orders.unsettled,
                    orders.unanswered
                );
            }
            anyhow::Ok(())
        },
    )
    .await
}
