//! Sending at a fixed rate from a plain thread: [`Pacer`] sleeps until message `n` is due,
//! measured from the start, so short stalls are caught up instead of lowering the rate.

use std::time::{Duration, Instant};

/// Paces a sending loop to `rate` messages per second (0 = unpaced).
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    started: Instant,
    rate: u64,
}

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Self {
            started: Instant::now(),
            rate,
        }
    }

    pub fn is_paced(&self) -> bool {
        self.rate > 0
    }

    /// When message `sent` (counting from 0) is due, measured from the start.
    pub fn due(&self, sent: u64) -> Option<Duration> {
        (self.rate > 0).then(|| Duration::from_secs_f64(sent as f64 / self.rate as f64))
    }

    /// Sleeps until message `sent` is due; waits shorter than `at_least` are skipped (a
    /// sleep that short costs more than it paces).
    pub fn wait_for(&self, sent: u64, at_least: Duration) {
        let ahead = self
            .due(sent)
            .and_then(|due| due.checked_sub(self.started.elapsed()));
        if let Some(ahead) = ahead.filter(|ahead| *ahead > at_least) {
            std::thread::sleep(ahead);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_n_is_due_n_over_rate_seconds_after_the_start() {
        let pacer = Pacer::new(1_000);
        assert_eq!(pacer.due(0), Some(Duration::ZERO));
        assert_eq!(pacer.due(2_500), Some(Duration::from_millis(2_500)));
        assert_eq!(Pacer::new(0).due(10), None, "rate 0: unpaced");
    }

    #[test]
    fn waits_until_the_message_is_due() {
        let pacer = Pacer::new(100);
        pacer.wait_for(5, Duration::ZERO);
        assert!(pacer.started.elapsed() >= Duration::from_millis(50));
        // Already due: returns at once.
        pacer.wait_for(1, Duration::ZERO);
    }
}
