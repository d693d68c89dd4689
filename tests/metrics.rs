//! `--metrics-addr`: the long-running programs serve Prometheus metrics, their own counters
//! and librdkafka's statistics as gauges; a bad address is one clear error.

mod support;

use seckill_kafka::avro::encode_integer_list;
use std::time::Duration;
use support::{free_port, sample, scrape_until, Pipeline, Program};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sum_serves_its_counters_and_librdkafka_statistics() {
    let brokers = support::stack_var("KAFKA_BROKERS");
    let input = support::unique_name("metrics-input");
    let output = support::unique_name("metrics-output");
    let mut records = Vec::new();
    for n in 0..500 {
        let mut payload = Vec::new();
        encode_integer_list(&[n, 1, 2], &mut payload);
        records.push((format!("k{n}"), Some(payload)));
    }
    records.push(("bad".to_string(), Some(vec![0x03])));
    support::produce(&brokers, &input, &records).await;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A short session: a worker that joins after the group first settled makes librdkafka's
    // mock broker wait out the session timeout (less a second) before it rebalances, 44 s
    // with the default; Apache Kafka rebalances as soon as every member has rejoined.
    let config = std::env::temp_dir().join(format!("{output}.yaml"));
    std::fs::write(
        &config,
        "kafka:\n  properties:\n    session.timeout.ms: '6000'\n    heartbeat.interval.ms: '500'\n",
    )
    .unwrap();
    let env = vec![
        ("KAFKA_BROKERS".to_string(), brokers),
        ("SECKILL_CONFIG".to_string(), config.display().to_string()),
        (
            "SECKILL_STREAM_SUM_GROUP_ID".to_string(),
            support::unique_name("metrics"),
        ),
        (
            "SECKILL_KAFKA_STATISTICS_INTERVAL_MS".to_string(),
            "500".to_string(),
        ),
    ];
    let program = Program::spawn(
        "stream_sum",
        &[
            "run",
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--metrics-addr",
            &addr,
        ],
        &env,
    );
    let page = scrape_until(
        port,
        &[
            "stream_sum_records_total ",
            "dead_lettered_total{program=\"stream_sum\"} ",
            "kafka_consumer_lag{",
            "kafka_broker_rtt_seconds{",
            "kafka_client_queue_messages{",
            "kafka_sink_messages_sent_total{",
            "kafka_sink_breaker_state{",
        ],
        // At least once: workers joining one after another may repeat some records.
        |page| sample(page, "stream_sum_records_total ").is_some_and(|n| n >= 500.0),
    );
    let finished = program.terminate();
    let _ = std::fs::remove_file(&config);
    finished.assert_success("stream_sum");
    let page = page.unwrap_or_else(|missing| panic!("{missing}\nstderr:\n{}", finished.stderr));
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        finished.stderr.contains("serving Prometheus metrics"),
        "{}",
        finished.stderr
    );
    let lag = sample(&page, "kafka_consumer_lag{").unwrap();
    assert!(lag >= 0.0, "lag {lag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_kafka_serves_requests_by_outcome() {
    let pipeline = Pipeline::new("metrics");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = pipeline.spawn(
        "server_kafka",
        &["--initial-stock", "10", "--metrics-addr", &addr],
    );
    let client = pipeline.run("client_kafka", &["--users", "50", "--seed", "3"]);
    client.assert_success("client_kafka");
    let page = scrape_until(
        port,
        &[
            "seckill_requests_total{outcome=\"SUCCESS\"} 10",
            "seckill_requests_total{outcome=\"SOLD_OUT\"} 40",
            "seckill_request_age_seconds",
        ],
        |_| true,
    );
    let finished = server.terminate();
    finished.assert_success("server_kafka");
    page.unwrap_or_else(|missing| panic!("{missing}\nstderr:\n{}", finished.stderr));
}

#[test]
fn a_bad_metrics_address_is_one_line_naming_the_key() {
    let env = vec![(
        "KAFKA_BROKERS".to_string(),
        support::stack_var("KAFKA_BROKERS"),
    )];
    let bad = Program::spawn("stream_sum", &["--metrics-addr", "nonsense"], &env)
        .wait(Duration::from_secs(30));
    assert!(!bad.status.success());
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("telemetry.metrics_addr"),
        "{}",
        bad.stderr
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let busy = Program::spawn("stream_sum", &["--metrics-addr", &addr], &env)
        .wait(Duration::from_secs(30));
    assert!(!busy.status.success(), "{}", busy.stderr);
    assert!(
        busy.stderr.contains("cannot serve metrics on"),
        "{}",
        busy.stderr
    );
}
