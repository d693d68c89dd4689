//! log_worker: moves purchase records from the Redis log list into PostgreSQL.

use clap::Parser;
use seckill_kafka::cli::{start, CommonArgs};
use seckill_kafka::config::FlagOverrides;

/// Reliable Redis -> PostgreSQL mover for purchase records.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Activity (sale) id (seckill.activity_id)
    #[arg(long)]
    activity_id: Option<u64>,
    /// Records per INSERT (log_worker.batch_size)
    #[arg(long)]
    batch_size: Option<usize>,
    /// Longest wait for a batch to fill, ms (log_worker.flush_interval_ms)
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// Exit once the queue is empty (log_worker.drain)
    #[arg(long)]
    drain: bool,
}

fn main() {
    let args = Args::parse();
    let mut flags = FlagOverrides::new();
    flags
        .set("seckill.activity_id", "activity-id", args.activity_id)
        .set("log_worker.batch_size", "batch-size", args.batch_size)
        .set(
            "log_worker.flush_interval_ms",
            "flush-interval-ms",
            args.flush_interval_ms,
        )
        .switch("log_worker.drain", "drain", args.drain);
    let Some(config) = start("log_worker", &args.common, flags) else {
        return;
    };
    tracing::warn!(
        activity_id = config.seckill.activity_id,
        postgres = %config.postgres.url,
        "configuration is valid; moving records is not implemented in this build yet"
    );
}
