//! zstd_producer: produces protobuf UserEvents with zstd compression, or reads them back.

use clap::Parser;
use seckill_kafka::cli::{self, CommonArgs};
use seckill_kafka::zstd_producer::{run_zstd_producer, verify_topic, ExpectedEvents};
use std::process::ExitCode;

/// UserEvent (protobuf) producer with zstd batches. The broker comes from --brokers, else
/// KAFKA_BROKERS or KAFKA_BROKER, else localhost:9092.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Topic
    #[arg(long = "topic", id = "zstd_producer.topic")]
    topic: Option<String>,
    /// Events to send, 0 = until SIGTERM
    #[arg(long = "events", id = "zstd_producer.events")]
    events: Option<u64>,
    /// Events per second, 0 = unlimited
    #[arg(long = "rate", id = "zstd_producer.rate")]
    rate: Option<u64>,
    /// Distinct users
    #[arg(long = "users", id = "zstd_producer.users")]
    users: Option<u64>,
    /// Event generator seed, 0 = random
    #[arg(long = "seed", id = "zstd_producer.seed")]
    seed: Option<u64>,
    /// Read the topic back instead: decode every record, count by type, report the
    /// undecodable ones (exit 1 if there are any). With --events and --seed (and --users,
    /// if the run set it): exit 1 unless the topic holds exactly the events of that run
    #[arg(long)]
    verify: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, flags) = cli::parse::<Args>();
    // --verify with the producing run's flags compares with that run's events.
    let compare = args.verify && (args.events.is_some() || args.seed.is_some());
    cli::run("zstd_producer", &args.common, flags, |config, shutdown| async move {
        if args.verify {
            let expected = if compare {
                anyhow::ensure!(
                    args.events.is_some() && args.seed.is_some(),
                    "--verify compares with a producing run when given both its --events and --seed"
                );
                let settings = &config.zstd_producer;
                Some(ExpectedEvents {
                    events: settings.events,
                    seed: settings.seed,
                    users: settings.users,
                })
            } else {
                None
            };
            let report = verify_topic(&config, expected).await?;
            println!("{report}");
            anyhow::ensure!(
                report.undecodable == 0,
                "{} undecodable records",
                report.undecodable
            );
            if let Some(c) = &report.comparison {
                anyhow::ensure!(
                    report.holds(),
                    "the topic does not hold exactly the {} events of seed {}: {} missing, {} extra, {} different",
                    c.expected,
                    config.zstd_producer.seed,
                    c.missing,
                    c.extra,
                    c.different
                );
            }
        } else {
            let report = run_zstd_producer(&config, shutdown).await?;
            println!("{report}");
            anyhow::ensure!(report.failed == 0, "{} events not delivered", report.failed);
        }
        anyhow::Ok(())
    })
    .await
}
