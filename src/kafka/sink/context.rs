//! The producer's side of librdkafka's threads: [`SinkContext`] receives delivery reports
//! (waking a waiting `send`, counting a [`DeliveryGroup`], or only updating metrics on the
//! fast path) and statistics, and holds the custom partitioner when a strategy needs one.
//! [`Shared`] is the state the sink and that context share.

use super::circuit_breaker::{BreakerState, CircuitBreaker};
use super::metrics::SinkMetrics;
use super::partition::StrategyPartitioner;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Statistics};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where an acknowledged message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub partition: i32,
    pub offset: i64,
}

pub(super) type Waiter = oneshot::Sender<Result<DeliveryReport, RdKafkaError>>;

/// The opaque bit that marks a message of a [`DeliveryGroup`].
pub(super) const GROUP_TAG: usize = 0b10;

/// Messages handed to librdkafka on the fast path whose delivery is awaited together, once,
/// with [`KafkaSink::wait_group`] (the results of one batch, say): one registration per
/// group, nothing per message.
pub struct DeliveryGroup {
    pub(super) id: u64,
    pub(super) state: Arc<GroupState>,
}

#[derive(Default)]
pub(super) struct GroupState {
    pub(super) pending: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) last_error: Mutex<Option<RdKafkaError>>,
    pub(super) done: tokio::sync::Notify,
}

/// How a [`DeliveryGroup`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDelivery {
    /// Messages whose delivery failed for good (librdkafka's retries exhausted).
    pub failed: u64,
    pub last_error: Option<RdKafkaError>,
}

/// State shared between the sink and librdkafka's delivery-report thread.
pub(super) struct Shared {
    pub(super) metrics: SinkMetrics,
    pub(super) breaker: CircuitBreaker,
    pub(super) waiters: Mutex<HashMap<u64, Waiter>>,
    pub(super) next_waiter: AtomicU64,
    pub(super) groups: Mutex<HashMap<u64, Arc<GroupState>>>,
    pub(super) next_group: AtomicU64,
    pub(super) epoch: Instant,
    /// Messages handed to librdkafka whose delivery report has not arrived. (librdkafka's
    /// own queue length also counts protocol requests, so it cannot say this.)
    pub(super) outstanding: AtomicU64,
    pub(super) statistics: StatisticsTotals,
}

/// One fast-path message of a thread in this many is sampled: it carries its enqueue time,
/// for the latency metrics (reading the clock for every message, and again in its delivery
/// report, cost more than a tenth of stream_sum's CPU time: perf, see docs/BENCHMARKS.md),
/// and once sent its thread serves the delivery reports that are ready (see `polling.rs`).
pub(super) const SAMPLE_EVERY: u32 = 64;

thread_local! {
    /// Fast-path messages this thread enqueued, for sampling.
    static ENQUEUED: Cell<u32> = const { Cell::new(0) };
}

/// How a fast-path message goes to librdkafka.
pub(super) struct FastPathTicket {
    /// The low bit set, and above it the enqueue time in microseconds (at least 1) for a
    /// sampled message, 0 for the others.
    pub(super) opaque: usize,
    /// One in [`SAMPLE_EVERY`] of this thread's messages.
    pub(super) sampled: bool,
}

impl Shared {
    pub(super) fn fast_path_ticket(&self) -> FastPathTicket {
        let sampled = ENQUEUED.with(|count| {
            let n = count.get();
            count.set(n.wrapping_add(1));
            n % SAMPLE_EVERY == 0
        });
        let opaque = if sampled {
            let micros = (self.epoch.elapsed().as_micros() as usize).max(1);
            (micros << 1) | 1
        } else {
            1
        };
        FastPathTicket { opaque, sampled }
    }

    /// Accounts a fast-path or group message's delivery: the metrics and the breaker.
    /// `latency` is asked only for a delivered message.
    fn account(&self, result: &DeliveryResult<'_>, latency: impl FnOnce() -> Option<Duration>) {
        match result {
            Ok(message) => {
                let bytes = message.payload_len() + message.key().map_or(0, <[u8]>::len);
                self.metrics.delivered(bytes, latency());
                self.breaker.record_success();
            }
            Err((error, _)) => {
                self.metrics.failed(error);
                if self.breaker.record_failure() {
                    self.metrics.breaker_trip();
                }
            }
        }
    }
}

/// The producer context: delivery reports and the partition strategy (none for KeyHash:
/// librdkafka's murmur2 does it).
pub struct SinkContext {
    pub(super) shared: Arc<Shared>,
    pub(super) partitioner: Option<StrategyPartitioner>,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let shared = &self.shared;
        // Window statistics cover one interval: add them up. The others are running totals.
        let (batch_bytes, batch_messages) = statistics
            .topics
            .values()
            .fold((0, 0), |(bytes, messages), topic| {
                (bytes + topic.batchsize.sum, messages + topic.batchcnt.sum)
            });
        shared
            .statistics
            .batch_bytes
            .fetch_add(batch_bytes.max(0) as u64, Ordering::Relaxed);
        shared
            .statistics
            .batch_messages
            .fetch_add(batch_messages.max(0) as u64, Ordering::Relaxed);
        shared
            .statistics
            .message_bytes
            .store(statistics.txmsg_bytes.max(0) as u64, Ordering::Relaxed);
        shared
            .statistics
            .queued_messages
            .store(statistics.msg_cnt, Ordering::Relaxed);
        if let Some(eos) = &statistics.eos {
            shared
                .statistics
                .producer_id_assigned
                .store(eos.idemp_state == "Assigned", Ordering::Release);
        }
        shared.statistics.reports.fetch_add(1, Ordering::Release);
        crate::kafka::statistics::publish(&statistics);
        metrics::gauge!("kafka_sink_breaker_state", "sink" => statistics.client_id.clone()).set(
            match shared.breaker.state() {
                BreakerState::Closed => 0.0,
                BreakerState::Open => 1.0,
                BreakerState::HalfOpen => 2.0,
            },
        );
    }
}

/// What librdkafka's statistics said so far (see [`SinkConfig::statistics_interval`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStatistics {
    /// Statistics reports received.
    pub reports: u64,
    /// Key and value bytes of the messages put into produce batches (`txmsg_bytes`):
    /// before compression.
    pub message_bytes: u64,
    /// Bytes of those batches as sent (the topics' `batchsize` windows added up): after
    /// compression, with the batch framing.
    pub batch_bytes: u64,
    /// Messages in those batches.
    pub batch_messages: u64,
    /// Messages waiting in the producer queue at the last report (`msg_cnt`).
    pub queued_messages: u64,
    /// An idempotent producer has its producer id (`eos.idemp_state` is `Assigned`):
    /// librdkafka holds every message back until then.
    pub producer_id_assigned: bool,
}

impl SinkStatistics {
    /// Uncompressed over compressed bytes; `None` before a batch was reported.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.batch_bytes > 0).then(|| self.message_bytes as f64 / self.batch_bytes as f64)
    }
}

#[derive(Default)]
pub(super) struct StatisticsTotals {
    pub(super) reports: AtomicU64,
    pub(super) message_bytes: AtomicU64,
    pub(super) batch_bytes: AtomicU64,
    pub(super) batch_messages: AtomicU64,
    pub(super) queued_messages: AtomicU64,
    /// The idempotent producer has its producer id (`eos.idemp_state` is `Assigned`).
    pub(super) producer_id_assigned: AtomicBool,
}

impl ProducerContext<StrategyPartitioner> for SinkContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let shared = &self.shared;
        shared.outstanding.fetch_sub(1, Ordering::AcqRel);
        if opaque & 1 == 1 {
            // Fast path: account here; nobody awaits this message.
            let enqueued = opaque >> 1;
            shared.account(result, || {
                (enqueued > 0).then(|| {
                    let enqueued = Duration::from_micros(enqueued as u64);
                    shared.epoch.elapsed().saturating_sub(enqueued)
                })
            });
            return;
        }
        if opaque & GROUP_TAG == GROUP_TAG {
            let group = shared
                .groups
                .lock()
                .ok()
                .and_then(|groups| groups.get(&((opaque >> 2) as u64)).cloned());
            shared.account(result, || None);
            if let (Err((error, _)), Some(group)) = (result, &group) {
                group.failed.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut last) = group.last_error.lock() {
                    *last = Some(error.clone());
                }
            }
            if let Some(group) = group {
                if group.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    group.done.notify_one();
                }
            }
            return;
        }
        let waiter = shared
            .waiters
            .lock()
            .ok()
            .and_then(|mut waiters| waiters.remove(&((opaque >> 2) as u64)));
        let outcome = match result {
            Ok(message) => {
                let bytes = message.payload_len() + message.key().map_or(0, <[u8]>::len);
                shared.metrics.delivered(bytes, None);
                Ok(DeliveryReport {
                    partition: message.partition(),
                    offset: message.offset(),
                })
            }
            Err((error, _)) => Err(error.clone()),
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(outcome);
        }
    }

    fn get_custom_partitioner(&self) -> Option<&StrategyPartitioner> {
        self.partitioner.as_ref()
    }
}
