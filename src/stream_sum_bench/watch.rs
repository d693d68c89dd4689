//! How every contender is timed, from outside and the same way: from its first result
//! (the oldest output record's CreateTime, read back with the output) to the moment its
//! output's end offsets, sampled every [`SAMPLE_INTERVAL`] while it runs (one ListOffsets
//! request a sample, `read_committed`: the last stable offset), first reach where they end
//! up: the last result delivered (and, in transactions, committed). Start-up (clients, the
//! group's join) comes before, the stop (commits, leaving the group) after. The start is not
//! a sample: a sampling thread starved of CPU by the contender's own threads would start
//! the clock late.

use super::BenchError;
use crate::config::Config;
use crate::kafka::KafkaError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SAMPLE_INTERVAL: Duration = Duration::from_millis(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A run's timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    /// First result produced to the last delivered.
    pub seconds: f64,
    /// The watch's start (just before the run's) to the first result produced.
    pub startup_seconds: f64,
    /// This process's CPU time over the whole run, start-up and stop included (see
    /// [`super::cpu`]); `None` where it cannot be read.
    pub cpu_seconds: Option<f64>,
}

/// Wall-clock ms since the epoch, with the fraction (CreateTime is wall-clock too).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64() * 1_000.0)
}

/// When (wall-clock ms) and the end offsets added up.
type Sample = (f64, i64);

/// Samples a topic's end offsets on a thread of its own until [`Watch::finish`].
pub(super) struct Watch {
    stop: Arc<AtomicBool>,
    started_ms: f64,
    /// Taken by [`Watch::finish`].
    sampler: Option<std::thread::JoinHandle<Result<Vec<Sample>, BenchError>>>,
}

impl Drop for Watch {
    /// A run that failed drops its watch unfinished: the sampling stops.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Watch {
    /// Takes the first sample now, then one every [`SAMPLE_INTERVAL`].
    pub(super) fn start(
        config: &Config,
        topic: &str,
        partitions: usize,
    ) -> Result<Self, BenchError> {
        let mut client = crate::kafka::client_config(
            &config.kafka,
            crate::kafka::ClientRole::Admin,
            "stream_sum-bench-watch",
        )?;
        client.set("isolation.level", "read_committed");
        let consumer: BaseConsumer = client.create().map_err(KafkaError::from)?;
        let mut latest = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            latest
                .add_partition_offset(topic, partition, Offset::End)
                .map_err(KafkaError::from)?;
        }
        let sample = move || -> Result<Sample, BenchError> {
            let ends = consumer
                .offsets_for_times(latest.clone(), REQUEST_TIMEOUT)
                .map_err(KafkaError::from)?;
            let total = ends
                .elements()
                .iter()
                .map(|element| match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => 0,
                })
                .sum();
            Ok((now_ms(), total))
        };
        let first = sample()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("stream-sum-bench-watch".into())
                .spawn(move || {
                    let mut samples = vec![first];
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(SAMPLE_INTERVAL);
                        samples.push(sample()?);
                    }
                    // The offsets after the run, the run's last word.
                    samples.push(sample()?);
                    Ok(samples)
                })
                .map_err(|e| BenchError::Watch(e.to_string()))?
        };
        Ok(Self {
            stop,
            started_ms: first.0,
            sampler: Some(sampler),
        })
    }

    /// Stops sampling (call it once the run returned) and times the run whose first result
    /// was produced at `first_result_ms`.
    pub(super) fn finish(mut self, first_result_ms: Option<i64>) -> Result<Timed, BenchError> {
        self.stop.store(true, Ordering::Release);
        let sampler = self
            .sampler
            .take()
            .ok_or_else(|| BenchError::Watch("already finished".into()))?;
        let samples = sampler
            .join()
            .map_err(|_| BenchError::Watch("the sampling thread panicked".into()))??;
        let Some(&(_, after)) = samples.last() else {
            return Err(BenchError::Watch("no samples".into()));
        };
        let delivered_ms = samples
            .iter()
            .find(|(_, offsets)| *offsets >= after)
            .map(|(at, _)| *at);
        match (first_result_ms, delivered_ms) {
            (Some(first), Some(last)) => {
                let first = first as f64;
                Ok(Timed {
                    seconds: ((last - first) / 1_000.0).max(SAMPLE_INTERVAL.as_secs_f64()),
                    startup_seconds: ((first - self.started_ms) / 1_000.0).max(0.0),
                    cpu_seconds: None,
                })
            }
            _ => Err(BenchError::Watch(
                "the output holds no timestamped result".into(),
            )),
        }
    }
}
