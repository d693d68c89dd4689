//! zstd_producer as a process against the dev broker (or `KAFKA_BROKERS`): the events read
//! back equal the ones generated, field by field; librdkafka's statistics show real zstd
//! compression; `--verify` counts by type and reports undecodable records.

mod support;

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use seckill_kafka::proto::UserEvent;
use seckill_kafka::zstd_producer::events::EventGenerator;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Finished, Program};

const EVENTS: usize = 3_000;
const USERS: u64 = 200;
const SEED: u64 = 42;

fn env() -> Vec<(String, String)> {
    vec![
        (
            "KAFKA_BROKERS".to_string(),
            support::stack_var("KAFKA_BROKERS"),
        ),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]
}

fn produce(topic: &str) -> Finished {
    let events = EVENTS.to_string();
    let users = USERS.to_string();
    let seed = SEED.to_string();
    let finished = Program::spawn(
        "zstd_producer",
        &[
            "--topic", topic, "--events", &events, "--users", &users, "--seed", &seed,
        ],
        &env(),
    )
    .wait(Duration::from_secs(120));
    finished.assert_success("zstd_producer");
    finished
}

/// Every record of `topic` as (key, payload).
fn read_back(topic: &str, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", support::stack_var("KAFKA_BROKERS"))
        .set("group.id", support::unique_name("zstd-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap()
        .topics()[0]
        .partitions()
        .len();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "{} of {count} records",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            records.push((
                message.key().unwrap_or_default().to_vec(),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    records
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn events_read_back_equal_what_was_generated_and_zstd_really_compresses() {
    let topic = support::unique_name("user-events");
    let started = now_millis();
    let finished = produce(&topic);
    let ended = now_millis();
    println!("{}", finished.stdout.trim());
    assert_eq!(finished.figure("sent"), EVENTS as u64);
    assert_eq!(finished.figure("failed"), 0);

    // Compression as librdkafka's statistics report it: key and value bytes put into
    // batches versus the batches' size as sent.
    let uncompressed = finished.figure("uncompressed_bytes");
    let compressed = finished.figure("compressed_bytes");
    assert!(uncompressed > 100_000, "{uncompressed} bytes of events");
    assert!(
        compressed > 0 && compressed * 2 < uncompressed,
        "zstd: {compressed} compressed bytes for {uncompressed}"
    );

    // The same seed generates the same events (timestamps aside: the wall clock's).
    let mut generator = EventGenerator::new(SEED, USERS);
    let mut expected = HashMap::new();
    for _ in 0..EVENTS {
        let mut event = EventGenerator::empty_event();
        generator.fill(&mut event);
        expected.insert(event.event_id.clone(), event);
    }
    let records = read_back(&topic, EVENTS);
    assert_eq!(records.len(), EVENTS);
    for (key, payload) in records {
        let mut event = UserEvent::decode(payload.as_slice()).expect("decodes");
        assert_eq!(key, event.user_id.as_bytes(), "keyed by user id");
        assert!(
            (started..=ended).contains(&event.timestamp),
            "timestamp {} outside the run",
            event.timestamp
        );
        let wanted = expected
            .remove(&event.event_id)
            .unwrap_or_else(|| panic!("unexpected or repeated event {}", event.event_id));
        event.timestamp = wanted.timestamp;
        assert_eq!(event, wanted, "every field, metadata map included");
    }
    assert!(expected.is_empty(), "{} events missing", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_by_type_and_reports_undecodable_records() {
    let topic = support::unique_name("user-events");
    produce(&topic);
    let verify = |topic: &str| {
        Program::spawn("zstd_producer", &["--verify", "--topic", topic], &env())
            .wait(Duration::from_secs(120))
    };
    let clean = verify(&topic);
    clean.assert_success("zstd_producer --verify");
    println!("{}", clean.stdout.trim());
    assert_eq!(clean.figure("records"), EVENTS as u64);
    let by_type: u64 = ["USER_REGISTERED", "USER_LOGIN", "USER_LOGOUT"]
        .iter()
        .map(|kind| clean.figure(kind))
        .sum();
    assert_eq!(by_type, EVENTS as u64);
    assert_eq!(clean.figure("undecodable"), 0);

    // A record that is not a UserEvent (a truncated varint field).
    support::produce(
        &support::stack_var("KAFKA_BROKERS"),
        &topic,
        &[("garbage".to_string(), Some(vec![0x0a, 0xff]))],
    )
    .await;
    let dirty = verify(&topic);
    assert!(
        !dirty.status.success(),
        "undecodable records fail the check"
    );
    assert_eq!(dirty.figure("records"), EVENTS as u64 + 1);
    assert_eq!(dirty.figure("undecodable"), 1);
    assert!(
        dirty.stderr.contains("undecodable record"),
        "{}",
        dirty.stderr
    );
}

fn verify_run(topic: &str, events: usize, seed: u64) -> Finished {
    let (events, seed, users) = (events.to_string(), seed.to_string(), USERS.to_string());
    Program::spawn(
        "zstd_producer",
        &[
            "--verify", "--topic", topic, "--events", &events, "--seed", &seed, "--users", &users,
        ],
        &env(),
    )
    .wait(Duration::from_secs(120))
}

/// `--verify --events N --seed S`: the topic must hold exactly the events of that run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_with_the_runs_flags_finds_missing_extra_and_different_events() {
    let topic = support::unique_name("user-events");
    produce(&topic);
    let exact = verify_run(&topic, EVENTS, SEED);
    exact.assert_success("zstd_producer --verify --events --seed");
    assert_eq!(
        (exact.figure("matched"), exact.figure("missing")),
        (EVENTS as u64, 0)
    );
    // One event more than the run sent: a short topic fails and names the event.
    let short = verify_run(&topic, EVENTS + 1, SEED);
    assert_eq!(short.status.code(), Some(1), "{}", short.stderr);
    assert_eq!(short.figure("missing"), 1);
    assert!(
        short
            .stdout
            .contains(&format!("missing: event #{EVENTS} (")),
        "{}",
        short.stdout
    );

    // Ten events of seed 7 written by hand: #3 altered, #9 left out, one event of another
    // seed added.
    let topic = support::unique_name("user-events");
    let mut generator = EventGenerator::new(7, USERS);
    let mut records = Vec::new();
    for index in 0..10 {
        let mut event = EventGenerator::empty_event();
        generator.fill(&mut event);
        let key = event.user_id.clone();
        if index == 3 {
            event.user_id = "someone-else".into();
        }
        if index != 9 {
            records.push((key, Some(event.encode_to_vec())));
        }
    }
    let mut stranger = EventGenerator::empty_event();
    EventGenerator::new(8, USERS).fill(&mut stranger);
    records.push((stranger.user_id.clone(), Some(stranger.encode_to_vec())));
    support::produce(&support::stack_var("KAFKA_BROKERS"), &topic, &records).await;
    let checked = verify_run(&topic, 10, 7);
    assert_eq!(checked.status.code(), Some(1), "{}", checked.stderr);
    assert_eq!(
        (
            checked.figure("matched"),
            checked.figure("missing"),
            checked.figure("extra"),
            checked.figure("different")
        ),
        (8, 1, 1, 1),
        "{}",
        checked.stdout
    );
    assert!(
        checked.stdout.contains("missing: event #9 (")
            && checked
                .stdout
                .contains(&format!("event {} (not expected)", stranger.event_id))
            && checked.stdout.contains("different: event #3 (")
            && checked.stdout.contains("): user_id"),
        "{}",
        checked.stdout
    );
    let last = checked.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("1 missing, 1 extra, 1 different"), "{last}");
}
