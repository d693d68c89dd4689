//! Group membership of one server_kafka consumer: its librdkafka settings (classic or
//! KIP-848 protocol, static membership, the mock broker's quirks) and what it does on a
//! rebalance (explicit start offsets, partitions to forget, readiness).

use super::Shared;
use crate::config::{GroupProtocol, KafkaConfig, OffsetReset, ServerKafkaConfig};
use crate::kafka::broker::BrokerKind;
use crate::kafka::client_config::set_default;
use crate::kafka::{client_config, ClientRole, KafkaError};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records rebalances: which partitions to forget, and whether this consumer holds an
/// assignment (for `/ready`).
pub(super) struct RebalanceContext {
    pub(super) consumer_index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) revoked: Mutex<Vec<i32>>,
    /// Set with `revoked`, so the loop checks a flag per message, not a lock.
    pub(super) rebalanced: AtomicBool,
    pub(super) assigned: AtomicBool,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::kafka::statistics::publish(&statistics);
    }
}

fn partition_ids(partitions: &rdkafka::TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl RebalanceContext {
    /// Gives every newly assigned partition without a committed offset an explicit start:
    /// the end (offset_reset latest) or the start (earliest) as of now. librdkafka would
    /// look the position up only at its first fetch, so requests written between this
    /// assignment and that fetch would be skipped under `latest`, although `/ready` already
    /// said the server has its partitions.
    fn pin_start_offsets(&self, consumer: &BaseConsumer<Self>, assigned: &mut TopicPartitionList) {
        const TIMEOUT: Duration = Duration::from_secs(5);
        let committed = match consumer.committed_offsets(assigned.clone(), TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(consumer = self.consumer_index, %error, "cannot read committed offsets; librdkafka resolves the start");
                return;
            }
        };
        let latest = self.shared.settings.server.offset_reset == OffsetReset::Latest;
        for element in committed.elements() {
            if element.offset() != Offset::Invalid {
                continue;
            }
            let (topic, partition) = (element.topic(), element.partition());
            match consumer.fetch_watermarks(topic, partition, TIMEOUT) {
                Ok((low, high)) => {
                    let start = if latest { high } else { low };
                    let _ = assigned.set_partition_offset(topic, partition, Offset::Offset(start));
                }
                Err(error) => {
                    tracing::warn!(consumer = self.consumer_index, partition, %error, "cannot read watermarks; librdkafka resolves the start")
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    /// rdkafka's own handling, with [`RebalanceContext::pin_start_offsets`] before an
    /// assignment takes effect.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.pin_start_offsets(consumer, partitions);
                let done = if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                self.post_rebalance(consumer, &Rebalance::Assign(partitions));
                done
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let done = if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                };
                self.post_rebalance(consumer, &Rebalance::Revoke(partitions));
                done
            }
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                self.post_rebalance(
                    consumer,
                    &Rebalance::Error(rdkafka::error::KafkaError::Rebalance(code)),
                );
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::error!(consumer = self.consumer_index, %error, "applying a rebalance failed");
        }
    }

    fn main_queue_min_poll_interval(&self) -> rdkafka::util::Timeout {
        rdkafka::util::Timeout::After(Duration::from_millis(50))
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let assigned = partition_ids(partitions);
                tracing::info!(
                    event = "rebalance",
                    consumer = self.consumer_index,
                    ?assigned,
                    "rebalance: partitions assigned"
                );
                if !self.assigned.swap(true, Ordering::SeqCst) {
                    self.shared.assignment_changed(true);
                }
            }
            Rebalance::Revoke(partitions) => {
                let revoked = partition_ids(partitions);
                tracing::info!(
                    event = "rebalance",
                    consumer = self.consumer_index,
                    ?revoked,
                    "rebalance: partitions revoked"
                );
                if self.assigned.swap(false, Ordering::SeqCst) {
                    self.shared.assignment_changed(false);
                }
                if let Ok(mut pending) = self.revoked.lock() {
                    pending.extend(revoked);
                }
                self.rebalanced.store(true, Ordering::SeqCst);
            }
            Rebalance::Error(error) => {
                tracing::warn!(event = "rebalance", consumer = self.consumer_index, %error, "rebalance error");
            }
        }
    }
}

/// The consumer settings server_kafka needs on top of the shared ones. Each is a default:
/// `kafka.properties` can still set it.
pub(super) fn consumer_config(
    kafka: &KafkaConfig,
    settings: &ServerKafkaConfig,
    index: usize,
    broker: BrokerKind,
) -> Result<rdkafka::ClientConfig, KafkaError> {
    let mut consumer = client_config(
        kafka,
        ClientRole::Consumer {
            group_id: &settings.group_id,
        },
        "server_kafka",
    )?;
    consumer.set("auto.offset.reset", settings.offset_reset.as_librdkafka());
    if settings.group_protocol == GroupProtocol::Consumer {
        // KIP-848: the broker assigns partitions and owns the session and heartbeat times
        // (group.consumer.session.timeout.ms, group.consumer.heartbeat.interval.ms);
        // librdkafka refuses to create a consumer that sets its own.
        consumer.set("group.protocol", "consumer");
        if let Some(instance_id) = &settings.instance_id {
            consumer.set("group.instance.id", format!("{instance_id}-{index}"));
        }
        set_default(&mut consumer, "fetch.queue.backoff.ms", "1");
        set_default(&mut consumer, "socket.nagle.disable", "true");
        if broker.is_mock() {
            set_default(&mut consumer, "fetch.wait.max.ms", "5");
        }
        return Ok(consumer);
    }
    if let Some(instance_id) = &settings.instance_id {
        // Static membership: a restarted consumer with the same id gets its partitions back
        // without a rebalance (KIP-345).
        consumer.set("group.instance.id", format!("{instance_id}-{index}"));
    }
    if broker.is_mock() {
        // The mock does not implement static membership: a restarted member is a new one,
        // and the group waits for the dead one's session to end, then rebalances (about
        // session + session - 1 s). A 4 s session keeps that near 7 s. (Not 3 s: the mock
        // also expires members waiting in a join, and a new group's first join waits 3 s.)
        // Apache Kafka would refuse it (group.min.session.timeout.ms is 6 s) and needs none
        // of it.
        set_default(&mut consumer, "session.timeout.ms", "4000");
        set_default(&mut consumer, "heartbeat.interval.ms", "1000");
    }
    // A dead member is noticed in 6 s (Apache Kafka's smallest allowed session) rather than
    // librdkafka's 45 s, so a server restarted without static membership (or after a
    // scale-down) gets its partitions back within seconds.
    set_default(&mut consumer, "session.timeout.ms", "6000");
    set_default(&mut consumer, "heartbeat.interval.ms", "1500");
    // librdkafka waits up to 1 s (its default) before fetching again for a partition whose
    // local queue was full: a buyer would wait that long behind a burst.
    set_default(&mut consumer, "fetch.queue.backoff.ms", "1");
    // Small fetch requests are not held back by Nagle's algorithm.
    set_default(&mut consumer, "socket.nagle.disable", "true");
    if broker.is_mock() {
        // The mock answers a fetch that found no data only after the whole
        // fetch.wait.max.ms (500 ms), even when data arrives meanwhile; Apache Kafka answers
        // as soon as there is data. Only there is the wait shortened.
        set_default(&mut consumer, "fetch.wait.max.ms", "5");
    }
    Ok(consumer)
}
