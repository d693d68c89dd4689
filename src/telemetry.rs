//! Logging and metrics shared by the programs: `tracing` to stderr as text or JSON, filtered
//! by `RUST_LOG` (default `info`, with sqlx's per-statement notices at `warn`); Prometheus
//! metrics on `--metrics-addr` ([`serve_metrics`]), including librdkafka's statistics
//! ([`publish_kafka_statistics`]).

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless (the second call keeps the
/// first subscriber), which keeps tests that start programs in-process simple.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.metrics_addr: cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    pub addr: std::net::SocketAddr,
    pub reason: String,
}

/// Serves the `metrics` facade as Prometheus text on `addr` (`GET /metrics`, any path),
/// from a task of the current tokio runtime. Call once, inside the runtime.
pub fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), MetricsError> {
    // Bind first so that a taken port is reported here, not logged by the exporter's task.
    let probe = std::net::TcpListener::bind(addr).map_err(|e| MetricsError {
        addr,
        reason: e.to_string(),
    })?;
    drop(probe);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| MetricsError {
            addr,
            reason: e.to_string(),
        })
}

/// Publishes one librdkafka statistics report as gauges: `kafka_client_queue_messages`
/// (messages waiting in the client's queues), `kafka_broker_rtt_seconds` (average request
/// round trip per broker) and `kafka_consumer_lag` (per partition, consumers only). No-ops
/// until a recorder is installed.
pub fn publish_kafka_statistics(statistics: &rdkafka::Statistics) {
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
        publish_kafka_statistics(&statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for StatisticsContext {}
