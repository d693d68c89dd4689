//! The yardstick of `stream_sum bench`: the same consume-sum-produce work as plain loops on
//! librdkafka's own batch API (through `rdkafka-sys`), written the way the tuned plain-C
//! program of issue 25 is: as many threads as stream_sum has workers, each with its own
//! consumer (assigned its share of the partitions, `fetch.queue.backoff.ms=1`, its offsets
//! committed to a group once, at the end: the C program auto-commits every 5 s, which in a
//! one-second run is the commit at close, and an auto-commit's result event would come
//! through the queue the loop reads in batches, which librdkafka does not allow)
//! and its own producer (snappy, 20 ms linger, large batches).
//! No dead-letter topic, no back-pressure: it only has to be fast and right.
//!
//! Three kinds, by what the producer promises:
//! - [`BaselineKind::Acks1`]: the C program's `acks=1`, no idempotence;
//! - [`BaselineKind::Idempotent`]: stream_sum's own at-least-once producer settings
//!   (`acks=all`, idempotence), so a ratio does not hang on acknowledging less;
//! - [`BaselineKind::Transactional`]: stream_sum `--exactly-once`'s: transactions of
//!   `stream_sum.transaction_records` results or 100 ms, the consumed offsets sent inside.
//!
//! And two placements of the results ([`Placement`]): the partitioner's, as the C program
//! (keyless results go to librdkafka's sticky partitioner), or stream_sum's (a keyless
//! result on its record's partition), so a ratio does not hang on placing results
//! differently either.

mod raw;
mod worker;

use crate::config::Config;
use crate::kafka::sink::Acks;
use crate::kafka::statistics::StatisticsContext;
use crate::kafka::topic_reader::PartitionRange;
use crate::stream_sum::{output_sink_config, worker_consumer};
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Barrier;
use std::time::Duration;

/// How long a thread waits for its producer to be able to send.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the baseline's producers promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineKind {
    /// `acks=1`, no idempotence: the C program of issue 25.
    Acks1,
    /// `acks=all` with idempotence: stream_sum's at-least-once producer.
    Idempotent,
    /// `acks=all`, idempotence and transactions: stream_sum `--exactly-once`'s producer.
    Transactional,
}

/// Where a baseline's results go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// librdkafka's partitioner picks, as in the C program.
    Partitioner,
    /// A keyless result on its record's partition (when the output has it), as stream_sum
    /// places it; a keyed one to the partitioner.
    InputPartition,
}

/// One baseline: what its producers promise and where its results go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    pub kind: BaselineKind,
    pub placement: Placement,
}

impl Baseline {
    /// As the report prints it.
    pub fn label(self) -> String {
        match self.placement {
            Placement::Partitioner => self.kind.label().to_string(),
            Placement::InputPartition => {
                format!("{}, results on their input partition", self.kind.label())
            }
        }
    }
}

impl BaselineKind {
    /// What it promises, as the report prints it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Acks1 => "acks=1",
            Self::Idempotent => "acks=all idempotent",
            Self::Transactional => "transactional acks=all idempotent",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    #[error("librdkafka refused the client: {0}")]
    Create(String),
    #[error("the topic name {0:?} holds a NUL byte")]
    TopicName(String),
    #[error("the output topic's metadata did not come: {0}")]
    Metadata(RDKafkaErrorCode),
    #[error("the consumer could not be connected or assigned its share")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error("librdkafka refused a topic handle for {0}")]
    TopicHandle(String),
    #[error("no record for {0:?} while {1} of the backlog's records were still unread")]
    Stalled(Duration, u64),
    #[error("{0} results failed delivery")]
    Undelivered(u64),
    #[error("consuming failed: {0}")]
    Consume(RDKafkaErrorCode),
    #[error("producing failed: {0}")]
    Produce(RDKafkaErrorCode),
    #[error("committing the consumed offsets failed: {0}")]
    Commit(String),
    #[error("a transaction failed: {0}")]
    Transaction(String),
    #[error("a record of the backlog does not decode: {0}")]
    Undecodable(String),
    #[error("a baseline thread panicked")]
    Panicked,
}

/// Processes `backlog` of `config.stream_sum.input_topic` into `output_topic` (of
/// `output_partitions` partitions) on `threads` threads; returns once every result is
/// delivered (and, transactional, committed).
/// Thread `i` reads the partitions `p` with `p % threads == i`; the threads start their
/// loops together, once every one has its clients.
pub fn run_baseline(
    config: &Config,
    backlog: &[PartitionRange],
    output_topic: &str,
    output_partitions: usize,
    threads: usize,
    baseline: Baseline,
    run_id: &str,
) -> Result<u64, BaselineError> {
    let threads = threads.max(1);
    let start_line = Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|index| {
                let start_line = &start_line;
                let mine: Vec<PartitionRange> = backlog
                    .iter()
                    .filter(|range| {
                        range.partition as usize % threads == index && !range.is_empty()
                    })
                    .copied()
                    .collect();
                scope.spawn(move || {
                    let plan = Plan {
                        kind: baseline.kind,
                        placement: baseline.placement,
                        output_partitions,
                        run_id,
                        index,
                    };
                    thread(config, &mine, output_topic, &plan, start_line)
                })
            })
            .collect();
        let mut produced = 0;
        let mut first_error = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(count)) => produced += count,
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(_) => {
                    first_error.get_or_insert(BaselineError::Panicked);
                }
            }
        }
        first_error.map_or(Ok(produced), Err)
    })
}

/// What one thread is to do, beside its ranges.
struct Plan<'a> {
    kind: BaselineKind,
    placement: Placement,
    output_partitions: usize,
    run_id: &'a str,
    index: usize,
}

/// One thread: makes its clients and gets them ready, waits at the start line (whether or
/// not that worked, so no thread waits forever), then assigns its share and runs the loop.
fn thread(
    config: &Config,
    ranges: &[PartitionRange],
    output_topic: &str,
    plan: &Plan<'_>,
    start_line: &Barrier,
) -> Result<u64, BaselineError> {
    let kind = plan.kind;
    // Ready before the start line, as stream_sum's workers are before their partitions
    // come: transactions initialised, the output's metadata, an idempotent producer's id.
    let clients = clients(config, plan).and_then(|(consumer, producer)| {
        let topic = producer.topic(output_topic)?;
        if kind == BaselineKind::Transactional {
            producer.init_transactions(READY_TIMEOUT)?;
        }
        producer.wait_ready(&topic, kind == BaselineKind::Idempotent, READY_TIMEOUT)?;
        Ok((consumer, producer, topic))
    });
    start_line.wait();
    // Dropped in reverse: the topic handle before its producer.
    let (consumer, producer, topic) = clients?;
    // Assigned at the start line, as stream_sum's workers take their partitions at theirs:
    // assigned before, the consumers fetched (`queued.min.messages` 200,000 a partition)
    // while the producers got ready, outside the timed window.
    let input = &config.stream_sum.input_topic;
    PartitionRange::offsets(input, ranges, |range| range.start)
        .and_then(|starts| consumer.assign(&starts))
        .map_err(BaselineError::Consumer)?;
    let share = worker::Share::new(
        config.stream_sum.input_topic.clone(),
        ranges.iter().map(|r| (r.partition, r.end)),
        ranges.iter().map(|r| r.len() as u64).sum(),
    );
    let max_records =
        (kind == BaselineKind::Transactional).then_some(config.stream_sum.transaction_records);
    let placement = match plan.placement {
        Placement::Partitioner => None,
        Placement::InputPartition => Some(i32::try_from(plan.output_partitions).unwrap_or(0)),
    };
    let produced = worker::run_thread(&consumer, &producer, &topic, share, max_records, placement)?;
    drop(topic);
    if kind != BaselineKind::Transactional {
        // Where its share ends: the commit the C program's close makes.
        let ends = PartitionRange::offsets(input, ranges, |range| range.end)
            .map_err(BaselineError::Consumer)?;
        if ends.count() > 0 {
            consumer
                .commit(&ends, rdkafka::consumer::CommitMode::Sync)
                .map_err(|error| BaselineError::Commit(error.to_string()))?;
        }
    }
    Ok(produced)
}

type Clients = (
    rdkafka::consumer::BaseConsumer<StatisticsContext>,
    raw::RawProducer,
);

/// The thread's consumer (not assigned yet) and its producer.
fn clients(config: &Config, plan: &Plan<'_>) -> Result<Clients, BaselineError> {
    let Plan {
        kind,
        run_id,
        index,
        ..
    } = *plan;
    let group = format!("stream-sum-baseline-{run_id}");
    let consumer = worker_consumer(config, &group, StatisticsContext, |consumer| {
        consumer
            .set("fetch.queue.backoff.ms", "1")
            .set("auto.offset.reset", "error");
        if kind == BaselineKind::Transactional {
            consumer.set("isolation.level", "read_committed");
        }
    })
    .map_err(|error| BaselineError::Create(error.to_string()))?;
    // Connected, as a stream_sum worker's consumer is once it has counted the input's
    // partitions: assigned cold at the start line, a thread sometimes fetched nothing for
    // ~0.8 s while its first connection and metadata came (0.85 against 2.9 M/s rounds).
    consumer
        .fetch_metadata(Some(&config.stream_sum.input_topic), READY_TIMEOUT)
        .map_err(BaselineError::Consumer)?;
    let client_id = format!("stream_sum-baseline-{index}");
    let sink = match kind {
        BaselineKind::Transactional => output_sink_config(
            config,
            client_id,
            Some(format!("stream-sum-baseline-{run_id}-{index}")),
        ),
        BaselineKind::Idempotent => output_sink_config(config, client_id, None),
        BaselineKind::Acks1 => {
            let mut sink = output_sink_config(config, client_id, None);
            sink.acks = Acks::Leader;
            sink.idempotence = false;
            // No producer id to wait for: no statistics, as in the C program.
            sink.statistics_interval = None;
            sink
        }
    };
    let producer = raw::RawProducer::new(
        &sink
            .client_config()
            .map_err(|error| BaselineError::Create(error.to_string()))?,
    )?;
    Ok((consumer, producer))
}
