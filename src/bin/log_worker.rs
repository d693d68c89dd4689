//! log_worker: moves purchase records from Redis into PostgreSQL, for every activity or one;
//! `--verify` checks the invariants.

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs, SaleArgs};
use seckill_kafka::seckill::log_worker::{run_log_worker, LogWorkerSettings};
use seckill_kafka::seckill::verify::{user_report, verify, verify_all, verify_some};
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
    /// Records per INSERT
    #[arg(long = "batch-size", id = "log_worker.batch_size")]
    batch_size: Option<usize>,
    /// Longest wait for a batch to fill, ms
    #[arg(long = "flush-interval-ms", id = "log_worker.flush_interval_ms")]
    flush_interval_ms: Option<u64>,
    /// Insert loops in this process, each with its own processing lists
    #[arg(long = "concurrency", id = "log_worker.concurrency")]
    concurrency: Option<usize>,
    /// Exit once every queue is empty
    #[arg(long = "drain", id = "log_worker.drain")]
    drain: bool,
    /// Redis URL. Prefer REDIS_URL: other local users can read flags with ps
    #[arg(long = "redis-url", id = "redis.url", value_name = "URL")]
    redis_url: Option<SecretUrl>,
    /// PostgreSQL URL. Prefer DATABASE_URL, for the same reason
    #[arg(long = "database-url", id = "postgres.url", value_name = "URL")]
    database_url: Option<SecretUrl>,
    /// Check the invariants (Redis vs PostgreSQL) of --activity-id (or, with --all, of every
    /// activity, one line each) instead of moving records; exits 1 when one fails
    #[arg(long)]
    verify: bool,
    /// With --verify: every activity
    #[arg(long, requires = "verify", conflicts_with_all = ["expect_buyers", "user", "log_worker.activity_ids"])]
    all: bool,
    /// Serve only these activities (with --verify: check these, one line each)
    #[arg(
        long = "activity-ids",
        id = "log_worker.activity_ids",
        value_name = "ID,ID,...",
        conflicts_with_all = ["expect_buyers", "user"]
    )]
    activity_ids: Option<String>,
    /// With --verify: distinct users who asked, to also check sold = min(stock, buyers)
    #[arg(long, requires = "verify", value_name = "N")]
    expect_buyers: Option<u64>,
    /// With --verify: what the system knows of this user instead (their requests' outcomes
    /// in Redis, their rows in PostgreSQL)
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
    let (args, flags) = cli::parse::<Args>();
    cli::run(
        "log_worker",
        &args.common,
        flags,
        |config, shutdown| async move {
            let (redis, postgres) = (&config.redis, &config.postgres);
            let listed = &config.log_worker.activity_ids;
            if args.verify && (args.all || !listed.is_empty()) {
                let reports = if args.all {
                    verify_all(redis, postgres).await?
                } else {
                    verify_some(redis, postgres, listed).await?
                };
                let failed = reports.iter().filter(|report| !report.holds()).count();
                for report in &reports {
                    println!("{}", report.line());
                }
                println!(
                    "verified {} activities: {}",
                    reports.len(),
                    if failed == 0 {
                        "all invariants hold".to_string()
                    } else {
                        format!("{failed} with invariants violated")
                    }
                );
                anyhow::ensure!(failed == 0, "invariants violated in {failed} activities");
            } else if args.verify {
                let activity_id = config.seckill.activity_id.ok_or_else(|| {
                    anyhow::anyhow!("--verify needs --activity-id N, or --all for every activity")
                })?;
                if let Some(user) = args.user {
                    println!("{}", user_report(redis, postgres, activity_id, user).await?);
                } else {
                    let report = verify(redis, postgres, activity_id, args.expect_buyers).await?;
                    println!("{report}");
                    anyhow::ensure!(
                        report.holds(),
                        "invariants violated for activity {}",
                        report.activity_id
                    );
                }
            } else {
                let summary = run_log_worker(&LogWorkerSettings::from(&config), shutdown).await?;
                println!("{summary}");
            }
            anyhow::Ok(())
        },
    )
    .await
}
