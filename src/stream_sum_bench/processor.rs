//! Runs stream_sum on the bench's backlog the way a user runs it: [`run_stream_sum_with`]
//! with `stream_sum.static_assignment` (fixed partition shares, as the baseline's threads
//! have), a new group whose commits start at the backlog, stopped from outside once its
//! counters say every record of the backlog is processed (the workers then flush and
//! commit, as on Ctrl-C). In a consumer group the dev broker's coordinator sometimes left a
//! member's JoinGroup unanswered (a rebalance mid-run, records repeated, 50 s lost).

use super::verify::commit_starts;
use super::BenchError;
use crate::config::Config;
use crate::kafka::topic_reader::PartitionRange;
use crate::stream_sum::{run_stream_sum_with, Counters, StreamSumSummary};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the counters are looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(5);
/// How long the counters may stand still (the group's first join included) before the run
/// is given up.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Processes `backlog` (`records` records) with `workers` workers, at least once or exactly
/// once, as the member of group `group`; returns the run's summary.
pub(super) async fn run_processor(
    config: &Config,
    backlog: &[PartitionRange],
    records: u64,
    workers: usize,
    exactly_once: bool,
    group: &str,
    shutdown: &CancellationToken,
) -> Result<StreamSumSummary, BenchError> {
    commit_starts(config, group, backlog)?;
    let mut config = config.clone();
    config.stream_sum.group_id = group.to_string();
    config.stream_sum.workers = workers;
    config.stream_sum.exactly_once = exactly_once;
    // Fixed shares: no group to form, and no rebalance to repeat records mid-run.
    config.stream_sum.static_assignment = true;
    let counters = Arc::new(Counters::default());
    let stop = shutdown.child_token();
    let mut run = {
        let (config, counters, stop) = (config.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move { run_stream_sum_with(&config, counters, stop).await })
    };
    let mut last = (0, Instant::now());
    let mut ended = None;
    let stalled = loop {
        tokio::select! {
            // Ended before the backlog was done: an error (or a shutdown), reported below.
            outcome = &mut run => {
                ended = Some(outcome);
                break false;
            }
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        let done = counters.processed.load(Ordering::Relaxed)
            + counters.dead_lettered.load(Ordering::Relaxed);
        if done >= records {
            break false;
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > STALL_LIMIT {
            break true;
        }
    };
    stop.cancel();
    let outcome = match ended {
        Some(outcome) => outcome,
        None => run.await,
    };
    let summary = outcome.map_err(|e| BenchError::Thread("stream_sum", e))??;
    if stalled {
        return Err(BenchError::Stalled {
            limit: STALL_LIMIT,
            done: summary.processed + summary.dead_lettered,
            records,
        });
    }
    Ok(summary)
}
