//! What server_kafka counts: answers by outcome (shared by the consumer tasks, read by the
//! status line and the summary), request latency, and the summary printed at exit.

use crate::common::SeckillOutcome;
use crate::redis_state::ActivitySnapshot;
use hdrhistogram::Histogram;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters shared by the consumer tasks and the status line.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Milliseconds since the run started: first message received, last one finished.
    first_received_ms: AtomicU64,
    last_finished_ms: AtomicU64,
    /// First decisions, by `SeckillOutcome as usize`.
    first: [AtomicU64; SeckillOutcome::ALL.len()],
    /// Requests whose id was decided before, answered with that first outcome again.
    pub(super) repeated: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) other_activity: AtomicU64,
    /// Script calls tried again (Redis unreachable, a replica behind, a sale's state gone).
    pub(super) retried_calls: AtomicU64,
    /// Purchase script calls that decided, and the requests they carried.
    pub(super) calls: AtomicU64,
    pub(super) called_requests: AtomicU64,
}

impl ServerCounters {
    /// Adds `count` first answers of `outcome`.
    pub(super) fn add(&self, outcome: SeckillOutcome, count: u64) {
        self.first[outcome as usize].fetch_add(count, Ordering::Relaxed);
    }

    /// A message was received at `at` (the first call marks the start of the busy window).
    pub(super) fn received(&self, started: Instant, at: Instant) {
        let since_start = at.saturating_duration_since(started).as_millis() as u64;
        // Only the first call changes it (0 means unset; a 0 ms start is counted as 1).
        let _ = self.first_received_ms.compare_exchange(
            0,
            since_start.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(super) fn finished(&self, started: Instant) {
        self.last_finished_ms
            .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn active(&self) -> Duration {
        let first = self.first_received_ms.load(Ordering::Relaxed);
        let last = self.last_finished_ms.load(Ordering::Relaxed);
        Duration::from_millis(last.saturating_sub(first))
    }

    pub fn snapshot(&self) -> OutcomeCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let first = |outcome: SeckillOutcome| get(&self.first[outcome as usize]);
        OutcomeCounts {
            success: first(SeckillOutcome::Success),
            sold_out: first(SeckillOutcome::SoldOut),
            already_bought: first(SeckillOutcome::AlreadyBought),
            timeout: first(SeckillOutcome::Timeout),
            not_started: first(SeckillOutcome::NotStarted),
            ended: first(SeckillOutcome::Ended),
            unknown_activity: first(SeckillOutcome::UnknownActivity),
            repeated: get(&self.repeated),
            malformed: get(&self.malformed),
            other_activity: get(&self.other_activity),
            retried_calls: get(&self.retried_calls),
            calls: get(&self.calls),
            called_requests: get(&self.called_requests),
        }
    }
}

/// How many messages ended how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// First decisions by outcome.
    pub success: u64,
    pub sold_out: u64,
    pub already_bought: u64,
    pub timeout: u64,
    pub not_started: u64,
    pub ended: u64,
    /// Requests for a sale that was never created (not remembered).
    pub unknown_activity: u64,
    /// Requests decided before (redeliveries, duplicated sends), answered with their first
    /// outcome again.
    pub repeated: u64,
    /// Undecodable messages, sent to the dead-letter topic.
    pub malformed: u64,
    /// Valid requests for another activity, left to that activity's group (with
    /// `seckill.activity_id` set).
    pub other_activity: u64,
    /// Script calls tried again; not messages.
    pub retried_calls: u64,
    /// Purchase script calls that decided, and the requests they carried (their mean is the
    /// batch size Redis saw).
    pub calls: u64,
    pub called_requests: u64,
}

impl OutcomeCounts {
    /// Messages fully handled.
    pub fn total(&self) -> u64 {
        self.success
            + self.sold_out
            + self.already_bought
            + self.timeout
            + self.not_started
            + self.ended
            + self.unknown_activity
            + self.repeated
            + self.malformed
            + self.other_activity
    }
}

/// Request latency (`cost_ms`: creation by the client to processing) percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            p50_ms: histogram.value_at_quantile(0.50),
            p95_ms: histogram.value_at_quantile(0.95),
            p99_ms: histogram.value_at_quantile(0.99),
            max_ms: histogram.max(),
        }
    }
}

/// Request latencies from 1 ms to 1 hour at 3 significant digits; longer ones are counted
/// as 1 hour rather than growing the histogram without bound.
pub(super) fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 3_600_000, 3)
}

/// What a run of server_kafka did.
#[derive(Debug, Clone)]
pub struct ServerSummary {
    /// The one activity served (`seckill.activity_id`), or none: every activity.
    pub activity_id: Option<u64>,
    /// Activities answered during the run.
    pub activities: usize,
    pub counts: OutcomeCounts,
    pub elapsed: Duration,
    /// From the first message received to the last one finished: the busy part of the run.
    pub active: Duration,
    pub latency: LatencySummary,
    /// The figures of the one activity served.
    pub redis: Option<ActivitySnapshot>,
    /// Payments applied, by answer (`PaymentAnswer::ALL` order).
    pub payments: [u64; 4],
    /// Reservations this server expired.
    pub expired: u64,
    /// Its longest expiry call, µs (round trip included).
    pub longest_expiry_call_us: u64,
}

impl ServerSummary {
    /// Throughput while there was work (idle time before and after is not counted).
    pub fn requests_per_sec(&self) -> f64 {
        self.counts.total() as f64 / self.active.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for ServerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        match self.activity_id {
            Some(activity_id) => writeln!(f, "server_kafka summary (activity {activity_id})")?,
            None => writeln!(
                f,
                "server_kafka summary (every activity: {} answered)",
                self.activities
            )?,
        }
        writeln!(
            f,
            "  processed       {} messages in {:.2} s busy ({:.0}/s), {:.2} s run",
            c.total(),
            self.active.as_secs_f64(),
            self.requests_per_sec(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  outcomes        success={} sold_out={} already_bought={} not_started={} ended={} timeout={} unknown_activity={} repeated={} malformed={} other_activity={} retried_calls={}",
            c.success, c.sold_out, c.already_bought, c.not_started, c.ended, c.timeout,
            c.unknown_activity, c.repeated, c.malformed, c.other_activity, c.retried_calls
        )?;
        writeln!(
            f,
            "  script calls    calls={} requests_per_call={:.1}",
            c.calls,
            c.called_requests as f64 / c.calls.max(1) as f64
        )?;
        if self.payments.iter().sum::<u64>() + self.expired > 0 {
            let p = &self.payments;
            writeln!(
                f,
                "  orders          payments paid={} late={} unknown={} already_paid={}; expired={} (longest expiry round trip {:.1} ms)",
                p[0], p[1], p[2], p[3], self.expired,
                self.longest_expiry_call_us as f64 / 1000.0
            )?;
        }
        let l = &self.latency;
        write!(
            f,
            "  latency cost_ms p50={} p95={} p99={} max={} (n={})",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count
        )?;
        match (&self.redis, self.activity_id) {
            (Some(s), Some(_)) => write!(
                f,
                "\n  redis           stock={} initial={} added={} success_counter={} over={} queued_records={}",
                s.stock.map_or("none".into(), |v| v.to_string()),
                s.initial_stock.map_or("none".into(), |v| v.to_string()),
                s.added_stock,
                s.success,
                s.over,
                s.queued_records + s.processing_records
            ),
            (None, Some(_)) => write!(f, "\n  redis           unavailable"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_cover_the_whole_range() {
        let mut histogram = latency_histogram().unwrap();
        for cost_ms in 1..=10_000 {
            histogram.saturating_record(cost_ms);
        }
        histogram.saturating_record(7_200_000); // two hours: counted as the 1 h ceiling
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 10_001);
        assert!((4_990..=5_010).contains(&summary.p50_ms), "{summary:?}");
        assert!((9_490..=9_510).contains(&summary.p95_ms), "{summary:?}");
        assert!(
            (3_599_000..=3_601_000).contains(&summary.max_ms),
            "{summary:?}"
        );
    }

    #[test]
    fn every_outcome_has_its_counter() {
        let counters = ServerCounters::default();
        for (n, outcome) in SeckillOutcome::ALL.into_iter().enumerate() {
            counters.add(outcome, n as u64 + 1);
        }
        let counts = counters.snapshot();
        assert_eq!(
            counts.total(),
            (1..=SeckillOutcome::ALL.len() as u64).sum::<u64>()
        );
        assert_eq!(counts.unknown_activity, SeckillOutcome::ALL.len() as u64);
    }
}
