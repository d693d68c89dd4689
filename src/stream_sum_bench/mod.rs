//! `stream_sum bench`: the benchmark spec's two phases and a check of the result.
//!
//! Phase 1 loads N random `IntegerList`s (2-5 ints in 0..=99) into the benchmark input topic.
//! Phase 2 processes exactly that backlog (fixed offset ranges, read by the same
//! at-least-once workers as `run`, without a consumer group) into the benchmark output
//! topic, timed from the workers' start to the last result delivered. Then the new output is
//! read back: it must hold N records whose sums add up to the sum of every input number.

use super::baseline::{run_baseline, BaselineRun};
use super::Source;
use super::StreamSumError;
use super::{at_least_once, exactly_once};
use super::{partition_count, run_on_threads, worker_consumer, BenchError, Counters};
use crate::avro::{decode_sum_result, encode_integer_list, for_each_number};
use crate::config::Config;
use crate::kafka::broker::BrokerKind;
use crate::kafka::sink::{
    Compression, KafkaMessage, KafkaSink, MessageSerializer, SerializeError, SinkConfig,
};
use crate::kafka::topic_reader::{ranges_between, read_ranges, retained_ranges, PartitionRange};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use rdkafka::consumer::BaseConsumer;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The spec's benchmark topics.
pub const BENCH_INPUT_TOPIC: &str = "integer-list-input-benchmark";
pub const BENCH_OUTPUT_TOPIC: &str = "integer-sum-output-benchmark";
/// Records the loader sends to one partition before moving to the next: whole batches.
const LOAD_CHUNK: u64 = 10_000;
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scan waits for a record it knows exists before failing.
const SCAN_IDLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Lists to load (ignored with `skip_load`).
    pub records: u64,
    /// Process the backlog already in the input topic instead of loading a new one.
    pub skip_load: bool,
    pub input_topic: String,
    pub output_topic: String,
    /// 0: one per input partition.
    pub workers: usize,
    /// Also run the baseline ([`super::baseline`]) on the same backlog, into
    /// `<output_topic>.baseline`, and compare.
    pub baseline: bool,
    /// Process the backlog with the exactly-once workers (one transaction per
    /// `stream_sum.transaction_records` results or 100 ms) instead of the at-least-once ones.
    pub exactly_once: bool,
}

/// The outcome of a verified run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub records: u64,
    pub workers: usize,
    pub exactly_once: bool,
    /// First consumed record to the last result acknowledged.
    pub seconds: f64,
    /// The workers' start (clients, assignment) up to their first consumed record.
    pub startup_seconds: f64,
    pub input_sum: i64,
    pub output_sum: i64,
    pub output_records: u64,
    /// The baseline on the same backlog, its output verified the same way.
    pub baseline: Option<BaselineRun>,
}

impl BenchReport {
    pub fn msg_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

impl fmt::Display for BenchReport {
    /// The spec's result line, then start-up and the baseline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "records={} seconds={:.3} msg_per_sec={:.0}\n  stream_sum  workers={} {} startup_seconds={:.3}",
            self.records,
            self.seconds,
            self.msg_per_sec(),
            self.workers,
            if self.exactly_once {
                "exactly-once"
            } else {
                "at-least-once"
            },
            self.startup_seconds
        )?;
        if let Some(baseline) = &self.baseline {
            write!(
                f,
                "\n  baseline    (librdkafka batch consume loop, 1 thread) seconds={:.3} msg_per_sec={:.0} startup_seconds={:.3}\n  ratio       stream_sum / baseline = {:.2}",
                baseline.elapsed.as_secs_f64(),
                baseline.msg_per_sec(),
                baseline.startup.as_secs_f64(),
                self.msg_per_sec() / baseline.msg_per_sec().max(f64::MIN_POSITIVE)
            )?;
        }
        Ok(())
    }
}

/// `IntegerList` as binary Avro, from a reused list.
struct IntegerListSerializer;

impl MessageSerializer<Vec<i32>> for IntegerListSerializer {
    fn serialize(&self, numbers: &Vec<i32>, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        encode_integer_list(numbers, buffer);
        Ok(())
    }

    fn content_type(&self) -> &str {
        "avro/binary"
    }
}

/// Runs both phases and verifies the output. Errors when the output does not match.
pub async fn run_bench(
    config: &Config,
    options: BenchOptions,
    shutdown: CancellationToken,
) -> Result<BenchReport, StreamSumError> {
    let mut config = config.clone();
    config.stream_sum.input_topic = options.input_topic.clone();
    config.stream_sum.output_topic = options.output_topic.clone();
    super::ensure_topics(&config, &[&options.input_topic, &options.output_topic]).await?;
    // Both must exist before loading: the output's end offsets bound what is verified.
    let partitions = existing_partitions(&config, &options.input_topic)?;
    existing_partitions(&config, &options.output_topic)?;

    let (backlog, expected_records, expected_sum) = if options.skip_load {
        let backlog = retained(&config, &options.input_topic)?;
        let (records, sum) = scan(&config, &options.input_topic, &backlog, sum_of_list)?;
        tracing::info!(
            records,
            "phase 1 skipped: reusing the backlog in the input topic"
        );
        (backlog, records, sum)
    } else {
        let before = retained(&config, &options.input_topic)?;
        let loader_config = config.clone();
        let records = options.records;
        let sum = tokio::task::spawn_blocking(move || load(&loader_config, records, partitions))
            .await
            .map_err(|e| BenchError::Thread("backlog loader", e))??;
        let after = retained(&config, &options.input_topic)?;
        let backlog = ranges_between(&before, &after);
        let loaded: i64 = backlog.iter().map(|r| r.end - r.start).sum();
        if loaded as u64 != records {
            return Err(BenchError::ForeignWrites {
                loaded: records,
                grown: loaded,
            }
            .into());
        }
        (backlog, records, sum)
    };
    if expected_records == 0 {
        return Err(BenchError::EmptyBacklog.into());
    }

    let workers = match options.workers {
        0 => partitions,
        workers => workers.min(partitions),
    };
    let output_before = retained(&config, &options.output_topic)?;
    tracing::info!(
        records = expected_records,
        workers,
        "phase 2: processing the backlog"
    );
    let counters = Arc::new(Counters::default());
    let stop = shutdown.clone();
    let group = format!("stream-sum-bench-{}", std::process::id());
    let broker = if options.exactly_once {
        // A failed transaction rewinds to the group's commits: they start at the backlog.
        commit_starts(&config, &group, &backlog)?;
        Some(BrokerKind::detect_for(&config.kafka, "stream_sum").await)
    } else {
        None
    };
    let started = Instant::now();
    {
        let config = config.clone();
        let counters = counters.clone();
        let backlog = backlog.clone();
        run_on_threads("stream-sum-bench", workers, move |index| {
            let mine: Vec<PartitionRange> = backlog
                .iter()
                .filter(|range| range.partition as usize % workers == index)
                .copied()
                .collect();
            match broker {
                Some(broker) => exactly_once::run_worker(
                    index,
                    &config,
                    &group,
                    Source::Ranges(mine),
                    broker,
                    &counters,
                    &stop,
                ),
                None => at_least_once::run_worker(
                    index,
                    &config,
                    &group,
                    Source::Ranges(mine),
                    &counters,
                    &stop,
                ),
            }
        })
        .await?;
    }
    let finished = Instant::now();
    let first_consumed = counters.first_consumed.get().copied().unwrap_or(finished);
    let seconds = (finished - first_consumed).as_secs_f64();
    let startup_seconds = (first_consumed - started).as_secs_f64();
    let processed = counters.processed.load(Ordering::Relaxed);
    let dead = counters.dead_lettered.load(Ordering::Relaxed);

    let (output_records, output_sum) = new_sums(&config, &options.output_topic, &output_before)?;
    let mut report = BenchReport {
        records: expected_records,
        workers,
        exactly_once: options.exactly_once,
        seconds,
        startup_seconds,
        input_sum: expected_sum,
        output_sum,
        output_records,
        baseline: None,
    };
    if output_records != expected_records || output_sum != expected_sum || dead > 0 {
        return Err(BenchError::Mismatch {
            records: output_records,
            expected_records,
            sum: output_sum,
            expected_sum,
            processed,
            dead,
        }
        .into());
    }
    if options.baseline && !shutdown.is_cancelled() {
        report.baseline =
            Some(run_baseline_checked(&config, &backlog, &options, expected_sum).await?);
    }
    Ok(report)
}

/// Runs the baseline on `backlog` into `<output_topic>.baseline` and checks its output like
/// stream_sum's: one result per record, the sums adding up.
async fn run_baseline_checked(
    config: &Config,
    backlog: &[PartitionRange],
    options: &BenchOptions,
    expected_sum: i64,
) -> Result<BaselineRun, StreamSumError> {
    let topic = format!("{}.baseline", options.output_topic);
    super::ensure_topics(config, &[&topic]).await?;
    let before = retained(config, &topic)?;
    tracing::info!(%topic, "baseline: the same backlog through a minimal librdkafka loop");
    let run = {
        let (config, backlog, topic) = (config.clone(), backlog.to_vec(), topic.clone());
        tokio::task::spawn_blocking(move || run_baseline(&config, &backlog, &topic))
            .await
            .map_err(|e| BenchError::Thread("baseline", e))??
    };
    let (records, sum) = new_sums(config, &topic, &before)?;
    if records != run.records || sum != expected_sum {
        return Err(BenchError::Mismatch {
            records,
            expected_records: run.records,
            sum,
            expected_sum,
            processed: run.records,
            dead: 0,
        }
        .into());
    }
    Ok(run)
}

/// The `SumResult`s written to `topic` since `before` (its retained ranges then): how many,
/// and what they add up to.
fn new_sums(
    config: &Config,
    topic: &str,
    before: &[PartitionRange],
) -> Result<(u64, i64), StreamSumError> {
    let after = retained(config, topic)?;
    // `ranges_between` starts a range at what is still there: a start that moved past the
    // earlier end means some of this run's records are gone, not that there were fewer.
    for now in &after {
        if let Some(earlier) = before.iter().find(|b| b.partition == now.partition) {
            if now.start > earlier.end {
                return Err(BenchError::Trimmed {
                    topic: topic.to_string(),
                    partition: now.partition,
                    from: earlier.end,
                    to: now.start,
                }
                .into());
            }
        }
    }
    scan(config, topic, &ranges_between(before, &after), |payload| {
        decode_sum_result(payload).ok()
    })
}

/// Commits each range's start for `group`, where its workers begin.
fn commit_starts(
    config: &Config,
    group: &str,
    backlog: &[PartitionRange],
) -> Result<(), StreamSumError> {
    let consumer = worker_consumer(
        config,
        group,
        crate::kafka::statistics::StatisticsContext,
        |_| {},
    )?;
    let mut starts = TopicPartitionList::new();
    for range in backlog {
        starts.add_partition_offset(
            &config.stream_sum.input_topic,
            range.partition,
            Offset::Offset(range.start),
        )?;
    }
    consumer.commit(&starts, CommitMode::Sync)?;
    Ok(())
}

/// The partition count of a topic the bench needs, or an error that says what to do.
fn existing_partitions(config: &Config, topic: &str) -> Result<usize, StreamSumError> {
    partition_count(config, topic).map_err(|error| match error {
        StreamSumError::NoSuchTopic(topic) => BenchError::MissingTopic(topic).into(),
        other => other,
    })
}

/// Phase 1: sends `records` random lists and returns the sum of all their numbers.
fn load(config: &Config, records: u64, partitions: usize) -> Result<i64, StreamSumError> {
    let mut sink_config =
        SinkConfig::new(config.kafka.clone(), config.stream_sum.input_topic.clone());
    sink_config.client_id = "stream_sum-bench-loader".into();
    sink_config.linger = Duration::from_millis(20);
    sink_config.batch_size = 1_000_000;
    sink_config.batch_messages = 10_000;
    sink_config.compression = Compression::Lz4;
    sink_config.content_type_header = false;
    sink_config.breaker_threshold = 0;
    let sink = KafkaSink::with_serializer(sink_config, IntegerListSerializer)?;
    let bar = ProgressBar::with_draw_target(Some(records), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("phase 1 {bar:40} {pos}/{len} lists {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rng = rand::rng();
    let mut message = KafkaMessage::new(Vec::with_capacity(5));
    let mut total = 0_i64;
    for n in 0..records {
        message.value.clear();
        for _ in 0..rng.random_range(2..=5) {
            let number = rng.random_range(0..=99);
            total += i64::from(number);
            message.value.push(number);
        }
        // Whole batches to one partition, partitions in turn: an even, well-batched load.
        message.partition = Some(((n / LOAD_CHUNK) % partitions as u64) as i32);
        sink.enqueue(&message)?;
        if n % 10_000 == 0 {
            bar.set_position(n);
        }
    }
    let undelivered = sink.flush_blocking(Duration::from_secs(120))?;
    bar.finish_and_clear();
    let metrics = sink.metrics();
    if undelivered > 0 || metrics.messages_failed > 0 {
        return Err(BenchError::LoadFailed {
            undelivered,
            failed: metrics.messages_failed,
        }
        .into());
    }
    tracing::info!(records, "phase 1: backlog loaded");
    Ok(total)
}

fn sum_of_list(payload: &[u8]) -> Option<i64> {
    let mut sum = 0_i64;
    for_each_number(payload, |n| sum += i64::from(n)).ok()?;
    Some(sum)
}

/// What the topic holds now, per partition: from the oldest retained offset to the end.
fn retained(config: &Config, topic: &str) -> Result<Vec<PartitionRange>, StreamSumError> {
    let consumer: BaseConsumer = crate::kafka::client_config(
        &config.kafka,
        crate::kafka::ClientRole::Admin,
        "stream_sum-bench-metadata",
    )?
    .create()?;
    Ok(retained_ranges(&consumer, topic, METADATA_TIMEOUT)?)
}

/// Reads `ranges` of `topic` and returns how many records `value` accepted and the sum of
/// what it returned. A record it rejects fails the scan.
fn scan(
    config: &Config,
    topic: &str,
    ranges: &[PartitionRange],
    value: impl Fn(&[u8]) -> Option<i64>,
) -> Result<(u64, i64), StreamSumError> {
    let consumer = worker_consumer(
        config,
        "stream-sum-bench-scan",
        crate::kafka::statistics::StatisticsContext,
        |consumer| {
            // What a transactional run committed (the exactly-once bench), nothing aborted.
            consumer
                .set("auto.offset.reset", "error")
                .set("isolation.level", "read_committed");
        },
    )?;
    let (mut records, mut sum, mut invalid) = (0_u64, 0_i64, None);
    read_ranges(
        &consumer,
        topic,
        ranges,
        SCAN_IDLE_LIMIT,
        |message| match message.payload().and_then(&value) {
            Some(parsed) => {
                records += 1;
                sum += parsed;
            }
            None => {
                invalid.get_or_insert((message.partition(), message.offset()));
            }
        },
    )?;
    if let Some((partition, offset)) = invalid {
        return Err(BenchError::InvalidOutput {
            topic: topic.to_string(),
            partition,
            offset,
        }
        .into());
    }
    Ok((records, sum))
}
