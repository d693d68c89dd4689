//! Exponential backoff with jitter, for retrying a service that is unreachable or busy.
//!
//! Delays double from `initial` up to `max`; each delay is drawn uniformly from its upper
//! half ("equal jitter"), so many clients that failed together do not retry together.

use crate::report::Report;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why [`retry`] returned without a value.
#[derive(Debug)]
pub enum RetryError<E> {
    /// A non-transient error: retrying would not help.
    Failed(E),
    /// Shutdown came while waiting to retry a transient error.
    Stopped(E),
}

/// Runs `operation` until it succeeds, retrying the errors `is_transient` accepts after a
/// [`Backoff::default`] delay, and gives up when `shutdown` fires during a wait. Retries are
/// logged at the 1st, 2nd, 4th, 8th... attempt, so an outage does not flood the log.
pub async fn retry<T, E, F, Fut>(
    service: &'static str,
    shutdown: &CancellationToken,
    mut operation: F,
    is_transient: impl Fn(&E) -> bool,
) -> Result<T, RetryError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    let mut backoff = Backoff::default();
    let stop = shutdown.clone();
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) => {
                let delay = backoff.next_delay();
                if backoff.attempts().is_power_of_two() {
                    tracing::warn!(
                        event = "retry",
                        service,
                        error = %Report(&error),
                        attempt = backoff.attempts(),
                        retry_in_ms = delay.as_millis() as u64,
                        "service unreachable; retrying"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Err(RetryError::Stopped(error)),
                }
            }
            Err(error) => return Err(RetryError::Failed(error)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            next: initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the base delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
        self.attempts = 0;
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s: quick on a blip, gentle on an outage.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test error with a name to match on.
    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("{0}")]
    struct Failure(&'static str);

    #[tokio::test]
    async fn retry_retries_transient_errors_only() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let result: Result<u32, _> = retry(
            "test",
            &shutdown,
            || {
                calls += 1;
                let outcome = if calls < 3 {
                    Err(Failure("transient"))
                } else {
                    Ok(calls)
                };
                async move { outcome }
            },
            |_| true,
        )
        .await;
        assert!(matches!(result, Ok(3)));

        let result: Result<(), _> = retry(
            "test",
            &shutdown,
            || async { Err(Failure("fatal")) },
            |_| false,
        )
        .await;
        assert!(matches!(result, Err(RetryError::Failed(Failure("fatal")))));

        shutdown.cancel();
        let result: Result<(), _> = retry(
            "test",
            &shutdown,
            || async { Err(Failure("down")) },
            |_| true,
        )
        .await;
        assert!(matches!(result, Err(RetryError::Stopped(Failure("down")))));
    }

    #[test]
    fn delays_grow_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let bases = [100, 200, 400, 800, 800, 800];
        for base in bases {
            let delay = backoff.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                delay >= base / 2 && delay <= base,
                "{delay:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
        assert_eq!(backoff.attempts(), 6);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
