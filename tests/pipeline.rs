//! The flash-sale pipeline end to end, as processes: client_kafka -> Kafka -> server_kafka ->
//! Redis -> log_worker -> PostgreSQL, including crashes (SIGKILL), a full replay, malformed
//! input and a broker outage. Every scenario ends with `log_worker --verify`.

mod support;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::Duration;
use support::{Backend, Finished, Pipeline, Program};

const WAIT: Duration = Duration::from_secs(90);

/// Every request id has results of exactly one outcome on the results topic (a result may
/// have been published again after a crash, always with the same outcome), every request
/// has one, and the counts of those outcomes equal Redis's and PostgreSQL's.
async fn assert_one_outcome_per_request(pipeline: &Pipeline, requests: usize) {
    let results = pipeline.results();
    assert_eq!(results.len(), requests, "requests with a result");
    let mut counts = std::collections::HashMap::new();
    for (request_id, answers) in &results {
        let outcomes: HashSet<_> = answers.iter().map(|result| result.outcome).collect();
        assert_eq!(outcomes.len(), 1, "{request_id} has outcomes {outcomes:?}");
        *counts.entry(answers[0].outcome).or_insert(0_u64) += 1;
    }
    let redis = pipeline
        .redis()
        .snapshot(pipeline.activity_id)
        .await
        .unwrap();
    let count = |outcome| counts.get(&outcome).copied().unwrap_or(0);
    use seckill_kafka::common::SeckillOutcome::{AlreadyBought, SoldOut, Success};
    assert_eq!(
        (count(Success), count(SoldOut), count(AlreadyBought)),
        (redis.success as u64, redis.sold_out, redis.already_bought),
        "distinct outcomes on the results topic vs Redis"
    );
    assert_eq!(
        count(Success) as i64,
        pipeline.rows().await,
        "SUCCESS vs rows"
    );
}

/// Drains the log queue and checks every invariant, including sold = min(stock, buyers).
fn drain_and_verify(pipeline: &Pipeline, buyers: u64) -> Finished {
    pipeline
        .run("log_worker", &["--drain"])
        .assert_success("log_worker --drain");
    let verify = pipeline.run(
        "log_worker",
        &["--verify", "--expect-buyers", &buyers.to_string()],
    );
    verify.assert_success("log_worker --verify");
    assert!(
        verify.stdout.contains("all invariants hold"),
        "{}",
        verify.stdout
    );
    verify
}

on_both!(end_to_end_small_demo: end_to_end_on_one_redis, end_to_end_on_a_redis_cluster);

async fn end_to_end_small_demo(backend: Backend) {
    let pipeline = Pipeline::new("e2e").on(backend);
    let server = pipeline.spawn("server_kafka", &["--initial-stock", "200"]);
    let worker = pipeline.spawn("log_worker", &[]);
    let client = pipeline.run(
        "client_kafka",
        &[
            "--users",
            "1000",
            "--requests-per-user",
            "3",
            "--seed",
            "7",
            "--await-results",
        ],
    );
    client.assert_success("client_kafka");
    assert_eq!((client.figure("sent"), client.figure("failed")), (3000, 0));
    // Every request got its answer; each user exactly one answer per request.
    assert!(
        client
            .stdout
            .contains("answered=3000/3000 users SUCCESS=200 "),
        "{}",
        client.stdout
    );
    assert!(
        client.stdout.contains("latency_ms p50="),
        "{}",
        client.stdout
    );

    pipeline
        .wait_for("all 3000 requests", WAIT, |s| s.requests_seen == 3000)
        .await;
    let rows_target = 200;
    pipeline
        .wait_for("records stored", WAIT, |s| {
            s.queued_records == 0 && s.processing_records == 0
        })
        .await;
    let server = server.terminate();
    server.assert_success("server_kafka");
    assert_eq!(server.figure("success"), 200);
    assert_eq!(
        server.figure("already_bought") + server.figure("sold_out") + 200,
        3000
    );
    assert!(
        server.stdout.contains("latency cost_ms p50="),
        "{}",
        server.stdout
    );
    let worker = worker.terminate();
    worker.assert_success("log_worker");
    assert_eq!(worker.figure("inserted"), rows_target);

    drain_and_verify(&pipeline, 1000);
    assert_eq!(pipeline.rows().await, 200);
    assert_one_outcome_per_request(&pipeline, 3000).await;

    // One user looked up: their three requests, and their row if they bought.
    let lookup = pipeline.run("log_worker", &["--verify", "--user", "1"]);
    lookup.assert_success("log_worker --verify --user");
    assert!(
        lookup.stdout.contains("requests decided in Redis: 3")
            && lookup.stdout.contains("7-1-0  ")
            && lookup.stdout.contains("7-1-2  "),
        "{}",
        lookup.stdout
    );
    let bought = lookup.stdout.contains("purchases held in Redis: 1");
    assert!(
        bought || lookup.stdout.contains("purchases held in Redis: 0"),
        "{}",
        lookup.stdout
    );
    assert_eq!(
        bought,
        lookup
            .stdout
            .contains("rows in PostgreSQL: 1\n    request_id=7-1-"),
        "{}",
        lookup.stdout
    );
}

/// Without a server, `--await-results` waits its timeout and fails, naming how many
/// requests got no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_results_fails_when_answers_do_not_come() {
    let pipeline = Pipeline::new("noanswer");
    // The results topic exists (another activity's answer is in it), but no server answers.
    support::produce(
        &pipeline.brokers,
        &pipeline.results_topic,
        &[("0".to_string(), Some(b"{}".to_vec()))],
    )
    .await;
    let client = pipeline.run(
        "client_kafka",
        &[
            "--users",
            "50",
            "--seed",
            "1",
            "--await-results",
            "--results-timeout-ms",
            "2000",
        ],
    );
    assert_eq!(client.status.code(), Some(1), "{}", client.stderr);
    assert!(client.stdout.contains("answered=0/50"), "{}", client.stdout);
    assert!(
        client
            .stderr
            .ends_with("client_kafka: error: 50 requests got no result within 2 s\n"),
        "{}",
        client.stderr
    );
}

on_both!(sigkill_server_and_log_worker_mid_run_loses_nothing: sigkill_mid_run_loses_nothing_on_one_redis, sigkill_mid_run_loses_nothing_on_a_redis_cluster);

async fn sigkill_server_and_log_worker_mid_run_loses_nothing(backend: Backend) {
    let pipeline = Pipeline::new("crash").on(backend);
    let client = pipeline.spawn(
        "client_kafka",
        &[
            "--users",
            "3000",
            "--requests-per-user",
            "2",
            "--rate",
            "1500",
            "--seed",
            "3",
        ],
    );
    let server = pipeline.spawn("server_kafka", &["--initial-stock", "400"]);
    let worker = pipeline.spawn("log_worker", &["--batch-size", "20"]);

    pipeline
        .wait_for("a quarter of the requests", WAIT, |s| {
            s.requests_seen >= 1500
        })
        .await;
    server.kill();
    // Restart on the kept state; the group resumes from the committed offsets and the
    // requests processed but not committed come back, answered with their first outcome.
    let server = pipeline.spawn("server_kafka", &["--keep-state"]);
    pipeline
        .wait_for("records flowing", WAIT, |s| s.success >= 150)
        .await;
    worker.kill();
    let worker = pipeline.spawn("log_worker", &["--batch-size", "20"]);

    let client = client.wait(WAIT);
    client.assert_success("client_kafka");
    assert_eq!(client.figure("sent"), 6000);
    pipeline
        .wait_for("all 6000 requests", WAIT, |s| s.requests_seen == 6000)
        .await;
    pipeline
        .wait_for("records stored", WAIT, |s| {
            s.queued_records == 0 && s.processing_records == 0
        })
        .await;
    server.terminate().assert_success("restarted server_kafka");
    worker.terminate().assert_success("restarted log_worker");

    drain_and_verify(&pipeline, 3000);
    assert_eq!(pipeline.rows().await, 400);
    assert_one_outcome_per_request(&pipeline, 6000).await;
}

on_both!(log_worker_recovers_what_a_crashed_worker_took: log_worker_recovery_on_one_redis, log_worker_recovery_on_a_redis_cluster);

async fn log_worker_recovers_what_a_crashed_worker_took(backend: Backend) {
    let pipeline = Pipeline::new("recover").on(backend);
    let server = pipeline.spawn("server_kafka", &["--initial-stock", "50"]);
    let client = pipeline.run("client_kafka", &["--users", "80", "--seed", "1"]);
    client.assert_success("client_kafka");
    pipeline
        .wait_for("50 sales", WAIT, |s| {
            s.success == 50 && s.requests_seen == 80
        })
        .await;
    server.terminate().assert_success("server_kafka");

    // What a worker killed between taking and acknowledging leaves behind: records in its
    // processing list and a lease that lapses.
    let redis = pipeline.redis();
    let crashed = redis.log_queue(pipeline.activity_id, "crashed-1");
    crashed.register(Duration::from_millis(200)).await.unwrap();
    let taken = crashed.take(30, Duration::ZERO).await.unwrap();
    assert_eq!(taken.len(), 30);
    let worker = pipeline.run("log_worker", &["--drain"]);
    worker.assert_success("log_worker --drain");
    assert_eq!(worker.figure("recovered"), 30);
    assert_eq!(worker.figure("inserted"), 50);

    // And a second crash after the insert but before the acknowledgement: the replay
    // inserts nothing twice.
    let crashed = redis.log_queue(pipeline.activity_id, "crashed-2");
    crashed.register(Duration::from_millis(200)).await.unwrap();
    {
        let keys = seckill_kafka::redis_state::ActivityKeys::new(pipeline.activity_id);
        let mut connection = redis.connection().await.unwrap();
        for record in &taken {
            let () = redis::cmd("RPUSH")
                .arg(keys.processing(crashed.worker()))
                .arg(record)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    }
    let replay = pipeline.run("log_worker", &["--drain"]);
    replay.assert_success("log_worker replay");
    assert_eq!(
        (
            replay.figure("recovered"),
            replay.figure("inserted"),
            replay.figure("already_stored")
        ),
        (30, 0, 30)
    );
    drain_and_verify(&pipeline, 80);
}

/// Redis SIGKILLed (AOF on) and restarted while 20,000 requests flow against stock 5,000:
/// server_kafka and log_worker ride it out without a restart, and every record reaches
/// PostgreSQL, none left in a processing list (a take whose reply the crash swallowed is
/// read back from the worker's own list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_strands_no_record() {
    let mut redis = support::KillableRedis::start();
    let pipeline = Pipeline::new("redis-restart").with_redis(redis.url());
    let server = pipeline.spawn("server_kafka", &["--initial-stock", "5000"]);
    let mut worker = pipeline.spawn("log_worker", &["--batch-size", "50"]);
    let client = pipeline.spawn(
        "client_kafka",
        &["--users", "20000", "--rate", "4000", "--seed", "11"],
    );
    pipeline
        .wait_for("sales under way", WAIT, |s| s.success >= 1000)
        .await;
    redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    redis.restart();

    client.wait(WAIT).assert_success("client_kafka");
    let snapshot = pipeline
        .wait_for("every request, every record stored", WAIT, |s| {
            s.requests_seen == 20_000 && s.queued_records == 0 && s.processing_records == 0
        })
        .await;
    assert!(worker.is_running(), "log_worker was not restarted");
    assert_eq!((snapshot.success, snapshot.stock), (5_000, Some(0)));
    assert_eq!(pipeline.rows().await, 5_000, "rows = success");
    server.terminate().assert_success("server_kafka");
    let worker = worker.terminate();
    worker.assert_success("log_worker");
    assert_eq!(worker.figure("inserted"), 5_000);
}

/// The reply to a take is lost after Redis moved the records (a proxy swallows it and cuts
/// the connection): log_worker reads its own processing list back and stores them, without
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_whose_reply_is_lost_strands_nothing() {
    let pipeline = Pipeline::new("lost-reply");
    let support::Backend::Single(redis_url) = &pipeline.backend else {
        unreachable!("a new pipeline is on the single node")
    };
    let redis_port: u16 = redis_url
        .rsplit(':')
        .next()
        .and_then(|tail| tail.split('/').next())
        .and_then(|port| port.parse().ok())
        .expect("REDIS_URL has a port");
    let server = pipeline.spawn("server_kafka", &["--initial-stock", "300"]);
    let client = pipeline.run("client_kafka", &["--users", "300", "--seed", "2"]);
    client.assert_success("client_kafka");
    pipeline
        .wait_for("300 sales", WAIT, |s| s.success == 300)
        .await;
    server.terminate().assert_success("server_kafka");

    // Records are JSON with a request_id: the first reply carrying them is lost.
    let proxy = support::ReplyDroppingProxy::start(redis_port, b"request_id");
    let mut env = pipeline.env();
    env.retain(|(name, _)| name != "REDIS_URL");
    env.push((
        "REDIS_URL".into(),
        format!("redis://127.0.0.1:{}/0", proxy.port),
    ));
    let mut worker = Program::spawn("log_worker", &["--batch-size", "50"], &env);
    let snapshot = pipeline
        .wait_for("every record stored", WAIT, |s| {
            s.queued_records == 0 && s.processing_records == 0
        })
        .await;
    assert!(
        proxy.dropped.load(std::sync::atomic::Ordering::SeqCst),
        "a reply was lost"
    );
    assert!(worker.is_running(), "log_worker was not restarted");
    assert_eq!(snapshot.success, 300);
    let finished = worker.terminate();
    finished.assert_success("log_worker");
    assert!(finished.figure("recovered") >= 1, "{}", finished.stdout);
    assert_eq!(pipeline.rows().await, 300, "rows = success");
}

on_both!(several_log_workers_share_the_queue_and_take_over_a_dead_ones_records: several_log_workers_on_one_redis, several_log_workers_on_a_redis_cluster);

/// Three log_workers on one activity, one of them SIGKILLed mid-run: the others take over
/// its records once its lease lapses, without a restart; no worker inserts a batch another
/// worker holds (no replays while all live), and rows = success.
async fn several_log_workers_share_the_queue_and_take_over_a_dead_ones_records(backend: Backend) {
    let pipeline = Pipeline::new("workers").on(backend);
    let server = pipeline.spawn("server_kafka", &["--initial-stock", "3000"]);
    // Each worker holds at most BATCH x LOOPS records at a time.
    const BATCH: u64 = 20;
    const LOOPS: u64 = 4;
    let worker_flags = [
        "--batch-size",
        &BATCH.to_string(),
        "--concurrency",
        &LOOPS.to_string(),
    ];
    let workers: Vec<Program> = (0..3)
        .map(|_| pipeline.spawn("log_worker", &worker_flags))
        .collect();
    let client = pipeline.spawn(
        "client_kafka",
        &["--users", "6000", "--rate", "3000", "--seed", "5"],
    );
    pipeline
        .wait_for("records flowing", WAIT, |s| s.success >= 500)
        .await;
    let mut workers = workers.into_iter();
    let killed = workers.next().unwrap();
    killed.kill();
    client.wait(WAIT).assert_success("client_kafka");
    pipeline
        .wait_for("every record stored", WAIT, |s| {
            s.requests_seen == 6_000 && s.queued_records == 0 && s.processing_records == 0
        })
        .await;
    server.terminate().assert_success("server_kafka");
    let mut inserted = 0;
    let mut replayed = 0;
    for worker in workers {
        let worker = worker.terminate();
        worker.assert_success("log_worker");
        inserted += worker.figure("inserted");
        replayed += worker.figure("already_stored");
    }
    let rows = pipeline.rows().await;
    assert_eq!(rows, 3_000, "rows = success");
    // What the killed worker stored before dying, plus what the others inserted, is every
    // row; a replay happens only for the batches the killed worker had in hand.
    assert!(
        inserted <= 3_000 && replayed <= BATCH * LOOPS,
        "inserted {inserted}, replayed {replayed}"
    );
    drain_and_verify(&pipeline, 6_000);
}

/// server_kafka SIGKILLed and restarted five times while requests flow: each restart
/// answers requests again within 10 s of its start (static membership lets Apache Kafka
/// hand the partitions straight back; the dev broker does not implement it, and a 6 s
/// session lets it drop the dead members in time), and at the end every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_processes_again_within_ten_seconds_five_times() {
    let pipeline = Pipeline::new("restarts");
    let start = |extra: &[&str]| {
        let port = support::free_port();
        let metrics = format!("127.0.0.1:{port}");
        let mut args = vec!["--instance-id", "restart-test", "--metrics-addr", &metrics];
        args.extend_from_slice(extra);
        (pipeline.spawn("server_kafka", &args), port)
    };
    // The client's first requests create the topic; the group then gets its partitions.
    let client = pipeline.spawn(
        "client_kafka",
        &["--users", "40000", "--rate", "1000", "--seed", "9"],
    );
    let (mut server, mut port) = start(&["--initial-stock", "2000"]);
    let deadline = std::time::Instant::now() + WAIT;
    while !support::is_ready(port) {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    for round in 1..=5 {
        let deadline = std::time::Instant::now() + WAIT;
        while support::answered(port).unwrap_or(0) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server.kill();
        let restarted = std::time::Instant::now();
        (server, port) = start(&["--keep-state"]);
        while support::answered(port).unwrap_or(0) == 0 {
            assert!(
                restarted.elapsed() < Duration::from_secs(10),
                "round {round}: the restarted server answered nothing within 10 s:\n{}",
                server.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "round {round}: answering again {:?} after the restart",
            restarted.elapsed()
        );
    }
    client.wait(WAIT).assert_success("client_kafka");
    pipeline
        .wait_for("every request", WAIT, |s| s.requests_seen == 40_000)
        .await;
    server.terminate().assert_success("server_kafka");
    drain_and_verify(&pipeline, 40_000);
}

/// Resets `group` to the earliest offsets, the way `kafka-consumer-groups --reset-offsets
/// --to-earliest` does: join the (otherwise empty) group, then commit every partition's low
/// watermark as a member.
async fn reset_group_to_earliest(brokers: &str, group: &str, topic: &str) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // server_kafka's session on the dev broker. The mock restarts a rebalance's wait
        // at the last leaver's session minus 1 s and expires members waiting in a join after
        // their own session, so a longer session here would strand the server's join.
        .set("session.timeout.ms", "4000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while consumer.assignment().unwrap().count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no assignment for the reset"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    let mut offsets = TopicPartitionList::new();
    for element in consumer.assignment().unwrap().elements() {
        let (low, _) = consumer
            .fetch_watermarks(topic, element.partition(), Duration::from_secs(10))
            .unwrap();
        offsets
            .add_partition_offset(topic, element.partition(), Offset::Offset(low))
            .unwrap();
    }
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    consumer.unsubscribe();
}

/// Waits until the group's committed offsets reach the end of every partition.
async fn wait_group_caught_up(brokers: &str, group: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut wanted = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            wanted.add_partition(topic, partition.id());
        }
        let committed = consumer
            .committed_offsets(wanted, Duration::from_secs(10))
            .unwrap();
        let positions: Vec<(Offset, i64)> = committed
            .elements()
            .iter()
            .map(|element| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, element.partition(), Duration::from_secs(10))
                    .unwrap();
                (element.offset(), high)
            })
            .collect();
        if positions
            .iter()
            .all(|(committed, high)| *high == 0 || *committed == Offset::Offset(*high))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group {group} did not catch up: {positions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

on_both!(replaying_the_whole_topic_changes_nothing: replay_on_one_redis, replay_on_a_redis_cluster);

async fn replaying_the_whole_topic_changes_nothing(backend: Backend) {
    let pipeline = Pipeline::new("replay").on(backend);
    let server = pipeline.spawn("server_kafka", &["--initial-stock", "100"]);
    pipeline
        .run(
            "client_kafka",
            &["--users", "300", "--requests-per-user", "2", "--seed", "5"],
        )
        .assert_success("client_kafka");
    pipeline
        .wait_for("600 requests", WAIT, |s| s.requests_seen == 600)
        .await;
    wait_group_caught_up(&pipeline.brokers, &pipeline.group, &pipeline.topic).await;
    server.terminate().assert_success("server_kafka");
    pipeline
        .run("log_worker", &["--drain"])
        .assert_success("log_worker");
    let before = pipeline
        .redis()
        .snapshot(pipeline.activity_id)
        .await
        .unwrap();
    let rows_before = pipeline.rows().await;
    assert_eq!((before.success, rows_before), (100, 100));

    reset_group_to_earliest(&pipeline.brokers, &pipeline.group, &pipeline.topic).await;
    let replay = pipeline.spawn("server_kafka", &["--keep-state"]);
    let caught_up = tokio::time::timeout(
        Duration::from_secs(40),
        wait_group_caught_up(&pipeline.brokers, &pipeline.group, &pipeline.topic),
    )
    .await;
    let replay = replay.terminate();
    assert!(
        caught_up.is_ok(),
        "replay did not catch up:\n{}\n{}",
        replay.stdout,
        replay.stderr
    );
    replay.assert_success("replaying server_kafka");
    // Every replayed request is answered with its first outcome, none decided anew. More
    // than 600 repeats is at-least-once at work: the replaying group's second consumer joins
    // after the first started, and the partitions it takes over are read again from their
    // last commit.
    assert!(
        replay.figure("repeated") >= 600,
        "every replayed request is answered with its first outcome:\n{}",
        replay.stdout
    );
    for first_decision in ["success", "sold_out", "already_bought", "timeout"] {
        assert_eq!(replay.figure(first_decision), 0, "{first_decision}");
    }

    pipeline
        .run("log_worker", &["--drain"])
        .assert_success("log_worker");
    let after = pipeline
        .redis()
        .snapshot(pipeline.activity_id)
        .await
        .unwrap();
    assert_eq!((after.stock, after.success), (before.stock, before.success));
    assert_eq!(pipeline.rows().await, rows_before);
    drain_and_verify(&pipeline, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_topic() {
    let pipeline = Pipeline::new("malformed");
    let garbage: Vec<Option<Vec<u8>>> = vec![
        Some(b"not json".to_vec()),
        Some(b"{}".to_vec()),
        Some(b"\xff\xfe\x00".to_vec()),
        Some(
            br#"{"request_id":"x","user_id":"seven","activity_id":1,"request_initiation_time":0}"#
                .to_vec(),
        ),
        Some(
            br#"{"request_id":"","user_id":7,"activity_id":1,"request_initiation_time":0}"#
                .to_vec(),
        ),
        None,
    ];
    let mut messages = Vec::new();
    for n in 0..60u64 {
        let payload = support::request_json(pipeline.activity_id, n, &format!("good-{n}"));
        messages.push((n.to_string(), Some(payload)));
        if n % 10 == 0 {
            let bad = garbage[(n / 10) as usize].clone();
            messages.push((format!("bad-{n}"), bad));
        }
    }
    // Valid, but for another activity: not this server's, and not malformed.
    messages.push((
        "other".into(),
        Some(support::request_json(
            pipeline.activity_id + 1,
            1,
            "other-1",
        )),
    ));
    support::produce(&pipeline.brokers, &pipeline.topic, &messages).await;

    let server = pipeline.spawn("server_kafka", &["--initial-stock", "1000"]);
    pipeline
        .wait_for("60 good requests", WAIT, |s| s.requests_seen == 60)
        .await;
    wait_group_caught_up(&pipeline.brokers, &pipeline.group, &pipeline.topic).await;
    let server = server.terminate();
    server.assert_success("server_kafka kept running through garbage");
    let (success, malformed, other) = (
        server.figure("success"),
        server.figure("malformed"),
        server.figure("other_activity"),
    );
    assert_eq!(success, 60);
    // At least once: when a consumer joins late, the records its partitions' first owner
    // read since the last commit are read again (the dev broker refuses a commit during a
    // rebalance), so a bad or foreign record may be counted again at each of the group's
    // rebalances while its two consumers join (up to three reads); never less than once.
    assert!(
        (6..=18).contains(&malformed) && (1..=3).contains(&other),
        "malformed={malformed} (6 bad records) other_activity={other} (1)"
    );

    // The dead-letter topic has each bad payload once, with the reason and the source.
    let dlq = format!("{}.dlq", pipeline.topic);
    let mut seen = HashSet::new();
    let expected: HashSet<Option<Vec<u8>>> = garbage.iter().cloned().collect();
    let all_seen = |dead: &[support::DeadLetter]| {
        dead.iter()
            .map(|d| d.payload.clone())
            .collect::<HashSet<_>>()
            == expected
    };
    for dead in support::dead_letters(&pipeline.brokers, &dlq, all_seen).await {
        assert!(!dead.reason.is_empty(), "reason header");
        assert!(dead.source.starts_with(&pipeline.topic), "source header");
        assert!(dead.key.unwrap().starts_with(b"bad-"));
        seen.insert(dead.payload);
    }
    assert_eq!(seen, expected);
}

/// The broker goes down for 3 s mid-run (mock cluster fault injection, in this process);
/// once it is back, every request is processed and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    // Its topics are made by Pipeline::with_brokers (the mock's default of 4 partitions).
    let pipeline = Pipeline::with_brokers("outage", cluster.bootstrap_servers());
    let first: Vec<_> = (0..500u64)
        .map(|n| {
            (
                n.to_string(),
                Some(support::request_json(
                    pipeline.activity_id,
                    n,
                    &format!("a-{n}"),
                )),
            )
        })
        .collect();
    let second: Vec<_> = (500..1000u64)
        .map(|n| {
            (
                n.to_string(),
                Some(support::request_json(
                    pipeline.activity_id,
                    n,
                    &format!("b-{n}"),
                )),
            )
        })
        .collect();

    let server = pipeline.spawn("server_kafka", &["--initial-stock", "700"]);
    support::produce(&pipeline.brokers, &pipeline.topic, &first).await;
    pipeline
        .wait_for("the first half", WAIT, |s| s.requests_seen == 500)
        .await;

    cluster.broker_down(1).unwrap();
    let producing = {
        let brokers = pipeline.brokers.clone();
        let topic = pipeline.topic.clone();
        tokio::spawn(async move { support::produce(&brokers, &topic, &second).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.broker_up(1).unwrap();
    producing.await.unwrap();

    pipeline
        .wait_for("every request", WAIT, |s| s.requests_seen == 1000)
        .await;
    let server = server.terminate();
    server.assert_success("server_kafka survived the outage");
    let snapshot = pipeline
        .redis()
        .snapshot(pipeline.activity_id)
        .await
        .unwrap();
    assert_eq!((snapshot.success, snapshot.stock), (700, Some(0)));
    drain_and_verify(&pipeline, 1000);
}

/// The KIP-848 consumer group protocol (`--group-protocol consumer`, Kafka 4) on the dev
/// broker: the server answers every request, a SIGKILLed server restarted with the same
/// static id answers again, and every invariant holds. The dev broker's session for such
/// groups is 6 s (scripts: dev_broker); Apache Kafka's is its broker setting
/// `group.consumer.session.timeout.ms`, 45 s by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_group_protocol_answers_and_recovers() {
    let pipeline = Pipeline::new("kip848");
    let flags = ["--group-protocol", "consumer", "--instance-id", "kip848"];
    let first = pipeline.spawn(
        "server_kafka",
        &[&flags[..], &["--initial-stock", "150"]].concat(),
    );
    let client = pipeline.run(
        "client_kafka",
        &["--users", "200", "--seed", "1", "--await-results"],
    );
    client.assert_success("client_kafka");
    assert!(
        client
            .stdout
            .contains("answered=200/200 users SUCCESS=150 SOLD_OUT=50"),
        "{}",
        client.stdout
    );
    drop(first.kill());

    let killed_at = std::time::Instant::now();
    let second = pipeline.spawn("server_kafka", &[&flags[..], &["--keep-state"]].concat());
    let client = pipeline.run(
        "client_kafka",
        &["--users", "100", "--seed", "2", "--await-results"],
    );
    client.assert_success("client_kafka after the restart");
    eprintln!("answered again {:?} after the SIGKILL", killed_at.elapsed());
    pipeline
        .wait_for("300 requests", WAIT, |s| s.requests_seen == 300)
        .await;
    let second = second.terminate();
    second.assert_success("server_kafka (consumer protocol)");
    assert!(
        second.stderr.contains("group_protocol=\"consumer\""),
        "{}",
        second.stderr
    );
    drain_and_verify(&pipeline, 300);
}
