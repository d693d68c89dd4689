//! A circuit breaker for the sink: after `threshold` consecutive failures it opens and sends
//! fail fast for `recovery_timeout`; then one trial send is let through (half-open), whose
//! success closes the breaker and whose failure opens it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
    trips: u64,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    recovery_timeout: Duration,
    inner: Mutex<Inner>,
    /// True while Closed with no failure counted: the common case, answered without the
    /// lock (the sending thread and the delivery-report thread would otherwise contend for
    /// it on every message).
    healthy: AtomicBool,
}

impl CircuitBreaker {
    /// `threshold` 0 disables the breaker (it never opens).
    pub fn new(threshold: u32, recovery_timeout: Duration) -> Self {
        Self {
            threshold,
            recovery_timeout,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                trial_in_flight: false,
                trips: 0,
            }),
            healthy: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent enough to
        // matter; keep going with what is there.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a send may go ahead now. In half-open state only one trial is allowed.
    pub fn allow(&self) -> bool {
        if self.healthy.load(Ordering::Acquire) {
            return true;
        }
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                let waited = inner
                    .opened_at
                    .is_some_and(|at| at.elapsed() >= self.recovery_timeout);
                if waited {
                    inner.state = BreakerState::HalfOpen;
                    inner.trial_in_flight = true;
                    tracing::info!(
                        event = "breaker",
                        "circuit breaker half-open: letting a trial send through"
                    );
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen => {
                if inner.trial_in_flight {
                    false
                } else {
                    inner.trial_in_flight = true;
                    true
                }
            }
        }
    }

    pub fn record_success(&self) {
        if self.healthy.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.lock();
        if inner.state != BreakerState::Closed {
            tracing::info!(event = "breaker", "circuit breaker closed");
        }
        inner.state = BreakerState::Closed;
        inner.consecutive_failures = 0;
        inner.trial_in_flight = false;
        inner.opened_at = None;
        self.healthy.store(true, Ordering::Release);
    }

    /// Counts a failure; returns true when this failure opened the breaker (a trip).
    pub fn record_failure(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut inner = self.lock();
        self.healthy.store(false, Ordering::Release);
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let trip = match inner.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => inner.consecutive_failures >= self.threshold,
            BreakerState::Open => false,
        };
        if trip {
            inner.state = BreakerState::Open;
            inner.opened_at = Some(Instant::now());
            inner.trial_in_flight = false;
            inner.trips += 1;
            tracing::warn!(
                event = "breaker",
                consecutive_failures = inner.consecutive_failures,
                recovery_timeout_ms = self.recovery_timeout.as_millis() as u64,
                trips = inner.trips,
                "circuit breaker opened"
            );
        }
        trip
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    pub fn trips(&self) -> u64 {
        self.lock().trips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_half_open() {
        let breaker = CircuitBreaker::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            assert!(breaker.allow());
            breaker.record_failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.trips(), 1);
        assert!(!breaker.allow(), "open: fail fast");

        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow(), "one trial after the recovery timeout");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allow(), "only one trial at a time");
        breaker.record_failure();
        assert_eq!(
            (breaker.state(), breaker.trips()),
            (BreakerState::Open, 2),
            "failed trial reopens"
        );

        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow());
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
    }

    #[test]
    fn success_resets_the_failure_count_and_zero_disables() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(60));
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Closed);

        let disabled = CircuitBreaker::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            disabled.record_failure();
        }
        assert!(disabled.allow());
    }
}
