//! The sink's transactions (exactly-once sinks only): one state machine, [`transition`],
//! reached from async code (`begin_transaction`, ...: the blocking librdkafka call runs on
//! tokio's blocking pool) and from a plain thread (`begin_transaction_blocking`, ...: called
//! in place, as the exactly-once stream_sum worker does), with the same checks either way.

use super::config::DeliveryGuarantee;
use super::context::SinkContext;
use super::partition::StrategyPartitioner;
use super::polling::PolledProducer;
use super::serializer::MessageSerializer;
use super::sink::{KafkaSink, SinkError};
use crate::kafka::{ErrorClass, KafkaError};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransactionState {
    /// `init_transactions` not called yet.
    Uninitialised,
    Idle,
    Open,
}

/// What to do with the transaction.
pub(super) enum TransactionStep {
    /// Register the transactional id with the broker (fencing an older producer with the
    /// same id, aborting what it left open), once; `Begin` does it when not done yet.
    Init,
    Begin,
    /// Add a consumer's offsets to the open transaction.
    SendOffsets(TopicPartitionList, ConsumerGroupMetadata),
    Commit,
    Abort,
}

/// Runs one step against `state`, blocking on librdkafka. A commit that fails with an
/// error that requires it aborts the transaction.
pub(super) fn transition(
    state: &mut TransactionState,
    producer: &PolledProducer,
    guarantee: DeliveryGuarantee,
    timeout: Duration,
    step: TransactionStep,
) -> Result<(), SinkError> {
    let timeout = Timeout::After(timeout);
    let transactional = || {
        if guarantee == DeliveryGuarantee::ExactlyOnce {
            Ok(())
        } else {
            Err(SinkError::TransactionState(
                "transactions need DeliveryGuarantee::ExactlyOnce",
            ))
        }
    };
    match step {
        TransactionStep::Init => {
            transactional()?;
            ensure_initialised(state, producer, timeout)
        }
        TransactionStep::Begin => {
            transactional()?;
            if *state == TransactionState::Open {
                return Err(SinkError::TransactionState("a transaction is already open"));
            }
            ensure_initialised(state, producer, timeout)?;
            producer.begin_transaction()?;
            *state = TransactionState::Open;
            Ok(())
        }
        _ if *state != TransactionState::Open => {
            Err(SinkError::TransactionState("no transaction is open"))
        }
        TransactionStep::SendOffsets(offsets, group) => {
            Ok(producer.send_offsets_to_transaction(&offsets, &group, timeout)?)
        }
        TransactionStep::Commit => match flush_for_commit(producer, timeout)
            .and_then(|()| producer.commit_transaction(timeout))
        {
            Ok(()) => {
                *state = TransactionState::Idle;
                Ok(())
            }
            Err(error) => {
                let error = KafkaError::from(error);
                if error.class() == ErrorClass::AbortTransaction {
                    producer.abort_transaction(timeout)?;
                    *state = TransactionState::Idle;
                }
                Err(error.into())
            }
        },
        TransactionStep::Abort => {
            producer.abort_transaction(timeout)?;
            *state = TransactionState::Idle;
            Ok(())
        }
    }
}

/// Registers the transactional id unless done: the state leaves `Uninitialised` only when
/// the broker accepted it, so a failed attempt may be retried.
fn ensure_initialised(
    state: &mut TransactionState,
    producer: &BaseProducer<SinkContext, StrategyPartitioner>,
    timeout: Timeout,
) -> Result<(), SinkError> {
    if *state == TransactionState::Uninitialised {
        producer.init_transactions(timeout)?;
        *state = TransactionState::Idle;
    }
    Ok(())
}

/// Waits until every message of the transaction is delivered, or `timeout`, before the
/// commit. rust-rdkafka's `commit_transaction` flushes first by polling in slices of up to
/// 100 ms and looks again only at the end of one, so each commit lasted ~90 ms (stream_sum's
/// exactly-once workers spent 38% of their time there; docs/BENCHMARKS.md). librdkafka's own
/// flush treats `linger.ms` as passed while it waits and returns as soon as the last
/// delivery report is served: this sink's reports are events, served by its polling thread
/// (`polling.rs`), told to serve them throughout (not to stand aside for the sender, the
/// committing thread here). The flush runs in slices and serves the reports itself between
/// them, so a polling thread that is gone costs a slice, not the whole timeout.
fn flush_for_commit(
    producer: &PolledProducer,
    timeout: Timeout,
) -> Result<(), rdkafka::error::KafkaError> {
    let deadline = match timeout {
        Timeout::After(wait) => Instant::now().checked_add(wait),
        Timeout::Never => None,
    };
    loop {
        let slice = match deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(FLUSH_SLICE),
            None => FLUSH_SLICE,
        };
        // Rounded up: a last slice under a millisecond still waits, not spins.
        let millis = i32::try_from(slice.as_micros().div_ceil(1_000)).unwrap_or(i32::MAX);
        // SAFETY: the handle is the live producer's (borrowed for the call); rd_kafka_flush
        // is thread-safe and, for a producer whose reports are events, only waits.
        let code = producer.serving(|| unsafe {
            rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), millis)
        });
        match RDKafkaErrorCode::from(code) {
            RDKafkaErrorCode::NoError => return Ok(()),
            RDKafkaErrorCode::OperationTimedOut
                if deadline.is_none_or(|deadline| Instant::now() < deadline) =>
            {
                // Every event that is ready, waiting a moment for the first.
                producer.serve(SERVE_BETWEEN_SLICES);
            }
            code => return Err(rdkafka::error::KafkaError::Flush(code)),
        }
    }
}

/// How long one librdkafka flush waits before the committing thread serves delivery reports
/// itself.
const FLUSH_SLICE: Duration = Duration::from_millis(250);
/// How long the committing thread serves delivery reports between two slices.
const SERVE_BETWEEN_SLICES: Duration = Duration::from_millis(1);

impl<T, S: MessageSerializer<T>> KafkaSink<T, S> {
    /// Runs `step` on tokio's blocking pool, holding the state across the round trip so no
    /// other step interleaves.
    async fn transaction_step(&self, step: TransactionStep) -> Result<(), SinkError> {
        let mut state = self.transaction.clone().lock_owned().await;
        let producer = self.producer.clone();
        let (guarantee, timeout) = (self.config.guarantee, self.config.message_timeout);
        tokio::task::spawn_blocking(move || {
            transition(&mut state, &producer, guarantee, timeout, step)
        })
        .await?
    }

    /// Runs `step` on the calling thread, which must not be a tokio worker.
    fn transaction_step_blocking(&self, step: TransactionStep) -> Result<(), SinkError> {
        let mut state = self.transaction.blocking_lock();
        let (guarantee, timeout) = (self.config.guarantee, self.config.message_timeout);
        transition(&mut state, &self.producer, guarantee, timeout, step)
    }

    /// Registers the transactional id with the broker (exactly-once sinks only): fences an
    /// older producer with the same id and aborts what it left open. Once; later calls do
    /// nothing. `begin_transaction` does it when it was not done, but then the first
    /// transaction waits for that round trip (~50 ms on the dev broker) with records in hand:
    /// a consume-transform-produce loop calls this at start.
    pub async fn init_transactions(&self) -> Result<(), SinkError> {
        self.check_open()?;
        self.transaction_step(TransactionStep::Init).await
    }

    /// [`init_transactions`](Self::init_transactions) for a plain thread.
    pub fn init_transactions_blocking(&self) -> Result<(), SinkError> {
        self.check_open()?;
        self.transaction_step_blocking(TransactionStep::Init)
    }

    /// Starts a transaction (exactly-once sinks only; registers the transactional id with
    /// the broker on first use). Nested transactions are rejected.
    pub async fn begin_transaction(&self) -> Result<(), SinkError> {
        self.check_open()?;
        self.transaction_step(TransactionStep::Begin).await
    }

    /// Adds a consumer's offsets to the open transaction, so they commit or abort with the
    /// messages produced in it (consume-transform-produce). `offsets` are the next offsets to
    /// read, as committed offsets are; `group` fences a member a rebalance has replaced.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), SinkError> {
        self.transaction_step(TransactionStep::SendOffsets(offsets, group))
            .await
    }

    /// Commits the open transaction (flushing its messages first). On failure the
    /// transaction is aborted when the error requires it.
    pub async fn commit_transaction(&self) -> Result<(), SinkError> {
        self.transaction_step(TransactionStep::Commit).await
    }

    /// Aborts the open transaction: its messages are never seen by `read_committed` readers.
    pub async fn abort_transaction(&self) -> Result<(), SinkError> {
        self.transaction_step(TransactionStep::Abort).await
    }

    /// [`begin_transaction`](Self::begin_transaction) for a plain thread.
    pub fn begin_transaction_blocking(&self) -> Result<(), SinkError> {
        self.check_open()?;
        self.transaction_step_blocking(TransactionStep::Begin)
    }

    /// [`send_offsets_to_transaction`](Self::send_offsets_to_transaction) for a plain thread.
    pub fn send_offsets_to_transaction_blocking(
        &self,
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), SinkError> {
        self.transaction_step_blocking(TransactionStep::SendOffsets(offsets, group))
    }

    /// [`commit_transaction`](Self::commit_transaction) for a plain thread.
    pub fn commit_transaction_blocking(&self) -> Result<(), SinkError> {
        self.transaction_step_blocking(TransactionStep::Commit)
    }

    /// [`abort_transaction`](Self::abort_transaction) for a plain thread.
    pub fn abort_transaction_blocking(&self) -> Result<(), SinkError> {
        self.transaction_step_blocking(TransactionStep::Abort)
    }

    /// Whether a transaction is open (then `close` aborts it).
    pub(super) async fn transaction_open(&self) -> bool {
        *self.transaction.lock().await == TransactionState::Open
    }

    /// [`transaction_open`](Self::transaction_open) for a plain thread.
    pub(super) fn transaction_open_blocking(&self) -> bool {
        *self.transaction.blocking_lock() == TransactionState::Open
    }
}
