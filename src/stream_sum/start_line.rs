//! The workers' start line: each worker takes its input partitions once every worker of
//! the process is ready to process them (consumer made, output producer connected,
//! transactions initialised).
//!
//! Getting ready waits on librdkafka's timers (a transaction coordinator is looked for once
//! a broker is up, else every 0.5 s: 2 of 9 exactly-once workers' `init_transactions` took
//! 502 ms instead of 52), so workers were ready up to half a second apart, and the first
//! ones worked alone meanwhile. From the start line on, they start together: with static
//! shares their processing does, and in a consumer group the members join together (one
//! rebalance, not one per member). A worker that ends before it is ready, or the process
//! stopping, releases the others; nobody waits more than [`PATIENCE`].

use super::Membership;
use super::StreamSumError;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The longest a ready worker waits for the others; then it starts anyway.
const PATIENCE: Duration = Duration::from_secs(30);
/// How often a waiting worker looks at its stop token.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Where the workers of one process wait for each other.
pub struct StartLine {
    /// Per worker: still getting ready (not arrived, not gone).
    pending: Mutex<Vec<bool>>,
    changed: Condvar,
}

impl StartLine {
    pub fn new(workers: usize) -> Self {
        Self {
            pending: Mutex::new(vec![true; workers]),
            changed: Condvar::new(),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Vec<bool>> {
        // Only flags behind the lock: a panic while holding it leaves nothing half-done.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Worker `index` is ready: waits until no worker is still getting ready, `stop` is
    /// cancelled, or [`PATIENCE`] has passed.
    pub fn arrive(&self, index: usize, stop: &CancellationToken) {
        let deadline = Instant::now() + PATIENCE;
        let mut pending = self.pending();
        if let Some(flag) = pending.get_mut(index) {
            *flag = false;
        }
        self.changed.notify_all();
        loop {
            let now = Instant::now();
            if !pending.iter().any(|waiting| *waiting) || stop.is_cancelled() || now >= deadline {
                if now >= deadline {
                    tracing::warn!(
                        worker = index,
                        "the other workers are not ready: starting without them"
                    );
                }
                return;
            }
            pending = self
                .changed
                .wait_timeout(pending, STOP_CHECK.min(deadline - now))
                .map(|(pending, _)| pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Worker `index` has ended: nobody waits for it any more (nothing changes if it had
    /// arrived).
    pub fn leave(&self, index: usize) {
        if let Some(flag) = self.pending().get_mut(index) {
            *flag = false;
        }
        self.changed.notify_all();
    }
}

/// Leaves the start line when dropped, however the worker ended: with an error, or a
/// panic (then `stop` is cancelled too, as a failed worker's error would have it).
pub struct Departure<'a> {
    pub start_line: &'a StartLine,
    pub index: usize,
    pub stop: &'a CancellationToken,
}

impl Drop for Departure<'_> {
    fn drop(&mut self) {
        self.start_line.leave(self.index);
        if std::thread::panicking() {
            self.stop.cancel();
        }
    }
}

/// A worker's place: its index, how it gets its partitions, and the start line it waits at
/// before it does.
#[derive(Clone, Copy)]
pub struct Seat<'a> {
    pub index: usize,
    pub membership: Membership,
    pub start_line: &'a StartLine,
}

impl Seat<'_> {
    /// Waits at the start line, then subscribes `consumer` or assigns it its share (see
    /// [`Membership::attach`]).
    pub fn take<C: ConsumerContext>(
        self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partitions: i32,
        stop: &CancellationToken,
    ) -> Result<(), StreamSumError> {
        self.start_line.arrive(self.index, stop);
        self.membership.attach(consumer, topic, partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A line for `workers`, its stop, and `worker` run on a thread of its own with both.
    fn line_with_worker<T: Send + 'static>(
        workers: usize,
        worker: impl FnOnce(&StartLine, &CancellationToken) -> T + Send + 'static,
    ) -> (
        Arc<StartLine>,
        CancellationToken,
        std::thread::JoinHandle<T>,
    ) {
        let line = Arc::new(StartLine::new(workers));
        let stop = CancellationToken::new();
        let thread = {
            let (line, stop) = (line.clone(), stop.clone());
            std::thread::spawn(move || worker(&line, &stop))
        };
        (line, stop, thread)
    }

    #[test]
    fn workers_start_together_and_a_worker_that_left_is_not_waited_for() {
        let (line, stop, early) = line_with_worker(3, |line, stop| {
            line.arrive(0, stop);
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!early.is_finished(), "worker 0 waits for the others");
        line.leave(2);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!early.is_finished(), "worker 1 is still getting ready");
        let released = Instant::now();
        line.arrive(1, &stop);
        assert!(
            early.join().unwrap() >= released,
            "worker 0 started with worker 1"
        );
    }

    #[test]
    fn a_worker_that_panics_releases_the_others_and_stops_them() {
        let (line, stop, failing) = line_with_worker(2, |line, stop| {
            let _departure = Departure {
                start_line: line,
                index: 1,
                stop,
            };
            panic!("a worker's set-up panicked");
        });
        assert!(failing.join().is_err());
        assert!(stop.is_cancelled(), "the others are told to stop");
        line.arrive(0, &CancellationToken::new());
    }

    #[test]
    fn stopping_releases_a_waiting_worker() {
        let line = StartLine::new(2);
        let stop = CancellationToken::new();
        stop.cancel();
        line.arrive(0, &stop);
    }
}
