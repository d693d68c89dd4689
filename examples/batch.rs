//! Batch sends with awaited delivery reports: every message of the batch is enqueued before
//! any report is awaited, and each gets its own result.
//! `KAFKA_BROKERS=127.0.0.1:9092 cargo run --example batch`

use seckill_kafka::kafka::sink::{KafkaMessage, KafkaSink, SinkConfig};
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
struct Order {
    id: u64,
    amount_cents: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "localhost:9092".into());
    let sink = KafkaSink::<Order>::new(SinkConfig::for_brokers(brokers, "example-orders"))?;
    let batch = (0..1_000)
        .map(|id| {
            KafkaMessage::new(Order {
                id,
                amount_cents: 100 * id,
            })
            .key(id.to_string())
            .header("source", "example")
        })
        .collect();
    let results = sink.send_batch(batch).await;
    let failed = results.iter().filter(|result| result.is_err()).count();
    println!("{} delivered, {failed} failed", results.len() - failed);
    if let Some(Ok(first)) = results.first() {
        println!(
            "first landed on partition {} at offset {}",
            first.partition, first.offset
        );
    }
    sink.close(Duration::from_secs(10)).await?;
    Ok(())
}
