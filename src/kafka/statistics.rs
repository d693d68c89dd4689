//! librdkafka's statistics as metrics, through the `metrics` facade: the application picks
//! the recorder (Prometheus in the programs, none in a library user that does not install
//! one), so this module and [`KafkaSink`](crate::kafka::sink::KafkaSink) need nothing from
//! the application's telemetry module.

/// Publishes one librdkafka statistics report as gauges: `kafka_client_queue_messages`
/// (messages waiting in the client's queues), `kafka_broker_rtt_seconds` (average request
/// round trip per broker) and `kafka_consumer_lag` (per partition, consumers only). No-ops
/// until a recorder is installed.
pub fn publish(statistics: &rdkafka::Statistics) {
    let client = statistics.client_id.clone();
    metrics::gauge!("kafka_client_queue_messages", "client" => client.clone())
        .set(statistics.msg_cnt as f64);
    for (name, broker) in &statistics.brokers {
        if let Some(rtt) = broker.rtt.as_ref().filter(|rtt| rtt.cnt > 0) {
            metrics::gauge!(
                "kafka_broker_rtt_seconds",
                "client" => client.clone(),
                "broker" => name.clone()
            )
            .set(rtt.avg as f64 / 1e6);
        }
    }
    for (topic_name, topic) in &statistics.topics {
        for (partition, stats) in &topic.partitions {
            // -1 is librdkafka's internal UA partition; lag -1 means unknown.
            if *partition >= 0 && stats.consumer_lag >= 0 {
                metrics::gauge!(
                    "kafka_consumer_lag",
                    "client" => client.clone(),
                    "topic" => topic_name.clone(),
                    "partition" => partition.to_string()
                )
                .set(stats.consumer_lag as f64);
            }
        }
    }
}

/// A client context that only publishes librdkafka's statistics as metrics (instead of
/// rdkafka's default, which logs each report).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatisticsContext;

impl rdkafka::ClientContext for StatisticsContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        publish(&statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for StatisticsContext {}
