//! The sink's counters and latency histogram, readable as a [`MetricsSnapshot`] and also
//! published through the `metrics` facade (a no-op until a recorder, such as a Prometheus
//! exporter, is installed).
//!
//! Updated from librdkafka's delivery-report thread: atomics for the counters, one
//! uncontended mutex for the histogram.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Latencies from 1 µs to 10 min; longer ones count as 10 min.
const LATENCY_CEILING_US: u64 = 600_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub message: String,
    pub at: SystemTime,
}

/// A point-in-time copy of the sink's metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Messages the broker acknowledged.
    pub messages_sent: u64,
    /// Messages that failed for good (after retries) or could not be enqueued.
    pub messages_failed: u64,
    /// Payload and key bytes of acknowledged messages.
    pub bytes_sent: u64,
    /// Enqueue attempts, first tries and retries together.
    pub attempts: u64,
    pub retries: u64,
    /// Enqueue to delivery report, acknowledged messages only (on the fast path, every
    /// 64th message of each sending thread).
    pub latency_avg: Duration,
    pub latency_max: Duration,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub breaker_trips: u64,
    pub last_error: Option<LastError>,
}

struct Facade {
    sent: metrics::Counter,
    failed: metrics::Counter,
    bytes: metrics::Counter,
    retries: metrics::Counter,
    breaker_trips: metrics::Counter,
    latency: metrics::Histogram,
}

pub struct SinkMetrics {
    sent: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    breaker_trips: AtomicU64,
    latency_sum_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<LastError>>,
    facade: Facade,
}

impl SinkMetrics {
    /// `sink` labels the published metrics (e.g. the client id).
    pub fn new(sink: &str) -> Result<Self, hdrhistogram::CreationError> {
        let label = sink.to_string();
        let latency = Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)?;
        Ok(Self {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            breaker_trips: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            latency: Mutex::new(latency),
            last_error: Mutex::new(None),
            facade: Facade {
                sent: metrics::counter!("kafka_sink_messages_sent_total", "sink" => label.clone()),
                failed: metrics::counter!("kafka_sink_messages_failed_total", "sink" => label.clone()),
                bytes: metrics::counter!("kafka_sink_bytes_sent_total", "sink" => label.clone()),
                retries: metrics::counter!("kafka_sink_retries_total", "sink" => label.clone()),
                breaker_trips: metrics::counter!("kafka_sink_breaker_trips_total", "sink" => label.clone()),
                latency: metrics::histogram!("kafka_sink_delivery_latency_seconds", "sink" => label),
            },
        })
    }

    pub(crate) fn attempt(&self) {
        self.attempts(1);
    }

    pub(crate) fn attempts(&self, messages: u64) {
        self.attempts.fetch_add(messages, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.facade.retries.increment(1);
    }

    pub(crate) fn breaker_trip(&self) {
        self.breaker_trips.fetch_add(1, Ordering::Relaxed);
        self.facade.breaker_trips.increment(1);
    }

    pub(crate) fn delivered(&self, bytes: usize, latency: Option<Duration>) {
        self.delivered_many(1, bytes as u64);
        if let Some(latency) = latency {
            self.latency(latency);
        }
    }

    /// Counts `messages` acknowledged messages of `bytes` key and payload bytes in all: the
    /// delivery reports of one librdkafka event, counted once.
    pub(crate) fn delivered_many(&self, messages: u64, bytes: u64) {
        if messages == 0 {
            return;
        }
        self.sent.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.facade.sent.increment(messages);
        self.facade.bytes.increment(bytes);
    }

    /// Records one acknowledged message's enqueue-to-report latency.
    pub(crate) fn latency(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, LATENCY_CEILING_US);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
        self.facade.latency.record(latency.as_secs_f64());
        if let Ok(mut histogram) = self.latency.lock() {
            histogram.saturating_record(micros);
        }
    }

    pub(crate) fn failed(&self, error: &dyn std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.facade.failed.increment(1);
        self.set_last_error(error);
    }

    pub(crate) fn set_last_error(&self, error: &dyn std::fmt::Display) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(LastError {
                message: error.to_string(),
                at: SystemTime::now(),
            });
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (count, p50, p99, max) = match self.latency.lock() {
            Ok(histogram) => (
                histogram.len(),
                histogram.value_at_quantile(0.50),
                histogram.value_at_quantile(0.99),
                histogram.max(),
            ),
            Err(_) => (0, 0, 0, 0),
        };
        let average = get(&self.latency_sum_us).checked_div(count).unwrap_or(0);
        MetricsSnapshot {
            messages_sent: get(&self.sent),
            messages_failed: get(&self.failed),
            bytes_sent: get(&self.bytes),
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            latency_avg: Duration::from_micros(average),
            latency_max: Duration::from_micros(max),
            latency_p50: Duration::from_micros(p50),
            latency_p99: Duration::from_micros(p99),
            breaker_trips: get(&self.breaker_trips),
            last_error: self.last_error.lock().ok().and_then(|last| last.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_updates() {
        let metrics = SinkMetrics::new("test").unwrap();
        for ms in 1..=100u64 {
            metrics.attempt();
            metrics.delivered(10, Some(Duration::from_millis(ms)));
        }
        metrics.retry();
        metrics.attempt();
        metrics.failed(&"broker down");
        metrics.breaker_trip();
        let snapshot = metrics.snapshot();
        assert_eq!(
            (
                snapshot.messages_sent,
                snapshot.messages_failed,
                snapshot.bytes_sent
            ),
            (100, 1, 1_000)
        );
        assert_eq!(
            (snapshot.attempts, snapshot.retries, snapshot.breaker_trips),
            (101, 1, 1)
        );
        assert!(
            (49..=51).contains(&snapshot.latency_p50.as_millis()),
            "{snapshot:?}"
        );
        assert!(
            (99..=100).contains(&snapshot.latency_p99.as_millis()),
            "{snapshot:?}"
        );
        assert!(
            (100..=101).contains(&snapshot.latency_max.as_millis()),
            "{snapshot:?}"
        );
        assert_eq!(snapshot.latency_avg.as_millis(), 50);
        assert_eq!(snapshot.last_error.unwrap().message, "broker down");
    }
}
