//! Exactly-once: messages sent inside a transaction are seen by `read_committed` consumers
//! only if the transaction commits. (Needs a broker with transactions, e.g. Apache Kafka;
//! the dev broker accepts them but does not hide aborted records from readers.)
//! `KAFKA_BROKERS=127.0.0.1:9092 cargo run --example exactly_once`

use seckill_kafka::kafka::sink::{DeliveryGuarantee, KafkaMessage, KafkaSink, SinkConfig};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "localhost:9092".into());
    let mut config = SinkConfig::for_brokers(brokers, "example-ledger")
        .with_guarantee(DeliveryGuarantee::ExactlyOnce);
    config.transactional_id = Some("example-ledger-writer".into());
    let sink = KafkaSink::<String>::new(config)?;

    sink.begin_transaction().await?;
    sink.send(KafkaMessage::new("debit 10".to_string())).await?;
    sink.send(KafkaMessage::new("credit 10".to_string()))
        .await?;
    sink.commit_transaction().await?;
    println!("committed: debit and credit are visible together");

    sink.begin_transaction().await?;
    sink.send(KafkaMessage::new("debit 99".to_string())).await?;
    sink.abort_transaction().await?;
    println!("aborted: read_committed consumers never see 'debit 99'");

    sink.close(Duration::from_secs(10)).await?;
    Ok(())
}
