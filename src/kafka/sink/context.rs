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
const GROUP_TAG: usize = 0b10;

/// Messages handed to librdkafka on the fast path whose delivery is awaited together, once,
/// with [`KafkaSink::wait_group`] (the results of one batch, say): one registration per
/// group, nothing per message.
pub struct DeliveryGroup {
    pub(super) id: u64,
    pub(super) state: Arc<GroupState>,
}

impl DeliveryGroup {
    /// The delivery opaque of the group's messages: its id and [`GROUP_TAG`].
    pub(super) fn opaque(&self) -> usize {
        ((self.id as usize) << 2) | GROUP_TAG
    }
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
}

/// One message's delivery report, however it was served.
pub(super) struct DeliveryRecord {
    /// The opaque the message was produced with: fast path, group, or an awaited send.
    pub(super) opaque: usize,
    /// `None` when the broker acknowledged it.
    pub(super) error: Option<RdKafkaError>,
    /// Key and payload bytes.
    pub(super) bytes: usize,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

/// Reports accounted together ([`Shared::note`] each, then [`Shared::settle`] once): the
/// counters are added to once, and a group is looked up once per run of its reports, not
/// once per message (per message it cost a lock, a hash lookup and a dozen atomic operations:
/// the largest share of stream_sum's own CPU time, docs/BENCHMARKS.md).
#[derive(Default)]
pub(super) struct Tally {
    /// Fast-path and group reports noted (an awaited send's is accounted at once).
    reports: u64,
    delivered: u64,
    delivered_bytes: u64,
    /// Deliveries since the last failure: the breaker hears of them before the next failure.
    unrecorded_success: bool,
    /// The group of the current run of reports.
    group: Option<GroupRun>,
    /// Runs of groups before it, told only once the counters are settled (a waiter woken
    /// reads them).
    finished: Vec<GroupRun>,
}

/// A run of consecutive reports of one group.
struct GroupRun {
    id: u64,
    /// `None` when the group is forgotten already.
    state: Option<Arc<GroupState>>,
    reports: u64,
}

impl Shared {
    /// Accounts one report into `tally`; [`settle`](Self::settle) finishes the accounting.
    pub(super) fn note(&self, tally: &mut Tally, report: DeliveryRecord) {
        let opaque = report.opaque;
        if opaque & 1 == 1 || opaque & GROUP_TAG == GROUP_TAG {
            tally.reports += 1;
            if opaque & 1 == 0 {
                self.count_in_group(tally, (opaque >> 2) as u64);
            }
            match &report.error {
                None => {
                    tally.delivered += 1;
                    tally.delivered_bytes += report.bytes as u64;
                    tally.unrecorded_success = true;
                    // The fast path's sampled messages carry their enqueue time.
                    let enqueued = opaque >> 1;
                    if opaque & 1 == 1 && enqueued > 0 {
                        let enqueued = Duration::from_micros(enqueued as u64);
                        self.metrics
                            .latency(self.epoch.elapsed().saturating_sub(enqueued));
                    }
                }
                Some(error) => {
                    if std::mem::take(&mut tally.unrecorded_success) {
                        self.breaker.record_success();
                    }
                    self.metrics.failed(error);
                    if self.breaker.record_failure() {
                        self.metrics.breaker_trip();
                    }
                    let group = tally.group.as_ref().and_then(|run| run.state.as_ref());
                    if let (0, Some(group)) = (opaque & 1, group) {
                        group.failed.fetch_add(1, Ordering::AcqRel);
                        if let Ok(mut last) = group.last_error.lock() {
                            *last = Some(error.clone());
                        }
                    }
                }
            }
            return;
        }
        // An awaited send: accounted at once, before its sender wakes.
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        let waiter = self
            .waiters
            .lock()
            .ok()
            .and_then(|mut waiters| waiters.remove(&((opaque >> 2) as u64)));
        let outcome = match report.error {
            None => {
                self.metrics.delivered(report.bytes, None);
                Ok(DeliveryReport {
                    partition: report.partition,
                    offset: report.offset,
                })
            }
            Some(error) => Err(error),
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(outcome);
        }
    }

    /// Counts one more report of group `id`, in a new run when the one before was another
    /// group's.
    fn count_in_group(&self, tally: &mut Tally, id: u64) {
        if tally.group.as_ref().is_none_or(|run| run.id != id) {
            if let Some(run) = tally.group.take() {
                tally.finished.push(run);
            }
            let state = self
                .groups
                .lock()
                .ok()
                .and_then(|groups| groups.get(&id).cloned());
            tally.group = Some(GroupRun {
                id,
                state,
                reports: 0,
            });
        }
        if let Some(run) = &mut tally.group {
            run.reports += 1;
        }
    }

    /// Finishes the accounting of the reports noted in `tally`: the counters, then the
    /// groups (a waiter woken by its group reads the counters and the group's failures).
    pub(super) fn settle(&self, tally: &mut Tally) {
        self.metrics
            .delivered_many(tally.delivered, tally.delivered_bytes);
        if tally.unrecorded_success {
            self.breaker.record_success();
        }
        self.outstanding.fetch_sub(tally.reports, Ordering::AcqRel);
        let runs = std::mem::take(&mut tally.finished);
        for run in runs.into_iter().chain(tally.group.take()) {
            if let Some(group) = run.state {
                if group.pending.fetch_sub(run.reports, Ordering::AcqRel) == run.reports {
                    group.done.notify_one();
                }
            }
        }
        *tally = Tally::default();
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

    /// rust-rdkafka's own poll (inside its flush) hands reports over one at a time; the
    /// sink's event loop (`events.rs`) hands them over an event at a time.
    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (message, error) = match result {
            Ok(message) => (message, None),
            Err((error, message)) => (message, Some(error.clone())),
        };
        let mut tally = Tally::default();
        self.shared.note(
            &mut tally,
            DeliveryRecord {
                opaque,
                error,
                bytes: message.payload_len() + message.key().map_or(0, <[u8]>::len),
                partition: message.partition(),
                offset: message.offset(),
            },
        );
        self.shared.settle(&mut tally);
    }

    fn get_custom_partitioner(&self) -> Option<&StrategyPartitioner> {
        self.partitioner.as_ref()
    }
}
