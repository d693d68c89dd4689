//! log_worker: moves purchase records from the Redis log list into PostgreSQL.

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs, SaleArgs};
use seckill_kafka::seckill::log_worker::run_log_worker;
use seckill_kafka::seckill::verify::{user_report, verify};
use seckill_kafka::secret::SecretUrl;
use std::process::ExitCode;

/// Reliable Redis -> PostgreSQL mover for purchase records.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    sale: SaleArgs,
    /// Records per INSERT (log_worker.batch_size)
    #[arg(long)]
    batch_size: Option<usize>,
    /// Longest wait for a batch to fill, ms (log_worker.flush_interval_ms)
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// Insert loops in this process, each with its own processing list (log_worker.concurrency)
    #[arg(long)]
    concurrency: Option<usize>,
    /// Exit once the queue is empty (log_worker.drain)
    #[arg(long)]
    drain: bool,
    /// Redis URL (redis.url). Prefer REDIS_URL: other local users can read flags with ps
    #[arg(long, value_name = "URL")]
    redis_url: Option<SecretUrl>,
    /// PostgreSQL URL (postgres.url). Prefer DATABASE_URL, for the same reason
    #[arg(long, value_name = "URL")]
    database_url: Option<SecretUrl>,
    /// Check the activity's invariants (Redis vs PostgreSQL) instead of moving records;
    /// exits 1 when one fails
    #[arg(long)]
    verify: bool,
    /// With --verify: distinct users who asked, to also check sold = min(stock, buyers)
    #[arg(long, requires = "verify", value_name = "N")]
    expect_buyers: Option<u64>,
    /// With --verify: what the system knows of this user instead (their requests' outcomes
    /// in Redis, their row in PostgreSQL)
    #[arg(
        long,
        requires = "verify",
        value_name = "ID",
        conflicts_with = "expect_buyers"
    )]
    user: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut flags = args.sale.overrides();
    flags
        .set("log_worker.batch_size", "batch-size", args.batch_size)
        .set(
            "log_worker.flush_interval_ms",
            "flush-interval-ms",
            args.flush_interval_ms,
        )
        .set("log_worker.concurrency", "concurrency", args.concurrency)
        .switch("log_worker.drain", "drain", args.drain)
        .set("redis.url", "redis-url", args.redis_url)
        .set("postgres.url", "database-url", args.database_url);
    cli::run(
        "log_worker",
        &args.common,
        flags,
        |config, shutdown| async move {
            if let (true, Some(user)) = (args.verify, args.user) {
                println!("{}", user_report(&config, user).await?);
            } else if args.verify {
                let report = verify(&config, args.expect_buyers).await?;
                println!("{report}");
                anyhow::ensure!(
                    report.holds(),
                    "invariants violated for activity {}",
                    report.activity_id
                );
            } else {
                let summary = run_log_worker(&config, shutdown).await?;
                println!("{summary}");
            }
            anyhow::Ok(())
        },
    )
    .await
}
