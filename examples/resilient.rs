//! Resilient sending: retries with backoff for retriable errors, a circuit breaker that
//! fails fast during an outage, and metrics to watch it all.
//! `KAFKA_BROKERS=127.0.0.1:9092 cargo run --example resilient`

use seckill_kafka::kafka::sink::{KafkaMessage, KafkaSink, SinkConfig, SinkError};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "localhost:9092".into());
    let mut config = SinkConfig::for_brokers(brokers, "example-events");
    config.retries = 5;
    config.retry_backoff = Duration::from_millis(200);
    config.message_timeout = Duration::from_secs(5);
    config.breaker_threshold = 3;
    config.breaker_timeout = Duration::from_secs(10);
    let sink = KafkaSink::<String>::new(config)?;

    for n in 0..20 {
        match sink.send(KafkaMessage::new(format!("event {n}"))).await {
            Ok(report) => println!(
                "event {n}: partition {} offset {}",
                report.partition, report.offset
            ),
            Err(SinkError::CircuitOpen) => {
                println!("event {n}: breaker open, backing off");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) if error.is_retriable() => {
                println!("event {n}: gave up after retries: {error}")
            }
            Err(error) => return Err(error.into()),
        }
    }
    let metrics = sink.metrics();
    println!(
        "sent={} failed={} retries={} breaker_trips={} last_error={:?}",
        metrics.messages_sent,
        metrics.messages_failed,
        metrics.retries,
        metrics.breaker_trips,
        metrics.last_error.map(|e| e.message)
    );
    sink.close(Duration::from_secs(10)).await?;
    Ok(())
}
