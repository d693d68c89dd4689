//! The client-config builder against a real protocol broker (the dev broker or
//! `KAFKA_BROKERS`): what it builds can produce and consume.

mod support;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use seckill_kafka::kafka::{client_config, ClientRole, KafkaError};
use std::time::Duration;

#[tokio::test]
async fn built_configs_produce_and_consume() {
    let kafka = support::kafka_config();
    let topic = support::unique_name("client-config-test");
    let producer: FutureProducer = client_config(&kafka, ClientRole::Producer, "test")
        .unwrap()
        .create()
        .unwrap();
    for n in 0..10 {
        let payload = format!("message-{n}");
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&payload),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(error, _)| KafkaError::from(error))
            .unwrap();
    }

    let group = support::unique_name("client-config-group");
    let mut config =
        client_config(&kafka, ClientRole::Consumer { group_id: &group }, "test").unwrap();
    config.set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = config.create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    while received.len() < 10 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("messages arrive within 30 s")
            .unwrap();
        received.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..10).map(|n| format!("message-{n}")).collect();
    assert_eq!(received, expected, "one key, one partition: order kept");
}

#[tokio::test]
async fn unreachable_broker_is_a_retriable_error() {
    let mut kafka = support::kafka_config();
    kafka.brokers = "127.0.0.1:1".into();
    let producer: FutureProducer = client_config(&kafka, ClientRole::Producer, "test")
        .unwrap()
        .set("message.timeout.ms", "1500")
        .create()
        .unwrap();
    let (error, _) = producer
        .send(
            FutureRecord::to("nowhere").key("k").payload("x"),
            Timeout::After(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    let error = KafkaError::from(error);
    assert!(error.is_retriable(), "{error}");
}
