//! Fire-and-forget with the fast path: enqueue without awaiting each delivery, then flush.
//! `KAFKA_BROKERS=127.0.0.1:9092 cargo run --example fire_and_forget`

use seckill_kafka::kafka::sink::{KafkaMessage, KafkaSink, SinkConfig};
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize)]
struct Click {
    user: u64,
    page: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "localhost:9092".into());
    let sink = KafkaSink::<Click>::new(SinkConfig::for_brokers(brokers, "example-clicks"))?;
    let sink = std::sync::Arc::new(sink);
    let sender = sink.clone();
    // enqueue blocks only when the producer queue is full (back-pressure): give it a thread.
    tokio::task::spawn_blocking(move || {
        let mut message = KafkaMessage::new(Click {
            user: 0,
            page: "/home",
        });
        for user in 0..100_000 {
            message.value.user = user;
            message.key = Some(user.to_string().into_bytes());
            sender.enqueue(&message)?;
        }
        anyhow::Ok(())
    })
    .await??;
    let report = sink.close(Duration::from_secs(30)).await?;
    println!(
        "sent={} failed={} undelivered={} p99 latency={:?}",
        report.metrics.messages_sent,
        report.metrics.messages_failed,
        report.undelivered,
        report.metrics.latency_p99
    );
    Ok(())
}
