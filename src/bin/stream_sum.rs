//! stream_sum: the streaming-sum benchmark processor (Avro integer lists -> sums).

use clap::{Parser, Subcommand};
use seckill_kafka::cli::{exit_with_error, start, CommonArgs};
use seckill_kafka::config::FlagOverrides;
use seckill_kafka::shutdown::Shutdown;
use seckill_kafka::stream_sum::run_stream_sum;

/// Streaming sum: binary-Avro IntegerList in, SumResult out.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Input topic (stream_sum.input_topic)
    #[arg(long, global = true)]
    input_topic: Option<String>,
    /// Output topic (stream_sum.output_topic)
    #[arg(long, global = true)]
    output_topic: Option<String>,
    /// Worker tasks, 0 = one per input partition (stream_sum.workers)
    #[arg(long, global = true)]
    workers: Option<usize>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Process continuously until SIGINT/SIGTERM (the default)
    Run,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut flags = FlagOverrides::new();
    flags
        .set("stream_sum.input_topic", "input-topic", args.input_topic)
        .set("stream_sum.output_topic", "output-topic", args.output_topic)
        .set("stream_sum.workers", "workers", args.workers);
    let Some(config) = start("stream_sum", &args.common, flags) else {
        return;
    };
    let result = async {
        match args.mode.unwrap_or(Mode::Run) {
            Mode::Run => {
                let summary = run_stream_sum(&config, Shutdown::on_signals()?).await?;
                println!("{summary}");
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        exit_with_error("stream_sum", &error);
    }
}
