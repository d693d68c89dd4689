//! zstd_producer: produces protobuf UserEvents with zstd compression.

use clap::Parser;
use seckill_kafka::cli::{start, CommonArgs};
use seckill_kafka::config::FlagOverrides;

/// UserEvent (protobuf) producer with zstd batches.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Topic (zstd_producer.topic)
    #[arg(long)]
    topic: Option<String>,
    /// Events to send, 0 = until SIGTERM (zstd_producer.events)
    #[arg(long)]
    events: Option<u64>,
    /// Events per second, 0 = unlimited (zstd_producer.rate)
    #[arg(long)]
    rate: Option<u64>,
    /// Distinct users (zstd_producer.users)
    #[arg(long)]
    users: Option<u64>,
}

fn main() {
    let args = Args::parse();
    let mut flags = FlagOverrides::new();
    flags
        .set("zstd_producer.topic", "topic", args.topic)
        .set("zstd_producer.events", "events", args.events)
        .set("zstd_producer.rate", "rate", args.rate)
        .set("zstd_producer.users", "users", args.users);
    let Some(config) = start("zstd_producer", &args.common, flags) else {
        return;
    };
    tracing::warn!(
        topic = %config.zstd_producer.topic,
        "configuration is valid; producing events is not implemented in this build yet"
    );
}
