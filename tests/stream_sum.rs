//! stream_sum as a process against the dev broker (or `KAFKA_BROKERS`): every IntegerList
//! becomes its SumResult under the same key, undecodable records go to the dead-letter
//! topic, a rebalance under back-pressure repeats nothing, SIGTERM drains, the exactly-once
//! mode survives SIGKILL, and a small benchmark run verifies itself.

mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use seckill_kafka::avro::{decode_sum_result, encode_integer_list};
use seckill_kafka::stream_sum::DLQ_ERROR_HEADER;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{Finished, Program};

/// `(key, payload)` records as `support::produce` sends them.
type Records = Vec<(String, Option<Vec<u8>>)>;

/// Keyed lists `k0..k{n}` with random numbers, and the sum expected for each key.
fn keyed_lists(n: usize) -> (Records, HashMap<String, i64>) {
    let mut expected = HashMap::new();
    let mut messages = Vec::new();
    for index in 0..n {
        let numbers: Vec<i32> = (0..rand::random_range(0..6))
            .map(|_| rand::random_range(-1_000..1_000))
            .collect();
        let key = format!("k{index}");
        expected.insert(key.clone(), numbers.iter().map(|&x| i64::from(x)).sum());
        let mut payload = Vec::new();
        encode_integer_list(&numbers, &mut payload);
        messages.push((key, Some(payload)));
    }
    (messages, expected)
}

/// Every record of `topic` (from the start up to its end now, as a `read_committed` or
/// `read_uncommitted` reader sees it), after the topic holds at least `at_least` offsets.
fn read_all(brokers: &str, topic: &str, at_least: i64, isolation: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", support::unique_name("stream-sum-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (ends, total) = loop {
        let partitions = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        let ends: Vec<(i64, i64)> = (0..partitions as i32)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap()
            })
            .collect();
        let total: i64 = ends.iter().map(|(_, high)| high).sum();
        if partitions > 0 && total >= at_least {
            break (ends, total);
        }
        assert!(
            Instant::now() < deadline,
            "{topic} holds {total} offsets, expected at least {at_least}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut assignment = TopicPartitionList::new();
    for (partition, _) in ends.iter().enumerate() {
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let mut last_seen = vec![-1_i64; ends.len()];
    let mut idle_since = Instant::now();
    // Transaction markers take offsets too: stop at the ends or after a quiet second.
    while last_seen
        .iter()
        .zip(&ends)
        .any(|(&seen, &(_, high))| seen + 1 < high)
        && idle_since.elapsed() < Duration::from_secs(3)
    {
        if let Some(received) = consumer.poll(Duration::from_millis(100)) {
            let message = received.unwrap();
            idle_since = Instant::now();
            let partition = message.partition() as usize;
            if message.offset() < ends[partition].1 {
                last_seen[partition] = message.offset();
                records.push(message.detach());
            }
        }
    }
    assert!(records.len() as i64 <= total);
    records
}

fn sums_by_key(records: &[OwnedMessage]) -> HashMap<String, Vec<i64>> {
    let mut sums: HashMap<String, Vec<i64>> = HashMap::new();
    for record in records {
        let key = String::from_utf8(record.key().unwrap().to_vec()).unwrap();
        let sum = decode_sum_result(record.payload().unwrap()).unwrap();
        sums.entry(key).or_default().push(sum);
    }
    sums
}

/// Waits until `topic` holds at least `count` offsets; says how far it got if it does not.
fn wait_for_offsets(brokers: &str, topic: &str, count: i64) -> Result<(), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let partitions = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        let total: i64 = (0..partitions as i32)
            .filter_map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .ok()
            })
            .map(|(_, high)| high)
            .sum();
        if total >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{topic}: {total} of {count} offsets"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every one of `keys` keys has a result in `topic` (repeats or not) and
/// returns what the topic holds then.
fn wait_for_keys(
    brokers: &str,
    topic: &str,
    keys: usize,
    isolation: &str,
) -> Result<Vec<OwnedMessage>, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let results = read_all(brokers, topic, 0, isolation);
        let found = sums_by_key(&results).len();
        if found == keys {
            return Ok(results);
        }
        if Instant::now() > deadline {
            return Err(format!("{topic}: {found} of {keys} keys have a result"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stops the programs and fails with what they logged.
fn fail_with_logs(reason: String, programs: Vec<Program>) -> ! {
    let logs: Vec<String> = programs
        .into_iter()
        .map(|program| {
            let finished = program.terminate();
            format!(
                "--- stdout:\n{}\n--- stderr:\n{}",
                finished.stdout, finished.stderr
            )
        })
        .collect();
    panic!("{reason}\n{}", logs.join("\n"));
}

/// One scenario's settings: its own group, a short session timeout so a killed member is
/// noticed in seconds, and `extra` environment. The config file goes when this is dropped.
struct Scenario {
    config_path: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Scenario {
    fn new(brokers: &str, group: &str, extra: &[(&str, &str)]) -> Self {
        let config_path = std::env::temp_dir().join(format!("{group}.yaml"));
        std::fs::write(
            &config_path,
            "kafka:\n  properties:\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '500'\n",
        )
        .unwrap();
        let mut env = vec![
            ("KAFKA_BROKERS".to_string(), brokers.to_string()),
            ("SECKILL_STREAM_SUM_GROUP_ID".to_string(), group.to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
            (
                "SECKILL_CONFIG".to_string(),
                config_path.display().to_string(),
            ),
        ];
        for (name, value) in extra {
            env.push((name.to_string(), value.to_string()));
        }
        Self { config_path, env }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

fn run_args<'a>(input: &'a str, output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--input-topic", input, "--output-topic", output];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_every_list_and_dead_letters_garbage() {
    let brokers = support::stack_var("KAFKA_BROKERS");
    let input = support::unique_name("sum-input");
    let output = support::unique_name("sum-output");
    let (mut messages, expected) = keyed_lists(1_000);
    let garbage = [Some(vec![0x02]), Some(vec![0xff; 12]), None];
    for (n, bad) in garbage.iter().enumerate() {
        messages.insert(n * 300, (format!("bad{n}"), bad.clone()));
    }
    support::produce(&brokers, &input, &messages).await;

    let scenario = Scenario::new(&brokers, &support::unique_name("stream-sum"), &[]);
    let program = Program::spawn(
        "stream_sum",
        &run_args(&input, &output, &["--log-format", "json"]),
        &scenario.env,
    );
    // Every list's sum and every bad record's dead letter, counted by key: after a
    // repeat (below) the topics hold more offsets than records before all are processed.
    let dlq = format!("{input}.dlq");
    let waited = wait_for_keys(&brokers, &output, 1_000, "read_uncommitted").and_then(|_| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let keys: std::collections::HashSet<Vec<u8>> =
                read_all(&brokers, &dlq, 0, "read_uncommitted")
                    .iter()
                    .filter_map(|record| record.key().map(<[u8]>::to_vec))
                    .collect();
            if keys.len() == garbage.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{dlq}: {} of 3 dead letters", keys.len()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    if let Err(reason) = waited {
        fail_with_logs(reason, vec![program]);
    }
    let finished = program.terminate();
    finished.assert_success("stream_sum");

    // JSON logs, one event per line: each dead letter and each rebalance is an `event`
    // with its details as fields.
    let events: Vec<serde_json::Value> = finished
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
        .collect();
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["event"] == kind)
            .collect::<Vec<_>>()
    };
    // The workers join one by one; a worker that started reading before the others joined
    // commits when its partitions are revoked. The dev broker refuses that commit
    // (RebalanceInProgress; Apache Kafka accepts it), and then the records since the last
    // periodic commit are read again: allowed only when a refusal was logged.
    let refused = of("rebalance")
        .iter()
        .filter(|e| e["committed"] == false)
        .count();
    let counted = (
        finished.figure("processed"),
        finished.figure("dead_lettered"),
    );
    if refused == 0 {
        assert_eq!(counted, (1_000, 3), "no refused commit: nothing repeated");
    } else {
        assert!(
            counted.0 >= 1_000 && counted.1 >= 3,
            "{counted:?} after {refused} refused commits"
        );
    }
    let dead = of("dlq");
    if refused == 0 {
        assert_eq!(dead.len(), 3, "{dead:?}");
    }
    for event in dead {
        assert!(
            event["partition"].is_i64() && event["offset"].is_i64() && event["reason"].is_string(),
            "{event}"
        );
    }
    assert!(
        of("rebalance").iter().any(|e| e["assigned"].is_i64()),
        "assignment logged"
    );

    let results = read_all(&brokers, &output, 1_000, "read_uncommitted");
    let by_key = sums_by_key(&results);
    assert_eq!(by_key.len(), 1_000, "a result for every list");
    for (key, sums) in by_key {
        if refused == 0 {
            assert_eq!(sums, vec![expected[&key]], "sum for {key}, once");
        } else {
            assert!(
                sums.iter().all(|sum| *sum == expected[&key]),
                "sums for {key}: {sums:?}"
            );
        }
    }
    let dead = read_all(&brokers, &dlq, 3, "read_uncommitted");
    if refused == 0 {
        assert_eq!(dead.len(), 3);
    } else {
        assert!(dead.len() >= 3);
    }
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

/// A slow producer (a 2-message queue: each pair waits out the 20 ms linger and its
/// acknowledgement) fills the tiny channel, so the first member pauses
/// its partitions; a second member joins meanwhile. The rebalance completes (the paused
/// member keeps polling) and the revoked partitions are handed over after a flush and a
/// commit, so no sum is lost and none is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_under_back_pressure_loses_and_repeats_nothing() {
    let brokers = support::stack_var("KAFKA_BROKERS");
    let input = support::unique_name("sum-input");
    let output = support::unique_name("sum-output");
    let (messages, expected) = keyed_lists(3_000);
    support::produce(&brokers, &input, &messages).await;

    let scenario = Scenario::new(
        &brokers,
        &support::unique_name("stream-sum"),
        &[
            ("SECKILL_STREAM_SUM_CHANNEL_CAPACITY", "16"),
            ("SECKILL_STREAM_SUM_PRODUCER_QUEUE_MESSAGES", "2"),
            ("SECKILL_STREAM_SUM_WORKERS", "1"),
        ],
    );
    let args = run_args(&input, &output, &[]);
    let first = Program::spawn("stream_sum", &args, &scenario.env);
    if let Err(reason) = wait_for_offsets(&brokers, &output, 500) {
        fail_with_logs(reason, vec![first]);
    }
    let second = Program::spawn("stream_sum", &args, &scenario.env);
    let results = match wait_for_keys(&brokers, &output, 3_000, "read_uncommitted") {
        Ok(results) => results,
        Err(reason) => fail_with_logs(reason, vec![first, second]),
    };
    let (first, second): (Finished, Finished) = (first.terminate(), second.terminate());
    first.assert_success("first member");
    second.assert_success("second member");
    assert!(
        first.stderr.contains("rebalance: partitions revoked"),
        "the second member caused a rebalance:\n{}",
        first.stderr
    );
    assert!(
        first.figure("pauses") > 0,
        "the slow producer paused consumption"
    );
    assert!(
        second.figure("processed") > 0,
        "the second member got partitions"
    );

    // Terminated after every key had its result: nothing is written after that.
    let sums = sums_by_key(&results);
    assert_eq!(sums.len(), 3_000, "every key has its sum");
    for (key, found) in &sums {
        assert!(
            found.iter().all(|sum| *sum == expected[key]),
            "{key}: {found:?}"
        );
    }
    let processed = first.figure("processed") + second.figure("processed");
    assert_eq!(
        processed as usize,
        results.len(),
        "every result was counted"
    );
    let repeats = results.len() - 3_000;
    // Apache Kafka accepts a commit from the revoke callback, so nothing is repeated. The dev
    // broker refuses it (RebalanceInProgress): then the records since the last committed
    // delivery group (one per 0.5 s, about 50 records at this producer's pace) are read
    // again by their next owner, and the log says so.
    let refused = [&first, &second]
        .iter()
        .map(|f| f.stderr.matches("committed=false").count())
        .sum::<usize>();
    println!(
        "results={} repeats={repeats} refused_revoke_commits={refused}",
        results.len()
    );
    if refused == 0 {
        assert_eq!(repeats, 0, "revocations committed: nothing repeated");
    } else {
        assert!(
            repeats <= 1_000,
            "{repeats} repeats after {refused} refused commits"
        );
    }
}

/// Whether the broker hides aborted transactions from `read_committed` readers (Apache
/// Kafka does; the dev broker, librdkafka's mock, does not).
fn broker_filters_aborted_transactions(brokers: &str) -> bool {
    let topic = support::unique_name("txn-probe");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", support::unique_name("txn-probe"))
        .create()
        .unwrap();
    producer
        .init_transactions(Timeout::After(Duration::from_secs(30)))
        .unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(
            BaseRecord::<str, str>::to(&topic)
                .key("aborted")
                .payload("x"),
        )
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    producer
        .abort_transaction(Timeout::After(Duration::from_secs(30)))
        .unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(
            BaseRecord::<str, str>::to(&topic)
                .key("committed")
                .payload("x"),
        )
        .unwrap();
    producer
        .commit_transaction(Timeout::After(Duration::from_secs(30)))
        .unwrap();
    let seen = read_all(brokers, &topic, 1, "read_committed");
    !seen.iter().any(|m| m.key() == Some(b"aborted".as_slice()))
}

/// `--exactly-once` killed with SIGKILL mid-run and restarted: every list still gets its
/// sum. A `read_committed` reader sees each sum exactly once on a broker that filters
/// aborted transactions; on the dev broker, which shows aborted records too, the only
/// repeats are the transactions open at the kill (at most two per worker, each at most
/// `transaction_records`): everything committed before it was never processed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_sigkill() {
    const RECORDS: usize = 20_000;
    const TRANSACTION_RECORDS: usize = 100;
    const WORKERS: usize = 2;
    let brokers = support::stack_var("KAFKA_BROKERS");
    let input = support::unique_name("sum-input");
    let output = support::unique_name("sum-output");
    let (messages, expected) = keyed_lists(RECORDS);
    support::produce(&brokers, &input, &messages).await;
    let transaction_records = TRANSACTION_RECORDS.to_string();
    let workers = WORKERS.to_string();
    let scenario = Scenario::new(
        &brokers,
        &support::unique_name("stream-sum-eos"),
        &[
            (
                "SECKILL_STREAM_SUM_TRANSACTION_RECORDS",
                &transaction_records,
            ),
            ("SECKILL_STREAM_SUM_WORKERS", &workers),
            // Small transactions, slowed down so the kill lands mid-run.
            ("SECKILL_STREAM_SUM_PRODUCER_QUEUE_MESSAGES", "16"),
        ],
    );
    let args = run_args(&input, &output, &["--exactly-once"]);
    let first = Program::spawn("stream_sum", &args, &scenario.env);
    if let Err(reason) = wait_for_offsets(&brokers, &output, 3_000) {
        fail_with_logs(reason, vec![first]);
    }
    let killed = first.kill();
    assert!(!killed.status.success(), "SIGKILL");

    let second = Program::spawn("stream_sum", &args, &scenario.env);
    let results = match wait_for_keys(&brokers, &output, RECORDS, "read_committed") {
        Ok(results) => results,
        Err(reason) => fail_with_logs(reason, vec![second]),
    };
    let finished = second.terminate();
    finished.assert_success("restarted stream_sum");

    let sums = sums_by_key(&results);
    for (key, found) in &sums {
        assert!(
            found.iter().all(|sum| *sum == expected[key]),
            "{key}: {found:?}"
        );
    }
    let repeats = results.len() - RECORDS;
    println!(
        "results={} repeats={repeats} restarted_processed={}",
        results.len(),
        finished.figure("processed")
    );
    if broker_filters_aborted_transactions(&brokers) {
        assert_eq!(repeats, 0, "read_committed: each sum exactly once");
    } else {
        // On the dev broker a restart repeats the transactions open at the kill (their
        // records stay visible), one more per worker whose plain commit was still to come,
        // and one more for each commit that failed in either run (each says so).
        let failed_commits = format!("{}{}", killed.stderr, finished.stderr)
            .lines()
            .filter(|line| {
                line.contains("plain offset commit failed")
                    || line.contains("transaction commit failed")
            })
            .count();
        let allowed = (2 * WORKERS + failed_commits) * TRANSACTION_RECORDS;
        assert!(
            repeats <= allowed,
            "{repeats} repeats: more than the transactions open at the kill ({allowed}, {failed_commits} failed commits)"
        );
    }
}

/// `stream_sum bench` loads, processes and verifies a small backlog on its own, then runs
/// the baselines on it and verifies them too, in two rounds.
#[test]
fn small_bench_run_verifies_its_output() {
    let brokers = support::stack_var("KAFKA_BROKERS");
    let env = vec![
        ("KAFKA_BROKERS".to_string(), brokers),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ];
    let finished = Program::spawn(
        "stream_sum",
        &["bench", "--records", "200000", "--rounds", "2"],
        &env,
    )
    .wait(Duration::from_secs(300));
    finished.assert_success("stream_sum bench");
    println!("{}", finished.stdout.trim());
    assert_eq!(finished.figure("records"), 200_000);
    assert!(finished.stdout.contains("seconds="));
    assert!(finished.figure("msg_per_sec") > 0);
    // The baseline ran on the same backlog and its output verified (else exit 1).
    let baseline = finished
        .stdout
        .lines()
        .find(|line| line.trim_start().starts_with("baseline"))
        .expect("a baseline line");
    assert!(baseline.contains("msg_per_sec="), "{baseline}");
    // Each run's CPU per record, read from /proc (Linux, where the suite runs).
    let cpu: f64 = finished
        .stdout
        .split_whitespace()
        .find_map(|word| word.strip_prefix("cpu_us_per_record="))
        .and_then(|value| value.parse().ok())
        .expect("a cpu_us_per_record figure");
    assert!(cpu > 0.0, "{}", finished.stdout);
    assert!(
        finished.stdout.contains("x the baseline's"),
        "{}",
        finished.stdout
    );
    // Both durability settings: the C program's acks=1 and stream_sum's own; and the
    // results placed as the C program places them and as stream_sum does.
    for kind in [
        "(acks=1) = ",
        "(acks=all idempotent) = ",
        "(acks=all idempotent, results on their input partition) = ",
    ] {
        assert!(
            finished
                .stdout
                .contains(&format!("stream_sum / baseline {kind}")),
            "{}",
            finished.stdout
        );
    }
}

/// `stream_sum bench --exactly-once` processes its backlog with the transactional workers
/// and verifies what a `read_committed` reader sees of the output: one sum per list; then
/// the transactional baseline, verified the same way.
#[test]
fn exactly_once_bench_run_verifies_its_output() {
    let brokers = support::stack_var("KAFKA_BROKERS");
    let env = vec![
        ("KAFKA_BROKERS".to_string(), brokers.clone()),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ];
    let input = support::unique_name("bench-eos-input");
    let output = support::unique_name("bench-eos-output");
    // The dev broker has no CreateTopics: it creates a topic with its first record, which
    // the bench leaves out (it reads only what comes after its own start).
    let first = vec![("first".to_string(), Some(b"x".to_vec()))];
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        support::produce(&brokers, &input, &first).await;
        support::produce(&brokers, &output, &first).await;
    });
    let finished = Program::spawn(
        "stream_sum",
        &[
            "bench",
            "--records",
            "20000",
            "--exactly-once",
            "--input-topic",
            &input,
            "--output-topic",
            &output,
        ],
        &env,
    )
    .wait(Duration::from_secs(300));
    finished.assert_success("stream_sum bench --exactly-once");
    println!("{}", finished.stdout.trim());
    assert_eq!(finished.figure("records"), 20_000);
    assert!(finished.figure("msg_per_sec") > 0);
    assert!(
        finished.stdout.contains("exactly-once"),
        "{}",
        finished.stdout
    );
    // The transactional baselines ran on the same backlog, their output verified the same
    // way: results placed by the partitioner, and on their input partition.
    for placement in ["", ", results on their input partition"] {
        assert!(
            finished.stdout.contains(&format!(
                "stream_sum / baseline (transactional acks=all idempotent{placement}) = "
            )),
            "{}",
            finished.stdout
        );
    }
    // Where the workers' time went: at least one transaction committed, timed.
    let commits = finished
        .stdout
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("commits     stream_sum, median round: ")
        })
        .unwrap_or_else(|| panic!("no commits line:\n{}", finished.stdout));
    let transactions: u64 = commits
        .split(' ')
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count: {commits}"));
    assert!(transactions > 0, "{commits}");
    assert!(commits.contains(" s in commits ("), "{commits}");
}
