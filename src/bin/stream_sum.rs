//! stream_sum: the streaming-sum benchmark processor (Avro integer lists -> sums).

use clap::{Parser, Subcommand};
use seckill_kafka::cli::{self, CommonArgs};
use seckill_kafka::stream_sum::run_stream_sum;
use seckill_kafka::stream_sum_bench::{
    run_bench, BenchOptions, BENCH_INPUT_TOPIC, BENCH_OUTPUT_TOPIC,
};
use std::process::ExitCode;

/// Streaming sum: binary-Avro IntegerList in, SumResult out.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// What to do; `run` when omitted
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Process the input topic continuously until SIGTERM (drains and commits)
    Run {
        /// Input topic
        #[arg(long = "input-topic", id = "stream_sum.input_topic")]
        input_topic: Option<String>,
        /// Output topic
        #[arg(long = "output-topic", id = "stream_sum.output_topic")]
        output_topic: Option<String>,
        /// Consumer group
        #[arg(long = "group-id", id = "stream_sum.group_id")]
        group_id: Option<String>,
        /// Workers, 0 = one per input partition
        #[arg(long = "workers", id = "stream_sum.workers")]
        workers: Option<usize>,
        /// Transactional consume-transform-produce
        #[arg(long = "exactly-once", id = "stream_sum.exactly_once")]
        exactly_once: bool,
    },
    /// Load N random lists, process the backlog, print records/seconds/msg_per_sec, verify
    Bench {
        /// Lists to load in phase 1
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Reuse the backlog already in the input topic (no phase 1)
        #[arg(long)]
        skip_load: bool,
        /// Workers, 0 = one per input partition (default: stream_sum.workers)
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long, default_value = BENCH_INPUT_TOPIC)]
        input_topic: String,
        #[arg(long, default_value = BENCH_OUTPUT_TOPIC)]
        output_topic: String,
        /// Skip the baselines (the same work as plain loops on librdkafka's batch API, as
        /// many threads as workers, into <output-topic>.baseline)
        #[arg(long)]
        no_baseline: bool,
        /// Rounds on the same backlog, stream_sum and the baselines in turn (min / median /
        /// max reported)
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Process the backlog with the exactly-once workers (transactions) instead
        #[arg(long)]
        exactly_once: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, flags) = cli::parse::<Args>();
    let command = args.command.unwrap_or(Command::Run {
        input_topic: None,
        output_topic: None,
        group_id: None,
        workers: None,
        exactly_once: false,
    });
    cli::run(
        "stream_sum",
        &args.common,
        flags,
        |config, shutdown| async move {
            match command {
                Command::Run { .. } => println!("{}", run_stream_sum(&config, shutdown).await?),
                Command::Bench {
                    records,
                    skip_load,
                    workers,
                    input_topic,
                    output_topic,
                    no_baseline,
                    exactly_once,
                    rounds,
                } => {
                    let options = BenchOptions {
                        records,
                        skip_load,
                        input_topic,
                        output_topic,
                        baseline: !no_baseline,
                        exactly_once,
                        rounds,
                        workers: workers.unwrap_or(config.stream_sum.workers),
                    };
                    println!("{}", run_bench(&config, options, shutdown).await?);
                }
            }
            anyhow::Ok(())
        },
    )
    .await
}
