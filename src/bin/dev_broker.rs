//! dev_broker: hosts librdkafka's mock Kafka cluster on loopback for local runs and tests.

use clap::Parser;
use seckill_kafka::cli;
use seckill_kafka::config::LogFormat;
use seckill_kafka::dev_broker::{create_suite_topics, run, DevBrokerOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Local Kafka test broker (librdkafka mock cluster) with the suite's topics.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of mock brokers
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    brokers: i32,
    /// File the bootstrap address is written to once the cluster is up
    #[arg(long, default_value = ".dev/kafka.bootstrap")]
    bootstrap_file: PathBuf,
    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Instead of hosting a mock cluster: create the suite's topics (with their partition
    /// counts) on this broker through the Admin API, and exit. For Apache Kafka in CI and
    /// `make test-kafka`
    #[arg(long, value_name = "HOST:PORT,...")]
    create_topics_on: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    seckill_kafka::telemetry::init(args.log_format);
    let options = DevBrokerOptions {
        brokers: args.brokers,
        bootstrap_file: args.bootstrap_file,
    };
    let result = async {
        if let Some(brokers) = args.create_topics_on {
            let created = create_suite_topics(&brokers).await?;
            println!(
                "dev_broker: suite topics on {brokers}: {} created, the others existed",
                created.len()
            );
            return anyhow::Ok(());
        }
        run(options, cli::shutdown_on_signals()?).await?;
        anyhow::Ok(())
    }
    .await;
    cli::finish("dev_broker", result)
}
