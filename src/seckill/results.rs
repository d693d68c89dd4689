//! Reading the answers server_kafka publishes to the results topic: what
//! `client_kafka --await-results` reports (how many users got which answer, and how long
//! they waited from sending to reading it).
//!
//! The reader takes its positions at the end of every partition before the first request
//! is sent, so it sees every answer to this run and nothing older. It recognises this run's
//! requests by their ids (`<seed hex>-<user>-<attempt>`, as client_kafka writes them) and
//! keeps one bit per request, so a run of millions costs a few megabytes.

use crate::common::{now_ms, SeckillOutcome, SeckillResult};
use crate::config::KafkaConfig;
use crate::kafka::statistics::StatisticsContext;
use crate::kafka::{client_config, ClientRole, KafkaError};
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::fmt;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reader waits for the results topic to exist (server_kafka creates it when
/// it starts, where the broker creates topics on demand).
const TOPIC_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultsError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the results topic {topic} does not exist (create it, or start server_kafka first)")]
    NoTopic { topic: String },
}

impl From<rdkafka::error::KafkaError> for ResultsError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// The requests a client_kafka run sends: ids `<seed hex>-<user>-<attempt>` for users
/// `1..=users` and attempts `0..requests_per_user`, each to the activity
/// [`PlannedRequests::activity_of`] says.
#[derive(Debug, Clone)]
pub struct PlannedRequests {
    /// The sales the requests are spread over (at least one).
    pub activity_ids: Vec<u64>,
    pub seed: u64,
    pub users: u64,
    pub requests_per_user: u32,
}

impl PlannedRequests {
    pub fn count(&self) -> u64 {
        self.users * u64::from(self.requests_per_user)
    }

    /// The sale of a user's attempt: users start at different sales and each attempt asks
    /// the next one, so a user with several attempts asks several sales (when there are).
    pub fn activity_of(&self, user: u64, attempt: u32) -> u64 {
        let count = self.activity_ids.len().max(1) as u64;
        let index = (user.saturating_sub(1) + u64::from(attempt)) % count;
        self.activity_ids
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }

    /// The request's place among them and its user index, when `request_id` is one of them
    /// and was sent to `activity_id`.
    fn index_of(&self, request_id: &str, activity_id: u64) -> Option<(u64, u64)> {
        let mut parts = request_id.splitn(3, '-');
        let seed = u64::from_str_radix(parts.next()?, 16).ok()?;
        let user: u64 = parts.next()?.parse().ok()?;
        let attempt: u32 = parts.next()?.parse().ok()?;
        let known = seed == self.seed
            && (1..=self.users).contains(&user)
            && attempt < self.requests_per_user
            && self.activity_of(user, attempt) == activity_id;
        known.then(|| {
            (
                (user - 1) * u64::from(self.requests_per_user) + u64::from(attempt),
                user - 1,
            )
        })
    }
}

/// The answers of one activity's requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActivityResults {
    pub activity_id: u64,
    pub planned: u64,
    pub answered: u64,
    /// Requests by their answer's outcome (in `SeckillOutcome::ALL` order).
    pub requests_by_outcome: [u64; SeckillOutcome::ALL.len()],
}

impl fmt::Display for ActivityResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  activity {} answered={}/{} requests",
            self.activity_id, self.answered, self.planned
        )?;
        for (outcome, count) in SeckillOutcome::ALL.iter().zip(self.requests_by_outcome) {
            if count > 0 {
                write!(f, " {outcome}={count}")?;
            }
        }
        Ok(())
    }
}

/// What the results topic said about a run's requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsReport {
    pub planned: u64,
    /// Requests with at least one result.
    pub answered: u64,
    /// Distinct users with at least one answer of each outcome (in `SeckillOutcome::ALL`
    /// order).
    pub users_by_outcome: [u64; SeckillOutcome::ALL.len()],
    /// Requests whose first result was a repeat (their id had been decided before).
    pub repeats: u64,
    /// Send (the request's creation) to the result read, ms.
    pub latency_p50_ms: u64,
    pub latency_p95_ms: u64,
    pub latency_p99_ms: u64,
    pub latency_max_ms: u64,
    /// How long the reader waited for the last results.
    pub timeout: Duration,
    /// Per activity, in the order given (with more than one activity).
    pub activities: Vec<ActivityResults>,
}

impl ResultsReport {
    pub fn unanswered(&self) -> u64 {
        self.planned - self.answered
    }
}

impl fmt::Display for ResultsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client_kafka results: answered={}/{} users",
            self.answered, self.planned
        )?;
        for (outcome, users) in SeckillOutcome::ALL.iter().zip(self.users_by_outcome) {
            write!(f, " {outcome}={users}")?;
        }
        write!(
            f,
            " repeats={} latency_ms p50={} p95={} p99={} max={}",
            self.repeats,
            self.latency_p50_ms,
            self.latency_p95_ms,
            self.latency_p99_ms,
            self.latency_max_ms
        )?;
        if self.activities.len() > 1 {
            for activity in &self.activities {
                write!(f, "\n{activity}")?;
            }
        }
        Ok(())
    }
}

/// Tells the results reader when the last request was sent.
#[derive(Debug, Default)]
pub struct SendingDone {
    at: std::sync::Mutex<Option<Instant>>,
}

impl SendingDone {
    pub fn now(&self) {
        if let Ok(mut at) = self.at.lock() {
            at.get_or_insert_with(Instant::now);
        }
    }

    /// Sending finished more than `ago` ago.
    fn finished_before(&self, ago: Duration) -> bool {
        self.at
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() > ago)
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the end when created: only what comes after.
    End,
    /// At the first record written at or after this time (ms since the epoch).
    Since(i64),
    /// At the oldest record kept.
    Beginning,
}

/// A consumer of the results topic, positioned at its end when created.
pub struct ResultsReader {
    consumer: BaseConsumer<StatisticsContext>,
    /// A topic that did not exist yet when the reader was made (see
    /// [`ResultsReader::at_end_or_start`]): read from its start once it appears.
    awaited: Option<String>,
}

impl ResultsReader {
    /// Assigns every partition of `seckill.results_topic` at its current end (no group, no
    /// commits), waiting up to 30 s for the topic to exist.
    pub fn at_end(kafka: &KafkaConfig, topic: &str) -> Result<Self, ResultsError> {
        Self::positioned(kafka, topic, TOPIC_WAIT, Start::End)
    }

    /// As [`ResultsReader::at_end`], but a topic that does not exist yet (a broker that
    /// creates topics when first written to) is read from its start once it appears: all
    /// of it is newer than the reader.
    pub fn at_end_or_start(kafka: &KafkaConfig, topic: &str) -> Result<Self, ResultsError> {
        Self::from_or_start(kafka, topic, Start::End)
    }

    /// As [`ResultsReader::at_end_or_start`], positioned at `start`.
    pub fn from_or_start(
        kafka: &KafkaConfig,
        topic: &str,
        start: Start,
    ) -> Result<Self, ResultsError> {
        match Self::positioned(kafka, topic, Duration::ZERO, start) {
            Err(ResultsError::NoTopic { .. }) => {
                let mut reader = Self::positioned(kafka, topic, Duration::MAX, Start::End)?;
                reader.awaited = Some(topic.to_string());
                Ok(reader)
            }
            other => other,
        }
    }

    /// Assigns the partitions of a topic that appeared since, at their start.
    fn assign_when_created(&mut self) -> Result<(), ResultsError> {
        let Some(topic) = self.awaited.as_deref() else {
            return Ok(());
        };
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(1))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len()) as i32;
        if partitions == 0 {
            return Ok(());
        }
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        self.consumer.assign(&assignment)?;
        self.awaited = None;
        Ok(())
    }

    /// `wait`: how long for the topic to exist (`Duration::MAX`: do not look for it).
    fn positioned(
        kafka: &KafkaConfig,
        topic: &str,
        wait: Duration,
        start: Start,
    ) -> Result<Self, ResultsError> {
        let mut consumer_config = client_config(
            kafka,
            ClientRole::Consumer {
                group_id: "client_kafka-results",
            },
            "client_kafka-results",
        )?;
        consumer_config
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.queue.backoff.ms", "1")
            .set("socket.nagle.disable", "true");
        let consumer: BaseConsumer<StatisticsContext> =
            consumer_config.create_with_context(StatisticsContext)?;
        if wait == Duration::MAX {
            return Ok(Self {
                consumer,
                awaited: None,
            });
        }
        let waited = Instant::now();
        let partitions = loop {
            let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
            let partitions = metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len()) as i32;
            if partitions > 0 {
                break partitions;
            }
            if waited.elapsed() >= wait {
                return Err(ResultsError::NoTopic {
                    topic: topic.to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            let offset = match start {
                // offsets_for_times takes the time in the offset's place.
                Start::Since(ms) => Offset::Offset(ms),
                Start::Beginning => Offset::Beginning,
                Start::End => {
                    let (_, high) =
                        consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
                    Offset::Offset(high)
                }
            };
            assignment.add_partition_offset(topic, partition, offset)?;
        }
        if let Start::Since(_) = start {
            assignment = consumer.offsets_for_times(assignment, METADATA_TIMEOUT)?;
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            awaited: None,
        })
    }

    /// Hands every payload read to `each` until it returns `false` or `stop` fires (for other
    /// topics read from their end the same way: the order events).
    pub fn for_each_payload(
        &mut self,
        stop: &CancellationToken,
        mut each: impl FnMut(Option<&[u8]>) -> bool,
    ) -> Result<(), ResultsError> {
        while !stop.is_cancelled() {
            if self.awaited.is_some() {
                self.assign_when_created()?;
                if self.awaited.is_some() {
                    std::thread::sleep(Duration::from_millis(100));
                    if !each(None) {
                        break;
                    }
                    continue;
                }
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {
                    if !each(None) {
                        break;
                    }
                }
                Some(received) => {
                    let message = received?;
                    if !each(Some(message.payload().unwrap_or_default())) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads results until every planned request has one, or `timeout` after `sent` says
    /// the last request went out, or `stop` fires. Run it while the requests are sent (a
    /// broker may not keep results for long) on a thread that may block.
    /// Each first answer that is a reservation (SUCCESS with `pay_by`) is handed to
    /// `on_reservation`.
    pub fn collect(
        &self,
        planned: PlannedRequests,
        sent: &SendingDone,
        timeout: Duration,
        stop: &CancellationToken,
        mut on_reservation: impl FnMut(&SeckillResult),
    ) -> Result<ResultsReport, ResultsError> {
        let count = planned.count();
        let mut answered_bits = vec![0_u64; count.div_ceil(64) as usize];
        let mut outcomes_of_user = vec![0_u8; planned.users as usize];
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).map_err(|_| {
            ResultsError::Kafka(rdkafka::error::KafkaError::NoMessageReceived.into())
        })?;
        let mut answered = 0_u64;
        let mut repeats = 0_u64;
        let mut activities: Vec<ActivityResults> = planned
            .activity_ids
            .iter()
            .map(|&activity_id| ActivityResults {
                activity_id,
                ..ActivityResults::default()
            })
            .collect();
        for user in 1..=planned.users {
            for attempt in 0..planned.requests_per_user {
                let activity_id = planned.activity_of(user, attempt);
                if let Some(activity) = activities.iter_mut().find(|a| a.activity_id == activity_id)
                {
                    activity.planned += 1;
                }
            }
        }
        while answered < count && !sent.finished_before(timeout) && !stop.is_cancelled() {
            let Some(received) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = received?;
            let read_at = now_ms();
            let Some(result) = message
                .payload()
                .and_then(|payload| SeckillResult::from_json(payload).ok())
            else {
                continue;
            };
            let Some((index, user)) = planned.index_of(&result.request_id, result.activity_id)
            else {
                continue;
            };
            let (word, bit) = ((index / 64) as usize, 1_u64 << (index % 64));
            if answered_bits[word] & bit != 0 {
                continue; // a result published again: the first one counts
            }
            answered_bits[word] |= bit;
            answered += 1;
            if result.outcome == SeckillOutcome::Success && result.pay_by.is_some() {
                on_reservation(&result);
            }
            repeats += u64::from(result.repeat);
            outcomes_of_user[user as usize] |= 1 << (result.outcome as u8);
            if let Some(activity) = activities
                .iter_mut()
                .find(|a| a.activity_id == result.activity_id)
            {
                activity.answered += 1;
                activity.requests_by_outcome[result.outcome as usize] += 1;
            }
            latency.saturating_record(
                u64::try_from(read_at.saturating_sub(result.request_initiation_time)).unwrap_or(0),
            );
        }
        let mut users_by_outcome = [0_u64; SeckillOutcome::ALL.len()];
        for outcomes in outcomes_of_user {
            for outcome in SeckillOutcome::ALL {
                if outcomes & (1 << outcome as u8) != 0 {
                    users_by_outcome[outcome as usize] += 1;
                }
            }
        }
        Ok(ResultsReport {
            planned: count,
            answered,
            users_by_outcome,
            repeats,
            latency_p50_ms: latency.value_at_quantile(0.50),
            latency_p95_ms: latency.value_at_quantile(0.95),
            latency_p99_ms: latency.value_at_quantile(0.99),
            latency_max_ms: latency.max(),
            timeout,
            activities,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_runs_request_ids() {
        let planned = PlannedRequests {
            activity_ids: vec![1],
            seed: 0xab,
            users: 10,
            requests_per_user: 3,
        };
        assert_eq!(planned.count(), 30);
        assert_eq!(planned.index_of("ab-1-0", 1), Some((0, 0)));
        assert_eq!(planned.index_of("ab-10-2", 1), Some((29, 9)));
        assert_eq!(planned.index_of("ab-1-0", 2), None, "another activity's");
        for other in [
            "ac-1-0", "ab-0-0", "ab-11-0", "ab-1-3", "ab-1", "x", "ab-1-0-1",
        ] {
            assert_eq!(planned.index_of(other, 1), None, "{other}");
        }
    }

    #[test]
    fn users_spread_their_attempts_over_the_activities() {
        let planned = PlannedRequests {
            activity_ids: vec![101, 102, 103],
            seed: 1,
            users: 3,
            requests_per_user: 2,
        };
        assert_eq!(planned.activity_of(1, 0), 101);
        assert_eq!(planned.activity_of(1, 1), 102);
        assert_eq!(planned.activity_of(3, 1), 101);
        assert_eq!(planned.index_of("1-1-1", 102), Some((1, 0)));
        assert_eq!(planned.index_of("1-1-1", 101), None);
    }
}
