//! `stream_sum bench`: the benchmark spec's two phases, a check of every result, and the
//! same backlog through plain librdkafka programs, in alternating rounds.
//!
//! Phase 1 loads N random `IntegerList`s into the benchmark input topic ([`load`]). Phase 2
//! runs, `rounds` times in turn on that backlog: stream_sum as users run it (a new consumer
//! group whose commits start at the backlog, stopped once it processed it: [`processor`]),
//! then each [`baseline`] into `<output>.baseline`. Each run's new output is read back
//! ([`verify`]): it must hold N results whose sums add up to the sum of every input number.
//! Each run is timed the same way, from outside: from its first result produced to its
//! last delivered ([`watch`]), so start-up, the group's join and the stop stay out of the
//! figure; min / median / max over the rounds, and the ratio of the medians.

pub mod baseline;
mod cpu;
mod load;
mod processor;
mod verify;
mod watch;

pub use baseline::{Baseline, BaselineError, BaselineKind, Placement};
pub use watch::Timed;

use crate::config::Config;
use crate::kafka::sink::SinkError;
use crate::kafka::topic_reader::{ranges_between, ReadRangesError};
use crate::kafka::KafkaError;
use crate::stream_sum::{ensure_topics, CommitTimes, StreamSumError};
use std::fmt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use verify::{existing_partitions, new_sums, retained, scan, sum_of_list, Scanned};

/// The spec's benchmark topics.
pub const BENCH_INPUT_TOPIC: &str = "integer-list-input-benchmark";
pub const BENCH_OUTPUT_TOPIC: &str = "integer-sum-output-benchmark";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Lists to load (ignored with `skip_load`).
    pub records: u64,
    /// Process the backlog already in the input topic instead of loading a new one.
    pub skip_load: bool,
    pub input_topic: String,
    pub output_topic: String,
    /// 0: one per input partition. The baselines run as many threads.
    pub workers: usize,
    /// Also run the baselines on the same backlog, into `<output_topic>.baseline`.
    pub baseline: bool,
    /// Process the backlog with the exactly-once workers (one transaction per
    /// `stream_sum.transaction_records` results or 100 ms) instead of the at-least-once
    /// ones; the baseline is then the transactional one.
    pub exactly_once: bool,
    /// Rounds, each stream_sum then every baseline, on the same backlog.
    pub rounds: usize,
}

/// Why `stream_sum bench` could not measure, or measured a wrong result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error(transparent)]
    Processor(#[from] StreamSumError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Read(#[from] ReadRangesError),
    #[error("the baseline")]
    Baseline(#[from] BaselineError),
    #[error("the {0} thread failed")]
    Thread(&'static str, #[source] tokio::task::JoinError),
    #[error("stream_sum processed {done} of {records} records and then nothing for {limit:?}")]
    Stalled {
        limit: Duration,
        done: u64,
        records: u64,
    },
    #[error("timing a run: {0}")]
    Watch(String),
    #[error("stopped before a round was complete")]
    Interrupted,
    #[error("loaded {loaded} records but the input topic grew by {grown}: another writer?")]
    ForeignWrites { loaded: u64, grown: i64 },
    #[error("the backlog is empty")]
    EmptyBacklog,
    #[error(
        "{topic} partition {partition}: offsets {from}..{to} of this run were removed by \
         retention before they could be checked (the dev broker keeps about 5 MB per \
         partition): use fewer records"
    )]
    Trimmed {
        topic: String,
        partition: i32,
        from: i64,
        to: i64,
    },
    #[error("loading failed: {undelivered} undelivered, {failed} failed")]
    LoadFailed { undelivered: u64, failed: u64 },
    #[error(
        "topic {0} does not exist and the broker did not create it (the dev broker has no \
         CreateTopics API): create it first, or use the benchmark topics"
    )]
    MissingTopic(String),
    #[error("{topic} partition {partition} offset {offset}: not a valid record")]
    InvalidOutput {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "output does not match: {records} results (expected {expected_records}), sum {sum} \
         (expected {expected_sum}), processed {processed}, dead-lettered {dead}"
    )]
    Mismatch {
        records: u64,
        expected_records: u64,
        sum: i64,
        expected_sum: i64,
        processed: u64,
        dead: u64,
    },
}

/// One round: stream_sum, then each baseline in [`BenchReport::baselines`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub stream_sum: Timed,
    pub baselines: Vec<Timed>,
    /// stream_sum's exactly-once commits: how many, and the workers' seconds in them and in
    /// the dev broker's plain commits (summed over workers).
    pub commits: CommitTimes,
}

/// The outcome of verified runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub records: u64,
    pub workers: usize,
    pub exactly_once: bool,
    pub input_sum: i64,
    pub baselines: Vec<Baseline>,
    pub rounds: Vec<Round>,
}

/// min, median and max of `values` (not empty).
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (values[0], median, values[n - 1])
}

impl BenchReport {
    fn rate(&self, timed: &Timed) -> f64 {
        self.records as f64 / timed.seconds.max(f64::MIN_POSITIVE)
    }

    /// stream_sum's msg/s: min, median, max over the rounds.
    pub fn stream_sum_rates(&self) -> (f64, f64, f64) {
        spread(
            self.rounds
                .iter()
                .map(|r| self.rate(&r.stream_sum))
                .collect(),
        )
    }

    /// The `index`th baseline's msg/s: min, median, max over the rounds.
    pub fn baseline_rates(&self, index: usize) -> (f64, f64, f64) {
        spread(
            self.rounds
                .iter()
                .filter_map(|r| r.baselines.get(index))
                .map(|t| self.rate(t))
                .collect(),
        )
    }

    /// The median over the rounds of this process's CPU microseconds per record, for the
    /// runs `pick` chooses; `None` without a CPU figure.
    fn cpu_us_per_record(&self, pick: impl Fn(&Round) -> Option<&Timed>) -> Option<f64> {
        let values: Option<Vec<f64>> = self
            .rounds
            .iter()
            .map(|round| {
                let seconds = pick(round)?.cpu_seconds?;
                Some(seconds * 1e6 / self.records.max(1) as f64)
            })
            .collect();
        values.filter(|v| !v.is_empty()).map(|v| spread(v).1)
    }

    /// The median round's msg/s (the spec's figure).
    pub fn msg_per_sec(&self) -> f64 {
        self.stream_sum_rates().1
    }
}

impl fmt::Display for BenchReport {
    /// The spec's result line (the median round), then each contender over the rounds, the
    /// ratios, and each round.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (min, median, max) = self.stream_sum_rates();
        let startup = spread(
            self.rounds
                .iter()
                .map(|r| r.stream_sum.startup_seconds)
                .collect(),
        )
        .1;
        write!(
            f,
            "records={} seconds={:.3} msg_per_sec={:.0}\n  stream_sum  workers={} {} rounds={} msg_per_sec min/median/max={:.0}/{:.0}/{:.0} startup_seconds={:.3}",
            self.records,
            self.records as f64 / median.max(f64::MIN_POSITIVE),
            median,
            self.workers,
            if self.exactly_once {
                "exactly-once (transactions, acks=all idempotent)"
            } else {
                "at-least-once (acks=all idempotent)"
            },
            self.rounds.len(),
            min,
            median,
            max,
            startup,
        )?;
        let stream_sum_cpu = self.cpu_us_per_record(|round| Some(&round.stream_sum));
        if let Some(cpu) = stream_sum_cpu {
            write!(f, " cpu_us_per_record={cpu:.2}")?;
        }
        for (index, baseline) in self.baselines.iter().enumerate() {
            let (low, middle, high) = self.baseline_rates(index);
            let ratios = spread(
                self.rounds
                    .iter()
                    .filter_map(|r| {
                        Some(self.rate(&r.stream_sum) / self.rate(r.baselines.get(index)?))
                    })
                    .collect(),
            );
            write!(
                f,
                "\n  baseline    (librdkafka batch loop, {} threads, {}) msg_per_sec={:.0} min/median/max={:.0}/{:.0}/{:.0}\n  ratio       stream_sum / baseline ({}) = {:.2} (medians; per round {:.2}..{:.2})",
                self.workers,
                baseline.label(),
                middle,
                low,
                middle,
                high,
                baseline.label(),
                median / middle.max(f64::MIN_POSITIVE),
                ratios.0,
                ratios.2,
            )?;
            let baseline_cpu = self.cpu_us_per_record(|round| round.baselines.get(index));
            if let (Some(ours), Some(theirs)) = (stream_sum_cpu, baseline_cpu) {
                write!(
                    f,
                    "\n  cpu         this process, us per record (medians): stream_sum {ours:.2}, baseline ({}) {theirs:.2}: {:.2}x the baseline's",
                    baseline.label(),
                    ours / theirs.max(f64::MIN_POSITIVE),
                )?;
            }
        }
        if self.exactly_once {
            // The median round's (by stream_sum's rate): where its workers' time went.
            let mut by_rate: Vec<&Round> = self.rounds.iter().collect();
            by_rate.sort_by(|a, b| {
                self.rate(&a.stream_sum)
                    .total_cmp(&self.rate(&b.stream_sum))
            });
            if let Some(round) = by_rate.get(by_rate.len() / 2) {
                let worker_seconds = round.stream_sum.seconds * self.workers as f64;
                let share = |seconds: f64| 100.0 * seconds / worker_seconds.max(f64::MIN_POSITIVE);
                let commits = &round.commits;
                let all = (commits.committing + commits.plain_committing).as_secs_f64();
                let plain = commits.plain_committing.as_secs_f64();
                write!(
                    f,
                    "\n  commits     stream_sum, median round: {} transactions; workers {:.2} s in commits ({:.0}% of their time), {:.2} s of it in the plain offset commits only the dev broker needs ({:.0}%)",
                    commits.transactions,
                    all,
                    share(all),
                    plain,
                    share(plain),
                )?;
            }
        }
        if self.rounds.len() > 1 {
            for (number, round) in self.rounds.iter().enumerate() {
                write!(
                    f,
                    "\n  round {:<2}    stream_sum {:.0}",
                    number + 1,
                    self.rate(&round.stream_sum)
                )?;
                for (baseline, timed) in self.baselines.iter().zip(&round.baselines) {
                    write!(f, ", {} {:.0}", baseline.label(), self.rate(timed))?;
                }
                write!(f, " msg/s")?;
            }
        }
        Ok(())
    }
}

/// Checks a run's new output against the backlog.
fn check(
    output: &Scanned,
    expected_records: u64,
    expected_sum: i64,
    processed: u64,
    dead: u64,
) -> Result<(), BenchError> {
    if output.records != expected_records || output.sum != expected_sum || dead > 0 {
        return Err(BenchError::Mismatch {
            records: output.records,
            expected_records,
            sum: output.sum,
            expected_sum,
            processed,
            dead,
        });
    }
    Ok(())
}

fn baseline(kind: BaselineKind, placement: Placement) -> Baseline {
    Baseline { kind, placement }
}

/// Loads (or reuses) the backlog, runs the rounds and verifies every output. Errors when an
/// output does not match.
pub async fn run_bench(
    config: &Config,
    options: BenchOptions,
    shutdown: CancellationToken,
) -> Result<BenchReport, BenchError> {
    let mut config = config.clone();
    config.stream_sum.input_topic = options.input_topic.clone();
    config.stream_sum.output_topic = options.output_topic.clone();
    ensure_topics(&config, &[&options.input_topic, &options.output_topic]).await?;
    // Both must exist before loading: the output's end offsets bound what is verified.
    let partitions = existing_partitions(&config, &options.input_topic)?;
    let output_partitions = existing_partitions(&config, &options.output_topic)?;

    let (backlog, expected_records, expected_sum) = if options.skip_load {
        let backlog = retained(&config, &options.input_topic)?;
        let found = scan(&config, &options.input_topic, &backlog, sum_of_list)?;
        tracing::info!(
            records = found.records,
            "phase 1 skipped: reusing the backlog in the input topic"
        );
        (backlog, found.records, found.sum)
    } else {
        let before = retained(&config, &options.input_topic)?;
        let loader_config = config.clone();
        let records = options.records;
        let sum =
            tokio::task::spawn_blocking(move || load::load(&loader_config, records, partitions))
                .await
                .map_err(|e| BenchError::Thread("backlog loader", e))??;
        let after = retained(&config, &options.input_topic)?;
        let backlog = ranges_between(&before, &after);
        let loaded: i64 = backlog.iter().map(|r| r.end - r.start).sum();
        if loaded as u64 != records {
            return Err(BenchError::ForeignWrites {
                loaded: records,
                grown: loaded,
            });
        }
        (backlog, records, sum)
    };
    if expected_records == 0 {
        return Err(BenchError::EmptyBacklog);
    }
    let workers = match options.workers {
        0 => partitions,
        workers => workers.min(partitions),
    };
    let baselines = match (options.baseline, options.exactly_once) {
        (false, _) => vec![],
        (true, true) => vec![
            baseline(BaselineKind::Transactional, Placement::Partitioner),
            baseline(BaselineKind::Transactional, Placement::InputPartition),
        ],
        (true, false) => vec![
            baseline(BaselineKind::Acks1, Placement::Partitioner),
            baseline(BaselineKind::Idempotent, Placement::Partitioner),
            baseline(BaselineKind::Idempotent, Placement::InputPartition),
        ],
    };
    let baseline_topic = format!("{}.baseline", options.output_topic);
    let baseline_partitions = if baselines.is_empty() {
        0
    } else {
        ensure_topics(&config, &[&baseline_topic]).await?;
        existing_partitions(&config, &baseline_topic)?
    };
    let mut report = BenchReport {
        records: expected_records,
        workers,
        exactly_once: options.exactly_once,
        input_sum: expected_sum,
        baselines: baselines.clone(),
        rounds: Vec::new(),
    };
    let pid = std::process::id();
    for round in 1..=options.rounds.max(1) {
        if shutdown.is_cancelled() {
            break;
        }
        tracing::info!(
            round,
            records = expected_records,
            workers,
            "stream_sum on the backlog"
        );
        let before = retained(&config, &options.output_topic)?;
        let watch = watch::Watch::start(&config, &options.output_topic, output_partitions)?;
        let cpu = cpu::CpuClock::start();
        let summary = processor::run_processor(
            &config,
            &backlog,
            expected_records,
            workers,
            options.exactly_once,
            &format!("stream-sum-bench-{pid}-{round}"),
            &shutdown,
        )
        .await?;
        let cpu_seconds = cpu.elapsed();
        if shutdown.is_cancelled() {
            // Stopped before the backlog was done: nothing to check.
            break;
        }
        let commits = summary.commits;
        let output = new_sums(&config, &options.output_topic, &before)?;
        let stream_sum = Timed {
            cpu_seconds,
            ..watch.finish(output.first_ms)?
        };
        check(
            &output,
            expected_records,
            expected_sum,
            summary.processed,
            summary.dead_lettered,
        )?;
        let mut timings = Vec::new();
        for &contender in &baselines {
            if shutdown.is_cancelled() {
                break;
            }
            tracing::info!(round, baseline = contender.label(), topic = %baseline_topic, "baseline on the backlog");
            let before = retained(&config, &baseline_topic)?;
            let watch = watch::Watch::start(&config, &baseline_topic, baseline_partitions)?;
            let cpu = cpu::CpuClock::start();
            let produced = {
                let (config, backlog, topic) =
                    (config.clone(), backlog.clone(), baseline_topic.clone());
                let run_id = format!(
                    "{pid}-{round}-{}",
                    contender.label().replace([' ', ','], "-")
                );
                tokio::task::spawn_blocking(move || {
                    baseline::run_baseline(
                        &config,
                        &backlog,
                        &topic,
                        baseline_partitions,
                        workers,
                        contender,
                        &run_id,
                    )
                })
                .await
                .map_err(|e| BenchError::Thread("baseline", e))??
            };
            let cpu_seconds = cpu.elapsed();
            let output = new_sums(&config, &baseline_topic, &before)?;
            let timed = Timed {
                cpu_seconds,
                ..watch.finish(output.first_ms)?
            };
            check(&output, expected_records, expected_sum, produced, 0)?;
            timings.push(timed);
        }
        if timings.len() == baselines.len() {
            report.rounds.push(Round {
                stream_sum,
                baselines: timings,
                commits,
            });
        }
    }
    if report.rounds.is_empty() {
        return Err(BenchError::Interrupted);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_takes_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(vec![4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(spread(vec![]), (0.0, 0.0, 0.0));
    }
}
