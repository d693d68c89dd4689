//! `FetchQueue` against a real protocol broker (the dev broker or `KAFKA_BROKERS`): a take
//! returns the records already fetched, in order, without sitting out its timeout for a full
//! batch (librdkafka's batch call on its own waits until it has `max` records).

mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use seckill_kafka::kafka::fetch_queue::FetchQueue;
use seckill_kafka::kafka::{client_config, ClientRole};
use std::time::{Duration, Instant};

/// Long enough that a take waiting it out is unmistakable.
const TAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_take_returns_the_fetched_records_without_waiting_for_a_full_batch() {
    let kafka = support::kafka_config();
    let topic = support::unique_name("fetch-queue-test");
    support::create_topics(&kafka.brokers, &[(&topic, 1)]);
    let sent: Vec<(String, Option<Vec<u8>>)> = (0..10)
        .map(|n| (format!("key-{n}"), Some(format!("record-{n}").into_bytes())))
        .collect();
    // Partition 0 named: on the dev broker the topic is created when first used, with its
    // default partition count, and the keys would spread over them.
    let producer: FutureProducer = client_config(&kafka, ClientRole::Producer, "test")
        .unwrap()
        .create()
        .unwrap();
    for (key, payload) in &sent {
        let record = FutureRecord::<str, [u8]>::to(&topic)
            .partition(0)
            .key(key.as_str())
            .payload(payload.as_deref().unwrap_or_default());
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .expect("delivered");
    }

    let group = support::unique_name("fetch-queue-group");
    let consumer: BaseConsumer =
        client_config(&kafka, ClientRole::Consumer { group_id: &group }, "test")
            .unwrap()
            .create()
            .unwrap();
    let mut fetch = FetchQueue::new(&consumer, &topic).unwrap();
    assert!(
        fetch.take(Duration::ZERO, 1_024).unwrap().is_empty(),
        "nothing assigned: nothing to take, and no wait"
    );
    fetch.route([0]);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();

    let started = Instant::now();
    let mut received = Vec::new();
    while received.len() < sent.len() && started.elapsed() < 2 * TAKE_TIMEOUT {
        let taken = fetch.take(TAKE_TIMEOUT, 1_024).unwrap();
        for record in taken.iter() {
            assert_eq!(record.error(), None, "a record, not an error");
            assert_eq!(record.partition(), 0);
            received.push((
                String::from_utf8(record.key().unwrap().to_vec()).unwrap(),
                record.payload().map(<[u8]>::to_vec),
            ));
        }
    }
    assert_eq!(received, sent, "every record, in order");
    assert!(
        started.elapsed() < TAKE_TIMEOUT,
        "10 records against a batch of 1,024: the take returned what was fetched, it did not \
         wait out its {TAKE_TIMEOUT:?} (took {:?})",
        started.elapsed()
    );
}
