//! stream_sum: the streaming-sum benchmark processor (Avro integer lists -> sums).

use clap::Parser;
use seckill_kafka::cli::{start, CommonArgs};
use seckill_kafka::config::FlagOverrides;

/// Streaming sum: binary-Avro IntegerList in, SumResult out.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Input topic (stream_sum.input_topic)
    #[arg(long)]
    input_topic: Option<String>,
    /// Output topic (stream_sum.output_topic)
    #[arg(long)]
    output_topic: Option<String>,
    /// Worker tasks, 0 = one per input partition (stream_sum.workers)
    #[arg(long)]
    workers: Option<usize>,
}

fn main() {
    let args = Args::parse();
    let mut flags = FlagOverrides::new();
    flags
        .set("stream_sum.input_topic", "input-topic", args.input_topic)
        .set("stream_sum.output_topic", "output-topic", args.output_topic)
        .set("stream_sum.workers", "workers", args.workers);
    let Some(config) = start("stream_sum", &args.common, flags) else {
        return;
    };
    tracing::warn!(
        input = %config.stream_sum.input_topic,
        output = %config.stream_sum.output_topic,
        "configuration is valid; stream processing is not implemented in this build yet"
    );
}
