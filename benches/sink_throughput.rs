//! End-to-end send throughput to the broker in `KAFKA_BROKERS` (else the dev stack's, from
//! `.dev/env`): a plain rdkafka `BaseProducer` loop, `KafkaSink::enqueue` (the fast path),
//! `KafkaSink::enqueue_batch` (the fast path, 1,024 messages a call) and
//! `KafkaSink::send_batch` (awaited deliveries), on the same record and settings
//! (acks=all, idempotence, linger 5 ms, 10,000-message batches, no compression), each with
//! and without a `content-type` header (headers cost librdkafka throughput, so the pairs are
//! like for like).
//! Every measured batch ends with a flush, so it counts delivered messages.
//! `make bench` (starts the stack), or `cargo bench --bench sink_throughput`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use seckill_kafka::kafka::sink::{KafkaMessage, KafkaSink, SinkConfig};
use serde::Serialize;
use std::fmt::Write as _;
// Keys are written into byte buffers too (a `Vec<u8>` is an `io::Write`).
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: u64 = 20_000;
/// Messages per `enqueue_batch` call (stream_sum's batch length).
const ENQUEUE_BATCH: u64 = 1_024;

#[derive(Clone, Serialize)]
struct Request {
    request_id: String,
    user_id: u64,
    activity_id: u64,
    request_initiation_time: i64,
}

fn brokers() -> String {
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        return brokers;
    }
    let env = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dev/env"))
        .unwrap_or_default();
    env.lines()
        .find_map(|line| line.strip_prefix("export KAFKA_BROKERS="))
        .map(str::to_string)
        .expect("KAFKA_BROKERS is not set and .dev/env has none: run `scripts/dev-stack.sh up` or `make bench`")
}

fn topic(name: &str) -> String {
    format!("bench-{name}-{}", std::process::id())
}

fn request(n: u64) -> Request {
    Request {
        request_id: format!("bench-{n}"),
        user_id: n,
        activity_id: 1,
        request_initiation_time: 1_763_845_000_000,
    }
}

fn sink_config(brokers: &str, topic: &str) -> SinkConfig {
    let mut config = SinkConfig::for_brokers(brokers, topic);
    config.breaker_threshold = 0;
    config
}

fn throughput(c: &mut Criterion) {
    let brokers = brokers();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("send_throughput");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.warm_up_time(Duration::from_secs(1));

    // The baseline: what a hand-written librdkafka loop does with the same settings.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut fast_sinks = Vec::new();
    for with_header in [false, true] {
        let suffix = if with_header { "_with_header" } else { "" };
        let base_name = format!("base_producer_loop{suffix}");
        let base_topic = topic(&base_name);
        group.bench_function(&base_name, |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                let mut payload = Vec::with_capacity(256);
                let mut key = String::with_capacity(24);
                let mut message = request(0);
                for n in 0..iterations * BATCH {
                    message.user_id = n;
                    payload.clear();
                    serde_json::to_writer(&mut payload, &message).expect("json");
                    key.clear();
                    let _ = write!(key, "{n}");
                    let mut record = BaseRecord::to(&base_topic)
                        .key(key.as_str())
                        .payload(payload.as_slice());
                    if with_header {
                        record =
                            record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                                key: "content-type",
                                value: Some("application/json"),
                            }));
                    }
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, returned)) => {
                                record = returned;
                                producer.poll(Duration::from_millis(1));
                            }
                        }
                    }
                    if n % 1_000 == 0 {
                        producer.poll(Duration::ZERO);
                    }
                }
                producer
                    .flush(Timeout::After(Duration::from_secs(60)))
                    .expect("flush");
                started.elapsed()
            })
        });

        let fast_name = format!("sink_enqueue_fast_path{suffix}");
        let mut config = sink_config(&brokers, &topic(&fast_name));
        config.content_type_header = with_header;
        let fast = KafkaSink::<Request>::new(config).expect("sink");
        group.bench_function(&fast_name, |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                let mut message = KafkaMessage::new(request(0));
                let mut key = String::with_capacity(24);
                for n in 0..iterations * BATCH {
                    message.value.user_id = n;
                    key.clear();
                    let _ = write!(key, "{n}");
                    let bytes = message.key.get_or_insert_with(Vec::new);
                    bytes.clear();
                    bytes.extend_from_slice(key.as_bytes());
                    fast.enqueue(&message).expect("enqueue");
                }
                let left = runtime
                    .block_on(fast.flush(Duration::from_secs(60)))
                    .expect("flush");
                assert_eq!(left, 0, "undelivered after flush");
                started.elapsed()
            })
        });
        fast_sinks.push((fast_name, fast));
    }

    // The same messages as the fast path without a header, handed over 1,024 at a time.
    let batch_name = "sink_enqueue_batch";
    let mut config = sink_config(&brokers, &topic(batch_name));
    config.content_type_header = false;
    let batched = KafkaSink::<Request>::new(config).expect("sink");
    group.bench_function(batch_name, |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            let mut messages: Vec<_> = (0..ENQUEUE_BATCH)
                .map(|_| KafkaMessage::new(request(0)).key(Vec::with_capacity(24)))
                .collect();
            let mut n = 0;
            while n < iterations * BATCH {
                let len = ENQUEUE_BATCH.min(iterations * BATCH - n);
                for message in &mut messages[..len as usize] {
                    message.value.user_id = n;
                    let key = message.key.get_or_insert_with(Vec::new);
                    key.clear();
                    let _ = write!(key, "{n}");
                    n += 1;
                }
                batched
                    .enqueue_batch(&messages[..len as usize])
                    .expect("enqueue_batch");
            }
            let left = runtime
                .block_on(batched.flush(Duration::from_secs(60)))
                .expect("flush");
            assert_eq!(left, 0, "undelivered after flush");
            started.elapsed()
        })
    });
    fast_sinks.push((batch_name.to_string(), batched));

    let awaited_topic = topic("awaited");
    let awaited =
        Arc::new(KafkaSink::<Request>::new(sink_config(&brokers, &awaited_topic)).expect("sink"));
    group.bench_function("sink_send_batch_awaited", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                let batch: Vec<_> = (0..BATCH)
                    .map(|n| KafkaMessage::new(request(n)).key(n.to_string()))
                    .collect();
                let results = runtime.block_on(awaited.send_batch(batch));
                assert!(results.iter().all(Result::is_ok), "a send failed");
            }
            started.elapsed()
        })
    });
    group.finish();
    for (name, sink) in fast_sinks {
        let metrics = sink.metrics();
        // stderr: stdout is the test list when a test runner asks for one (--list).
        eprintln!(
            "{name}: sent={} failed={} delivery latency p50={:?} p99={:?}",
            metrics.messages_sent,
            metrics.messages_failed,
            metrics.latency_p50,
            metrics.latency_p99
        );
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
