//! The workers' threads: one named thread a worker, each in its seat at one start line,
//! and a worker's failure (an error or a panic) stops the others: the process then exits
//! with the error for its supervisor to restart it (with static shares, nobody else would
//! read its partitions).

use super::{Departure, Membership, Seat, StartLine, StreamSumError};
use crate::report::Report;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs `work(seat, stop)` for each of `workers` workers on threads named `name-<index>`,
/// seated at one start line, and waits for all; the first error wins.
pub(super) async fn run_seated<F>(
    name: &str,
    workers: usize,
    static_assignment: bool,
    stop: CancellationToken,
    work: F,
) -> Result<(), StreamSumError>
where
    F: Fn(Seat<'_>, &CancellationToken) -> Result<(), StreamSumError> + Send + Sync + 'static,
{
    let start_line = StartLine::new(workers);
    run_on_threads(name, workers, move |index| {
        let _departure = Departure {
            start_line: &start_line,
            index,
            stop: &stop,
        };
        let seat = Seat {
            index,
            membership: Membership::of(static_assignment, index, workers),
            start_line: &start_line,
        };
        let outcome = work(seat, &stop);
        if outcome.is_err() {
            stop.cancel();
        }
        outcome
    })
    .await
}

/// Runs `work(index)` on `workers` named threads and waits for all; the first error wins.
async fn run_on_threads<F>(name: &str, workers: usize, work: F) -> Result<(), StreamSumError>
where
    F: Fn(usize) -> Result<(), StreamSumError> + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        let work = work.clone();
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || {
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(index)));
                let _ = done.send(outcome.unwrap_or_else(|panic| {
                    let reason = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panicked".into());
                    Err(StreamSumError::WorkerPanicked {
                        worker: index,
                        reason,
                    })
                }));
            })
            .map_err(StreamSumError::Thread)?;
        threads.push(finished);
    }
    let mut first_error = None;
    for (index, finished) in threads.into_iter().enumerate() {
        let outcome = finished
            .await
            .unwrap_or(Err(StreamSumError::WorkerPanicked {
                worker: index,
                reason: "thread ended without a result".into(),
            }));
        if let Err(error) = outcome {
            tracing::error!(worker = index, error = %Report(&error), "worker failed");
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}
