//! dev_broker: hosts librdkafka's mock Kafka cluster on loopback for local runs and tests.

use clap::Parser;
use seckill_kafka::cli::exit_with_error;
use seckill_kafka::config::LogFormat;
use seckill_kafka::dev_broker::{run, DevBrokerOptions};
use seckill_kafka::shutdown::Shutdown;
use std::path::PathBuf;

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
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    seckill_kafka::telemetry::init(args.log_format);
    let options = DevBrokerOptions {
        brokers: args.brokers,
        bootstrap_file: args.bootstrap_file,
    };
    let result = async {
        let shutdown = Shutdown::on_signals()?;
        run(options, shutdown).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        exit_with_error("dev_broker", &error);
    }
}
