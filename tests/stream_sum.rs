//! stream_sum as a process against the dev broker: every IntegerList becomes its SumResult
//! under the same key, undecodable records go to the dead-letter topic, SIGTERM drains.

mod support;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use seckill_kafka::avro::{decode_sum_result, encode_integer_list};
use seckill_kafka::stream_sum::DLQ_ERROR_HEADER;
use std::collections::HashMap;
use std::time::Duration;
use support::Program;

async fn read(brokers: &str, topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", support::unique_name("stream-sum-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut messages = Vec::new();
    while messages.len() < count {
        let received = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records on {topic}", messages.len()));
        // The topic may not exist yet: stream_sum creates it with its first result.
        if let Ok(message) = received {
            messages.push(message.detach());
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_every_list_and_dead_letters_garbage() {
    let brokers = support::stack_var("KAFKA_BROKERS");
    let input = support::unique_name("sum-input");
    let output = support::unique_name("sum-output");
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for n in 0..1_000i64 {
        let numbers: Vec<i32> = (0..rand::random_range(0..6))
            .map(|_| rand::random_range(-1_000..1_000))
            .collect();
        expected.insert(
            format!("k{n}"),
            numbers.iter().map(|&x| i64::from(x)).sum::<i64>(),
        );
        let mut payload = Vec::new();
        encode_integer_list(&numbers, &mut payload);
        messages.push((format!("k{n}"), Some(payload)));
    }
    let garbage = [Some(vec![0x02]), Some(vec![0xff; 12]), None];
    for (n, bad) in garbage.iter().enumerate() {
        messages.insert(n * 300, (format!("bad{n}"), bad.clone()));
    }
    support::produce(&brokers, &input, &messages).await;

    let env = vec![
        ("KAFKA_BROKERS".to_string(), brokers.clone()),
        (
            "SECKILL_STREAM_SUM_GROUP_ID".to_string(),
            support::unique_name("stream-sum"),
        ),
        ("RUST_LOG".to_string(), "info".to_string()),
    ];
    let program = Program::spawn(
        "stream_sum",
        &["run", "--input-topic", &input, "--output-topic", &output],
        &env,
    );
    let results = read(&brokers, &output, 1_000).await;
    let finished = program.terminate();
    finished.assert_success("stream_sum");
    println!("{}", finished.stdout.trim());
    assert_eq!(
        (
            finished.figure("processed"),
            finished.figure("dead_lettered")
        ),
        (1_000, 3)
    );

    for result in &results {
        let key = String::from_utf8(result.key().unwrap().to_vec()).unwrap();
        let sum = decode_sum_result(result.payload().unwrap()).unwrap();
        assert_eq!(Some(&sum), expected.get(&key), "sum for {key}");
    }
    let dead = read(&brokers, &format!("{input}.dlq"), 3).await;
    for record in &dead {
        assert!(record.key().unwrap().starts_with(b"bad"));
        let reason = record
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == DLQ_ERROR_HEADER)
            .and_then(|h| h.value);
        assert!(reason.is_some_and(|r| !r.is_empty()), "reason header");
    }
}
